"""FID parity and end-to-end time: `python -m pytorch_fid P G` vs faster-pytorch-fid, in the same run.

    python benchmarks/bench_fid.py                 # data/openclipart/test vs a blurred, noised copy
    python benchmarks/bench_fid.py --limit 200 --device cpu

pytorch-fid gets the same weights through a temporary TORCH_HOME (hub/checkpoints/<its file name>), so
nothing is downloaded. Ground truth: data/openclipart/test when it exists, else the first --limit
/usr/share/openclipart PNGs resized to 64x64. Each tool runs as its own process (import, model load,
features, Fréchet distance: what a user waits for), then ours again with the ground-truth statistics cached.
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
sys.path[:0] = [os.path.join(ROOT, 'faster-pytorch-fid'), ROOT]
import inception_weights as iw  # noqa: E402
from utils import list_images, load_rgb  # noqa: E402

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


if __name__ == '__main__':
    main()
