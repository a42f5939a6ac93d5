"""Near-duplicate images: the small-image distance that the split leak was found with (issue 30).

Each image becomes 32x32 greyscale (antialiased), and two images are near-copies when the RMS difference of those
1,024 values is below a threshold in 0..255 levels. Robust to what separates openclipart's variants (a resize, a
recolour of a detail, a one-pixel shift at 64 px) and cheap: all pairs of 7,000 images are one matrix product.
"""
import numpy as np
import torch
from PIL import Image

SIDE = 32  # images are compared at SIDE x SIDE grey


def small_grey(images):
    """Paths or PIL images -> float32 [N, SIDE*SIDE] grey levels 0..255."""
    def one(x):
        img = Image.open(x) if isinstance(x, str) else x
        with img:
            return np.asarray(img.convert('L').resize((SIDE, SIDE), Image.BOX), dtype=np.float32).ravel()
    return np.stack([one(x) for x in images]) if len(images) else np.zeros((0, SIDE * SIDE), np.float32)


def _rms_blocks(a, b, block=1024):
    """Yields (row offset, RMS distances [rows, len(b)]) of a [Na, D] against b [Nb, D], a block of rows at a time."""
    a, b = torch.from_numpy(a).double(), torch.from_numpy(b).double()  # double: |a|^2 + |b|^2 - 2ab cancels
    bb = (b * b).sum(1)
    for i in range(0, len(a), block):
        x = a[i:i + block]
        d2 = ((x * x).sum(1, keepdim=True) + bb - 2 * x @ b.T).clamp(min=0) / a.shape[1]
        yield i, d2.sqrt()


def nearest_rms(a, b):
    """For each row of a [Na, D], the RMS distance to its nearest row of b [Nb, D] (inf when b is empty)."""
    out = np.full(len(a), np.inf)
    if len(b):
        for i, d in _rms_blocks(a, b):
            out[i:i + len(d)] = d.min(1).values.numpy()
    return out


def near_groups(x, threshold):
    """Group ids [N] of the rows of x [N, D]: connected components of 'RMS distance < threshold' (union-find),
    each group's id the smallest row in it. threshold <= 0: every row its own group."""
    parent = np.arange(len(x))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if threshold > 0:
        for off, d in _rms_blocks(x, x):
            rows, cols = np.nonzero((d < threshold).numpy())
            for i, j in zip(rows + off, cols):
                if i < j:
                    ri, rj = root(i), root(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(len(x))])
