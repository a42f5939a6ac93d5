"""The course's mask-scheduling experiment: FID, hole L1 and hole PSNR of every schedule x --total-iter x sweet spot.

    python benchmarks/sweep_schedules.py                  # val split, cosine/linear/square, T = 8 and 12, s = 1..T
    python benchmarks/sweep_schedules.py --split test --total-iter 8 --out results/sweep_test   # report, once

Every sweet spot of one (schedule, T) comes out of ONE T-step decode: the fill pass of sweet spot s (the most
likely token for everything still masked after step s) runs the same tokens as step s+1's pass, so
decode(completed=True) keeps, after each step, the state completed by that pass's argmax (models/decoding.py).
The sweep costs one decode per schedule and T, not one per cell; cell (M, T, s) is token for token what
`inpainting.py --mask-func M --total-iter T --sweet-spot s --refine 0 --paste-known` decodes (s = T: all steps).
--refine is 0 here whatever the config says: a refine round re-decodes each sweet spot's own result, one decode
per cell. The model decodes under its null class (a conditional model) or plainly; images are scored like
eval_inpainting.py's runs: known pixels pasted back, FID against the split's ground truth, hole L1 (0..255
levels) and PSNR (dB) over the hole pixels, per image. Writes OUT/table.md, OUT/results.json, OUT/sweet_spot.png
(FID against s, a line per schedule and T) and each cell's images in OUT/<schedule>_T<T>/s<s>/ (e.g. for
fid_bootstrap.py: is a difference real?).
"""
import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from benchmarks.common import SPLITS, fid_of, gt_stats, hole_errors, load_images, split_data  # noqa: E402
from dataset import maskgit_stats, tensor01_to_pil  # noqa: E402
from models.decoding import SCHEDULES, DecodeSettings  # noqa: E402
from pipeline import Inpainter, add_model_args, check_inputs, load_maskgit, run_cli  # noqa: E402
from plots import plot_curves  # noqa: E402
from utils import atomic_open, atomic_save_image, check_writable, resolve_device  # noqa: E402


def comma_list(kind):
    """argparse type: 'a,b,c' -> [kind(a), kind(b), kind(c)]."""
    def parse(text):
        try:
            items = [kind(v) for v in text.split(',') if v.strip()]
        except ValueError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return items
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument('--split', choices=SPLITS, default='val', help='val: choose here; test: report the choice once')
    p.add_argument('--data', default='data/openclipart', help='dataset in the course layout (prepare_dataset.py)')
    p.add_argument('--out', default=None, help='output folder (default results/sweep_<split>)')
    p.add_argument('--schedules', type=comma_list(str), default=['cosine', 'linear', 'square'],
                   help=f"mask schedules, comma-separated, of {', '.join(SCHEDULES)} (default cosine,linear,square)")
    p.add_argument('--total-iter', type=comma_list(int), default=[8, 12], metavar='T[,T...]',
                   help='decoding steps T, comma-separated (default 8,12); every sweet spot 1..T of each')
    p.add_argument('--limit-images', type=int, default=None, metavar='N', help="the split's first N images only")
    p.add_argument('--seed', type=int, default=None, help='run seed (default: DecodeSettings.seed)')
    p.add_argument('--choice-temperature', type=float, default=None, help="default: the config's")
    p.add_argument('--temperature', type=float, default=None, help='token sampling (default 0: argmax)')
    a = p.parse_args(argv)
    bad = [m for m in a.schedules if m not in SCHEDULES]
    if bad:
        p.error(f"--schedules: unknown {bad[0]}; choose from {', '.join(SCHEDULES)}")
    if len(set(a.schedules)) < len(a.schedules) or len(set(a.total_iter)) < len(a.total_iter):
        p.error("--schedules and --total-iter: each value once")
    if a.limit_images is not None and a.limit_images < 2:
        p.error(f"--limit-images must be >= 2 (an FID needs two images), got {a.limit_images}")
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    try:  # the flags' own checks; the model's bound on T once it is loaded
        for m in a.schedules:
            for t in a.total_iter:
                cell_settings(a, m, t)
    except ValueError as e:
        p.error(str(e))
    a.out = a.out or os.path.join('results', f'sweep_{a.split}')
    return a


def cell_settings(a, mask_func, total_iter, model_param=None):
    """DecodeSettings of one (schedule, T) decode: refine 0, all steps (every sweet spot comes from its states)."""
    return DecodeSettings.from_config(model_param, total_iter=total_iter, mask_func=mask_func, refine=0,
                                      sweet_spot=0, seed=a.seed, choice_temperature=a.choice_temperature,
                                      temperature=a.temperature)


def cell_folder(out, mask_func, total_iter, s):
    return os.path.join(out, f'{mask_func}_T{total_iter}', f's{s:02d}')


@torch.no_grad()
def decode_all_sweet_spots(inp, imgs, masks, ids):
    """[T, B, 3, H, W] in [0, 1]: the images of sweet spots 1..T of a batch, known pixels pasted back, from one
    decode. inp: a pipeline.Inpainter with refine 0."""
    out = inp(imgs, masks, ids, completed=True)
    return torch.stack([inp.paste(imgs, masks, inp.images(tokens)) for tokens in out.completed])


def check_cells(a, names):
    """Images an earlier call left in a cell folder that this one will not write would enter its FID: refused."""
    for m in a.schedules:
        for t in a.total_iter:
            for s in range(1, t + 1):
                d = cell_folder(a.out, m, t, s)
                other = sorted(set(os.listdir(d)) - set(names)) if os.path.isdir(d) else []
                if other:
                    raise ValueError(f"--out {a.out}: {d} holds {len(other)} image(s) this sweep will not write "
                                     f"(e.g. {other[0]}, an earlier sweep's?): use another --out")


def table(res):
    """Markdown: a row per cell, the best FID of each (schedule, T) in bold."""
    best = {}
    for c in res['cells']:
        k = (c['schedule'], c['total_iter'])
        best[k] = min(best.get(k, float('inf')), c['fid'])
    rows = [f"Split {res['split']} ({res['images']} images), {res['config']} ({res['checkpoint']}), refine 0, "
            f"--paste-known, seed {res['seed']}\n",
            '| schedule | T | sweet spot | transformer passes | FID | hole L1 | hole PSNR (dB) | images |',
            '|---|---|---|---|---|---|---|---|']
    for c in res['cells']:
        fid = f"{c['fid']:.2f}"
        fid = f"**{fid}**" if c['fid'] == best[(c['schedule'], c['total_iter'])] else fid
        rows.append(f"| {c['schedule']} | {c['total_iter']} | {c['sweet_spot']} | {c['passes']} | {fid} | "
                    f"{c['hole_l1']:.2f} | {c['hole_psnr']:.2f} | {c['images']} |")
    return '\n'.join(rows) + '\n'


@torch.no_grad()
def run(a):
    check_writable(a.out, '--out', folder=True)
    device = resolve_device(a.device)
    model, cfg = load_maskgit(a, device)
    mp = cfg['model_param']
    settings = {(m, t): cell_settings(a, m, t, mp) for m in a.schedules for t in a.total_iter}  # the model's bound
    mean, std = maskgit_stats(cfg)
    data, gt_files = split_data(a.data, a.split, mean, std, limit=a.limit_images)
    check_inputs(data, model.vqgan.img_resolution)
    names = [os.path.basename(f) for f in data.images]
    check_cells(a, names)
    gt_all = load_images(gt_files)                                               # [n, 3, H, W]
    csv = os.path.join(a.data, f'{a.split}_gt.csv') if a.limit_images is None else None  # the course's truth
    stats = gt_stats(a.out, a.split, gt_files, gt_all, csv, device)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=False)
    cells = []
    for (m, t), st in settings.items():
        inp = Inpainter(model, st, mean, std, amp=a.amp, paste_known=True)
        l1s, psnrs, pos, t0 = [[] for _ in range(t)], [[] for _ in range(t)], 0, time.time()
        for imgs, masks, ids in tqdm(loader, desc=f'{m} T={t}', unit='batch'):
            imgs, masks = imgs.to(device), masks.to(device)
            gt = gt_all[pos:pos + len(ids)].to(device)
            out = decode_all_sweet_spots(inp, imgs, masks, ids)                  # [T, B, 3, H, W]
            for s in range(1, t + 1):
                for x, name in zip(out[s - 1], names[pos:pos + len(ids)]):
                    atomic_save_image(tensor01_to_pil(x), os.path.join(cell_folder(a.out, m, t, s), name))
                l1, psnr = hole_errors(out[s - 1].float(), gt, masks)
                l1s[s - 1].append(l1.cpu())
                psnrs[s - 1].append(psnr.cpu())
            pos += len(ids)
        decode_seconds = time.time() - t0
        for s in range(1, t + 1):
            t1 = time.time()
            fid = fid_of(cell_folder(a.out, m, t, s), stats, device)
            cells.append(dict(schedule=m, total_iter=t, sweet_spot=s, passes=s + (s < t), fid=fid,
                              hole_l1=torch.cat(l1s[s - 1]).mean().item(),
                              hole_psnr=torch.cat(psnrs[s - 1]).mean().item(), images=len(data),
                              decode_seconds=round(decode_seconds, 1), fid_seconds=round(time.time() - t1, 1)))
            tqdm.write(f"{m} T={t} s={s}: FID {fid:.2f}, hole L1 {cells[-1]['hole_l1']:.2f}, "
                       f"hole PSNR {cells[-1]['hole_psnr']:.2f} dB")
        res = write_outputs(a, cfg, settings, cells, len(data))  # after every setting: an interrupted sweep keeps it
    print(table(res))
    print(f"wrote {os.path.join(a.out, 'table.md')}, results.json, sweet_spot.png")
    return res


def write_outputs(a, cfg, settings, cells, n):
    """results.json, table.md and sweet_spot.png of the cells so far (settings finished: their lines)."""
    ckpt = a.load_transformer_ckpt_path or (cfg.get('checkpoint') or {}).get('path')
    res = dict(split=a.split, data=a.data, images=n, config=a.MaskGitConfig, checkpoint=ckpt,
               seed=next(iter(settings.values())).seed, refine=0, cells=cells)
    with atomic_open(os.path.join(a.out, 'results.json')) as f:
        json.dump(res, f, indent=1)
    with atomic_open(os.path.join(a.out, 'table.md')) as f:
        f.write(table(res))
    done = [(m, t) for m, t in settings if any((c['schedule'], c['total_iter']) == (m, t) for c in cells)]
    series = {f"{m} T={t}": ([c['sweet_spot'] for c in cells if (c['schedule'], c['total_iter']) == (m, t)],
                             [c['fid'] for c in cells if (c['schedule'], c['total_iter']) == (m, t)])
              for m, t in done}
    plot_curves(series, os.path.join(a.out, 'sweet_spot.png'), xlabel='sweet spot s (steps, then argmax fill)',
                ylabel='FID', title=f"FID against sweet spot: {a.split} split, {n} images, "
                      f"{os.path.basename(a.MaskGitConfig)}")
    return res


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
