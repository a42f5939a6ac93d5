"""Bad input found early (inpainting.py, dataset.PairedTestDataset) and files never left wrong (utils.py).

Every refusal is one line naming the file or flag, and comes before any output is written.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import inpainting
import pipeline
import training_vqgan
import utils
from conftest import IMG, INPAINT_VQ, box_hole
from dataset import PairedTestDataset
from models.vqgan import VQGAN
from utils import atomic_open, atomic_save, load_checkpoint, save_checkpoint

IDS = (1, 2, 5)


pytestmark = pytest.mark.usefixtures('one_thread')


hole_mask = box_hole()


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    """A tiny VQGAN + transformer, and three masked images with their 0/255 masks."""
    return make_inpainting_lab(IDS, hole_mask)


def copy_data(lab, dst):
    for sub in ('img', 'mask'):
        (dst / sub).mkdir(parents=True)
        for p in (lab / sub).iterdir():
            (dst / sub / p.name).write_bytes(p.read_bytes())
    return dst / 'img', dst / 'mask'


def cli(lab, out, *extra, img=None, mask=None):
    return inpainting.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'),
                            '--load-transformer-ckpt-path', str(lab / 'tr.pt'),
                            '--test-maskedimage-path', str(img or lab / 'img'),
                            '--test-mask-path', str(mask or lab / 'mask'),
                            '--total-iter', '2', '--output-dir', str(out), *extra])


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


# ----------------------------------------------------------------------------- item 2: pairing by number

def test_two_images_with_one_number_are_refused_naming_both(lab, tmp_path, capsys):
    img, mask = copy_data(lab, tmp_path / 'd')
    (img / 'image_1.png').write_bytes((img / 'image_001.png').read_bytes())  # also number 1
    with pytest.raises(ValueError, match=r'image_001\.png and image_1\.png .*both have number 1'):
        PairedTestDataset(img, mask)
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', img=img, mask=mask))
    assert 'image_001.png' in err and 'image_1.png' in err
    assert not (tmp_path / 'o').exists()


def test_png_and_jpg_masks_of_one_number_are_refused_naming_both(lab, tmp_path):
    img, mask = copy_data(lab, tmp_path / 'd')
    Image.fromarray(hole_mask(9), 'L').save(mask / 'mask_002.jpg')
    with pytest.raises(ValueError, match=r'mask_002\.jpg and mask_002\.png .*both have number 2'):
        PairedTestDataset(img, mask)


# ----------------------------------------------------------------------------- item 3: masks are checked

def test_zero_one_mask_is_refused_before_any_output(lab, tmp_path, capsys):
    img, mask = copy_data(lab, tmp_path / 'd')
    Image.fromarray((hole_mask(5) // 255).astype(np.uint8), 'L').save(mask / 'mask_005.png')  # last in order
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', '--batch-size', '1', img=img, mask=mask))
    assert 'mask_005.png' in err and '0/1 mask' in err
    assert not (tmp_path / 'o').exists()


def test_swapped_image_and_mask_folders_are_refused(lab, tmp_path, capsys):
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', img=lab / 'mask', mask=lab / 'img'))
    assert 'image_001.png is not a binary mask' in err and 'swapped' in err
    assert not (tmp_path / 'o').exists()


def test_lossy_mask_is_thresholded_at_128_and_says_so(lab, tmp_path, capsys):
    img, mask = copy_data(lab, tmp_path / 'd')
    a = hole_mask(2).astype(int)
    noise = np.random.default_rng(1).integers(0, 6, a.shape)          # JPEG-like: near 0, near 255
    lossy = np.where(a == 255, 255 - noise, noise).astype(np.uint8)
    lossy[0, :3] = (100, 140, 200)                                     # and a few pixels in between
    Image.fromarray(lossy, 'L').save(mask / 'mask_002.png')
    ds = PairedTestDataset(img, mask)
    keep = lossy >= 128                                                # 250..255 and 140, 200 keep
    assert torch.equal(ds[1][1][0], torch.from_numpy(keep).float())    # the rest (0..5 and 100) is hole
    capsys.readouterr()
    assert cli(lab, tmp_path / 'o', '--paste-known', img=img, mask=mask) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if 'thresholded at 128' in line]
    assert len(notes) == 1 and 'mask_002.png' in notes[0], err
    # every pixel the thresholded mask keeps is the input's
    out = np.asarray(Image.open(tmp_path / 'o' / 'test_results' / 'image_002.png')).astype(int)
    inp = np.asarray(Image.open(img / 'image_002.png')).astype(int)
    assert np.abs(out[keep] - inp[keep]).max() <= 1


def test_mask_that_is_almost_all_hole_warns_on_one_line(lab, tmp_path, capsys):
    img, mask = copy_data(lab, tmp_path / 'd')
    a = np.zeros((IMG, IMG), np.uint8)
    a[0, :8] = 255  # 3 % kept
    Image.fromarray(a, 'L').save(mask / 'mask_001.png')
    capsys.readouterr()
    assert cli(lab, tmp_path / 'o', img=img, mask=mask) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'hole' in line and 'warning' in line]
    assert len(warnings) == 1 and 'mask_001.png' in warnings[0] and '97%' in warnings[0], warnings
    assert cli(lab, tmp_path / 'o2') == 0
    assert 'warning' not in capsys.readouterr().err  # the lab's own masks: no warning, no note


# ----------------------------------------------------------------------------- item 6: bad input found first

def test_truncated_image_is_found_before_any_output(lab, tmp_path, capsys):
    img, mask = copy_data(lab, tmp_path / 'd')
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)).save(
        img / 'image_005.png', compress_level=0)
    data = (img / 'image_005.png').read_bytes()
    (img / 'image_005.png').write_bytes(data[:len(data) // 2])  # header intact, pixels cut: opens, fails on decode
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', '--batch-size', '1', img=img, mask=mask))
    assert 'image_005.png' in err
    assert not (tmp_path / 'o').exists()  # not one result of the first batches


@pytest.mark.parametrize('flags', [['--temperature', 'nan'], ['--temperature', 'inf'], ['--temperature', '-1'],
                                   ['--choice-temperature', '-1'], ['--total-iter', '0'], ['--refine', '-1'],
                                   ['--partial', '-0.5'], ['--partial', '0'], ['--partial', '1.5'],
                                   ['--partial', 'nan']])
def test_bad_decoding_flags_and_partial_are_argparse_errors(flags, capsys):
    with pytest.raises(SystemExit) as e:
        inpainting.parse_args(flags)
    assert e.value.code == 2 and f"error: {flags[0]} must be" in capsys.readouterr().err.splitlines()[-1]


def test_bad_decoding_value_in_the_config_is_refused_before_any_output(lab, tmp_path, capsys):
    cfg = yaml.safe_load((lab / 'mg.yml').read_text())
    cfg['model_param']['choice_temperature'] = -1.0
    (tmp_path / 'bad.yml').write_text(yaml.safe_dump(cfg))
    err = one_line_error(capsys, inpainting.main(['--device', 'cpu', '--MaskGitConfig', str(tmp_path / 'bad.yml'),
                                                  '--load-transformer-ckpt-path', str(lab / 'tr.pt'),
                                                  '--test-maskedimage-path', str(lab / 'img'),
                                                  '--test-mask-path', str(lab / 'mask'),
                                                  '--output-dir', str(tmp_path / 'o')]))
    assert err == 'error: --choice-temperature must be a number >= 0, got -1.0'
    assert not (tmp_path / 'o').exists()


def test_negative_partial_is_refused_by_the_dataset_too(lab):
    with pytest.raises(ValueError, match=r'--partial must be in \(0, 1\]'):
        PairedTestDataset(lab / 'img', lab / 'mask', partial=-0.5)


def test_unwritable_output_dir_is_found_up_front(lab, tmp_path, capsys, monkeypatch):
    (tmp_path / 'a_file').write_text('x')
    loaded = []
    real = pipeline.load_maskgit
    monkeypatch.setattr(pipeline, 'load_maskgit', lambda *a: loaded.append(1) or real(*a))
    err = one_line_error(capsys, cli(lab, tmp_path / 'a_file' / 'out'))
    assert '--output-dir' in err and 'a_file' in err and not loaded  # before the model is even loaded
    err = one_line_error(capsys, cli(lab, tmp_path / 'a_file'))
    assert '--output-dir' in err and 'not a folder' in err


def test_output_dir_without_write_permission_is_found_up_front(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(utils.os, 'access', lambda path, mode: False)  # what a read-only folder says
    err = one_line_error(capsys, cli(lab, tmp_path / 'new' / 'out'))
    assert '--output-dir' in err and 'not writable' in err and str(tmp_path) in err
    assert not (tmp_path / 'new').exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_found_up_front(lab, tmp_path, capsys):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = one_line_error(capsys, cli(lab, ro / 'out'))
    finally:
        ro.chmod(0o755)
    assert '--output-dir' in err and 'not writable' in err


# ----------------------------------------------------------------------------- item 7: no leftovers

def dead_pid():
    p = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    return int(p.stdout)


def test_atomic_open_removes_temp_files_of_dead_processes(tmp_path):
    target = tmp_path / 'model.pt'
    stale = tmp_path / f'.model.pt.tmp{dead_pid()}'       # what kill -9 during a save leaves
    live = tmp_path / f'.model.pt.tmp{os.getppid()}'      # a save in progress in a live process
    other = tmp_path / f'.other.pt.tmp{dead_pid()}'       # another target's: not ours to judge here
    for p in (stale, live, other):
        p.write_bytes(b'partial')
    with atomic_open(target, 'wb') as f:
        f.write(b'new')
    assert target.read_bytes() == b'new'
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


# ----------------------------------------------------------------------------- item 8: checkpoints with sidecars

def flip_data_byte(path, tensor):
    """Flip one byte inside a tensor's stored data (torch.load does not notice that by itself)."""
    raw = bytearray(Path(path).read_bytes())
    at = raw.find(tensor.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def test_save_checkpoint_writes_a_verified_sidecar(tmp_path):
    w = torch.arange(64, dtype=torch.float32) + 1000
    path = tmp_path / 'run' / 'last.pt'
    save_checkpoint({'w': w, 'epoch': 1}, str(path))
    digest, name = (tmp_path / 'run' / 'last.pt.sha256').read_text().split()
    assert name == 'last.pt' and digest == hashlib.sha256(path.read_bytes()).hexdigest()  # sha256sum's format
    assert torch.equal(load_checkpoint(path)['w'], w)
    save_checkpoint({'w': w, 'epoch': 2}, str(path))  # overwrite: the sidecar follows
    assert load_checkpoint(path)['epoch'] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ['last.pt', 'last.pt.sha256']
    flip_data_byte(path, w)
    with pytest.raises(ValueError, match=r'last\.pt has SHA-256 .* but .*last\.pt\.sha256 says'):
        load_checkpoint(path)


def test_a_crash_between_the_renames_leaves_no_mismatching_pair(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint({'epoch': 1}, str(path))
    real, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the checkpoint, before its sidecar
        real(src, dst)
    monkeypatch.setattr(utils.os, 'replace', crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'epoch': 2}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(path)['epoch'] == 2  # new checkpoint, no sidecar: loads (no false corruption)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']
    save_checkpoint({'epoch': 3}, str(path))
    atomic_save({'epoch': 4}, str(path))        # a plain save over it drops the sidecar it would contradict
    assert load_checkpoint(path)['epoch'] == 4 and not (tmp_path / 'last.pt.sha256').exists()


def test_training_vqgan_checkpoints_have_sidecars(tmp_path):
    tiny = dict(image_channels=3, enc_channels=[8, 8], dec_channels=[8, 8], latent_dim=8, img_resolution=16,
                latent_resolution=8, num_codebook_vectors=16, beta=0.25, gn_groups=4, enc_res_blocks=1,
                dec_res_blocks=1)
    rng = np.random.default_rng(0)
    for split, n in (('train', 8), ('val', 4)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / split / f'image_{i:05d}.png')
    (tmp_path / 'disc.yml').write_text(yaml.safe_dump({'model_param': dict(image_channels=3, num_filters_last=8,
                                                                           n_layers=2)}))
    (tmp_path / 'cfg.yml').write_text(yaml.safe_dump({
        'model_param': tiny,
        'train': dict(batch_size=8, epochs=1, disc_start=100, disc_config=str(tmp_path / 'disc.yml')),
        'data': dict(train_path=str(tmp_path / 'train'), val_path=str(tmp_path / 'val'))}))
    training_vqgan.train(training_vqgan.parse_args(['--config', str(tmp_path / 'cfg.yml'), '--run-dir',
                                                    str(tmp_path / 'run'), '--threads', '1']))
    for name in ('last.pt', 'best.pt'):
        path = tmp_path / 'run' / name
        digest, base = Path(f'{path}.sha256').read_text().split()
        assert base == name and digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tokenizer_alone_loads_without_a_transformer_checkpoint(lab):
    """eval_inpainting.py with baselines only (a tokenizer's rFID before any transformer is trained on its codes):
    load_maskgit(transformer=False) reads no transformer checkpoint; the default still demands one."""
    args = inpainting.parse_args(['--MaskGitConfig', str(lab / 'mg.yml'), '--device', 'cpu'])  # no checkpoint: path
    with pytest.raises(ValueError, match='no transformer checkpoint'):
        pipeline.load_maskgit(args, torch.device('cpu'))
    model, _ = pipeline.load_maskgit(args, torch.device('cpu'), transformer=False)
    ref = VQGAN(INPAINT_VQ)
    ref.load_state_dict(torch.load(lab / 'vq.pt', weights_only=True))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.vqgan.encode_indices(x), ref.eval().encode_indices(x))
