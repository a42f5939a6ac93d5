"""Test-like holes at training time, validation masks, the mask-robust encoder, and checks before saving."""
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import prepare_dataset
import training
import training_encoder as te
import training_transformer as tt
from conftest import ROOT, TINY_VQ, K, N, run_args, tiny_mp
from dataset import MASK_FILL
from models.maskgit import MaskGit
from models.masks import fill_holes, hole_fraction, latent_mask, make_mask, mask_rng, normalised_fill, pixel_mask_bank
from models.vqgan import VQGAN
from utils import load_checkpoint, load_config, sha256_file

torch.set_num_threads(1)
TINY_VQ_L2 = dict(TINY_VQ, l2_codes=True)  # the small config's cosine code lookup
TINY_MP = tiny_mp(n_layers=1, hidden_dim=32)


# ----------------------------------------------------------------------------- masks

def test_training_holes_have_the_test_masks_fractions_and_token_rule():
    pixels = pixel_mask_bank(40, 64, seed=0)                                   # [40, 1, 64, 64], 1 = keep
    fracs = 1 - pixels.mean((1, 2, 3))
    assert pixels.shape == (40, 1, 64, 64) and set(pixels.unique().tolist()) == {0.0, 1.0}
    assert (fracs >= 0.1 - 1e-9).all() and (fracs <= 0.5 + 1e-9).all()
    tokens = latent_mask(pixels, 4).flatten(1)                                  # [40, 256], True = unknown
    # a token is unknown iff any of its 16 pixels is a hole: never fewer unknown tokens than hole area
    assert (tokens.float().mean(1) >= fracs - 1e-9).all()
    assert torch.equal(pixels, pixel_mask_bank(40, 64, seed=0)) and not torch.equal(pixels, pixel_mask_bank(40, 64, seed=1))


def test_mask_streams_are_deterministic_and_disjoint():
    masks = {s: [np.asarray(make_mask(64, mask_rng(0, s, i), 0.1, 0.5)) for i in range(12)] for s in ('test', 'val', 'train')}
    again = [np.asarray(make_mask(64, mask_rng(0, 'val', i), 0.1, 0.5)) for i in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(masks['val'], again))
    # the test stream is the one the shipped test masks were built with: (seed, i)
    assert all(np.array_equal(a, np.asarray(make_mask(64, np.random.default_rng([0, i]), 0.1, 0.5)))
               for i, a in enumerate(masks['test']))
    for a, b in (('test', 'val'), ('test', 'train'), ('val', 'train')):
        assert not any(np.array_equal(x, y) for x in masks[a] for y in masks[b]), (a, b)


def test_prepare_dataset_writes_fixed_val_masks(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src / f'{i}.png')
    outs = []
    for run in ('a', 'b'):
        assert prepare_dataset.main(['--source', str(src), '--out', str(tmp_path / run), '--image-size', '16',
                                     '--test-count', '5', '--val-frac', '0.3', '--workers', '1']) == 0
        outs.append(tmp_path / run)
    a, b = outs
    val = sorted(p.name for p in (a / 'val').iterdir())
    assert len(val) == 8 and sorted(p.name for p in (a / 'val_masked_image').iterdir()) == val
    assert sorted(p.name for p in (a / 'val_mask64').iterdir()) == [v.replace('image', 'mask') for v in val]
    for name in val:
        m = np.asarray(Image.open(a / 'val_mask64' / name.replace('image', 'mask')))
        assert np.array_equal(m, np.asarray(Image.open(b / 'val_mask64' / name.replace('image', 'mask'))))
        assert 0.1 <= hole_fraction(Image.fromarray(m)) <= 0.5
        gt, shown = (np.asarray(Image.open(d / name)) for d in (a / 'val', a / 'val_masked_image'))
        assert (shown[m == 0] == MASK_FILL).all() and np.array_equal(shown[m == 255], gt[m == 255])
    rows = np.loadtxt(a / 'val_gt.csv', delimiter=',', skiprows=1, dtype=np.int64, ndmin=2)
    assert rows.shape == (8, 16 * 16 * 3)


def test_hole_masking_stays_in_the_hole_and_follows_gamma():
    m = MaskGit(TINY_MP)
    z = torch.randint(0, K, (4, N))
    region = torch.zeros(4, N, dtype=torch.bool)
    region[0, :5], region[1, 3:13], region[2] = True, True, True
    region[3, 7] = True
    r = torch.tensor([0.0, 0.5, 0.9, 0.3])
    masked, mask = m.mask_tokens(z, r, torch.rand(4, N), region)
    assert not (mask & ~region).any()                                   # never outside the hole
    sizes = [5, 10, 16, 1]
    want = [math.ceil(math.cos(math.pi / 2 * float(ri)) * n) for ri, n in zip(r, sizes)]
    assert mask.sum(1).tolist() == want                                  # ceil(gamma(r) * |hole|)
    assert torch.equal(masked[~mask], z[~mask]) and (masked[mask] == K).all()


def test_hole_rows_mix_cached_holes_and_paper_masks():
    r, scores, use, variant = training.draw_masks(torch.Generator().manual_seed(0), 400, N, 0.5, 3)
    assert 150 < use.sum() < 250 and set(variant.tolist()) == {0, 1, 2}   # ~half of 400 (binomial sd 10)
    context = torch.randint(0, K, (10, 3, N))
    holes = torch.rand(10, 3, N) < 0.4
    idx = torch.randint(0, 10, (400,))
    region, ctx = training.hole_rows(idx, use, variant, (context, holes))
    assert torch.equal(region[use], holes[idx, variant][use]) and region[~use].all()
    assert torch.equal(ctx, context[idx, variant])
    assert training.hole_rows(idx, use, variant, None) == (None, None)


def test_context_outside_the_hole_is_what_the_model_reads():
    m = MaskGit(TINY_MP).eval()
    z, other = torch.randint(0, K, (2, N)), torch.randint(0, K, (2, N))
    region = torch.zeros(2, N, dtype=torch.bool)
    region[:, :6] = True
    seen = []
    m.transformer.forward = lambda t, labels=None: seen.append(t) or torch.zeros(*t.shape, K + 1)
    _, target, mask = m(z, torch.tensor([0.5, 0.0]), torch.rand(2, N), region, other)
    shown = seen[0]
    assert torch.equal(target, z)                                         # targets: the clean tokens
    assert torch.equal(shown[:, 6:], other[:, 6:])                        # outside the hole: the context
    assert torch.equal(shown[region & ~mask], z[region & ~mask])          # revealed hole tokens: clean
    assert (shown[mask] == K).all() and mask[1, :6].all()


# ----------------------------------------------------------------------------- the mask-robust encoder

def test_encoder_distillation_raises_known_token_agreement():
    torch.manual_seed(0)
    teacher = VQGAN(TINY_VQ_L2).eval()
    student = VQGAN(TINY_VQ_L2)
    student.load_state_dict(teacher.state_dict())
    fill = normalised_fill((0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(fill * 0.25 + 0.5, torch.tensor(MASK_FILL) / 255)
    x = torch.randn(16, 3, 16, 16)
    keep = torch.ones(16, 1, 16, 16)
    keep[:, :, 4:12, 6:14] = 0                                         # one hole, the same in every image
    masked = fill_holes(x, keep, fill)
    assert torch.equal(masked[:, :, 4:12, 6:14], fill[None, :, None, None].expand(16, 3, 8, 8))
    with torch.no_grad():
        z_t = te.features(teacher, x)
        codes = teacher.codebook.distances(z_t).argmin(1)
    known = ~latent_mask(keep, 4).flatten()
    agree = lambda: (student.encode_indices(masked).flatten() == codes)[known].float().mean().item()
    before = agree()
    opt = torch.optim.Adam(list(student.encoder.parameters()) + list(student.quant_conv.parameters()), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = te.distill_loss(student, z_t, codes, masked, known, 0.02, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert agree() > before + 0.2, (before, agree())
    # only the encoder and quant_conv were trained: the codebook and decoder are the teacher's
    sd_s, sd_t = student.state_dict(), teacher.state_dict()
    assert all(torch.equal(sd_s[k], sd_t[k]) for k in sd_t if not k.startswith(('encoder.', 'quant_conv.')))


# ----------------------------------------------------------------------------- no unchecked weights saved

@pytest.fixture(scope='module')
def lab(make_lab):
    """The tiny lab trained for one epoch on test-like holes, with validation masks and masked images."""
    d = make_lab(TINY_VQ_L2, TINY_MP, epochs=1, batch_size=4, accum_grad=1, learning_rate=3e-3, warmup_steps=1,
                 save_per_epoch=0, hole_mask_frac=0.5, mask_bank=32, context_variants=2)
    (d / 'val_mask64').mkdir()
    (d / 'val_masked_image').mkdir()
    for i in range(4):
        m = np.asarray(make_mask(16, mask_rng(0, 'val', i), 0.1, 0.5))
        Image.fromarray(m).save(d / 'val_mask64' / f'mask_{i:05d}.png')
        shown = np.asarray(Image.open(d / 'val' / f'image_{i:05d}.png')).copy()
        shown[m == 0] = MASK_FILL
        Image.fromarray(shown).save(d / 'val_masked_image' / f'image_{i:05d}.png')
    return d


def test_hole_training_logs_val_hole_accuracy(lab, tmp_path):
    tt.main(run_args(lab, tmp_path))
    row = open(tmp_path / 'log.csv').read().splitlines()
    assert row[0].split(',')[6] == 'val_hole_acc' and 0 <= float(row[1].split(',')[6]) <= 1


def test_an_exploding_update_is_never_saved(lab, tmp_path):
    one_step = ('--batch-size', '24')                                   # 12 images + flips: one step per epoch
    tt.main(run_args(lab, tmp_path, *one_step))                         # one good epoch
    good = {f: sha256_file(tmp_path / f) for f in ('last_ckpt.pt', 'train_state.pt')}
    # lr 1e6: epoch 2's only loss is computed before its update and is fine; the updated weights are not
    with pytest.raises(tt.TrainingDiverged, match='stopped before saving'):
        tt.main(run_args(lab, tmp_path, *one_step, '--resume', '--epochs', '2', '--learning-rate', '1e6'))
    assert {f: sha256_file(tmp_path / f) for f in good} == good
    assert load_checkpoint(tmp_path / 'train_state.pt')['epoch'] == 1
    assert not (tmp_path / 'transformer_epoch_2.pt').exists()


def test_context_cache_is_the_masked_image_encoded_and_is_reused(lab, tmp_path):
    from dataset import TRAIN_MEAN, TRAIN_STD, ImageDataset
    from models.token_cache import load_context_tokens, load_tokens, vqgan_meta
    from models.vqgan import load_vqgan
    vq = load_vqgan(str(lab / 'vq.yml'), str(lab / 'vq.pt'))
    calls = []
    get = lambda: calls.append(1) or vq
    bank = pixel_mask_bank(8, 16, seed=0)
    meta = vqgan_meta(load_config(lab / 'vq.yml'), lab / 'vq.pt')
    args = (str(lab / 'train'), meta, str(tmp_path), get, bank, 2, 0)
    context, holes = load_context_tokens(*args)
    assert context.shape == (24, 2, N) and holes.shape == (24, 2) and calls == [1]
    clean = load_tokens(str(lab / 'train'), meta, str(tmp_path), get)
    x = ImageDataset(str(lab / "train"), 1.0, TRAIN_MEAN, TRAIN_STD)[2]            # image 2, flipped: row 5
    keep = bank[holes[5, 1]]
    masked = x.flip(-1) * keep + normalised_fill(TRAIN_MEAN, TRAIN_STD)[:, None, None] * (1 - keep)
    assert torch.equal(context[5, 1], vq.encode_indices(masked[None])[0])
    assert not torch.equal(context[5, 1], clean[5].long())                        # the hole changed some codes
    again = load_context_tokens(*args)
    assert calls == [1, 1] and torch.equal(again[0], context)                       # reused: no encode
    load_context_tokens(*args[:4], pixel_mask_bank(8, 16, seed=1), 2, 0)            # another bank: stale
    assert calls == [1, 1, 1]


def test_encoder_script_resumes_bit_for_bit_and_names_a_missing_key(lab, tmp_path):
    small = load_config(ROOT / 'configs' / 'VQGAN_small.yml')['train_encoder']
    assert set(load_config(training.VQGAN_DEFAULTS)['train_encoder']) == set(te.TRAIN_KEYS)  # the defaults' one home
    enc = dict(small, epochs=2, batch_size=4, learning_rate=1e-3, mask_bank=16, run_dir=str(tmp_path / 'a'))
    cfg = {'model_param': TINY_VQ_L2, 'train_encoder': enc,
           'data': dict(train_path=str(lab / 'train'), val_path=str(lab / 'val'))}
    (tmp_path / 'vq.yml').write_text(yaml.safe_dump(cfg))
    base = ['--config', str(tmp_path / 'vq.yml'), '--vqgan-ckpt', str(lab / 'vq.pt'), '--device', 'cpu']
    full = te.main(base)
    assert full['step'] == 2 * 3 and [r['epoch'] for r in full['rows']] == [0, 1, 2]
    cut = te.main(base + ['--run-dir', str(tmp_path / 'b'), '--max-minutes', '0'])  # stops after one step
    assert (cut['epoch'], cut['step']) == (0, 1)
    resumed = te.main(base + ['--run-dir', str(tmp_path / 'b'), '--resume'])
    assert (resumed['epoch'], resumed['step']) == (2, 6)
    a, b = (load_checkpoint(tmp_path / run / 'last.pt') for run in 'ab')
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    # a key the run's config leaves out takes configs/VQGAN.yml's value; a flag overrides both
    del cfg['train_encoder']['clean_frac'], cfg['train_encoder']['epochs']
    args = te.parse_args(['--epochs', '7'])
    s = te.train_settings(cfg, args)
    course = load_config(training.VQGAN_DEFAULTS)['train_encoder']
    assert (s['clean_frac'], s['epochs'], s['tau']) == (course['clean_frac'], 7, enc['tau'])
    # the defaults config must set every key: one missing is refused, naming the file and the key
    bad = load_config(training.VQGAN_DEFAULTS)
    del bad['train_encoder']['clean_frac']
    (tmp_path / 'defaults.yml').write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=r"^config \S*defaults\.yml: key train_encoder\.clean_frac is missing"):
        training.defaults(str(tmp_path / 'defaults.yml'), 'train_encoder', training.ENCODER_TRAIN)
