"""VQGAN: course checkpoint parity, shapes, straight-through gradient, codebook restarts, training script."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import training_vqgan
from conftest import ROOT
from models.discriminator import Discriminator
from models.vqgan import VQGAN, Codebook, load_vqgan
from utils import load_checkpoint, load_config, load_state_dict_checked, sha256_file

TINY = dict(image_channels=3, enc_channels=[8, 8, 16], dec_channels=[8, 8, 16], latent_dim=8,
            img_resolution=32, latent_resolution=8, num_codebook_vectors=32, beta=0.25, gn_groups=4,
            enc_res_blocks=1, dec_res_blocks=1)


@pytest.fixture(scope='module')
def course_model():
    torch.manual_seed(0)
    return VQGAN(load_config(ROOT / 'configs' / 'VQGAN.yml')['model_param']).eval()


# ----------------------------------------------------------------------------- model

def test_course_config_has_exactly_the_course_keys():
    p = load_config(ROOT / 'configs' / 'VQGAN.yml')['model_param']
    assert set(p) == {'image_channels', 'enc_channels', 'dec_channels', 'latent_dim', 'img_resolution',
                      'latent_resolution', 'num_codebook_vectors', 'beta'}


def test_manifest_copies_equal_the_course_files():
    from conftest import SHARED_LAB, TEST_DATA
    if not SHARED_LAB.is_dir():
        pytest.skip(f"{SHARED_LAB} is not checked out beside the repo")
    for name in ('vqgan_state_dict_keys.txt', 'transformer_state_dict_keys.txt'):
        assert (TEST_DATA / name).read_text() == (SHARED_LAB / name).read_text(), name


def test_state_dict_matches_course_manifest(course_model, course_manifest):
    manifest = course_manifest('vqgan_state_dict_keys.txt')
    sd = course_model.state_dict()
    assert len(manifest) == 315
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == manifest
    assert abs(sum(p.numel() for p in course_model.parameters()) / 1e6 - 70.8) < 0.05
    # a student's VQGAN.pt: random tensors of the manifest's shapes load with strict=True
    g = torch.Generator().manual_seed(1)
    student = {k: torch.randn(shape, generator=g) for k, shape in manifest}
    course_model.load_state_dict(student, strict=True)
    assert torch.equal(course_model.codebook.embedding.weight, student['codebook.embedding.weight'])


def test_course_model_shapes(course_model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        z_q, idx, q_loss = course_model.encode(x)
        assert z_q.shape == (1, 256, 16, 16) and idx.shape == (256,) and idx.dtype == torch.long
        assert q_loss.dim() == 0
        assert course_model.decode(z_q).shape == (1, 3, 64, 64)
    assert course_model.num_codebook_vectors == 1024 and course_model.latent_resolution == 16


def test_small_config_shapes_and_token_round_trip():
    p = load_config(ROOT / 'configs' / 'VQGAN_small.yml')['model_param']
    assert p['img_resolution'] // p['latent_resolution'] == 4 and p['latent_resolution'] == 16
    assert 512 <= p['num_codebook_vectors'] <= 1024
    torch.manual_seed(0)
    m = VQGAN(p).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z_q, idx, _ = m.encode(x)
        assert z_q.shape == (2, p['latent_dim'], 16, 16) and idx.shape == (2 * 256,)
        tokens = m.encode_indices(x)
        assert tokens.shape == (2, 256) and tokens.dtype == torch.long
        assert tokens.min() >= 0 and tokens.max() < p['num_codebook_vectors']
        assert torch.equal(tokens.flatten(), idx)
        # Decoding the tokens is decoding the quantised latents. In float64: the two paths differ by the
        # straight-through rounding (~1e-16 relative) amplified by the decoder, far below 1e-9 on any CPU,
        # while fp32 kernels differ by ~1e-5 between CPUs. A wrong code lookup moves outputs by ~1e-1.
        m64, x64 = m.double(), x.double()
        z64, idx64, _ = m64.encode(x64)
        assert torch.allclose(m64.decode_indices(idx64.view(2, -1)), m64.decode(z64), rtol=0, atol=1e-9)


def test_channels_last_inference_model_computes_what_the_plain_one_does(tmp_path):
    """load_vqgan's channels-last layout changes only the memory order: in float64 the outputs agree to
    rounding (~1e-15 relative, amplified by the network: far below 1e-9), while a layout bug (a view that
    reads channels as pixels) moves them by O(1). Tokens are equal."""
    cfg = tmp_path / 'small.yml'
    cfg.write_text(yaml.safe_dump({'model_param': load_config(ROOT / 'configs' / 'VQGAN_small.yml')['model_param']}))
    torch.manual_seed(0)
    plain = VQGAN(load_config(cfg)['model_param']).eval()
    torch.save(plain.state_dict(), tmp_path / 'vq.pt')
    fast = load_vqgan(cfg, tmp_path / 'vq.pt')
    conv = fast.decoder.model[-1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = plain.encode_indices(x)
        assert torch.equal(fast.encode_indices(x), tokens)
        plain, fast = plain.double(), fast.double()
        assert torch.allclose(fast.decode_indices(tokens), plain.decode_indices(tokens), rtol=0, atol=1e-9)
        assert torch.allclose(fast(x.double())[0], plain(x.double())[0], rtol=0, atol=1e-9)


def test_bad_group_count_is_a_clear_error():
    with pytest.raises(ValueError, match='not divisible by gn_groups=32'):
        VQGAN({**TINY, 'gn_groups': 32})


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    m = VQGAN(TINY)
    x = torch.randn(2, 3, 32, 32)
    x_hat, _, _ = m(x)
    (x_hat - x).pow(2).mean().backward()  # reconstruction only: q_loss is not what carries the gradient
    for name in ('encoder.model.0.weight', 'quant_conv.weight'):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_codebook_adds_no_state_dict_keys():
    cb = Codebook({**TINY, 'l2_codes': True, 'restart_every': 5})
    assert list(cb.state_dict()) == ['embedding.weight']


def test_l2_codes_quantise_to_unit_vectors():
    torch.manual_seed(0)
    cb = Codebook({**TINY, 'l2_codes': True})
    z_q, _, _ = cb(5 * torch.randn(2, 8, 4, 4))
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)


def test_dead_code_restart_revives_codes():
    torch.manual_seed(0)
    cb = Codebook({**TINY, 'restart_every': 2}).train()
    with torch.no_grad():
        cb.embedding.weight[1:] = 100.0  # far from the data, code 0 a little less: every vector picks it
        cb.embedding.weight[0] = 50.0
    z = torch.randn(4, 8, 8, 8)
    used_before = cb(z)[1].unique().numel()
    cb(z)
    assert used_before == 1
    _, idx, _ = cb(z)  # third call: 31 codes unused over the window are restarted from recent encodings
    assert idx.unique().numel() > 10
    assert cb.embedding.weight[1:].abs().max() < 20  # moved next to the data
    assert cb.restart_dead_codes() < 31  # codes picked since the restart are not dead


def test_discriminator_patch_output():
    d = Discriminator(load_config(ROOT / 'configs' / 'Discriminator.yml')['model_param'])
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert sum(p.numel() for p in d.parameters()) == 2_765_633


# ----------------------------------------------------------------------------- training script

def make_folder(root, n, seed):
    """Tiny 32x32 images of coloured rectangles on white, like clipart."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        a = np.full((32, 32, 3), 255, np.uint8)
        x0, y0 = rng.integers(0, 20, 2)
        a[y0:y0 + 12, x0:x0 + 12] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(root / f'image_{i:05d}.png')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('vq')
    make_folder(d / 'train', 32, 0)
    make_folder(d / 'val', 8, 1)
    disc = d / 'disc.yml'
    disc.write_text(yaml.safe_dump({'model_param': dict(image_channels=3, num_filters_last=8, n_layers=3)}))
    cfg = d / 'tiny.yml'
    cfg.write_text(yaml.safe_dump({
        'model_param': TINY,
        'train': dict(batch_size=8, learning_rate=2e-3, betas=[0.5, 0.9], epochs=2, disc_start=6,
                      disc_weight=0.5, disc_config=str(disc)),
        'data': dict(train_path=str(d / 'train'), val_path=str(d / 'val'))}))
    return d, cfg


def run_args(setup, run, *extra):
    d, cfg = setup
    return ['--config', str(cfg), '--run-dir', str(d / run), '--threads', '1', *extra]


def log_rows(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(',')
    return [dict(zip(header, line.split(','))) for line in lines[1:]]


@pytest.fixture(scope='module')
def straight_run(setup):
    """3 epochs in one go (GAN on from step 6): the reference for loss and resume checks."""
    d, _ = setup
    out = training_vqgan.train(training_vqgan.parse_args(run_args(setup, 'straight', '--epochs', '3')))
    return d / 'straight', out


def test_training_lowers_loss_and_writes_outputs(straight_run):
    run, out = straight_run
    rows = log_rows(run / 'log.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2, 3] and out['step'] == 12
    assert float(rows[-1]['val_l1']) < 0.8 * float(rows[0]['val_l1'])
    assert float(rows[-1]['train_rec']) < float(rows[0]['train_rec'])
    assert 0 < float(rows[-1]['usage_pct']) <= 100 and float(rows[-1]['perplexity']) >= 1
    for name in ('last.pt', 'best.pt', 'recon_epoch001.png', 'recon_epoch003.png'):
        assert (run / name).is_file(), name
    with Image.open(run / 'recon_epoch003.png') as img:
        assert img.size == (8 * 34 + 2, 2 * 34 + 2)  # 8 originals above 8 reconstructions
    ck = load_checkpoint(run / 'last.pt')
    assert ck['epoch'] == 3 and ck['step'] == 12 and {'opt', 'opt_disc', 'disc', 'rng'} <= set(ck)
    best = load_checkpoint(run / 'best.pt')
    assert abs(best['metrics']['val_psnr'] - max(float(r['val_psnr']) for r in rows)) < 0.01


def test_resume_continues_from_saved_step_and_matches_straight_run(setup, straight_run):
    d, _ = setup
    training_vqgan.train(training_vqgan.parse_args(run_args(setup, 'split', '--epochs', '1')))
    assert load_checkpoint(d / 'split' / 'last.pt')['step'] == 4
    out = training_vqgan.train(training_vqgan.parse_args(
        run_args(setup, 'split', '--epochs', '3', '--resume', str(d / 'split' / 'last.pt'))))
    assert out['epoch'] == 3 and out['step'] == 12
    assert [int(r['step']) for r in log_rows(d / 'split' / 'log.csv')] == [4, 8, 12]
    # model, optimisers and RNG restored: the split run ends where the straight run ends
    a = load_checkpoint(straight_run[0] / 'last.pt')['model']
    b = load_checkpoint(d / 'split' / 'last.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_load_vqgan_accepts_training_dict_plain_and_fp16_export(setup, straight_run, tmp_path):
    d, cfg = setup
    ref = load_vqgan(cfg, straight_run[0] / 'last.pt')
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    plain = tmp_path / 'plain.pt'
    torch.save(load_checkpoint(straight_run[0] / 'last.pt')['model'], plain)
    fp16 = tmp_path / 'fp16.pt'
    training_vqgan.main(['--export', str(straight_run[0] / 'last.pt'), '--out', str(fp16)])
    assert all(v.dtype == torch.float16 for v in load_checkpoint(fp16).values())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = ref(x)[0]
        assert torch.equal(load_vqgan(cfg, plain)(x)[0], y)
        assert (load_vqgan(cfg, fp16)(x)[0] - y).abs().mean() < 0.05
    # the export's sidecar is sha256sum's format and is verified on every load
    digest, name = (tmp_path / 'fp16.pt.sha256').read_text().split()
    assert name == 'fp16.pt' and digest == hashlib.sha256(fp16.read_bytes()).hexdigest()
    raw = bytearray(fp16.read_bytes())
    raw[-100] ^= 1
    fp16.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r'fp16\.pt has SHA-256 .* but .*fp16\.pt\.sha256 says'):
        load_vqgan(cfg, fp16)


def test_mismatched_checkpoint_names_key_and_shapes(setup, straight_run, tmp_path):
    d, _ = setup
    other = tmp_path / 'other.yml'
    other.write_text(yaml.safe_dump({'model_param': {**TINY, 'num_codebook_vectors': 64}}))
    with pytest.raises(ValueError, match=r"codebook\.embedding\.weight.*\(32, 8\).*\(64, 8\)"):
        load_vqgan(other, straight_run[0] / 'last.pt')
    with pytest.raises(ValueError, match="unexpected key 'extra'"):
        load_state_dict_checked(VQGAN(TINY), {**VQGAN(TINY).state_dict(), 'extra': torch.zeros(1)}, 'x.pt')


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, straight_run, monkeypatch, capsys):
    d, _ = setup
    good = d / 'nan'
    training_vqgan.train(training_vqgan.parse_args(run_args(setup, 'nan', '--epochs', '1')))
    digest = hashlib.sha256((good / 'last.pt').read_bytes()).hexdigest()
    forward = VQGAN.forward

    def poisoned(self, x):
        x_hat, idx, q = forward(self, x)
        return x_hat * float('nan'), idx, q

    monkeypatch.setattr(VQGAN, 'forward', poisoned)
    with pytest.raises(SystemExit) as e:
        training_vqgan.main(run_args(setup, 'nan', '--epochs', '3', '--resume', str(good / 'last.pt')))
    assert e.value.code != 0 and 'non-finite loss' in str(e.value) and 'last.pt' in str(e.value)
    assert hashlib.sha256((good / 'last.pt').read_bytes()).hexdigest() == digest
    assert load_checkpoint(good / 'last.pt')['epoch'] == 1


def test_weights_wrecked_by_the_last_update_are_never_saved(setup, monkeypatch):
    """The loss is checked before each update; the update that ends an epoch is checked before the save."""
    d, _ = setup
    training_vqgan.train(training_vqgan.parse_args(run_args(setup, 'wreck', '--epochs', '1')))
    good = {f: sha256_file(d / 'wreck' / f) for f in ('last.pt', 'best.pt')}
    real = training_vqgan.optimiser_step

    def poison_last(opt, *a):
        real(opt, *a)
        with torch.no_grad():
            opt.param_groups[0]['params'][0].fill_(float('nan'))
    monkeypatch.setattr(training_vqgan, 'optimiser_step', poison_last)
    with pytest.raises(training_vqgan.NonFiniteLoss, match=r'not finite after step 5 .*nothing saved'):
        training_vqgan.train(training_vqgan.parse_args(run_args(setup, 'wreck', '--epochs', '2', '--max-steps', '5',
                                                                '--resume', str(d / 'wreck' / 'last.pt'))))
    assert {f: sha256_file(d / 'wreck' / f) for f in good} == good


def test_decoder_only_fine_tune_keeps_every_code(setup, straight_run):
    """--init-from + --decoder-only: the decoder learns (GAN on from step 6), while the encoder, quant_conv and
    codebook stay bit-identical, so every image keeps its tokens and a transformer trained on them stays valid."""
    d, cfg = setup
    start = straight_run[0] / 'last.pt'
    out = training_vqgan.train(training_vqgan.parse_args(
        run_args(setup, 'dec', '--epochs', '2', '--init-from', str(start), '--decoder-only')))
    assert out['step'] == 8  # from step 0: weights only
    a, b = load_checkpoint(start)['model'], load_checkpoint(d / 'dec' / 'last.pt')['model']
    frozen = [k for k in a if not k.startswith(('decoder.', 'post_quant_conv.'))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith('decoder.'))
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(load_vqgan(cfg, start).encode_indices(x), load_vqgan(cfg, d / 'dec' / 'last.pt').encode_indices(x))
    with pytest.raises(ValueError, match='--decoder-only: resume it the same way'):
        training_vqgan.train(training_vqgan.parse_args(
            run_args(setup, 'dec', '--epochs', '3', '--resume', str(d / 'dec' / 'last.pt'))))
    with pytest.raises(ValueError, match='give one of them'):
        training_vqgan.train(training_vqgan.parse_args(
            run_args(setup, 'dec2', '--init-from', str(start), '--resume', str(start))))


def variant_config(setup, name, **train):
    """The tiny config with some train: keys changed, GAN off (these tests look at the schedule and the data)."""
    d, cfg = setup
    c = yaml.safe_load(cfg.read_text())
    c['train'].update(disc_start=10**6, **train)
    path = d / f'{name}.yml'
    path.write_text(yaml.safe_dump(c))
    return ['--config', str(path), '--run-dir', str(d / name), '--threads', '1']


def test_cosine_schedule_sets_each_steps_rate_and_survives_resume(setup, monkeypatch):
    """lr_schedule: cosine: step s of S trains at lr * (1 + cos(pi s / S)) / 2 (closed form here, not the code's
    helper); a run stopped after epoch 1 and resumed ends where the straight one ends (the rate comes from the step)."""
    d, _ = setup
    seen, real = [], training_vqgan.optimiser_step
    monkeypatch.setattr(training_vqgan, 'optimiser_step',
                        lambda opt, opt_d, *a: (seen.append(opt.param_groups[0]['lr']), real(opt, opt_d, *a)))
    args = variant_config(setup, 'cos', lr_schedule='cosine', learning_rate=2e-3, epochs=2)
    training_vqgan.train(training_vqgan.parse_args(args))
    total = 2 * 4  # 32 images, batch 8
    assert seen == pytest.approx([2e-3 * 0.5 * (1 + np.cos(np.pi * s / total)) for s in range(total)], rel=1e-12)
    split = [*args[:2], '--run-dir', str(d / 'cos_split'), '--threads', '1']
    training_vqgan.train(training_vqgan.parse_args([*split, '--max-steps', '4']))
    seen.clear()
    out = training_vqgan.train(training_vqgan.parse_args([*split, '--resume', str(d / 'cos_split' / 'last.pt')]))
    assert out['step'] == 8 and seen == pytest.approx([2e-3 * 0.5 * (1 + np.cos(np.pi * s / total))
                                                       for s in range(4, 8)], rel=1e-12)
    a, b = load_checkpoint(d / 'cos' / 'last.pt')['model'], load_checkpoint(d / 'cos_split' / 'last.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_hflip_shows_each_image_or_its_mirror_and_both_occur(setup, monkeypatch):
    d, _ = setup
    batches, real = [], training_vqgan.train_step
    monkeypatch.setattr(training_vqgan, 'train_step', lambda m, disc, x, *a: (batches.append(x.clone()),
                                                                              real(m, disc, x, *a))[1])
    training_vqgan.train(training_vqgan.parse_args(variant_config(setup, 'flip', hflip=True, epochs=1)))
    x = torch.cat(batches)                                                    # [32, 3, 32, 32], training order
    ds = training_vqgan.ImageDataset(d / 'train', 1.0, *training_vqgan.data_stats(load_config(d / 'flip.yml'), 'train'))
    ref = torch.stack([ds[i] for i in range(len(ds))])                        # [32, 3, 32, 32], file order
    plain = (x[:, None] - ref[None]).abs().flatten(2).amax(-1) < 1e-6        # [seen, file]
    mirror = (x[:, None] - ref[None].flip(-1)).abs().flatten(2).amax(-1) < 1e-6
    assert (plain | mirror).any(1).all()         # every batch image is a training image or its mirror
    assert plain.any(1).sum() >= 4 and (mirror & ~plain).any(1).sum() >= 4  # both happen (P[fail] < 1e-5)


def test_unknown_lr_schedule_is_a_one_line_error_naming_the_key(setup, capsys):
    with pytest.raises(SystemExit) as e:
        training_vqgan.main(variant_config(setup, 'badlr', lr_schedule='step'))
    assert 'train.lr_schedule' in str(e.value) and "'step'" in str(e.value)


def naive_gradient_l1(a, b):
    """Mean |d a - d b| over horizontal, plus over vertical, neighbour differences, one pixel at a time."""
    n, c, h, w = a.shape
    sx = sum(abs((a[i, k, y, x + 1] - a[i, k, y, x]) - (b[i, k, y, x + 1] - b[i, k, y, x]))
             for i in range(n) for k in range(c) for y in range(h) for x in range(w - 1))
    sy = sum(abs((a[i, k, y + 1, x] - a[i, k, y, x]) - (b[i, k, y + 1, x] - b[i, k, y, x]))
             for i in range(n) for k in range(c) for y in range(h - 1) for x in range(w))
    return float(sx / (n * c * h * (w - 1)) + sy / (n * c * (h - 1) * w))


def test_gradient_loss_matches_a_pixel_loop_and_ignores_a_constant_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    assert training_vqgan.gradient_loss(a, b).item() == pytest.approx(naive_gradient_l1(a, b), rel=1e-12)
    assert training_vqgan.gradient_loss(b + 0.3, b).item() == pytest.approx(0, abs=1e-12)  # colour offset: not blur
    step = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    step[..., 4:] = 1.0
    ramp = torch.linspace(0, 1, 8, dtype=torch.float64).expand(1, 1, 8, 8)  # the step blurred over each row
    assert training_vqgan.gradient_loss(ramp, step).item() == pytest.approx(12 / 7 / 7, rel=1e-12)


def test_grad_weight_adds_its_term_to_the_reconstruction_loss(setup):
    d, cfg = setup
    args = training_vqgan.parse_args(['--config', str(cfg), '--grad-weight', '0.5', '--lr-schedule', 'cosine', '--hflip'])
    t = training_vqgan.train_settings(load_config(cfg), args)
    assert (t['grad_weight'], t['lr_schedule'], t['hflip']) == (0.5, 'cosine', True)
    assert training_vqgan.train_settings(load_config(cfg), training_vqgan.parse_args(['--config', str(cfg)]))['grad_weight'] == 0
    torch.manual_seed(0)
    model, x = VQGAN(TINY).eval(), torch.rand(2, 3, 32, 32) * 2 - 1
    amp, scaler = training_vqgan.amp_setup(torch.device('cpu'))
    recs = [training_vqgan.train_step(model, None, x, {**t, 'grad_weight': w}, False, amp, scaler, decoder_only=True)[1]
            for w in (0.0, 0.5)]
    with torch.no_grad():
        x_hat = model(x)[0].double()
    assert (recs[1] - recs[0]).item() == pytest.approx(0.5 * naive_gradient_l1(x_hat, x.double()), rel=1e-4)
