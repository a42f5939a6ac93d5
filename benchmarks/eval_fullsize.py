"""Our fills at full size beside OpenCV Telea's, on the original-size pictures of a test split (issue 33).

    python prepare_dataset.py --out data/openclipart_src --near-dup-rms 0 --holdout-classes '' --overwrite
    python benchmarks/eval_fullsize.py --data data/openclipart_src --subset data/oc_v1_unseen/index.json \
        --n 20 --out results/fullsize --figure docs/fullsize.png

prepare_dataset.py shrinks each source picture to 64x64 (over white, padded to a square, resized); its
sources.json says which file each test picture came from. Here every picked test picture's source is read at its
own size (over white, as prepare_dataset reads it, and checked to shrink to the test picture byte for byte), the
test picture's 64x64 mask (mask64/, 0 = hole) is mapped back through the padding and the resize (nearest) to a
hole at full size, and the hole is filled by pipeline's inpaint (fill strategy auto, the default; and 'model',
every hole to the model) and by OpenCV's Telea at full size (fullsize.classical_fill). Scores are over the hole
pixels only, against the source: L1 in 0..255 levels and PSNR in dB (benchmarks/common.hole_errors).

--split val does the same on the build's validation pictures (val/, val_mask64/, sources.json's val/ keys): the
split to choose the full-size path's settings on (fullsize.COLOUR_MATCH, fullsize.PAD), never test.

Pictures are taken in the order of --subset's test_numbers (or of the split), skipping sources whose longer
side is outside [--min-side, --max-side] (never resized: a skipped one is counted, not shrunk) and masks whose hole
falls on the padding only. Writes OUT/results.json, OUT/table.md, OUT/images/ (each picture's input, fills and
source at full size) and the figure (columns: masked input | ours | OpenCV Telea | original; a row a picture).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repo root
import fullsize  # noqa: E402
import pipeline  # noqa: E402
from benchmarks.common import hole_errors  # noqa: E402
from dataset import (MASK_FILL, MASK_THRESHOLD, OPENCLIPART_DIR, files_by_number, list_images,  # noqa: E402
                     pil_to_tensor01, rgb_over_white, to_square_rgb)
from plots import save_grid  # noqa: E402
from utils import atomic_open, atomic_save_image, check_writable  # noqa: E402

METHODS = ('ours', 'model', 'telea')  # pipe.inpaint strategy auto (the default) and 'model', OpenCV Telea
COLUMNS = ['masked input', 'ours', 'OpenCV Telea', 'original']


# ----------------------------------------------------------------------------- inputs

def read_json(path, flag):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag} {path}: cannot read it as JSON ({str(e).splitlines()[0]})") from None


SPLITS = {'test': 'mask64', 'val': 'val_mask64'}  # prepare_dataset.py's splits with fixed masks: their mask folders


def split_files(data, split='test'):
    """({number: picture of the split}, {number: its 64x64 mask}) of a prepare_dataset.py build: test/ and mask64/,
    or val/ and val_mask64/ (choose settings on val, never on test)."""
    return (files_by_number(list_images(os.path.join(data, split)), split, data),
            files_by_number(list_images(os.path.join(data, SPLITS[split]), what='mask'), 'mask', data))


def subset_numbers(path, tests):
    """--subset's test_numbers (leak_subsets.py's index.json), each checked against the split: its folder's
    test/image_j.png, when there, must be the split's test picture test_numbers[j] byte for byte."""
    numbers = read_json(path, '--subset').get('test_numbers') if path else sorted(tests)
    if not isinstance(numbers, list) or not all(isinstance(n, int) for n in numbers):
        raise ValueError(f"--subset {path}: expected a JSON object with a list of integers 'test_numbers'")
    missing = [n for n in numbers if n not in tests]
    if missing:
        raise ValueError(f"--subset {path}: test number {missing[0]} is not in the --data test split")
    if path:
        own = os.path.join(os.path.dirname(path), 'test')
        for j, n in enumerate(numbers):
            f = os.path.join(own, f'image_{j:03d}.png')
            if os.path.isfile(f) and open(f, 'rb').read() != open(tests[n], 'rb').read():
                raise ValueError(f"--subset {path}: {f} is not test picture {n} of --data ({tests[n]}): "
                                 f"the subset was cut from another split")
    return numbers


def read_source(path):
    """A source picture as prepare_dataset reads it (no EXIF turn), over white: PIL RGB at its own size."""
    with Image.open(path) as img:
        img.load()
        return rgb_over_white(img)


def full_hole(mask64, size):
    """A square mask (0 = hole) of the shrunk picture -> hole bool [h, w] of the source of size (w, h):
    prepare_dataset's pad-to-square (centred) and resize undone, nearest."""
    w, h = size
    side = max(w, h)
    m = mask64.convert('L').resize((side, side), Image.Resampling.NEAREST)
    x0, y0 = (side - w) // 2, (side - h) // 2
    return np.asarray(m.crop((x0, y0, x0 + w, y0 + h))) < MASK_THRESHOLD


def pick(numbers, tests, masks, sources, root, n, min_side, max_side, split='test'):
    """The first n usable pictures of the split: [(number, source path, source RGB, hole)], and the skip counts.
    One-line errors: a picture without a sources.json key or a mask, a source that does not shrink to its picture."""
    picked, skipped = [], {'too_small': 0, 'too_large': 0, 'hole_on_padding': 0}
    for num in numbers:
        if len(picked) == n:
            break
        key = f"{split}/{os.path.basename(tests[num])}"
        if key not in sources:
            raise ValueError(f"sources.json has no key {key}: rebuild --data with this prepare_dataset.py")
        if num not in masks:
            raise ValueError(f"no mask for {tests[num]} in {SPLITS[split]}/")
        path = os.path.join(root, sources[key])
        try:
            with Image.open(path) as f:
                size = f.size
        except OSError as e:
            raise ValueError(f"cannot read source {path} of {key} (--source-root {root}): {e}") from None
        if max(size) > max_side or min(size) < fullsize.MIN_SIDE:
            skipped['too_large' if max(size) > max_side else 'too_small'] += 1
            continue
        if max(size) < min_side:
            skipped['too_small'] += 1
            continue
        src = read_source(path)
        with Image.open(tests[num]) as t:
            shrunk = np.asarray(t.convert('RGB'))
        if not np.array_equal(np.asarray(to_square_rgb(src, shrunk.shape[0])), shrunk):
            raise ValueError(f"source {path} does not shrink to {tests[num]}: wrong --source-root, or --data was "
                             f"built from other files")
        with Image.open(masks[num]) as m:
            hole = full_hole(m, size)
        if not hole.any() or hole.all():
            skipped['hole_on_padding'] += 1
            continue
        picked.append((num, path, src, hole))
    return picked, skipped


# ----------------------------------------------------------------------------- scoring and the figure

def score(out, src, hole):
    """(L1 in 0..255, PSNR dB) of picture `out` against `src` (PIL RGB) over hole bool [h, w]."""
    keep = torch.from_numpy(~hole).float()[None, None]
    l1, psnr = hole_errors(pil_to_tensor01(out.convert('RGB'))[None], pil_to_tensor01(src)[None], keep)
    return float(l1), float(psnr)


def masked(src, hole):
    """The picture with its hole grey, as the course shows masked images."""
    a = np.asarray(src).copy()
    a[hole] = MASK_FILL
    return Image.fromarray(a)


def tile(img, side, pad=(225, 225, 225)):
    """img fitted (antialiased) into a side x side tile on light grey: the picture's extent stays visible."""
    img = img.convert('RGB')
    scale = side / max(img.size)
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    out = Image.new('RGB', (side, side), pad)
    out.paste(small, ((side - small.width) // 2, (side - small.height) // 2))
    return pil_to_tensor01(out)


def figure(rows, path, side, palette=False):
    """Columns masked input | ours | OpenCV Telea | original, a row per picture (#number, hole L1 ours/Telea).
    palette: 256 colours (median cut, no dither), a third of the bytes: small enough to commit under docs/."""
    tiles = [tile(im, side) for r in rows for im in r['pictures']]
    labels = [f"#{r['number']} L1 {r['ours']['l1']:.0f}/{r['telea']['l1']:.0f}" for r in rows]
    save_grid(torch.stack(tiles), path, nrow=len(COLUMNS), col_labels=COLUMNS, row_labels=labels)
    if palette:
        with Image.open(path) as img:
            small = img.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        atomic_save_image(small, path)


def table(rows, mean, split='test'):
    """Markdown: a row per picture and the mean."""
    head = (f"| {split} # | source | size | hole | ours L1 | ours PSNR | model-only L1 | model-only PSNR | Telea L1 | "
            "Telea PSNR |\n|---|---|---|---|---|---|---|---|---|---|\n")
    line = lambda r: (f"| {r['number']} | {r['source']} | {r['size'][0]}x{r['size'][1]} | {r['hole_share']:.0%} | "
                      + " | ".join(f"{r[m]['l1']:.1f} | {r[m]['psnr']:.2f}" for m in METHODS) + " |\n")
    tail = (f"| **mean of {mean['n']}** | | | {mean['hole_share']:.0%} | "
            + " | ".join(f"**{mean[m]['l1']:.1f}** | **{mean[m]['psnr']:.2f}**" for m in METHODS) + " |\n")
    return head + ''.join(line(r) for r in rows) + tail


# ----------------------------------------------------------------------------- main

def evaluate(pipe, picked, root, images_dir, split='test'):
    """Fill and score every picked picture; its full-size pictures go to images_dir. -> rows."""
    rows = []
    for num, path, src, hole in picked:
        t0 = time.perf_counter()
        ours = pipe.inpaint(src, hole)                                   # strategy auto
        t1 = time.perf_counter()
        model = pipe.inpaint(src, hole, strategy='model')
        t2 = time.perf_counter()
        telea = fullsize.classical_fill(src, hole, 'telea')
        t3 = time.perf_counter()
        thin = fullsize.thin_hole_rule(hole) if fullsize.have_opencv() else np.zeros_like(hole)
        row = {'number': num, 'source': os.path.relpath(path, root), 'size': list(src.size),
               'hole_share': float(hole.mean()), 'telea_share_of_hole_in_auto': float(thin.sum() / hole.sum()),
               'seconds': {'ours': t1 - t0, 'model': t2 - t1, 'telea': t3 - t2}}
        for name, img in (('ours', ours), ('model', model), ('telea', telea)):
            row[name] = dict(zip(('l1', 'psnr'), score(img, src, hole)))
        row['pictures'] = [masked(src, hole), ours, telea, src]
        for name, img in zip(('input', 'ours', 'telea', 'original'), row['pictures']):
            atomic_save_image(img, os.path.join(images_dir, f'{split}_{num:03d}_{name}.png'))
        rows.append(row)
        print(f"{split} {num}: {src.size[0]}x{src.size[1]}, hole {hole.mean():.0%}: L1 ours {row['ours']['l1']:.1f} "
              f"model {row['model']['l1']:.1f} Telea {row['telea']['l1']:.1f}", flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help="a prepare_dataset.py build with sources.json")
    p.add_argument('--source-root', default=OPENCLIPART_DIR,
                   help=f"the folder --data was built from (sources.json is relative to it; default {OPENCLIPART_DIR})")
    p.add_argument('--split', default='test', choices=sorted(SPLITS),
                   help="the build's split: test (test/, mask64/) or val (val/, val_mask64/: for choosing settings)")
    p.add_argument('--subset', default=None, metavar='JSON',
                   help="leak_subsets.py's index.json: its test_numbers, in order (e.g. data/oc_v1_unseen/index.json, "
                        "the test pictures with no near-copy in training); default: the whole test split")
    p.add_argument('--n', type=int, default=20, help="pictures (default 20)")
    p.add_argument('--min-side', type=int, default=256,
                   help="skip sources whose longer side is below this (near the model's 64 px: not full size)")
    p.add_argument('--max-side', type=int, default=1024, help="skip (never shrink) sources whose longer side is above")
    p.add_argument('--out', default='results/fullsize', help="results.json, table.md, images/")
    p.add_argument('--figure', default=None, help="the labelled figure (default OUT/fullsize.png)")
    p.add_argument('--figure-rows', type=int, default=None,
                   help="the figure's rows: the first N pictures (default all)")
    p.add_argument('--tile', type=int, default=160, help="px of a figure tile (each picture fitted into it)")
    p.add_argument('--palette', action='store_true', help="the figure in 256 colours (for docs/: a third of the size)")
    p.add_argument('--MaskGitConfig', default=pipeline.DEFAULT_CONFIG)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    if args.n < 1 or args.tile < 16 or not 0 < args.min_side <= args.max_side <= fullsize.MAX_SIDE:
        p.error(f"need --n >= 1, --tile >= 16 and 0 < --min-side <= --max-side <= {fullsize.MAX_SIDE}")
    if args.subset and args.split != 'test':
        p.error(f"--subset lists test numbers: it needs --split test, not {args.split}")
    return args


def run(args, pipe=None):
    """Everything checked (inputs, pictures, writable outputs) before anything is written or loaded."""
    data = args.data
    tests, masks = split_files(data, args.split)
    sources = read_json(os.path.join(data, 'sources.json'), '--data') if os.path.isfile(
        os.path.join(data, 'sources.json')) else None
    if sources is None:
        raise ValueError(f"--data {data} has no sources.json: rebuild it with prepare_dataset.py (same flags)")
    numbers = subset_numbers(args.subset, tests)
    picked, skipped = pick(numbers, tests, masks, sources, args.source_root, args.n, args.min_side, args.max_side,
                           args.split)
    if len(picked) < args.n:
        raise ValueError(f"only {len(picked)} of the {len(numbers)} {args.split} pictures are usable (skipped: {skipped}); "
                         f"lower --n or widen --min-side/--max-side")
    fig = args.figure or os.path.join(args.out, 'fullsize.png')
    check_writable(args.out, '--out', folder=True)
    check_writable(fig, '--figure')
    pipe = pipe or pipeline.load(args.MaskGitConfig, device=args.device)
    rows = evaluate(pipe, picked, args.source_root, os.path.join(args.out, 'images'), args.split)
    mean = {'n': len(rows), 'hole_share': float(np.mean([r['hole_share'] for r in rows])),
            **{m: {k: float(np.mean([r[m][k] for r in rows])) for k in ('l1', 'psnr')} for m in METHODS}}
    figure(rows[:args.figure_rows], fig, args.tile, args.palette)
    results = {'data': os.path.abspath(data), 'split': args.split, 'subset': args.subset, 'config': args.MaskGitConfig,
               'min_side': args.min_side, 'max_side': args.max_side, 'skipped': skipped, 'mean': mean,
               'pictures': [{k: v for k, v in r.items() if k != 'pictures'} for r in rows]}
    with atomic_open(os.path.join(args.out, 'results.json')) as f:
        json.dump(results, f, indent=1)
    with atomic_open(os.path.join(args.out, 'table.md')) as f:
        f.write(table(rows, mean, args.split))
    print(table(rows, mean, args.split))
    print(f"skipped: {skipped}; wrote {args.out}/results.json, table.md, images/ and {fig}")
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
