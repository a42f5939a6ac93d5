"""Train on your own pictures (train.py): the run folder and its state, the configs, the budget plan, the stages.

A run lives in RUNS/<name>/: data/ (prepare_dataset.py's layout), VQGAN.yml and MaskGit.yml (the base pair's
configs with this run's paths), tokenizer/ and transformer/ (the stages' run folders), cache/ (token caches),
logs/<stage>.log, vqgan.pt + transformer.pt (the exported pair), demo/ (inpainting of the test split) and
train_state.json (the stages finished, and the flags each stage started with, so --resume repeats them).
Every stage is a script run as a user would run it (sys.executable), never imported.
"""
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from dataset import IMAGE_EXTS
from models.maskgit import MaskGit
from models.masks import pixel_mask_bank
from models.vqgan import VQGAN
from utils import atomic_open, load_checkpoint, load_config, save_checkpoint

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BASE = 'configs/MaskGit_small.yml'  # the shipped unconditional pair: its tokenizer and transformer
MIN_PICTURES = 8        # fewer cannot give a train, a val and a test image and still train anything
MIN_TRAIN = 4
MAX_PIXELS = 40_000_000  # prepare_dataset.py's --max-pixels default
TEST_MAX = 64           # test images (the demo inpaints them all): 10 % of the folder up to this
MAX_EPOCHS = 40         # passes over the pictures per stage: a small folder stops here, under its budget
TOKENIZER_SHARE = 0.3   # of the training time; the transformer gets the rest
VQ_LR = 1e-4            # RESULTS.md stage 1c's decoder fine-tune rate
TR_LR = 3e-4            # between the Fashion-MNIST fine-tune's 5e-4 and the conditional fine-tunes' 1e-4
STAGES = ('data', 'tokenizer', 'tokenizer_export', 'transformer', 'transformer_export', 'demo')
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')


class StageFailed(RuntimeError):
    pass


def shown(path):
    """A path as the configs and printed commands write it: relative to the repo when inside it (the shipped
    configs' convention: scripts run from the repo root), else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, ROOT)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def from_root(path):
    """A path from a config (relative to the repo root, as the shipped configs are) -> absolute."""
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def inside(a, b):
    """Whether real path a is b or lies inside it."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


# ----------------------------------------------------------------------------- the folder and the run folder

def count_pictures(folder):
    """Image files under `folder` (recursive) whose header PIL reads, padded square within prepare_dataset.py's
    default --max-pixels: the pictures it can use (before it drops exact duplicates)."""
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)  # only the header is read
        for dirpath, _, names in os.walk(folder, followlinks=True):
            for name in names:
                if name.lower().endswith(IMAGE_EXTS):
                    try:
                        with Image.open(os.path.join(dirpath, name)) as img:
                            n += max(img.size) ** 2 <= MAX_PIXELS
                    except Exception:  # unreadable, or a decompression bomb: prepare_dataset.py skips it too
                        pass
    return n


def split_counts(n):
    """Pictures -> (train, val, test) as prepare_dataset.py will split them with split_flags(n)."""
    test = min(TEST_MAX, max(1, round(0.1 * n)))
    rest = n - test
    val = max(1, int(round(rest * val_frac(rest))))
    return rest - val, val, test


def val_frac(rest):
    return max(0.1, 1.0 / max(rest, 1) + 1e-9)  # at least one val image


def layout(run):
    """The files and folders of a run folder (see the module docstring)."""
    j = lambda *a: os.path.join(run, *a)
    return SimpleNamespace(run=run, data=j('data'), tokenizer=j('tokenizer'), encoder=j('encoder'),
                           transformer=j('transformer'), cache=j('cache'), demo=j('demo'), vqgan_cfg=j('VQGAN.yml'),
                           maskgit_cfg=j('MaskGit.yml'), vqgan=j('vqgan.pt'), transformer_ckpt=j('transformer.pt'),
                           state=j('train_state.json'), log=lambda stage: j('logs', f'{stage}.log'))


def check_run_folder(paths, resume, overwrite):
    """One-line errors for the run folder before anything is written: a used one needs --resume or --overwrite,
    and one train.py did not make is never touched."""
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces one: give one of them")
    used = os.path.isdir(paths.run) and os.listdir(paths.run)
    if used and not os.path.isfile(paths.state):
        raise ValueError(f"{paths.run} holds files train.py did not write (no train_state.json): choose another --name")
    if resume and not used:
        raise ValueError(f"--resume: {paths.run} holds no run to continue; run without --resume")
    if used and not (resume or overwrite):
        raise ValueError(f"{paths.run} holds an earlier run: give --resume to continue it, --overwrite to replace it, "
                         f"or another --name")


def read_state(paths):
    with open(paths.state) as f:
        return json.load(f)


def write_state(paths, state):
    with atomic_open(paths.state) as f:
        json.dump(state, f, indent=1)


# ----------------------------------------------------------------------------- configs

def base_pair(base):
    """The base MaskGit config -> (its dict, VQGAN config path, VQGAN checkpoint, transformer checkpoint), every
    file checked; a conditional base is refused (its classes are not the new folder's)."""
    cfg = load_config(base)
    vq = (cfg.get('model_param') or {}).get('VQ_Configs') or {}
    tr = (cfg.get('checkpoint') or {}).get('path')
    if not vq.get('VQ_config_path') or not vq.get('VQ_CKPT_path') or not tr:
        raise ValueError(f"--base {base} needs model_param.VQ_Configs.VQ_config_path, VQ_CKPT_path and checkpoint.path")
    if (cfg['model_param'].get('Transformer_param') or {}).get('num_classes'):
        raise ValueError(f"--base {base} is class-conditional (num_classes): its classes are not your folder's; "
                         f"fine-tune an unconditional pair (e.g. {DEFAULT_BASE})")
    files = [from_root(p) for p in (vq['VQ_config_path'], vq['VQ_CKPT_path'], tr)]
    for p in files:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"--base {base}: {p} not found")
    return (cfg, *files)


def run_configs(base_cfg, vq_cfg_path, paths):
    """(VQGAN config, MaskGit config) of the run: the base pair's with the run's data, run folders, cache and
    checkpoints filled in (everything else, model and decoding settings included, is the base's)."""
    vq = load_config(vq_cfg_path)
    vq['data'] = {**(vq.get('data') or {}), 'train_path': shown(paths.data + '/train'),
                  'val_path': shown(paths.data + '/val')}
    vq['train'] = {**(vq.get('train') or {}), 'run_dir': shown(paths.tokenizer)}
    if 'train_encoder' in vq:
        vq['train_encoder'] = {**vq['train_encoder'], 'run_dir': shown(paths.encoder)}
    vq['checkpoint'] = {'path': shown(paths.vqgan)}
    mg = json.loads(json.dumps(base_cfg))  # a deep copy
    mg['model_param']['VQ_Configs'] = dict(VQ_config_path=shown(paths.vqgan_cfg), VQ_CKPT_path=shown(paths.vqgan))
    mg['train'] = {**(mg.get('train') or {}), 'cache_dir': shown(paths.cache)}
    mg['checkpoint'] = {'path': shown(paths.transformer_ckpt)}
    return vq, mg


def write_config(cfg, path, base):
    with atomic_open(path) as f:
        f.write(f"# written by train.py from {shown(base)}, with this run's paths\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


# ----------------------------------------------------------------------------- costs and the plan

def _seconds(fn, device, n=1):
    """Seconds per call of fn, after one warm-up call (allocations, kernel choice)."""
    fn()
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def _save_seconds(module):
    """Seconds of a checkpoint save (utils.save_checkpoint: the file and its SHA-256) of module's weights."""
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        save_checkpoint(module.state_dict(), os.path.join(d, 'w.pt'))
        return time.perf_counter() - t


def measure_costs(vq_param, mp, b_vq, b_tr, device):
    """Seconds per step and per item of the base pair's models on `device`, measured on a few random batches
    (weights random: the cost does not depend on them). The stages' steps are these models' steps."""
    torch.manual_seed(0)
    res = vq_param['img_resolution']
    vq = VQGAN(vq_param).to(device)
    x = torch.randn(b_vq, 3, res, res, device=device)
    opt = torch.optim.Adam([*vq.post_quant_conv.parameters(), *vq.decoder.parameters()])

    def vq_step():  # training_vqgan.py --decoder-only: the encoder and codebook frozen
        with torch.no_grad():
            z_q = vq.codebook.eval()(vq.quant_conv(vq.encoder(x)))[0]
        x_hat = vq.decode(z_q)
        ((x_hat - x).abs().mean() + (x_hat - x).pow(2).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tr = MaskGit(mp).transformer.to(device)
    k, n = mp['num_codebook_vectors'], mp['num_image_tokens']
    tokens = torch.randint(0, k, (b_tr, n), device=device)
    opt_t = torch.optim.AdamW(tr.parameters())

    def tr_step():
        F.cross_entropy(tr(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt_t.step()
        opt_t.zero_grad(set_to_none=True)

    t = time.perf_counter()
    pixel_mask_bank(16, res, 0)
    mask = (time.perf_counter() - t) / 16
    with torch.no_grad():
        vq_img = _seconds(lambda: vq.decode(vq.encode(x)[0]), device) / b_vq
        tr_seq = _seconds(lambda: tr(tokens), device) / b_tr
    return dict(vq_step=_seconds(vq_step, device), tr_step=_seconds(tr_step, device), vq_img=vq_img, tr_seq=tr_seq,
                vq_batch=b_vq, tr_batch=b_tr, mask=mask,
                # an epoch saves last.pt and best.pt (VQGAN, PatchGAN, both optimizers: ~5x the VQGAN's weights), and
                # train_state.pt (weights, AdamW's moments) + the course's state_dict: 4x the transformer's
                vq_save=10 * _save_seconds(vq), tr_save=4 * _save_seconds(tr))


@dataclass
class StagePlan:
    steps: int
    epochs: int
    steps_per_epoch: int
    batch: int
    seconds: float          # estimated wall time, the script's start included
    max_steps: bool         # whether --max-steps cuts the last epoch
    capped: bool = False    # max_epochs stopped it below its share of the budget


def size_stage(share_s, step_s, epoch_s, spe, batch, fixed_s, max_epochs, whole_epochs):
    """Steps that fit share_s seconds at step_s a step and epoch_s an epoch (validation, saves), at most
    max_epochs epochs; whole_epochs rounds down to whole epochs when there is at least one (a learning-rate
    schedule that ends with the run)."""
    steps = max(1, int(share_s / (step_s + epoch_s / spe)))
    capped = steps > max_epochs * spe
    steps = min(steps, max_epochs * spe)
    if whole_epochs and steps >= spe:
        steps -= steps % spe
    epochs = math.ceil(steps / spe)
    return StagePlan(steps, epochs, spe, batch, fixed_s + steps * step_s + epochs * epoch_s, steps % spe != 0, capped)


def batches(counts, vq_batch, tr_batch):
    """The stages' batch sizes: the base configs', at most one epoch (the transformer trains on images + flips)."""
    return min(vq_batch, counts[0]), min(tr_batch, 2 * counts[0])


def fixed_costs(counts, costs, startup_s, mg):
    """Seconds of each stage but its training steps: the script's start, the token caches, the demo."""
    train, val, test = counts
    t = mg.get('train') or {}
    ctx = 1 + (t.get('context_variants', 2) if t.get('hole_mask_frac', 0) else 0)
    mp = mg['model_param']
    rounds = (1 + mp.get('refine', 0)) * mp.get('total_iter', 8)
    return dict(
        data=startup_s + 0.02 * sum(counts), tokenizer=startup_s, tokenizer_export=startup_s,
        transformer=(startup_s + 2 * (train + val) * ctx * costs['vq_img']
                     + (t.get('mask_bank', 4096) if ctx > 1 else 0) * costs['mask']),
        transformer_export=startup_s,
        demo=startup_s + test * rounds * (costs['tr_seq'] + costs['vq_img']))


def plan(counts, costs, startup_s, mg, time_left_s, max_epochs, done=()):
    """{stage: StagePlan (training) or estimated seconds} of the stages not in `done`, fitting time_left_s:
    the training time left after the fixed costs goes TOKENIZER_SHARE to the tokenizer, the rest (and what the
    tokenizer's epoch cap leaves) to the transformer. A ValueError when the fixed costs leave no time to train."""
    train, val, _ = counts
    fixed = {k: v for k, v in fixed_costs(counts, costs, startup_s, mg).items() if k not in done}
    train_s = time_left_s - sum(fixed.values())
    if train_s <= 0:
        need = sum(fixed.values()) / 60
        raise ValueError(f"--budget leaves no time to train: the scripts' starts, the token caches and the demo alone "
                         f"take ~{need:.1f} min here; give --budget {math.ceil(need) + 2} or more")
    out = dict(fixed)
    b_vq, b_tr = batches(counts, costs['vq_batch'], costs['tr_batch'])
    if 'tokenizer' in fixed:
        share = train_s * (TOKENIZER_SHARE if 'transformer' in fixed else 1)
        out['tokenizer'] = size_stage(share, costs['vq_step'] * b_vq / costs['vq_batch'],
                                      val * costs['vq_img'] + costs['vq_save'], train // b_vq, b_vq, fixed['tokenizer'],
                                      max_epochs, False)
        train_s -= out['tokenizer'].seconds - fixed['tokenizer']
    if 'transformer' in fixed:
        out['transformer'] = size_stage(train_s, costs['tr_step'] * b_tr / costs['tr_batch'],
                                        4 * val * costs['tr_seq'] + costs['tr_save'],  # val loss, then val holes
                                        2 * train // b_tr, b_tr, fixed['transformer'], max_epochs, True)
    return out


def describe(stage, p):
    """One line of the plan."""
    if not isinstance(p, StagePlan):
        return f"  {stage:<19}{'':>48}~{p / 60:5.1f} min"
    cap = ' (epoch cap: more would memorise the pictures)' if p.capped else ''
    return (f"  {stage:<19}{p.steps:>6} steps = {p.epochs:>3} epoch(s) of {p.steps_per_epoch:>4}, batch {p.batch:>3}"
            f"    ~{p.seconds / 60:5.1f} min{cap}")


# ----------------------------------------------------------------------------- stage commands

def prepare_args(data, paths, n, image_size):
    train, val, test = split_counts(n)
    return ['prepare_dataset.py', '--source', data, '--out', shown(paths.data), '--image-size', str(image_size),
            '--test-count', str(test), '--val-frac', f'{val_frac(n - test):.6f}', '--workers', '1', '--overwrite']


def tokenizer_args(paths, base_vq, p, device, minutes):
    """Stage 1: the base tokenizer's decoder fine-tuned on the folder, its encoder and codebook frozen: every
    image keeps the base's codes, so the base transformer's vocabulary stays valid (a full fine-tune on a few
    pictures would restart the codes its pictures do not use)."""
    a = ['training_vqgan.py', '--config', shown(paths.vqgan_cfg), '--init-from', shown(base_vq), '--decoder-only',
         '--epochs', str(p.epochs), '--batch-size', str(p.batch), '--accum-grad', '1', '--learning-rate', str(VQ_LR),
         '--disc-start', '1000000', '--hflip', '--device', device, '--max-minutes', f'{minutes:.2f}', '--overwrite']
    return a + (['--max-steps', str(p.steps)] if p.max_steps else [])


def transformer_args(paths, base_tr, p, device, workers):
    a = ['training_transformer.py', '--MaskGitConfig', shown(paths.maskgit_cfg),
         '--train_d_path', shown(paths.data + '/train'), '--val_d_path', shown(paths.data + '/val'),
         '--checkpoint-path', shown(paths.transformer + '/last_ckpt.pt'), '--device', device,
         '--init-from', shown(base_tr), '--epochs', str(p.epochs), '--batch-size', str(p.batch), '--accum-grad', '1',
         '--learning-rate', str(TR_LR), '--warmup-steps', str(max(1, min(100, p.steps // 10))),
         '--save-per-epoch', '0', '--num_workers', str(workers), '--overwrite']
    return a + (['--max-steps', str(p.steps)] if p.max_steps else [])


def checkpoint_of(stage, paths):
    """The file a training stage's --resume continues from."""
    return (os.path.join(paths.tokenizer, 'last.pt') if stage == 'tokenizer'
            else os.path.join(paths.transformer, 'train_state.pt'))


def resumed(stage, argv, paths):
    """The flags that continue a training stage started with `argv`: --resume from its checkpoint (without
    --init-from, which starts a run), so the schedule is the first start's; None when it saved none."""
    last = checkpoint_of(stage, paths)
    if not argv or not os.path.isfile(last):
        return None
    argv = [a for a in argv if a != '--overwrite']
    i = argv.index('--init-from')
    return argv[:i] + argv[i + 2:] + ['--resume', shown(last) if stage == 'tokenizer' else 'auto']


def trained_through(argv, paths):
    """Whether the transformer run started with `argv` reached its end (stopped before train.py recorded it):
    training_transformer.py refuses a --resume with nothing left to train."""
    ck = load_checkpoint(checkpoint_of('transformer', paths))
    flag = lambda f: int(argv[argv.index(f) + 1]) if f in argv else None
    return ck['epoch'] >= flag('--epochs') or (flag('--max-steps') is not None and ck['step'] >= flag('--max-steps'))


def run_stage(stage, argv, log_path, quiet=False):
    """Run `python argv...` from the repo root; its output (progress bars too) goes to log_path and, unless
    quiet, to ours. A failure is one StageFailed line naming the stage, its last line and the log."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    out = sys.stdout.buffer if hasattr(sys.stdout, 'buffer') else None
    last = b''
    with open(log_path, 'ab') as log:
        log.write(f"$ python {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            while chunk := proc.stdout.read1(4096):
                log.write(chunk)
                lines = [s for s in re.split(rb'[\r\n]', chunk) if s.strip()]
                last = lines[-1] if lines else last
                if not quiet:
                    if out is not None:
                        out.write(chunk)
                        out.flush()
                    else:
                        sys.stdout.write(chunk.decode(errors='replace'))
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # we were interrupted: the stage must not outlive us
                proc.kill()
                proc.wait()
    if rc != 0:
        raise StageFailed(f"stage {stage} failed (exit {rc}): {last.decode(errors='replace').strip()} "
                          f"(full output: {shown(log_path)})")


def read_log_csv(path):
    """log.csv rows as dicts of floats (empty values left out)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ('', None)} for row in csv.DictReader(f)]


def stage_summary(stage, paths):
    """One line of what a training stage reached, from its log.csv."""
    if stage == 'tokenizer':
        rows = read_log_csv(os.path.join(paths.tokenizer, 'log.csv'))
        if rows:
            best = max(rows, key=lambda r: r.get('val_psnr', -1))
            return (f"tokenizer: {int(rows[-1]['step'])} steps; val PSNR {rows[0]['val_psnr']:.2f} dB after epoch 1, "
                    f"best {best['val_psnr']:.2f} dB (epoch {int(best['epoch'])}, exported)")
    if stage == 'transformer':
        rows = read_log_csv(os.path.join(paths.transformer, 'log.csv'))
        if rows:
            r = rows[-1]
            hole = f", val hole acc {r['val_hole_acc']:.3f}" if 'val_hole_acc' in r else ''
            return (f"transformer: {int(r['step'])} steps; val loss {rows[0]['val_loss']:.3f} after epoch 1, "
                    f"{r['val_loss']:.3f} at the end{hole}")
    return None


def remove_run(paths):
    """--overwrite: the earlier run's folder (train.py's own: check_run_folder saw its train_state.json)."""
    shutil.rmtree(paths.run)
