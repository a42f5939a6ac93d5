"""Is an FID difference between inpainting runs real? A paired bootstrap over the images (fid/bootstrap.py).

    python benchmarks/fid_bootstrap.py --gt data/openclipart/val_gt.csv \
        --runs ours=results/eval_val/ours telea=results/eval_val/telea --reference telea \
        --features-cache results/fid_features --out results/eval_val/bootstrap.json \
        --masks data/openclipart/val_mask64          # also hole-only L1 / PSNR over the same resamples

--gt: a folder of images, or the course's ground-truth CSV (eval_inpainting.py scores against DATA/val_gt.csv,
DATA/test_gt.csv or DATA/holdout_gt.csv, or OUT/gt with --partial). Images are paired by the number in their
file name (image_7.png <-> image_007.png), as inpainting.py pairs them: each run folder must hold images of
exactly the GT folder's numbers. A CSV lists no names: its row i is the split's image numbered i
(prepare_dataset.py numbers them image_{i}, and eval_inpainting.py keeps those numbers), so the run folders must
then hold the numbers 0..rows-1.
Features (Inception pool3, 2048) are cached per source in --features-cache as .npy, keyed by the absolute path
and the files' names, sizes and mtimes. Prints a markdown table; --out writes the same as JSON.
Read the interval of the DIFFERENCE: bootstrap FIDs are biased upward (fid/bootstrap.py).
--masks: the split's mask folder (255 = known, 0 = hole; thresholded at 128), mask_{i} the hole of image_{i}.
Adds a second table: each run's mean hole L1 (0..255 levels) and hole PSNR (dB) against the ground truth
(benchmarks/common.py's hole_errors, per image, as eval_inpainting.py), and their differences over the same
resamples as the FID.
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
from benchmarks.common import hole_errors  # noqa: E402
from dataset import MASK_THRESHOLD, files_by_number, list_images, load_mask  # noqa: E402
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


def numbered(folder, what='image'):
    """{number: path} of a folder's images (dataset.files_by_number); a file without a number is an error."""
    paths = list_images(folder, what=what)
    by_number = files_by_number(paths, what, folder)
    if len(by_number) < len(paths):
        stray = next(p for p in paths if p not in set(by_number.values()))
        raise ValueError(f"{stray} has no number in its name: images are paired by number")
    return by_number


def csv_rows(path):
    """Rows of a ground-truth CSV without parsing it (a header line, then one line an image)."""
    with open(path) as f:
        return sum(1 for line in f if line.strip()) - 1


def check_names(gt, runs):
    """(the image numbers every source is paired by, ascending; {folder: its files in that order}). A run folder
    with other numbers is an error naming it; a CSV's row i is the image numbered i."""
    is_csv = gt.lower().endswith('.csv')
    first = next(iter(runs.values()))
    try:
        want = numbered(first if is_csv else gt)
    except ValueError as e:
        fail(f"{'--runs ' + next(iter(runs)) if is_csv else '--gt'}: {e}")
    files = {} if is_csv else {gt: want}
    for name, folder in runs.items():
        try:
            have = numbered(folder)
        except ValueError as e:
            fail(f"--runs {name}: {e}")
        if set(have) != set(want):
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            other = f"the first run's ({first})" if is_csv else f"the ground truth's ({gt})"
            fail(f"--runs {name}: the image numbers in {folder} differ from {other}: {len(missing)} missing "
                 f"{[os.path.basename(want[k]) for k in missing[:3]]}, {len(extra)} extra "
                 f"{[os.path.basename(have[k]) for k in extra[:3]]}")
        files[folder] = have
    order = sorted(want)
    if len(order) < 2:
        fail(f"FID needs at least 2 images, got {len(order)}")
    if is_csv and csv_rows(gt) != len(order):
        fail(f"the run folders hold {len(order)} images but the ground-truth CSV {gt} has {csv_rows(gt)} rows")
    if is_csv and order != list(range(len(order))):
        fail(f"the ground-truth CSV {gt}'s row i is the image numbered i, but the run folders hold numbers "
             f"{order[0]}..{order[-1]}, not 0..{len(order) - 1}")
    return order, {folder: [by_number[k] for k in order] for folder, by_number in files.items()}


def images_of(source, files):
    """uint8 images of a ground-truth CSV ([n, 3, H, W], row i = image i) or of a folder's `files` in that order."""
    return fs.csv_images(source) if files is None else fs.ImageFiles(files)


def cache_path(source, files, cache):
    """--features-cache/<name>-<key>.npy, the key from the absolute path and each file's name, size and mtime
    in pairing order (files None: the CSV itself)."""
    key = f"{os.path.abspath(source)}|{DIMS}|{files_fingerprint(files or [source])}"
    return os.path.join(cache, f"{os.path.basename(os.path.normpath(source))}-"
                               f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")


def features(source, files, model_fn, device, cache=None):
    """[n, 2048] float64 Inception features of a folder's `files` or a ground-truth CSV (files None), from the
    cache when there."""
    path = cache and cache_path(source, files, cache)
    if path and os.path.isfile(path):
        return np.load(path)
    workers = 0 if files is None else fs.default_workers()  # a CSV is decoded already
    feats = fs.activation_features(images_of(source, files), model_fn(), num_workers=workers, device=device,
                                   desc=os.path.basename(os.path.normpath(source)))
    if not np.isfinite(feats).all():
        raise ValueError(f"features of {source} contain NaN or inf (broken images?): no FID can be computed")
    if path:
        with atomic_open(path, 'wb') as f:
            np.save(f, feats)
    return feats


def pixels(source, files):
    """uint8 [n, 3, H, W] of a folder's `files` or a ground-truth CSV (files None); mixed sizes are an error."""
    images = images_of(source, files)
    if isinstance(images, torch.Tensor):  # a CSV, already decoded
        return images
    items = [images[i] for i in range(len(images))]                       # [3, H, W] each
    sizes = sorted({tuple(x.shape[1:]) for x in items})
    if len(sizes) > 1:
        fail(f"--masks: the images in {source} have different sizes {sizes[:3]}: hole metrics need one size")
    return torch.stack(items)


def mask_paths(folder, order):
    """The mask of each image number in `order` (mask_7.png for image_007.png); a missing folder, or masks of
    other numbers, name --masks."""
    if not os.path.isdir(folder):
        fail(f"--masks: mask folder not found: {folder}")
    try:
        by_number = numbered(folder, what='mask')
    except ValueError as e:
        fail(f"--masks: {e}")
    missing, extra = [k for k in order if k not in by_number], sorted(set(by_number) - set(order))
    if missing or extra:
        fail(f"--masks: {len(by_number)} masks in {folder} for {len(order)} images: none numbered {missing[:3]}, "
             f"{len(extra)} of other numbers {[os.path.basename(by_number[k]) for k in extra[:3]]}")
    return [by_number[k] for k in order]


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


def hole_metrics(gt, runs, mask_dir, order, files):
    """{run: {'hole_l1': [n], 'hole_psnr': [n]}} float64 per image, in the order of the image numbers `order`
    (files: check_names' {folder: files in that order})."""
    paths = mask_paths(mask_dir, order)                                    # the cheap checks before any decoding
    truth = pixels(gt, files.get(gt)).float() / 255                        # [n, 3, H, W] in [0, 1]
    masks = load_masks(paths, tuple(truth.shape[2:]))                      # [n, 1, H, W]
    out = {}
    for name, folder in runs.items():
        run = pixels(folder, files[folder]).float() / 255
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
        order, files = check_names(a.gt, runs)
        if a.out:
            check_writable(a.out, '--out')
        if a.features_cache:
            check_writable(a.features_cache, '--features-cache', folder=True)
        holes = hole_metrics(a.gt, runs, a.masks, order, files) if a.masks else None  # all checks before features
        device = resolve_device(a.device)
        model = []

        def model_fn():  # built once, and only if some source is not cached
            if not model:
                model.append(fs.fast_inception(DIMS, device))
            return model[0]

        gt = features(a.gt, files.get(a.gt), model_fn, device, a.features_cache)
        feats = {name: features(folder, files[folder], model_fn, device, a.features_cache)
                 for name, folder in runs.items()}
        summary = summarise(paired_bootstrap(feats, gt, a.n_boot, a.seed), reference)
        if holes:
            for k, h in hole_summary(holes, reference, a.n_boot, a.seed).items():
                summary[k].update(h)
    except (OSError, ValueError, RuntimeError) as e:
        fail(str(e).strip().splitlines()[-1])  # a DataLoader worker's error: its last line is the message

    print(f"FID over {len(order)} images, {a.n_boot} paired resamples (seed {a.seed}); ground truth {a.gt}\n")
    print(table(summary, reference), flush=True)
    if holes:
        print(f"\nHole-only L1 (0..255 levels) and PSNR (dB) over the holes of {a.masks}, mean per image, "
              f"the same resamples\n")
        print(hole_table(summary, reference), flush=True)
    if a.out:
        with atomic_open(a.out) as f:
            json.dump({'gt': a.gt, 'reference': reference, 'images': len(order), 'n_boot': a.n_boot, 'seed': a.seed,
                       **({'masks': a.masks} if a.masks else {}),
                       'runs': {k: {'folder': runs[k], **s} for k, s in summary.items()}}, f, indent=2)


if __name__ == '__main__':
    main()
