"""Build a dataset in the course lab's layout from real images.

    python prepare_dataset.py --source openclipart --out data/openclipart
    python prepare_dataset.py --source fashion-mnist --out data/fashion-mnist
    python prepare_dataset.py --source path/to/images --out data/mine

OUT/train/image_00000.png, OUT/val/..., OUT/test/image_000.png (ground truth), OUT/mask64/mask_000.png
(mode L, 0 = hole, 255 = keep), OUT/masked_image/image_000.png (holes RGB 128), OUT/test_gt.csv,
OUT/labels.json, and the same for validation (OUT/val_mask64/, OUT/val_masked_image/, OUT/val_gt.csv;
masks from the same generator on their own seed stream: every choice is made there, never on test).
Everything is built in OUT.tmp and renamed at the end.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset import IMAGE_EXTS, MASK_FILL, rgb_over_white, write_gt_csv
from models.masks import make_mask, mask_rng

OPENCLIPART_DIR = '/usr/share/openclipart/png'
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_LABELS = ['t-shirt/top', 'trouser', 'pullover', 'dress', 'coat',
                        'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']


# ----------------------------------------------------------------------------- image preprocessing

def to_square_rgb(img, size):
    """Any PIL image -> RGB `size` x `size`: alpha over white, padded (white) to square, antialiased resize."""
    img = rgb_over_white(img)
    w, h = img.size
    side = max(w, h)
    canvas = Image.new('RGB', (side, side), (255, 255, 255))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_source_image(job):
    """Worker: (path, size, max_pixels) -> ('ok', HxWx3 uint8) | ('too_large', None) | ('unreadable', None)."""
    path, size, max_pixels = job
    try:
        with warnings.catch_warnings():
            # The size check below replaces PIL's decompression-bomb guard for this one call only.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    return 'too_large', None
                img.load()
                return 'ok', np.asarray(to_square_rgb(img, size))
    except Image.DecompressionBombError:
        return 'too_large', None
    except Exception:  # truncated, not an image, unsupported mode: skipped and counted
        return 'unreadable', None


def _dir_key(path):
    st = os.stat(path)  # follows symlinks: the real directory
    return st.st_dev, st.st_ino


def list_source_files(root):
    """Image files under `root` (recursive), sorted; class = top-level folder.

    Symlinked folders are followed, but every real folder is visited once: a folder reached through a
    symlink that is already under `root` (or already visited) is skipped, so a symlink loop neither repeats
    images under another class nor multiplies the work, and real folders keep their own class."""
    real = {_dir_key(root)}
    for dirpath, dirnames, _ in os.walk(root):  # the real folders under root (links not followed)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                real.add(_dir_key(p))
    seen, items = set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        key = _dir_key(dirpath)
        if key in seen:  # a second way into a folder already listed
            dirnames[:] = []
            continue
        seen.add(key)
        keep = []
        for d in sorted(dirnames):
            p = os.path.join(dirpath, d)
            if os.path.islink(p):
                try:
                    k = _dir_key(p)
                except OSError:  # broken link
                    continue
                if k in real or k in seen:
                    continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTS):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                label = rel.split(os.sep)[0] if os.sep in rel else None
                items.append((path, label))
    return items


# ----------------------------------------------------------------------------- sources

def read_idx(path):
    """Fashion-MNIST idx(.gz) file -> uint8 array."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_records(root, size):
    """Yield (pixels HxWx3, label, official split) for the 70,000 Fashion-MNIST images."""
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        images_path = os.path.join(root, f'{prefix}-images-idx3-ubyte.gz')
        labels_path = os.path.join(root, f'{prefix}-labels-idx1-ubyte.gz')
        for p in (images_path, labels_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"Fashion-MNIST file not found: {p} "
                                        f"(install it with: apt-get install -y dataset-fashion-mnist)")
        images, labels = read_idx(images_path), read_idx(labels_path)
        for img, lab in tqdm(zip(images, labels), total=len(images), desc=f'fashion-mnist {split}'):
            yield np.asarray(to_square_rgb(Image.fromarray(img, 'L'), size)), FASHION_MNIST_LABELS[lab], split


def folder_records(root, size, max_pixels, workers, counts):
    """Yield (pixels, label, None) for every readable image under `root`; skips are counted."""
    items = list_source_files(root)
    if not items:
        raise ValueError(f"no images found under {root}")
    jobs = [(p, size, max_pixels) for p, _ in items]
    with Pool(workers) as pool:
        results = pool.imap(load_source_image, jobs, chunksize=16)
        for (path, label), (status, pixels) in tqdm(zip(items, results), total=len(items), desc='images'):
            if status == 'ok':
                yield pixels, label, None
            else:
                counts[status] += 1


# ----------------------------------------------------------------------------- splitting and writing

def split_by_hash(hashes, official, test_count, val_frac, seed):
    """Deterministic split by content hash -> {'train': [hash, ...], 'val': [...], 'test': [...]}.

    Membership and order within each split follow sha256(seed, content hash), so neither depends on
    file names or the listing (test image i and its mask i are the same whatever the source layout).
    With an official split (Fashion-MNIST) test comes from the official test set, train/val from train.
    """
    key = {h: hashlib.sha256(f'{seed}:{h}'.encode()).hexdigest() for h in hashes}
    if official is None:
        order = sorted(hashes, key=key.get)
        test, rest = order[:test_count], order[test_count:]
    else:
        test = sorted((h for h in hashes if official[h] == 'test'), key=key.get)[:test_count]
        rest = sorted((h for h in hashes if official[h] == 'train'), key=key.get)
    if len(test) < test_count:
        raise ValueError(f"only {len(test)} images available for the test split, --test-count is {test_count}")
    n_val = int(round(len(rest) * val_frac))
    return {'train': rest[n_val:], 'val': rest[:n_val], 'test': test}


def save_png(array_or_img, path):
    img = array_or_img if isinstance(array_or_img, Image.Image) else Image.fromarray(array_or_img)
    img.save(path, format='PNG')


def _remove(path):
    """Remove a folder tree, a file or a link, if there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def build(args):
    out = os.path.abspath(args.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not args.overwrite:
        raise FileExistsError(f"output folder {out} is not empty (use --overwrite to replace it)")
    tmp = out + '.tmp'
    if os.path.exists(tmp):  # left over from a crashed run: never reused
        shutil.rmtree(tmp)

    counts = {'too_large': 0, 'unreadable': 0, 'duplicates': 0}
    if args.source == 'fashion-mnist':
        records = fashion_mnist_records(args.fashion_mnist_dir, args.image_size)
    else:
        root = OPENCLIPART_DIR if args.source == 'openclipart' else args.source
        if not os.path.isdir(root):
            hint = " (install it with: apt-get install -y openclipart-png)" if args.source == 'openclipart' else ""
            raise FileNotFoundError(f"source folder not found: {root}{hint}")
        records = folder_records(root, args.image_size, args.max_pixels, args.workers, counts)

    pixels, labels, official = {}, {}, {}
    for px, label, split in records:  # dedupe on the preprocessed pixels
        h = hashlib.sha256(px.tobytes()).hexdigest()
        if h in pixels:
            counts['duplicates'] += 1
            continue
        pixels[h], labels[h], official[h] = px, label, split
    if not pixels:
        raise ValueError(f"no readable images in the source ({counts['unreadable']} unreadable, "
                         f"{counts['too_large']} over --max-pixels)")
    members = split_by_hash(list(pixels), official if args.source == 'fashion-mnist' else None,
                            args.test_count, args.val_frac, args.seed)

    for d in ('train', 'val', 'test', 'mask64', 'masked_image'):
        os.makedirs(os.path.join(tmp, d))
    label_map = {}
    for s, width in (('train', 5), ('val', 5)):
        for i, h in enumerate(tqdm(members[s], desc=f'write {s}')):
            name = f'{s}/image_{i:0{width}d}.png'
            save_png(pixels[h], os.path.join(tmp, name))
            label_map[name] = labels[h]
    fracs = {}
    for split, prefix, width in (('test', '', 3), ('val', 'val_', 5)):
        os.makedirs(os.path.join(tmp, f'{prefix}mask64'), exist_ok=True)
        os.makedirs(os.path.join(tmp, f'{prefix}masked_image'), exist_ok=True)
        gt, fracs[split] = [], []
        for i, h in enumerate(tqdm(members[split], desc=f'write {split} masks')):
            mask = make_mask(args.image_size, mask_rng(args.seed, split, i), args.hole_min, args.hole_max)
            hole = np.asarray(mask) == 0
            masked = pixels[h].copy()
            masked[hole] = MASK_FILL
            if split == 'test':
                save_png(pixels[h], os.path.join(tmp, f'test/image_{i:03d}.png'))
                label_map[f'test/image_{i:03d}.png'] = labels[h]
            save_png(mask, os.path.join(tmp, f'{prefix}mask64/mask_{i:0{width}d}.png'))
            save_png(masked, os.path.join(tmp, f'{prefix}masked_image/image_{i:0{width}d}.png'))
            gt.append(pixels[h])
            fracs[split].append(hole.mean())
        if gt:
            write_gt_csv(np.stack(gt), os.path.join(tmp, f'{split}_gt.csv'))
    with open(os.path.join(tmp, 'labels.json'), 'w') as f:
        json.dump(label_map, f, indent=0, sort_keys=True)

    if os.path.lexists(out):  # replace only once the new dataset is complete
        old = out + '.old'
        _remove(old)
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)  # a folder, or the file (or link) that --overwrite replaces
    else:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.replace(tmp, out)
    classes = sorted({l for l in labels.values() if l is not None})
    return {'out': out, 'train': len(members['train']), 'val': len(members['val']),
            'test': len(members['test']), 'classes': len(classes),
            'mean_hole_fraction': float(np.mean(fracs['test'])), **counts}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', default='openclipart',
                   help="'openclipart' (default, /usr/share/openclipart/png), 'fashion-mnist', or a folder")
    p.add_argument('--out', default='data/openclipart', help='output folder (default data/openclipart)')
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--val-frac', type=float, default=0.1, help='fraction of the non-test images kept for val')
    p.add_argument('--test-count', type=int, default=747, help='test images (the course has 747)')
    p.add_argument('--hole-min', type=float, default=0.1, help='minimum hole fraction of a mask')
    p.add_argument('--hole-max', type=float, default=0.5, help='maximum hole fraction of a mask')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-pixels', type=int, default=40_000_000,
                   help='skip (and count) source images with more pixels than this')
    p.add_argument('--workers', type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument('--fashion-mnist-dir', default=FASHION_MNIST_DIR)
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty output folder')
    args = p.parse_args(argv)
    if not 0 < args.hole_min <= args.hole_max < 1:
        p.error(f"need 0 < --hole-min <= --hole-max < 1, got {args.hole_min}, {args.hole_max}")
    if not 0 <= args.val_frac < 1:
        p.error(f"--val-frac must be in [0, 1), got {args.val_frac}")
    if args.test_count < 1 or args.image_size < 8:
        p.error("--test-count must be >= 1 and --image-size >= 8")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    try:
        s = build(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {s['out']} in {time.time() - t0:.0f} s: train {s['train']}, val {s['val']}, test {s['test']} "
          f"images; {s['classes']} classes; mean hole fraction {s['mean_hole_fraction']:.3f}; skipped: "
          f"{s['duplicates']} duplicates, {s['unreadable']} unreadable, {s['too_large']} over --max-pixels")
    return 0


if __name__ == '__main__':
    sys.exit(main())
