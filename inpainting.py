"""Inpaint the course's masked test images with a trained MaskGIT (batched iterative decoding).

The course's flags keep their meaning. Writes, under --output-dir:
  test_results/image_{i:03d}.png  the inpainted image (what the FID script reads)
  mask_scheduling/test_{i}.png    the latent mask at every step, one row (white = known)
  imga/test_{i}.png               the input, then the image decoded at every step
  schedules.png                   each row a mask schedule on the first images of the first batch:
                                  the mask of the first image at every step, then the results
  gallery.png                     with --gallery N: input | each step | result | OpenCV Telea | ground truth
Before anything is written, every image and mask is decoded in full and checked (pairs by number without
ambiguity, sizes, binary masks: a 0/1 mask or a non-mask is refused, a lossy one thresholded at 128 with a
note, one almost all hole warned about) and --output-dir is checked for writing; errors are one line.
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import PairedTestDataset, data_stats, denormalize, load_rgb, pil_to_tensor01, tensor01_to_pil
from models.baselines import have_opencv, opencv_fill
from models.decoding import decode, image_seeds, mask_schedule
from models.maskgit import SCHEDULES, MaskGit, gamma_func, transformer_state_dict
from models.masks import latent_mask
from models.vqgan import load_vqgan
from plots import save_grid
from utils import (atomic_save_image, check_writable, load_checkpoint, load_config, load_state_dict_checked,
                   resolve_device)

SUMMARY_IMAGES = 4  # images per row of schedules.png


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MaskGIT inpainting (batched Gumbel-confidence decoding)")
    p.add_argument('--device', default='auto', help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument('--batch-size', type=int, default=64, help="images decoded together")
    p.add_argument('--partial', type=float, default=1.0, help="keep the first int(n * partial) test images")
    p.add_argument('--num_workers', type=int, default=0, help="DataLoader workers")
    p.add_argument('--MaskGitConfig', default='configs/MaskGit_small.yml', help="MaskGit config (course: configs/MaskGit.yml)")
    p.add_argument('--load-transformer-ckpt-path', default=None,
                   help="transformer state_dict (the course's format) or a train_state.pt "
                        "(default: the config's checkpoint: path, the shipped one for MaskGit_small.yml)")
    p.add_argument('--test-maskedimage-path', default='data/openclipart/masked_image')
    p.add_argument('--test-mask-path', default='data/openclipart/mask64')
    p.add_argument('--sweet-spot', type=int, default=-1,
                   help="stop after this step and fill the rest with the most likely tokens (<=0 or >= total: all steps)")
    p.add_argument('--total-iter', type=int, default=8, help="decoding steps T")
    p.add_argument('--mask-func', default=None, choices=SCHEDULES,
                   help="mask schedule gamma (default: the config's gamma_type)")
    p.add_argument('--choice-temperature', type=float, default=None,
                   help="scale of the Gumbel noise on the confidence, annealed by (1 - r) (default: the config's "
                        "choice_temperature; 0 = reveal the most likely tokens first)")
    p.add_argument('--output-dir', default='.', help="where test_results/, mask_scheduling/, imga/ go")
    p.add_argument('--seed', type=int, default=0, help="run seed; each image's randomness is (seed, image number)")
    p.add_argument('--temperature', type=float, default=0.0,
                   help="token sampling temperature: 0 = argmax (the course's choice, the default), "
                        "1 = sample from the model (the paper's generation setting)")
    p.add_argument('--vqgan-ckpt', default=None, help="VQGAN checkpoint (default: VQ_CKPT_path of the config)")
    p.add_argument('--amp', action='store_true', help="bfloat16 autocast for the networks")
    p.add_argument('--paste-known', action='store_true', help="composite the input's known pixels over the result")
    p.add_argument('--gallery', type=int, default=0, metavar='N',
                   help="write gallery.png: the first N images as rows of input | steps | result | OpenCV Telea's "
                        "fill (when opencv-python-headless is installed) | ground truth (with --gt-path)")
    p.add_argument('--gt-path', default=None, help="ground-truth folder (image_{i:03d}.png) for the gallery's last column")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.total_iter < 1:
        p.error("--total-iter must be >= 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        p.error(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.choice_temperature is not None and not (math.isfinite(args.choice_temperature)
                                                    and args.choice_temperature >= 0):
        p.error(f"--choice-temperature must be a number >= 0, got {args.choice_temperature}")
    if not 0 < args.partial <= 1:  # also refuses nan
        p.error(f"--partial must be in (0, 1], got {args.partial}")
    return args


def load_maskgit(args, device):
    """(MaskGit with its VQGAN and trained transformer on `device`, config dict)."""
    cfg = load_config(args.MaskGitConfig)
    mp = cfg.get('model_param')
    if not isinstance(mp, dict) or 'VQ_Configs' not in mp:
        raise ValueError(f"config {args.MaskGitConfig} has no 'model_param: VQ_Configs:' section")
    vq = mp['VQ_Configs']
    vqgan = load_vqgan(vq['VQ_config_path'], args.vqgan_ckpt or vq.get('VQ_CKPT_path'), device)
    model = MaskGit(mp, vqgan)
    ckpt = args.load_transformer_ckpt_path or (cfg.get('checkpoint') or {}).get('path')
    if not ckpt:
        raise ValueError(f"no transformer checkpoint: pass --load-transformer-ckpt-path or set 'checkpoint: path:' "
                         f"in {args.MaskGitConfig}")
    load_state_dict_checked(model.transformer, transformer_state_dict(load_checkpoint(ckpt)), ckpt)
    return model.to(device).eval(), cfg


def check_inputs(data, res):
    """Every image and mask decoded in full, res x res (the VQGAN's img_resolution), masks binary: one line
    naming the first file that is not, before any output. Notes (thresholding, masks almost all hole) go to
    stderr, one line each."""
    for note in data.check((res, res)):
        print(note, file=sys.stderr)


def mask_tiles(masks, latent_res, img_res):
    """masks [..., N] bool (True = unknown) -> [..., 3, img_res, img_res] tiles, white = known."""
    m = (~masks).float().reshape(-1, 1, latent_res, latent_res)
    m = F.interpolate(m, size=(img_res, img_res), mode='nearest').expand(-1, 3, -1, -1)
    return m.reshape(*masks.shape[:-1], 3, img_res, img_res)


class Inpainter:
    """Tokens in, decoding, images out, for batches of (normalised images, pixel masks, ids)."""

    def __init__(self, model, args, mean, std):
        self.model, self.args, self.mean, self.std = model, args, mean, std
        self.vqgan = model.vqgan
        self.factor = self.vqgan.img_resolution // self.vqgan.latent_resolution
        self.amp = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=args.amp)
        # unset flags take the config's values (model_param: gamma_type, choice_temperature)
        self.mask_func = args.mask_func or model.gamma_type
        self.choice_temperature = model.choice_temperature if args.choice_temperature is None else args.choice_temperature

    def logits(self, tokens):
        with self.amp:
            return self.model.transformer(tokens)

    def images(self, tokens):
        """tokens [B, N] -> images [B, 3, H, W] in [0, 1]."""
        with self.amp:
            return denormalize(self.vqgan.decode_indices(tokens).float(), self.mean, self.std)

    @torch.no_grad()
    def __call__(self, imgs, masks, ids, modes):
        """Decode a batch; `modes` is one schedule name, or one per image."""
        a = self.args
        with self.amp:
            tokens = self.vqgan.encode_indices(imgs)                             # [B, N]
        unknown = latent_mask(masks, self.factor).flatten(1)                     # [B, N]
        modes = [modes] * len(ids) if isinstance(modes, str) else modes
        counts = unknown.sum(1).cpu()                                            # [B]
        schedule = torch.empty(a.total_iter, len(modes), dtype=torch.long)       # [T, B]
        for mode in set(modes):
            rows = torch.tensor([m == mode for m in modes])
            schedule[:, rows] = mask_schedule(counts[rows], a.total_iter, gamma_func(mode))
        return decode(self.logits, tokens, unknown, image_seeds(a.seed, ids), None, self.model.mask_token_id,
                      a.total_iter, a.sweet_spot, a.temperature, self.choice_temperature, schedule)

    def final(self, imgs, masks, out):
        """Decoded images, with the input's known pixels pasted back under --paste-known."""
        img = self.images(out.tokens)
        if self.args.paste_known:
            img = masks * denormalize(imgs, self.mean, self.std) + (1 - masks) * img
        return img


def save_results(inp, imgs, masks, ids, out):
    """Writes the three per-image files of one batch; returns (input, steps [S, B, ...], final) in [0, 1]."""
    a, vq = inp.args, inp.vqgan
    final = inp.final(imgs, masks, out)                                        # [B, 3, H, W]
    S, B = out.preds.shape[:2]
    steps = torch.cat([inp.images(p) for p in out.preds])                     # [S*B, 3, H, W]
    steps = steps.view(S, B, *steps.shape[1:])
    tiles = mask_tiles(out.masks, vq.latent_resolution, vq.img_resolution)   # [S+1, B, 3, H, W]
    shown = denormalize(imgs, inp.mean, inp.std)
    for b, i in enumerate(ids.tolist()):
        atomic_save_image(tensor01_to_pil(final[b]), os.path.join(a.output_dir, 'test_results', f'image_{i:03d}.png'))
        save_grid(tiles[:, b], os.path.join(a.output_dir, 'mask_scheduling', f'test_{i}.png'), nrow=S + 1)
        save_grid(torch.cat([shown[b:b + 1], steps[:, b]]), os.path.join(a.output_dir, 'imga', f'test_{i}.png'),
                  nrow=S + 1)
    return shown, steps, final


def gt_file(gt_root, i):
    return os.path.join(gt_root, f'image_{i:03d}.png')


def save_gallery(shown, steps, final, masks, ids, gt_root, path, n):
    """The first n images, one row each: masked input | decoded image per step | result | OpenCV Telea's fill
    of the same holes (when OpenCV is installed: what a user would get without a model) | ground truth."""
    telea = opencv_fill(shown[:n], masks[:n]) if have_opencv() else None
    rows = []
    for b, i in enumerate(ids[:n].tolist()):
        row = [shown[b:b + 1], steps[:, b], final[b:b + 1]] + ([telea[b:b + 1]] if telea is not None else [])
        if gt_root:
            row.append(pil_to_tensor01(load_rgb(gt_file(gt_root, i)))[None].to(final.device))
        rows.append(torch.cat(row))
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])


def save_schedules(inp, imgs, masks, ids, path):
    """One row per schedule: the first image's mask after every step, then the results of the first images."""
    n, m = min(SUMMARY_IMAGES, len(ids)), len(SCHEDULES)
    rep = lambda x: x[:n].repeat(m, *[1] * (x.dim() - 1))                     # [m*n, ...], schedule-major
    out = inp(rep(imgs), rep(masks), rep(ids), [mode for mode in SCHEDULES for _ in range(n)])
    vq = inp.vqgan
    final = inp.final(rep(imgs), rep(masks), out)
    rows = [torch.cat([mask_tiles(out.masks[:, j * n], vq.latent_resolution, vq.img_resolution),
                       final[j * n:(j + 1) * n]]) for j in range(m)]
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])
    return [f"{mode}: {out.masks[:, j * n].sum(1).tolist()}" for j, mode in enumerate(SCHEDULES)]


@torch.no_grad()
def run(args):
    try:
        device = resolve_device(None if args.device == 'auto' else args.device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    check_writable(args.output_dir, '--output-dir', folder=True)
    model, cfg = load_maskgit(args, device)
    mean, std = data_stats(cfg, 'test')
    data = PairedTestDataset(args.test_maskedimage_path, args.test_mask_path, args.partial, mean, std)
    check_inputs(data, model.vqgan.img_resolution)
    if args.gallery and args.gt_path:  # checked before any output is written
        missing = [gt_file(args.gt_path, i) for i in data.indices[:min(args.gallery, args.batch_size)]
                   if not os.path.isfile(gt_file(args.gt_path, i))]
        if missing:
            raise FileNotFoundError(f"--gt-path: no ground truth {missing[0]} for the gallery")
        for i in data.indices[:min(args.gallery, args.batch_size)]:
            load_rgb(gt_file(args.gt_path, i))  # decoded in full now: a broken file is named before any output
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    inp = Inpainter(model, args, mean, std)
    for k, (imgs, masks, ids) in enumerate(tqdm(loader, desc='inpainting', unit='batch')):
        imgs, masks = imgs.to(device), masks.to(device)
        shown, steps, final = save_results(inp, imgs, masks, ids, inp(imgs, masks, ids, inp.mask_func))
        if k == 0:
            if args.gallery:
                save_gallery(shown, steps, final, masks, ids, args.gt_path,
                             os.path.join(args.output_dir, 'gallery.png'), args.gallery)
            summary = os.path.join(args.output_dir, 'schedules.png')
            counts = save_schedules(inp, imgs, masks, ids, summary)
            tqdm.write(f"masked tokens per step of image {ids[0].item()} -> {summary}\n  " + "\n  ".join(counts))
    print(f"wrote {len(data)} images to {os.path.join(args.output_dir, 'test_results')}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError, KeyError) as e:
        msg = f"missing config key {e} (in {args.MaskGitConfig} or its VQGAN config)" if isinstance(e, KeyError) else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
