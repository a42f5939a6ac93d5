"""Throughput and peak memory of batched decoding (models/decoding.py) vs a per-image reference decoder.

The reference decodes one image at a time the way the course solutions do (per image, per step: a
transformer pass, sampling, Gumbel noise, sort, mask update), with the same counter-based uniforms,
so it must produce the same tokens; the agreement is printed. Same model, same machine, same run.
Random weights (timing does not depend on them). Timing interleaves the two decoders in one process;
peak memory is measured for each in a fresh subprocess (CPU: ru_maxrss over the RSS before decoding;
GPU: max_memory_allocated over the memory allocated before). Model FLOPs utilisation counts T forward
passes over all N tokens per image, against the datasheet peak on an H100/H200, else a matmul in the
same dtype measured in the same run (or --peak-tflops). Then the CLI itself: `inpainting.py`, in its own process
as a user runs it (start-up and loading included), on a temporary folder of --cli-images masked images (random weights saved as checkpoints, the same batch size and
decoding flags), against its decoding core alone on the same batches (the Inpainter's call: encoding, the T
transformer passes and the config's --refine rounds, what eval_inpainting.py times), printed as the ratio
CLI / core. The CLI's fixed costs (start-up, loading, checking
the inputs, schedules.png's extra decodes on the first batch) weigh less the more images: a smoke run
of 8 images overstates the ratio of a full test split. The decoding flags are inpainting.py's, with its
defaults and the config's (refine: 2 for the shipped MaskGit_small_cond.yml); --refine applies to the CLI part only (the
per-image reference has no refinement; the decoder comparison is one decode). --cli-only skips the
decoder comparison.

  python benchmarks/bench_inpainting.py --config configs/MaskGit_small.yml --batch-size 64 --ref-images 8
  python benchmarks/bench_inpainting.py --amp     # the batched decoder in bf16 (inpainting.py --amp)
  python benchmarks/bench_inpainting.py --config configs/MaskGit.yml --amp --device cuda   # course config
  python benchmarks/bench_inpainting.py --cli-only --cli-images 256 --repeats 1   # the CLI at the demo's settings
  python benchmarks/bench_inpainting.py --batch-size 4 --ref-images 1 --repeats 1 --cli-images 8  # smoke test
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import fields

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repo root
from benchmarks.flops import peak_tflops  # noqa: E402
from dataset import PairedTestDataset, maskgit_stats  # noqa: E402
from models.decoding import (_GUMBEL, _SAMPLE, DecodeSettings, decode, gamma_func, image_seeds, uniforms)  # noqa: E402
from models.maskgit import MaskGit  # noqa: E402
from models.transformer import BidirectionalTransformer  # noqa: E402
from models.vqgan import VQGAN  # noqa: E402
from pipeline import DEFAULT_CONFIG, Inpainter, add_decoding_args, decoding_settings, load_maskgit  # noqa: E402
from utils import atomic_save, load_config, resolve_device  # noqa: E402


@torch.no_grad()
def reference_decode(model, tokens, unknown, seeds, K, settings):
    """One image at a time, every step over all N positions; the reference the batched decoder is timed against."""
    total_iter, gamma = settings.total_iter, gamma_func(settings.mask_func)
    temperature, choice_temperature = settings.temperature, settings.choice_temperature
    out = []
    for b in range(tokens.shape[0]):
        z, mask = tokens[b:b + 1].clone(), unknown[b:b + 1].clone()    # [1, N]
        n_unknown = int(mask.sum())
        z[mask] = K
        n_masked = n_unknown
        for t in range(total_iter):
            r = (t + 1) / total_iter
            logits = model(z)[0, :, :K].float()                           # [N, K]
            if temperature > 0:
                cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
                u = uniforms(seeds[b:b + 1], t, _SAMPLE, z.shape[1])[0]
                sampled = torch.searchsorted(cdf, (u.float() * cdf[:, -1])[:, None]).squeeze(1).clamp(max=K - 1)
            else:
                sampled = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1).gather(1, sampled[:, None]).squeeze(1).double()
            g = -torch.log(-torch.log(uniforms(seeds[b:b + 1], t, _GUMBEL, z.shape[1])[0]))
            conf = logp + choice_temperature * (1 - r) * g
            conf[~mask[0]] = math.inf
            keep = 0 if t == total_iter - 1 else min(math.floor(n_unknown * gamma(r)), max(n_masked - 1, 0))
            z[mask] = sampled[mask[0]]
            mask = torch.zeros_like(mask)
            mask[0, conf.argsort(stable=True)[:keep]] = True
            z[mask] = K
            n_masked = keep
        out.append(z)
    return torch.cat(out)


def problem(n_images, side, K, seed=0):
    """Tokens and unknown masks of rectangular holes (like the course's), of varied sizes; image b
    depends only on (seed, b), so both decoders see the same first images."""
    tokens, unknown = [], torch.zeros(n_images, side, side, dtype=torch.bool)
    for b in range(n_images):  # building the inputs, not part of any timing
        g = torch.Generator().manual_seed(seed * 100003 + b)
        tokens.append(torch.randint(0, K, (side * side,), generator=g))
        h, w = torch.randint(side // 4, side, (2,), generator=g).tolist()
        y, x = torch.randint(0, side - h + 1, (1,), generator=g).item(), torch.randint(0, side - w + 1, (1,), generator=g).item()
        unknown[b, y:y + h, x:x + w] = True
    return torch.stack(tokens), unknown.flatten(1)


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def setup(args, mode):
    """(decoder closure, number of images, device, forward FLOPs per image) for `mode`: the model and
    inputs both decoders share."""
    device = resolve_device(args.device)
    mp = load_config(args.config)['model_param']
    settings = decoding_settings(args, mp)
    tp = mp['Transformer_param']
    K, N = tp['num_codebook_vectors'], tp['num_image_tokens']
    torch.manual_seed(0)
    model = BidirectionalTransformer(tp).to(device).eval()
    n = args.batch_size if mode == 'batched' else args.ref_images
    tokens, unknown = problem(n, math.isqrt(N), K)
    tokens, unknown = tokens.to(device), unknown.to(device)
    seeds = image_seeds(settings.seed, torch.arange(n)).to(device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    if mode == 'batched':
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)  # as inpainting.py --amp
        schedule = settings.schedule(unknown.sum(1).cpu())

        def run():
            with amp:
                return decode(model, tokens, unknown, seeds, K, schedule, settings).tokens
    else:
        run = lambda: reference_decode(model, tokens, unknown, seeds, K, settings)

    def fn():
        out = run()
        sync()
        return out
    return fn, n, device, settings.total_iter * N * model.flops_per_token()


def memory_worker(args):
    """Peak extra memory of one run of decoder args.mode, on a fresh process (printed as JSON)."""
    fn, n, device, _ = setup(args, args.mode)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    fn()
    peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    print(json.dumps(dict(n=n, peak=max(peak, 0))))


def masked_folder(root, n, res, seed=0):
    """n random masked images (grey rectangular holes) and their 0/255 masks in the course's layout."""
    rng = np.random.default_rng(seed)
    for sub in ('img', 'mask'):
        os.makedirs(os.path.join(root, sub))
    for i in range(n):
        img, mask = rng.integers(0, 256, (res, res, 3), dtype=np.uint8), np.full((res, res), 255, np.uint8)
        h, w = rng.integers(res // 4, res // 2, 2)
        y, x = rng.integers(0, res - h), rng.integers(0, res - w)
        mask[y:y + h, x:x + w], img[y:y + h, x:x + w] = 0, 128
        Image.fromarray(img).save(os.path.join(root, 'img', f'image_{i:03d}.png'))
        Image.fromarray(mask, 'L').save(os.path.join(root, 'mask', f'mask_{i:03d}.png'))
    return os.path.join(root, 'img'), os.path.join(root, 'mask')


def cli_vs_core(args):
    """(best seconds of inpainting.py, best seconds of its decoding core) on args.cli_images images in
    batches of args.batch_size: the CLI in its own process with every output it writes (start-up and loading
    included), and the Inpainter's call (encoding, decode, refinement rounds) on the same batches, loaded
    beforehand, interleaved."""
    mp = load_config(args.config)['model_param']
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)  # random weights, saved as the CLI loads checkpoints
        vq, tr = os.path.join(tmp, 'vq.pt'), os.path.join(tmp, 'tr.pt')
        vq_param = load_config(mp['VQ_Configs']['VQ_config_path'])['model_param']
        atomic_save(VQGAN(vq_param).state_dict(), vq)
        atomic_save(MaskGit(mp).transformer.state_dict(), tr)
        img_dir, mask_dir = masked_folder(os.path.join(tmp, 'data'), args.cli_images, vq_param['img_resolution'])
        cmd = [sys.executable, os.path.join(ROOT, 'inpainting.py'), '--device', args.device, '--MaskGitConfig',
               args.config, '--vqgan-ckpt', vq, '--load-transformer-ckpt-path', tr, '--test-maskedimage-path', img_dir,
               '--test-mask-path', mask_dir, '--batch-size', str(args.batch_size),
               '--output-dir', os.path.join(tmp, 'out')] + (['--amp'] if args.amp else [])
        for f in fields(DecodeSettings):  # the bench's decoding flags, as given
            if getattr(args, f.name) is not None:
                cmd += [f"--{f.name.replace('_', '-')}", str(getattr(args, f.name))]
        env = dict(os.environ, **({'OMP_NUM_THREADS': str(args.threads)} if args.threads else {}))
        cli = argparse.Namespace(MaskGitConfig=args.config, vqgan_ckpt=vq, load_transformer_ckpt_path=tr)
        device = resolve_device(args.device)
        model, cfg = load_maskgit(cli, device)
        mean, std = maskgit_stats(cfg)
        settings = decoding_settings(args, cfg['model_param'])
        inp = Inpainter(model, settings, mean, std, amp=args.amp)
        batches = [(imgs.to(device), masks.to(device), ids) for imgs, masks, ids in
                   DataLoader(PairedTestDataset(img_dir, mask_dir, 1.0, mean, std), args.batch_size)]
        sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

        def run_cli():  # a script, not a library: run as a user runs it (start-up and loading included)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"error: inpainting.py failed:\n{proc.stderr[-2000:]}")

        def run_core():
            for imgs, masks, ids in batches:
                inp(imgs, masks, ids)
            sync()
        run_core()  # warm-up
        times = {run_cli: [], run_core: []}
        for _ in range(args.repeats):
            for fn, t in times.items():
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
        return min(times[run_cli]), min(times[run_core]), settings


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=DEFAULT_CONFIG, help="MaskGit config (its Transformer_param)")
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--ref-images', type=int, default=8, help="images the per-image reference decodes (it is slow)")
    p.add_argument('--repeats', type=int, default=2, help="timed rounds (reference then batched); the fastest counts")
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument('--amp', action='store_true', help="batched decoder under bf16 autocast (the reference stays fp32)")
    p.add_argument('--peak-tflops', type=float, default=None,
                   help="the device's dense peak for the MFU line (default: datasheet on H100/H200, else measured)")
    p.add_argument('--cli-images', type=int, default=128,
                   help="images for the CLI-against-core measurement, in batches of --batch-size (0: skip it)")
    p.add_argument('--cli-only', action='store_true', help="only the CLI-against-core measurement")
    p.add_argument('--mode', choices=['batched', 'reference'], help=argparse.SUPPRESS)
    add_decoding_args(p)
    args = p.parse_args()
    try:
        settings = decoding_settings(args, load_config(args.config)['model_param'])
    except ValueError as e:
        p.error(str(e))
    if 0 < settings.sweet_spot < settings.total_iter:
        p.error("--sweet-spot is not benchmarked (the reference decoder has none)")
    if args.threads:  # every part, the memory workers (this main, run again) and the CLI part included
        torch.set_num_threads(args.threads)
    if args.cli_only:
        return print_cli_vs_core(args)
    if args.mode:
        return memory_worker(args)
    peak = {}
    for mode in ('reference', 'batched'):
        cmd = [sys.executable, os.path.abspath(__file__), '--mode', mode] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: {mode} memory worker failed:\n{proc.stderr[-2000:]}")
        peak[mode] = json.loads(proc.stdout.strip().splitlines()[-1])['peak']
    torch.set_grad_enabled(False)
    (ref, n_ref, device, flops), (bat, n_bat, _, _) = setup(args, 'reference'), setup(args, 'batched')
    out_ref, out_bat = ref(), bat()  # warm-up, and the agreement check
    agree = sum(torch.equal(a, b) for a, b in zip(out_ref, out_bat[:n_ref]))
    t_ref, t_bat = [], []
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both alike
        for fn, times in ((ref, t_ref), (bat, t_bat)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ips_ref, ips_bat = n_ref / min(t_ref), n_bat / min(t_bat)
    print(f"config {args.config}, {settings}, device {device}, batched amp {'bf16' if args.amp else 'off'}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"reference (batch 1):  {ips_ref:8.3f} images/s  ({n_ref} images, best of {args.repeats}: {min(t_ref):.2f} s), "
          f"peak memory {peak['reference'] / 2**20:7.1f} MiB per image")
    print(f"batched (batch {n_bat}): {ips_bat:8.3f} images/s  ({n_bat} images, best of {args.repeats}: {min(t_bat):.2f} s), "
          f"peak memory {peak['batched'] / n_bat / 2**20:7.1f} MiB per image ({peak['batched'] / 2**20:.1f} MiB in all)")
    print(f"speed-up {ips_bat / ips_ref:.2f}x; tokens identical for {agree}/{n_ref} images decoded by both"
          + (" (bf16 logits: not expected to match)" if args.amp else ""))
    runs = (('reference', ips_ref, torch.float32), ('batched', ips_bat, torch.bfloat16 if args.amp else torch.float32))
    peaks = {dtype: peak_tflops(device, dtype, args.peak_tflops) for dtype in {dtype for *_, dtype in runs}}
    for name, ips, dtype in runs:
        peak, source = peaks[dtype]
        print(f"model FLOPs utilisation, {name} ({str(dtype)[6:]}, {flops / 1e9:.1f} GFLOP per image): "
              f"{ips * flops / 1e12:.3f} TFLOP/s = {100 * ips * flops / 1e12 / peak:.1f}% of {peak:.3g} ({source})")
    if args.cli_images:
        print_cli_vs_core(args)


def print_cli_vs_core(args):
    if not args.cli_images:
        sys.exit("error: --cli-only needs --cli-images N > 0")
    t_cli, t_core, settings = cli_vs_core(args)
    print(f"config {args.config}, {settings}, amp {'bf16' if args.amp else 'off'}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"CLI (inpainting.py, {args.cli_images} images, batch {args.batch_size}, every output written, start-up "
          f"included): "
          f"{t_cli:.2f} s; its decoding core (the Inpainter's call: encode, {settings.total_iter} passes, "
          f"{settings.refine} refinement rounds): {t_core:.2f} s (best of {args.repeats}); "
          f"CLI / core = {t_cli / t_core:.2f}x")


if __name__ == '__main__':
    main()
