"""Stage 2: train the bidirectional transformer with Masked Visual Token Modeling (MVTM).

The dataset is encoded once by the frozen VQGAN into a token cache (models/token_cache.py, with
horizontal-flip copies); training steps read tokens only. All randomness of a step (data order,
mask ratios and positions, class drops, dropout) is a function of (--seed, epoch, step, rank), so --resume
continues bit-for-bit and N DDP processes train exactly like one process on the same global batch.

A conditional model (Transformer_param num_classes > 0) learns each image's class from the dataset's
labels.json, replaced by the null class with probability `cond_drop` (train: section), so one model serves
every class and, with the null class, unconditional inpainting (classifier-free guidance needs both).

Outputs, in the folder of --checkpoint-path (a fresh run into a folder holding them is refused unless
--resume or --overwrite):
  <--checkpoint-path>        model.transformer.state_dict() after the latest epoch (the course's format), plus
                             'tokenizer_sha256': the tokenizer its tokens came from (models/token_cache.py)
  transformer_epoch_N.pt     the same, every --save-per-epoch epochs
  train_state.pt             everything --resume needs (weights, optimizer, scaler, epoch, step, log)
  log.csv, loss_curve.png    per-epoch train/val loss, val masked-token accuracy, lr, throughput

  python training_transformer.py --MaskGitConfig configs/MaskGit_small.yml --device cpu
  torchrun --nproc_per_node 2 training_transformer.py ...   (DDP, DistributedSampler)
"""
import argparse
import csv
import functools
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import training
from dataset import ImageDataset, MaskDataset, class_names, image_labels, inference_stats, list_images, read_labels
from models.maskgit import MaskGit, masked_accuracy, mvtm_loss, transformer_state_dict
from models.transformer import remap_codes
from models.masks import latent_mask, pixel_mask_bank
from models.token_cache import encode_folder, load_context_tokens, load_tokens, vqgan_meta
from models.vqgan import load_vqgan
from plots import plot_curves
from configs_schema import (MASKGIT_CONFIG, NONNEG, NONNEG_INT, POS_INT, VQGAN_MODEL, Key, check_flags, check_pair,
                            downsampling, validate)
# a step's parts live in training.py (benchmarks/bench_transformer.py times the same step); train_step below
# calls accumulate_grads and mvtm_loss by these module names, which tests patch
from training import (DROPOUT_STREAM, VAL_STREAM, accumulate_grads, amp_setup, epoch_order, make_optimizer,
                      step_seed)
from training import class_rows  # noqa: F401  (tests/test_conditioning.py reaches it here)
from utils import (RECORD_KEYS, atomic_open, check_writable, claim_run_dir, export_checkpoint, load_checkpoint,
                   load_config, load_state_dict_checked, lr_factor, remove_files, resolve_device, save_checkpoint,
                   seed_everything)

# configs/MaskGit.yml's train: and data: sections are the one home of the training defaults: a config's own
# sections (absent in the course's MaskGit.yml) override them key by key, and the flags override both
# (training.settings, the rule of every stage): FLAG_KEYS by their names, --train_d_path / --val_d_path data:.
FLAG_KEYS = ('epochs', 'batch_size', 'accum_grad', 'learning_rate', 'warmup_steps', 'grad_clip', 'save_per_epoch',
             'cache_dir')  # train: keys a flag of the same name overrides
FLAG_RULES = dict(epochs=POS_INT, batch_size=POS_INT, accum_grad=POS_INT, learning_rate=NONNEG,
                  warmup_steps=NONNEG_INT, grad_clip=NONNEG, save_per_epoch=NONNEG_INT, start_from_epoch=NONNEG_INT,
                  ckpt_interval=NONNEG_INT, max_steps=POS_INT, num_workers=NONNEG_INT,
                  partial=Key('number', lo=0, lo_open=True, hi=1))
RUN_FILES = ('train_state.pt', 'log.csv', 'loss_curve.png', 'transformer_epoch_*.pt')  # and --checkpoint-path
CHECK_SEQUENCES = 64  # val sequences scored before a mid-epoch save


class TrainingDiverged(RuntimeError):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train MaskGit's bidirectional transformer (MVTM).")
    # the course's flags (defaults None: take the config's `train:` section)
    p.add_argument('--train_d_path', '--train-path', dest='train_d_path', default=None,
                   help="training images folder (default: the config's data.train_path)")
    p.add_argument('--val_d_path', '--val-path', dest='val_d_path', default=None,
                   help="validation images folder (default: the config's data.val_path)")
    p.add_argument('--checkpoint-path', default='runs/transformer/last_ckpt.pt',
                   help="transformer state_dict written after every epoch; its folder holds all outputs. "
                        "With --start-from-epoch N > 0 training starts from the weights in this file")
    p.add_argument('--device', default=None, help="cuda, cuda:0, cpu (default: cuda if available)")
    p.add_argument('--num_workers', '--num-workers', dest='num_workers', type=int, default=2, help='data loader workers for building the token cache')
    p.add_argument('--batch-size', type=int, default=None, help='samples per process per micro-batch')
    p.add_argument('--partial', type=float, default=1.0, help='use the first fraction of each image folder')
    p.add_argument('--accum-grad', type=int, default=None, help='micro-batches per optimizer step')
    p.add_argument('--epochs', type=int, default=None, help='number of the last epoch to train')
    p.add_argument('--save-per-epoch', type=int, default=None, help='write transformer_epoch_N.pt every N epochs')
    p.add_argument('--start-from-epoch', type=int, default=0,
                   help='continue the course way: load --checkpoint-path and train epochs N+1.. with a fresh optimizer')
    p.add_argument('--ckpt-interval', type=int, default=0,
                   help='also write train_state.pt every N optimizer steps inside an epoch (0: at epoch ends only)')
    p.add_argument('--learning-rate', type=float, default=None, help='peak learning rate')
    p.add_argument('--MaskGitConfig', default='configs/MaskGit.yml', help='MaskGit config (model_param, train)')
    # ours
    p.add_argument('--config-vqgan', default=None, help='VQGAN config (default: the MaskGit config\'s VQ_config_path)')
    p.add_argument('--vqgan-ckpt', default=None, help='VQGAN checkpoint (default: the MaskGit config\'s VQ_CKPT_path)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'off'), default='auto',
                   help='autocast dtype (auto: bf16 on CUDA, off on CPU; bf16 also runs on CPUs with bf16 units)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--warmup-steps', type=int, default=None, help='linear warmup steps before cosine decay')
    p.add_argument('--grad-clip', type=float, default=None, help='max gradient norm (0: off)')
    p.add_argument('--resume', nargs='?', const='auto', default=None,
                   help='continue bit-for-bit from a train_state.pt (default: the one beside --checkpoint-path)')
    p.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run in --checkpoint-path's folder (its checkpoints, train_state.pt, log), "
                        "or --export's existing --out")
    p.add_argument('--max-steps', type=int, default=None,
                   help='stop (validate, save; --resume continues) after this many optimizer steps')
    p.add_argument('--cache-dir', default=None, help='token cache folder (default: the config\'s train.cache_dir)')
    p.add_argument('--init-from', default=None, metavar='CKPT',
                   help='start from these transformer weights (a state_dict or train_state.pt) with a fresh '
                        'optimizer and schedule, e.g. to fine-tune the shipped model')
    p.add_argument('--init-codes-from', default=None, metavar='MASKGIT_CONFIG',
                   help="with --init-from trained on another tokenizer: that tokenizer's MaskGit config (its "
                        "VQ_Configs); its codes are mapped onto this run's by co-occurrence on the training images")
    p.add_argument('--labels', default=None, metavar='JSON',
                   help="image -> class file of a conditional model (Transformer_param num_classes) (default: "
                        "labels.json beside --train_d_path, as prepare_dataset.py writes it)")
    p.add_argument('--val-mask-path', default=None,
                   help="fixed hole masks of the val images for val_hole_acc (default: val_mask64 beside "
                        "--val_d_path, when it exists)")
    p.add_argument('--export', default=None, metavar='CKPT',
                   help='write CKPT (a state_dict or train_state.pt) as a plain fp16 state_dict to --out, and exit')
    p.add_argument('--out', default=None, help='output path of --export (a .sha256 is written beside it)')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class VQ:
    """The frozen VQGAN of a run, resolved once: its config (path and parsed YAML) and checkpoint."""
    config_path: str
    cfg: dict
    ckpt_path: str


def config_train(cfg):
    """configs/MaskGit.yml's `train:` section (every key set) with the config's own `train:` keys over it."""
    return training.settings(cfg, 'transformer')


def train_settings(cfg, args):
    """config_train(cfg), then the flags given over it (checked by check_flags)."""
    return training.settings(cfg, 'transformer', args, FLAG_KEYS)


def read_configs(args):
    """(MaskGit config, training settings, VQ): --MaskGitConfig and its VQGAN's config, each parsed once, and
    checked to agree (codebook size, tokens per image) before anything is loaded."""
    cfg = validate(load_config(args.MaskGitConfig), args.MaskGitConfig, MASKGIT_CONFIG)
    check_flags(args, FLAG_RULES)
    mp = cfg['model_param']
    s = train_settings(cfg, args)
    # the folders: flag, else the config's data:, else configs/MaskGit.yml's; the flags hold them from here on
    paths = training.data_paths(cfg, 'transformer', args.train_d_path, args.val_d_path)
    args.train_d_path, args.val_d_path = paths['train_path'], paths['val_path']
    if args.start_from_epoch and args.start_from_epoch >= s['epochs']:
        raise ValueError(f"--start-from-epoch {args.start_from_epoch} leaves nothing to train: --epochs {s['epochs']} "
                         f"is the number of the last epoch (give --epochs {args.start_from_epoch + 1} or more)")
    vq = mp.get('VQ_Configs') or {}
    vq_cfg_path = args.config_vqgan or vq.get('VQ_config_path')
    vq_ckpt = args.vqgan_ckpt or vq.get('VQ_CKPT_path')
    if not vq_cfg_path or not vq_ckpt:
        raise ValueError(f"config {args.MaskGitConfig}: model_param.VQ_Configs needs VQ_config_path and "
                         f"VQ_CKPT_path (or pass --config-vqgan / --vqgan-ckpt)")
    vq_cfg = validate(load_config(vq_cfg_path), vq_cfg_path, VQGAN_MODEL)
    check_pair(mp, args.MaskGitConfig, vq_cfg['model_param'], vq_cfg_path)
    if not os.path.isfile(vq_ckpt):
        raise FileNotFoundError(f"VQGAN checkpoint not found: {vq_ckpt} (train one with training_vqgan.py "
                                f"or pass --vqgan-ckpt)")
    if args.init_codes_from and not args.init_from:
        raise ValueError("--init-codes-from maps the codes of --init-from's weights: give --init-from too")
    check_writable(args.checkpoint_path, '--checkpoint-path')
    return cfg, s, VQ(vq_cfg_path, vq_cfg, vq_ckpt)


def claim_outputs(args):
    """The earlier run's files in --checkpoint-path's folder that this fresh run replaces (refused without
    --overwrite); a run continued by --resume or --start-from-epoch keeps them."""
    return claim_run_dir(out_dir(args), (os.path.basename(args.checkpoint_path), *RUN_FILES),
                         bool(args.resume) or args.start_from_epoch > 0, args.overwrite)


def init_code_tokens(args, proc):
    """--init-codes-from: the training images' tokens [S, N] (with flips, data.train's order) under that MaskGit
    config's tokenizer, the one --init-from was trained on."""
    vq = (load_config(args.init_codes_from).get('model_param') or {}).get('VQ_Configs') or {}
    if not vq.get('VQ_config_path') or not vq.get('VQ_CKPT_path'):
        raise ValueError(f"--init-codes-from {args.init_codes_from}: no model_param.VQ_Configs with VQ_config_path "
                         f"and VQ_CKPT_path")
    vq_cfg = load_config(vq['VQ_config_path'])
    meta = vqgan_meta(vq_cfg, vq['VQ_CKPT_path'])
    vqgan = load_vqgan(vq['VQ_config_path'], vq['VQ_CKPT_path'], proc.device, cfg=vq_cfg)
    return encode_folder(vqgan, args.train_d_path, args.partial, True, meta['mean'], meta['std'],
                         num_workers=args.num_workers).flatten(0, 1)


# ----------------------------------------------------------------------------- processes

@dataclass
class Proc:
    """This process's place in the run: DDP world size and rank, device, autocast factory."""
    world: int
    rank: int
    device: torch.device
    autocast: Callable = nullcontext

    def log(self, msg):
        if self.rank == 0:
            print(msg, file=sys.stderr)


def setup_distributed(device_arg):
    """(world, rank, device); DDP when launched by torchrun (RANK in the environment)."""
    if 'RANK' not in os.environ:
        return 1, 0, resolve_device(device_arg)
    local = int(os.environ.get('LOCAL_RANK', 0))
    cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith('cuda'))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group('nccl' if cuda else 'gloo')
    return dist.get_world_size(), dist.get_rank(), torch.device(f'cuda:{local}' if cuda else 'cpu')


# ----------------------------------------------------------------------------- one step

@torch.no_grad()
def evaluate(raw, tokens, s, seed, world, rank, device, autocast=nullcontext, holes=None, labels=None):
    """(loss, masked-token accuracy, hole accuracy, hole accuracy with the true class) on `tokens`, masks fixed
    by the seed (comparable across epochs). The loss and accuracy use the paper's random masks. Hole accuracy
    is what inpainting's first step gets right: one pass's argmax on every token of each image's fixed hole,
    the rest of the image shown as inpainting shows it (holes: (token holes [n, N] bool, context [n, N] long),
    from the val split's masks and masked images); NaN without them. labels [n]: the images' classes (a
    conditional model): the loss and accuracy use them; hole accuracy uses the null class, as inpainting's
    default does, and the last figure the true class (NaN for an unconditional model).
    """
    was_training = raw.training
    raw.eval()
    n, n_tok = tokens.shape
    g = torch.Generator().manual_seed(step_seed(seed, 0, VAL_STREAM))
    r_all, scores_all = torch.rand(n, generator=g), torch.rand(n, n_tok, generator=g)
    idx = torch.arange(rank, n, world)
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # loss sum, correct, count, hole correct, hole count
    #                                                             (null class), hole correct, hole count (true class)
    for i in range(0, len(idx), s['batch_size']):
        k = idx[i:i + s['batch_size']]
        z = tokens[k].to(device).long()
        y = None if labels is None else labels[k].to(device)
        with autocast():
            logits, target, mask = raw(z, r_all[k], scores_all[k], labels=y)
        loss_sum = mvtm_loss(logits, target, mask, raw.num_codebook_vectors, s['label_smoothing'], True, normalizer=1)
        correct, count = masked_accuracy(logits, target, mask, raw.num_codebook_vectors)
        hole = torch.zeros(4, dtype=torch.float64, device=device)
        for j, y_hole in enumerate((None, y) if holes is not None else ()):  # None: the null class
            if j and y is None:
                break
            with autocast():  # r = 0: the whole hole masked, as at the first decoding step
                logits, target, mask = raw(z, torch.zeros(len(k)), scores_all[k], holes[0][k], holes[1][k], y_hole)
            hole[2 * j:2 * j + 2] = torch.stack(masked_accuracy(logits, target, mask, raw.num_codebook_vectors)).double()
        sums += torch.cat([torch.stack([loss_sum.double(), correct.double(), count.double()]), hole])
    if world > 1:
        dist.all_reduce(sums)
    raw.train(was_training)
    nan = float('nan')
    hole_acc = (sums[3] / sums[4]).item() if holes is not None else nan
    hole_acc_class = (sums[5] / sums[6]).item() if holes is not None and labels is not None else nan
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item(), hole_acc, hole_acc_class


# ----------------------------------------------------------------------------- data

@dataclass
class Data:
    """The run's tokens: train [S, N] (images and their flips) and val [n, N]; ctx: (context tokens, token
    holes) [S, V, N] each of the hole-masked training variants, or None; val_holes: see evaluate, or None;
    classes: a conditional model's (class names, train ids [S], val ids [n]) (load_classes), or None;
    tokenizer_sha256: the VQGAN's tokenizer hash (models/token_cache.py), recorded in every checkpoint."""
    train: torch.Tensor
    val: torch.Tensor
    ctx: tuple | None
    val_holes: tuple | None
    classes: tuple | None = None
    tokenizer_sha256: str | None = None

    @property
    def train_labels(self):
        return None if self.classes is None else self.classes[1]

    @property
    def val_labels(self):
        return None if self.classes is None else self.classes[2]


def load_classes(args, mp):
    """A conditional model's (class names, train ids [2 * images], val ids [images]), else None. The names are
    the labels file's classes, sorted (a class's id is its place); each training image's id is repeated for
    its flip, the token cache's next row. Refused: a class count other than Transformer_param num_classes."""
    num_classes = mp['Transformer_param'].get('num_classes', 0)
    if not num_classes:
        return None
    path = args.labels or os.path.join(os.path.dirname(os.path.normpath(args.train_d_path)), 'labels.json')
    labels = read_labels(path)
    names = class_names(labels)
    if len(names) != num_classes:
        raise ValueError(f"labels file {path} has {len(names)} classes but {args.MaskGitConfig} sets "
                         f"Transformer_param num_classes {num_classes}")
    root = os.path.dirname(os.path.abspath(path))
    ids = {split: image_labels(labels, [os.path.abspath(p) for p in list_images(folder, args.partial)], root,
                               names, path) for split, folder in (('train', args.train_d_path), ('val', args.val_d_path))}
    return names, ids['train'].repeat_interleave(2), ids['val']                         # flips share the label


def load_data(args, s, vq, proc, classes=None):
    """Tokens from the caches (models/token_cache.py), encoded by the frozen VQGAN where missing or stale:
    rank 0 encodes, the others then read what it wrote. The VQGAN is loaded only if something is encoded.
    classes: load_classes(), kept in the Data."""
    get_vqgan = functools.cache(lambda: load_vqgan(vq.config_path, vq.ckpt_path, proc.device, cfg=vq.cfg))
    vq_meta = vqgan_meta(vq.cfg, vq.ckpt_path)
    cache = dict(vq_meta=vq_meta, cache_dir=s['cache_dir'], get_vqgan=get_vqgan, partial=args.partial, batch_size=64,
                 num_workers=args.num_workers, log=proc.log)
    tokens = {}
    for turn in (0, 1):
        if (proc.rank == 0) == (turn == 0):
            tokens['train'] = load_tokens(args.train_d_path, flip=True, **cache)
            tokens['val'] = load_tokens(args.val_d_path, flip=False, **cache)
        if proc.world > 1 and turn == 0:
            dist.barrier()
    vq_p = vq.cfg['model_param']
    factor = downsampling(vq_p)
    ctx = None
    if s['hole_mask_frac'] > 0:  # the dataset's hole generator on its training stream, the masked images encoded
        bank = pixel_mask_bank(s['mask_bank'], vq_p['img_resolution'], args.seed)
        context, hole_ids = load_context_tokens(args.train_d_path, vq_meta, s['cache_dir'], get_vqgan, bank,
                                                s['context_variants'], args.seed, args.partial, log=proc.log)
        ctx = (context, latent_mask(bank, factor).flatten(1)[hole_ids])                        # [S, V, N] each
    val_holes = load_val_holes(args, factor, len(tokens['val']), inference_stats(vq.cfg), get_vqgan)
    get_vqgan.cache_clear()  # training never needs the VQGAN again
    return Data(tokens['train'], tokens['val'], ctx, val_holes, classes, vq_meta['tokenizer_sha256'])


def load_val_holes(args, factor, n_val, stats, get_vqgan):
    """(token holes [n_val, N] bool, context tokens [n_val, N] long) of the val split's fixed masks and masked
    images (val_mask64/ and val_masked_image/ beside --val_d_path), or None when the dataset has none."""
    root = os.path.dirname(os.path.normpath(args.val_d_path))
    path = args.val_mask_path or os.path.join(root, 'val_mask64')
    images = os.path.join(root, 'val_masked_image')
    if not os.path.isdir(path) or not os.path.isdir(images):
        if args.val_mask_path:
            raise FileNotFoundError(f"--val-mask-path: folder not found: {path} (or its {images})")
        return None
    masks, shown = MaskDataset(path, args.partial), ImageDataset(images, args.partial, *stats)
    if not len(masks) == len(shown) == n_val:
        raise ValueError(f"{path} has {len(masks)} masks, {images} {len(shown)} images, {args.val_d_path} {n_val}")
    holes = latent_mask(torch.stack([m for m in masks]), factor).flatten(1)
    vqgan = get_vqgan()
    x = torch.stack([v for v in shown]).to(next(vqgan.parameters()).device)
    return holes, torch.cat([vqgan.encode_indices(x[i:i + 64]).cpu() for i in range(0, len(x), 64)])


def count_steps(args, s, data, world):
    """Optimizer steps per epoch: whole global batches (batch x accum x processes) of the training tokens."""
    per_step = s['batch_size'] * s['accum_grad'] * world
    steps_per_epoch = len(data.train) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {s['batch_size']} x --accum-grad {s['accum_grad']} x {world} process(es) = "
                         f"{per_step} samples per optimizer step, but {args.train_d_path} gives only "
                         f"{len(data.train)} (images + flips)")
    if len(data.val) < world:
        raise ValueError(f"{args.val_d_path} has {len(data.val)} images, fewer than the {world} processes")
    return steps_per_epoch


# ----------------------------------------------------------------------------- outputs

# val_hole_acc: with the null class (inpainting's default); val_hole_acc_class: a conditional model's true class
LOG_FIELDS = ('epoch', 'step', 'lr', 'train_loss', 'val_loss', 'val_acc', 'val_hole_acc', 'tokens_per_s', 'seconds',
              'val_hole_acc_class')


def read_log(out_dir, upto):
    """Rows of an existing log.csv up to epoch `upto` (kept when continuing with --start-from-epoch)."""
    path = os.path.join(out_dir, 'log.csv')
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [{k: (int if k in ('epoch', 'step') else float)(v or 'nan') for k, v in r.items()}
                for r in csv.DictReader(f)]
    return [r for r in rows if r['epoch'] <= upto]


def write_log(rows, out_dir):
    with atomic_open(os.path.join(out_dir, 'log.csv'), newline='') as f:
        wr = csv.DictWriter(f, LOG_FIELDS)
        wr.writeheader()
        wr.writerows(rows)
    ep = [r['epoch'] for r in rows]
    plot_curves({'train loss': (ep, [r['train_loss'] for r in rows]),
                 'val loss': (ep, [r['val_loss'] for r in rows])},
                os.path.join(out_dir, 'loss_curve.png'), title='MVTM cross-entropy (masked tokens)')


# ----------------------------------------------------------------------------- the run

PROGRESS = ('epoch', 'step', 'epoch_loss_sum', 'epoch_steps', 'rows')  # what train_state.pt keeps besides weights


@dataclass
class Run:
    """The model and what training changes; train_state.pt holds all of it (save_state)."""
    raw: MaskGit                   # the model itself; `model` is what a step calls (compiled and/or DDP-wrapped)
    opt: torch.optim.Optimizer     # its lr is set every step (lr_factor)
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    model: torch.nn.Module = None
    epoch: int = 0                 # the last finished epoch
    step: int = 0                  # optimizer steps taken
    epoch_loss_sum: float = 0.0    # over this epoch's steps so far (kept by a mid-epoch save)
    epoch_steps: int = 0
    rows: list = field(default_factory=list)  # log.csv
    tokenizer_sha256: str = None   # of the VQGAN whose tokens it trains on, saved with the weights

    def progress(self):
        return {k: getattr(self, k) for k in PROGRESS}

    def weights(self):
        """The transformer's state_dict, the course's format, which a course loader reads with strict=True: the
        tokenizer's hash goes into train_state.pt and the exports, never into --checkpoint-path's files."""
        return self.raw.transformer.state_dict()


def out_dir(args):
    """The folder of every output: --checkpoint-path's."""
    return os.path.dirname(os.path.abspath(args.checkpoint_path))


def state_path(args):
    return os.path.join(out_dir(args), 'train_state.pt')


def save_state(run, args):
    save_checkpoint(dict(transformer=run.weights(), optimizer=run.opt.state_dict(), scaler=run.scaler.state_dict(),
                         steps_per_epoch=run.steps_per_epoch, tokenizer_sha256=run.tokenizer_sha256,
                         **run.progress()), state_path(args))


def check_before_save(run, args, val_loss):
    """Nothing is saved unless every weight is finite and the val loss is finite and sane."""
    limit = 2 * math.log(run.raw.num_codebook_vectors)  # twice the loss of a uniform guess
    bad = next((name for name, p in run.raw.named_parameters() if not torch.isfinite(p).all()), None)
    if bad or not math.isfinite(val_loss) or val_loss > limit:
        why = f"weight {bad} is not finite" if bad else f"val loss {val_loss:.4g} (limit {limit:.3g})"
        raise TrainingDiverged(f"{why} after step {run.step}: stopped before saving; the last saved "
                               f"checkpoints ({args.checkpoint_path}, {state_path(args)}) are untouched")


def build(args, mp, s, proc, scaler, steps_per_epoch, names=None, code_tokens=None, tokenizer=None):
    """The model and its optimizer, from scratch or from the checkpoint the flags name (resume), then wrapped.
    names: a conditional model's class names (saved with its weights); code_tokens: (this run's, --init-from's
    tokenizer's) tokens of the training images, for --init-codes-from; tokenizer: this run's tokenizer hash."""
    seed_everything(args.seed)  # here: whether the cache was just built must not change the initial weights
    raw = MaskGit(mp).to(proc.device)
    if names is not None:
        raw.transformer.class_emb.names = names
    run = Run(raw, make_optimizer(raw, s, proc.device), scaler, steps_per_epoch, tokenizer_sha256=tokenizer)
    resume(run, args, proc, code_tokens)
    if names is not None and raw.transformer.class_emb.names != names:
        raise ValueError(f"the checkpoint's classes ({', '.join(raw.transformer.class_emb.names or ['none named'])}) "
                         f"are not the labels file's ({', '.join(names)})")
    run.model = torch.compile(raw) if args.compile else raw
    if proc.world > 1:
        run.model = DDP(run.model, device_ids=[proc.device.index] if proc.device.type == 'cuda' else None)
    return run


def resume(run, args, proc, code_tokens=None):
    """--resume: everything from train_state.pt; --start-from-epoch N (the course's): the weights of
    --checkpoint-path, a fresh optimizer, epochs N+1..; --init-from: weights only, from step 0 (their codes
    mapped onto this tokenizer's with code_tokens, see remap_codes)."""
    if args.resume:
        path = state_path(args) if args.resume == 'auto' else args.resume
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or 'optimizer' not in ckpt:
            raise ValueError(f"--resume {path} is not a train_state.pt (no optimizer state): give the train_state.pt "
                             f"of the run, or --resume alone for the one beside --checkpoint-path")
        same_tokenizer(ckpt, run, path)
        load_state_dict_checked(run.raw.transformer, transformer_state_dict(ckpt), path)
        run.opt.load_state_dict(ckpt['optimizer'])
        run.scaler.load_state_dict(ckpt['scaler'])
        for k in PROGRESS:
            setattr(run, k, ckpt[k])
        if ckpt['steps_per_epoch'] != run.steps_per_epoch:
            raise ValueError(f"{path} was written with {ckpt['steps_per_epoch']} steps per epoch, now "
                             f"{run.steps_per_epoch}: resume with the same data, --partial and batch flags")
        proc.log(f"resuming from {path}: epoch {run.epoch}, step {run.step}")
    elif args.start_from_epoch > 0:
        sd = load_checkpoint(args.checkpoint_path)
        same_tokenizer(sd, run, args.checkpoint_path)
        load_state_dict_checked(run.raw.transformer, sd, args.checkpoint_path)
        run.epoch, run.step = args.start_from_epoch, args.start_from_epoch * run.steps_per_epoch
        run.rows = read_log(out_dir(args), args.start_from_epoch)
    elif args.init_from:
        sd = {k: v for k, v in transformer_state_dict(load_checkpoint(args.init_from)).items() if k not in RECORD_KEYS}
        if code_tokens is not None:
            k_old = sd['tok_emb.weight'].shape[0] - 1
            sd, m = remap_codes(sd, *code_tokens, run.raw.num_codebook_vectors)
            proc.log(f"codes of {args.init_from} mapped onto this tokenizer's: its {k_old} codes give "
                     f"{m.unique().numel()} starting points to these {len(m)}")
        sd, added = run.raw.transformer.with_class_embedding(sd)
        if added:
            proc.log(f"note: {args.init_from} is unconditional: the class embedding starts at zero, so the model "
                     f"starts as that one")
        load_state_dict_checked(run.raw.transformer, sd, args.init_from)
        proc.log(f"starting from the weights of {args.init_from}")


def with_record(ckpt):
    """The state_dict of a train_state.pt or state_dict, with the tokenizer hash a train_state.pt records."""
    sd = transformer_state_dict(ckpt)
    saved = ckpt.get('tokenizer_sha256') if isinstance(ckpt, dict) else None
    return {**sd, 'tokenizer_sha256': saved} if saved else sd


def same_tokenizer(ckpt, run, path):
    """Refuse to continue a checkpoint (train_state.pt or a state_dict) trained on another tokenizer's tokens."""
    saved = ckpt.get('tokenizer_sha256') if isinstance(ckpt, dict) else None
    if saved and run.tokenizer_sha256 and saved != run.tokenizer_sha256:
        raise ValueError(f"{path} was trained on the tokens of another VQGAN (tokenizer sha256 {saved[:12]}...), not "
                         f"this run's --vqgan-ckpt ({run.tokenizer_sha256[:12]}...): continue it with the VQGAN it was "
                         f"trained on")


def train_step(run, args, s, proc, data, order, i):
    """Optimizer step i of the epoch (its micro-batches from `order`); returns (loss, lr)."""
    lr = s['learning_rate'] * lr_factor(run.step, s['warmup_steps'], s['epochs'] * run.steps_per_epoch)
    for grp in run.opt.param_groups:
        grp['lr'] = lr
    torch.manual_seed(step_seed(args.seed, run.step, DROPOUT_STREAM, proc.rank))
    loss = accumulate_grads(run.model, run.raw, data.train, order, i, run.step, s, args.seed, proc.world, proc.rank,
                            proc.device, proc.autocast, run.scaler, data.ctx, data.train_labels, loss_fn=mvtm_loss)
    run.scaler.unscale_(run.opt)
    gnorm = torch.nn.utils.clip_grad_norm_(run.raw.parameters(), s['grad_clip'] if s['grad_clip'] > 0 else math.inf)
    if proc.world > 1:
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    loss = loss.item()
    if not math.isfinite(loss) or (not run.scaler.is_enabled() and not math.isfinite(gnorm.item())):
        raise TrainingDiverged(
            f"loss {loss:.4g} (gradient norm {gnorm.item():.4g}) at epoch {run.epoch + 1}, step {run.step}: stopped; "
            f"the last good checkpoint is {args.checkpoint_path} (epoch {run.epoch}), untouched")
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    run.epoch_loss_sum += loss
    run.epoch_steps += 1
    return loss, lr


def max_steps_reached(run, args):
    return args.max_steps is not None and run.step >= args.max_steps


def train_epoch(run, args, s, proc, data, epoch):
    """The steps of `epoch` (from where a resumed run stopped), saving every --ckpt-interval steps and stopping
    at --max-steps; returns the throughput part of its log row, and whether --max-steps cut the epoch short."""
    order = epoch_order(len(data.train), epoch, args.seed, proc.world, proc.rank)
    first = run.step - (epoch - 1) * run.steps_per_epoch  # > 0 only when resuming inside an epoch
    t0, done, cut = time.time(), 0, False
    bar = tqdm(range(first, run.steps_per_epoch), desc=f"epoch {epoch}/{s['epochs']}", disable=proc.rank != 0)
    for i in bar:
        loss, lr = train_step(run, args, s, proc, data, order, i)
        done += 1
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        cut = max_steps_reached(run, args) and i + 1 < run.steps_per_epoch
        if cut or args.ckpt_interval > 0 and run.step % args.ckpt_interval == 0 and i + 1 < run.steps_per_epoch:
            val = data.val if cut else data.val[:CHECK_SEQUENCES]  # --max-steps: the whole val split, reported
            val_loss = evaluate(run.raw, val, s, args.seed, proc.world, proc.rank, proc.device, proc.autocast,
                                labels=data.val_labels)[0]
            check_before_save(run, args, val_loss)
            if proc.rank == 0:
                save_state(run, args)
                if cut:
                    save_checkpoint(run.weights(), args.checkpoint_path)
            if cut:
                proc.log(f"--max-steps {args.max_steps}: stopped at step {i + 1} of {run.steps_per_epoch} in epoch "
                         f"{epoch}, val loss {val_loss:.4f}; saved {args.checkpoint_path} and {state_path(args)} "
                         f"(--resume continues)")
                break
    seconds = time.time() - t0
    tokens = done * s['batch_size'] * s['accum_grad'] * proc.world * run.raw.num_image_tokens
    return dict(lr=lr, tokens_per_s=tokens / seconds, seconds=seconds), cut


def end_of_epoch(run, args, s, proc, data, epoch, throughput):
    """Validate and check, then (rank 0) write the course's state_dict, transformer_epoch_N.pt every
    save_per_epoch epochs, train_state.pt and log.csv."""
    val_loss, val_acc, val_hole_acc, val_hole_acc_class = evaluate(
        run.raw, data.val, s, args.seed, proc.world, proc.rank, proc.device, proc.autocast, data.val_holes,
        data.val_labels)
    check_before_save(run, args, val_loss)
    run.rows.append(dict(epoch=epoch, step=run.step, lr=throughput['lr'],
                         train_loss=run.epoch_loss_sum / run.epoch_steps, val_loss=val_loss, val_acc=val_acc,
                         val_hole_acc=val_hole_acc, tokens_per_s=throughput['tokens_per_s'],
                         seconds=throughput['seconds'], val_hole_acc_class=val_hole_acc_class))
    run.epoch, run.epoch_loss_sum, run.epoch_steps = epoch, 0.0, 0
    proc.log(f"epoch {epoch}: train loss {run.rows[-1]['train_loss']:.4f}, val loss {val_loss:.4f}, "
             f"val masked-token acc {val_acc:.4f}, val hole acc {val_hole_acc:.4f}")
    if proc.rank == 0:
        sd = run.weights()
        if s['save_per_epoch'] and epoch % s['save_per_epoch'] == 0:
            save_checkpoint(sd, os.path.join(out_dir(args), f'transformer_epoch_{epoch}.pt'))
        save_checkpoint(sd, args.checkpoint_path)
        save_state(run, args)
        write_log(run.rows, out_dir(args))


def main(argv=None):
    args = parse_args(argv)
    if args.export:  # a train_state.pt's tokenizer_sha256 goes into the export
        return export_checkpoint(args.export, args.out, with_record, args.overwrite)
    cfg, s, vq = read_configs(args)
    stale = claim_outputs(args)
    classes = load_classes(args, cfg['model_param'])  # a conditional model's labels, checked before any output
    world, rank, device = setup_distributed(args.device)
    autocast, scaler = amp_setup(device, args.amp)
    proc = Proc(world, rank, device, autocast)
    data = load_data(args, s, vq, proc, classes)
    code_tokens = (data.train, init_code_tokens(args, proc)) if args.init_codes_from else None
    run = build(args, cfg['model_param'], s, proc, scaler, count_steps(args, s, data, world),
                None if classes is None else classes[0], code_tokens, data.tokenizer_sha256)
    if run.epoch >= s['epochs']:
        raise ValueError(f"the run in {out_dir(args)} has finished epoch {run.epoch} of --epochs {s['epochs']}: "
                         f"nothing to train (raise --epochs)")
    if max_steps_reached(run, args):
        raise ValueError(f"--max-steps {args.max_steps}: the run is already at step {run.step}: nothing to train")
    if rank == 0:
        remove_files(stale)  # --overwrite: no file of the earlier run outlives this one
    proc.log(f"{len(data.train)} train / {len(data.val)} val sequences, {run.steps_per_epoch} steps per epoch, "
             f"{sum(p.numel() for p in run.raw.transformer.parameters()) / 1e6:.1f}M parameters, "
             + (f"{len(classes[0])} classes (cond_drop {s['cond_drop']}), " if classes else "")
             + f"{world} process(es), {device}")
    run.model.train()
    for epoch in range(run.epoch + 1, s['epochs'] + 1):
        throughput, cut = train_epoch(run, args, s, proc, data, epoch)
        if cut:
            break
        end_of_epoch(run, args, s, proc, data, epoch, throughput)
        if max_steps_reached(run, args):
            proc.log(f"--max-steps {args.max_steps}: stopped after epoch {epoch} (--resume continues)")
            break
    if world > 1:
        dist.barrier()  # rank 0 may still be writing; tearing gloo down under it aborts the process
        dist.destroy_process_group()
    return run.progress()


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, TrainingDiverged) as e:
        sys.exit(f"error: {e}")
