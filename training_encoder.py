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
    python training_encoder.py --export runs/encoder_small/best.pt --out checkpoints/vqgan_small.pt

Validation (the val split with its fixed masks from prepare_dataset.py): `known_agree`, the share of
known tokens of a masked image whose code equals the clean image's code under the frozen tokenizer, and
`clean_agree`, the same for the unmasked image. best.pt has the highest known_agree.
"""
import argparse
import copy
import csv
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.masks import fill_holes, normalised_fill, pixel_mask_bank
from models.vqgan import load_vqgan, model_state_dict
from utils import (ImageDataset, MaskDataset, atomic_open, data_stats, export_checkpoint, latent_mask,
                   load_checkpoint, load_config, load_state_dict_checked, resolve_device, save_checkpoint,
                   seed_everything)

DEFAULTS = dict(epochs=4, batch_size=32, learning_rate=1e-4, clean_frac=0.5, tau=0.02, feature_weight=1.0,
                mask_bank=4096, run_dir='runs/encoder')
LOG_FIELDS = ('epoch', 'step', 'train_loss', 'known_agree', 'clean_agree', 'seconds')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/VQGAN_small.yml', help="the VQGAN's config (train_encoder: section)")
    p.add_argument('--vqgan-ckpt', default=None, help="tokenizer to start from (default: the config's checkpoint: path)")
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--learning-rate', type=float, default=None)
    p.add_argument('--partial', type=float, default=1.0, help='use the first fraction of each folder')
    p.add_argument('--max-minutes', type=float, default=None, help='stop (validate, save) after this long')
    p.add_argument('--run-dir', default=None)
    p.add_argument('--resume', action='store_true', help='continue from last.pt in the run folder')
    p.add_argument('--device', default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--export', default=None, metavar='CKPT', help='write CKPT as a plain fp16 VQGAN state_dict to --out')
    p.add_argument('--out', default=None)
    return p.parse_args(argv)


def settings(cfg, args):
    """The config's train_encoder: section over DEFAULTS, flags over both; folders from its data: section."""
    s = {**DEFAULTS, **(cfg.get('train_encoder') or {})}
    for key in ('epochs', 'batch_size', 'learning_rate', 'run_dir'):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    data = cfg.get('data') or {}
    s['train_path'] = data.get('train_path', 'data/openclipart/train')
    s['val_path'] = data.get('val_path', 'data/openclipart/val')
    s['val_mask_path'] = data.get('val_mask_path', os.path.join(os.path.dirname(s['val_path']), 'val_mask64'))
    return s


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
def evaluate(student, teacher, images, masks, fill, batch_size=64):
    """(known_agree, clean_agree) on val images [N, 3, H, W] with their fixed masks [N, 1, H, W]."""
    student.eval()
    f = teacher.img_resolution // teacher.latent_resolution
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


def main(argv=None):
    args = parse_args(argv)
    if args.export:
        return export_checkpoint(args.export, args.out, model_state_dict)
    cfg = load_config(args.config)
    s = settings(cfg, args)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    mean, std = data_stats(cfg, 'train')
    fill = normalised_fill(mean, std, device)

    teacher = load_vqgan(args.config, args.vqgan_ckpt, device)
    student = copy.deepcopy(teacher).train()
    student.requires_grad_(False)
    params = list(student.encoder.parameters()) + list(student.quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=s['learning_rate'], weight_decay=0.0)

    train = ImageDataset(s['train_path'], args.partial, mean, std)
    val_x = torch.stack([x for x in ImageDataset(s['val_path'], args.partial, mean, std)]).to(device)
    val_m = torch.stack([m for m in MaskDataset(s['val_mask_path'], args.partial)]).to(device)
    if len(val_x) != len(val_m):
        raise ValueError(f"{s['val_path']} has {len(val_x)} images but {s['val_mask_path']} {len(val_m)} masks "
                         f"(rebuild the dataset with prepare_dataset.py)")
    log(f"loading {len(train)} training images")
    train_x = torch.stack([train[i] for i in tqdm(range(len(train)), desc='load', leave=False)])  # [N, 3, H, W]
    bank = pixel_mask_bank(s['mask_bank'], teacher.img_resolution, args.seed)                  # [M, 1, H, W]
    f = teacher.img_resolution // teacher.latent_resolution
    steps_per_epoch = len(train_x) // s['batch_size']
    total = s['epochs'] * steps_per_epoch

    run_dir = s['run_dir']
    st = dict(epoch=0, step=0, best=-math.inf, rows=[])
    last, best = os.path.join(run_dir, 'last.pt'), os.path.join(run_dir, 'best.pt')
    if args.resume:
        ck = load_checkpoint(last)
        load_state_dict_checked(student, ck['model'], last)
        opt.load_state_dict(ck['opt'])
        st = {k: ck[k] for k in st}
        log(f"resumed from {last}: epoch {st['epoch']}, step {st['step']}")
    else:
        known, clean = evaluate(student, teacher, val_x, val_m, fill)
        log(f"before fine-tuning: known_agree {known:.4f}, clean_agree {clean:.4f}")
        st['rows'].append(dict(epoch=0, step=0, train_loss=float('nan'), known_agree=known, clean_agree=clean,
                               seconds=0.0))

    start = time.time()
    while st['epoch'] < s['epochs']:
        g = torch.Generator().manual_seed(args.seed * 1000 + st['epoch'])  # the epoch's order, masks and flips
        order = torch.randperm(len(train_x), generator=g)
        mask_idx = torch.randint(len(bank), (len(train_x),), generator=g)
        clean = torch.rand(len(train_x), generator=g) < s['clean_frac']
        flip = torch.rand(len(train_x), generator=g) < 0.5
        loss_sum, n = 0.0, 0
        first = st['step'] - st['epoch'] * steps_per_epoch
        for i in tqdm(range(first, steps_per_epoch), desc=f"epoch {st['epoch'] + 1}/{s['epochs']}"):
            k = order[i * s['batch_size']:(i + 1) * s['batch_size']]
            x = torch.where(flip[k][:, None, None, None], train_x[k].flip(-1), train_x[k]).to(device)
            m = torch.where(clean[k][:, None, None, None], torch.ones_like(bank[:1]), bank[mask_idx[k]]).to(device)
            with torch.no_grad():
                z_t = features(teacher, x)                                     # [B*N, D]
                codes_t = teacher.codebook.distances(z_t).argmin(1)           # [B*N]
            known = ~latent_mask(m, f).flatten()                               # [B*N]
            lr = s['learning_rate'] * 0.5 * (1 + math.cos(math.pi * st['step'] / max(1, total)))
            for grp in opt.param_groups:
                grp['lr'] = lr
            loss = distill_loss(student, z_t, codes_t, fill_holes(x, m, fill), known, s['tau'], s['feature_weight'])
            if not torch.isfinite(loss):
                raise ValueError(f"non-finite loss at step {st['step']}; {last} and {best} untouched")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            st['step'] += 1
            loss_sum, n = loss_sum + loss.item(), n + 1
            if args.max_minutes is not None and time.time() - start > 60 * args.max_minutes:
                break
        stopped = st['step'] < (st['epoch'] + 1) * steps_per_epoch
        known_a, clean_a = evaluate(student, teacher, val_x, val_m, fill)
        if not all(torch.isfinite(p).all() for p in params):
            raise ValueError(f"non-finite weights after step {st['step']}; {last} and {best} untouched")
        if not stopped:
            st['epoch'] += 1
        st['rows'].append(dict(epoch=st['epoch'], step=st['step'], train_loss=loss_sum / max(n, 1),
                               known_agree=known_a, clean_agree=clean_a, seconds=time.time() - start))
        log(f"epoch {st['epoch']} step {st['step']}: loss {loss_sum / max(n, 1):.4f}, known_agree {known_a:.4f}, "
            f"clean_agree {clean_a:.4f}")
        ck = dict(model=student.state_dict(), opt=opt.state_dict(), config=cfg, **st)
        if known_a > st['best']:
            st['best'] = ck['best'] = known_a
            save_checkpoint(ck, best)
        save_checkpoint(ck, last)
        with atomic_open(os.path.join(run_dir, 'log.csv'), newline='') as fh:
            w = csv.DictWriter(fh, LOG_FIELDS)
            w.writeheader()
            w.writerows(st['rows'])
        if stopped:
            break
    return st


def log(msg):
    print(msg, file=sys.stderr, flush=True)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"training_encoder.py: {e}")
