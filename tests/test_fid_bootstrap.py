"""fid/bootstrap.py's Fréchet distance from features and its paired bootstrap; benchmarks/fid_bootstrap.py on tiny
folders with a stand-in feature extractor (no Inception weights)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from benchmarks import fid_bootstrap as fb
from dataset import write_gt_csv
from fid import score as fs
from fid.bootstrap import frechet_from_features, paired_bootstrap, resample_indices, summarise

EPS = np.finfo(np.float64).eps


def structured(n, d, seed, rank=6, shift=0.0):
    """Low-rank plus noise features [n, d] with a nonzero mean (so a missing centring shows)."""
    g = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(rank, d))  # one subspace shared by every set
    return g.normal(size=(n, rank)) @ basis + 0.3 * g.normal(size=(n, d)) + 1.0 + shift


def reference_fid(a, b):
    """The textbook FID: np.cov statistics and scipy's sqrtm (pytorch-fid's formula, without its eps retry)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    diff = a.mean(0) - b.mean(0)
    return diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean), sa, sb


# ----------------------------------------------------------------------------- Fréchet distance

@pytest.mark.parametrize('n_a, n_b, d', [(40, 40, 64), (30, 45, 64), (200, 200, 32), (150, 120, 32)])
def test_frechet_from_features_matches_sqrtm_reference(n_a, n_b, d):
    a, b = structured(n_a, d, 1), structured(n_b, d, 2, shift=0.2)
    ref, sa, sb = reference_fid(a, b)
    scale = np.trace(sa) + np.trace(sb)  # the trace terms: what the FID is a difference of
    if min(n_a, n_b) > d:
        # full-rank covariances: both routes (an n x n SVD or eigh, sqrtm's Schur form) are backward stable, errors
        # ~ d * eps * scale ~ 1e-14 relative; 1e-8 leaves a wide margin and still catches any wrong formula
        tol = 1e-8 * scale
    else:
        # S_a S_b is singular (rank < n): sqrtm turns the rounding noise eps * ||S_a S_b|| on each of its ~d zero
        # eigenvalues into sqrt(eps * ||S_a S_b||), so the REFERENCE is only good to ~d * sqrt(eps * ||S_a S_b||)
        # on Tr sqrt (x2 in the FID): ~3e-7 relative here (its actual error ~3e-8; ours, against a thin-SVD route,
        # ~1e-14), while a wrong centring, n - 1 or pairing moves the FID by >1e-3 relative
        tol = 2 * d * np.sqrt(EPS * np.linalg.norm(sa @ sb, 2))
    assert abs(frechet_from_features(a, b) - ref) <= tol, (frechet_from_features(a, b), ref, tol / scale)


def test_frechet_from_features_of_a_set_with_itself_is_zero():
    a = structured(40, 64, 3)
    assert abs(frechet_from_features(a, a)) < 1e-10 * np.trace(np.cov(a, rowvar=False))


def test_activation_features_are_the_rows_behind_activation_statistics():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (7, 3, 8, 8), dtype=np.uint8))
    model = lambda x: [torch.nn.functional.avg_pool2d(x, 4).flatten(1)[:, :, None, None]]  # [B, 12, 1, 1]
    f = fs.activation_features(images, model, batch_size=3)  # 3 + 3 + 1: batches joined in order
    assert f.dtype == np.float64 and f.shape == (7, 12)
    np.testing.assert_allclose(f[5], torch.nn.functional.avg_pool2d(images[5:6].double() / 255, 4).flatten(),
                               rtol=1e-6)
    mu, sigma = fs.activation_statistics(images, model, batch_size=3)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------- the paired bootstrap

def noisy(gt, sigma, seed):
    return gt + sigma * np.random.default_rng(seed).normal(size=gt.shape)


def test_resampled_fids_are_the_fid_of_the_resampled_rows():
    gt = structured(50, 80, 0)
    runs = {'a': noisy(gt, 0.2, 1), 'b': noisy(gt, 0.5, 2) + 0.1}
    res = paired_bootstrap(runs, gt, n_boot=20, seed=3)
    idx = resample_indices(50, 20, seed=3)  # [20, 50]
    for k, f in runs.items():
        direct = [frechet_from_features(f[i], gt[i]) for i in idx]  # gt and the run on the same images
        np.testing.assert_allclose(res[k]['boot'], direct, rtol=0, atol=1e-9 * np.abs(direct).max())
        assert res[k]['fid'] == frechet_from_features(f, gt)


@pytest.mark.parametrize('n, d', [(50, 80), (80, 20)])  # the Gram route and the D x D route
def test_run_equal_to_gt_is_zero_on_every_resample(n, d):
    gt = structured(n, d, 0)
    res = paired_bootstrap({'same': gt.copy()}, gt, n_boot=30, seed=0)
    scale = 2 * np.trace(np.cov(gt, rowvar=False))
    assert abs(res['same']['fid']) < 1e-9 * scale and np.abs(res['same']['boot']).max() < 1e-9 * scale


def test_identical_runs_differ_by_exactly_zero():
    gt = structured(50, 80, 0)
    run = noisy(gt, 0.3, 1)
    res = paired_bootstrap({'a': run, 'b': run.copy()}, gt, n_boot=30, seed=0)
    s = summarise(res, 'a')['b']
    assert np.array_equal(res['a']['boot'], res['b']['boot'])
    assert s['diff'] == 0 and s['diff_interval'] == [0, 0] and s['opposite_share'] == 0


def test_breaking_the_alignment_changes_the_resamples_not_the_fid():
    gt = structured(50, 80, 0)
    run = noisy(gt, 0.3, 1)
    shuffled = run[np.random.default_rng(5).permutation(50)]
    res = paired_bootstrap({'aligned': run, 'shuffled': shuffled}, gt, n_boot=30, seed=0)
    scale = np.trace(np.cov(gt, rowvar=False))
    assert abs(res['aligned']['fid'] - res['shuffled']['fid']) < 1e-9 * scale  # FID ignores the order of a set
    assert np.abs(res['aligned']['boot'] - res['shuffled']['boot']).max() > 1e-3 * scale  # pairing does not


def test_resamples_are_reproducible_with_the_seed():
    gt = structured(40, 60, 0)
    runs = {'a': noisy(gt, 0.3, 1)}
    first, again, other = (paired_bootstrap(runs, gt, n_boot=10, seed=s)['a']['boot'] for s in (7, 7, 8))
    assert np.array_equal(first, again) and not np.allclose(first, other)


def test_less_noise_is_a_real_improvement():
    gt = structured(60, 100, 0)
    res = paired_bootstrap({'large': noisy(gt, 0.6, 1), 'small': noisy(gt, 0.1, 2)}, gt, n_boot=200, seed=0)
    s = summarise(res, 'large')
    assert s['small']['diff'] < 0 and s['small']['diff_interval'][1] < 0 and s['small']['opposite_share'] == 0
    assert s['large']['diff'] == 0 and s['large']['fid_interval'][0] <= s['large']['fid_interval'][1]


def test_misaligned_shapes_are_an_error():
    gt = structured(40, 60, 0)
    with pytest.raises(ValueError, match='run a'):
        paired_bootstrap({'a': gt[:-1]}, gt, n_boot=2)


# ----------------------------------------------------------------------------- the command line

def write_folder(path, images, names=None):
    path.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(x).save(path / (names[i] if names else f'image_{i:03d}.png'))
    return str(path)


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """gt and runs a (close), b (far): 6 images of 8x8 each; features = the pixels (192 dims), counted per call."""
    g = np.random.default_rng(0)
    gt = g.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    near = np.clip(gt.astype(int) + g.integers(-5, 6, gt.shape), 0, 255).astype(np.uint8)
    far = np.clip(gt.astype(int) + g.integers(-80, 81, gt.shape), 0, 255).astype(np.uint8)
    calls = []

    def pixels(images, model, batch_size=50, num_workers=0, device='cpu', desc='features'):
        calls.append(desc)
        return torch.stack([images[i] for i in range(len(images))]).flatten(1).double().numpy()  # [n, 192]

    monkeypatch.setattr(fs, 'fast_inception', lambda *a, **k: None)
    monkeypatch.setattr(fs, 'activation_features', pixels)
    return dict(gt=write_folder(tmp_path / 'gt', gt), a=write_folder(tmp_path / 'a', near),
                b=write_folder(tmp_path / 'b', far), images=gt, calls=calls, tmp=tmp_path)


def cli(lab, *extra, gt=None):
    fb.main(['--gt', gt or lab['gt'], '--runs', f"a={lab['a']}", f"b={lab['b']}", '--n-boot', '50', '--device',
             'cpu', *extra])


def test_cli_prints_the_table_and_writes_json(lab, capsys):
    out = lab['tmp'] / 'res' / 'boot.json'
    cli(lab, '--reference', 'b', '--out', str(out))
    text = capsys.readouterr().out
    assert '| run | FID | 95 % interval | minus reference | 95 % interval of the difference | opposite-sign share |' \
        in text and '| a |' in text and '| b |' in text and '(reference)' in text
    res = json.loads(out.read_text())
    assert res['reference'] == 'b' and res['images'] == 6 and res['n_boot'] == 50 and set(res['runs']) == {'a', 'b'}
    for r in res['runs'].values():
        assert set(r) == {'folder', 'fid', 'fid_interval', 'diff', 'diff_interval', 'opposite_share'}
    assert res['runs']['a']['diff'] < 0 and res['runs']['b']['diff'] == 0


def test_cli_caches_features(lab, capsys):
    cache = str(lab['tmp'] / 'cache')
    cli(lab, '--features-cache', cache)
    first = capsys.readouterr().out
    assert len(lab['calls']) == 3
    cli(lab, '--features-cache', cache)
    assert len(lab['calls']) == 3 and capsys.readouterr().out == first  # no new extraction, the same table
    (lab['tmp'] / 'a' / 'image_000.png').write_bytes((lab['tmp'] / 'a' / 'image_001.png').read_bytes())  # a changed
    cli(lab, '--features-cache', cache)
    assert lab['calls'][3:] == ['a']


def test_cli_csv_ground_truth_matches_the_folder(lab, capsys):
    csv = str(lab['tmp'] / 'val_gt.csv')
    write_gt_csv(lab['images'], csv)
    cli(lab)
    by_folder = capsys.readouterr().out.split('\n', 1)[1]  # the table, without the line naming the ground truth
    cli(lab, gt=csv)
    assert capsys.readouterr().out.split('\n', 1)[1] == by_folder


def one_line_error(lab, *args, gt=None):
    with pytest.raises(SystemExit) as e:
        fb.main(['--gt', gt or lab['gt'], *args])
    msg = str(e.value)
    assert msg.startswith('fid_bootstrap.py: ') and '\n' not in msg and not lab['calls'], msg
    return msg


def test_cli_mismatched_names_are_a_one_line_error_naming_the_folder(lab):
    c = write_folder(lab['tmp'] / 'c', lab['images'], [f'image_{i:03d}.png' for i in range(5)] + ['other.png'])
    msg = one_line_error(lab, '--runs', f"a={lab['a']}", f'c={c}')
    assert c in msg and 'other.png' in msg
    csv = str(lab['tmp'] / 'gt.csv')
    write_gt_csv(lab['images'], csv)
    assert c in one_line_error(lab, '--runs', f"a={lab['a']}", f'c={c}', gt=csv)  # a CSV: runs agree with each other
    write_gt_csv(lab['images'][:5], csv)
    assert '5 rows' in one_line_error(lab, '--runs', f"a={lab['a']}", gt=csv)


@pytest.mark.parametrize('args, words', [
    (['--runs', 'a'], 'NAME=FOLDER'),
    (['--runs', 'a='], 'NAME=FOLDER'),
    (['--runs', 'a={missing}'], 'not found'),
    (['--runs', 'a={a}', 'a={a}'], 'twice'),
    (['--runs', 'a={a}', '--reference', 'z'], '--reference z'),
    (['--runs', 'a={a}', '--n-boot', '0'], '--n-boot'),
])
def test_cli_bad_input_is_a_one_line_error(lab, args, words):
    args = [x.format(a=lab['a'], missing=lab['tmp'] / 'nope') for x in args]
    assert words in one_line_error(lab, *args)


# ----------------------------------------------------------------------------- --masks: hole-only L1 / PSNR

HOLE_HEADER = ('| run | hole L1 | minus reference | 95 % interval | opposite-sign share '
               '| hole PSNR (dB) | minus reference | 95 % interval | opposite-sign share |')
HOLE_KEYS = [f'{m}{s}' for m in ('hole_l1', 'hole_psnr') for s in ('', '_diff', '_diff_interval', '_opposite_share')]


def write_masks(path, n=6, size=(8, 8), seed=1):
    """n mode-L masks mask_00000.png ...: 0 / 255 at random, and 127 (a hole) and 128 (known) where the
    threshold's edge shows."""
    m = np.where(np.random.default_rng(seed).random((n, *size)) < 0.4, 0, 255).astype(np.uint8)
    m[:, 0, 0], m[:, 0, 1] = 127, 128
    path.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(m):
        Image.fromarray(x, 'L').save(path / f'mask_{i:05d}.png')
    return str(path)


def read_pngs(folder):
    """Every PNG of a folder in sorted order, as numpy arrays (RGB [H, W, 3] or L [H, W])."""
    return [np.asarray(Image.open(folder / name)) for name in sorted(os.listdir(folder))]


def naive_holes(run, gt, masks):
    """Per-image hole L1 (levels) and PSNR (dB), one image at a time from the PNGs: the figures to match."""
    l1, psnr = [], []
    for x, y, m in zip(read_pngs(Path(run)), read_pngs(Path(gt)), read_pngs(Path(masks))):
        d = (x.astype(np.float64) - y)[m < 128]                               # [hole pixels, 3]
        l1.append(np.abs(d).mean())
        psnr.append(10 * np.log10(255 ** 2 / (d ** 2).mean()))
    return np.array(l1), np.array(psnr)


@pytest.fixture
def holes(lab):
    lab['masks'] = write_masks(lab['tmp'] / 'masks')
    return lab


def hole_cli(lab, runs, *extra, gt=None):
    """The tool with --masks on {name: folder}; its JSON's runs."""
    out = lab['tmp'] / 'holes.json'
    fb.main(['--gt', gt or lab['gt'], '--runs', *[f'{k}={v}' for k, v in runs.items()], '--masks', lab['masks'],
             '--n-boot', '50', '--device', 'cpu', '--out', str(out), *extra])
    return json.loads(out.read_text())['runs']


def test_cli_hole_metrics_match_a_naive_loop_over_the_pngs(holes, capsys):
    res = hole_cli(holes, {'a': holes['a'], 'b': holes['b']}, '--reference', 'b')
    text = capsys.readouterr().out
    (l1a, pa), (l1b, pb) = (naive_holes(holes[k], holes['gt'], holes['masks']) for k in 'ab')
    assert text.index(HOLE_HEADER) > text.index('| run | FID |')  # the second table, after the FID's
    assert f"| a | {l1a.mean():.2f} | {(l1a - l1b).mean():+.2f} |" in text
    assert f"| b | {l1b.mean():.2f} | (reference) |" in text
    for k, l1, psnr in (('a', l1a, pa), ('b', l1b, pb)):
        assert set(HOLE_KEYS) <= set(res[k])
        assert res[k]['hole_l1'] == pytest.approx(l1.mean(), rel=1e-6)  # float32 sums over 8 x 8 images
        assert res[k]['hole_psnr'] == pytest.approx(psnr.mean(), rel=1e-6)
    assert res['a']['hole_l1_diff'] == pytest.approx((l1a - l1b).mean(), rel=1e-6) and res['a']['hole_l1_diff'] < 0
    assert res['a']['hole_psnr_diff'] == pytest.approx((pa - pb).mean(), rel=1e-6) and res['a']['hole_psnr_diff'] > 0
    csv = str(holes['tmp'] / 'val_gt.csv')
    write_gt_csv(holes['images'], csv)
    by_csv = hole_cli(holes, {'a': holes['a'], 'b': holes['b']}, '--reference', 'b', gt=csv)
    assert all(by_csv[k][key] == res[k][key] for k in 'ab' for key in HOLE_KEYS)  # the same pixels either way


def test_cli_hole_differences_of_a_run_with_itself_are_zero_and_a_shift_is_paired(holes):
    masks = read_pngs(Path(holes['masks']))
    ref = [np.clip(x, 0, 250) for x in read_pngs(Path(holes['a']))]  # room for +5 everywhere: no clipping
    plus = [np.where((m < 128)[..., None], x + 5, x) for x, m in zip(ref, masks)]  # +5 levels on hole pixels only
    runs = {'ref': write_folder(holes['tmp'] / 'ref', ref), 'same': write_folder(holes['tmp'] / 'same', ref),
            'plus': write_folder(holes['tmp'] / 'plus', plus)}
    res = hole_cli(holes, runs, '--reference', 'ref')
    for m in ('hole_l1', 'hole_psnr'):
        assert res['same'][m] == res['ref'][m] and res['same'][f'{m}_diff'] == 0
        assert res['same'][f'{m}_diff_interval'] == [0, 0] and res['same'][f'{m}_opposite_share'] == 0
    (l1r, pr), (l1p, pp) = (naive_holes(runs[k], holes['gt'], holes['masks']) for k in ('ref', 'plus'))
    idx = resample_indices(6, 50, 0)  # the FID bootstrap's resamples (--n-boot 50, --seed 0)
    for m, d in (('hole_l1', l1p - l1r), ('hole_psnr', pp - pr)):
        boot = d[idx].mean(1)                                                  # [50] paired mean differences
        assert res['plus'][f'{m}_diff'] == pytest.approx(d.mean(), rel=1e-5)
        np.testing.assert_allclose(res['plus'][f'{m}_diff_interval'], np.percentile(boot, [2.5, 97.5]), rtol=1e-5)
        assert res['plus'][f'{m}_opposite_share'] == np.mean(boot * d.mean() < 0)


def test_cli_known_pixels_do_not_move_the_hole_metrics(holes):
    masks = read_pngs(Path(holes['masks']))
    other = [np.where((m >= 128)[..., None], 255 - x, x) for x, m in zip(read_pngs(Path(holes['a'])), masks)]
    res = hole_cli(holes, {'a': holes['a'], 'known': write_folder(holes['tmp'] / 'known', other)})
    assert res['known']['diff'] != 0  # the FID sees the change
    assert res['known']['hole_l1'] == res['a']['hole_l1'] and res['known']['hole_psnr'] == res['a']['hole_psnr']
    assert res['known']['hole_l1_diff_interval'] == [0, 0] and res['known']['hole_psnr_diff_interval'] == [0, 0]


@pytest.mark.parametrize('case, words', [('missing', 'not found'), ('count', '5 masks'), ('size', 'mask_00003.png')])
def test_cli_bad_masks_are_a_one_line_error_naming_the_flag(holes, case, words):
    folder = holes['tmp'] / 'masks'
    if case == 'missing':
        folder = holes['tmp'] / 'nope'
    elif case == 'count':
        (folder / 'mask_00005.png').unlink()
    else:
        Image.fromarray(np.full((9, 8), 255, np.uint8), 'L').save(folder / 'mask_00003.png')
    msg = one_line_error(holes, '--runs', f"a={holes['a']}", '--masks', str(folder))
    assert '--masks' in msg and words in msg, msg


def test_cli_pairs_images_by_number_not_by_string_order(lab):
    """1,001 images named image_0 .. image_1000 (string order puts image_100 before image_11): an exact copy of
    the ground truth, against the CSV (row i = image i) and a folder, is FID 0 on every resample and hole L1 0;
    the masks are zero-padded (mask_00011.png), the run folder not."""
    n = 1001
    g = np.random.default_rng(5)
    images = g.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    names = [f'image_{i}.png' for i in range(n)]
    copy = write_folder(lab['tmp'] / 'copy', images, names)
    csv = str(lab['tmp'] / 'gt.csv')
    write_gt_csv(images, csv)
    m = np.where(g.random((n, 4, 4)) < 0.5, 0, 255).astype(np.uint8)
    m[:, 0, 0] = 0                                                            # every mask has a hole
    (lab['tmp'] / 'm').mkdir()
    for i, x in enumerate(m):
        Image.fromarray(x, 'L').save(lab['tmp'] / 'm' / f'mask_{i:05d}.png')
    lab['masks'] = str(lab['tmp'] / 'm')
    for gt in (csv, copy):
        res = hole_cli(lab, {'copy': copy, 'again': copy}, gt=gt)
        for r in res.values():
            assert abs(r['fid']) < 1e-6 and max(map(abs, r['fid_interval'])) < 1e-6, r
            assert r['hole_l1'] == 0 and r['hole_psnr'] == 100  # hole_errors' mse floor of 1e-10


def test_cli_csv_needs_the_numbers_of_its_rows(lab):
    shifted = write_folder(lab['tmp'] / 'shifted', lab['images'], [f'image_{i + 1}.png' for i in range(6)])
    csv = str(lab['tmp'] / 'gt.csv')
    write_gt_csv(lab['images'], csv)
    msg = one_line_error(lab, '--runs', f'a={shifted}', gt=csv)
    assert 'numbered i' in msg and '1..6' in msg, msg
