"""Shared helpers: config and checkpoint I/O, datasets in the course layout, the latent mask.

Everything here is used by more than one script; scripts stay thin CLIs over `models/` and this.
"""
import contextlib
import hashlib
import math
import os
import random
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

# The course's normalisation statistics (train and test differ slightly in the course).
TRAIN_MEAN = (0.4816, 0.4324, 0.3845)
TRAIN_STD = (0.2602, 0.2518, 0.2537)
TEST_MEAN = (0.4868, 0.4341, 0.3844)
TEST_STD = (0.2620, 0.2527, 0.2543)
MASK_FILL = (128, 128, 128)  # colour of the holes in the course's masked images
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


# ----------------------------------------------------------------------------- config, files

def load_config(path):
    """YAML config as a dict; a missing or malformed file is a one-line error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config not found: {path}")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping, got {type(cfg).__name__}")
    return cfg


def data_stats(cfg, split='train'):
    """(mean, std) for `split` from a config's optional `data:` section, else the course's."""
    data = (cfg or {}).get('data', {}) or {}
    default_mean, default_std = (TRAIN_MEAN, TRAIN_STD) if split == 'train' else (TEST_MEAN, TEST_STD)
    return tuple(data.get(f'{split}_mean', default_mean)), tuple(data.get(f'{split}_std', default_std))


def _pid_alive(pid):
    """Whether a process with this id exists here (a process we may not signal exists too)."""
    if pid <= 0:
        return True  # not a pid we wrote: leave its file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def remove_stale_temps(path):
    """Remove the temporary files of `path` (`.NAME.tmpPID`, see atomic_open) whose process is dead:
    what a killed save leaves behind. Files of live processes (a save in progress) are kept.
    Returns the removed paths."""
    d, base = os.path.split(os.path.abspath(path))
    prefix = f'.{base}.tmp'
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(d, name))
                removed.append(os.path.join(d, name))
    return removed


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
    """open() on a temporary name in the same folder, renamed to `path` only when the block succeeds:
    a crash never leaves a torn file (folders are made as needed). Temporary files of `path` left by
    killed processes (kill -9 during a save) are removed first."""
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    remove_stale_temps(path)
    tmp = os.path.join(d, f'.{base}.tmp{os.getpid()}')
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    """torch.save, atomically. A `<path>.sha256` sidecar left from an earlier save_checkpoint is removed:
    it would no longer match (use save_checkpoint to write a new one)."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)
    with contextlib.suppress(FileNotFoundError):
        os.remove(f"{path}.sha256")


def atomic_save_image(img, path):
    """Save a PIL image (format from the extension of `path`) atomically."""
    with atomic_open(path, 'wb') as f:
        img.save(f, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])


def check_writable(path, flag, folder=False):
    """Raise a one-line ValueError naming `flag` unless `path` can be written, without creating anything:
    a folder (folder=True) or a file that exists or can be created in its nearest existing folder."""
    path = os.path.abspath(path)
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{flag} {path} is {'a file, not a folder' if folder else 'a folder, not a file'}")
    probe = path if folder else os.path.dirname(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} is not writable: no permission to write in {probe} (or read-only)")


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path, map_location='cpu'):
    """torch.load with weights_only=True; missing or unreadable files are one-line errors naming the file.

    A sidecar `<path>.sha256` (the shipped checkpoints have one) is verified before loading.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sidecar = f"{path}.sha256"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            want = (f.read().split() or [''])[0]
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"checkpoint {path} has SHA-256 {got[:16]}..., but {sidecar} says {want[:16]}...: "
                             f"the file is corrupt or was replaced")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise ValueError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from None


def save_checkpoint(obj, path):
    """torch.save, atomically, with a `<path>.sha256` sidecar (sha256sum's format) that load_checkpoint
    verifies: a corrupted checkpoint is then an error instead of loading silently.

    The old sidecar is removed before the new checkpoint replaces the old one, and the new sidecar is renamed
    in last: a crash at any point leaves a checkpoint that matches its sidecar or has none, never a pair that
    disagrees (which would make a good checkpoint unloadable)."""
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    sidecar = os.path.join(d, f'{base}.sha256')
    for target in (path, sidecar):
        remove_stale_temps(target)
    tmp, tmp_sidecar = (os.path.join(d, f'.{name}.tmp{os.getpid()}') for name in (base, f'{base}.sha256'))
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
        with open(tmp_sidecar, 'w') as f:
            f.write(f"{sha256_file(tmp)}  {base}\n")
        with contextlib.suppress(FileNotFoundError):
            os.remove(sidecar)
        os.replace(tmp, path)
        os.replace(tmp_sidecar, sidecar)
    finally:
        for t in (tmp, tmp_sidecar):
            if os.path.exists(t):
                os.remove(t)


def export_state_dict(state_dict, path, dtype=torch.float16):
    """A plain state_dict with floating tensors in `dtype`, written by save_checkpoint (atomically, with a
    `<path>.sha256` sidecar that load_checkpoint verifies)."""
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    save_checkpoint(sd, path)
    return sd


def export_checkpoint(src, out, state_dict_of=lambda ck: ck):
    """The --export of the training scripts: the state_dict in checkpoint `src` (picked by state_dict_of)
    written to `out` in fp16 with its sidecar, and a line saying so."""
    if not out:
        raise ValueError("--export needs --out")
    sd = export_state_dict(state_dict_of(load_checkpoint(src)), out)
    print(f"wrote {out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()) / 1e6:.2f}M values, fp16")


def load_state_dict_checked(module, state_dict, source):
    """Strict load whose error names the first missing/unexpected/mismatching key and both shapes."""
    own = module.state_dict()
    for k, v in state_dict.items():
        if k not in own:
            raise ValueError(f"{source}: unexpected key '{k}' (shape {tuple(v.shape)}) not in the model; "
                             f"does the checkpoint match the config?")
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: key '{k}' has shape {tuple(v.shape)} in the checkpoint "
                             f"but {tuple(own[k].shape)} in the model built from the config")
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ValueError(f"{source}: key '{missing[0]}' (shape {tuple(own[missing[0]].shape)}) is missing "
                         f"from the checkpoint ({len(missing)} missing in all)")
    module.load_state_dict(state_dict, strict=True)
    return module


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name=None):
    """'cuda' when available and not overridden; a request for CUDA without CUDA is an error."""
    if name in (None, '', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(name)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for CUDA, but torch sees no GPU here (use --device cpu)")
    return dev


# dense TFLOP/s (16-bit, fp32 without TF32) from the SXM datasheets; the H200 has the H100's compute
DATASHEET_TFLOPS = {'H100': (989.0, 67.0), 'H200': (989.0, 67.0)}


def peak_tflops(device, dtype, given=None, size=4096):
    """(TFLOP/s, where the figure comes from): the denominator of model FLOPs utilisation.

    `given` wins; then the datasheet for a GPU in DATASHEET_TFLOPS (PCIe cards excepted); otherwise
    (a CPU has no datasheet figure to quote) a size x size matmul in `dtype`, measured now.
    """
    if given:
        return given, 'given'
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for gpu, (half, single) in DATASHEET_TFLOPS.items():
            if gpu in name and 'PCIe' not in name:
                return (half if dtype in (torch.bfloat16, torch.float16) else single), f'{gpu} datasheet'
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(3):
        a @ b
    sync()
    return 3 * 2 * size ** 3 / (time.perf_counter() - t) / 1e12, f'measured {str(dtype)[6:]} {size}^3 matmul'


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


def load_rgb(path):
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None


def plot_curves(series, path, title='', xlabel='epoch', size=(640, 400)):
    """Line plot of {name: (xs, ys)} drawn with PIL (no matplotlib), written atomically as PNG."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def to_px(x, y):
            return (left + (x - x0) / (x1 - x0) * (w - left - right),
                    h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))
        for i in range(5):  # grid and tick labels
            fy, fx = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
            py, px = to_px(x0, fy)[1], to_px(fx, y0)[0]
            d.line([(left, py), (w - right, py)], fill=(230, 230, 230))
            d.text((4, py - 6), f"{fy:.3g}", fill='black')
            d.text((px - 8, h - bottom + 6), f"{fx:.3g}", fill='black')
        colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
        for k, (name, (xs, ys)) in enumerate(series.items()):
            c = colours[k % len(colours)]
            line = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
            if len(line) > 1:
                d.line(line, fill=c, width=2)
            for px, py in line:
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
            d.text((w - right - 120, top + 4 + 14 * k), name, fill=c)
    d.rectangle([left, top, w - right, h - bottom], outline='black')
    d.text((left, 8), title, fill='black')
    d.text((w // 2 - 15, h - 16), xlabel, fill='black')
    atomic_save_image(img, path)


def save_grid(images, path, nrow):
    """[N, 3, H, W] in [0, 1] -> one PNG grid (2-pixel white borders), written atomically."""
    from torchvision.utils import make_grid
    atomic_save_image(tensor01_to_pil(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1)), path)


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
            img = img.convert('L')
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


def _by_number(paths, what, root):
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
        images = _by_number(image_paths, 'masked image', image_root)
        masks = _by_number(mask_paths, 'mask', mask_root)
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
                    img.convert('RGB')  # decodes all of it: a truncated file fails here, not mid-run
                    img_size = img.size
            except Exception as e:
                raise ValueError(f"cannot read image {img_path}: {str(e).splitlines()[0]}") from None
            hole, off = check_mask(mask_path)
            with Image.open(mask_path) as m:
                mask_size = m.size
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


def latent_mask(mask, factor=4):
    """Pixel mask (1 = keep) [B, 1, H, W] or [B, H, W] -> token mask [B, H/f, W/f], True = unknown.

    The course's rule: average-pool by `factor`; a token stays visible only if all its pixels are kept.
    """
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} is not divisible by the VQGAN's factor {factor}")
    return F.avg_pool2d(mask.float(), factor)[:, 0] < 1  # [B, H/f, W/f]


# ----------------------------------------------------------------------------- ground-truth CSV

def write_gt_csv(images, path):
    """uint8 [N, H, W, 3] -> the course's CSV: a header row, then one row of H*W*3 values (HWC) per image."""
    images = np.asarray(images, dtype=np.uint8)
    flat = images.reshape(len(images), -1)
    with atomic_open(path) as f:
        f.write(','.join(str(i) for i in range(flat.shape[1])) + '\n')
        np.savetxt(f, flat, fmt='%d', delimiter=',')


def read_gt_csv(path):
    """The course's ground-truth CSV -> uint8 [N, S, S, 3]; a width that is not 3*S*S is a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground-truth CSV not found: {path}")
    flat = np.loadtxt(path, delimiter=',', skiprows=1, dtype=np.int64, ndmin=2)
    if flat.size == 0:
        raise ValueError(f"ground-truth CSV {path} has no rows")
    side = int(round((flat.shape[1] / 3) ** 0.5))
    if side * side * 3 != flat.shape[1]:
        raise ValueError(f"ground-truth CSV {path} has rows of {flat.shape[1]} values; expected 3*S*S "
                         f"(12288 for 64x64 RGB)")
    if flat.min() < 0 or flat.max() > 255:
        raise ValueError(f"ground-truth CSV {path} has values outside 0..255")
    return flat.astype(np.uint8).reshape(len(flat), side, side, 3)
