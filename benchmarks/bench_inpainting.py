"""Throughput and peak memory of batched decoding (models/decoding.py) vs a per-image reference decoder.

The reference decodes one image at a time the way the course solutions do (per image, per step: a
transformer pass, sampling, Gumbel noise, sort, mask update), with the same counter-based uniforms,
so it must produce the same tokens; the agreement is printed. Same model, same machine, same run.
Random weights (timing does not depend on them). Timing interleaves the two decoders in one process;
peak memory is measured for each in a fresh subprocess (CPU: ru_maxrss over the RSS before decoding;
GPU: max_memory_allocated over the memory allocated before). Model FLOPs utilisation counts T forward
passes over all N tokens per image, against the datasheet peak on an H100/H200, else a matmul in the
same dtype measured in the same run (or --peak-tflops).

  python benchmarks/bench_inpainting.py --config configs/MaskGit_small.yml --batch-size 64 --ref-images 8
  python benchmarks/bench_inpainting.py --amp     # the batched decoder in bf16 (inpainting.py --amp)
  python benchmarks/bench_inpainting.py --config configs/MaskGit.yml --amp --device cuda   # course config
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from benchmarks.flops import peak_tflops  # noqa: E402
from models.decoding import _GUMBEL, _SAMPLE, decode, image_seeds, uniforms  # noqa: E402
from models.maskgit import gamma_func  # noqa: E402
from models.transformer import BidirectionalTransformer  # noqa: E402
from utils import load_config, resolve_device  # noqa: E402


@torch.no_grad()
def reference_decode(model, tokens, unknown, seeds, gamma, K, total_iter, temperature=1.0, choice_temperature=4.5):
    """One image at a time, every step over all N positions; the reference the batched decoder is timed against."""
    out = []
    for b in range(tokens.shape[0]):
        z, mask = tokens[b:b + 1].clone(), unknown[b:b + 1].clone()    # [1, N]
        n_unknown = int(mask.sum())
        z[mask] = K
        n_masked = n_unknown
        for t in range(total_iter):
            r = (t + 1) / total_iter
            logits = model(z)[0, :, :K].float()                           # [N, K]
            probs = torch.softmax(logits / temperature, -1)
            cdf = probs.cumsum(-1)
            u = uniforms(seeds[b:b + 1], t, _SAMPLE, z.shape[1])[0]
            sampled = torch.searchsorted(cdf, (u.float() * cdf[:, -1])[:, None]).squeeze(1).clamp(max=K - 1)
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
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    mp = load_config(args.config)['model_param']
    tp = mp['Transformer_param']
    K, N = tp['num_codebook_vectors'], tp['num_image_tokens']
    torch.manual_seed(0)
    model = BidirectionalTransformer(tp).to(device).eval()
    n = args.batch_size if mode == 'batched' else args.ref_images
    tokens, unknown = problem(n, math.isqrt(N), K)
    tokens, unknown = tokens.to(device), unknown.to(device)
    seeds = image_seeds(args.seed, torch.arange(n)).to(device)
    gamma = gamma_func(mp.get('gamma_type', 'cosine'))
    ct = mp.get('choice_temperature', 4.5)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    if mode == 'batched':
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)  # as inpainting.py --amp

        def run():
            with amp:
                return decode(model, tokens, unknown, seeds, gamma, K, args.total_iter, choice_temperature=ct).tokens
    else:
        run = lambda: reference_decode(model, tokens, unknown, seeds, gamma, K, args.total_iter, choice_temperature=ct)

    def fn():
        out = run()
        sync()
        return out
    return fn, n, device, args.total_iter * N * model.flops_per_token()


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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/MaskGit_small.yml', help="MaskGit config (its Transformer_param)")
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--ref-images', type=int, default=8, help="images the per-image reference decodes (it is slow)")
    p.add_argument('--total-iter', type=int, default=8)
    p.add_argument('--repeats', type=int, default=2, help="timed rounds (reference then batched); the fastest counts")
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--amp', action='store_true', help="batched decoder under bf16 autocast (the reference stays fp32)")
    p.add_argument('--peak-tflops', type=float, default=None,
                   help="the device's dense peak for the MFU line (default: datasheet on H100/H200, else measured)")
    p.add_argument('--mode', choices=['batched', 'reference'], help=argparse.SUPPRESS)
    args = p.parse_args()
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
    print(f"config {args.config}, T={args.total_iter}, device {device}, batched amp {'bf16' if args.amp else 'off'}, "
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


if __name__ == '__main__':
    main()
