"""Training throughput of the transformer: cached tokens vs re-encoding every batch with the VQGAN.

Both paths run training's own step (training.accumulate_grads + AdamW, as training_transformer.py) on the
same model in the same process; the re-encoding path first runs the frozen VQGAN on the batch's
images, as a training loop without the token cache would. The two are timed in alternating rounds
(median per step) so that load from other processes hits both alike. Random weights and images
(timing does not depend on them). It also prints model FLOPs utilisation: against the datasheet
peak on an H100/H200, against a matmul measured in the same run on a CPU, or against --peak-tflops.

  python benchmarks/bench_transformer.py --config configs/MaskGit_small.yml --batch-size 32 --steps 6
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
import training  # noqa: E402
from benchmarks.flops import peak_tflops  # noqa: E402
from models.maskgit import MaskGit  # noqa: E402
from models.vqgan import VQGAN  # noqa: E402
from utils import load_config, resolve_device  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/MaskGit_small.yml', help='MaskGit config (its VQ_config_path too)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--steps', type=int, default=6, help='timed optimizer steps per path, in rounds of 2')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'off'), default='auto',
                   help='autocast dtype (auto: bf16 on CUDA, off on CPU)')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help='the device\'s dense peak for the MFU line (default: datasheet on H100/H200, else measured)')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(args.config)
    mp = cfg['model_param']
    vq_p = load_config(mp['VQ_Configs']['VQ_config_path'])['model_param']
    torch.manual_seed(0)
    vqgan = VQGAN(vq_p).to(device).eval().requires_grad_(False)
    raw = MaskGit(mp).to(device)
    s = {**training.settings(cfg, 'transformer'), 'batch_size': args.batch_size, 'accum_grad': 1}
    opt = training.make_optimizer(raw, s, device)
    b, n_tok, res = args.batch_size, raw.num_image_tokens, vq_p['img_resolution']
    images = torch.randn(b, 3, res, res, device=device)
    cached = torch.randint(0, raw.num_codebook_vectors, (b, n_tok), dtype=torch.int16)  # as the cache stores them
    order = torch.arange(b)
    cuda = device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast, _ = training.amp_setup(device, args.amp)

    def step(i, encode):
        tokens = vqgan.encode_indices(images).cpu() if encode else cached
        training.accumulate_grads(raw, raw, tokens, order, 0, i, s, 0, 1, 0, device, autocast)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {False: [], True: []}
    for i in range(2 + args.steps // 2):
        for encode in (False, True):
            for _ in range(2):
                sync()
                t0 = time.perf_counter()
                step(i, encode)
                sync()
                if i:  # round 0 warms up
                    times[encode].append(time.perf_counter() - t0)
    print(f"config {args.config}, batch {b} x {n_tok} tokens, device {device}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"transformer {sum(q.numel() for q in raw.transformer.parameters()) / 1e6:.2f}M params, "
          f"VQGAN {sum(q.numel() for q in vqgan.parameters()) / 1e6:.2f}M params")
    med = {k: statistics.median(v) for k, v in times.items()}
    for encode, name in ((False, 'cached tokens    '), (True, 're-encode (VQGAN)')):
        t = med[encode]
        print(f"{name}: {t * 1000:8.1f} ms/step  {b * n_tok / t:10.0f} tokens/s  {b / t:8.1f} images/s  "
              f"(median of {len(times[encode])} steps)")
    print(f"cached / re-encode throughput: {med[True] / med[False]:.2f}x")
    with autocast():  # the dtype the matmuls ran in
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    peak, source = peak_tflops(device, dtype, args.peak_tflops)
    tflops = b * n_tok * 3 * raw.transformer.flops_per_token() / med[False] / 1e12
    print(f"model FLOPs utilisation (cached, {str(dtype)[6:]}): {tflops:.3f} TFLOP/s = "
          f"{100 * tflops / peak:.1f}% of {peak:.3g} TFLOP/s ({source})")


if __name__ == '__main__':
    main()
