"""Batched Gumbel-confidence decoding (models/decoding.py) and the inpainting.py script."""
import copy
import math
import random
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

import inpainting
import pipeline
from conftest import IMG, LAT, ROOT, inpaint_maskgit_param, random_problem
from dataset import PairedTestDataset, data_stats, denormalize, normalize
from models.baselines import have_opencv
from models.decoding import (_GUMBEL, _SAMPLE, SCHEDULES, DecodeSettings, _hash32, _sample, decode, gamma_func,
                             generate, image_seeds, mask_schedule, uniforms)
from models.maskgit import MaskGit
from models.masks import latent_mask
from models.transformer import BidirectionalTransformer
from utils import atomic_save, load_config

K, SIDE = 32, 8
N = SIDE * SIDE
COSINE = gamma_func('cosine')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def transformer():
    """A tiny random transformer with peaky logits (embeddings scaled up), eval mode."""
    torch.manual_seed(0)
    m = BidirectionalTransformer(dict(num_image_tokens=N, num_codebook_vectors=K, dim=32, n_layers=2,
                                      hidden_dim=64, num_heads=4)).eval()
    with torch.no_grad():
        m.tok_emb.weight.normal_(0, 1.0)
    return m


def row_model(mask_logit=0.0, dtype=torch.float32):
    """logits_fn whose row b depends only on row b's tokens; the mask class gets `mask_logit`.

    dtype=torch.float64 for comparisons across batch sizes: fp32 matmuls may round differently for another
    number of rows, float64 differences (~1e-16) vanish when decode casts the logits to fp32."""
    g = torch.Generator().manual_seed(1)
    emb, w, pos = torch.randn(K + 1, 8, generator=g), torch.randn(8, K + 1, generator=g) * 2, torch.randn(N, K + 1, generator=g)
    emb, w, pos = emb.to(dtype), w.to(dtype), pos.to(dtype)

    def fn(tokens):
        x = emb[tokens]                                             # [B, N, 8]
        logits = (x + x.mean(1, keepdim=True)) @ w + pos            # [B, N, K+1]
        logits[..., K] = mask_logit
        return logits
    return fn




def run(fn, tokens, unknown, seeds=None, **kw):
    """decode with DecodeSettings(**kw) and its schedule; sampling (temperature 1) unless told, so that both
    random streams are used."""
    seeds = torch.arange(len(tokens)) + 100 if seeds is None else seeds
    settings = DecodeSettings(**{'temperature': 1.0, **kw})
    return decode(fn, tokens, unknown, seeds, K, settings.schedule(unknown.sum(1)), settings)


def official_counts(n, total_iter, gamma):
    """Tokens still masked after each step by the official MaskGIT decoder (maskgit/libml/parallel_decode.py),
    written out independently: after step t < T-1, with r = (t+1)/T and `prev` tokens masked before the
    step, mask_len = max(1, min(prev - 1, floor(n * gamma(r)))); the last step's samples are the output
    (none masked). A row with nothing masked has nothing to keep masked."""
    counts, prev = [], n
    for t in range(total_iter):
        if t == total_iter - 1 or prev == 0:
            k = 0
        else:
            k = max(1, min(prev - 1, math.floor(n * gamma((t + 1) / total_iter))))
        counts.append(k)
        prev = k
    return counts


# ----------------------------------------------------------------------------- RNG, sampler, schedule

def test_hash_matches_reference_lowbias32_without_overflow():
    def ref(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    rng = random.Random(0)
    xs = [0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(2000)]
    assert _hash32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]


def test_uniforms_per_image_and_independent_of_batch():
    seeds = image_seeds(7, [0, 1, 2, 2**40, -3])
    u = uniforms(seeds, 3, 1, N)
    assert u.shape == (5, N) and u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.05
    for b in range(5):
        assert torch.equal(uniforms(seeds[b:b + 1], 3, 1, N), u[b:b + 1])
    assert not torch.equal(uniforms(seeds, 3, 2, N), u)   # another stream
    assert not torch.equal(uniforms(seeds, 4, 1, N), u)   # another step
    assert len(set(seeds.tolist())) == 5


def test_inverse_cdf_sampler_frequencies():
    p = torch.tensor([0.2, 0.5, 0.3])
    logits = p.log().expand(40000, 3)
    u = uniforms(image_seeds(0, [1]), 0, 1, 40000)[0]
    freq = torch.bincount(_sample(logits, u, 1.0), minlength=3).float() / 40000
    assert torch.allclose(freq, p, atol=0.01)
    p_half = p ** 2 / (p ** 2).sum()  # temperature 0.5 squares the probabilities
    freq = torch.bincount(_sample(logits, u, 0.5), minlength=3).float() / 40000
    assert torch.allclose(freq, p_half, atol=0.01)
    assert torch.equal(_sample(logits[:4], u[:4], 0.0), torch.ones(4, dtype=torch.long))


def test_schedule_counts_by_hand():
    # floor(256 cos(pi/2 (t+1)/8)) computed by hand (small holes: test_small_holes_follow_official_rule)
    counts = mask_schedule(torch.tensor([256, 0]), 8, COSINE)
    assert counts[:, 0].tolist() == [251, 236, 212, 181, 142, 97, 49, 0]
    assert counts[:, 1].tolist() == [0] * 8
    assert mask_schedule(torch.tensor([100]), 4, gamma_func('linear'))[:, 0].tolist() == [75, 50, 25, 0]
    assert mask_schedule(torch.tensor([100]), 4, gamma_func('square'))[:, 0].tolist() == [93, 75, 43, 0]


@pytest.mark.parametrize('mode', ['cosine', 'linear', 'square', 'arccos', 'root'])
def test_schedule_follows_official_maskgit_rule(mode):
    # holes of at least 2T tokens (the course's test holes have dozens); smaller ones: the test below
    g = gamma_func(mode)
    ns = [256, 200, 101, 64, 40, 33]
    for total_iter in (1, 2, 4, 7, 8, 12, 16):
        got = mask_schedule(torch.tensor(ns), total_iter, g)                  # [T, B]
        for b, n in enumerate(ns):
            assert got[:, b].tolist() == official_counts(n, total_iter, g), (mode, total_iter, n)


def test_small_holes_follow_official_rule():
    assert official_counts(3, 8, COSINE) == [2, 1, 1, 1, 1, 1, 1, 0]          # by hand
    assert official_counts(1, 8, COSINE) == [1, 1, 1, 1, 1, 1, 1, 0]
    for mode in ('cosine', 'root'):
        g = gamma_func(mode)
        for total_iter in (4, 8, 16):
            ns = list(range(2 * total_iter))
            got = mask_schedule(torch.tensor(ns), total_iter, g)
            assert [got[:, b].tolist() for b in range(len(ns))] == [official_counts(n, total_iter, g) for n in ns]


def test_latent_mask_from_hand_made_pixel_mask():
    m = torch.ones(1, 1, 8, 12)
    m[0, 0, 1, 6] = 0          # one hole pixel in token (0, 1)
    m[0, 0, 4:8, 0:4] = 0      # token (1, 0) all hole
    m[0, 0, 7, 11] = 0         # corner pixel of token (1, 2)
    expected = torch.tensor([[[False, True, False], [True, False, True]]])
    assert torch.equal(latent_mask(m, 4), expected)


# ----------------------------------------------------------------------------- settings

def test_settings_take_the_given_value_then_the_configs_then_the_default():
    d = DecodeSettings()
    assert DecodeSettings.from_config(None) == d
    mp = dict(gamma_type='linear', choice_temperature=0.0, refine=2, total_iter=1)  # 0.0: a value, not "unset"
    assert DecodeSettings.from_config(mp) == DecodeSettings(mask_func='linear', choice_temperature=0.0, refine=2,
                                                            total_iter=1)
    assert DecodeSettings.from_config(mp, refine=0).refine == 0
    s = DecodeSettings.from_config(mp, mask_func='root', choice_temperature=2.0, total_iter=3, temperature=None)
    assert (s.mask_func, s.choice_temperature, s.total_iter, s.temperature) == ('root', 2.0, 3, d.temperature)
    assert DecodeSettings.from_config(dict(choice_temperature=4.5), choice_temperature=0.0).choice_temperature == 0
    with pytest.raises(TypeError, match='total_steps'):
        DecodeSettings.from_config(mp, total_steps=3)


@pytest.mark.parametrize('field,value,flag', [
    ('total_iter', 0, '--total-iter'), ('total_iter', 2.5, '--total-iter'), ('mask_func', 'cos', '--mask-func'),
    ('choice_temperature', -1.0, '--choice-temperature'), ('choice_temperature', math.nan, '--choice-temperature'),
    ('temperature', math.inf, '--temperature'), ('temperature', -0.5, '--temperature'),
    ('sweet_spot', 1.5, '--sweet-spot'), ('seed', '0', '--seed'), ('refine', -1, '--refine')])
def test_a_bad_setting_is_a_one_line_error_naming_its_flag(field, value, flag):
    with pytest.raises(ValueError) as e:
        DecodeSettings(**{field: value})
    assert str(e.value).startswith(f"{flag} must be ") and repr(value) in str(e.value) and '\n' not in str(e.value)


def test_a_bad_config_value_names_the_flag_that_overrides_it():
    with pytest.raises(ValueError, match='^--mask-func must be one of cosine, linear'):
        DecodeSettings.from_config(dict(gamma_type='cos'))
    assert DecodeSettings.from_config(dict(gamma_type='cos'), mask_func='root').mask_func == 'root'


def test_every_setting_is_a_flag_unset_by_default():
    args = vars(inpainting.parse_args([]))
    assert all(args[f.name] is None for f in fields(DecodeSettings))   # the defaults live in DecodeSettings only


def test_cli_default_is_argmax_with_the_configs_schedule_and_choice_temperature():
    mp = load_config(ROOT / pipeline.DEFAULT_CONFIG)['model_param']
    default = pipeline.decoding_settings(inpainting.parse_args([]), mp)
    assert default == pipeline.decoding_settings(inpainting.parse_args(['--temperature', '0']), mp)
    assert default == DecodeSettings(temperature=0.0, mask_func=mp['gamma_type'],
                                     choice_temperature=mp['choice_temperature'], refine=mp['refine'])


def test_settings_schedule_is_the_named_gammas():
    n = torch.tensor([256, 40, 7, 0])
    s = DecodeSettings(total_iter=6, mask_func='square')
    assert torch.equal(s.schedule(n), mask_schedule(n, 6, gamma_func('square')))
    assert torch.equal(s.schedule(n, 'root'), mask_schedule(n, 6, gamma_func('root')))


# ----------------------------------------------------------------------------- decoding

def test_known_tokens_never_change_and_reveals_are_final(transformer):
    tokens, unknown = random_problem(K, N, [40, 17, 64, 3])
    out = run(transformer, tokens, unknown, total_iter=6)
    assert torch.equal(out.tokens[~unknown], tokens[~unknown])
    for s in range(out.steps.shape[0]):
        assert torch.equal(out.steps[s][~unknown], tokens[~unknown])
        assert torch.equal(out.masks[s] & ~unknown, torch.zeros_like(unknown))
    for s in range(out.steps.shape[0] - 1):
        assert not (out.masks[s + 1] & ~out.masks[s]).any()          # nothing is re-masked
        shown = ~out.masks[s]
        assert torch.equal(out.steps[s + 1][shown], out.steps[s][shown])  # revealed tokens stay
    assert torch.equal(out.steps[-1], out.tokens) and not out.masks[-1].any()


def test_masked_count_after_each_step_follows_schedule(transformer):
    counts = [64, 40, 14, 0]  # at least 2T = 14 (see test_small_holes_follow_official_rule)
    tokens, unknown = random_problem(K, N, counts)
    for mode in ('cosine', 'linear', 'square', 'arccos', 'root'):
        g = gamma_func(mode)
        out = run(transformer, tokens, unknown, total_iter=7, mask_func=mode)
        got = out.masks.sum(2)                                        # [T+1, B]
        assert got[0].tolist() == counts
        for b, n in enumerate(counts):
            assert got[1:, b].tolist() == official_counts(n, 7, g), (mode, b)


# Confidence by hand: 8 tokens, 2 codes, logits fixed whatever the input, so every step's log p is known.
# Probability of code 0 per position, for two images:
CONF_P = [[0.9, 0.8, 0.7, 0.6, 0.55, 0.65, 0.75, 0.85], [0.6, 0.95, 0.7, 0.52, 0.8, 0.58, 0.9, 0.66]]


def still_masked_by_hand(seeds, total_iter, choice_temperature, temperature, variant=None):
    """Masks after each step (lists of bools), written from the paper's rule with plain floats: each masked
    token's code is sampled (argmax at temperature 0, else code 0 iff u_sample <= p0^(1/tau) / (p0^(1/tau) +
    p1^(1/tau))), conf = log p(sampled) under the model's own softmax + choice_temperature * (1 - r) *
    gumbel, gumbel = -log(-log(u_gumbel)), r = (t+1)/T; the official_counts(...)[t] least confident stay
    masked. `variant` names a wrong formula, to show the test tells it apart. Also returns the smallest
    gap at a cut between kept and revealed confidences."""
    n = len(CONF_P[0])
    counts = official_counts(n, total_iter, COSINE)
    masked = [[True] * n for _ in CONF_P]
    steps, gaps = [], []
    for t in range(total_iter):
        r = t / total_iter if variant == 'r = t/T' else (t + 1) / total_iter
        anneal = r if variant == 'factor r' else 1 - r
        u_gumbel = uniforms(seeds, t, _SAMPLE if variant == 'sample stream' else _GUMBEL, n).tolist()
        u_sample = uniforms(seeds, t, _SAMPLE, n).tolist()
        for b, probs in enumerate(CONF_P):
            conf = {}
            for i in [i for i in range(n) if masked[b][i]]:
                p0 = probs[i]
                if temperature == 0:
                    code0 = p0 > 0.5
                else:
                    q0 = p0 ** (1 / temperature) / (p0 ** (1 / temperature) + (1 - p0) ** (1 / temperature))
                    code0 = u_sample[b][i] <= q0
                p = p0 if code0 else 1 - p0
                if variant == 'tempered p':
                    p = q0 if code0 else 1 - q0
                logp = p if variant == 'p, not log p' else math.log(p)
                gumbel = -math.log(-math.log(u_gumbel[b][i]))
                conf[i] = logp + (0.0 if variant == 'no noise' else choice_temperature * anneal * gumbel)
            order = sorted(conf, key=conf.get)
            k = counts[t]
            if 0 < k < len(order):
                gaps.append(conf[order[k]] - conf[order[k - 1]])
            masked[b] = [i in order[:k] for i in range(n)]
        steps.append([row[:] for row in masked])
    return steps, min(gaps)


@pytest.mark.parametrize('temperature,variants', [
    (0.0, ['r = t/T', 'factor r', 'no noise', 'p, not log p', 'sample stream']),
    (2.0, ['tempered p', 'r = t/T', 'factor r'])])
def test_confidence_is_logp_plus_annealed_gumbel(temperature, variants):
    p = torch.tensor(CONF_P, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log(), torch.zeros_like(p)], -1).float()  # [2, 8, 3]; id 2 = mask
    fn = lambda tokens: logits.clone()
    seeds, T, ct = image_seeds(0, [0, 1]), 4, 0.5
    s = DecodeSettings(total_iter=T, mask_func='cosine', temperature=temperature, choice_temperature=ct)
    out = decode(fn, torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.bool), seeds, 2,
                 s.schedule(torch.tensor([8, 8])), s)
    want, gap = still_masked_by_hand(seeds, T, ct, temperature)
    # decode's log p is fp32 (error ~1e-7): the hand ranking holds if no cut is closer than that
    assert gap > 1e-4
    assert out.masks[1:].tolist() == want
    for v in variants:  # each wrong formula keeps other tokens masked on this problem
        assert still_masked_by_hand(seeds, T, ct, temperature, v)[0] != want, v


def test_batched_equals_single_image_runs(transformer):
    # float64 weights: an fp32 forward pass may round differently for another batch size, which could flip
    # a near-tie; float64 differences vanish in decode's cast of the logits to fp32
    transformer = copy.deepcopy(transformer).double()
    tokens, unknown = random_problem(K, N, [64, 31, 10, 1, 0], seed=3)
    seeds = image_seeds(5, [4, 9, 1, 7, 2])
    for kw in (dict(), dict(temperature=0.0), dict(sweet_spot=3, temperature=2.0)):
        full = run(transformer, tokens, unknown, seeds, total_iter=6, **kw)
        for b in range(5):
            one = run(transformer, tokens[b:b + 1], unknown[b:b + 1], seeds[b:b + 1], total_iter=6, **kw)
            assert torch.equal(one.tokens, full.tokens[b:b + 1])
            assert torch.equal(one.masks, full.masks[:, b:b + 1])
            assert torch.equal(one.preds, full.preds[:, b:b + 1])


def test_per_row_schedules_equal_separate_runs():
    fn = row_model(dtype=torch.float64)  # batches of 3, 1 and 2 compared
    tokens, unknown = random_problem(K, N, [50, 50, 20])
    seeds = image_seeds(0, [0, 1, 2])
    lin, cos = gamma_func('linear'), COSINE
    counts = unknown.sum(1)
    sched = torch.stack([mask_schedule(counts[:1], 5, lin)[:, 0], mask_schedule(counts[1:], 5, cos)[:, 0],
                         mask_schedule(counts[1:], 5, cos)[:, 1]], 1)         # row 0 linear, rows 1-2 cosine
    mixed = decode(fn, tokens, unknown, seeds, K, sched, DecodeSettings(total_iter=5, temperature=1.0))
    a = run(fn, tokens[:1], unknown[:1], seeds[:1], total_iter=5, mask_func='linear')
    b = run(fn, tokens[1:], unknown[1:], seeds[1:], total_iter=5, mask_func='cosine')
    assert torch.equal(mixed.masks, torch.cat([a.masks, b.masks], 1))
    assert torch.equal(mixed.tokens, torch.cat([a.tokens, b.tokens]))
    assert a.masks[:, 0].sum(1).tolist() != b.masks[:, 0].sum(1).tolist()   # 50 unknown each, other counts


def test_sweet_spot_semantics():
    fn = row_model()
    tokens, unknown = random_problem(K, N, [64, 30, 5])
    T = 6
    full = run(fn, tokens, unknown, total_iter=T)
    assert full.masks.shape[0] == T + 1
    for s in (0, -2, T, T + 3):
        o = run(fn, tokens, unknown, total_iter=T, sweet_spot=s)
        assert torch.equal(o.tokens, full.tokens) and o.masks.shape[0] == T + 1
    for s in (1, T - 1):
        o = run(fn, tokens, unknown, total_iter=T, sweet_spot=s)
        assert o.masks.shape[0] == s + 2                             # start, s steps, the fill
        assert torch.equal(o.masks[:s + 1], full.masks[:s + 1])      # same first s steps
        assert torch.equal(o.steps[s], full.steps[s])
        left = o.masks[s]
        assert left.any() and not o.masks[-1].any() and (o.tokens < K).all()
        best = fn(o.steps[s])[..., :K].argmax(-1)
        assert torch.equal(o.tokens[left], best[left])
        assert torch.equal(o.tokens[~left], o.steps[s][~left])


def test_mask_id_never_decoded():
    fn = row_model(mask_logit=1e4)   # the mask class would win every draw if it were not dropped
    tokens, unknown = random_problem(K, N, [64, 20])
    for kw in (dict(), dict(temperature=0.0), dict(temperature=5.0), dict(sweet_spot=2)):
        out = run(fn, tokens, unknown, total_iter=5, **kw)
        assert (out.tokens < K).all() and (out.preds < K).all()


def test_deterministic_under_seed_and_seed_matters(transformer):
    tokens, unknown = random_problem(K, N, [64, 50])
    a = run(transformer, tokens, unknown, image_seeds(1, [0, 1]), total_iter=5)
    b = run(transformer, tokens, unknown, image_seeds(1, [0, 1]), total_iter=5)
    c = run(transformer, tokens, unknown, image_seeds(2, [0, 1]), total_iter=5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.tokens, c.tokens)


def test_greedy_reveals_the_most_confident():
    fn = row_model()
    tokens, unknown = random_problem(K, N, [64, 33])
    out = run(fn, tokens, unknown, total_iter=4, temperature=0.0, choice_temperature=0.0)
    conf = fn(out.steps[0])[..., :K].log_softmax(-1).max(-1).values    # [B, N]
    for b in range(2):
        kept, shown = conf[b][out.masks[1, b]], conf[b][unknown[b] & ~out.masks[1, b]]
        assert len(shown) > 0 and kept.max() <= shown.min()
    assert torch.equal(out.preds[0][unknown], fn(out.steps[0])[..., :K].argmax(-1)[unknown])


def test_generation_mode_fills_everything(transformer):
    seeds = image_seeds(0, [0, 1, 2])
    out = generate(transformer, 3, N, seeds, K, DecodeSettings(total_iter=5, temperature=1.0))
    assert out.tokens.shape == (3, N) and (out.tokens < K).all() and out.masks[0].all()
    same = run(transformer, torch.zeros(3, N, dtype=torch.long), torch.ones(3, N, dtype=torch.bool), seeds,
               total_iter=5)
    assert torch.equal(out.tokens, same.tokens)


def test_wrong_logits_shape_is_an_error():
    tokens, unknown = random_problem(K, N, [10])
    s = DecodeSettings()
    with pytest.raises(ValueError, match="expected"):
        decode(lambda t: torch.zeros(*t.shape, K), tokens, unknown, [0], K, s.schedule(unknown.sum(1)), s)


def test_schedule_of_another_batch_is_an_error():
    tokens, unknown = random_problem(K, N, [10, 20])
    s = DecodeSettings()
    with pytest.raises(ValueError, match=r"schedule has shape \(8, 1\); expected \[T, 2\]"):
        decode(row_model(), tokens, unknown, [0, 1], K, s.schedule(unknown[:1].sum(1)), s)


# ----------------------------------------------------------------------------- the script

IDS = (3, 10, 11)


def hole_mask(i):
    """Mode-L mask, 0 = hole: a 3x5 hole whose place depends on i."""
    a = np.full((IMG, IMG), 255, np.uint8)
    a[i % 8:i % 8 + 3, 5:10] = 0
    return a


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab(IDS, hole_mask)


def cli(lab, out, *extra, img=None, mask=None, ckpt=None, cfg=None):
    return inpainting.main(['--device', 'cpu', '--MaskGitConfig', str(cfg or lab / 'mg.yml'),
                            '--load-transformer-ckpt-path', str(ckpt or lab / 'tr.pt'),
                            '--test-maskedimage-path', str(img or lab / 'img'),
                            '--test-mask-path', str(mask or lab / 'mask'),
                            '--total-iter', '4', '--output-dir', str(out), *extra])


def test_script_outputs_and_batch_invariance(lab, tmp_path):
    assert cli(lab, tmp_path / 'a', '--batch-size', '2') == 0
    assert cli(lab, tmp_path / 'b', '--batch-size', '1') == 0
    tile = IMG + 2
    png = lambda run, sub, name: np.asarray(Image.open(tmp_path / run / sub / name)).astype(int)
    for i in IDS:
        # Batch invariance: the tokens, hence the latent masks drawn in mask_scheduling/, must be identical.
        # Pixels come from the fp32 VQGAN decoder, whose kernels may sum in another order for another batch
        # size: a last-bit difference can carry a value across a uint8 rounding boundary, one level at most.
        a = png('a', 'test_results', f'image_{i:03d}.png')
        assert a.shape == (IMG, IMG, 3)
        assert np.abs(a - png('b', 'test_results', f'image_{i:03d}.png')).max() <= 1
        assert np.abs(png('a', 'imga', f'test_{i}.png') - png('b', 'imga', f'test_{i}.png')).max() <= 1
        sched = png('a', 'mask_scheduling', f'test_{i}.png')
        assert np.array_equal(sched, png('b', 'mask_scheduling', f'test_{i}.png'))
        steps = png('a', 'imga', f'test_{i}.png')
        assert sched.shape == steps.shape == (tile + 2, 5 * tile + 2, 3)   # 4 steps + start / input
        # first tile: the latent mask of the hand-made pixel mask (white = known), last tile all known
        first = sched[2:2 + IMG, 2:2 + IMG, 0][::IMG // LAT, ::IMG // LAT] == 255
        want = ~latent_mask(torch.from_numpy(hole_mask(i) / 255.0)[None].float(), IMG // LAT)[0].numpy()
        assert np.array_equal(first, want) and not want.all()
        assert (sched[2:2 + IMG, 4 * tile + 2:4 * tile + 2 + IMG] == 255).all()
        inp = np.asarray(Image.open(lab / 'img' / f'image_{i:03d}.png')).astype(int)
        assert np.abs(steps[2:2 + IMG, 2:2 + IMG].astype(int) - inp).max() <= 1   # input first
    names = sorted(p.name for p in (tmp_path / 'a' / 'test_results').iterdir())
    assert names == [f'image_{i:03d}.png' for i in IDS]
    assert (tmp_path / 'a' / 'schedules.png').is_file()
    # 5 schedules x (5 mask tiles + the 2 results of the first batch), headers above and schedule names left
    w, h = Image.open(tmp_path / "a" / "schedules.png").size
    assert w > 7 * tile + 2 and h > 5 * tile + 2 and grid_of(tmp_path / "a" / "schedules.png", 5, 7).shape[:2] == \
        (5 * tile + 2, 7 * tile + 2)


def grid_of(path, rows, cols, tile=IMG + 2):
    """The image grid of a labelled figure: its bottom-right rows x cols tiles (labels sit above and left)."""
    g = np.asarray(Image.open(path))
    return g[g.shape[0] - (rows * tile + 2):, g.shape[1] - (cols * tile + 2):]


def test_schedules_png_rows_are_each_schedules_own_decoding(lab, tmp_path):
    """Each row's results are what a run under that schedule writes: the run's own schedule reuses the batch's
    decoding, the other rows are decoded apart (a row mixed up, or the reused row taken from the wrong images,
    shows another schedule's fill)."""
    for mode in ('linear', 'cosine'):
        assert cli(lab, tmp_path / mode, '--mask-func', mode, '--batch-size', '2', '--temperature', '1') == 0
    tile, n = IMG + 2, 2                                                   # 2 = the first batch's images
    sched = grid_of(tmp_path / 'linear' / 'schedules.png', len(SCHEDULES), 5 + n).astype(int)
    for mode in ('linear', 'cosine'):
        row = SCHEDULES.index(mode)
        for b, i in enumerate(IDS[:n]):
            x = (5 + b) * tile + 2                                         # after the 5 mask tiles
            got = sched[row * tile + 2:row * tile + 2 + IMG, x:x + IMG]
            want = np.asarray(Image.open(tmp_path / mode / 'test_results' / f'image_{i:03d}.png')).astype(int)
            assert np.abs(got - want).max() <= 1, (mode, i)               # one uint8 level: see batch invariance


def test_script_paste_known_and_sweet_spot(lab, tmp_path):
    assert cli(lab, tmp_path, '--paste-known', '--sweet-spot', '1', '--batch-size', '3') == 0
    i = IDS[0]
    out = np.asarray(Image.open(tmp_path / 'test_results' / f'image_{i:03d}.png')).astype(int)
    inp = np.asarray(Image.open(lab / 'img' / f'image_{i:03d}.png')).astype(int)
    keep = hole_mask(i) == 255
    assert np.abs(out[keep] - inp[keep]).max() <= 1
    assert Image.open(tmp_path / 'mask_scheduling' / f'test_{i}.png').size[0] == 3 * (IMG + 2) + 2  # start, 1, fill


def test_gallery_rows_input_steps_result_ground_truth(lab, tmp_path, capsys):
    gt = tmp_path / 'gt'
    gt.mkdir()
    for k, i in enumerate(IDS):
        Image.new('RGB', (IMG, IMG), (40 * k, 0, 0)).save(gt / f'image_{i:03d}.png')
    assert cli(lab, tmp_path / 'o', '--gallery', '2', '--gt-path', str(gt)) == 0
    tile = IMG + 2
    telea = int(have_opencv())  # OpenCV's Telea fill gets a column before the ground truth when installed
    g = grid_of(tmp_path / 'o' / 'gallery.png', 2, 7 + telea)  # 2 x (input, 4 steps, result, [Telea], truth)
    for row, i in enumerate(IDS[:2]):
        y = 2 + row * tile
        cell = lambda c: g[y:y + IMG, 2 + c * tile:2 + c * tile + IMG].astype(int)
        inp = np.asarray(Image.open(lab / 'img' / f'image_{i:03d}.png')).astype(int)
        assert np.abs(cell(0) - inp).max() <= 1
        assert np.array_equal(cell(5), np.asarray(Image.open(tmp_path / 'o' / 'test_results' / f'image_{i:03d}.png')))
        if telea:  # Telea only fills the holes
            keep = hole_mask(i) == 255
            assert np.abs(cell(6)[keep] - inp[keep]).max() <= 1
        assert np.array_equal(cell(6 + telea), np.asarray(Image.open(gt / f'image_{i:03d}.png')))
    (gt / 'image_003.png').unlink()
    capsys.readouterr()
    err = _error(capsys, cli(lab, tmp_path / 'p', '--gallery', '1', '--gt-path', str(gt)))
    assert 'image_003.png' in err and not (tmp_path / 'p' / 'test_results').exists()


def test_script_accepts_training_state_dict(lab, tmp_path):
    atomic_save(dict(transformer=torch.load(lab / 'tr.pt', weights_only=True), epoch=3), str(tmp_path / 'state.pt'))
    assert cli(lab, tmp_path / 'o', '--partial', '0.4', ckpt=tmp_path / 'state.pt') == 0
    assert [p.name for p in (tmp_path / 'o' / 'test_results').iterdir()] == ['image_003.png']


def _copy(lab, dst, drop=()):
    dst.mkdir()
    for sub in ('img', 'mask'):
        (dst / sub).mkdir()
        for p in (lab / sub).iterdir():
            if p.name not in drop:
                (dst / sub / p.name).write_bytes(p.read_bytes())
    return dst


def _error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err
    return err


def test_bad_inputs_give_one_line_errors(lab, tmp_path, capsys):
    d = _copy(lab, tmp_path / 'nomask', drop=('mask_010.png',))
    assert 'image_010.png' in _error(capsys, cli(lab, tmp_path / 'o', img=d / 'img', mask=d / 'mask'))
    d = _copy(lab, tmp_path / 'noimage', drop=('image_011.png',))
    assert 'mask_011.png' in _error(capsys, cli(lab, tmp_path / 'o', img=d / 'img', mask=d / 'mask'))
    d = _copy(lab, tmp_path / 'size')
    Image.new('RGB', (2 * IMG, 2 * IMG)).save(d / 'img' / 'image_020.png')
    Image.new('L', (2 * IMG, 2 * IMG), 255).save(d / 'mask' / 'mask_020.png')
    err = _error(capsys, cli(lab, tmp_path / 'o', img=d / 'img', mask=d / 'mask'))
    assert 'image_020.png' in err and f'{2 * IMG}x{2 * IMG}' in err
    (tmp_path / 'empty').mkdir()
    assert 'no masked image files' in _error(capsys, cli(lab, tmp_path / 'o', img=tmp_path / 'empty'))
    assert 'not found' in _error(capsys, cli(lab, tmp_path / 'o', mask=tmp_path / 'nowhere'))
    assert 'checkpoint not found' in _error(capsys, cli(lab, tmp_path / 'o', ckpt=tmp_path / 'none.pt'))
    atomic_save(MaskGit(inpaint_maskgit_param(lab, dim=24)).transformer.state_dict(), str(tmp_path / 'wide.pt'))
    err = _error(capsys, cli(lab, tmp_path / 'o', ckpt=tmp_path / 'wide.pt'))
    assert 'wide.pt' in err and 'shape' in err
    assert not (tmp_path / 'o' / 'test_results').exists()   # nothing written on bad input


# ----------------------------------------------------------------------------- Inpainter: refine, images

def lab_batch(lab, **given):
    """(Inpainter on the lab's models with DecodeSettings given over its config, images, masks, ids)."""
    args = inpainting.parse_args(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'),
                                  '--load-transformer-ckpt-path', str(lab / 'tr.pt')])
    model, cfg = pipeline.load_maskgit(args, torch.device('cpu'))
    mean, std = data_stats(cfg, 'test')
    data = PairedTestDataset(lab / 'img', lab / 'mask', 1.0, mean, std)
    imgs, masks, ids = (torch.stack(x) if torch.is_tensor(x[0]) else torch.tensor(x) for x in zip(*data))
    settings = DecodeSettings.from_config(cfg['model_param'], **given)
    return pipeline.Inpainter(model, settings, mean, std), imgs, masks, ids


def plain_decode(inp, imgs, masks, ids, tokens=None, seed=None):
    """One decode of the holes in the context of `tokens` (default: the masked image's own)."""
    s = inp.settings
    unknown = latent_mask(masks, inp.factor).flatten(1)
    tokens = inp.vqgan.encode_indices(imgs) if tokens is None else tokens
    return decode(inp.model.transformer, tokens, unknown, image_seeds(s.seed if seed is None else seed, ids),
                  inp.model.mask_token_id, s.schedule(unknown.sum(1)), s)


def test_refine_0_is_the_plain_decode(lab):
    inp, imgs, masks, ids = lab_batch(lab, total_iter=4, seed=3)
    out, plain = inp(imgs, masks, ids), plain_decode(inp, imgs, masks, ids)
    for f in ('tokens', 'masks', 'steps', 'preds'):
        assert torch.equal(getattr(out, f), getattr(plain, f)), f


def test_refine_decodes_the_holes_again_in_the_re_encoded_composites_context(lab):
    context_changed = seed_mattered = False
    for temperature in (0.0, 1.0):  # argmax, then sampled: the seed matters in the second
        inp, imgs, masks, ids = lab_batch(lab, total_iter=4, seed=3, refine=1, temperature=temperature)
        unknown = latent_mask(masks, inp.factor).flatten(1)
        first = plain_decode(inp, imgs, masks, ids)
        composite = masks * denormalize(imgs, inp.mean, inp.std) + (1 - masks) * inp.images(first.tokens)
        context = inp.vqgan.encode_indices(normalize(composite, inp.mean, inp.std))
        out = inp(imgs, masks, ids)
        assert torch.equal(out.tokens[~unknown], context[~unknown])          # known: the composite's tokens
        again = plain_decode(inp, imgs, masks, ids, context, seed=4)
        assert torch.equal(out.tokens, again.tokens)                         # holes decoded again, seed + 1
        context_changed |= bool((context != inp.vqgan.encode_indices(imgs))[~unknown].any())
        seed_mattered |= not torch.equal(again.tokens, plain_decode(inp, imgs, masks, ids, context, seed=3).tokens)
    assert context_changed and seed_mattered  # else this test could not tell a wrong context or seed


def test_render_decodes_all_steps_in_one_call_and_reuses_the_last(lab, monkeypatch):
    inp, imgs, masks, ids = lab_batch(lab, total_iter=4)
    out = inp(imgs, masks, ids)
    calls, real = [], inp.vqgan.decode_indices
    monkeypatch.setattr(inp.vqgan, 'decode_indices', lambda t: calls.append(len(t)) or real(t))
    steps, final = inp.render(imgs, masks, out)
    assert calls == [4 * len(ids)]                                        # every step at once, the result reused
    monkeypatch.undo()
    for s in range(4):
        assert torch.allclose(steps[s], inp.images(out.preds[s]), atol=1e-5)
    assert torch.equal(final, steps[-1]) and torch.allclose(final, inp.final(imgs, masks, out), atol=1e-5)
    inp.paste_known = True
    _, pasted = inp.render(imgs, masks, out)
    keep = (masks == 1).expand_as(pasted)
    assert torch.equal(pasted[keep], denormalize(imgs, inp.mean, inp.std)[keep])
    assert torch.equal(pasted[~keep], final[~keep])


def test_script_refine_keeps_known_pixels_and_writes_every_output(lab, tmp_path):
    assert cli(lab, tmp_path / 'r', '--refine', '1', '--paste-known', '--batch-size', '2') == 0
    for i in IDS:
        for sub, name in (('test_results', f'image_{i:03d}.png'), ('imga', f'test_{i}.png'),
                          ('mask_scheduling', f'test_{i}.png')):
            assert (tmp_path / 'r' / sub / name).is_file()
        out = np.asarray(Image.open(tmp_path / 'r' / 'test_results' / f'image_{i:03d}.png')).astype(int)
        inp = np.asarray(Image.open(lab / 'img' / f'image_{i:03d}.png')).astype(int)
        keep = hole_mask(i) == 255
        assert np.abs(out[keep] - inp[keep]).max() <= 1
    assert cli(lab, tmp_path / 'a', '--refine', '0') == 0 and cli(lab, tmp_path / 'b') == 0
    for i in IDS:  # --refine 0 is the plain path
        result = lambda run: (tmp_path / run / 'test_results' / f'image_{i:03d}.png').read_bytes()
        assert result('a') == result('b')


@pytest.mark.parametrize('batch_size', ['1', '3'])   # 1: the next batch finds it; 3: the final join does
def test_a_failed_background_write_is_a_one_line_error(lab, tmp_path, capsys, monkeypatch, batch_size):
    real = inpainting.atomic_save_image

    def full(img, path):  # the first image only: later writes succeed, the failure must not be lost
        if path.endswith('image_003.png'):
            raise OSError("no space left on device")
        real(img, path)
    monkeypatch.setattr(inpainting, 'atomic_save_image', full)   # used by the writer thread only
    rc = cli(lab, tmp_path / 'o', '--batch-size', batch_size)
    err = capsys.readouterr().err                                  # the progress bar, then the error
    assert rc == 2 and err.splitlines()[-1] == 'error: no space left on device' and 'Traceback' not in err
