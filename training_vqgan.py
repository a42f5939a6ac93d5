"""Train the VQGAN tokenizer: L1 + L2 reconstruction, codebook/commitment loss, PatchGAN after --disc-start.

    python training_vqgan.py --config configs/VQGAN_small.yml --threads 1
    python training_vqgan.py --config configs/VQGAN_small.yml --resume runs/vqgan_small/last.pt
    python training_vqgan.py --export runs/vqgan_small/best.pt --out runs/vqgan_small/export.pt

The run folder gets log.csv (one validation row per epoch), recon_epochNNN.png (originals above
reconstructions), last.pt and best.pt (highest validation PSNR). Checkpoints are dicts whose `model`
entry is the plain state_dict the course's loader expects; --export writes that alone in fp16.
A fresh run into a folder holding an earlier run's files is refused unless --resume or --overwrite.
"""
import argparse
import csv
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import training
from dataset import ImageDataset, data_stats, denormalize
from models.discriminator import Discriminator
from models.vqgan import VQGAN, model_state_dict
from plots import save_grid
from configs_schema import NONNEG, NONNEG_INT, POS_INT, VQGAN_CONFIG, Key, check_flags, validate
# the step and its parts live in training.py (the benchmarks time them); imported under the names this loop calls
from training import NonFiniteLoss, amp_setup, optimiser_step
from training import gradient_loss  # noqa: F401  (tests/test_vqgan.py reaches it here)
from training import vqgan_train_step as train_step
from utils import (check_writable, claim_run_dir, export_checkpoint, load_checkpoint, load_config,
                   load_state_dict_checked, lr_factor, remove_files, resolve_device, save_checkpoint, seed_everything)

LR_SCHEDULES = ('constant', 'cosine')  # cosine: from learning_rate to 0 over the run's epochs, set every step
# flags that override the train: key of their name (the others are this run's: --partial, --seed, --device ...)
TRAIN_FLAGS = ('batch_size', 'accum_grad', 'epochs', 'learning_rate', 'disc_start', 'run_dir', 'lr_schedule',
               'grad_weight', 'hflip')
RUN_FILES = ('last.pt', 'best.pt', 'log.csv', 'recon_epoch*.png')  # what a run writes in its folder
FLAG_RULES = dict(batch_size=POS_INT, accum_grad=POS_INT, epochs=POS_INT, learning_rate=NONNEG,
                  disc_start=NONNEG_INT, grad_weight=NONNEG, max_steps=POS_INT, max_minutes=NONNEG,
                  partial=Key('number', lo=0, lo_open=True, hi=1), num_workers=NONNEG_INT, threads=POS_INT)
CSV_FIELDS = ['epoch', 'step', 'train_loss', 'train_rec', 'train_q', 'val_l1', 'val_psnr', 'usage_pct',
              'perplexity', 'seconds']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/VQGAN_small.yml')
    p.add_argument('--train-path', '--train_d_path', dest='train_path', default=None,
                   help="default: the config's data.train_path")
    p.add_argument('--val-path', '--val_d_path', dest='val_path', default=None,
                   help="default: the config's data.val_path")
    p.add_argument('--partial', type=float, default=1.0)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--accum-grad', type=int, default=None)
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--learning-rate', type=float, default=None)
    p.add_argument('--disc-start', type=int, default=None, help='optimiser steps before the GAN loss')
    p.add_argument('--lr-schedule', default=None, choices=LR_SCHEDULES, help="default: the config's train.lr_schedule")
    p.add_argument('--grad-weight', type=float, default=None,
                   help="weight of the L1 between image gradients (sharpness), default: the config's train.grad_weight")
    p.add_argument('--hflip', action='store_true', default=None, help='mirror half the training images')
    p.add_argument('--max-steps', type=int, default=None, help='stop (validate, save) after this many steps')
    p.add_argument('--max-minutes', type=float, default=None, help='stop (validate, save) after this long')
    p.add_argument('--run-dir', default=None)
    p.add_argument('--resume', default=None, help='a last.pt/best.pt to continue from')
    p.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run in --run-dir (its checkpoints, log, images), or --export's existing --out")
    p.add_argument('--init-from', default=None, metavar='CKPT',
                   help='start from these VQGAN weights (an export or a last.pt/best.pt): fresh optimisers, step 0')
    p.add_argument('--decoder-only', action='store_true',
                   help='train post_quant_conv and the decoder alone: every image keeps its codes, so a transformer '
                        'trained on them stays valid')
    p.add_argument('--device', default=None, help='cuda, cpu, cuda:1 ... (default: cuda if available)')
    p.add_argument('--num-workers', '--num_workers', dest='num_workers', type=int, default=0)
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--export', default=None, help='checkpoint to export as a plain fp16 state_dict to --out')
    p.add_argument('--out', default=None, help='output path of --export')
    return p.parse_args(argv)


def train_settings(cfg, args):
    """configs/VQGAN.yml's train: section, the config's over it, then the flags given; and the folders
    (training.settings, training.data_paths: the rule of every stage)."""
    return {**training.settings(cfg, 'vqgan', args, TRAIN_FLAGS),
            **training.data_paths(cfg, 'vqgan', args.train_path, args.val_path)}


# ----------------------------------------------------------------------------- metrics


def codebook_stats(counts):
    """Token counts [K] -> (% of codes used, perplexity = exp(entropy of the usage distribution))."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -(p * p.clamp(min=1e-12).log()).sum()
    return (counts > 0).float().mean().item() * 100, entropy.exp().item()


@torch.no_grad()
def evaluate(model, loader, device, mean, std, amp):
    """Validation: L1 (normalised space), PSNR in [0, 1] pixel space, codebook usage % and perplexity."""
    model.eval()
    counts = torch.zeros(model.num_codebook_vectors, device=device)
    l1 = psnr = n = 0.0
    for x in loader:
        x = x.to(device)
        with amp():
            x_hat, idx, _ = model(x)
        x_hat = x_hat.float()
        l1 += (x_hat - x).abs().mean([1, 2, 3]).sum().item()
        mse = (denormalize(x_hat, mean, std) - denormalize(x, mean, std)).pow(2).mean([1, 2, 3])  # [B]
        psnr += (10 * torch.log10(1 / mse.clamp(min=1e-10))).sum().item()
        counts += torch.bincount(idx, minlength=model.num_codebook_vectors)
        n += x.shape[0]
    usage, perplexity = codebook_stats(counts)
    model.train()
    return dict(val_l1=l1 / n, val_psnr=psnr / n, usage_pct=usage, perplexity=perplexity)


# ----------------------------------------------------------------------------- outputs: RNG state, log.csv

def rng_state(loader_gen):
    np_state = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), loader=loader_gen.get_state(), python=random.getstate(),
                 numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=np_state[2],
                            has_gauss=np_state[3], cached=np_state[4]))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, loader_gen):
    torch.set_rng_state(state['torch'])
    loader_gen.set_state(state['loader'])
    random.setstate(state['python'])
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def append_log(row, path):
    """One row of log.csv (header first, in a new file)."""
    new = not os.path.exists(path)
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: (f'{v:.5g}' if isinstance(v, float) else v) for k, v in row.items()})


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """The models, their optimisers and what training changes; last.pt holds all of it (checkpoint)."""
    model: VQGAN
    disc: Discriminator
    opt: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    amp: Callable                   # autocast factory (amp_setup)
    scaler: torch.amp.GradScaler
    loader_gen: torch.Generator     # draws the training order; saved, so --resume continues it
    epoch: int = 0                  # finished epochs
    step: int = 0                   # optimiser steps taken
    best_psnr: float = -math.inf
    decoder_only: bool = False      # only post_quant_conv and the decoder train (--decoder-only)

    def checkpoint(self, cfg, metrics):
        cb = self.model.codebook  # its dead-code restart window: a resumed run restarts the codes the straight one does
        return dict(model=self.model.state_dict(), disc=self.disc.state_dict(), opt=self.opt.state_dict(),
                    opt_disc=self.opt_d.state_dict(), scaler=self.scaler.state_dict(), epoch=self.epoch,
                    step=self.step, best_psnr=self.best_psnr, rng=rng_state(self.loader_gen), config=cfg,
                    metrics=metrics, decoder_only=self.decoder_only,
                    codebook=dict(usage=cb.usage.cpu(), recent=cb.recent.cpu(), calls=cb.calls))


@dataclass
class Data:
    train: DataLoader
    val: DataLoader
    grid: torch.Tensor              # the first 8 val images, reconstructed in recon_epochNNN.png
    mean: tuple                     # the normalisation of both splits
    std: tuple


def build(cfg, t, seed, device, init_from=None, decoder_only=False):
    """VQGAN (the weights of init_from, else fresh), a fresh PatchGAN discriminator and their Adam optimisers;
    with decoder_only the optimiser holds post_quant_conv and the decoder alone."""
    model = VQGAN(cfg['model_param'])
    if init_from:
        load_state_dict_checked(model, model_state_dict(load_checkpoint(init_from)), init_from)
        print(f"starting from the weights of {init_from}")
    model.to(device)
    if decoder_only:
        model.requires_grad_(False)
        for m in (model.post_quant_conv, model.decoder):
            m.requires_grad_(True)
    disc = training.discriminator(t, device)
    opt, opt_d = training.vqgan_optimisers(model, disc, t)
    amp, scaler = amp_setup(device)
    return Run(model, disc, opt, opt_d, amp, scaler, torch.Generator().manual_seed(seed), decoder_only=decoder_only)


def load_data(cfg, t, args, loader_gen, device):
    mean, std = data_stats(cfg, 'train')
    train_set = ImageDataset(t['train_path'], args.partial, mean, std)
    val_set = ImageDataset(t['val_path'], args.partial, mean, std)
    train_loader = DataLoader(train_set, batch_size=t['batch_size'], shuffle=True, drop_last=True,
                              num_workers=args.num_workers, generator=loader_gen, pin_memory=device.type == 'cuda')
    if len(train_loader) == 0:
        raise ValueError(f"{t['train_path']}: {len(train_set)} images are fewer than one batch of {t['batch_size']}")
    val_loader = DataLoader(val_set, batch_size=64, num_workers=args.num_workers)
    grid = torch.stack([val_set[i] for i in range(min(8, len(val_set)))]).to(device)
    return Data(train_loader, val_loader, grid, mean, std)


def resume(run, path):
    """Models, optimisers, scaler, counters and RNG state (training order included) from a last.pt/best.pt."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or 'opt' not in ck:
        raise ValueError(f"{path} is not a training checkpoint of training_vqgan.py (no optimiser state)")
    if ck.get('decoder_only', False) != run.decoder_only:
        raise ValueError(f"{path} was trained {'with' if ck.get('decoder_only') else 'without'} --decoder-only: "
                         f"resume it the same way")
    load_state_dict_checked(run.model, ck['model'], path)
    load_state_dict_checked(run.disc, ck['disc'], path)
    run.opt.load_state_dict(ck['opt'])
    run.opt_d.load_state_dict(ck['opt_disc'])
    run.scaler.load_state_dict(ck['scaler'])
    run.epoch, run.step, run.best_psnr = ck['epoch'], ck['step'], ck['best_psnr']
    if 'codebook' in ck:  # absent in checkpoints written before it was saved
        cb = run.model.codebook
        cb.usage.copy_(ck['codebook']['usage'])
        cb.recent = ck['codebook']['recent'].to(cb.recent.device)
        cb.calls = ck['codebook']['calls']
    set_rng_state(ck['rng'], run.loader_gen)
    print(f"resumed from {path}: epoch {run.epoch}, step {run.step}, best PSNR {run.best_psnr:.2f} dB")


def train_epoch(run, data, t, args, device, start):
    """One pass over the training images, or until --max-steps / --max-minutes; returns (the mean training
    losses, whether a limit stopped it)."""
    sums = dict(loss=0.0, rec=0.0, q=0.0)
    n_batches = 0
    stop = False
    bar = tqdm(data.train, desc=f"epoch {run.epoch + 1}/{t['epochs']}", dynamic_ncols=True, leave=False)
    total = t['epochs'] * (len(data.train) // t['accum_grad'])
    for i, x in enumerate(bar):
        x = x.to(device, non_blocking=True)                      # [B, 3, H, W]
        if t['hflip']:  # clip art has no handedness; the flips come from the saved training-order stream
            flip = torch.rand(len(x), generator=run.loader_gen) < 0.5
            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        if t['lr_schedule'] == 'cosine':
            for g in (*run.opt.param_groups, *run.opt_d.param_groups):
                g['lr'] = t['learning_rate'] * lr_factor(run.step, 0, total)
        gan_on = run.step >= t['disc_start']
        try:
            loss, rec, q_loss = train_step(run.model, run.disc, x, t, gan_on, run.amp, run.scaler, t['accum_grad'],
                                           run.decoder_only)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at step {run.step} of epoch {run.epoch + 1}") from None
        if (i + 1) % t['accum_grad'] == 0:
            optimiser_step(run.opt, run.opt_d, run.scaler, gan_on)
            run.step += 1
        sums['loss'] += loss.item()
        sums['rec'] += rec.item()
        sums['q'] += q_loss.item()
        n_batches += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", rec=f"{rec.item():.4f}", step=run.step)
        stop = ((args.max_steps is not None and run.step >= args.max_steps)
                or (args.max_minutes is not None and time.time() - start > 60 * args.max_minutes))
        if stop and i + 1 < len(data.train):  # at the last batch, let the loader finish: its sampler draws once
            break                               # more at the end, and a resume must find the straight run's RNG
    # micro-batches after the epoch's last whole step: their gradients must not join the next epoch's first step
    run.opt.zero_grad(set_to_none=True)
    run.opt_d.zero_grad(set_to_none=True)
    return {f'train_{k}': v / max(n_batches, 1) for k, v in sums.items()}, stop


def end_of_epoch(run, data, t, cfg, device, losses, start):
    """Validate, log, write the reconstruction grid, check the weights, then save last.pt (and best.pt)."""
    metrics = evaluate(run.model, data.val, device, data.mean, data.std, run.amp)
    append_log(dict(epoch=run.epoch, step=run.step, **losses, **metrics, seconds=round(time.time() - start, 1)),
               os.path.join(t['run_dir'], 'log.csv'))
    print(f"epoch {run.epoch} step {run.step}: val PSNR {metrics['val_psnr']:.2f} dB, L1 {metrics['val_l1']:.4f}, "
          f"codebook usage {metrics['usage_pct']:.1f}%, perplexity {metrics['perplexity']:.1f}", flush=True)
    run.model.eval()
    with torch.no_grad(), run.amp():
        recon = run.model(data.grid)[0].float()
    run.model.train()
    save_grid(torch.cat([denormalize(data.grid, data.mean, data.std), denormalize(recon, data.mean, data.std)]),
              os.path.join(t['run_dir'], f'recon_epoch{run.epoch:03d}.png'), nrow=len(data.grid))
    bad = next((n for n, p in [*run.model.named_parameters(), *run.disc.named_parameters()]
                if not torch.isfinite(p).all()), None)
    if bad or not math.isfinite(metrics['val_l1']):  # the last update is checked before anything is saved
        raise NonFiniteLoss(f"{'weight ' + bad if bad else 'validation L1'} is not finite after step {run.step} "
                            f"(epoch {run.epoch}); nothing saved")
    is_best = metrics['val_psnr'] > run.best_psnr
    run.best_psnr = max(run.best_psnr, metrics['val_psnr'])
    ck = run.checkpoint(cfg, metrics)
    save_checkpoint(ck, os.path.join(t['run_dir'], 'last.pt'))  # with a .sha256 sidecar
    if is_best:
        save_checkpoint(ck, os.path.join(t['run_dir'], 'best.pt'))
    return metrics


def train(args):
    """Run (or continue) a training; returns the last validation metrics with epoch and step."""
    cfg = validate(load_config(args.config), args.config, VQGAN_CONFIG)
    check_flags(args, FLAG_RULES)
    t = train_settings(cfg, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if args.resume and args.init_from:  # refused before the run folder is made
        raise ValueError("--resume continues a run and --init-from starts one: give one of them")
    check_writable(t['run_dir'], '--run-dir', folder=True)
    stale = claim_run_dir(t['run_dir'], RUN_FILES, bool(args.resume), args.overwrite)
    run = build(cfg, t, args.seed, device, args.init_from, args.decoder_only)
    data = load_data(cfg, t, args, run.loader_gen, device)
    if args.resume:
        resume(run, args.resume)
    remove_files(stale)  # --overwrite: no file of the earlier run outlives this one (log.csv is appended to)
    os.makedirs(t['run_dir'], exist_ok=True)
    start, metrics, stopped = time.time(), {}, False
    run.model.train()
    run.disc.train()
    while run.epoch < t['epochs'] and not stopped:
        losses, stopped = train_epoch(run, data, t, args, device, start)
        run.epoch += 1
        metrics = end_of_epoch(run, data, t, cfg, device, losses, start)
    return dict(epoch=run.epoch, step=run.step, **metrics)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.export:
            return export_checkpoint(args.export, args.out, model_state_dict, args.overwrite)
        train(args)
    except NonFiniteLoss as e:
        run_dir = args.run_dir or train_settings(load_config(args.config), args)['run_dir']
        sys.exit(f"training_vqgan.py: {e}; stopped, last good checkpoint kept in {run_dir}/last.pt")
    except (FileNotFoundError, ValueError) as e:  # bad config, folder or checkpoint: one line, no traceback
        sys.exit(f"training_vqgan.py: {e}")


if __name__ == '__main__':
    main()
