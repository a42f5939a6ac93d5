"""Hole masks: the free-form pixel masks of the dataset's test/val splits, and the token-level masks
training draws from them (so the models see holes shaped like the ones they will fill).

Pixel masks are PIL mode L, 0 = hole, 255 = keep (the course's polarity). Token masks are bool
[..., h*w], True = unknown (the course's rule: a token is unknown when any of its pixels is a hole).
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dataset import MASK_FILL


def make_mask(size, rng, hole_min, hole_max):
    """Free-form mask, mode L, 0 = hole, 255 = keep, hole fraction in [hole_min, hole_max] (never 0 or 1).

    Holes are a mix of rectangles and brush strokes added until the target fraction is reached; a shape
    that overshoots `hole_max` is undone and another one tried.
    """
    target = rng.uniform(hole_min, hole_max)
    mask = Image.new('L', (size, size), 255)
    for _ in range(200):
        trial = mask.copy()
        draw = ImageDraw.Draw(trial)
        if rng.random() < 0.4:  # rectangle
            w, h = rng.integers(size // 8, size // 2 + 1, size=2)
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=0)
        else:  # brush stroke: a random walk of thick segments with round joints
            width = int(rng.integers(max(2, size // 16), size // 6 + 1))
            x, y = rng.uniform(0, size, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(2, 7))):
                angle += rng.uniform(-1.2, 1.2)
                length = rng.uniform(size / 8, size / 3)
                nx = float(np.clip(x + length * np.cos(angle), 0, size - 1))
                ny = float(np.clip(y + length * np.sin(angle), 0, size - 1))
                draw.line([(x, y), (nx, ny)], fill=0, width=width)
                r = width / 2
                draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=0)
                x, y = nx, ny
        frac = hole_fraction(trial)
        if frac <= hole_max and frac < 1:
            mask = trial
            if frac >= target:
                break
    if hole_fraction(mask) == 0:  # pathological parameters: fall back to one central square
        s = max(1, int(size * np.sqrt(max(hole_min, 1 / size ** 2))))
        ImageDraw.Draw(mask).rectangle([(size - s) // 2, (size - s) // 2, (size - s) // 2 + s - 1,
                                        (size - s) // 2 + s - 1], fill=0)
    return mask


def hole_fraction(mask):
    return float((np.asarray(mask) == 0).mean())


def mask_rng(seed, split, i):
    """The generator of mask i of a split. Test masks depend on (seed, i) only (as they always have);
    validation and training masks have their own streams, so no split shares a mask sequence. The stream
    number goes last: SeedSequence pads short entropy with zeros, so [seed, 1, 0] would equal [seed, 1]."""
    return np.random.default_rng([seed, i] if split == 'test' else [seed, i, {'val': 1, 'train': 2, 'holdout': 3}[split]])


def pixel_mask_bank(n, size, seed, hole_min=0.1, hole_max=0.5):
    """n training pixel masks [n, 1, size, size] float, 1 = keep, 0 = hole (the 'train' stream)."""
    masks = [np.asarray(make_mask(size, mask_rng(seed, 'train', i), hole_min, hole_max)) for i in range(n)]
    return torch.from_numpy(np.stack(masks)[:, None] > 0).float()


def latent_mask(mask, factor=4):
    """Pixel mask (1 = keep) [B, 1, H, W] or [B, H, W] -> token mask [B, H/f, W/f], True = unknown.

    The course's rule: average-pool by `factor`; a token stays visible only if all its pixels are kept.
    """
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} is not divisible by the VQGAN's factor {factor}")
    return F.avg_pool2d(mask.float(), factor)[:, 0] < 1  # [B, H/f, W/f]


def fill_holes(x, keep, fill):
    """Normalised images [B, 3, H, W] with pixel masks [B, 1, H, W] (1 = keep) -> holes set to `fill` [3]
    (the normalised MASK_FILL grey of the course's masked images)."""
    return x * keep + fill[:, None, None] * (1 - keep)


def normalised_fill(mean, std, device='cpu'):
    """The course's hole colour MASK_FILL in normalised space, [3]."""
    return ((torch.tensor(MASK_FILL, dtype=torch.float) / 255 - torch.tensor(mean)) / torch.tensor(std)).to(device)


# ----------------------------------------------------------------------------- regions to regenerate

OUTPAINT_REGIONS = ('center', 'left', 'right', 'top', 'bottom', 'top-left', 'top-right', 'bottom-left', 'bottom-right')


def outpaint_keep(region, size, factor):
    """Pixel mask [1, size, size] float, 1 = keep, of --outpaint REGION on the h x h token grid (h = size / factor,
    k = h // 2): `center` keeps the central k x k tokens (from row and column (h - k) // 2), `left` / `right` the
    k columns at that side, `top` / `bottom` the k rows, a corner (`top-left`, ...) the k x k tokens there. For an
    even h that is exactly 1/4 of the tokens for the centre and a corner, 1/2 for a side; the rest is regenerated."""
    if region not in OUTPAINT_REGIONS:
        raise ValueError(f"--outpaint {region}: unknown region; use one of {', '.join(OUTPAINT_REGIONS)}")
    h = size // factor
    k = h // 2
    rows = cols = slice((h - k) // 2, (h - k) // 2 + k) if region == 'center' else slice(0, h)
    rows = slice(0, k) if 'top' in region else slice(h - k, h) if 'bottom' in region else rows
    cols = slice(0, k) if 'left' in region else slice(h - k, h) if 'right' in region else cols
    keep = torch.zeros(h, h)
    keep[rows, cols] = 1
    return keep.repeat_interleave(factor, 0).repeat_interleave(factor, 1)[None]     # [1, size, size]


def snap_box(box, size, factor):
    """--box x0,y0,x1,y1 in pixels (x1, y1 exclusive, like a slice) -> the box snapped outward to token
    boundaries (multiples of factor). One-line errors: an empty box, or one not inside the size x size image."""
    x0, y0, x1, y1 = box
    given = ','.join(map(str, box))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box {given} is empty: it needs x0 < x1 and y0 < y1 (pixels, x1 and y1 exclusive)")
    if min(x0, y0) < 0 or max(x1, y1) > size:
        raise ValueError(f"--box {given} is outside the {size}x{size} image: it needs 0 <= x0 < x1 <= {size} "
                         f"and 0 <= y0 < y1 <= {size}")
    down, up = lambda v: v // factor * factor, lambda v: -(-v // factor) * factor
    return down(x0), down(y0), up(x1), up(y1)


def box_keep(box, size, factor):
    """Pixel mask [1, size, size] float, 1 = keep, 0 inside --box (snapped outward to tokens: snap_box)."""
    x0, y0, x1, y1 = snap_box(box, size, factor)
    keep = torch.ones(1, size, size)
    keep[:, y0:y1, x0:x1] = 0
    return keep
