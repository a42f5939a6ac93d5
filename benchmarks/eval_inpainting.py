"""FID of inpainting on the test split: mask schedules, a --total-iter / --sweet-spot sweep, and baselines.

    python benchmarks/eval_inpainting.py --out results/eval            # the shipped checkpoints, all runs
    python benchmarks/eval_inpainting.py --out /tmp/e --partial 0.1    # a quick look

Every run decodes the same masked test images with the same per-image seeds (inpainting.py's Inpainter)
and is scored against the ground-truth CSV, whose Inception statistics are computed once. Baselines on the
same masks: the VQGAN's reconstruction of the ground truth (the tokenizer's ceiling), and the masked input
with its holes filled by the mean colour of its known pixels. Writes OUT/fid.json, OUT/fid_table.md and
OUT/fid_sweep.png (FID against T, and against the sweet spot at T = --sweet-spot-t); the images of each run
go to OUT/<run>/.
"""
import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'faster-pytorch-fid'), ROOT]
import inpainting  # noqa: E402
from fid_score_gpu import compute_fid  # noqa: E402
from utils import (PairedTestDataset, atomic_open, atomic_save_image, data_stats, denormalize,  # noqa: E402
                   load_rgb, normalize, pil_to_tensor01, plot_curves, resolve_device, tensor01_to_pil)


def runs(args):
    """(name, inpainting.py flags) of every decoding run (all with --paste-known), or a baseline's name with None.

    Run cosine_T{t} also writes cosine_T{t}_nopaste: the same decoded tokens without the known pixels pasted.
    """
    out = [(f'{m}_T{args.t}', ['--mask-func', m, '--total-iter', str(args.t)]) for m in args.schedules]
    out += [(f'cosine_T{t}', ['--total-iter', str(t)]) for t in args.t_sweep if t != args.t]
    out += [(f'cosine_T{args.sweet_spot_t}_s{s}', ['--total-iter', str(args.sweet_spot_t), '--sweet-spot', str(s)])
            for s in args.sweet_spots if 0 < s < args.sweet_spot_t]
    return out + [('baseline_vqgan_recon', None), ('baseline_vqgan_recon_paste', None), ('baseline_mean_fill', None)]


def write(images, ids, folder):
    for img, i in zip(images, ids.tolist()):
        atomic_save_image(tensor01_to_pil(img), os.path.join(folder, f'image_{i:03d}.png'))


@torch.no_grad()
def baseline(name, model, loader, gt_root, mean, std, device, folder):
    """Images of a baseline run, written to `folder`."""
    for imgs, masks, ids in loader:
        imgs, masks = imgs.to(device), masks.to(device)
        shown = denormalize(imgs, mean, std)                                            # [B, 3, H, W] in [0, 1]
        if name == 'baseline_mean_fill':
            fill = (shown * masks).sum((2, 3), keepdim=True) / masks.sum((2, 3), keepdim=True).clamp(min=1)
            out = masks * shown + (1 - masks) * fill
        else:
            gt = torch.stack([pil_to_tensor01(load_rgb(os.path.join(gt_root, f'image_{i:03d}.png')))
                              for i in ids.tolist()]).to(device)
            tokens = model.vqgan.encode_indices(normalize(gt, mean, std))
            out = denormalize(model.vqgan.decode_indices(tokens), mean, std)
            if name.endswith('_paste'):
                out = masks * shown + (1 - masks) * out
        write(out, ids, folder)


@torch.no_grad()
def decode_run(flags, base, model, loader, mean, std, device, folder, nopaste_folder=None):
    args = inpainting.parse_args(base + flags + ['--paste-known'])
    inp = inpainting.Inpainter(model, args, mean, std)
    for imgs, masks, ids in loader:
        imgs, masks = imgs.to(device), masks.to(device)
        out = inp(imgs, masks, ids, args.mask_func)
        write(inp.final(imgs, masks, out), ids, folder)
        if nopaste_folder:
            write(inp.images(out.tokens), ids, nopaste_folder)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='results/eval')
    p.add_argument('--data', default='data/openclipart', help='dataset in the course layout (prepare_dataset.py)')
    p.add_argument('--MaskGitConfig', default='configs/MaskGit_small.yml')
    p.add_argument('--load-transformer-ckpt-path', default=None, help="default: the config's checkpoint: path")
    p.add_argument('--t', type=int, default=8, help='T of the schedule comparison')
    p.add_argument('--schedules', nargs='+', default=['cosine', 'linear', 'square'], choices=inpainting.SCHEDULES)
    p.add_argument('--t-sweep', type=int, nargs='+', default=[1, 4, 8, 16])
    p.add_argument('--sweet-spot-t', type=int, default=16)
    p.add_argument('--sweet-spots', type=int, nargs='+', default=[4, 8])
    p.add_argument('--partial', type=float, default=1.0)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='auto')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--only', nargs='+', default=None, help='run only these run names')
    a = p.parse_args()
    torch.set_grad_enabled(False)
    base = ['--MaskGitConfig', a.MaskGitConfig, '--device', a.device, '--seed', str(a.seed), '--batch-size',
            str(a.batch_size)]
    if a.load_transformer_ckpt_path:
        base += ['--load-transformer-ckpt-path', a.load_transformer_ckpt_path]
    margs = inpainting.parse_args(base)
    device = resolve_device(None if a.device == 'auto' else a.device)
    model, cfg = inpainting.load_maskgit(margs, device)
    mean, std = data_stats(cfg, 'test')
    data = PairedTestDataset(os.path.join(a.data, 'masked_image'), os.path.join(a.data, 'mask64'), a.partial, mean, std)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=False)
    os.makedirs(a.out, exist_ok=True)
    gt_stats = os.path.join(a.out, 'gt_stats.npz')
    if a.partial < 1:  # the ground truth of the same subset
        gt_src = os.path.join(a.out, 'gt_subset')
        for i in data.indices:
            atomic_save_image(load_rgb(os.path.join(a.data, 'test', f'image_{i:03d}.png')),
                              os.path.join(gt_src, f'image_{i:03d}.png'))
    else:
        gt_src = os.path.join(a.data, 'test_gt.csv')
    results_path = os.path.join(a.out, 'fid.json')
    results = {}
    if os.path.isfile(results_path):  # runs of an earlier call are kept (and --only can add to them)
        with open(results_path) as f:
            results = json.load(f)
    todo = [(n, f) for n, f in runs(a) if a.only is None or n in a.only]
    for name, flags in tqdm(todo, desc='runs'):
        folder = os.path.join(a.out, name)
        scored = [(name, folder, flags and flags + ['--paste-known'])]
        t0 = time.time()
        if flags is None:
            baseline(name, model, loader, os.path.join(a.data, 'test'), mean, std, device, folder)
        else:
            nopaste = folder + '_nopaste' if name == f'cosine_T{a.t}' else None
            decode_run(flags, base, model, loader, mean, std, device, folder, nopaste)
            if nopaste:
                scored.append((name + '_nopaste', nopaste, flags))
        seconds = time.time() - t0
        for run_name, run_folder, run_flags in scored:
            if os.path.isfile(gt_stats):
                fid = compute_fid(run_folder, gt_stats, device=device)
            else:
                fid = compute_fid(run_folder, gt_src, device=device, save_stats_path=gt_stats)
            results[run_name] = dict(fid=fid, flags=' '.join(run_flags) if run_flags else None,
                                     decode_seconds=round(seconds, 1), images=len(data))
            tqdm.write(f"{run_name}: FID {fid:.2f} ({seconds:.0f} s to decode {len(data)} images)")
        with atomic_open(results_path) as f:
            json.dump(results, f, indent=1)
    report(results, a)


def report(results, a):
    rows = ['| run | inpainting.py flags | FID | decode s |', '|---|---|---|---|']
    results = dict(sorted(results.items()))
    rows += [f"| {n} | {r['flags'] or '(baseline)'} | {r['fid']:.2f} | {r['decode_seconds']} |" for n, r in results.items()]
    with atomic_open(os.path.join(a.out, 'fid_table.md')) as f:
        f.write('\n'.join(rows) + '\n')
    print('\n'.join(rows))
    t_pts = sorted((int(n.split('_T')[1]), r['fid']) for n, r in results.items()
                   if n.startswith('cosine_T') and n.split('_T')[1].isdigit())
    s_pts = sorted((int(n.rsplit('_s', 1)[1]), r['fid']) for n, r in results.items()
                   if n.startswith(f'cosine_T{a.sweet_spot_t}_s'))
    full = results.get(f'cosine_T{a.sweet_spot_t}')
    if full:
        s_pts.append((a.sweet_spot_t, full['fid']))
    series = {'FID vs T (full decoding)': ([x for x, _ in t_pts], [y for _, y in t_pts]),
              f'FID vs sweet spot (T={a.sweet_spot_t})': ([x for x, _ in s_pts], [y for _, y in s_pts])}
    plot_curves(series, os.path.join(a.out, 'fid_sweep.png'), title='FID (cosine, --paste-known); lower is better',
                xlabel='steps run')


if __name__ == '__main__':
    main()
