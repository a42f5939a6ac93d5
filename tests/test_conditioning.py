"""Class conditioning, classifier-free guidance, generation, outpainting, box editing and --image / --mask
(models/transformer.py, models/decoding.py, models/masks.py, training_transformer.py, inpainting.py, generate.py).

None of it needs a trained conditional model: tiny random ones (conftest.py) show every invariant."""
import argparse
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import ndimage

import generate
import inpainting
import pipeline
import training_transformer as tt
from conftest import CLASS_NAMES, COURSE_TRAIN, IMG, LAT, TINY_VQ, interrupt_then_resume, run_args, tiny_mp
from dataset import PairedTestDataset, data_stats
from models.decoding import DecodeSettings, decode, guided_logits, image_seeds
from models.maskgit import MaskGit
from models.masks import OUTPAINT_REGIONS, box_keep, latent_mask, outpaint_keep, snap_box
from models.transformer import BidirectionalTransformer
from utils import atomic_save, load_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')

C, K, N, DIM = 3, 16, 16, 32  # classes, codes, tokens, width of the model-level tests
FACTOR = IMG // LAT           # pixels per token side in the inpainting labs


def transformer_param(**kw):
    return dict(tiny_mp(dropout=0.0)['Transformer_param'], **kw)


@pytest.fixture(scope='module')
def cond():
    """A tiny conditional transformer whose class vectors matter (random, not the zero init), eval mode."""
    torch.manual_seed(0)
    tr = BidirectionalTransformer(transformer_param(num_classes=C)).eval()
    with torch.no_grad():
        tr.class_emb.weight.normal_(0, 1.0)
        tr.tok_emb.weight.normal_(0, 1.0)  # peaky logits
    return tr


def problem(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (b, N), generator=g)
    unknown = torch.rand(b, N, generator=g) < 0.6
    return tokens, unknown, torch.randint(0, C, (b,), generator=g)


def decode_with(fn, tokens, unknown, labels=None, **kw):
    s = DecodeSettings(**{'total_iter': 5, 'temperature': 1.0, **kw})
    return decode(fn, tokens, unknown, image_seeds(0, range(len(tokens))), K, s.schedule(unknown.sum(1)), s,
                  labels, None if labels is None else C)


def equal_decodes(a, b):
    return all(torch.equal(x, y) for x, y in ((a.tokens, b.tokens), (a.masks, b.masks), (a.preds, b.preds)))


# ----------------------------------------------------------------------------- the model

def test_unconditional_state_dict_and_initial_weights_are_unchanged():
    torch.manual_seed(0)
    plain = BidirectionalTransformer(transformer_param()).state_dict()
    torch.manual_seed(0)
    conditional = BidirectionalTransformer(transformer_param(num_classes=C)).state_dict()
    assert not any(k.startswith('class_emb') for k in plain)
    assert list(conditional) == list(plain) + ['class_emb.weight', 'class_emb._extra_state']
    assert all(torch.equal(plain[k], conditional[k]) for k in plain)  # the class table draws no random numbers
    assert conditional['class_emb.weight'].shape == (C + 1, DIM) and not conditional['class_emb.weight'].any()
    assert conditional['class_emb._extra_state'] == {'class_names': None}


def test_no_class_is_the_null_class_and_w0_is_the_conditional_pass(cond):
    tokens, unknown, labels = problem()
    null = torch.full((len(tokens),), C)
    with torch.no_grad():
        assert torch.equal(cond(tokens), cond(tokens, null))
    fed_null = decode_with(lambda t: cond(t, null), tokens, unknown)
    assert equal_decodes(decode_with(cond, tokens, unknown), fed_null)                    # no labels
    assert equal_decodes(decode_with(cond, tokens, unknown, null, cfg_scale=0.0), fed_null)
    assert not equal_decodes(decode_with(cond, tokens, unknown, labels), fed_null)       # classes matter here


def test_labels_are_refused_by_an_unconditional_transformer():
    with pytest.raises(ValueError, match='unconditional transformer'):
        BidirectionalTransformer(transformer_param())(torch.zeros(1, N, dtype=torch.long), torch.zeros(1).long())
    with pytest.raises(ValueError, match='num_classes must be an integer >= 0'):
        BidirectionalTransformer(transformer_param(num_classes=-1))


def fp32_pass_tolerance(tr, tokens, labels):
    """A first-order bound on how far two fp32 evaluations of the same rows (e.g. in batches of another size,
    whose kernels may sum in another order) can differ. A dot product of length k rounds with relative error
    at most gamma_k = k * u (u = 2^-24, fp32's unit roundoff); the activations are LayerNorm-normalised
    between stages, so each stage's relative error passes on at unit gain and the errors of the longest
    chain of reductions add: per layer QKV (dim), QK^T (head dim), AV (N keys), out (dim), MLP (dim, hidden),
    then Token_Prediction (dim) and the tied head (dim). Relative to the head's sum of |terms|, and each of
    two evaluations may be off by that much."""
    b0 = tr.blocks[0]
    dim, hidden, heads = b0.MLP[0].in_features, b0.MLP[0].out_features, b0.MultiHeadAttention.num_heads
    chain = len(tr.blocks) * (dim + dim // heads + tokens.shape[1] + dim + dim + hidden) + 2 * dim
    with torch.no_grad():
        x = tr.LN(tr.tok_emb(tokens) + tr.pos_emb + tr.class_emb(labels)[:, None])
        h = tr.Token_Prediction(tr.blocks(x))                                   # [B, N, dim]
        terms = h.abs() @ tr.tok_emb.weight.abs().t() + tr.bias.abs()           # [B, N, K+1]: sum of |h_i e_ki|
    return 2 * chain * 2.0 ** -24 * terms.max().item()


@pytest.mark.parametrize('w', [0.5, 3.0])
def test_guidance_is_one_batched_pass_equal_to_two_separate_passes(cond, w):
    tokens, _, labels = problem(b=5)
    calls = []

    def fn(t, y):
        calls.append((len(t), y.tolist()))
        return cond(t, y)
    with torch.no_grad():
        guided = guided_logits(fn, tokens, labels, C, w)
        c, u = cond(tokens, labels), cond(tokens, torch.full_like(labels, C))   # two separate passes
    assert calls == [(10, labels.tolist() + [C] * 5)]                          # one pass: cond rows, then null rows
    # g = (1+w) c - w u: an error d in c and u moves g by at most (1 + 2w) d
    tol = (1 + 2 * w) * fp32_pass_tolerance(cond, tokens, labels)
    assert (guided - ((1 + w) * c - w * u)).abs().max().item() <= tol
    assert tol < 0.01 * w * (c - u).abs().max().item()      # the bound is far below what guidance changes
    calls.clear()
    with torch.no_grad():
        assert torch.equal(guided_logits(fn, tokens, labels, C, 0.0), c) and calls == [(5, labels.tolist())]


def test_cfg_schedule_and_one_pass_per_step(cond):
    s = DecodeSettings(total_iter=5, cfg_scale=2.0, cfg_schedule='linear')
    assert [s.cfg_weight(t, 5) for t in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert [DecodeSettings(cfg_scale=2.0).cfg_weight(t, 5) for t in range(5)] == [2.0] * 5
    assert DecodeSettings(cfg_scale=2.0, cfg_schedule='linear').cfg_weight(0, 1) == 2.0
    tokens, unknown, labels = problem()
    unknown[:, 0] = True
    rows = []
    decode_with(lambda t, y: rows.append(len(t)) or cond(t, y), tokens, unknown, labels, cfg_scale=2.0,
                cfg_schedule='linear')
    assert rows == [4, 8, 8, 8, 8]   # w = 0 at the first step: the conditional half only
    with pytest.raises(ValueError, match='^--cfg-schedule must be one of constant, linear'):
        DecodeSettings(cfg_schedule='cosine')
    with pytest.raises(ValueError, match='^--cfg-scale must be a number >= 0'):
        DecodeSettings(cfg_scale=-1.0)


# ----------------------------------------------------------------------------- training

def init_settings():
    return dict(COURSE_TRAIN, learning_rate=1e-3)


def build(mp, init_from, names=None):
    args = argparse.Namespace(seed=0, resume=None, start_from_epoch=0, init_from=str(init_from), compile=False)
    proc = tt.Proc(1, 0, torch.device('cpu'))
    return tt.build(args, mp, init_settings(), proc, torch.amp.GradScaler('cuda', enabled=False), 1, names)


def test_init_from_an_unconditional_checkpoint_gives_its_logits(tmp_path, capsys):
    torch.manual_seed(1)
    plain = MaskGit(tiny_mp()).eval()
    atomic_save(plain.transformer.state_dict(), str(tmp_path / 'plain.pt'))
    run = build(tiny_mp(num_classes=C), tmp_path / 'plain.pt', CLASS_NAMES)
    notes = capsys.readouterr().err.strip().splitlines()
    assert any(n.startswith('note: ') and 'plain.pt is unconditional' in n for n in notes), notes
    conditional = run.raw.transformer.eval()
    assert conditional.class_emb.names == CLASS_NAMES
    tokens, _, labels = problem()
    with torch.no_grad():
        want = plain.transformer(tokens)
        for y in (labels, None, torch.full_like(labels, C)):
            assert torch.equal(conditional(tokens, y), want)
    sd = plain.transformer.state_dict()
    del sd['bias']
    atomic_save(sd, str(tmp_path / 'nobias.pt'))
    with pytest.raises(ValueError, match="nobias.pt: key 'bias' .* is missing"):   # everything else stays strict
        build(tiny_mp(num_classes=C), tmp_path / 'nobias.pt', CLASS_NAMES)


def test_cond_drop_rate_and_ranks():
    n = 40000
    labels = torch.arange(n) % C
    y = tt.class_rows(torch.Generator().manual_seed(3), labels, torch.arange(n), 0.1, C, 1, 0)
    dropped = y == C
    # binomial: the rate is within 4 standard deviations (sqrt(0.1 * 0.9 / n) = 0.0015) of 0.1
    assert abs(dropped.float().mean().item() - 0.1) < 4 * math.sqrt(0.09 / n)
    assert torch.equal(y[~dropped], labels[~dropped])
    assert not (tt.class_rows(torch.Generator(), labels, torch.arange(99), 0.0, C, 1, 0) == C).any()
    assert (tt.class_rows(torch.Generator(), labels, torch.arange(99), 1.0, C, 1, 0) == C).all()
    one = tt.class_rows(torch.Generator().manual_seed(5), labels, torch.arange(8), 0.5, C, 1, 0) == C
    for rank in (0, 1):  # two DDP processes drop what one process drops in their rows of the global batch
        mine = tt.class_rows(torch.Generator().manual_seed(5), labels, torch.arange(4), 0.5, C, 2, rank) == C
        assert torch.equal(mine, one[rank::2])


TRAIN_CLASSES = ['b', 'a', None, 'a', 'b', 'b', 'a', 'a', 'b', 'a', 'b', 'a']  # of train/image_00000.png ...


@pytest.fixture(scope='module')
def cond_lab(make_lab):
    """The training lab of test_transformer.py with a 2-class model and labels.json (one image unlabelled)."""
    d = make_lab(TINY_VQ, tiny_mp(dropout=0.1, num_classes=2), epochs=2, batch_size=4, accum_grad=1,
                 learning_rate=3e-3, warmup_steps=2, save_per_epoch=1, cond_drop=0.25)
    labels = {f'train/image_{i:05d}.png': c for i, c in enumerate(TRAIN_CLASSES)}
    labels.update({f'val/image_{i:05d}.png': 'ab'[i % 2] for i in range(4)})
    (d / 'labels.json').write_text(json.dumps(labels))
    return d


def test_labels_follow_the_token_cache_rows(cond_lab):
    args = tt.parse_args(run_args(cond_lab, cond_lab / 'unused'))
    names, train, val = tt.load_classes(args, yaml.safe_load((cond_lab / 'mg.yml').read_text())['model_param'])
    assert names == ['a', 'b']   # sorted
    want = [2 if c is None else names.index(c) for c in TRAIN_CLASSES]   # null: id 2
    assert train.tolist() == [i for i in want for _ in (0, 1)]          # each image, then its flip
    assert val.tolist() == [0, 1, 0, 1]


def test_bad_labels_are_one_line_errors_before_any_output(cond_lab, tmp_path):
    labels = json.loads((cond_lab / 'labels.json').read_text())
    cases = [('missing.json', None, 'labels file not found: .*missing.json'),
             ('noentry.json', {k: v for k, v in labels.items() if k != 'train/image_00003.png'},
              "noentry.json has no entry 'train/image_00003.png'"),
             ('three.json', dict(labels, **{'val/image_00000.png': 'c'}),
              'three.json has 3 classes but .* num_classes 2'),
             ('broken.json', '{"train/', 'cannot read labels file .*broken.json')]
    for name, content, error in cases:
        path = cond_lab / name
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises((ValueError, FileNotFoundError), match=error):
            tt.main(run_args(cond_lab, tmp_path / 'out', '--labels', str(path), '--cache-dir', str(tmp_path / 'c')))
        assert not (tmp_path / 'out').exists() and not (tmp_path / 'c').exists()


def test_conditional_resume_equals_uninterrupted(cond_lab, tmp_path, monkeypatch):
    full = tt.main(run_args(cond_lab, tmp_path / 'a', '--accum-grad', '2'))
    assert full['step'] == 6
    saved, resumed = interrupt_then_resume(cond_lab, tmp_path / 'b', monkeypatch, '--accum-grad', '2')
    assert saved == 4
    a, b = (load_checkpoint(p / 'last_ckpt.pt') for p in (tmp_path / 'a', tmp_path / 'b'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert [r['train_loss'] for r in resumed['rows']] == [r['train_loss'] for r in full['rows']]
    assert a['class_emb._extra_state'] == b['class_emb._extra_state'] == {'class_names': ['a', 'b']}
    assert a['class_emb.weight'][:2].abs().min() > 0   # the two classes were trained (from zero)
    tt.main(['--export', str(tmp_path / 'a' / 'last_ckpt.pt'), '--out', str(tmp_path / 'ship.pt')])
    assert load_checkpoint(tmp_path / 'ship.pt')['class_emb._extra_state'] == {'class_names': ['a', 'b']}


# ----------------------------------------------------------------------------- regions: outpainting and boxes

def test_outpaint_regions_by_hand():
    h, f = 4, 2   # 4x4 tokens of 2x2 pixels; k = 2
    grids = {'center': [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
             'left': [[1, 1, 0, 0]] * 4, 'right': [[0, 0, 1, 1]] * 4,
             'top': [[1] * 4] * 2 + [[0] * 4] * 2, 'bottom': [[0] * 4] * 2 + [[1] * 4] * 2,
             'top-left': [[1, 1, 0, 0]] * 2 + [[0] * 4] * 2, 'bottom-right': [[0] * 4] * 2 + [[0, 0, 1, 1]] * 2}
    for region, grid in grids.items():
        keep = outpaint_keep(region, h * f, f)
        assert keep.shape == (1, h * f, h * f)
        assert keep[0, ::f, ::f].tolist() == grid, region
        assert torch.equal(keep, keep[:, ::f, ::f].repeat_interleave(f, 1).repeat_interleave(f, 2))  # whole tokens
    for region in OUTPAINT_REGIONS:  # the documented kept fractions; odd grids keep floor(h/2) per side
        fraction = outpaint_keep(region, 64, 4).mean().item()
        assert fraction == (0.5 if region in ('left', 'right', 'top', 'bottom') else 0.25), region
        assert outpaint_keep(region, 5 * 4, 4)[0, ::4, ::4].sum() == (2 * 5 if '-' not in region and
                                                                     region != 'center' else 4)
    with pytest.raises(ValueError, match='--outpaint middle: unknown region; use one of center, left'):
        outpaint_keep('middle', 16, 4)


def test_boxes_snap_outward_to_tokens_and_bad_boxes_are_refused():
    assert snap_box((3, 2, 9, 7), 16, 4) == (0, 0, 12, 8)
    assert snap_box((4, 4, 8, 8), 16, 4) == (4, 4, 8, 8)
    keep = box_keep((5, 1, 6, 2), 16, 4)
    assert keep[0, 0:4, 4:8].eq(0).all() and keep.sum() == 16 * 16 - 16
    for box, error in [((4, 4, 4, 8), 'is empty'), ((9, 2, 3, 7), 'is empty'), ((-1, 0, 4, 4), 'is outside the 16x16'),
                       ((0, 0, 17, 4), 'is outside the 16x16')]:
        with pytest.raises(ValueError, match=f"^--box {','.join(map(str, box))} {error}"):
            snap_box(box, 16, 4)


def hole_mask(i):
    a = np.full((IMG, IMG), 255, np.uint8)
    a[i % 8:i % 8 + 3, 5:10] = 0
    return a


IDS = (3, 10)


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    """A conditional tiny VQGAN + transformer (classes cat, dog, fish) and two masked images."""
    return make_inpainting_lab(IDS, hole_mask, conditional=True)


@pytest.fixture(scope='module')
def plain_lab(make_inpainting_lab):
    return make_inpainting_lab(IDS, hole_mask)


def inpainter(lab, *flags):
    args = inpainting.parse_args(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'),
                                  '--load-transformer-ckpt-path', str(lab / 'tr.pt'), '--total-iter', '4', *flags])
    model, cfg = pipeline.load_maskgit(args, torch.device('cpu'))
    settings = pipeline.decoding_settings(args, cfg['model_param'])
    label = pipeline.class_label(model, settings, args.class_name, args.MaskGitConfig)
    inp = pipeline.Inpainter(model, settings, *data_stats(cfg, 'test'), label=label)
    data = PairedTestDataset(lab / 'img', lab / 'mask', 1.0, inp.mean, inp.std)
    imgs, masks, ids = (torch.stack(x) if torch.is_tensor(x[0]) else torch.tensor(x) for x in zip(*data))
    return inp, imgs, masks, ids


@pytest.mark.parametrize('region', ['box', 'center', 'left', 'bottom-right'])
def test_regenerated_regions_never_change_the_tokens_kept(lab, region):
    inp, imgs, _, ids = inpainter(lab, '--class', 'dog', '--cfg-scale', '2')
    whole = torch.ones(len(ids), 1, IMG, IMG)                                  # images of one's own: no holes
    keep = box_keep((3, 2, 9, 7), IMG, FACTOR) if region == 'box' else outpaint_keep(region, IMG, FACTOR)
    shown, masks = inp.regenerate(imgs, whole, keep)
    out = inp(shown, masks, ids)
    kept = ~latent_mask(keep[None], FACTOR).flatten(1)[0]                      # [N]: the tokens outside the region
    assert torch.equal(latent_mask(masks, FACTOR).flatten(1), ~kept.expand(len(ids), -1))   # only the region
    assert torch.equal(out.tokens[:, kept], inp.tokens(shown)[:, kept])
    assert not torch.equal(out.tokens[:, ~kept], inp.tokens(shown)[:, ~kept])


def cli(lab, out, *extra, folders=True):
    data = ['--test-maskedimage-path', str(lab / 'img'), '--test-mask-path', str(lab / 'mask')] if folders else []
    return inpainting.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                            str(lab / 'tr.pt'), '--total-iter', '3', '--output-dir', str(out), *data, *extra])


def png(path):
    return np.asarray(Image.open(path)).astype(int)


def one_line_error(capsys, rc, out=None):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    assert out is None or not out.exists()   # nothing written
    return err


def test_box_edit_of_the_test_folders_keeps_every_pixel_outside_the_box(lab, tmp_path):
    assert cli(lab, tmp_path, '--box', '3,2,9,7', '--class', 'fish', '--cfg-scale', '1.5') == 0
    inside = box_keep((3, 2, 9, 7), IMG, FACTOR)[0].numpy() == 0     # the box snapped to tokens: 0..12 x 0..8
    for i in IDS:
        result, given = png(tmp_path / 'test_results' / f'image_{i:03d}.png'), png(lab / 'img' / f'image_{i:03d}.png')
        known = ~inside & (hole_mask(i) == 255)
        assert np.array_equal(result[known], given[known])             # bit-identical outside the box (and holes)
        assert not np.array_equal(result[inside], given[inside])


def test_outpaint_and_class_on_the_test_folders_write_the_course_files(lab, tmp_path):
    assert cli(lab, tmp_path, '--outpaint', 'center', '--class', '1') == 0
    assert sorted(p.name for p in (tmp_path / 'test_results').iterdir()) == [f'image_{i:03d}.png' for i in IDS]
    sched = png(tmp_path / 'mask_scheduling' / f'test_{IDS[0]}.png')
    first = sched[2:2 + IMG, 2:2 + IMG, 0][::FACTOR, ::FACTOR] == 255  # the first tile: white = known tokens
    kept = outpaint_keep('center', IMG, FACTOR)[0, ::FACTOR, ::FACTOR].bool().numpy()
    assert not (first & ~kept).any() and first.any()   # known: the centre, less the mask file's hole


# ----------------------------------------------------------------------------- --image / --mask (issue 33)

W, H = 48, 36  # a non-square picture of one's own, larger than the model's IMG


@pytest.fixture(scope='module')
def own(tmp_path_factory):
    """A 48x36 picture with masks in both conventions (a 10x8 hole), a 48x36 RGBA picture with a transparent
    hole, and files that are not images."""
    d = tmp_path_factory.mktemp('own')
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(d / 'photo.png')
    white = np.zeros((H, W), np.uint8)
    white[10:18, 20:30] = 255
    Image.fromarray(white, 'L').save(d / 'white.png')
    Image.fromarray(255 - white, 'L').save(d / 'black.png')
    Image.fromarray(white[:, :40], 'L').save(d / 'narrow.png')                  # another size
    Image.new('L', (W, H), 0).save(d / 'no_hole.png')
    Image.fromarray((white > 0).astype(np.uint8), 'L').save(d / 'zero_one.png')
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[10:18, 20:30, 3] = 0
    Image.fromarray(rgba, 'RGBA').save(d / 'cutout.png')
    (d / 'broken.png').write_bytes(b'\x89PNG not really')
    return d


def white_hole():
    hole = np.zeros((H, W), bool)
    hole[10:18, 20:30] = True
    return hole


def far_from(hole, px=4):
    """Pixels more than px from the hole (fullsize.FEATHER = 3): the input's, byte for byte."""
    return ndimage.distance_transform_edt(~hole) > px


def test_own_image_comes_back_at_its_size_with_far_pixels_byte_identical(lab, own, tmp_path):
    assert cli(lab, tmp_path, '--image', str(own / 'photo.png'), '--mask', str(own / 'white.png'),
               '--fill-strategy', 'model', folders=False) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['photo_result.png']    # steps only when asked
    result, given = Image.open(tmp_path / 'photo_result.png'), png(own / 'photo.png')
    assert result.size == (W, H) and result.mode == 'RGB'
    result, hole = np.asarray(result).astype(int), white_hole()
    assert np.array_equal(result[far_from(hole)], given[far_from(hole)])
    assert not np.array_equal(result[hole], given[hole])                         # the hole filled


def test_mask_conventions_give_the_same_hole(lab, own, tmp_path):
    assert cli(lab, tmp_path / 'w', '--image', str(own / 'photo.png'), '--mask', str(own / 'white.png'),
               '--fill-strategy', 'model', folders=False) == 0
    assert cli(lab, tmp_path / 'b', '--image', str(own / 'photo.png'), '--mask', str(own / 'black.png'),
               '--mask-convention', 'black', '--fill-strategy', 'model', folders=False) == 0
    assert np.array_equal(png(tmp_path / 'w' / 'photo_result.png'), png(tmp_path / 'b' / 'photo_result.png'))
    # black.png under the default (white = hole) is all but the hole: filled, with a note of the other convention
    assert cli(lab, tmp_path / 'x', '--image', str(own / 'photo.png'), '--mask', str(own / 'black.png'),
               '--fill-strategy', 'model', folders=False) == 0
    assert not np.array_equal(png(tmp_path / 'x' / 'photo_result.png'), png(tmp_path / 'w' / 'photo_result.png'))


def test_mask_from_alpha_fills_the_transparent_pixels_and_keeps_rgba(lab, own, tmp_path):
    assert cli(lab, tmp_path, '--image', str(own / 'cutout.png'), '--mask-from-alpha', '--fill-strategy', 'model',
               folders=False) == 0
    out, given = Image.open(tmp_path / 'cutout_result.png'), png(own / 'cutout.png')
    assert out.mode == 'RGBA' and out.size == (W, H)
    out, hole = np.asarray(out).astype(int), white_hole()
    assert (out[hole, 3] == 255).all()                                           # filled: opaque
    assert np.array_equal(out[far_from(hole)], given[far_from(hole)])


def test_mask_of_another_size_is_an_error_unless_resize_mask(lab, own, tmp_path, capsys):
    out = tmp_path / 'o'
    err = one_line_error(capsys, cli(lab, out, '--image', str(own / 'photo.png'), '--mask', str(own / 'narrow.png'),
                                     folders=False), out)
    assert 'narrow.png is 40x36 but its image is 48x36' in err
    assert cli(lab, out, '--image', str(own / 'photo.png'), '--mask', str(own / 'narrow.png'), '--resize-mask',
               folders=False) == 0
    assert Image.open(out / 'photo_result.png').size == (W, H)


def test_own_outpaint_extends_the_canvas_keeping_the_whole_original(lab, own, tmp_path):
    assert cli(lab, tmp_path, '--image', str(own / 'photo.png'), '--outpaint', 'left=16,top=4', '--save-steps',
               folders=False) == 0
    out, given = png(tmp_path / 'photo_result.png'), png(own / 'photo.png')
    assert out.shape == (H + 4, W + 16, 3)
    assert np.array_equal(out[4 + 4:, 16 + 4:], given[4:, 4:])                  # beyond the feather band: the input
    strip = Image.open(tmp_path / 'photo_steps.png')                             # input + 3 steps, each full size
    assert strip.size == (4 * (W + 16 + 2) + 2, H + 4 + 4)


def test_own_box_is_a_hole_at_full_size(lab, own, tmp_path):
    assert cli(lab, tmp_path, '--image', str(own / 'photo.png'), '--box', '5,6,15,14', '--class', 'cat',
               '--fill-strategy', 'model', folders=False) == 0
    hole = np.zeros((H, W), bool)
    hole[6:14, 5:15] = True
    out, given = png(tmp_path / 'photo_result.png'), png(own / 'photo.png')
    assert np.array_equal(out[far_from(hole)], given[far_from(hole)]) and not np.array_equal(out[hole], given[hole])


def test_a_result_is_never_overwritten_silently(lab, own, tmp_path, capsys):
    flags = ['--image', str(own / 'photo.png'), '--mask', str(own / 'white.png'), '--fill-strategy', 'model']
    assert cli(lab, tmp_path, *flags, folders=False) == 0
    first = (tmp_path / 'photo_result.png').read_bytes()
    err = one_line_error(capsys, cli(lab, tmp_path, *flags[:3], str(own / 'black.png'), '--mask-convention', 'black',
                                     '--seed', '5', folders=False))
    assert 'photo_result.png exists' in err and '--overwrite' in err
    assert (tmp_path / 'photo_result.png').read_bytes() == first                 # untouched
    assert cli(lab, tmp_path, *flags, '--temperature', '1', '--seed', '5', '--overwrite', folders=False) == 0
    assert (tmp_path / 'photo_result.png').read_bytes() != first


def test_folder_mode_pairs_by_stem_and_reports_unmatched_first(lab, own, tmp_path, capsys):
    pics, masks, out = tmp_path / 'pics', tmp_path / 'masks', tmp_path / 'out'
    pics.mkdir(), masks.mkdir()
    for stem in ('a', 'b', 'lonely'):
        Image.open(own / 'photo.png').save(pics / f'{stem}.png')
    Image.open(own / 'white.png').save(masks / 'a.png')
    Image.open(own / 'white.png').save(masks / 'b_mask.png')
    Image.open(own / 'white.png').save(masks / 'stray.png')
    assert cli(lab, out, '--image', str(pics), '--mask', str(masks), folders=False) == 0
    err = capsys.readouterr().err
    assert 'skipped 1 picture(s) without a mask (lonely.png) and 1 mask(s) without a picture (stray.png)' in err
    assert sorted(p.name for p in out.iterdir()) == ['a_result.png', 'b_result.png']
    assert np.array_equal(png(out / 'a_result.png'), png(out / 'b_result.png'))  # same picture, mask, seed
    # a stale result of one of them: refused before any work, nothing written
    (out / 'b_result.png').unlink()
    (pics / 'lonely.png').unlink(), (masks / 'stray.png').unlink()
    err = one_line_error(capsys, cli(lab, out, '--image', str(pics), '--mask', str(masks), folders=False))
    assert 'a_result.png exists' in err and not (out / 'b_result.png').exists()


def test_bad_own_image_inputs_are_refused_before_any_output(lab, own, tmp_path, capsys):
    out = tmp_path / 'o'
    img, mask = str(own / 'photo.png'), str(own / 'white.png')
    cases = [(['--image', str(own / 'broken.png'), '--mask', mask], 'cannot read image .*broken.png'),
             (['--image', str(own / 'nowhere.png'), '--mask', mask], 'cannot read image .*nowhere.png'),
             (['--image', img, '--mask', str(own / 'broken.png')], 'cannot read mask .*broken.png'),
             (['--image', img, '--mask', str(own / 'zero_one.png')], 'zero_one.png is a 0/1 mask'),
             (['--image', img, '--mask', str(own / 'no_hole.png')], r'no_hole.png has no hole \(white pixels'),
             (['--image', img, '--mask-from-alpha'], 'has no transparent pixels'),
             (['--image', img, '--box', '60,0,70,10'], '--box 60,0,70,10 holds no pixel of the 48x36 picture')]
    for flags, error in cases:
        err = one_line_error(capsys, cli(lab, out, *flags, folders=False), out)
        assert re.search(error, err), err
    for flags, error in [(['--image', img], '--image needs --mask'), (['--mask', mask], '--mask needs --image'),
                         (['--image', img, '--mask', mask, '--gallery', '1'], '--gallery is for the test folders'),
                         (['--image', img, '--mask', mask, '--invert-mask'], 'pass --mask-convention black'),
                         (['--image', img, '--outpaint', 'left'], 'give side=pixels, e.g. --outpaint left=64'),
                         (['--outpaint', 'left=64'], '--outpaint side=pixels extends the canvas of --image'),
                         (['--image', img, '--outpaint', 'up=3'], 'expected side=pixels'),
                         (['--mask-convention', 'black'], '--mask-convention is for --image'),
                         (['--image', img, '--mask', mask, '--mask-from-alpha'], 'give one')]:
        with pytest.raises(SystemExit) as e:
            cli(lab, out, *flags, folders=False)
        assert e.value.code == 2 and error in capsys.readouterr().err and not out.exists(), flags


# ----------------------------------------------------------------------------- classes and boxes refused

def test_bad_class_region_and_guidance_inputs_are_one_line_errors(lab, plain_lab, tmp_path, capsys):
    out = tmp_path / 'o'
    err = one_line_error(capsys, cli(lab, out, '--class', 'bird'), out)
    assert '--class bird: unknown class; use one of cat, dog, fish' in err
    assert '--class 3: class ids run from 0 to 2' in one_line_error(capsys, cli(lab, out, '--class', '3'), out)
    err = one_line_error(capsys, cli(plain_lab, out, '--class', 'cat'), out)
    assert '--class cat: ' in err and 'unconditional' in err
    err = one_line_error(capsys, cli(plain_lab, out, '--cfg-scale', '2'), out)
    assert '--cfg-scale 2.0: ' in err and 'unconditional' in err
    assert '--box 4,4,4,9 is empty' in one_line_error(capsys, cli(lab, out, '--box', '4,4,4,9'), out)
    assert 'outside the 16x16 image' in one_line_error(capsys, cli(lab, out, '--box', '0,0,17,8'), out)
    for flags, error in [(['--outpaint', 'middle'], "invalid choice: 'middle'"), (['--box', '1,2,3'], 'x0,y0,x1,y1'),
                         (['--outpaint', 'left', '--box', '0,0,4,4'], 'not allowed with argument')]:
        with pytest.raises(SystemExit):
            cli(lab, out, *flags)
        assert error in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------- generate.py

def gen(lab, out, *extra):
    return generate.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                          str(lab / 'tr.pt'), '--total-iter', '3', '--temperature', '1', '--output-dir', str(out),
                          *extra])


def test_generate_writes_grids_images_and_strips_per_class(lab, tmp_path):
    assert gen(lab, tmp_path / 'a', '--class', 'dog', '--class', '0', '--n', '3', '--cfg-scale', '1') == 0
    a = tmp_path / 'a'
    assert sorted(p.name for p in a.iterdir()) == ['cat', 'cat_grid.png', 'cat_steps.png', 'dog', 'dog_grid.png',
                                                   'dog_steps.png']
    assert sorted(p.name for p in (a / 'dog').iterdir()) == ['image_000.png', 'image_001.png', 'image_002.png']
    tile = IMG + 2
    assert Image.open(a / 'dog_grid.png').size == (2 * tile + 2, 2 * tile + 2)     # 3 images, 2 a row
    assert Image.open(a / 'dog_steps.png').size == (3 * tile + 2, 3 * tile + 2)    # 3 images x 3 steps
    # image i of a class is the same whatever the batch and the other classes (pixels: one uint8 level)
    assert gen(lab, tmp_path / 'b', '--class', 'cat', '--n', '3', '--batch-size', '2', '--cfg-scale', '1') == 0
    for i in range(3):
        assert np.abs(png(a / 'cat' / f'image_{i:03d}.png') - png(tmp_path / 'b' / 'cat' / f'image_{i:03d}.png')).max() <= 1


def test_generate_unconditional_and_its_errors(lab, plain_lab, tmp_path, capsys):
    assert gen(plain_lab, tmp_path / 'u', '--n', '2') == 0
    assert sorted(p.name for p in (tmp_path / 'u').iterdir()) == ['unconditional', 'unconditional_grid.png',
                                                                  'unconditional_steps.png']
    capsys.readouterr()
    out = tmp_path / 'o'
    assert 'use one of cat, dog, fish' in one_line_error(capsys, gen(lab, out, '--class', 'cat', '--class', 'x'), out)
    assert 'unconditional' in one_line_error(capsys, gen(plain_lab, out, '--class', '0'), out)


# ----------------------------------------------------------------------------- --labels: each image its true class

TRUE = {3: 'dog', 10: 'fish'}   # the classes of the lab's images


def labels_file(path, classes=TRUE, **extra):
    """A labels.json as prepare_dataset.py writes it: test/ keys of the lab's images, train/ and val/ keys with
    the same numbers and another class (never read for the test/ split), and `extra` keys."""
    labels = {f'test/image_{i:03d}.png': c for i, c in classes.items()}
    labels.update({'train/image_00003.png': 'cat', 'val/image_00010.png': 'cat', **extra})
    path.write_text(json.dumps(labels))
    return str(path)


def test_per_image_labels_decode_each_image_as_alone_under_its_own_class(lab, tmp_path):
    inp, imgs, masks, ids = inpainter(lab, '--cfg-scale', '2')
    data = PairedTestDataset(lab / 'img', lab / 'mask', 1.0, inp.mean, inp.std)
    label = pipeline.image_labels(inp.model, labels_file(tmp_path / 'l.json'), 'test', data, 'mg.yml')
    assert label(ids).tolist() == [CLASS_NAMES.index(TRUE[i]) for i in IDS]
    both = pipeline.Inpainter(inp.model, inp.settings, inp.mean, inp.std, label=label)(imgs, masks, ids)
    for b, i in enumerate(IDS):   # image b alone, under --class of its own class
        alone, *_ = inpainter(lab, '--cfg-scale', '2', '--class', TRUE[i])
        assert torch.equal(both.tokens[b], alone(imgs[b:b + 1], masks[b:b + 1], ids[b:b + 1]).tokens[0]), i
    assert not torch.equal(both.tokens[0], alone(imgs[:1], masks[:1], ids[:1]).tokens[0])   # 3 as a fish, not a dog


def test_labels_flag_writes_the_pngs_of_class_runs_and_reads_the_val_keys(lab, tmp_path):
    labels = labels_file(tmp_path / 'l.json')
    assert cli(lab, tmp_path / 'true', '--labels', labels, '--cfg-scale', '1') == 0
    for i, name in TRUE.items():
        assert cli(lab, tmp_path / name, '--class', name, '--cfg-scale', '1') == 0
        f = f'test_results/image_{i:03d}.png'
        assert np.array_equal(png(tmp_path / 'true' / f), png(tmp_path / name / f)), i
    val = lambda *flags: inpainting.parse_args(['--labels', labels, *flags]).labels_split
    assert val() == 'test' and val('--test-maskedimage-path', 'data/x/val_masked_image/') == 'val'
    assert val('--test-maskedimage-path', 'data/x/val_masked_image', '--labels-split', 'test') == 'test'
    data = PairedTestDataset(lab / 'img', lab / 'mask')
    model, _ = pipeline.load_maskgit(inpainting.parse_args(['--MaskGitConfig', str(lab / 'mg.yml'),
                                       '--load-transformer-ckpt-path', str(lab / 'tr.pt')]), torch.device('cpu'))
    label = pipeline.image_labels(model, labels_file(tmp_path / 'v.json', {}, **{'val/image_00003.png': None}),
                                    'val', data, 'mg.yml')
    assert label(torch.tensor(IDS)).tolist() == [len(CLASS_NAMES), 0]   # val/ keys by number; null: the null class


def test_bad_inpainting_labels_are_one_line_errors_before_any_output(lab, plain_lab, tmp_path, capsys):
    out = tmp_path / 'o'
    missing = labels_file(tmp_path / 'm.json', {3: 'dog'})
    err = one_line_error(capsys, cli(lab, out, '--labels', missing), out)
    assert f'--labels {missing} has no key test/image_010.png' in err
    unknown = labels_file(tmp_path / 'u.json', {3: 'dog', 10: 'bird'})
    err = one_line_error(capsys, cli(lab, out, '--labels', unknown), out)
    assert f"--labels {unknown}: test/image_010.png is 'bird': unknown class; use one of cat, dog, fish" in err
    good = labels_file(tmp_path / 'g.json')
    err = one_line_error(capsys, cli(plain_lab, out, '--labels', good), out)
    assert err.startswith(f'error: --labels {good}: the model of ') and 'unconditional' in err
    for flags, error in [(['--labels', good, '--class', 'dog'], 'not allowed with argument'),
                         (['--labels-split', 'val'], '--labels-split needs --labels')]:
        with pytest.raises(SystemExit) as e:
            cli(lab, out, *flags)
        assert e.value.code == 2 and error in capsys.readouterr().err and not out.exists()


def test_labels_split_is_guessed_from_the_folders_split_prefix(tmp_path):
    labels = str(tmp_path / 'labels.json')
    for folder, split in [('data/x/holdout_masked_image', 'holdout'), ('data/x/val_masked_image', 'val'),
                          ('data/x/masked_image', 'test'), ('data/x/other_masked_image', 'test')]:
        args = inpainting.parse_args(['--labels', labels, '--test-maskedimage-path', folder])
        assert args.labels_split == split, folder
    assert 'holdout' in inpainting.LABEL_SPLITS
    args = inpainting.parse_args(['--labels', labels, '--labels-split', 'holdout'])
    assert args.labels_split == 'holdout'
