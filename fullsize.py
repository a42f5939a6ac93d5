"""A person's own pictures inpainted at their own size with a model that works on RES x RES images only.

The strategy is IOPaint's "crop": holes close to each other form a group; each group gets one square box with
context around it (long thin groups, e.g. an outpainting strip, are cut into several boxes); every box is
resized to RES, filled by `fill_fn` (one batched call), resized back and blended into the original. A small
picture, or a box as large as the picture (holes covering most of it), falls back to one box, the whole picture
padded to a square (IOPaint's "resize"). Outside a thin band of FEATHER px around the holes the result is the
input, byte for byte. Holes thinner than one token at their box's scale go to OpenCV's Telea instead
(thin_hole_rule).

Masks here are bool [H, W], True = hole (the field's convention; the course's tensors use 1 = keep).
Boxes are (x0, y0, x1, y1) in the picture's pixels, x1 and y1 exclusive, square; a box may reach outside a
non-square picture, where it is padded (PAD; never cropped).
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from dataset import (MASK_FILL, MASK_GREY, MASK_MAX_GREY_SHARE, MASK_THRESHOLD, MASK_WARN_HOLE_SHARE,
                     pil_to_tensor01, rgb_over_white, upright)
from models.baselines import have_opencv, opencv_fill

RES = 64            # the model's resolution (the VQGAN turns 64x64 into 16x16 tokens)
TOKEN = 4           # pixels of one token at RES: holes narrower than this (at a box's scale) go to Telea
MIN_SIDE = 32       # pictures with a side below this are refused: too little to fill from
MAX_SIDE = 4000     # pictures with a side above this are refused: a 64-px model cannot do them justice, and memory
FEATHER = 3         # px outside a hole blended with the fill (a soft seam); every pixel farther is the input's
COLOUR_RING = 4     # px just outside a hole whose colour the fill is shifted to (hides the fill's tint)
# The shift: the per-channel 'median' (one wrong block cannot tint the fill) or 'mean' of the ring's input - fill,
# or None (off). A box reaching outside the picture is padded: 'edge' (its border repeated) or 'white' (the training
# pictures' padding), the padding known, no pixel under a hole in it; or 'reflect' (mirrored, its holes too: extra
# holes). Chosen on 20 val pictures (benchmarks/eval_fullsize.py --split val; issue 33): median + edge, hole L1
# 43.8 vs 48.8 for mean + reflect (the earlier default), PSNR 10.44 vs 10.68 dB (the median is the ring's L1 fit);
# the next 20 val pictures agree (30.4 vs 32.2; 14.27 vs 14.64 dB).
COLOUR_MATCH = 'median'
PAD = 'edge'
MARGIN = 0.5        # context on each side of a hole group, as a share of the group's longer side...
MIN_CONTEXT = 16    # ...and at least this many px
GROUP_GAP = 8       # holes closer than this (px) are one group, one box
TRIGGER = 128       # pictures whose longer side is at most this are filled whole (at most 2x downscaled)
ELONGATED = 2       # a group longer than this times max(its width, RES) is cut into tiles along its length
MAX_GROUPS = 64     # more groups than this (speckle): filled whole
CONVENTIONS = ('white', 'black')  # white (255) = hole: IOPaint/diffusers, the default; black (0) = hole: the course
HIGH_DEPTH = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')  # 16/32-bit greyscale modes (PNG 16-bit)


# ----------------------------------------------------------------------------- reading pictures and masks

@dataclass
class Picture:
    """A picture as read: `image` RGB (RGBA when it has transparency), upright; `source` the upright image in
    its file's mode; `alpha` uint8 [H, W] when the file has an alpha channel (even fully opaque), else None."""
    image: Image.Image
    source: Image.Image
    alpha: np.ndarray = None
    path: str = 'image'

    @property
    def mode(self):
        return self.source.mode

    @property
    def size(self):
        return self.image.size

    def restore(self, rgb, alpha=None):
        """uint8 [H, W, 3] (and alpha [H, W] or None: the picture's own) -> PIL in the file's mode: RGB, RGBA,
        L, LA, 1 and 16-bit greyscale kept (16-bit: pixels whose 8-bit value is unchanged keep their 16-bit value);
        palette and other modes come back RGB (RGBA with transparency): the fill's colours are not in a palette."""
        img, alpha = Image.fromarray(rgb), self.alpha if alpha is None else alpha
        if self.mode in HIGH_DEPTH:
            src = np.asarray(self.source)
            grey = np.asarray(img.convert('L'))
            return Image.fromarray(np.where(grey == to_8bit(src), src, grey.astype(src.dtype) * 257))
        if self.mode in ('1', 'L'):
            return img.convert('L').convert(self.mode, dither=Image.Dither.NONE)
        if self.mode == 'LA':
            return Image.merge('LA', (img.convert('L'), Image.fromarray(alpha)))
        return img if alpha is None else Image.merge('RGBA', (*img.split(), Image.fromarray(alpha)))


def to_8bit(a):
    """16-bit greyscale values -> uint8 (v / 257, rounded: 65535 -> 255)."""
    return np.clip(np.round(a.astype(np.float64) / 257), 0, 255).astype(np.uint8)


def as_picture(img, path='image'):
    """An upright PIL image of any mode -> Picture."""
    if img.mode in HIGH_DEPTH:
        img8 = Image.fromarray(to_8bit(np.asarray(img)))
        return Picture(img8.convert('RGB'), img, None, path)
    if 'A' not in img.mode and 'transparency' not in img.info:
        return Picture(img.convert('RGB'), img, None, path)
    rgba = img.convert('RGBA')  # applies palette/greyscale transparency (tRNS) too
    alpha = np.asarray(rgba)[:, :, 3].copy()
    return Picture(rgba if alpha.min() < 255 else rgba.convert('RGB'), img, alpha, path)


def check_size(size, path):
    """One-line ValueError naming the file when a side is outside [MIN_SIDE, MAX_SIDE]."""
    w, h = size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise ValueError(f"image {path} is {w}x{h}: sides must be {MIN_SIDE} to {MAX_SIDE} px")


def read_image(path):
    """An image file (PNG, JPEG, WebP, BMP, TIFF, ...) -> Picture, upright (EXIF orientation applied).
    One-line ValueError naming the file: unreadable, or a side outside [MIN_SIDE, MAX_SIDE] (checked before
    decoding)."""
    try:
        with Image.open(path) as f:
            size = f.size
            check_size(size, path)
            img = upright(f)
            img.load()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(msg if msg.startswith(f"image {path} is") else f"cannot read image {path}: {msg}") from None
    return as_picture(img, str(path))


def mask_values(m, path, convention):
    """An upright mask image -> (hole bool [H, W], what a hole is, for messages)."""
    if 'A' in m.mode or 'transparency' in m.info:
        alpha = np.asarray(m.convert('RGBA'))[:, :, 3]
        if alpha.min() < MASK_THRESHOLD:  # drawn by erasing: transparent = hole, whatever the convention
            return alpha < MASK_THRESHOLD, 'its transparent pixels'
    a = np.asarray(m.convert('L'))
    if a.max() == 1:
        raise ValueError(f"mask {path} is a 0/1 mask (max value 1): masks use 0 and 255; multiply it by 255")
    grey = float(((a > MASK_GREY[0]) & (a < MASK_GREY[1])).mean())
    if grey > MASK_MAX_GREY_SHARE:
        raise ValueError(f"mask {path} is not a binary mask: {grey:.0%} of its pixels are grey (are the image "
                         f"and the mask swapped?)")
    white = convention == 'white'
    return (a >= MASK_THRESHOLD) if white else (a < MASK_THRESHOLD), 'white' if white else 'black'


def read_mask(path, size, convention='white', resize=False):
    """A mask file for a picture of `size` (w, h) -> (hole bool [H, W] (True = hole), note or None).

    convention 'white' (the default: white/255 = hole, IOPaint and diffusers) or 'black' (0 = hole, the
    course's); a mask with transparent pixels: transparent = hole whatever the convention. Values are
    thresholded at MASK_THRESHOLD (lossy masks). A mask of another size is refused unless resize (nearest).
    One-line ValueErrors naming the file: unreadable, 0/1 or not binary, wrong size, no hole, all hole.
    The note: the hole is more than MASK_WARN_HOLE_SHARE of the picture (likely the other convention)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"mask convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
    try:
        with Image.open(path) as f:
            m = upright(f)  # drawn on the picture as displayed
    except Exception as e:
        raise ValueError(f"cannot read mask {path}: {str(e).splitlines()[0]}") from None
    hole, what = mask_values(m, path, convention)
    if m.size != tuple(size):
        if not resize:
            raise ValueError(f"mask {path} is {m.size[0]}x{m.size[1]} but its image is {size[0]}x{size[1]}: "
                             f"draw it on the image, or let it be resized")
        hole = np.asarray(Image.fromarray(hole).resize(tuple(size), Image.Resampling.NEAREST))
    share = float(hole.mean())
    if share in (0.0, 1.0):
        raise ValueError(f"mask {path} has {'no' if share == 0 else 'only'} hole ({what} pixels are the hole)")
    if share <= MASK_WARN_HOLE_SHARE:
        return hole, None
    other = 'black' if convention == 'white' else 'white'
    hint = ("is it drawn on a transparent layer? paint the hole instead" if what == 'its transparent pixels'
            else f"likely the other convention; pass --mask-convention {other}")
    return hole, f"note: mask {path} is {share:.0%} hole ({what} pixels): {hint}"


def mask_from_alpha(image, name='image'):
    """The picture's own transparent pixels (alpha < MASK_THRESHOLD) as the hole, bool [H, W]. One-line
    ValueError naming `name` when it has none, or nothing else."""
    pic = image if isinstance(image, Picture) else as_picture(image, name)
    if pic.alpha is None or not (pic.alpha < MASK_THRESHOLD).any():
        raise ValueError(f"{name} has no transparent pixels to fill")
    hole = pic.alpha < MASK_THRESHOLD
    if hole.all():
        raise ValueError(f"{name} is transparent everywhere: nothing to fill from")
    return hole


# ----------------------------------------------------------------------------- crop planning

def _place(c0, c1, side, n):
    """Start of a box of `side` around the span [c0, c1) on an axis of n px: inside [0, n) when it fits, else
    centred on the picture (padding both sides)."""
    if side >= n:
        return -((side - n) // 2)
    return int(np.clip((c0 + c1 - side) // 2, 0, n - side))


def _context_box(hb, w, h, res, margin):
    """Hole box (x0, y0, x1, y1) -> square box with context, placed in the picture."""
    side = max(hb[2] - hb[0], hb[3] - hb[1])
    side = max(side + 2 * max(round(side * margin), MIN_CONTEXT), res)
    x0, y0 = _place(hb[0], hb[2], side, w), _place(hb[1], hb[3], side, h)
    return int(x0), int(y0), int(x0 + side), int(y0 + side)


def _whole(hole):
    """One box: the whole picture padded to a square; every hole pixel its own."""
    h, w = hole.shape
    s = max(h, w)
    box = (-((s - w) // 2), -((s - h) // 2), -((s - w) // 2) + s, -((s - h) // 2) + s)
    return [box], np.where(hole, 0, -1)


def _groups(hole):
    """Holes closer than GROUP_GAP joined: (label [H, W] on hole pixels, 0 elsewhere; hole boxes [n, 4])."""
    near = ndimage.binary_dilation(hole, np.ones((3, 3), bool), iterations=GROUP_GAP // 2)
    lab, _ = ndimage.label(near)
    lab = lab * hole
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(lab)]
    return lab, np.array(boxes).reshape(-1, 4)


def _merge(hboxes, w, h, res, margin):
    """Merge groups until their context boxes are disjoint: (hole boxes [m, 4], lut old group -> new group)."""
    hb, lut = hboxes.copy(), np.arange(len(hboxes))
    while True:
        cb = np.array([_context_box(b, w, h, res, margin) for b in hb]).reshape(-1, 4)
        ov = (cb[:, None, 0] < cb[None, :, 2]) & (cb[None, :, 0] < cb[:, None, 2]) \
            & (cb[:, None, 1] < cb[None, :, 3]) & (cb[None, :, 1] < cb[:, None, 3])
        np.fill_diagonal(ov, False)
        if not ov.any():
            return hb, lut
        i, j = np.argwhere(ov)[0]
        hb[i] = np.minimum(hb[i], hb[j])[:2].tolist() + np.maximum(hb[i], hb[j])[2:].tolist()
        lut = np.where(lut == j, i, lut)
        lut = lut - (lut > j)                                          # renumber after deleting row j
        hb = np.delete(hb, j, 0)


def _tiles(hb, res):
    """A hole box -> (axis 0 = x / 1 = y, tile edges along it): long thin boxes cut into square-ish tiles."""
    bw, bh = hb[2] - hb[0], hb[3] - hb[1]
    axis, long, short = (0, bw, bh) if bw >= bh else (1, bh, bw)
    n = int(np.ceil(long / (ELONGATED * max(short, res))))           # a tile per ELONGATED * max(width, res) px
    return axis, np.linspace(hb[axis], hb[axis + 2], n + 1).round().astype(int)


def _plan(hole, res=RES, margin=MARGIN, trigger=TRIGGER):
    """(boxes, owner int [H, W]: the box filling each hole pixel, -1 elsewhere). See plan_crops."""
    h, w = hole.shape
    if max(h, w) <= trigger:
        return _whole(hole)
    lab, hboxes = _groups(hole)
    if len(hboxes) > MAX_GROUPS:
        return _whole(hole)
    # strips (tiled) are not merged, their boxes would swallow the picture; tiles may overlap other boxes
    # (every box fills its own holes only)
    long = np.array([len(_tiles(b, res)[1]) > 2 for b in hboxes], bool)
    hb, lut = _merge(hboxes[~long], w, h, res, margin)
    hb = np.concatenate([hb, hboxes[long]])
    lut = np.concatenate([lut, len(lut) + np.arange(long.sum())])[np.argsort(np.argsort(long, kind='stable'))]
    ys, xs = np.nonzero(hole)
    gy = np.r_[-1, lut][lab[ys, xs]]                                   # each hole pixel's merged group
    boxes, owner = [], np.full(hole.shape, -1)
    for g, b in enumerate(hb):
        axis, edges = _tiles(b, res)
        sel = gy == g
        k = np.clip(np.searchsorted(edges, (xs, ys)[axis][sel], 'right') - 1, 0, len(edges) - 2)
        owner[ys[sel], xs[sel]] = len(boxes) + k
        for a, z in zip(edges[:-1], edges[1:]):
            tb = list(b)
            tb[axis], tb[axis + 2] = a, z
            boxes.append(_context_box(tb, w, h, res, margin))
    if max(b[2] - b[0] for b in boxes) >= max(h, w):
        return _whole(hole)
    return boxes, owner


def plan_crops(mask, res=RES, margin=MARGIN, trigger=TRIGGER):
    """Square boxes (x0, y0, x1, y1) to fill the holes of mask bool [H, W] (True = hole) in, one per group.

    Holes closer than GROUP_GAP px form a group; its box is its hole box's longer side plus, each side,
    max(side * margin, MIN_CONTEXT) px of context, at least res, placed inside the picture where it fits;
    groups whose boxes overlap are merged. A group longer than ELONGATED * max(its width, res) is cut into
    tiles along its length, a box each (an outpainting strip: crops with the picture beside them). One box,
    the whole picture padded to a square, when its longer side is at most `trigger`, a box would be as large
    as the picture (holes covering most of it), or there are more than MAX_GROUPS groups."""
    return _plan(np.asarray(mask, bool), res, margin, trigger)[0]


# ----------------------------------------------------------------------------- filling

PADS = ('white', 'edge', 'reflect')


def _crop(a, box, pad='reflect', value=0):
    """a [H, W, ...] -> its box, padded where the box reaches outside: 'reflect' (mirrored, repeated if need be),
    'edge' (the border repeated) or 'constant' (value)."""
    h, w = a.shape[:2]
    x0, y0, x1, y1 = box
    inner = a[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pads = [(max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0))] + [(0, 0)] * (a.ndim - 2)
    if not any(sum(p) for p in pads):
        return inner
    return np.pad(inner, pads, mode=pad, constant_values=value) if pad == 'constant' else np.pad(inner, pads, mode=pad)


def _model_inputs(ctx, hole, boxes, res, pad=PAD):
    """Crops of ctx uint8 [H, W, 3] resized to res (antialiased), holes grey (what the model is shown), and their
    holes max-pooled to res (a res pixel touching any hole pixel is a hole): ([B, 3, res, res], [B, 1, res, res]).
    pad: see PAD."""
    grey = torch.tensor(MASK_FILL, dtype=torch.float)[:, None, None] / 255
    if pad != 'reflect':                          # hole pixels white before padding: 'edge' never repeats them
        ctx = np.where(hole[:, :, None], np.uint8(255), ctx)
    imgs, holes = [], []
    for box in boxes:
        if pad == 'reflect':                      # the holes mirrored with the picture: extra holes in the padding
            m, x = _crop(hole, box), _crop(ctx, box)
        else:                                     # the padding is known: white, or the picture's border repeated
            m, x = _crop(hole, box, 'constant', False), _crop(ctx, box, 'constant' if pad == 'white' else pad, 255)
        m = torch.from_numpy(m.copy()).float()[None, None]                         # [1, 1, s, s]
        x = pil_to_tensor01(x)[None]                                               # [1, 3, s, s]
        x = torch.where(m > 0, grey, x)
        imgs.append(F.interpolate(x, (res, res), mode='bicubic', antialias=True).clamp(0, 1))
        holes.append(F.adaptive_max_pool2d(m, res))
    return torch.cat(imgs), torch.cat(holes)


def _feather(own, feather):
    """Blend weight [h, w]: 1 on the hole, a linear ramp to 0 over `feather` px outside, exactly 0 beyond (so
    every farther pixel stays the input's: a Gaussian's tail never reaches 0); distances from the hole."""
    d = ndimage.distance_transform_edt(~own)
    return np.where(d <= feather, (feather + 1 - d) / (feather + 1), 0.0), d


def _blend_box(work, touched, fill, owner, i, box, feather, colour_match):
    """Blend box i's fill [3, s, s] in [0, 1] into work float [H, W, 3] (0-255), in place."""
    h, w = owner.shape
    x0, y0, x1, y1 = box
    ry, rx = slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w))
    f = fill.permute(1, 2, 0).numpy()[ry.start - y0:ry.stop - y0, rx.start - x0:rx.stop - x0] * 255
    own, other = owner[ry, rx] == i, (owner[ry, rx] >= 0) & (owner[ry, rx] != i)
    wgt, d = _feather(own, feather)
    wgt[other] = 0                                                      # another box fills those
    ring = (d > 0) & (d <= COLOUR_RING) & ~other
    region = work[ry, rx]
    if colour_match and ring.any():                                     # the fill's tint off, near the hole
        diff = region[ring] - f[ring]                                   # [n, 3]
        # the median: one wrong block of the fill in the ring cannot tint the whole fill (the mean lets it)
        f = f + (np.median(diff, 0) if colour_match == 'median' else diff.mean(0))
    region += wgt[:, :, None] * (np.clip(f, 0, 255) - region)
    touched[ry, rx] |= wgt > 0


def thin_hole_rule(mask, res=RES, margin=MARGIN, trigger=TRIGGER, token=TOKEN):
    """The holes (connected, 8-neighbour) narrower than one token at their box's scale, bool [H, W]: those Telea
    fills better than the model. Width: 2 * the largest distance inside the hole to its edge - 1 (the widest
    inscribed band, exact for odd widths); one token: token * box side / res px."""
    hole = np.asarray(mask, bool)
    lab, n = ndimage.label(hole, np.ones((3, 3), bool))
    if n == 0:
        return hole.copy()
    boxes, owner = _plan(hole, res, margin, trigger)
    depth, box = np.zeros(n + 1), np.zeros(n + 1, int)                  # per hole (label), 0 unused
    np.maximum.at(depth, lab[hole], ndimage.distance_transform_edt(hole)[hole])
    np.maximum.at(box, lab[hole], owner[hole])
    sides = np.array([b[2] - b[0] for b in boxes])[box]
    return ((2 * depth - 1) < token * sides / res)[lab] & hole


def _split(hole, strategy, res, margin, trigger):
    """(holes for the model, holes for Telea) by fill strategy 'auto' (thin_hole_rule; all to the model without
    OpenCV, a dev dependency), 'model' or 'telea'."""
    if strategy not in ('auto', 'model', 'telea'):
        raise ValueError(f"fill strategy {strategy!r}: use auto, model or telea")
    if strategy == 'telea' and not have_opencv():
        raise ValueError("fill strategy telea needs OpenCV: pip install opencv-python-headless")
    if strategy == 'model' or not have_opencv():                         # auto without OpenCV: all to the model
        return hole, np.zeros_like(hole)
    thin = hole if strategy == 'telea' else thin_hole_rule(hole, res, margin, trigger)
    return hole & ~thin, thin


def _telea(rgb, hole, method='telea'):
    """OpenCV's fill (models/baselines.opencv_fill) of uint8 [H, W, 3] over hole [H, W] -> uint8 [H, W, 3]."""
    x = pil_to_tensor01(rgb)[None]
    out = opencv_fill(x, torch.from_numpy(~hole).float()[None, None], method)[0]
    return out.mul(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def _check_mask(pic, hole):
    hole = np.asarray(hole, bool)
    if hole.shape != pic.size[::-1]:
        raise ValueError(f"mask is {hole.shape[1]}x{hole.shape[0]} but {pic.path} is {pic.size[0]}x{pic.size[1]}")
    return hole


def inpaint_fullsize(image, mask, fill_fn, res=RES, feather=FEATHER, margin=MARGIN, trigger=TRIGGER,
                     strategy='auto', fill_alpha=False, colour_match=COLOUR_MATCH, pad=PAD):
    """Fill the holes of image (PIL of any mode, or Picture) at its own size: a PIL image of its width, height
    and mode (see Picture.restore). mask bool [H, W], True = hole.

    fill_fn(images [B, 3, res, res] in [0, 1], holes [B, 1, res, res] (1 = hole)) -> [B, 3, res, res] in
    [0, 1], called once with every box of plan_crops (none: not called); the crops' holes are grey. Each fill is
    resized back (bicubic), its colour in the COLOUR_RING px around its hole shifted to the picture's there
    (colour_match: 'median' or 'mean' of the differences, None or False: off), and blended: the fill on the hole, a linear ramp over `feather` px outside it, the input,
    byte for byte, beyond. Transparency is composited over white for the model, alpha kept (fill_alpha: the
    holes made opaque, for holes that came from the alpha). strategy: 'auto' (holes thinner than a token go to
    Telea: thin_hole_rule), 'model', 'telea'. pad: a box reaching outside the picture, see PAD."""
    if colour_match not in ('median', 'mean', None, False):
        raise ValueError(f"colour_match {colour_match!r}: use median, mean or None (off)")
    if pad not in PADS:
        raise ValueError(f"pad {pad!r}: use one of {', '.join(PADS)}")
    pic = image if isinstance(image, Picture) else as_picture(image)
    hole = _check_mask(pic, mask)
    rgb = np.asarray(pic.image.convert('RGB'))
    ctx = np.asarray(rgb_over_white(pic.image))                         # what a model trained over white sees
    model_hole, thin = _split(hole, strategy, res, margin, trigger)
    work, touched = ctx.astype(np.float32), thin.copy()
    if model_hole.any():
        boxes, owner = _plan(model_hole, res, margin, trigger)
        fills = fill_fn(*_model_inputs(ctx, model_hole, boxes, res, pad))
        if tuple(fills.shape) != (len(boxes), 3, res, res):
            raise ValueError(f"fill_fn returned {tuple(fills.shape)}, not {(len(boxes), 3, res, res)}")
        fills = fills.detach().float().cpu().clamp(0, 1)
        for i, box in enumerate(boxes):
            s = box[2] - box[0]
            up = F.interpolate(fills[i:i + 1], (s, s), mode='bicubic', antialias=True)[0]
            _blend_box(work, touched, up, owner, i, box, feather, colour_match)
    work = np.clip(np.round(work), 0, 255).astype(np.uint8)
    if thin.any():
        work = _telea(work, thin)
    out = np.where(touched[:, :, None], work, rgb)
    alpha = None if pic.alpha is None or not fill_alpha else np.where(hole, 255, pic.alpha).astype(np.uint8)
    return pic.restore(out, alpha)


def classical_fill(image, mask, method='telea'):
    """OpenCV's fill ('telea' or 'navier_stokes') of image (PIL or Picture) over mask bool [H, W] (True = hole)
    at full size, for comparison: a PIL image of the input's size and mode; pixels off the hole unchanged."""
    pic = image if isinstance(image, Picture) else as_picture(image)
    hole = _check_mask(pic, mask)
    rgb = np.asarray(pic.image.convert('RGB'))
    filled = _telea(np.asarray(rgb_over_white(pic.image)), hole, method)
    return pic.restore(np.where(hole[:, :, None], filled, rgb))


def outpaint_canvas(image, left=0, right=0, top=0, bottom=0):
    """A bigger canvas around image (PIL or Picture, returned as the same kind), the original whole at (left,
    top), and its mask bool (True = the new pixels, to fill with inpaint_fullsize). New pixels are grey (opaque
    when the picture has alpha). One-line ValueError: a negative or no extension, a side above MAX_SIDE."""
    pic = image if isinstance(image, Picture) else None
    src = pic.source if pic else image
    if min(left, right, top, bottom) < 0 or left + right + top + bottom == 0:
        raise ValueError(f"outpaint left={left} right={right} top={top} bottom={bottom}: extensions must be >= 0, "
                         f"one of them > 0")
    w, h = src.size[0] + left + right, src.size[1] + top + bottom
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"outpaint to {w}x{h}: sides must be at most {MAX_SIDE} px")
    if src.mode == 'P':                                                  # a palette has no room for new colours
        src = src.convert('RGBA' if 'transparency' in src.info else 'RGB')
    grey = {'RGB': MASK_FILL, 'RGBA': (*MASK_FILL, 255), 'L': 128, 'LA': (128, 255), '1': 1}.get(src.mode, 0)
    canvas = Image.new(src.mode, (w, h), grey)
    canvas.paste(src, (left, top))
    hole = np.ones((h, w), bool)
    hole[top:top + src.size[1], left:left + src.size[0]] = False
    return (as_picture(canvas, pic.path) if pic else canvas), hole
