"""Batched Gumbel-confidence iterative decoding (MaskGIT inpainting and generation).

Works against any `logits_fn(tokens [B, N] long) -> logits [B, N, K+1]` (K = mask id), or, with class
labels, `logits_fn(tokens, labels [B])`, guided by classifier-free guidance (guided_logits). The mask
schedules gamma(r), r in [0, 1], live here too, as plain callables by name. Every decoding setting
(and its one default) is a field of `DecodeSettings`. Randomness comes from a counter-based hash of
(image seed, step, position, stream), so an image decodes to the same tokens whatever batch it is in.
The order tokens are revealed in: by confidence (MaskGIT), or along a 2-D Halton sequence over the token
grid (Besnier et al. 2025, Halton-MaskGIT), each image's sequence shifted on the torus by its own seed.
"""
import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.stats import qmc

_M32 = 0xFFFFFFFF
_SAMPLE, _GUMBEL, _SHIFT = 1, 2, 3  # the random streams: token sampling, choice noise, the Halton shift


# ----------------------------------------------------------------------------- counter-based RNG
# int64 arithmetic on values kept below 2**32; products are split so nothing exceeds 2**49.

def _mul32(x, c):
    """(x * c) mod 2**32 for int64 tensors x in [0, 2**32) and a constant c < 2**32."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _hash32(x):
    """Wellons' lowbias32 integer hash, elementwise on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix(h, v):
    """Fold a counter v (int or int64 tensor) into hash state h."""
    v = torch.as_tensor(v, dtype=torch.int64, device=h.device) & _M32
    return _hash32(h ^ _hash32(v))


def image_seeds(seed, ids):
    """Per-image seeds [B] int64 from a run seed and each image's own id (e.g. its file number)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    h = _mix(_hash32(torch.full_like(ids, seed & _M32)), (seed >> 32) & _M32)
    return _mix(_mix(h, ids & _M32), (ids >> 32) & _M32)


def uniforms(seeds, step, stream, num_tokens):
    """Uniforms in (0, 1), float64 [B, N], a pure function of (seed_b, step, stream, position)."""
    h = _mix(_mix(_mix(seeds & _M32, (seeds >> 32) & _M32), stream), step)            # [B]
    pos = _hash32(torch.arange(num_tokens, dtype=torch.int64, device=seeds.device))   # [N]
    return (_hash32(h[:, None] ^ pos[None, :]).double() + 0.5) / 2.0 ** 32            # [B, N]


# ----------------------------------------------------------------------------- schedules

_GAMMAS = {
    'cosine': lambda r: torch.cos(r * (math.pi / 2)),
    'linear': lambda r: 1 - r,
    'square': lambda r: 1 - r ** 2,
    'arccos': lambda r: torch.arccos(r) / (math.pi / 2),
    'root': lambda r: 1 - torch.sqrt(r),
}

SCHEDULES = tuple(_GAMMAS)  # the names --mask-func and the config's gamma_type accept
CFG_SCHEDULES = ('constant', 'linear')  # the guidance scale over the steps (DecodeSettings.cfg_weight)
ORDERS = ('confidence', 'halton')  # which masked tokens a step reveals (DecodeSettings.order)


def gamma_func(mode):
    """Mask schedule gamma(r): fraction of tokens masked at progress r in [0, 1]; 1 at r=0, 0 at r=1.

    The returned function takes a float (returns a float) or a tensor (returns a tensor).
    """
    if mode not in _GAMMAS:
        raise ValueError(f"unknown gamma_type '{mode}'; choose one of {', '.join(_GAMMAS)}")
    fn = _GAMMAS[mode]

    def gamma(r):
        if torch.is_tensor(r):
            return fn(r)
        return float(fn(torch.tensor(float(r), dtype=torch.float64)))
    return gamma


def mask_schedule(n_unknown, total_iter, gamma):
    """Tokens still masked after each step, [T, B] long.

    The official MaskGIT rule: floor(n_unknown * gamma((t+1)/T)), at most one fewer than the step before,
    but at least one kept masked before the last step while any remain (max(1, min(prev - 1, ...))),
    and none left after the last step.
    """
    n_unknown = torch.as_tensor(n_unknown, dtype=torch.int64)
    counts, prev = [], n_unknown
    for t in range(total_iter):
        g = float(gamma((t + 1) / total_iter))
        k = torch.floor(n_unknown.double() * g).long()
        k = torch.where(prev > 0, torch.minimum(k, prev - 1).clamp(min=1), 0)
        if t == total_iter - 1:
            k = torch.zeros_like(k)
        counts.append(k)
        prev = k
    return torch.stack(counts)


# ----------------------------------------------------------------------------- the Halton order

@functools.lru_cache(maxsize=8)
def _halton_cells(side):
    """The cells y * side + x of a side x side grid in the order a 2-D Halton sequence (bases 2 and 3) first
    visits them, int64 numpy [side**2]. The sequence starts at its index 1, (1/2, 1/3), as Halton-MaskGIT's."""
    n = 8 * side * side
    while True:  # enough points to visit every cell (about 4 per cell for 16 x 16)
        pts = qmc.Halton(d=2, scramble=False).random(n + 1)[1:]                    # [n, 2] in [0, 1)
        cells = (pts[:, 1] * side).astype(np.int64) * side + (pts[:, 0] * side).astype(np.int64)
        _, first = np.unique(cells, return_index=True)
        if len(first) == side * side:
            return cells[np.sort(first)]
        n *= 2


def halton_ranks(seeds, num_tokens):
    """Each token's place in its image's Halton order, [B, N] long (0 = revealed first): the grid's Halton
    order shifted on the torus by (dy, dx) drawn from the image's seed (Halton-MaskGIT's random roll, so that
    images do not all start at the same tokens; batch-independent like every stream here)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"--order halton needs a square token grid; the model has {num_tokens} tokens an image")
    dev = seeds.device
    rank = torch.empty(num_tokens, dtype=torch.long, device=dev)
    rank[torch.from_numpy(_halton_cells(side)).to(dev)] = torch.arange(num_tokens, device=dev)  # [N] cell -> place
    shift = (uniforms(seeds, 0, _SHIFT, 2) * side).long()                          # [B, 2] (dy, dx)
    pos = torch.arange(num_tokens, device=dev)
    y = (pos // side - shift[:, :1]) % side                                         # [B, N]
    x = (pos % side - shift[:, 1:]) % side
    return rank[y * side + x]


# ----------------------------------------------------------------------------- settings

_CONFIG_KEYS = {'total_iter': 'total_iter', 'mask_func': 'gamma_type', 'choice_temperature': 'choice_temperature',
                'refine': 'refine'}  # field -> its model_param key


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_rate(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def check_total_iter(total_iter, num_tokens):
    """Steps past the token count cannot unmask anything (each unmasks at least one): a one-line error."""
    if total_iter > num_tokens:
        raise ValueError(f"--total-iter must be at most {num_tokens} (the model's tokens an image), got {total_iter}")


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode; each field is a flag of inpainting.py (--total-iter, --mask-func, ...), and its
    default here is the only one. Refused values raise a one-line ValueError naming the flag."""
    total_iter: int = 8              # decoding steps T
    mask_func: str = 'cosine'        # the schedule gamma, one of SCHEDULES
    choice_temperature: float = 4.5  # Gumbel noise on the confidence, annealed by (1 - r)
    temperature: float = 0.0         # token sampling: 0 = argmax
    sweet_spot: int = 0              # stop after this step, argmax the rest (<= 0 or >= total_iter: all steps)
    seed: int = 0                    # run seed; an image's streams are (seed, image id)
    refine: int = 0                  # re-encode-and-decode rounds after the first (pipeline.Inpainter)
    cfg_scale: float = 0.0           # classifier-free guidance w: (1+w) cond - w uncond; 0 = off (one pass a step)
    cfg_schedule: str = 'constant'   # w over the steps, one of CFG_SCHEDULES (see cfg_weight)
    order: str = 'confidence'        # tokens revealed by confidence, or along the Halton sequence (one of ORDERS)

    def __post_init__(self):
        checks = [
            ('--total-iter', self.total_iter, 'an integer >= 1', _is_int(self.total_iter) and self.total_iter >= 1),
            ('--mask-func', self.mask_func, f"one of {', '.join(SCHEDULES)}", self.mask_func in SCHEDULES),
            ('--choice-temperature', self.choice_temperature, 'a number >= 0', _is_rate(self.choice_temperature)),
            ('--temperature', self.temperature, 'a number >= 0', _is_rate(self.temperature)),
            ('--sweet-spot', self.sweet_spot, 'an integer', _is_int(self.sweet_spot)),
            ('--seed', self.seed, 'an integer', _is_int(self.seed)),
            ('--refine', self.refine, 'an integer >= 0', _is_int(self.refine) and self.refine >= 0),
            ('--cfg-scale', self.cfg_scale, 'a number >= 0', _is_rate(self.cfg_scale)),
            ('--cfg-schedule', self.cfg_schedule, f"one of {', '.join(CFG_SCHEDULES)}",
             self.cfg_schedule in CFG_SCHEDULES),
            ('--order', self.order, f"one of {', '.join(ORDERS)}", self.order in ORDERS),
        ]
        for flag, value, want, ok in checks:
            if not ok:
                raise ValueError(f"{flag} must be {want}, got {value!r}")

    @classmethod
    def from_config(cls, model_param=None, **given):
        """Each field: the given value unless None, else the config's (model_param's total_iter,
        gamma_type -> mask_func, choice_temperature, refine), else the default. total_iter is bounded by
        model_param's num_image_tokens when given."""
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown decoding settings: {', '.join(sorted(unknown))}")
        config = {name: (model_param or {}).get(key) for name, key in _CONFIG_KEYS.items()}
        picked = {name: v for name, v in config.items() if v is not None}
        picked.update((name, v) for name, v in given.items() if v is not None)
        settings = cls(**picked)
        if (model_param or {}).get('num_image_tokens') is not None:  # the model's bound, known before any decoding
            check_total_iter(settings.total_iter, model_param['num_image_tokens'])
        return settings

    def schedule(self, n_unknown, mask_func=None):
        """Tokens still masked after each step for rows of n_unknown [B] unknown tokens, [T, B] long
        (mask_func overrides the settings' schedule, e.g. to compare schedules)."""
        return mask_schedule(n_unknown, self.total_iter, gamma_func(mask_func or self.mask_func))

    def cfg_weight(self, t, total_iter):
        """Guidance scale w of step t in 0..T-1 of T = total_iter (t >= T-1: the last, or the sweet spot's fill
        pass): cfg_scale when constant; linear: a ramp from 0 at the first step to cfg_scale at the last,
        cfg_scale * t / (T - 1)."""
        if self.cfg_schedule == 'constant' or total_iter == 1:
            return self.cfg_scale
        return self.cfg_scale * min(t, total_iter - 1) / (total_iter - 1)


# ----------------------------------------------------------------------------- decoding

@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, N] final tokens, never the mask id
    masks: torch.Tensor   # [S+1, B, N] bool, True = still unknown: [0] the start, [s] after step s
    steps: torch.Tensor   # [S+1, B, N] tokens after each step, mask id where unknown ([0] the start)
    preds: torch.Tensor   # [S, B, N] each pass's full guess: known tokens + that step's samples; preds[-1] = tokens
    completed: torch.Tensor = None  # [T, B, N] with decode(completed=True): [s-1] = the tokens of sweet_spot s


def guided_logits(logits_fn, tokens, labels, null_label, w):
    """Classifier-free guidance, (1 + w) * cond - w * uncond, from ONE batched pass: the rows with their labels
    and with the null class, concatenated [2B, N]. w = 0 is the conditional pass alone, and labels None the
    model's own pass (unconditional, or the null class): no second half. Returns logits [B, N, K+1]."""
    if labels is None:
        return logits_fn(tokens)
    if w == 0:
        return logits_fn(tokens, labels)
    both = logits_fn(torch.cat([tokens, tokens]), torch.cat([labels, torch.full_like(labels, null_label)]))
    cond, uncond = both.float().chunk(2)                                            # [B, N, K+1] each
    return (1 + w) * cond - w * uncond


def _sample(logits, u, temperature):
    """One token per row of logits [M, K] by inverse CDF with uniforms u [M] (argmax at temperature 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits / temperature, -1).cumsum(-1)                        # [M, K]
    target = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def _ranks(x):
    """Rank of each entry within its row, 0 = smallest; ties broken by position (batch-independent)."""
    order = x.argsort(dim=1, stable=True)
    ar = torch.arange(x.shape[1], device=x.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ar)


def _checked_inputs(tokens, unknown, seeds, schedule, settings, labels, null_label, completed):
    """decode's inputs on the tokens' device: (seeds [B], unknown [B, N], schedule [T, B], labels [B] or None,
    the steps to run: T, or the sweet spot s); one-line errors for what cannot be decoded."""
    B, N = tokens.shape
    dev = tokens.device
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=dev)
    unknown = unknown.to(dev, torch.bool)
    schedule = torch.as_tensor(schedule).to(dev)
    if schedule.dim() != 2 or schedule.shape[1] != B:
        raise ValueError(f"schedule has shape {tuple(schedule.shape)}; expected [T, {B}]")
    T = schedule.shape[0]
    check_total_iter(T, N)
    s = settings.sweet_spot
    n_steps = T if s <= 0 or s >= T else s
    if completed and n_steps < T:
        raise ValueError("decode: completed=True runs all steps; it needs sweet_spot <= 0 or >= total_iter")
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=dev)
    if labels is not None and null_label is None and settings.cfg_scale > 0:
        raise ValueError("decode: guidance (cfg_scale > 0) needs the null class id (null_label)")
    return seeds, unknown, schedule, labels, n_steps


def _confidence(full, masked, cur, seeds, t, T, settings, order):
    """One step's choice: (pred [B, N]: the known tokens and a sample for every masked one, conf [B, N] float64:
    +inf where known). full: the step's logits [B, N, K]. Confidence order: log p(sample) under softmax(logits)
    + choice_temperature * (1 - r) * Gumbel, r = (t+1)/T; Halton order: minus the token's place in `order`."""
    B, N = masked.shape
    logits = full[masked]                                                           # [M, K]
    sampled = _sample(logits, uniforms(seeds, t, _SAMPLE, N)[masked], settings.temperature)
    conf = torch.full((B, N), math.inf, device=masked.device, dtype=torch.float64)
    if order is None:
        logp = torch.log_softmax(logits, -1).gather(1, sampled[:, None]).squeeze(1)  # [M]
        gumbel = -torch.log(-torch.log(uniforms(seeds, t, _GUMBEL, N)[masked]))
        conf[masked] = logp.double() + settings.choice_temperature * (1 - (t + 1) / T) * gumbel
    else:
        conf[masked] = -order[masked].double()  # earlier in the sequence = revealed sooner
    return cur.masked_scatter(masked, sampled), conf


@torch.no_grad()
def decode(logits_fn, tokens, unknown, seeds, mask_id, schedule, settings, labels=None, null_label=None,
           completed=False):
    """Fill the unknown tokens of each row by iterative decoding.

    tokens [B, N] long (values where unknown are ignored), unknown [B, N] bool (True = to fill),
    seeds [B] int64 per image, schedule [T, B]: tokens still masked after each step (settings.schedule,
    or rows of several schedules side by side). labels [B]: class ids for a conditional logits_fn(tokens,
    labels), guided at step t with w = settings.cfg_weight(t, T) against null_label (guided_logits); None:
    logits_fn(tokens). Step t (r = (t+1)/T): one pass of logits_fn (one batch of two halves when guided);
    the mask class is dropped; each unknown token is sampled from softmax(logits / settings.temperature); its
    confidence is log p(sampled) under the model's softmax(logits) plus choice_temperature * (1 - r) *
    Gumbel noise (settings.order 'halton': minus its place in the image's Halton order, halton_ranks); the
    schedule[t] least confident unknown tokens stay masked, the rest take their samples.
    sweet_spot s in 1..T-1 stops after step s and fills what is left with one more pass's argmax;
    otherwise all T steps run. settings.total_iter and mask_func are not read: the schedule has them.
    completed=True (all T steps only) also returns every sweet spot's result from this one decode: the fill
    pass of sweet spot s is step s+1's pass (the same tokens, the same guidance weight), so Decoded.completed[s-1]
    = the state after step s with its still-masked tokens argmaxed from step s+1's logits, [T-1] = tokens.
    """
    B, N = tokens.shape
    K = mask_id
    seeds, unknown, schedule, labels, n_steps = _checked_inputs(tokens, unknown, seeds, schedule, settings, labels,
                                                                null_label, completed)
    T = schedule.shape[0]
    order = halton_ranks(seeds, N) if settings.order == 'halton' else None          # [B, N] or None

    def logits_of(cur, t):
        logits = guided_logits(logits_fn, cur, labels, null_label, settings.cfg_weight(t, T))  # [B, N, K+1]
        if logits.shape != (B, N, K + 1):
            raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}; expected {(B, N, K + 1)}")
        return logits[..., :K].float()                                              # [B, N, K]

    masked = unknown
    cur = torch.where(masked, K, tokens)
    masks, steps, preds, done = [masked], [cur], [], []
    for t in range(n_steps):
        if t and completed:  # sweet spot t: step t's state, its masked tokens argmaxed from this step's pass
            done.append(cur)
        pred = cur
        if masked.any():  # else nothing is left to fill in any row: the pass would change nothing
            full = logits_of(cur, t)                                                # [B, N, K]
            if t and completed:
                done[-1] = torch.where(masked, full.argmax(-1), cur)
            pred, conf = _confidence(full, masked, cur, seeds, t, T, settings, order)
            masked = _ranks(conf) < schedule[t][:, None]  # least confident stay masked; known are +inf
            cur = torch.where(masked, K, pred)
        masks.append(masked)
        steps.append(cur)
        preds.append(pred)
    if n_steps < T:  # sweet spot: the most likely token for everything still masked
        pred = torch.where(masked, logits_of(cur, n_steps).argmax(-1), cur) if masked.any() else cur
        masked = torch.zeros_like(masked)
        cur = pred
        masks.append(masked)
        steps.append(cur)
        preds.append(pred)
    return Decoded(cur, torch.stack(masks), torch.stack(steps), torch.stack(preds),
                   torch.stack(done + [cur]) if completed else None)


def generate(logits_fn, batch_size, num_tokens, seeds, mask_id, settings, device='cpu', labels=None, null_label=None):
    """Images from nothing: every token unknown, the same decoding path with the settings' schedule."""
    tokens = torch.full((batch_size, num_tokens), mask_id, dtype=torch.long, device=device)
    schedule = settings.schedule(torch.full((batch_size,), num_tokens))
    return decode(logits_fn, tokens, torch.ones_like(tokens, dtype=torch.bool), seeds, mask_id, schedule, settings,
                  labels, null_label)
