"""Figures written as PNG: training curves and image grids (PIL only, no matplotlib)."""
import math

from PIL import Image, ImageDraw

from dataset import tensor01_to_pil
from utils import atomic_save_image


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
