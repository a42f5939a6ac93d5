"""The model's fill or a classical one, chosen per hole by a rule: which rule wins, measured on a split.

    python benchmarks/eval_inpainting.py --split val --runs ours= --baselines telea --out results/hybrid_val
    python benchmarks/hybrid_rule.py --data data/openclipart --split val \
        --ours results/hybrid_val/ours --classical results/hybrid_val/telea --out results/hybrid_val/rule

A hole is an 8-connected component of a mask's hole pixels. Two measures of each (features of the input only):
  width    the widest band inside it, 2 * (largest distance to its edge) - 1 px (fullsize.thin_hole_rule's
           measure): under one token (4 px at 64x64) the model cannot draw it, a classical fill can;
  flatness the standard deviation (0..255 levels, mean over R, G, B) of the known pixels in a RING px band around
           it: a flat surround is filled well by diffusion.
Rule (w, f): the classical fill where width < w or flatness < f, the model's elsewhere (w = f = 0: the model
everywhere). Every cell of the --widths x --flatness grid is scored by hole L1 and PSNR (cheap); FID, which needs
Inception features of the composed images, for the model, the classical fill and the --fid-cells best cells by
hole L1. The chosen cell: the lowest FID among those no worse than the model in hole L1 (choose on val; measure
test once). Writes OUT/results.json, OUT/table.md and OUT/hybrid.png (input | ours | classical | hybrid | truth,
holes the rule sends to the classical fill outlined).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from benchmarks.common import FID_DIMS, SPLITS, gt_stats, hole_errors, load_images  # noqa: E402
from dataset import list_images, load_mask  # noqa: E402
from fid import score as fs  # noqa: E402
from plots import save_grid  # noqa: E402
from utils import atomic_open  # noqa: E402

RING = 3  # px of known pixels around a hole whose spread measures flatness


def hole_features(keep, images, ring=RING):
    """Per-pixel hole id and per-hole (width, flatness) of a batch: keep bool [N, H, W] (True = known), images
    float [N, 3, H, W] in [0, 1]. -> (ids int [N, H, W]: 0 known, else a hole's global id 1..K; width [K + 1],
    flatness [K + 1], entry 0 unused). A ring pixel near two holes counts for the one with the larger id."""
    ids, widths, flats, base = np.zeros(keep.shape, np.int64), [0.0], [0.0], 0
    grey_levels = images.numpy() * 255
    for i, (k, px) in enumerate(zip(keep, grey_levels)):
        hole = ~k
        lab, n = ndimage.label(hole, np.ones((3, 3), bool))
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        depth = ndimage.maximum(ndimage.distance_transform_edt(hole), lab, idx)
        ring_lab = np.where(k, ndimage.maximum_filter(lab, size=2 * ring + 1), 0)  # known pixels near a hole
        std = np.stack([ndimage.standard_deviation(c, ring_lab, idx) for c in px]).mean(0)  # [n]
        ids[i] = np.where(hole, lab + base, 0)
        widths += list(2 * np.asarray(depth) - 1)
        flats += list(np.nan_to_num(std, nan=0.0))  # a hole with no known pixel near: flat 0 (never happens)
        base += n
    return ids, np.asarray(widths), np.asarray(flats)


def compose(ours, classical, ids, classical_hole):
    """Hybrid images [N, 3, H, W]: classical where the pixel's hole is sent to the classical fill.
    classical_hole bool [K + 1] per hole id (entry 0: known pixels, ours = classical there)."""
    pick = torch.from_numpy(classical_hole[ids])[:, None]                   # [N, 1, H, W]
    return torch.where(pick, classical, ours)


def fid_of_images(images, stats, model):
    """FID of float images [N, 3, H, W] in [0, 1] (as their PNGs hold them) against a statistics file."""
    u8 = (images * 255 + 0.5).floor().to(torch.uint8)
    mu, sigma = fs.activation_statistics(u8, model, desc='hybrid')
    return fs.frechet_distance(mu, sigma, *fs.load_stats(stats, FID_DIMS))


def folder_images(folder, names):
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise SystemExit(f"error: {folder} has no {missing[0]} (run eval_inpainting.py on this split first)")
    return load_images([os.path.join(folder, n) for n in names])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='data/openclipart')
    p.add_argument('--split', choices=list(SPLITS), default='val')
    p.add_argument('--ours', required=True, help="the model's inpainted images of the split (eval_inpainting.py)")
    p.add_argument('--classical', required=True, help='the classical fill of the same images (e.g. its telea/)')
    p.add_argument('--out', required=True)
    p.add_argument('--widths', type=float, nargs='+', default=[0, 2, 3, 4, 5, 6, 8],
                   help='width thresholds w (px): holes narrower go to the classical fill')
    p.add_argument('--flatness', type=float, nargs='+', default=[0, 2, 4, 8, 12, 16],
                   help='flatness thresholds f (levels): holes with a flatter surround go to the classical fill')
    p.add_argument('--fid-cells', type=int, default=4, help='cells (best hole L1 first) also scored by FID')
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    masked_dir, mask_dir, gt_dir = (os.path.join(a.data, d) for d in SPLITS[a.split])
    gt_files = list_images(gt_dir, what='ground-truth image')
    names = [os.path.basename(f) for f in gt_files]
    masks = [os.path.join(mask_dir, n.replace('image_', 'mask_')) for n in names]
    gt = load_images(gt_files)                                                 # [N, 3, H, W]
    ours, classical = folder_images(a.ours, names), folder_images(a.classical, names)
    keep = torch.cat([load_mask(m) for m in masks]).numpy() > 0.5            # [N, H, W] True = known
    keep_t = torch.from_numpy(keep)[:, None].float()                           # [N, 1, H, W] 1 = keep
    known = load_images([os.path.join(masked_dir, n) for n in names])
    ids, width, flat = hole_features(keep, known)
    os.makedirs(a.out, exist_ok=True)
    stats = gt_stats(a.out, a.split, gt_files, gt, os.path.join(a.data, f'{a.split}_gt.csv'))

    cells = {}
    for w in a.widths:
        for f in a.flatness:
            send = (width < w) | (flat < f)
            send[0] = False
            l1, psnr = hole_errors(compose(ours, classical, ids, send), gt, keep_t)
            cells[f'w{w:g}_f{f:g}'] = dict(width=w, flatness=f, holes_classical=float(send[1:].mean()),
                                           hole_l1=l1.mean().item(), hole_psnr=psnr.mean().item())
    l1o, psnro = hole_errors(ours, gt, keep_t)
    l1c, psnrc = hole_errors(classical, gt, keep_t)
    rows = {'ours': dict(hole_l1=l1o.mean().item(), hole_psnr=psnro.mean().item(), holes_classical=0.0),
            'classical': dict(hole_l1=l1c.mean().item(), hole_psnr=psnrc.mean().item(), holes_classical=1.0)}
    best = sorted((k for k in cells if cells[k]['holes_classical'] > 0), key=lambda k: cells[k]['hole_l1'])
    model = fs.fast_inception(FID_DIMS, a.device)
    for k in tqdm(['ours', 'classical'] + best[:a.fid_cells], desc='FID'):
        row = rows.get(k) or cells[k]
        img = ours if k == 'ours' else classical if k == 'classical' else compose(
            ours, classical, ids, np.r_[False, ((width < row['width']) | (flat < row['flatness']))[1:]])
        row['fid'] = fid_of_images(img, stats, model)
    ok = [k for k in cells if 'fid' in cells[k] and cells[k]['hole_l1'] <= rows['ours']['hole_l1']]
    chosen = min(ok, key=lambda k: cells[k]['fid']) if ok else None
    result = dict(split=a.split, images=len(names), holes=len(width) - 1, ring=RING, ours=a.ours,
                  classical=a.classical, rows=rows, cells=cells, chosen=chosen)
    with atomic_open(os.path.join(a.out, 'results.json')) as fh:
        json.dump(result, fh, indent=1)
    fmt = lambda v, d=2: '' if v is None else f'{v:.{d}f}'
    lines = [f"{a.split}, {len(names)} images, {len(width) - 1} holes; chosen: {chosen or 'none (no cell wins)'}",
             '', '| fill | width < | flatness < | holes to classical | FID | hole L1 | hole PSNR |', '|---|---|---|---|---|---|---|']
    for k, r in list(rows.items()) + sorted(cells.items(), key=lambda kv: kv[1]['hole_l1']):
        lines.append(f"| {k} | {r.get('width', '')} | {r.get('flatness', '')} | {100 * r['holes_classical']:.1f} % | "
                     f"{fmt(r.get('fid'))} | {r['hole_l1']:.2f} | {r['hole_psnr']:.2f} |")
    with atomic_open(os.path.join(a.out, 'table.md')) as fh:
        fh.write('\n'.join(lines) + '\n')
    print('\n'.join(lines[:2 + 2 + 2 + a.fid_cells + 6]))
    if chosen:
        send = np.r_[False, ((width < cells[chosen]['width']) | (flat < cells[chosen]['flatness']))[1:]]
        hyb, n = compose(ours, classical, ids, send), 8
        outline = torch.from_numpy(send[ids])[:n, None].float()               # [n, 1, H, W] holes sent away
        edge = outline - torch.nn.functional.max_pool2d(-outline, 3, 1, 1).neg()  # their border pixels
        mark = lambda x: torch.where(edge.bool(), torch.tensor([0., 1., 0.])[:, None, None], x)
        grid = torch.stack([known[:n], ours[:n], classical[:n], mark(hyb[:n]), gt[:n]], 1).flatten(0, 1)
        save_grid(grid, os.path.join(a.out, 'hybrid.png'), nrow=5, scale=2,
                  col_labels=['input', 'ours', 'classical', f'hybrid {chosen}', 'truth'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
