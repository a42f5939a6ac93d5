"""benchmarks/eval_inpainting.py end to end on a tiny lab: a tiny model, a tiny dataset in prepare_dataset.py's layout,
and a stand-in for the Inception network (pixels pooled 4x4: no weights, milliseconds)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import common
from benchmarks import eval_inpainting as ei
from conftest import IMG
from dataset import write_gt_csv
from fid import score as fs

N_IMAGES = 5
PREFIX = {'val': ('val_', 'val'), 'test': ('', 'test'), 'holdout': ('holdout_', 'holdout')}  # folders' prefix, gt dir


def hole(i):
    """The 0/255 mask of image i: an 8x8 hole on the 4x4-pixel token grid, placed by i."""
    m = np.full((IMG, IMG), 255, np.uint8)
    y, x = 4 * (i % 3), 4 * ((i + 1) % 3)
    m[y:y + 8, x:x + 8] = 0
    return m


def write_split(root, split, n=N_IMAGES, seed=0):
    """prepare_dataset.py's layout of one split: each ground truth one flat colour (so the mean of its known pixels
    fills its hole exactly), masks, masked images (holes RGB 128) and DATA/<split>_gt.csv."""
    prefix, gt_dir = PREFIX[split]
    colours = np.random.default_rng(seed).integers(0, 256, (n, 3), dtype=np.uint8)
    gt = np.broadcast_to(colours[:, None, None, :], (n, IMG, IMG, 3)).copy()
    for d in (gt_dir, f'{prefix}mask64', f'{prefix}masked_image'):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = hole(i)
        Image.fromarray(gt[i]).save(root / gt_dir / f'image_{i:05d}.png')
        Image.fromarray(m, 'L').save(root / f'{prefix}mask64' / f'mask_{i:05d}.png')
        Image.fromarray(np.where(m[..., None] == 0, 128, gt[i]).astype(np.uint8)).save(
            root / f'{prefix}masked_image' / f'image_{i:05d}.png')
    write_gt_csv(gt, root / f'{split}_gt.csv')
    return gt


@pytest.fixture
def pooled_fid(monkeypatch):
    """Inception replaced by the 2x2-pooled pixels (192 features, one of pytorch-fid's --dims): FIDs are real
    Fréchet distances, in milliseconds."""
    model = lambda x: [torch.nn.functional.avg_pool2d(x, 2).flatten(1)[:, :, None, None]]     # [B, 192, 1, 1]
    monkeypatch.setattr(fs, 'fast_inception', lambda *a, **k: model)
    monkeypatch.setattr(common, 'FID_DIMS', 192)
    monkeypatch.setattr(fs, 'default_workers', lambda: 0)  # no DataLoader processes for 5 tiny images


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab([], hole)


def evaluate(lab, data, out, *extra):
    ei.main(['--data', str(data), '--out', str(out), '--MaskGitConfig', str(lab / 'mg.yml'),
             '--load-transformer-ckpt-path', str(lab / 'tr.pt'), '--device', 'cpu', '--batch-size', '2', *extra])
    return json.loads((out / 'results.json').read_text())


def pngs(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(folder).glob('*.png'))])


def test_decoding_runs_and_baselines_score_finite_and_exact_copies_zero(lab, tmp_path, pooled_fid, one_thread):
    data, out = tmp_path / 'data', tmp_path / 'out'
    gt = write_split(data, 'val')
    res = evaluate(lab, data, out, '--runs', 'T2=--total-iter,2', 's1=--total-iter,3,--sweet-spot,1',
                   '--baselines', 'mean_fill', 'vqgan_recon_paste')
    assert set(res) == {'T2', 's1', 'mean_fill', 'vqgan_recon_paste'}
    for name, r in res.items():
        assert all(math.isfinite(r[k]) for k in ('fid', 'hole_l1', 'hole_psnr')), (name, r)
        assert r['images'] == N_IMAGES and r['split'] == 'val'
    # mean_fill of flat images is an exact copy: hole L1 0, PSNR at hole_errors' floor, FID 0
    assert res['mean_fill']['hole_l1'] == 0 and res['mean_fill']['hole_psnr'] == 100
    assert abs(res['mean_fill']['fid']) < 1e-6
    masks = np.stack([hole(i) for i in range(N_IMAGES)]) == 0                    # [n, H, W] True = hole
    for name in ('T2', 's1'):
        got = pngs(out / name)                                                     # [n, H, W, 3]
        assert np.array_equal(got[~masks], gt[~masks])                             # --paste-known
        naive = np.abs(got.astype(float) - gt)[masks].reshape(N_IMAGES, -1).mean(1)  # per image, every hole pixel
        assert res[name]['hole_l1'] == pytest.approx(naive.mean(), rel=1e-5) and res[name]['hole_l1'] > 0
        assert res[name]['fid'] > 0
    table = (out / 'table.md').read_text().splitlines()
    assert [row.split(' | ')[0] for row in table[2:]][0] == '| mean_fill' and len(table) == 2 + len(res) + 2
    assert table[-1].startswith(f'note: FID of {N_IMAGES} images, fewer than the 2048 features')  # the small-set caveat


def test_statistics_of_a_rebuilt_dataset_are_not_reused(lab, tmp_path, pooled_fid, one_thread):
    """The same count, other pictures: the second call's FID is against the new ground truth (mean_fill copies it
    exactly: 0), not the first dataset's statistics left in --out."""
    data, out = tmp_path / 'data', tmp_path / 'out'
    write_split(data, 'val', seed=0)
    assert abs(evaluate(lab, data, out, '--runs', '--baselines', 'mean_fill')['mean_fill']['fid']) < 1e-6
    write_split(data, 'val', seed=1)
    assert abs(evaluate(lab, data, out, '--runs', '--baselines', 'mean_fill')['mean_fill']['fid']) < 1e-6
    assert len(list(out.glob('gt_stats_val_*.npz'))) == 2


def test_holdout_split_with_its_labels(make_inpainting_lab, tmp_path, pooled_fid, one_thread):
    lab = make_inpainting_lab([], hole, conditional=True)
    data, out = tmp_path / 'data', tmp_path / 'out'
    write_split(data, 'holdout')
    labels = {f'holdout/image_{i:05d}.png': ['cat', 'dog', None][i % 3] for i in range(N_IMAGES)}
    (data / 'labels.json').write_text(json.dumps(labels))
    res = evaluate(lab, data, out, '--split', 'holdout', '--runs', 'T2=--total-iter,2', '--baselines', 'mean_fill',
                   '--labels', str(data / 'labels.json'))
    assert res['T2']['split'] == 'holdout' and res['T2']['labels'] == str(data / 'labels.json')
    assert res['mean_fill']['hole_l1'] == 0 and math.isfinite(res['T2']['fid'])
    assert len(pngs(out / 'T2')) == N_IMAGES


def test_total_iter_past_the_token_count_is_refused_before_any_output(lab, tmp_path, pooled_fid, capsys):
    data, out = tmp_path / 'data', tmp_path / 'out'
    write_split(data, 'val')
    with pytest.raises(SystemExit) as e:
        evaluate(lab, data, out, '--runs', 'long=--total-iter,17', '--baselines')
    msg = str(e.value)
    assert '--runs long' in msg and '--total-iter' in msg and '16' in msg and '\n' not in msg, msg
    assert not out.exists()
