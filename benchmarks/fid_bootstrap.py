"""Is an FID difference between inpainting runs real? A paired bootstrap over the images (fid/bootstrap.py).

    python benchmarks/fid_bootstrap.py --gt data/openclipart/val_gt.csv \
        --runs ours=results/eval_val/ours telea=results/eval_val/telea --reference telea \
        --features-cache results/fid_features --out results/eval_val/bootstrap.json \
        --masks data/openclipart/val_mask64          # also hole-only L1 / PSNR over the same resamples

--gt: a folder of images, or the course's ground-truth CSV (eval_inpainting.py scores against DATA/val_gt.csv or
DATA/test_gt.csv, or OUT/gt with --partial). Images are aligned by sorted file name: each run folder must hold
exactly the GT folder's image names. A CSV lists no names: its row i is the split's i-th image (prepare_dataset.py
numbers them image_{i}, and eval_inpainting.py keeps those names), so the run folders must then hold the same
names as each other, as many as the CSV's rows, and row i is matched to the i-th name in sorted order.
Features (Inception pool3, 2048) are cached per source in --features-cache as .npy, keyed by the absolute path
and the files' names, sizes and mtimes. Prints a markdown table; --out writes the same as JSON.
Read the interval of the DIFFERENCE: bootstrap FIDs are biased upward (fid/bootstrap.py).
--masks: the split's mask folder (255 = known, 0 = hole; thresholded at 128), row i = the i-th mask by sorted
name. Adds a second table: each run's mean hole L1 (0..255 levels) and hole PSNR (dB) against the ground truth
(eval_inpainting.py's hole_errors, per image), and their differences over the same resamples as the FID.
"""
import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from benchmarks.eval_inpainting import hole_errors  # noqa: E402
from dataset import MASK_THRESHOLD, list_images, load_mask  # noqa: E402
from fid import score as fs  # noqa: E402
from fid.bootstrap import paired_bootstrap, resample_indices, summarise  # noqa: E402
from utils import atomic_open, check_writable, files_fingerprint, resolve_device  # noqa: E402

DIMS = 2048


def fail(msg):
    sys.exit(f"fid_bootstrap.py: {msg}")


def parse_runs(specs):
    """['NAME=FOLDER', ...] -> {name: folder}."""
    runs = {}
    for spec in specs:
        name, _, folder = spec.partition('=')
        if not folder or not re.fullmatch(r'[\w.-]+', name):
            fail(f"--runs: '{spec}' is not NAME=FOLDER (a name of letters, digits, _ . -)")
        if name in runs:
            fail(f"--runs: run name {name} given twice")
        if not os.path.isdir(folder):
            fail(f"--runs {name}: image folder not found: {folder}")
        runs[name] = folder
    return runs


def names_of(folder):
    return [os.path.basename(p) for p in list_images(folder)]


def csv_rows(path):
    """Rows of a ground-truth CSV without parsing it (a header line, then one line an image)."""
    with open(path) as f:
        return sum(1 for line in f if line.strip()) - 1


def check_names(gt, runs):
    """The image names every source is aligned by; a run folder with other names is an error naming it."""
    is_csv = gt.lower().endswith('.csv')
    want = names_of(next(iter(runs.values()))) if is_csv else names_of(gt)
    for name, folder in runs.items():
        have = names_of(folder)
        if have != want:
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            other = f"the first run's ({next(iter(runs.values()))})" if is_csv else f"the ground truth's ({gt})"
            fail(f"--runs {name}: the image names in {folder} differ from {other}: {len(missing)} missing "
                 f"{missing[:3]}, {len(extra)} extra {extra[:3]}")
    if len(want) < 2:
        fail(f"FID needs at least 2 images, got {len(want)}")
    if is_csv and csv_rows(gt) != len(want):
        fail(f"the run folders hold {len(want)} images but the ground-truth CSV {gt} has {csv_rows(gt)} rows")
    return want


def cache_path(source, cache):
    """--features-cache/<name>-<key>.npy, the key from the absolute path and each file's name, size and mtime."""
    files = [source] if os.path.isfile(source) else list_images(source)
    key = hashlib.sha256(f"{os.path.abspath(source)}|{DIMS}|{files_fingerprint(files)}".encode()).hexdigest()[:16]
    return os.path.join(cache, f"{os.path.basename(os.path.normpath(source))}-{key}.npy")


def features(source, model_fn, device, cache=None):
    """[n, 2048] float64 Inception features of a folder or a ground-truth CSV, from the cache when there."""
    path = cache and cache_path(source, cache)
    if path and os.path.isfile(path):
        return np.load(path)
    images, workers = fs._images_of(source)
    feats = fs.activation_features(images, model_fn(), num_workers=fs.default_workers() if workers is None else workers,
                                   device=device, desc=os.path.basename(os.path.normpath(source)))
    if not np.isfinite(feats).all():
        raise ValueError(f"features of {source} contain NaN or inf (broken images?): no FID can be computed")
    if path:
        with atomic_open(path, 'wb') as f:
            np.save(f, feats)
    return feats


def pixels(source):
    """uint8 [n, 3, H, W] of a folder (sorted names) or a ground-truth CSV; mixed sizes are an error naming it."""
    images, _ = fs._images_of(source)
    if isinstance(images, torch.Tensor):  # a CSV, already decoded
        return images
    items = [images[i] for i in range(len(images))]                       # [3, H, W] each
    sizes = sorted({tuple(x.shape[1:]) for x in items})
    if len(sizes) > 1:
        fail(f"--masks: the images in {source} have different sizes {sizes[:3]}: hole metrics need one size")
    return torch.stack(items)


def mask_paths(folder, n):
    """The mask files, sorted by name: row i is image i; a missing folder or another count names --masks."""
    if not os.path.isdir(folder):
        fail(f"--masks: mask folder not found: {folder}")
    try:
        paths = list_images(folder, what='mask')
    except ValueError as e:
        fail(f"--masks: {e}")
    if len(paths) != n:
        fail(f"--masks: {len(paths)} masks in {folder} but {n} images: row i of each must be the same image")
    return paths


def load_masks(paths, size):
    """float [n, 1, H, W], 1 = known (>= MASK_THRESHOLD), 0 = hole; a mask whose size is not (H, W) names it."""
    masks = []
    for path in paths:
        try:
            m = load_mask(path, MASK_THRESHOLD)                            # [1, H, W]
        except ValueError as e:
            fail(f"--masks: {e}")
        if tuple(m.shape[1:]) != size:
            fail(f"--masks: {path} is {m.shape[2]}x{m.shape[1]} but the images are {size[1]}x{size[0]}")
        masks.append(m)
    return torch.stack(masks)


def hole_metrics(gt, runs, mask_dir, n):
    """{run: {'hole_l1': [n], 'hole_psnr': [n]}} float64 per image (rows aligned as check_names says)."""
    paths = mask_paths(mask_dir, n)                                        # the cheap checks before any decoding
    truth = pixels(gt).float() / 255                                       # [n, 3, H, W] in [0, 1]
    masks = load_masks(paths, tuple(truth.shape[2:]))                      # [n, 1, H, W]
    out = {}
    for name, folder in runs.items():
        run = pixels(folder).float() / 255
        if run.shape != truth.shape:
            fail(f"--masks: run {name}'s images are {tuple(run.shape[2:])} but the ground truth's "
                 f"{tuple(truth.shape[2:])}: hole metrics need one size")
        l1, psnr = hole_errors(run, truth, masks)  # float32 like eval_inpainting.py: the same per-image figures
        out[name] = {'hole_l1': l1.double().numpy(), 'hole_psnr': psnr.double().numpy()}
    return out


def hole_summary(errors, reference, n_boot, seed):
    """{run: hole_l1, hole_l1_diff, hole_l1_diff_interval, hole_l1_opposite_share and the same for hole_psnr}:
    means over the images and summarise()'s differences, over the FID bootstrap's resamples."""
    n = len(next(iter(errors.values()))['hole_l1'])
    idx = resample_indices(n, n_boot, seed)                                # [n_boot, n] the FID's resample k = ours
    out = {k: {} for k in errors}
    for metric in ('hole_l1', 'hole_psnr'):
        # summarise() names its fields for FID; its intervals and opposite shares are the same definitions here
        s = summarise({k: {'fid': e[metric].mean(), 'boot': e[metric][idx].mean(1)}  # boot: [n_boot] means
                       for k, e in errors.items()}, reference)
        for k, v in s.items():
            out[k].update({metric: v['fid'], f'{metric}_diff': v['diff'], f'{metric}_diff_interval': v['diff_interval'],
                           f'{metric}_opposite_share': v['opposite_share']})
    return out


def hole_table(summary, reference):
    rows = ['| run | hole L1 | minus reference | 95 % interval | opposite-sign share '
            '| hole PSNR (dB) | minus reference | 95 % interval | opposite-sign share |',
            '|---|---|---|---|---|---|---|---|---|']
    for name, s in summary.items():
        cells = [name]
        for metric in ('hole_l1', 'hole_psnr'):
            cells.append(f"{s[metric]:.2f}")
            cells += ['(reference)', '', ''] if name == reference else [
                f"{s[metric + '_diff']:+.2f}", '[{:+.2f}, {:+.2f}]'.format(*s[metric + '_diff_interval']),
                f"{s[metric + '_opposite_share']:.3f}"]
        rows.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def table(summary, reference):
    rows = ['| run | FID | 95 % interval | minus reference | 95 % interval of the difference | opposite-sign share |',
            '|---|---|---|---|---|---|']
    for name, s in summary.items():
        lo, hi = s['fid_interval']
        diff = ('(reference)', '', '') if name == reference else (
            f"{s['diff']:+.2f}", '[{:+.2f}, {:+.2f}]'.format(*s['diff_interval']), f"{s['opposite_share']:.3f}")
        rows.append(f"| {name} | {s['fid']:.2f} | [{lo:.2f}, {hi:.2f}] | " + ' | '.join(diff) + ' |')
    return '\n'.join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--gt', required=True, help='ground-truth image folder, or the ground-truth CSV')
    p.add_argument('--runs', nargs='+', required=True, metavar='NAME=FOLDER', help="runs' image folders")
    p.add_argument('--reference', default=None, help='the run differences are taken against (default: the first)')
    p.add_argument('--n-boot', type=int, default=1000, help='bootstrap resamples')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, metavar='FILE.json', help='also write the results as JSON')
    p.add_argument('--features-cache', default=None, metavar='DIR', help='cache each source\'s features here')
    p.add_argument('--device', default='auto', help='auto: cuda if available, else cpu')
    p.add_argument('--masks', default=None, metavar='DIR', help="the split's mask folder: also hole-only L1 / PSNR")
    a = p.parse_args(argv)

    # every check before any feature is computed
    if a.n_boot < 1:
        fail(f"--n-boot must be >= 1, got {a.n_boot}")
    runs = parse_runs(a.runs)
    reference = a.reference or next(iter(runs))
    if reference not in runs:
        fail(f"--reference {reference} is not one of the runs ({', '.join(runs)})")
    if not (os.path.isdir(a.gt) or (a.gt.lower().endswith('.csv') and os.path.isfile(a.gt))):
        fail(f"--gt: not an image folder or a ground-truth .csv: {a.gt}")
    try:
        names = check_names(a.gt, runs)
        if a.out:
            check_writable(a.out, '--out')
        if a.features_cache:
            check_writable(a.features_cache, '--features-cache', folder=True)
        holes = hole_metrics(a.gt, runs, a.masks, len(names)) if a.masks else None  # all checks before features
        device = resolve_device(a.device)
        model = []

        def model_fn():  # built once, and only if some source is not cached
            if not model:
                model.append(fs.fast_inception(DIMS, device))
            return model[0]

        gt = features(a.gt, model_fn, device, a.features_cache)
        feats = {name: features(folder, model_fn, device, a.features_cache) for name, folder in runs.items()}
        summary = summarise(paired_bootstrap(feats, gt, a.n_boot, a.seed), reference)
        if holes:
            for k, h in hole_summary(holes, reference, a.n_boot, a.seed).items():
                summary[k].update(h)
    except (OSError, ValueError, RuntimeError) as e:
        fail(str(e).strip().splitlines()[-1])  # a DataLoader worker's error: its last line is the message

    print(f"FID over {len(names)} images, {a.n_boot} paired resamples (seed {a.seed}); ground truth {a.gt}\n")
    print(table(summary, reference), flush=True)
    if holes:
        print(f"\nHole-only L1 (0..255 levels) and PSNR (dB) over the holes of {a.masks}, mean per image, "
              f"the same resamples\n")
        print(hole_table(summary, reference), flush=True)
    if a.out:
        with atomic_open(a.out) as f:
            json.dump({'gt': a.gt, 'reference': reference, 'images': len(names), 'n_boot': a.n_boot, 'seed': a.seed,
                       **({'masks': a.masks} if a.masks else {}),
                       'runs': {k: {'folder': runs[k], **s} for k, s in summary.items()}}, f, indent=2)


if __name__ == '__main__':
    main()
