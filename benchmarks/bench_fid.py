"""FID parity and end-to-end time: `python -m pytorch_fid P G` vs faster-pytorch-fid, in the same run.

    python benchmarks/bench_fid.py                 # data/openclipart/test vs a blurred, noised copy
    python benchmarks/bench_fid.py --limit 200 --device cpu --bf16

pytorch-fid gets the same weights through a temporary TORCH_HOME (hub/checkpoints/<its file name>), so
nothing is downloaded. Ground truth: data/openclipart/test when it exists, else the first --limit
/usr/share/openclipart PNGs resized to 64x64. Each tool runs as its own process (import, model load,
features, Fréchet distance: what a user waits for), then ours again with the ground-truth statistics cached.
Last, the bound the hardware sets: Inception's FLOPs per image against a matmul measured in the same run
(the best any fp32 implementation could do), and, with --bf16, what bf16 autocast would give (in-process).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repo root
from benchmarks.flops import peak_tflops  # noqa: E402
from dataset import list_images, load_rgb  # noqa: E402
from fid import inception as iw  # noqa: E402
from fid import score as fsg  # noqa: E402
from utils import resolve_device  # noqa: E402

SCRIPT = os.path.join(ROOT, 'faster-pytorch-fid', 'fid_score_gpu.py')


def ground_truth(tmp, limit):
    """A real image folder: the dataset's test split, else openclipart PNGs resized to 64x64."""
    test = os.path.join(ROOT, 'data', 'openclipart', 'test')
    if os.path.isdir(test) and len(os.listdir(test)) >= limit:
        if limit >= len(list_images(test)):
            return test
        paths = list_images(test)[:limit]
    else:
        paths = sorted(os.path.join(d, n) for d, _, names in os.walk('/usr/share/openclipart/png')
                       for n in names if n.endswith('.png'))[:limit]
    out = os.path.join(tmp, 'gt')
    os.makedirs(out)
    for i, p in enumerate(paths):
        load_rgb(p).resize((64, 64), Image.BICUBIC).save(os.path.join(out, f'image_{i:03d}.png'))
    return out


def perturbed_copy(src, dst, seed=0):
    """Blurred and noised copies: a set at a realistic FID from the ground truth."""
    os.makedirs(dst)
    g = np.random.default_rng(seed)
    for p in list_images(src):
        a = np.asarray(load_rgb(p).filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
        a = np.clip(a + g.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(os.path.join(dst, os.path.basename(p)))
    return dst


def timed(cmd, env=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    last = out.stdout.strip().splitlines()[-1]  # "FID:  <value>" for both tools
    return float(last.split()[-1]), dt


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--limit', type=int, default=747, help='number of images per side')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=50)
    p.add_argument('--bf16', action='store_true', help='also time features under bf16 autocast and report the FID shift')
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt = ground_truth(tmp, args.limit)
        pred = perturbed_copy(gt, os.path.join(tmp, 'pred'))
        torch_home = os.path.join(tmp, 'torch')
        os.makedirs(os.path.join(torch_home, 'hub', 'checkpoints'))
        torch.save(iw.load_weights(), os.path.join(torch_home, 'hub', 'checkpoints', iw.PT_FID_FILE))
        n = len(list_images(gt))
        print(f"{n} ground-truth images from {gt} vs a blurred+noised copy; device {args.device}, "
              f"{torch.get_num_threads()} CPU threads")

        common = ['--device', args.device, '--batch-size', str(args.batch_size)]
        ref, t_ref = timed([sys.executable, '-m', 'pytorch_fid', pred, gt, *common], env={'TORCH_HOME': torch_home})
        stats = os.path.join(tmp, 'gt.npz')
        ours, t_ours = timed([sys.executable, SCRIPT, '--predicted-path', pred, '--gt-path', gt,
                              '--save-stats', stats, *common])
        cached, t_cached = timed([sys.executable, SCRIPT, '--predicted-path', pred, '--gt-path', stats, *common])

        print(f"pytorch-fid            FID {ref:.6f}   {t_ref:7.1f} s")
        print(f"fid_score_gpu          FID {ours:.6f}   {t_ours:7.1f} s   |delta| {abs(ours - ref):.2e}   "
              f"speed-up {t_ref / t_ours:.2f}x")
        print(f"fid_score_gpu, GT .npz FID {cached:.6f}   {t_cached:7.1f} s   |delta| {abs(cached - ref):.2e}   "
              f"speed-up {t_ref / t_cached:.2f}x")
        hardware_bound(args, n, t_ref, gt, pred)


def hardware_bound(args, n, t_ref, gt, pred):
    """The fastest an fp32 Inception could run here, and how far off the speed-up targets that is."""
    from torch.utils.flop_counter import FlopCounterMode
    device = resolve_device(args.device)
    model = fsg.fast_inception(device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, 64, 64, device=device))
    flops = counter.get_total_flops()  # per image (resized to 299 inside)
    peak, source = peak_tflops(device, torch.float32)
    best = n * flops / (peak * 1e12)  # one side's features at 100% of the matmul peak
    print(f"Inception {flops / 1e9:.2f} GFLOP per image; fp32 peak {peak * 1e3:.0f} GFLOP/s ({source}); "
          f"features at that peak: {best:.1f} s per side, so at most {t_ref / (2 * best):.2f}x end to end "
          f"and {t_ref / best:.2f}x with cached statistics, before start-up and image decoding")
    if args.bf16:
        stats = {}
        for amp in (False, True):
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                s_gt, s_pred = (fsg.activation_statistics(fsg.folder_images(d), model, args.batch_size, 0, device)
                                for d in (gt, pred))
            stats[amp] = (fsg.frechet_distance(*s_pred, *s_gt, device=device), time.perf_counter() - t)
        (f32, t32), (b16, t16) = stats[False], stats[True]
        print(f"in-process features, both sides: fp32 {t32:.1f} s, FID {f32:.6f}; bf16 autocast {t16:.1f} s "
              f"({t32 / t16:.2f}x), FID {b16:.6f}, |delta| {abs(b16 - f32):.2e}")


if __name__ == '__main__':
    main()
