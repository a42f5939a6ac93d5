"""Figures written as PNG: training curves and image grids (PIL only, no matplotlib)."""
import math

from PIL import Image, ImageDraw

from dataset import tensor01_to_pil
from utils import atomic_save_image


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # matplotlib's tab10


def plot_curves(series, path, title='', xlabel='epoch', size=(640, 400), ylabel=''):
    """Line plot of {name: (xs, ys)} drawn with PIL (no matplotlib), written atomically as PNG. Integer ticks
    when every x is an integer; ylabel is written above the y axis."""
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
        for i in range(5):  # grid and y tick labels
            fy = y0 + (y1 - y0) * i / 4
            py = to_px(x0, fy)[1]
            d.line([(left, py), (w - right, py)], fill=(230, 230, 230))
            d.text((4, py - 6), f"{fy:.3g}", fill='black')
        whole = all(float(p[0]).is_integer() for p in pts)
        xt = range(int(x0), int(x1) + 1, max(1, math.ceil((x1 - x0) / 12))) if whole else \
            [x0 + (x1 - x0) * i / 4 for i in range(5)]
        for fx in xt:
            d.text((to_px(fx, y0)[0] - 8, h - bottom + 6), f"{fx:.3g}", fill='black')
        for k, (name, (xs, ys)) in enumerate(series.items()):
            c = COLOURS[k % len(COLOURS)]
            line = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
            if len(line) > 1:
                d.line(line, fill=c, width=2)
            for px, py in line:
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
            d.text((w - right - 120, top + 4 + 14 * k), name, fill=c)
    d.rectangle([left, top, w - right, h - bottom], outline='black')
    d.text((left, 8), title, fill='black')
    d.text((w // 2 - 15, h - 16), xlabel, fill='black')
    d.text((4, top - 14), ylabel, fill='black')
    atomic_save_image(img, path)


def save_grid(images, path, nrow, col_labels=None, row_labels=None, scale=1):
    """[N, 3, H, W] in [0, 1] -> one PNG grid (2-pixel white borders), written atomically. col_labels /
    row_labels: a header text above each column / left of each row (a readable figure, not a bare grid);
    scale: nearest-neighbour enlargement first, so 64-pixel tiles leave room for their labels."""
    from torchvision.utils import make_grid
    grid = tensor01_to_pil(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    if col_labels or row_labels:
        grid = labelled(grid, images.shape[-1] * scale + 2 * scale, col_labels or [], row_labels or [])
    atomic_save_image(grid, path)


def labelled(grid, step, col_labels, row_labels):
    """The grid PIL image with a header row of col_labels and a left column of row_labels (tiles `step` apart);
    a header wider than its column wraps at spaces."""
    col_labels = [wrap(t, max(1, (step - 4) // 6)) for t in col_labels]
    top = 14 * max([1] + [len(t.split('\n')) for t in col_labels]) if col_labels else 0
    left = 7 * max([len(t) for t in row_labels] + [0]) + 8 if row_labels else 0
    out = Image.new('RGB', (grid.width + left, grid.height + top), 'white')
    out.paste(grid, (left, top))
    d = ImageDraw.Draw(out)
    for j, t in enumerate(col_labels):
        d.multiline_text((left + j * step + 3, 2), t, fill='black', spacing=2)
    for i, t in enumerate(row_labels):
        d.text((3, top + i * step + step // 2 - 6), t, fill='black')
    return out


def wrap(text, width):
    """text with newlines at spaces so that no line is longer than width characters (where words allow)."""
    lines = []
    for word in text.split(' '):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += ' ' + word
        else:
            lines.append(word)
    return '\n'.join(lines)
