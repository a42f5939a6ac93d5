"""Stage 1b: make the VQGAN's encoder mask-robust, so the known tokens of a masked image keep their codes.

Inpainting encodes the masked image (holes filled with grey). The small VQGAN's encoder sees the whole
image (GroupNorm statistics, an attention block, 3x3 receptive fields reaching into the hole), so the
grey changes the codes of many *known* tokens, even far from the hole: the transformer then reads a
context it never saw in training. This stage fine-tunes the encoder and quant_conv only, distilled from
the frozen tokenizer: on a training image with a random hole (the dataset's mask generator, its own
seed stream), the features at known tokens must pick the code the clean image gets; a share of the
batch is left clean so clean images keep their codes. The codebook and decoder are frozen, so the token
vocabulary, and a transformer trained on it, stay valid.

    python training_encoder.py --config configs/VQGAN_small.yml                   # from the shipped VQGAN
    python training_encoder.py --config configs/VQGAN_small.yml --resume          # continue runs/encoder_small
    python training_encoder.py --export runs/encoder_small/best.pt --out runs/encoder_small/export.pt

Validation (the val split with its fixed masks, as the dataset builder writes them): `known_agree`, the share of
known tokens of a masked image whose code equals the clean image's code under the frozen tokenizer, and
`clean_agree`, the same for the unmasked image. best.pt has the highest known_agree. A fresh run into a
folder holding an earlier run's files is refused unless --resume or --overwrite.
"""
import argparse
import copy
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

import training
from dataset import ImageDataset, MaskDataset, data_stats
from models.masks import fill_holes, latent_mask, normalised_fill, pixel_mask_bank
from models.vqgan import VQGAN, load_vqgan, model_state_dict
from configs_schema import ENCODER_CONFIG, ENCODER_TRAIN, NONNEG, POS_INT, Key, check_flags, downsampling, validate
from utils import (atomic_open, check_writable, claim_run_dir, export_checkpoint, load_checkpoint, load_config,
                   load_state_dict_checked, remove_files, resolve_device, save_checkpoint, seed_everything)

# The settings: configs/VQGAN.yml's train_encoder: section sets every one, a config's own overrides it key by key
# (training.settings), and TRAIN_FLAGS override those for one run.
TRAIN_KEYS = tuple(k.split('.', 1)[1] for k in ENCODER_TRAIN if '.' in k)
TRAIN_FLAGS = ('epochs', 'batch_size', 'learning_rate', 'run_dir')
RUN_FILES = ('last.pt', 'best.pt', 'log.csv')  # what a run writes in its folder
FLAG_RULES = dict(epochs=POS_INT, batch_size=POS_INT, learning_rate=NONNEG, max_minutes=NONNEG,
                  partial=Key('number', lo=0, lo_open=True, hi=1))
LOG_FIELDS = ('epoch', 'step', 'train_loss', 'known_agree', 'clean_agree', 'seconds')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/VQGAN_small.yml', help="the VQGAN's config (train_encoder: section)")
    p.add_argument('--vqgan-ckpt', default=None, help="tokenizer to start from (default: the config's checkpoint: path)")
    p.add_argument('--train-path', '--train_d_path', dest='train_path', default=None,
                   help="default: the config's data.train_path")
    p.add_argument('--val-path', '--val_d_path', dest='val_path', default=None,
                   help="default: the config's data.val_path (its fixed masks: val_mask64 beside it)")
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--learning-rate', type=float, default=None)
    p.add_argument('--partial', type=float, default=1.0, help='use the first fraction of each folder')
    p.add_argument('--max-minutes', type=float, default=None, help='stop (validate, save) after this long')
    p.add_argument('--run-dir', default=None)
    p.add_argument('--resume', action='store_true', help='continue from last.pt in the run folder')
    p.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run in the run folder (last.pt, best.pt, log.csv), or --export's existing --out")
    p.add_argument('--device', default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--export', default=None, metavar='CKPT', help='write CKPT as a plain fp16 VQGAN state_dict to --out')
    p.add_argument('--out', default=None)
    return p.parse_args(argv)


def train_settings(cfg, args):
    """configs/VQGAN.yml's train_encoder: section, the config's over it, the flags given over both; the folders
    (training.settings, training.data_paths: the rule of every stage); the val masks beside the val images."""
    s = {**training.settings(cfg, 'encoder', args, TRAIN_FLAGS),
         **training.data_paths(cfg, 'encoder', args.train_path, args.val_path)}
    data = cfg.get('data') or {}
    default_masks = os.path.join(os.path.dirname(os.path.normpath(s['val_path'])), 'val_mask64')
    s['val_mask_path'] = default_masks if args.val_path else data.get('val_mask_path', default_masks)
    return s


# ----------------------------------------------------------------------------- distillation

def features(vqgan, x):
    """Images [B, 3, H, W] -> projected encoder features [B*h*w, D] (row-major tokens)."""
    z = vqgan.quant_conv(vqgan.encoder(x))
    return vqgan.codebook.project(z.permute(0, 2, 3, 1).flatten(0, 2))


def distill_loss(student, z_t, codes_t, x_in, known, tau, feature_weight):
    """Cross-entropy of the student's code distances against the teacher's codes, plus the features' MSE,
    over known tokens only (known [B*h*w] bool)."""
    z_s = features(student, x_in)[known]                                   # [M, D]
    logits = -student.codebook.distances(z_s) / tau                        # [M, K]
    return F.cross_entropy(logits, codes_t[known]) + feature_weight * F.mse_loss(z_s, z_t[known])


@torch.no_grad()
def evaluate(student, teacher, images, masks, fill, f, batch_size=64):
    """(known_agree, clean_agree) on val images [N, 3, H, W] with their fixed masks [N, 1, H, W]; f: the
    tokenizer's downsampling factor."""
    student.eval()
    sums = torch.zeros(4)  # known agreements, known tokens, clean agreements, tokens
    for i in range(0, len(images), batch_size):
        x, m = images[i:i + batch_size], masks[i:i + batch_size]
        ref = teacher.encode_indices(x)                                     # [B, N]
        known = ~latent_mask(m, f).flatten(1)                               # [B, N]
        got = student.encode_indices(fill_holes(x, m, fill))
        sums += torch.tensor([((got == ref) & known).sum(), known.sum(), (student.encode_indices(x) == ref).sum(),
                              ref.numel()],
                             dtype=torch.float)
    student.train()
    return (sums[0] / sums[1]).item(), (sums[2] / sums[3]).item()


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """The student (encoder and quant_conv trained), the frozen teacher, the optimizer and the progress that
    last.pt keeps."""
    student: VQGAN
    teacher: VQGAN
    params: list                    # what the optimizer trains
    opt: torch.optim.Optimizer
    epoch: int = 0                  # finished epochs
    step: int = 0                   # optimizer steps taken
    best: float = -math.inf         # the best known_agree so far (best.pt)
    rows: list = field(default_factory=list)  # log.csv

    def progress(self):
        return dict(epoch=self.epoch, step=self.step, best=self.best, rows=self.rows)


@dataclass
class Data:
    train_x: torch.Tensor           # [N, 3, H, W] normalised, on the CPU
    val_x: torch.Tensor             # [n, 3, H, W] on the device
    val_m: torch.Tensor             # [n, 1, H, W] their fixed masks (1 = keep)
    bank: torch.Tensor              # [M, 1, H, W] training masks from the dataset's generator
    fill: torch.Tensor              # [3] the holes' grey, normalised
    steps_per_epoch: int
    factor: int                     # pixels per token side (configs_schema.downsampling)


def build(args, cfg, s, device):
    """Teacher (the tokenizer, frozen) and student (its copy, encoder and quant_conv trainable), AdamW."""
    teacher = load_vqgan(args.config, args.vqgan_ckpt, device, cfg=cfg)
    student = copy.deepcopy(teacher).train()
    student.requires_grad_(False)
    params = list(student.encoder.parameters()) + list(student.quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    return Run(student, teacher, params, torch.optim.AdamW(params, lr=s['learning_rate'], weight_decay=0.0))


def load_data(args, cfg, s, device):
    mean, std = data_stats(cfg, 'train')
    train = ImageDataset(s['train_path'], args.partial, mean, std)
    val_x = torch.stack([x for x in ImageDataset(s['val_path'], args.partial, mean, std)]).to(device)
    val_m = torch.stack([m for m in MaskDataset(s['val_mask_path'], args.partial)]).to(device)
    if len(val_x) != len(val_m):
        raise ValueError(f"{s['val_path']} has {len(val_x)} images but {s['val_mask_path']} {len(val_m)} masks "
                         f"(rebuild the dataset with prepare_dataset.py)")
    log(f"loading {len(train)} training images")
    train_x = torch.stack([train[i] for i in tqdm(range(len(train)), desc='load', leave=False)])
    if len(train) < s['batch_size']:  # else 0 steps an epoch, and a loss of 0 logged
        raise ValueError(f"--batch-size {s['batch_size']} is more than the {len(train)} training images in "
                         f"{s['train_path']}: give a smaller one")
    p = cfg['model_param']
    bank = pixel_mask_bank(s['mask_bank'], p['img_resolution'], args.seed)
    return Data(train_x, val_x, val_m, bank, normalised_fill(mean, std, device), len(train_x) // s['batch_size'],
                downsampling(p))


def checkpoint_paths(s):
    return os.path.join(s['run_dir'], 'last.pt'), os.path.join(s['run_dir'], 'best.pt')


def resume(run, s):
    """Student, optimizer and progress from last.pt in the run folder."""
    last = checkpoint_paths(s)[0]
    ck = load_checkpoint(last)
    if not isinstance(ck, dict) or 'opt' not in ck:
        raise ValueError(f"{last} is not a training checkpoint of training_encoder.py (no optimizer state)")
    load_state_dict_checked(run.student, ck['model'], last)
    run.opt.load_state_dict(ck['opt'])
    run.epoch, run.step, run.best, run.rows = ck['epoch'], ck['step'], ck['best'], ck['rows']
    log(f"resumed from {last}: epoch {run.epoch}, step {run.step}")


def log_start(run, data):
    """Row 0 of log.csv: the tokenizer before fine-tuning."""
    known, clean = evaluate(run.student, run.teacher, data.val_x, data.val_m, data.fill, data.factor)
    log(f"before fine-tuning: known_agree {known:.4f}, clean_agree {clean:.4f}")
    run.rows.append(dict(epoch=0, step=0, train_loss=float('nan'), known_agree=known, clean_agree=clean, seconds=0.0))


def train_step(run, data, s, x, m):
    """One AdamW step on images x [B, 3, H, W] with masks m [B, 1, H, W] (cosine lr); returns the loss."""
    with torch.no_grad():
        z_t = features(run.teacher, x)                                     # [B*N, D]
        codes_t = run.teacher.codebook.distances(z_t).argmin(1)           # [B*N]
    known = ~latent_mask(m, data.factor).flatten()                                       # [B*N]
    total = s['epochs'] * data.steps_per_epoch
    lr = s['learning_rate'] * 0.5 * (1 + math.cos(math.pi * run.step / max(1, total)))
    for grp in run.opt.param_groups:
        grp['lr'] = lr
    loss = distill_loss(run.student, z_t, codes_t, fill_holes(x, m, data.fill), known, s['tau'], s['feature_weight'])
    if not torch.isfinite(loss):
        raise ValueError(f"non-finite loss at step {run.step}; {' and '.join(checkpoint_paths(s))} untouched")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.step += 1
    return loss.item()


def train_epoch(run, data, s, args, device, start):
    """The steps of epoch run.epoch + 1 (from where a resumed run stopped), or until --max-minutes; returns
    their mean loss."""
    n_img, b = len(data.train_x), s['batch_size']
    g = torch.Generator().manual_seed(args.seed * 1000 + run.epoch)  # the epoch's order, masks and flips
    order = torch.randperm(n_img, generator=g)
    mask_idx = torch.randint(len(data.bank), (n_img,), generator=g)
    clean = torch.rand(n_img, generator=g) < s['clean_frac']
    flip = torch.rand(n_img, generator=g) < 0.5
    loss_sum, n = 0.0, 0
    first = run.step - run.epoch * data.steps_per_epoch
    for i in tqdm(range(first, data.steps_per_epoch), desc=f"epoch {run.epoch + 1}/{s['epochs']}"):
        k = order[i * b:(i + 1) * b]
        x = torch.where(flip[k][:, None, None, None], data.train_x[k].flip(-1), data.train_x[k]).to(device)
        m = torch.where(clean[k][:, None, None, None], torch.ones_like(data.bank[:1]), data.bank[mask_idx[k]])
        m = m.to(device)
        loss_sum, n = loss_sum + train_step(run, data, s, x, m), n + 1
        if args.max_minutes is not None and time.time() - start > 60 * args.max_minutes:
            break
    return loss_sum / max(n, 1)


def end_of_epoch(run, data, s, cfg, train_loss, start):
    """Validate and check, then save last.pt (and best.pt) and log.csv; returns whether --max-minutes
    stopped the epoch short (it then stays unfinished: --resume continues it)."""
    stopped = run.step < (run.epoch + 1) * data.steps_per_epoch
    known_a, clean_a = evaluate(run.student, run.teacher, data.val_x, data.val_m, data.fill, data.factor)
    last, best = checkpoint_paths(s)
    if not all(torch.isfinite(p).all() for p in run.params):
        raise ValueError(f"non-finite weights after step {run.step}; {last} and {best} untouched")
    if not stopped:
        run.epoch += 1
    run.rows.append(dict(epoch=run.epoch, step=run.step, train_loss=train_loss, known_agree=known_a,
                         clean_agree=clean_a, seconds=time.time() - start))
    log(f"epoch {run.epoch} step {run.step}: loss {train_loss:.4f}, known_agree {known_a:.4f}, "
        f"clean_agree {clean_a:.4f}")
    ck = dict(model=run.student.state_dict(), opt=run.opt.state_dict(), config=cfg, **run.progress())
    if known_a > run.best:
        run.best = ck['best'] = known_a
        save_checkpoint(ck, best)
    save_checkpoint(ck, last)
    with atomic_open(os.path.join(s['run_dir'], 'log.csv'), newline='') as fh:
        w = csv.DictWriter(fh, LOG_FIELDS)
        w.writeheader()
        w.writerows(run.rows)
    return stopped


def main(argv=None):
    args = parse_args(argv)
    if args.export:
        return export_checkpoint(args.export, args.out, model_state_dict, args.overwrite)
    cfg = validate(load_config(args.config), args.config, ENCODER_CONFIG)
    check_flags(args, FLAG_RULES)
    s = train_settings(cfg, args)
    check_writable(s['run_dir'], '--run-dir', folder=True)
    stale = claim_run_dir(s['run_dir'], RUN_FILES, args.resume, args.overwrite)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    run = build(args, cfg, s, device)
    data = load_data(args, cfg, s, device)
    if args.resume:
        resume(run, s)
    else:
        remove_files(stale)  # --overwrite: no file of the earlier run outlives this one
        log_start(run, data)
    start = time.time()
    while run.epoch < s['epochs']:
        train_loss = train_epoch(run, data, s, args, device, start)
        if end_of_epoch(run, data, s, cfg, train_loss, start):
            break
    return run.progress()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"training_encoder.py: {e}")
