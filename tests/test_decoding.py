"""models/decoding.py: decode against a frozen copy of itself before it was split (issue 32: no numerics change),
and the Halton token order (--order halton, Besnier et al. 2025): every token revealed once, the schedule's counts,
an order spread over the grid, per image and batch-independent."""
import math

import pytest
import torch

from models.decoding import (_GUMBEL, _SAMPLE, DecodeSettings, _halton_cells, _ranks, _sample, check_total_iter,
                             decode, guided_logits, halton_ranks, image_seeds, uniforms)

pytestmark = pytest.mark.usefixtures('one_thread')

K, SIDE = 12, 16
N = SIDE * SIDE  # the shipped models' 16 x 16 tokens


# ----------------------------------------------------------------------------- the pre-split decode, frozen

@torch.no_grad()
def reference_decode(logits_fn, tokens, unknown, seeds, mask_id, schedule, settings, labels=None, null_label=None,
           completed=False):
    """models.decoding.decode as it was before issue 32 split it (commit HEAD of that change), kept verbatim."""
    B, N = tokens.shape
    dev = tokens.device
    K = mask_id
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=dev)
    unknown = unknown.to(dev, torch.bool)
    schedule = torch.as_tensor(schedule).to(dev)
    T = schedule.shape[0]
    if schedule.dim() != 2 or schedule.shape[1] != B:
        raise ValueError(f"schedule has shape {tuple(schedule.shape)}; expected [T, {B}]")
    check_total_iter(T, N)
    s = settings.sweet_spot
    n_steps = T if s <= 0 or s >= T else s
    if completed and n_steps < T:
        raise ValueError("decode: completed=True runs all steps; it needs sweet_spot <= 0 or >= total_iter")
    ct = settings.choice_temperature
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=dev)
    if labels is not None and null_label is None and settings.cfg_scale > 0:
        raise ValueError("decode: guidance (cfg_scale > 0) needs the null class id (null_label)")

    def logits_of(cur, t):
        logits = guided_logits(logits_fn, cur, labels, null_label, settings.cfg_weight(t, T))  # [B, N, K+1]
        if logits.shape != (B, N, K + 1):
            raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}; expected {(B, N, K + 1)}")
        return logits[..., :K].float()                                              # [B, N, K]

    masked = unknown
    cur = torch.where(masked, K, tokens)
    masks, steps, preds, done = [masked], [cur], [], []
    for t in range(n_steps):
        r = (t + 1) / T
        if t and completed:  # sweet spot t: step t's state ([t]), its masked tokens filled below or by argmax
            done.append(cur)
        if not masked.any():  # nothing left to fill in any row: the pass would change nothing
            masks.append(masked)
            steps.append(cur)
            preds.append(cur)
            continue
        full = logits_of(cur, t)                                                    # [B, N, K]
        if t and completed:  # what the sweet-spot fill pass computes for s = t, from this same pass
            done[-1] = torch.where(masked, full.argmax(-1), cur)
        logits = full[masked]                                                       # [M, K]
        sampled = _sample(logits, uniforms(seeds, t, _SAMPLE, N)[masked], settings.temperature)
        logp = torch.log_softmax(logits, -1).gather(1, sampled[:, None]).squeeze(1)  # [M]
        gumbel = -torch.log(-torch.log(uniforms(seeds, t, _GUMBEL, N)[masked]))
        conf = torch.full((B, N), math.inf, device=dev, dtype=torch.float64)
        conf[masked] = logp.double() + ct * (1 - r) * gumbel
        pred = cur.masked_scatter(masked, sampled)                                  # [B, N]
        masked = _ranks(conf) < schedule[t][:, None]   # least confident stay masked; known are +inf
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
    return (cur, torch.stack(masks), torch.stack(steps), torch.stack(preds),
                   torch.stack(done + [cur]) if completed else None)



def logits_model(seed=1):
    """A conditional logits_fn(tokens, labels=None) [B, N, K+1] whose row b depends on row b alone."""
    g = torch.Generator().manual_seed(seed)
    emb, w, pos = torch.randn(K + 1, 8, generator=g), torch.randn(8, K + 1, generator=g) * 2, torch.randn(N, K + 1, generator=g)
    cls = torch.randn(4, K + 1, generator=g)  # 3 classes and the null class (id 3)

    def fn(tokens, labels=None):
        x = emb[tokens]                                                     # [B, N, 8]
        logits = (x + x.mean(1, keepdim=True)) @ w + pos                    # [B, N, K+1]
        return logits if labels is None else logits + cls[labels][:, None]
    return fn


def problem(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (B, N), generator=g)
    unknown = torch.rand(B, N, generator=g) < torch.linspace(0.2, 1.0, B)[:, None]  # some rows all unknown
    return tokens, unknown


@pytest.mark.parametrize('kw,cond,completed', [
    (dict(), False, False),
    (dict(temperature=1.0, choice_temperature=4.5, total_iter=12), True, False),
    (dict(temperature=0.7, choice_temperature=0.0, cfg_scale=2.0, cfg_schedule='linear', mask_func='arccos'), True,
     True),
    (dict(temperature=1.0, cfg_scale=3.0, sweet_spot=3), True, False),
    (dict(total_iter=N), False, True),  # steps left with nothing to fill
])
def test_decode_equals_the_frozen_pre_split_decode(kw, cond, completed):
    fn, (tokens, unknown) = logits_model(), problem()
    s = DecodeSettings(**kw)
    seeds = image_seeds(7, torch.arange(len(tokens)))
    schedule = s.schedule(unknown.sum(1))
    labels = dict(labels=torch.tensor([0, 1, 2, 1]), null_label=3) if cond else {}
    got = decode(fn, tokens, unknown, seeds, K, schedule, s, completed=completed, **labels)
    want = reference_decode(fn, tokens, unknown, seeds, K, schedule, s, completed=completed, **labels)
    for name, g, w in zip(('tokens', 'masks', 'steps', 'preds', 'completed'),
                          (got.tokens, got.masks, got.steps, got.preds, got.completed), want):
        assert (g is None and w is None) or torch.equal(g, w), name


# ----------------------------------------------------------------------------- the Halton order

def test_halton_cells_visit_every_cell_once_spread_over_the_grid():
    cells = torch.from_numpy(_halton_cells(SIDE))
    assert sorted(cells.tolist()) == list(range(N))
    y, x = cells // SIDE, cells % SIDE
    assert (y[0].item(), x[0].item()) == (SIDE // 3, SIDE // 2)  # the sequence's index 1: (1/2, 1/3)
    assert len(set(x[:SIDE].tolist())) == SIDE                   # the first 16: one in every column
    assert len(set(zip((y[:32] // 4).tolist(), (x[:32] // 4).tolist()))) == 16  # the first 32: every 4x4 block


def torus_min_distance(pos):
    """Smallest distance between grid positions pos [k] (y * SIDE + x) on the torus."""
    y, x = pos // SIDE, pos % SIDE
    dy, dx = (y[:, None] - y[None]).abs(), (x[:, None] - x[None]).abs()
    d = (torch.minimum(dy, SIDE - dy) ** 2 + torch.minimum(dx, SIDE - dx) ** 2).double().sqrt()
    return (d + torch.eye(len(pos)) * 99).min().item()


def test_halton_ranks_are_each_images_roll_of_the_grids_order():
    seeds = image_seeds(0, torch.arange(6))
    ranks = halton_ranks(seeds, N)                                          # [6, N]
    base = torch.empty(N, dtype=torch.long)
    base[torch.from_numpy(_halton_cells(SIDE))] = torch.arange(N)
    base = base.view(SIDE, SIDE)
    rolls = {(dy, dx): torch.roll(base, (dy, dx), (0, 1)).flatten() for dy in range(SIDE) for dx in range(SIDE)}
    shifts = [[k for k, r in rolls.items() if torch.equal(r, row)] for row in ranks]
    assert all(len(s) == 1 for s in shifts)                                  # one roll each, by rows and columns
    assert len({s[0][0] for s in shifts}) > 1 and len({s[0][1] for s in shifts}) > 1
    assert torch.equal(halton_ranks(seeds[3:4], N), ranks[3:4])                  # batch-independent
    with pytest.raises(ValueError, match='--order halton needs a square token grid; the model has 250 tokens'):
        halton_ranks(seeds, 250)


@pytest.mark.parametrize('mask_func,total_iter', [('cosine', 8), ('linear', 5), ('arccos', 12)])
def test_halton_decode_reveals_every_token_once_in_order_at_the_schedules_counts(mask_func, total_iter):
    tokens, unknown = problem()
    s = DecodeSettings(order='halton', temperature=1.0, mask_func=mask_func, total_iter=total_iter)
    seeds = image_seeds(3, torch.arange(len(tokens)))
    schedule = s.schedule(unknown.sum(1))                                   # [T, B]
    out = decode(logits_model(), tokens, unknown, seeds, K, schedule, s)
    assert torch.equal(out.masks[1:].sum(2), schedule)                      # the counts of the schedule
    assert not (out.masks[1:] & ~out.masks[:-1]).any() and not out.masks[-1].any()  # revealed once, for good
    assert torch.equal(out.tokens[~unknown], tokens[~unknown])
    # which: the unknown tokens latest in the image's Halton order stay masked
    ranks = halton_ranks(seeds, N).masked_fill(~unknown, -1)                # known: before every unknown one
    place = _ranks(ranks) - (~unknown).sum(1, keepdim=True)                # [B, N] place among the unknown
    for t in range(total_iter):
        want = unknown & (place >= unknown.sum(1, keepdim=True) - schedule[t][:, None])
        assert torch.equal(out.masks[t + 1], want), t
    # the order is the grid's, whatever the logits; the tokens are the model's
    other = decode(logits_model(seed=5), tokens, unknown, seeds, K, schedule, s)
    assert torch.equal(other.masks, out.masks) and not torch.equal(other.tokens, out.tokens)


def test_halton_first_tokens_spread_where_confidence_order_need_not():
    tokens = torch.zeros(3, N, dtype=torch.long)
    unknown = torch.ones(3, N, dtype=torch.bool)
    seeds = image_seeds(0, torch.arange(3))
    first = lambda out: [row.nonzero().flatten() for row in ~out.masks[1]]   # revealed at step 1: 5 of 256
    surest_first = torch.zeros(N, K + 1)
    surest_first[:, 0] = 10 - torch.arange(N) / 10  # the model is surest of the first tokens in raster order
    fn = lambda cur: surest_first.expand(len(cur), N, K + 1).clone()
    s = DecodeSettings(order='halton', total_iter=8)
    out = decode(fn, tokens, unknown, seeds, K, s.schedule(unknown.sum(1)), s)
    for pos in first(out):
        assert len(pos) == 5 and torus_min_distance(pos) >= 2.8                     # no two neighbours
        assert len(set((pos % SIDE).tolist())) == 5 == len(set((pos // SIDE).tolist()))  # 5 rows, 5 columns
    s = DecodeSettings(total_iter=8, choice_temperature=0.0)  # greedy confidence: where the model is surest
    assert [pos.tolist() for pos in first(decode(fn, tokens, unknown, seeds, K, s.schedule(unknown.sum(1)), s))] \
        == [list(range(5))] * 3


def test_order_is_checked_like_every_setting():
    with pytest.raises(ValueError, match="--order must be one of confidence, halton, got 'random'"):
        DecodeSettings(order='random')
