"""VQGAN throughput: training images/s (with and without the GAN step) and encode/decode images/s.

    python benchmarks/bench_vqgan.py --threads 1
    python benchmarks/bench_vqgan.py --device cuda --batch-size 64

The reference is the course's VQGAN (configs/VQGAN.yml), measured in the same run for encode/decode
(and training with --ref-train); ratios are small / course.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
import training  # noqa: E402
from models.vqgan import VQGAN  # noqa: E402
from utils import load_config, resolve_device  # noqa: E402


def timed(fn, n, warmup, device):
    """Seconds per call: the best of n calls after warmup (best-of resists other processes' noise)."""
    for _ in range(warmup):
        fn()
    best = float('inf')
    for _ in range(n):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def measure(config, args, device, train):
    cfg = load_config(config)
    p = cfg['model_param']
    torch.manual_seed(0)
    model = VQGAN(p).to(device)
    t = training.settings(cfg, 'vqgan')  # the config's train: over configs/VQGAN.yml's, as training_vqgan.py reads it
    disc = training.discriminator(t, device)
    x = torch.randn(args.batch_size, p['image_channels'], p['img_resolution'], p['img_resolution'], device=device)
    amp, scaler = training.amp_setup(device)
    out = dict(params=sum(q.numel() for q in model.parameters()) / 1e6)
    b = args.batch_size
    if train:
        opt, opt_d = training.vqgan_optimisers(model, disc, t)
        for gan_on in (False, True):
            def step():
                training.vqgan_train_step(model, disc, x, t, gan_on, amp, scaler)
                training.optimiser_step(opt, opt_d, scaler, gan_on)
            out['train_gan' if gan_on else 'train'] = b / timed(step, args.steps, 1, device)
    model.eval()
    with torch.no_grad(), amp():
        tokens = model.encode_indices(x)
        out['encode'] = b / timed(lambda: model.encode_indices(x), args.steps, 1, device)
        out['decode'] = b / timed(lambda: model.decode_indices(tokens), args.steps, 1, device)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--config', default='configs/VQGAN_small.yml')
    ap.add_argument('--ref-config', default='configs/VQGAN.yml')
    ap.add_argument('--ref-train', action='store_true', help='also time training steps of the reference')
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--steps', type=int, default=3, help='timed calls per figure (best is kept)')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--device', default='cpu')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"best of {args.steps} timed calls")
    small = measure(args.config, args, device, train=True)
    ref = measure(args.ref_config, args, device, train=args.ref_train)
    print(f"{'figure (images/s)':<28}{os.path.basename(args.config):>18}{os.path.basename(args.ref_config):>14}"
          f"{'ratio':>8}")
    print(f"{'parameters (M)':<28}{small['params']:>18.2f}{ref['params']:>14.2f}")
    for key, label in (('train', 'train step, no GAN'), ('train_gan', 'train step, with GAN + D'),
                       ('encode', 'encode to tokens'), ('decode', 'decode tokens')):
        r = f"{ref[key]:>14.1f}{small[key] / ref[key]:>7.1f}x" if key in ref else f"{'-':>14}"
        print(f"{label:<28}{small[key]:>18.1f}{r}")


if __name__ == '__main__':
    main()
