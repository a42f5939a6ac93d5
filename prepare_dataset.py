"""Build a dataset in the course lab's layout from real images.

    python prepare_dataset.py --source openclipart --out data/openclipart
    python prepare_dataset.py --source fashion-mnist --out data/fashion-mnist
    python prepare_dataset.py --source path/to/images --out data/mine

OUT/train/image_00000.png, OUT/val/..., OUT/test/image_000.png (ground truth), OUT/mask64/mask_000.png
(mode L, 0 = hole, 255 = keep), OUT/masked_image/image_000.png (holes RGB 128), OUT/test_gt.csv,
OUT/labels.json, OUT/sources.json (a folder source's: each written file -> the file it came from, relative to the
source folder; of exact duplicates the first), and the same for validation (OUT/val_mask64/, OUT/val_masked_image/,
OUT/val_gt.csv; masks from the same generator on their own seed stream: every choice is made there, never on test).
Near-copies (--near-dup-rms) are grouped and each group kept inside one split. --holdout-classes go whole to
OUT/holdout/, laid out like val (OUT/holdout_mask64/, OUT/holdout_masked_image/, OUT/holdout_gt.csv).
OUT/summary.json holds the counts. Everything is built in OUT.tmp and renamed at the end; --out may not be
the source folder, inside it or above it.
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
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from dataset import IMAGE_EXTS, MASK_FILL, OPENCLIPART_DIR, rgb_over_white, to_square_rgb, write_gt_csv
from models.masks import make_mask, mask_rng
from neardup import near_groups, nearest_rms, small_grey

# --holdout-classes default for openclipart: animals, vehicles and hand tools, varied drawings of their own (RESULTS.md)
OPENCLIPART_HOLDOUT = 'animals,tools,transportation'
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
NOTO_EMOJI_FONT = '/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf'  # Debian fonts-noto-color-emoji (OFL-1.1)
# Single-code-point emoji blocks rendered by --extra-train noto-emoji (sequences need a shaper: left out)
EMOJI_RANGES = ((0x2600, 0x27BF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF),
                (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF))
# ... less the subjects of OPENCLIPART_HOLDOUT (animals, vehicles, hand tools), so that they stay unseen in training
EMOJI_SKIP = (set(range(0x1F400, 0x1F440)) | set(range(0x1F980, 0x1F9AF)) | set(range(0x1FAB0, 0x1FAC0)) |
              set(range(0x1F680, 0x1F6FF)) | {0x1F54A, 0x1F577, 0x1F578, 0x1FACE, 0x1FACF, 0x26F4, 0x26F5, 0x2708,
                                              0x1F3CD, 0x1F3CE, 0x1F527, 0x1F528, 0x1F529, 0x2692, 0x2694, 0x26CF,
                                              0x1FA93, 0x1FA9A, 0x1FA9B, 0x1FA9C, 0x1F5E1})
FASHION_MNIST_LABELS = ['t-shirt/top', 'trouser', 'pullover', 'dress', 'coat',
                        'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']


# ----------------------------------------------------------------------------- image preprocessing

def load_source_image(job):
    """Worker: (path, size, max_pixels) -> ('ok', HxWx3 uint8) | ('too_large', None) | ('unreadable', None)."""
    path, size, max_pixels = job
    try:
        with warnings.catch_warnings():
            # The size check below replaces PIL's decompression-bomb guard for this one call only.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max(img.width, img.height) ** 2 > max_pixels:  # the padded square, before decoding
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
    """Yield (pixels HxWx3, label, official split, None: no source file) for the 70,000 Fashion-MNIST images."""
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        images_path = os.path.join(root, f'{prefix}-images-idx3-ubyte.gz')
        labels_path = os.path.join(root, f'{prefix}-labels-idx1-ubyte.gz')
        for p in (images_path, labels_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"Fashion-MNIST file not found: {p} "
                                        f"(install it with: apt-get install -y dataset-fashion-mnist)")
        images, labels = read_idx(images_path), read_idx(labels_path)
        for img, lab in tqdm(zip(images, labels), total=len(images), desc=f'fashion-mnist {split}'):
            yield np.asarray(to_square_rgb(Image.fromarray(img, 'L'), size)), FASHION_MNIST_LABELS[lab], split, None


def folder_records(items, size, max_pixels, workers, counts, root):
    """Yield (pixels, label, None, path relative to root) for every readable image of `items` [(path, label)];
    skips are counted."""
    jobs = [(p, size, max_pixels) for p, _ in items]
    with Pool(workers) as pool:
        results = pool.imap(load_source_image, jobs, chunksize=16)
        for (path, label), (status, pixels) in tqdm(zip(items, results), total=len(items), desc='images'):
            if status == 'ok':
                yield pixels, label, None, os.path.relpath(path, root)
            else:
                counts[status] += 1


def emoji_records(size, font_path=NOTO_EMOJI_FONT):
    """Yield (pixels, None, None, None) for every single-code-point emoji the colour font draws (blank ones skipped)."""
    if not os.path.isfile(font_path):
        raise FileNotFoundError(f"emoji font not found: {font_path} "
                                f"(install it with: apt-get install -y fonts-noto-color-emoji)")
    font = ImageFont.truetype(font_path, 109)  # the size of the font's bitmap strikes
    for a, b in EMOJI_RANGES:
        for cp in sorted(set(range(a, b + 1)) - EMOJI_SKIP):
            img = Image.new('RGBA', (136, 128), (0, 0, 0, 0))
            ImageDraw.Draw(img).text((0, 0), chr(cp), font=font, embedded_color=True)
            box = img.getbbox()
            if box is not None:  # no glyph: nothing drawn
                yield np.asarray(to_square_rgb(img.crop(box), size)), None, None, None


def extra_sources(args, counts):
    """--extra-train sources -> records iterator (no labels, no source paths); one-line error for a missing one."""
    its = []
    for src in args.extra_train:
        if src == 'noto-emoji':
            its.append(emoji_records(args.image_size))
            continue
        root = os.path.abspath(src)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--extra-train folder not found: {src}")
        items = [(p, None) for p, _ in list_source_files(root)]
        if not items:
            raise ValueError(f"--extra-train: no images found under {src}")
        its.append((px, None, None, None) for px, *_ in
                   folder_records(items, args.image_size, args.max_pixels, args.workers, counts, root))
    return (r for it in its for r in it)


def add_extra_train(args, pixels, labels, sources, members, counts):
    """Training-only images of --extra-train into pixels/labels/sources and members['train']: exact copies of any
    image dropped, and, so that no evaluation split gains a near-copy in training, every one within
    --near-dup-rms of a val/test/holdout image. -> (added, dropped as near-copies)"""
    extra = {}
    for px, *_ in extra_sources(args, counts):
        h = hashlib.sha256(px.tobytes()).hexdigest()
        if h in pixels or h in extra:
            counts['duplicates'] += 1
            continue
        extra[h] = px
    order = hash_order(list(extra), args.seed)
    held = members['val'] + members['test'] + members['holdout']
    near = np.zeros(len(order), bool)
    if args.near_dup_rms > 0 and order and held:
        near = nearest_rms(grey(extra, order), grey(pixels, held)) < args.near_dup_rms
    kept = [h for h, n in zip(order, near) if not n]
    for h in kept:
        pixels[h], labels[h], sources[h] = extra[h], None, None
    members['train'] = members['train'] + kept
    return len(kept), int(near.sum())


def source_root(args):
    """The folder the images come from (Fashion-MNIST's idx files included)."""
    if args.source == 'fashion-mnist':
        return os.path.abspath(args.fashion_mnist_dir)
    return os.path.abspath(OPENCLIPART_DIR if args.source == 'openclipart' else args.source)


def open_source(args, root, counts):
    """-> (records iterator, known class names). One-line error for a missing/empty source; nothing decoded yet."""
    if args.source == 'fashion-mnist':
        return fashion_mnist_records(root, args.image_size), FASHION_MNIST_LABELS
    if not os.path.isdir(root):
        hint = " (install it with: apt-get install -y openclipart-png)" if args.source == 'openclipart' else ""
        raise FileNotFoundError(f"source folder not found: {root}{hint}")
    items = list_source_files(root)
    if not items:
        raise ValueError(f"no images found under {root}")
    classes = sorted({label for _, label in items if label is not None})
    return folder_records(items, args.image_size, args.max_pixels, args.workers, counts, root), classes


def holdout_classes(args, known):
    """--holdout-classes as a set; one-line error naming the flag for a class that is not a top-level folder."""
    names = OPENCLIPART_HOLDOUT if args.holdout_classes is None and args.source == 'openclipart' else \
        args.holdout_classes or ''
    wanted = {n.strip() for n in names.split(',') if n.strip()}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"--holdout-classes: unknown class {', '.join(unknown)} (known: {', '.join(known) or 'none'})")
    return wanted


# ----------------------------------------------------------------------------- output folder

def check_out(out, root, overwrite):
    """Refuse an --out that would destroy or re-read the source, or a non-empty one without --overwrite.

    out, out.tmp and out.old are removed or replaced, so none may be, contain, or lie inside the source
    (real paths: a symlink to the source is the source). Inside it, a rebuild would read its own output."""
    src = os.path.realpath(root)
    for p in (out, out + '.tmp', out + '.old'):
        real = os.path.realpath(p)
        if os.path.commonpath([real, src]) in (real, src):
            raise ValueError(f"--out {out} is, contains or lies inside the source folder {root} "
                             f"(it would be deleted or read back): choose an output folder outside it")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty (use --overwrite to replace it)")


def _remove(path):
    """Remove a folder tree, a file or a link, if there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def replace_out(tmp, out):
    """Move the finished dataset `tmp` to `out`, replacing what --overwrite allowed only now."""
    if os.path.lexists(out):
        old = out + '.old'
        _remove(old)
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)  # a folder, or the file (or link) that --overwrite replaces
    else:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.replace(tmp, out)


# ----------------------------------------------------------------------------- near-duplicates and splitting

def dedupe(records, counts):
    """Exact duplicates (same preprocessed pixels) dropped, the first kept -> {hash: pixels}, {hash: label},
    {hash: official split}, {hash: source file or None}."""
    pixels, labels, official, sources = {}, {}, {}, {}
    for px, label, split, source in records:
        h = hashlib.sha256(px.tobytes()).hexdigest()
        if h in pixels:
            counts['duplicates'] += 1
            continue
        pixels[h], labels[h], official[h], sources[h] = px, label, split, source
    if not pixels:
        raise ValueError(f"no readable images in the source ({counts['unreadable']} unreadable, "
                         f"{counts['too_large']} over --max-pixels)")
    return pixels, labels, official, sources


def hash_order(hashes, seed):
    """Hashes sorted by sha256(seed, content hash): split membership and order follow it, never file names."""
    key = {h: hashlib.sha256(f'{seed}:{h}'.encode()).hexdigest() for h in hashes}
    return sorted(hashes, key=key.get)


def grey(pixels, order):
    return small_grey([Image.fromarray(pixels[h]) for h in order])  # [N, 1024] levels 0..255


def near_dup_groups(pixels, order, threshold):
    """Near-copies (32x32 grey RMS < threshold, linked transitively) as groups [[hash, ...], ...]; groups and
    members follow `order`, so a group sits at its first member. threshold <= 0: one image a group."""
    if threshold <= 0:
        return [[h] for h in order]
    ids = near_groups(grey(pixels, order), threshold)  # a group's id is its first row
    groups = {}
    for h, g in zip(order, ids):
        groups.setdefault(g, []).append(h)
    return list(groups.values())


def take_groups(groups, count):
    """Whole groups, in order, while they fit in `count` images; a group that would overflow is passed over
    for the next one (so the count is met exactly when small groups remain). -> (taken, left)."""
    taken, left, n = [], [], 0
    for g in groups:
        if n + len(g) <= count:
            taken.append(g)
            n += len(g)
        else:
            left.append(g)
    return taken, left


def assign_splits(groups, labels, official, holdout, test_count, val_frac):
    """Groups -> {'train', 'val', 'test', 'holdout': [hash, ...]}, every group inside one split.

    A group of --holdout-classes images only is held out. In a group that mixes held-out and other classes
    (a near-blank or pattern family spanning classes), the held-out classes' images are dropped ('dropped')
    and the rest stays: the holdout split then holds no near-copy of a trained image, and one big mixed group
    does not drag whole classes out of training. With an official split (Fashion-MNIST: `official` not None,
    one image a group) test comes from the official test set, train/val from train."""
    out = lambda g: [h for g_ in g for h in g_ if labels[h] in holdout]
    held = [g for g in groups if all(labels[h] in holdout for h in g)]
    mixed = [g for g in groups if not all(labels[h] in holdout for h in g)]
    dropped = out(mixed)
    rest = [[h for h in g if labels[h] not in holdout] for g in mixed]
    if official is not None:
        test_pool = [g for g in rest if official[g[0]] == 'test']
        rest = [g for g in rest if official[g[0]] == 'train']
    else:
        test_pool = rest
    test, left = take_groups(test_pool, test_count)
    n_test, n_pool = sum(map(len, test)), sum(map(len, test_pool))
    if n_pool < test_count:
        raise ValueError(f"only {n_pool} images available for the test split, --test-count is {test_count}")
    if n_test < test_count:
        raise ValueError(f"near-duplicate groups are too large to fill --test-count {test_count} exactly "
                         f"(got {n_test}): lower --near-dup-rms")
    if official is None:
        rest = left
    val, train = take_groups(rest, int(round(sum(map(len, rest)) * val_frac)))
    flat = lambda gs: [h for g in gs for h in g]
    return {'train': flat(train), 'val': flat(val), 'test': flat(test), 'holdout': flat(held), 'dropped': dropped}


def cross_split_near(pixels, members, threshold):
    """Test images with a train/val image within `threshold` (reported for an official split, never moved)."""
    if threshold <= 0 or not members['test']:
        return 0
    seen = grey(pixels, members['train'] + members['val'])
    return int((nearest_rms(grey(pixels, members['test']), seen) < threshold).sum())


# ----------------------------------------------------------------------------- writing

MASKED_PREFIX = {'test': '', 'val': 'val_', 'holdout': 'holdout_'}  # splits with fixed masks: their folders


def save_png(array_or_img, path):
    img = array_or_img if isinstance(array_or_img, Image.Image) else Image.fromarray(array_or_img)
    img.save(path, format='PNG')


def write_split(tmp, split, hashes, pixels, labels, label_map, args, written):
    """A split's images (labels into label_map, content hashes into `written`, by file name) and, for
    test/val/holdout, their fixed masks, masked images and GT CSV. Returns the hole fractions of its masks."""
    width = 3 if split == 'test' else 5
    os.makedirs(os.path.join(tmp, split))
    for i, h in enumerate(tqdm(hashes, desc=f'write {split}')):
        name = f'{split}/image_{i:0{width}d}.png'
        save_png(pixels[h], os.path.join(tmp, name))
        label_map[name] = labels[h]
        written[name] = h
    if split not in MASKED_PREFIX:
        return []
    prefix = MASKED_PREFIX[split]
    os.makedirs(os.path.join(tmp, f'{prefix}mask64'))
    os.makedirs(os.path.join(tmp, f'{prefix}masked_image'))
    fracs = []
    for i, h in enumerate(hashes):
        mask = make_mask(args.image_size, mask_rng(args.seed, split, i), args.hole_min, args.hole_max)
        hole = np.asarray(mask) == 0
        masked = pixels[h].copy()
        masked[hole] = MASK_FILL
        save_png(mask, os.path.join(tmp, f'{prefix}mask64/mask_{i:0{width}d}.png'))
        save_png(masked, os.path.join(tmp, f'{prefix}masked_image/image_{i:0{width}d}.png'))
        fracs.append(hole.mean())
    if hashes:
        write_gt_csv(np.stack([pixels[h] for h in hashes]), os.path.join(tmp, f'{split}_gt.csv'))
    return fracs


def build(args):
    out, root = os.path.abspath(args.out), source_root(args)
    for r in [root] + [os.path.abspath(e) for e in args.extra_train if e != 'noto-emoji']:
        check_out(out, r, args.overwrite)
    counts = {'too_large': 0, 'unreadable': 0, 'duplicates': 0}
    records, known = open_source(args, root, counts)
    holdout = holdout_classes(args, known)

    pixels, labels, official, sources = dedupe(records, counts)
    order = hash_order(list(pixels), args.seed)
    fashion = args.source == 'fashion-mnist'
    # Fashion-MNIST keeps its official split: its near-copies across it are only counted
    groups = near_dup_groups(pixels, order, 0 if fashion else args.near_dup_rms)
    members = assign_splits(groups, labels, official if fashion else None, holdout, args.test_count, args.val_frac)
    merged = [g for g in groups if len(g) > 1]
    extra, extra_near = add_extra_train(args, pixels, labels, sources, members, counts) if args.extra_train else (0, 0)

    tmp = out + '.tmp'
    _remove(tmp)  # left over from a crashed run: never reused
    label_map, fracs, written = {}, {}, {}
    for split in ('train', 'val', 'test', 'holdout'):
        if members[split] or split != 'holdout':  # no holdout folders without held-out classes
            fracs[split] = write_split(tmp, split, members[split], pixels, labels, label_map, args, written)
    summary = {**{s: len(members[s]) for s in ('train', 'val', 'test', 'holdout')},
               'classes': len({l for l in labels.values() if l is not None}), 'holdout_classes': sorted(holdout),
               'near_dup_rms': args.near_dup_rms, 'near_dup_groups': len(merged),
               'near_dup_images': sum(map(len, merged)), 'holdout_dropped': len(members['dropped']),
               'extra_train': extra, 'extra_near_dropped': extra_near, 'extra_sources': args.extra_train,
               'test_near_train': cross_split_near(pixels, members, args.near_dup_rms) if fashion else None,
               'mean_hole_fraction': float(np.mean(fracs['test'])), 'seed': args.seed, **counts}
    with open(os.path.join(tmp, 'labels.json'), 'w') as f:
        json.dump(label_map, f, indent=0, sort_keys=True)
    with open(os.path.join(tmp, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    source_map = {name: sources[h] for name, h in written.items() if sources[h] is not None}
    if source_map:  # folder sources: where each picture came from, at its own size (benchmarks/eval_fullsize.py)
        with open(os.path.join(tmp, 'sources.json'), 'w') as f:
            json.dump(source_map, f, indent=0, sort_keys=True)
    replace_out(tmp, out)
    return {'out': out, **summary}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', default='openclipart',
                   help="'openclipart' (default, /usr/share/openclipart/png), 'fashion-mnist', or a folder")
    p.add_argument('--out', default='data/openclipart',
                   help='output folder (default data/openclipart); never the source, inside it or above it')
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--val-frac', type=float, default=0.1, help='fraction of the non-test images kept for val')
    p.add_argument('--test-count', type=int, default=747, help='test images (the course has 747)')
    p.add_argument('--hole-min', type=float, default=0.1, help='minimum hole fraction of a mask')
    p.add_argument('--hole-max', type=float, default=0.5, help='maximum hole fraction of a mask')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-pixels', type=int, default=40_000_000,
                   help='skip (and count) source images whose padded square, max(w, h)^2, has more pixels than this')
    p.add_argument('--near-dup-rms', type=float, default=10.0,
                   help='near-copies, kept inside one split: images whose 32x32 antialiased greyscale versions '
                        'differ by an RMS below this (0..255 levels), linked transitively; the measure the '
                        'train/test leak was found with, robust to resized and recoloured variants. '
                        '0 disables (default 10)')
    p.add_argument('--holdout-classes', default=None,
                   help='comma-separated classes (top-level folders) held out in OUT/holdout* (laid out like val); '
                        'their images that are near-copies of another class\'s are dropped from every split; '
                        f"default for --source openclipart: "
                        f"{OPENCLIPART_HOLDOUT or 'none'}, none otherwise; '' disables")
    p.add_argument('--extra-train', action='append', default=[], metavar='SRC',
                   help="more training-only images (repeatable): a folder, or 'noto-emoji' (Debian "
                        "fonts-noto-color-emoji's glyphs); unlabelled (the null class), never in val/test/holdout; "
                        "each one within --near-dup-rms of a val/test/holdout image is dropped")
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
    for src in args.extra_train:  # before any decoding
        if src == 'noto-emoji' and not os.path.isfile(NOTO_EMOJI_FONT):
            p.error(f"--extra-train noto-emoji: font not found: {NOTO_EMOJI_FONT} "
                    f"(install it with: apt-get install -y fonts-noto-color-emoji)")
        if src != 'noto-emoji' and not os.path.isdir(src):
            p.error(f"--extra-train folder not found: {src}")
    if args.near_dup_rms < 0:
        p.error(f"--near-dup-rms must be >= 0, got {args.near_dup_rms}")
    return args


def summary_line(s, seconds):
    line = (f"wrote {s['out']} in {seconds:.0f} s: train {s['train']}, val {s['val']}, test {s['test']}, "
            f"holdout {s['holdout']} images; {s['classes']} classes; mean hole fraction "
            f"{s['mean_hole_fraction']:.3f}; skipped: {s['duplicates']} duplicates, {s['unreadable']} unreadable, "
            f"{s['too_large']} over --max-pixels")
    if not s['near_dup_rms']:
        near = "near-duplicates: not grouped (--near-dup-rms 0)"
    elif s['test_near_train'] is not None:
        near = (f"official split kept: {s['test_near_train']} test images have a train/val image within RMS "
                f"{s['near_dup_rms']:g}")
    else:
        near = (f"near-duplicates: {s['near_dup_groups']} groups of 2+ images ({s['near_dup_images']} images) "
                f"kept inside one split, RMS < {s['near_dup_rms']:g}")
    if s.get('extra_train'):
        line += (f"\nextra training images: {s['extra_train']} from {', '.join(s['extra_sources'])} "
                 f"({s['extra_near_dropped']} dropped: near-copies of val/test/holdout images)")
    held = (f"; held out: {', '.join(s['holdout_classes'])} ({s['holdout_dropped']} of their images dropped: "
            f"near-copies of other classes' images)") if s['holdout_classes'] else ''
    return f"{line}\n{near}{held}"


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    try:
        s = build(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_line(s, time.time() - t0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
