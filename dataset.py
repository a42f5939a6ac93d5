"""The course's data: images and masks on disk, their tensors, the Datasets, the ground-truth CSV.

Images are RGB PNGs normalised with the course's statistics; masks are mode-L PNGs, 0 = hole, 255 = keep.
"""
import json
import os
import re

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from utils import atomic_open, load_config

# The course's normalisation statistics (train and test differ slightly in the course).
TRAIN_MEAN = (0.4816, 0.4324, 0.3845)
TRAIN_STD = (0.2602, 0.2518, 0.2537)
TEST_MEAN = (0.4868, 0.4341, 0.3844)
TEST_STD = (0.2620, 0.2527, 0.2543)
MASK_FILL = (128, 128, 128)  # colour of the holes in the course's masked images
OPENCLIPART_DIR = '/usr/share/openclipart/png'  # Debian openclipart-png
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def data_stats(cfg, split='train'):
    """(mean, std) for `split` from a VQGAN config's optional `data:` section, else the course's."""
    data = (cfg or {}).get('data', {}) or {}
    default_mean, default_std = (TRAIN_MEAN, TRAIN_STD) if split == 'train' else (TEST_MEAN, TEST_STD)
    return tuple(data.get(f'{split}_mean', default_mean)), tuple(data.get(f'{split}_std', default_std))


def inference_stats(vq_cfg):
    """(mean, std) that decoding normalises with, from the tokenizer's config, the one home of the statistics:
    its `data: inference_stats` names the split, 'test' (the course's template, the default) or 'train' (what the
    tokenizer and transformer saw in training; RESULTS.md measures both)."""
    return data_stats(vq_cfg, ((vq_cfg or {}).get('data') or {}).get('inference_stats', 'test'))


def maskgit_stats(cfg):
    """inference_stats of a MaskGit config's tokenizer (model_param: VQ_Configs: VQ_config_path)."""
    return inference_stats(load_config(cfg['model_param']['VQ_Configs']['VQ_config_path']))


# ----------------------------------------------------------------------------- images

def list_images(root, partial=1.0, what='image'):
    """Sorted image files of a folder (the course's `sorted(os.listdir)`), first int(n * partial) kept."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} folder not found: {root}")
    if not 0 < partial <= 1:
        raise ValueError(f"--partial must be in (0, 1], got {partial}")
    names = sorted(n for n in os.listdir(root) if n.lower().endswith(IMAGE_EXTS))
    names = names[:int(len(names) * partial)]
    if not names:
        raise ValueError(f"no {what} files in {root}" + (f" with --partial {partial}" if partial < 1 else ""))
    return [os.path.join(root, n) for n in names]


def normalize(x, mean, std):
    """[.., 3, H, W] in [0, 1] -> normalised."""
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


def denormalize(x, mean, std):
    """Inverse of `normalize`, clamped to [0, 1]."""
    return (x * x.new_tensor(std)[:, None, None] + x.new_tensor(mean)[:, None, None]).clamp(0, 1)


def pil_to_tensor01(img):
    """PIL image -> float tensor [C, H, W] in [0, 1] (torchvision's ToTensor)."""
    a = np.asarray(img, dtype=np.uint8)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255)


def tensor01_to_pil(x):
    """[3, H, W] (or [1, H, W]) in [0, 1] -> PIL RGB (or L), rounding like torchvision's save_image."""
    a = x.detach().float().clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def rgb_over_white(img):
    """Any PIL image -> RGB, transparency composited over white (the datasets' background)."""
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):  # 16/32-bit greyscale: scale to 8 bits first
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a / max(a.max(), 1) * 255, 0, 255).astype(np.uint8), 'L')
    img = img.convert('RGBA')  # applies palette/greyscale transparency (tRNS) too
    white = Image.new('RGBA', img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert('RGB')


def to_square_rgb(img, size):
    """Any PIL image -> RGB `size` x `size`: alpha over white, padded (white) to square, antialiased resize."""
    img = rgb_over_white(img)
    w, h = img.size
    side = max(w, h)
    canvas = Image.new('RGB', (side, side), (255, 255, 255))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def upright(img):
    """The image as displayed: its EXIF orientation applied (a phone's JPEG is stored sideways), tag removed."""
    return ImageOps.exif_transpose(img)


def load_rgb(path):
    """An image file -> PIL RGB, upright (EXIF orientation applied); one-line error naming an unreadable file."""
    try:
        with Image.open(path) as img:
            return upright(img).convert('RGB')
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- masks

# Mask checks (PairedTestDataset.check): masks should hold 0 (hole) and 255 (keep) only.
MASK_THRESHOLD = 128       # values >= this keep the pixel, values below are holes
MASK_GREY = (16, 239)      # values strictly between these are neither near 0 nor near 255
MASK_MAX_GREY_SHARE = 0.05 # more grey pixels than this: not a binary mask (a photo, swapped folders, ...)
MASK_WARN_HOLE_SHARE = 0.9 # warn when a mask is more than this much hole


def load_mask(path, threshold=None):
    """Mask PNG -> float [1, H, W] with 1 = keep, 0 = hole (the course's ToTensor on mode L).

    threshold: values >= threshold become 1, the others 0 (for masks that are not exactly 0/255)."""
    try:
        with Image.open(path) as img:
            img = upright(img).convert('L')
    except Exception as e:
        raise ValueError(f"cannot read mask {path}: {str(e).splitlines()[0]}") from None
    if threshold is not None:
        img = img.point(lambda v: 255 if v >= threshold else 0)
    return pil_to_tensor01(img)


def check_mask(path):
    """Decode a mask fully and check it is binary: (hole fraction, share of values other than 0 and 255).

    One-line ValueError naming the file for a mask that cannot be read, a 0/1 mask (max 1) or one with more
    than MASK_MAX_GREY_SHARE of its pixels strictly between MASK_GREY (not a mask: a photo, or the image
    and mask folders swapped). The hole fraction is that of the mask thresholded at MASK_THRESHOLD."""
    try:
        with Image.open(path) as img:
            a = np.asarray(img.convert('L'))
    except Exception as e:
        raise ValueError(f"cannot read mask {path}: {str(e).splitlines()[0]}") from None
    if a.max() == 1:
        raise ValueError(f"mask {path} is a 0/1 mask (max value 1): masks use 0 = hole, 255 = keep; "
                         f"multiply it by 255")
    grey = float(((a > MASK_GREY[0]) & (a < MASK_GREY[1])).mean())
    if grey > MASK_MAX_GREY_SHARE:
        raise ValueError(f"mask {path} is not a binary mask: {grey:.0%} of its pixels are between "
                         f"{MASK_GREY[0]} and {MASK_GREY[1]} (masks use 0 = hole, 255 = keep; "
                         f"are the image and mask folders swapped?)")
    return float((a < MASK_THRESHOLD).mean()), float(((a != 0) & (a != 255)).mean())


# ----------------------------------------------------------------------------- class labels

def read_labels(path):
    """prepare_dataset.py's labels.json, {"train/image_00000.png": "class name" (or null), ...}."""
    try:
        with open(path) as f:
            labels = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file not found: {path} (prepare_dataset.py writes labels.json beside "
                                f"the split folders; or pass --labels)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read labels file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(labels, dict) or not all(v is None or isinstance(v, str) for v in labels.values()):
        raise ValueError(f"labels file {path} must map image paths to class names (or null)")
    return labels


def class_names(labels):
    """The classes of a labels.json, sorted: a class's id is its place in this list."""
    return sorted({v for v in labels.values() if v is not None})


def image_labels(labels, image_paths, root, names, source):
    """Class ids [n] long of the images (labels' keys are their paths relative to `root`, the folder of the
    labels file `source`); an image labelled null gets the null class len(names). One-line error for an image
    the file does not list."""
    ids = {name: i for i, name in enumerate(names)}
    out = []
    for p in image_paths:
        key = os.path.relpath(p, root).replace(os.sep, '/')
        if key not in labels:
            raise ValueError(f"labels file {source} has no entry '{key}' for image {p}")
        out.append(len(names) if labels[key] is None else ids[labels[key]])
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------- datasets

class ImageDataset(Dataset):
    """Images of a folder, RGB, ToTensor then Normalize (the course's LoadTrainData / LoadTestData)."""

    def __init__(self, root, partial=1.0, mean=TRAIN_MEAN, std=TRAIN_STD):
        self.paths = list_images(root, partial)
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return normalize(pil_to_tensor01(load_rgb(self.paths[i])), self.mean, self.std)  # [3, H, W]


class MaskDataset(Dataset):
    """Masks of a folder as float [1, H, W]: 1 = keep, 0 = hole (the course's LoadMaskData)."""

    def __init__(self, root, partial=1.0):
        self.paths = list_images(root, partial, what='mask')

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_mask(self.paths[i])


def _index_of(path):
    m = re.search(r'(\d+)\.[A-Za-z]+$', os.path.basename(path))
    return int(m.group(1)) if m else None


def files_by_number(paths, what, root):
    """{number: path}; two files with the same number (image_001.png and image_1.png, or .png and .jpg)
    are a one-line error naming both."""
    out = {}
    for p in paths:
        k = _index_of(p)
        if k is None:
            continue
        if k in out:
            raise ValueError(f"{what} files {os.path.basename(out[k])} and {os.path.basename(p)} in {root} "
                             f"both have number {k}: pairing by number is ambiguous; remove or rename one")
        out[k] = p
    return out


class PairedTestDataset(Dataset):
    """Masked test images with their masks, paired by number (image_007.png <-> mask_007.png).

    Returns (image [3, H, W] normalised, mask [1, H, W], index). Every image must have its mask and
    vice versa; the first unpaired file is named in the error, and so are two files of one folder with the
    same number. Masks are thresholded at MASK_THRESHOLD (the same as the course's rule for 0/255 masks);
    `check()` validates every file before a run.
    """

    def __init__(self, image_root, mask_root, partial=1.0, mean=TEST_MEAN, std=TEST_STD):
        if not 0 < partial <= 1:
            raise ValueError(f"--partial must be in (0, 1], got {partial}")
        image_paths = list_images(image_root, 1.0, what='masked image')
        mask_paths = list_images(mask_root, 1.0, what='mask')
        images = files_by_number(image_paths, 'masked image', image_root)
        masks = files_by_number(mask_paths, 'mask', mask_root)
        for p in image_paths:
            k = _index_of(p)
            if k is None or k not in masks:
                raise ValueError(f"masked image {p} has no mask in {mask_root} "
                                 f"(expected mask_{k if k is not None else 'N'}.png)")
        for p in mask_paths:
            k = _index_of(p)
            if k is None or k not in images:
                raise ValueError(f"mask {p} has no masked image in {image_root}")
        order = sorted(images, key=lambda k: os.path.basename(images[k]))
        order = order[:int(len(order) * partial)]
        if not order:
            raise ValueError(f"no test images left in {image_root} with --partial {partial}")
        self.indices = order
        self.images = [images[k] for k in order]
        self.masks = [masks[k] for k in order]
        self.mean, self.std = mean, std

    def check(self, size=None):
        """Decode every image and mask fully and check the masks (check_mask), before any output.

        size: (width, height) every file must have. Returns one-line notes for stderr: masks that are not
        exactly 0/255 (how they were thresholded), masks that are almost all hole. Errors name the file."""
        grey, holey = [], []
        for img_path, mask_path in zip(self.images, self.masks):
            try:
                with Image.open(img_path) as img:
                    img_size = upright(img).convert('RGB').size  # decodes all of it: a truncated file fails here
            except Exception as e:
                raise ValueError(f"cannot read image {img_path}: {str(e).splitlines()[0]}") from None
            hole, off = check_mask(mask_path)
            with Image.open(mask_path) as m:
                mask_size = upright(m).size
            for path, got in ((img_path, img_size), (mask_path, mask_size)):
                if size is not None and got != tuple(size):
                    raise ValueError(f"{path} is {got[0]}x{got[1]} but the model takes {size[0]}x{size[1]} "
                                     f"images (img_resolution)")
            if mask_size != img_size:
                raise ValueError(f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but image {img_path} is "
                                 f"{img_size[0]}x{img_size[1]}")
            if off:
                grey.append((mask_path, off))
            if hole > MASK_WARN_HOLE_SHARE:
                holey.append((mask_path, hole))
        notes = []
        if grey:
            worst = max(grey, key=lambda t: t[1])
            notes.append(f"note: {len(grey)} mask(s) are not exactly 0/255 (e.g. lossy compression; worst "
                         f"{worst[0]}: {worst[1]:.1%} of pixels): thresholded at {MASK_THRESHOLD}, "
                         f"values >= {MASK_THRESHOLD} keep, values below are holes")
        if holey:
            worst = max(holey, key=lambda t: t[1])
            notes.append(f"warning: {len(holey)} mask(s) are more than {MASK_WARN_HOLE_SHARE:.0%} hole (worst "
                         f"{worst[0]}: {worst[1]:.0%}): almost the whole image is generated; inverted masks?")
        return notes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = normalize(pil_to_tensor01(load_rgb(self.images[i])), self.mean, self.std)
        mask = load_mask(self.masks[i], MASK_THRESHOLD)
        if mask.shape[1:] != img.shape[1:]:
            raise ValueError(f"mask {self.masks[i]} is {tuple(mask.shape[1:])} but image {self.images[i]} "
                             f"is {tuple(img.shape[1:])}")
        return img, mask, self.indices[i]


# ----------------------------------------------------------------------------- ground-truth CSV

def write_gt_csv(images, path):
    """uint8 [N, H, W, 3] -> the course's CSV: a header row, then one row of H*W*3 values (HWC) per image."""
    images = np.asarray(images, dtype=np.uint8)
    flat = images.reshape(len(images), -1)
    with atomic_open(path) as f:
        f.write(','.join(str(i) for i in range(flat.shape[1])) + '\n')
        np.savetxt(f, flat, fmt='%d', delimiter=',')


def _is_gt_header(line):
    """Whether the first line of a ground-truth CSV is a header: not a row of pixels (all integers 0..255), or
    the course's header itself (the column numbers 0, 1, ..., W-1; pixels of a tiny image could look alike)."""
    try:
        values = [int(c) for c in line.strip().split(',')]
    except ValueError:
        return True
    return values == list(range(len(values))) or not all(0 <= v <= 255 for v in values)


def _gt_csv_problem(path, header):
    """The first line of a ground-truth CSV that is not a row of pixels, as 'line N: what' (None: none found)."""
    width = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if (n == 1 and header) or not line.strip():
                continue
            cells = line.strip().split(',')
            for c in cells:
                try:
                    v = int(c)
                except ValueError:
                    return f"line {n}: {c.strip()[:20]!r} is not an integer"
                if not 0 <= v <= 255:
                    return f"line {n}: value {v} is outside 0..255"
            if width is not None and len(cells) != width:
                return f"line {n} has {len(cells)} values, the lines before it {width}"
            width = len(cells)
    return None


def read_gt_csv(path):
    """The course's ground-truth CSV -> uint8 [N, S, S, 3]; a width that is not 3*S*S is a clear error.

    The first line is a header (the course's: the column numbers) and skipped, unless it is a row of pixels (all
    integers 0..255, and not exactly 0, 1, ..., W-1): a CSV written without a header is read from its first line,
    so no image is lost. A line that is not a row of pixels (a value that is not an integer in 0..255, a length
    unlike the others) is a one-line error naming the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground-truth CSV not found: {path}")
    with open(path) as f:
        header = _is_gt_header(f.readline())
    try:
        flat = np.loadtxt(path, delimiter=',', skiprows=int(header), dtype=np.int64, ndmin=2)
    except ValueError as e:  # numpy's message names neither the file nor, for some errors, the line
        problem = _gt_csv_problem(path, header) or str(e).splitlines()[0]
        raise ValueError(f"ground-truth CSV {path}, {problem}") from None
    if flat.size == 0:
        raise ValueError(f"ground-truth CSV {path} has no rows")
    side = int(round((flat.shape[1] / 3) ** 0.5))
    if side * side * 3 != flat.shape[1]:
        raise ValueError(f"ground-truth CSV {path} has rows of {flat.shape[1]} values; expected 3*S*S "
                         f"(12288 for 64x64 RGB)")
    if flat.min() < 0 or flat.max() > 255:
        raise ValueError(f"ground-truth CSV {path}, {_gt_csv_problem(path, header)}")
    return flat.astype(np.uint8).reshape(len(flat), side, side, 3)
