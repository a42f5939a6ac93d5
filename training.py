"""What the three trainers share, and what the benchmarks time: the settings rule, mixed precision, and one
training step of each model with its optimizers.

training_vqgan.py, training_encoder.py and training_transformer.py are `training_<stage>.py`: this module, plain
`training`, is the part they have in common, so the scripts keep their loops, outputs and flags, and
benchmarks/bench_vqgan.py and bench_transformer.py run the very steps training runs (no script imports a script).

Settings, one rule for every stage (README, "Configuration"):

    s = settings(cfg, 'vqgan', args, FLAGS)   # DEFAULTS' section (every key) < the config's section < each flag given

A stage's defaults are its section of the course's config (configs/VQGAN.yml train: and train_encoder:,
configs/MaskGit.yml train:, and both files' data:), checked to set every key of the schema; a run's config sets
what it changes; a flag (None when not given) overrides its key for one run.
"""
import functools
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from configs_schema import DATA_PATHS, DISCRIMINATOR, ENCODER_TRAIN, MASKGIT_TRAIN, VQGAN_TRAIN, Key, validate
from models.discriminator import Discriminator
from models.maskgit import mvtm_loss
from utils import load_config

ROOT = os.path.dirname(os.path.abspath(__file__))
VQGAN_DEFAULTS = os.path.join(ROOT, 'configs', 'VQGAN.yml')
MASKGIT_DEFAULTS = os.path.join(ROOT, 'configs', 'MaskGit.yml')
STAGES = {  # stage -> (the config holding its defaults, its section, that section's schema)
    'vqgan': (VQGAN_DEFAULTS, 'train', VQGAN_TRAIN),
    'encoder': (VQGAN_DEFAULTS, 'train_encoder', ENCODER_TRAIN),
    'transformer': (MASKGIT_DEFAULTS, 'train', MASKGIT_TRAIN),
}


# ----------------------------------------------------------------------------- settings

@functools.cache
def _defaults(path, section, schema_items):
    every_key = {k: Key(**{**v.__dict__, 'required': True}) for k, v in schema_items}
    return validate(load_config(path), path, every_key)[section]


def defaults(path, section, schema):
    """`section` of the defaults config `path`, refused (one line naming the key) unless it sets every key."""
    return dict(_defaults(path, section, tuple(schema.items())))


def settings(cfg, stage, args=None, flags=()):
    """The settings of `stage` (a STAGES key): its defaults, the config's section over them key by key, then each
    flag in `flags` (attribute names of args, named as their keys) that was given (not None)."""
    path, section, schema = STAGES[stage]
    s = dict(defaults(path, section, schema), **(cfg.get(section) or {}))
    s.update({k: getattr(args, k) for k in flags if getattr(args, k, None) is not None})
    return s


def data_paths(cfg, stage, train=None, val=None):
    """{'train_path', 'val_path'}: the flags given, else the config's data: section, else the defaults config's."""
    path = STAGES[stage][0]
    d = dict(defaults(path, 'data', DATA_PATHS), **{k: v for k, v in (cfg.get('data') or {}).items()
                                                   if k in ('train_path', 'val_path')})
    return dict(train_path=train or d['train_path'], val_path=val or d['val_path'])


# ----------------------------------------------------------------------------- mixed precision

def amp_setup(device, amp='auto'):
    """(autocast factory, GradScaler) for --amp on `device`. auto: bf16 on CUDA (fp16 with a GradScaler where
    the GPU has no bf16), off on a CPU, where autocast is slower than fp32."""
    if amp == 'auto':
        amp = 'off' if device.type != 'cuda' else 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
    if amp == 'fp16' and device.type != 'cuda':
        raise ValueError(f"--amp fp16 needs CUDA (device is {device}); use --amp bf16 or off")
    dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype) if amp != 'off' else nullcontext
    return autocast, torch.amp.GradScaler('cuda', enabled=amp == 'fp16')


# ----------------------------------------------------------------------------- the VQGAN's step

class NonFiniteLoss(RuntimeError):
    pass


def gradient_loss(x_hat, x):
    """Mean L1 between the images' horizontal and vertical differences: blur lowers an edge's gradient, and
    L1 + L2 alone reward the blurred mean of the edges a code could stand for."""
    e = x_hat - x  # the differences are linear: d(x_hat) - d(x) = d(x_hat - x)
    return e.diff(dim=-1).abs().mean() + e.diff(dim=-2).abs().mean()  # [B, 3, H, W-1], [B, 3, H-1, W]


def adaptive_weight(rec_loss, g_loss, last_layer):
    """Balance the GAN term against reconstruction by their gradient norms at the decoder's last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()


def discriminator(t, device):
    """The PatchGAN of the settings' disc_config."""
    return Discriminator(validate(load_config(t['disc_config']), t['disc_config'], DISCRIMINATOR)['model_param']).to(device)


def vqgan_optimisers(model, disc, t):
    """Adam for the VQGAN's trainable parameters and for the discriminator, at the settings' rate and betas."""
    adam = functools.partial(torch.optim.Adam, lr=t['learning_rate'], betas=tuple(t['betas']), eps=1e-8)
    return adam([q for q in model.parameters() if q.requires_grad]), adam(disc.parameters())


def vqgan_train_step(model, disc, x, t, gan_on, amp, scaler, accum=1, decoder_only=False):
    """Forward and backward of one micro-batch: the VQGAN's loss, then D's hinge loss when the GAN is on.

    Returns the VQGAN's (loss, reconstruction, q_loss), detached. Gradients accumulate until optimiser_step.
    With decoder_only the encoder and codebook run frozen (no dead-code restarts) and q_loss is 0.
    """
    with amp():
        if decoder_only:
            with torch.no_grad():
                z_q = model.codebook.eval()(model.quant_conv(model.encoder(x)))[0]
            x_hat, q_loss = model.decode(z_q), x.new_zeros(())
        else:
            x_hat, _, q_loss = model(x)
        rec = t['l1_weight'] * (x_hat - x).abs().mean() + t['l2_weight'] * (x_hat - x).pow(2).mean()
        if t['grad_weight']:
            rec = rec + t['grad_weight'] * gradient_loss(x_hat, x)
        loss = rec + q_loss
        if gan_on:
            disc.requires_grad_(False)  # the generator's GAN term must not touch D's gradients
            g_loss = -disc(x_hat).mean()
            disc.requires_grad_(True)
            loss = loss + t['disc_weight'] * adaptive_weight(rec, g_loss, model.last_layer_weight()) * g_loss
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"non-finite loss ({loss.item()})")
    scaler.scale(loss / accum).backward()
    if gan_on:
        with amp():
            d_loss = 0.5 * (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(x_hat.detach())).mean())  # hinge
        scaler.scale(d_loss / accum).backward()
    return loss.detach(), rec.detach(), q_loss.detach()


def optimiser_step(opt, opt_d, scaler, gan_on):
    scaler.step(opt)
    if gan_on:
        scaler.step(opt_d)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    opt_d.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- the transformer's step

MASK_STREAM, DROPOUT_STREAM, VAL_STREAM = 0, 1, 2


def step_seed(seed, step, stream, rank=0):
    """Distinct, reproducible seed per (run seed, optimizer step, random stream, rank)."""
    return ((seed * 1_000_003 + step) * 4 + stream) * 1024 + rank


def epoch_order(n, epoch, seed, world, rank):
    """This process's sample order for `epoch`: DistributedSampler's, so rank r holds perm[r::world]."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def draw_masks(g, rows, n_tok, hole_frac, variants):
    """Mask ratios r [rows], scores [rows, N], which rows are masked inside a hole [rows] bool (a share
    `hole_frac`; the others like the paper, anywhere) and which cached masked variant each uses [rows]."""
    r, scores = torch.rand(rows, generator=g), torch.rand(rows, n_tok, generator=g)
    return r, scores, torch.rand(rows, generator=g) < hole_frac, torch.randint(max(1, variants), (rows,), generator=g)


def class_rows(g, labels, idx, cond_drop, null, world, rank):
    """Class ids [B] of samples idx (labels: the ids of every training row), each replaced by the null class
    with probability cond_drop. The uniforms come from the step's generator g, drawn for the global micro-batch
    (world * B rows, rank taking its own) after the masks' draws, so unconditional runs draw what they did."""
    if labels is None:
        return None
    drop = (torch.rand(len(idx) * world, generator=g) < cond_drop)[rank::world]           # [B]
    return torch.where(drop, null, labels[idx])


def hole_rows(idx, use, variant, ctx):
    """(region [B, N] bool, context [B, N] long) for samples idx [B]: rows that `use` a hole take cached
    variant `variant` (ctx: context tokens [S, V, N], token holes [S, V, N]); the others mask anywhere."""
    if ctx is None:
        return None, None
    context, holes = ctx
    region = holes[idx, variant] | ~use[:, None]                                               # [B, N]
    return region, context[idx, variant]


def accumulate_grads(model, raw, tokens, order, step_in_epoch, step, s, seed, world, rank, device,
                     autocast=nullcontext, scaler=None, ctx=None, labels=None, loss_fn=mvtm_loss):
    """Forward/backward over the micro-batches of one optimizer step; returns their mean loss (this rank).

    Mask ratios, positions and holes are drawn for the whole global micro-batch (world * batch rows) and
    each rank takes its rows, and each rank's loss is normalised by the global masked count, so the
    averaged DDP gradient equals one process's gradient on the global batch. ctx: (context tokens, token
    holes) of the masked variants of each sample (load_context_tokens), or None for the paper's masks only.
    labels: the class id of every training row (a conditional model), or None. loss_fn: mvtm_loss's signature.
    """
    b, a_n, n_tok = s['batch_size'], s['accum_grad'], raw.num_image_tokens
    total = torch.zeros((), device=device)
    for a in range(a_n):
        j = step_in_epoch * a_n + a
        idx = order[j * b:(j + 1) * b]
        z = tokens[idx].to(device).long()                                                     # [B, N]
        g = torch.Generator().manual_seed(step_seed(seed, step * a_n + a, MASK_STREAM))
        r, scores, use, variant = (v[rank::world] for v in draw_masks(g, b * world, n_tok, s['hole_mask_frac'],
                                                                       0 if ctx is None else ctx[0].shape[1]))
        region, context = hole_rows(idx, use, variant, ctx)
        y = class_rows(g, labels, idx, s['cond_drop'], raw.transformer.num_classes, world, rank)
        if s['masked_only']:
            count = raw.num_masked(r, None if region is None else region.sum(1)).sum().double()
            if world > 1:
                dist.all_reduce(count)
            norm = count.item() / world  # global masked count, per rank
        else:
            norm = b * n_tok
        sync = a == a_n - 1 or not isinstance(model, DDP)
        with nullcontext() if sync else model.no_sync():
            with autocast():
                logits, target, mask = model(z, r, scores, region, context, None if y is None else y.to(device))
            loss = loss_fn(logits, target, mask, raw.num_codebook_vectors, s['label_smoothing'],
                           s['masked_only'], normalizer=norm)
            (scaler.scale(loss / a_n) if scaler is not None else loss / a_n).backward()
        total += loss.detach()
    return total / a_n


def make_optimizer(raw, s, device):
    """AdamW; weight decay on matrices (linear weights, token embedding), not on biases, norms, positions."""
    decay, no_decay = [], []
    for name, p in raw.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and name.split('.')[-1] not in ('bias', 'pos_emb') else no_decay).append(p)
    groups = [{'params': decay, 'weight_decay': s['weight_decay']}, {'params': no_decay, 'weight_decay': 0.0}]
    fused = device.type == 'cuda'
    return torch.optim.AdamW(groups, lr=s['learning_rate'], betas=tuple(s['betas']), fused=fused)
