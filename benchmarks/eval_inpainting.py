"""Inpainting quality against what a user would pick instead: FID and hole-only L1 / PSNR, one table.

    python benchmarks/eval_inpainting.py --split val --out results/eval_val     # choose settings here
    python benchmarks/eval_inpainting.py --split test --out results/eval_test \
        --runs ours=--total-iter,8 --baselines all                               # once per shipped candidate

Every run fills the same masked images (the split's fixed masks, as prepare_dataset.py wrote them) and is scored
against the split's ground truth, whose Inception statistics are computed once per output folder and dataset
(OUT/gt_stats_<split>_<n>_<fingerprint>.npz: a rebuilt dataset gets its own). --split holdout: the held-out
categories' split of prepare_dataset.py (DATA/holdout_masked_image, ...).
Decoding runs are the Inpainter (pipeline.py) of inpainting.py with `--paste-known` and the run's decoding flags. Baselines on the
same masks: OpenCV Telea and Navier-Stokes (radius 3), the mean known colour, and the tokenizer alone:
`vqgan_recon` (the whole ground truth through encode/decode: rFID) and `vqgan_recon_paste` (the same with
the known pixels pasted: the ceiling of any transformer on this tokenizer). Hole L1 (0..255 levels) and
PSNR (dB, 0..1 range) are over the hole pixels only, averaged per image. Writes OUT/results.json,
OUT/table.md and OUT/compare.png (rows: masked input | each run | ground truth); images in OUT/<run>/.
With --labels (a conditional checkpoint), every decoding run of the call gives each image its true class from
the dataset's labels.json ("inpainting FID with the true class"); baselines are unaffected.
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
import pipeline  # noqa: E402
from benchmarks.common import FID_DIMS, SPLITS, fid_of, gt_stats, hole_errors, load_images, split_data  # noqa: E402
from dataset import denormalize, maskgit_stats, tensor01_to_pil  # noqa: E402
from fid.score import small_set_note  # noqa: E402
from models.baselines import have_opencv, mean_fill, opencv_fill, tokenizer_recon  # noqa: E402
from plots import save_grid  # noqa: E402
from utils import atomic_open, atomic_save_image, resolve_device  # noqa: E402

BASELINES = ('telea', 'navier_stokes', 'mean_fill', 'vqgan_recon', 'vqgan_recon_paste')
COMPARE_ROWS = 8


def baseline(name, model, imgs, masks, gt, mean, std):
    """One batch of a baseline, images in [0, 1]."""
    shown = denormalize(imgs, mean, std)                                                # [B, 3, H, W]
    if name in ('telea', 'navier_stokes'):
        return opencv_fill(shown, masks, name)
    if name == 'mean_fill':
        return mean_fill(shown, masks)
    out = tokenizer_recon(model.vqgan, gt, mean, std)
    return masks * shown + (1 - masks) * out if name == 'vqgan_recon_paste' else out


def parse_runs(specs, seed=None):
    """'NAME=--flag,value,...' -> {name: (flags as written, namespace)}, each spec parsed once by a parser of
    inpainting.py's decoding flags alone; `seed` is the default of runs without --seed. Values are checked
    here (over the defaults), before anything is loaded; the config's fill in once it is read."""
    runs = {}
    for spec in specs:
        name, _, flags = spec.partition('=')
        if not name or not name.replace('_', '').replace('.', '').replace('-', '').isalnum():
            raise SystemExit(f"--runs: bad run name in '{spec}' (use letters, digits, _ . -)")
        if name in runs:
            raise SystemExit(f"--runs: run name {name} given twice")
        flags = [f for f in flags.split(',') if f]
        parser = pipeline.add_decoding_args(argparse.ArgumentParser(prog=f'--runs {name}', add_help=False))
        ns = parser.parse_args(flags)
        ns.seed = seed if ns.seed is None else ns.seed
        try:
            pipeline.decoding_settings(ns)
        except ValueError as e:
            parser.error(str(e))
        runs[name] = (' '.join(flags), ns)
    return runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--split', choices=SPLITS, default='val',
                   help='val: every choice is made here; test: report; holdout: the held-out categories')
    p.add_argument('--out', default=None, help='output folder (default results/eval_<split>)')
    p.add_argument('--data', default='data/openclipart', help='dataset in the course layout (prepare_dataset.py)')
    p.add_argument('--MaskGitConfig', default=pipeline.DEFAULT_CONFIG)
    p.add_argument('--load-transformer-ckpt-path', default=None, help="default: the config's checkpoint: path")
    p.add_argument('--vqgan-ckpt', default=None, help="default: the config's VQ_CKPT_path")
    p.add_argument('--runs', nargs='*', default=['T8=--total-iter,8', 'T1=--total-iter,1'],
                   metavar='NAME=FLAGS', help="decoding runs: inpainting.py's decoding flags joined by commas")
    p.add_argument('--baselines', nargs='*', default=['all'], help=f"any of {', '.join(BASELINES)}, or all")
    p.add_argument('--partial', type=float, default=1.0, help='the first fraction of the split')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='auto')
    p.add_argument('--seed', type=int, default=None, help="run seed of runs without their own --seed")
    p.add_argument('--labels', default=None, metavar='JSON',
                   help="condition every decoding run on each image's true class: a labels.json as prepare_dataset.py "
                        "writes it (e.g. DATA/labels.json), its keys of --split matched by image number (a "
                        "conditional checkpoint; --cfg-scale in a run guides towards it); baselines are unaffected")
    a = p.parse_args(argv)
    a.baselines = list(BASELINES) if a.baselines == ['all'] else a.baselines
    bad = [b for b in a.baselines if b not in BASELINES]
    if bad:
        p.error(f"--baselines: unknown {bad[0]}; choose from {', '.join(BASELINES)} or all")
    if {'telea', 'navier_stokes'} & set(a.baselines) and not have_opencv():
        p.error("the OpenCV baselines need opencv-python-headless: pip install -r requirements-dev.txt")
    a.out = a.out or os.path.join('results', f'eval_{a.split}')
    return a


def setup(a, runs, device):
    """(model, decoding settings per run, mean, std, split data, gt files, labels): every check before any output."""
    model, cfg = pipeline.load_maskgit(a, device, transformer=bool(runs))  # baselines alone: no transformer
    settings = {}
    for name, (_, ns) in runs.items():  # the config's values and the model's bounds on the run's flags
        try:
            settings[name] = pipeline.decoding_settings(ns, cfg['model_param'])
        except ValueError as e:
            raise SystemExit(f"error: --runs {name}: {e}")
    mean, std = maskgit_stats(cfg)
    try:
        data, gt_files = split_data(a.data, a.split, mean, std, a.partial)
        for s in settings.values():  # a run's --cfg-scale and --labels refused in one line on an unconditional model
            pipeline.class_label(model, s, None, a.MaskGitConfig)
        label = a.labels and pipeline.image_labels(model, a.labels, SPLITS[a.split][2], data, a.MaskGitConfig)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    return model, settings, mean, std, data, gt_files, label


def fill_split(name, inp, model, loader, gt_all, folder, mean, std, device):
    """Fill every image of the split with one run (`inp`, an Inpainter) or baseline (inp None), write them to
    `folder`; (per-image hole L1 [N], hole PSNR [N], the first batch's masked inputs and outputs)."""
    l1s, psnrs, first, pos = [], [], None, 0
    for imgs, masks, ids in loader:
        imgs, masks = imgs.to(device), masks.to(device)
        gt = gt_all[pos:pos + len(ids)].to(device)
        out = inp.final(imgs, masks, inp(imgs, masks, ids)) if inp else baseline(name, model, imgs, masks, gt, mean, std)
        for x, f in zip(out, loader.dataset.images[pos:pos + len(ids)]):
            atomic_save_image(tensor01_to_pil(x), os.path.join(folder, os.path.basename(f)))
        pos += len(ids)
        l1, psnr = hole_errors(out.float(), gt, masks)
        l1s.append(l1.cpu())
        psnrs.append(psnr.cpu())
        if first is None:
            first = (denormalize(imgs, mean, std)[:COMPARE_ROWS].cpu(), out[:COMPARE_ROWS].float().cpu())
    return torch.cat(l1s), torch.cat(psnrs), first


@torch.no_grad()  # not set_grad_enabled(False): a caller's (a test's) grad mode survives
def main(argv=None):
    a = parse_args(argv)
    runs = parse_runs(a.runs, a.seed)
    device = resolve_device(None if a.device == 'auto' else a.device)
    model, settings, mean, std, data, gt_files, label = setup(a, runs, device)
    gt_all = load_images(gt_files)                                                      # [N, 3, H, W]
    try:
        stats = gt_stats(a.out, a.split, gt_files, gt_all, os.path.join(a.data, f'{a.split}_gt.csv')
                         if a.partial == 1 else None, device)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if a.partial < 1:  # the subset's ground truth as a folder, e.g. for fid_bootstrap.py --gt
        for f, x in zip(gt_files, gt_all):
            atomic_save_image(tensor01_to_pil(x), os.path.join(a.out, 'gt', os.path.basename(f)))
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=False)
    results_path = os.path.join(a.out, 'results.json')
    results = {}
    if os.path.isfile(results_path):  # earlier calls' runs are kept, so a sweep can be extended
        with open(results_path) as f:
            results = json.load(f)
    shown, masked = {}, None
    todo = list(settings.items()) + [(b, None) for b in a.baselines]
    for name, run_settings in tqdm(todo, desc=f'runs on {a.split}'):
        folder, t0 = os.path.join(a.out, name), time.time()
        inp = run_settings and pipeline.Inpainter(model, run_settings, mean, std, paste_known=True, label=label)
        l1, psnr, (masked, shown[name]) = fill_split(name, inp, model, loader, gt_all, folder, mean, std, device)
        seconds = time.time() - t0
        fid = fid_of(folder, stats, device)
        results[name] = dict(fid=fid, hole_l1=l1.mean().item(), hole_psnr=psnr.mean().item(),
                             flags=runs[name][0] if run_settings else None, labels=a.labels if run_settings else None,
                             split=a.split, images=len(data), seconds=round(seconds, 1))
        tqdm.write(f"{name}: FID {fid:.2f}, hole L1 {results[name]['hole_l1']:.2f}, "
                   f"hole PSNR {results[name]['hole_psnr']:.2f} dB ({seconds:.0f} s)")
        with atomic_open(results_path) as f:
            json.dump(results, f, indent=1)
    report(results, a.out)
    if masked is not None:  # rows: masked input | each run of this call | ground truth
        cols = [masked] + list(shown.values()) + [gt_all[:len(masked)]]
        save_grid(torch.stack(cols, 1).flatten(0, 1), os.path.join(a.out, 'compare.png'), nrow=len(cols), scale=2,
                  col_labels=['masked input'] + list(shown) + ['ground truth'])
        print(f"columns of {os.path.join(a.out, 'compare.png')}: input | {' | '.join(shown)} | ground truth")


def report(results, out_dir):
    rows = ['| run | flags (with --paste-known) | FID | hole L1 | hole PSNR (dB) | images | split |',
            '|---|---|---|---|---|---|---|']
    for n, r in sorted(results.items(), key=lambda kv: kv[1]['fid']):
        flags = '(baseline)' if r['flags'] is None else r['flags'] or '(defaults)'
        flags += ' (true classes)' if r.get('labels') else ''   # results of older calls have no labels key
        rows.append(f"| {n} | {flags} | {r['fid']:.2f} | {r['hole_l1']:.2f} | "
                    f"{r['hole_psnr']:.2f} | {r['images']} | {r['split']} |")
    notes = {small_set_note(r['images'], FID_DIMS) for r in results.values()} - {None}
    rows += [''] + sorted(notes) if notes else []   # e.g. "note: FID of 747 images, fewer than the 2048 features ..."
    with atomic_open(os.path.join(out_dir, 'table.md')) as f:
        f.write('\n'.join(rows) + '\n')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
