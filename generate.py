"""Images from nothing with a trained MaskGIT: every token masked, the decoding of inpainting.py.

    python generate.py --MaskGitConfig configs/MaskGit_small_cond.yml --class animals --class 3 --n 8 --cfg-scale 2 \
        --temperature 1 --output-dir results/gen          (the shipped conditional model)
    python generate.py --n 16 --output-dir results/gen          (no --class: unconditional / the null class)

Writes, under --output-dir, for each class (its name, `class_<id>` without names, or `unconditional`):
  <name>/image_{i:03d}.png   the n images, each batch's as soon as it is decoded (an interrupted run keeps them)
  <name>_grid.png            the first (up to 256) of them in one grid
  <name>_steps.png           the decoding strip of the first (up to 8) images: a row each, the image after every step
Image i of a class decodes with its own randomness (--seed, class, i), whatever --n, the other classes or the
batch. --n is at most 100,000 a class; memory holds one batch and the grid's images, whatever --n. The decoding
flags are inpainting.py's (DecodeSettings; not --refine: nothing is known to re-decode around); argmax with
--choice-temperature 0 draws no randomness at all, so --temperature 1 (the paper's generation setting) is the usual
choice here. Flags that would do nothing are refused: a class given twice, --cfg-scale without --class.
"""
import argparse
import math
import os
import re
import sys

import torch
from tqdm import tqdm

from dataset import data_stats, tensor01_to_pil
from inpainting import (Inpainter, add_decoding_args, add_model_args, class_label, decoding_settings, run_cli, setup,
                        unused_decoding_flag)
from models.decoding import generate, image_seeds
from plots import save_grid
from utils import atomic_save_image

STRIP_IMAGES = 8  # rows of a class's decoding strip
GRID_IMAGES = 256  # images of a class's grid: the first ones (memory and a viewable PNG, whatever --n)
MAX_N = 100_000  # images per class: a typo's extra zeros refused before hours of decoding


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MaskGIT generation from nothing, per class or unconditional")
    p.add_argument('--class', dest='classes', action='append', default=None, metavar='NAME|ID',
                   help="a class of a conditional checkpoint (repeatable); none: unconditional (the null class)")
    p.add_argument('--n', type=int, default=8, help=f"images per class (at most {MAX_N:,})")
    p.add_argument('--output-dir', default='results/generate', help="where the images and grids go")
    add_model_args(p)
    add_decoding_args(p)
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        p.error("--n and --batch-size must be >= 1")
    if args.n > MAX_N:
        p.error(f"--n {args.n}: at most {MAX_N:,} images per class (run several --output-dir with other --seed)")
    if args.refine is not None:  # issue 31: accepted and ignored before
        p.error("--refine re-decodes the holes of an inpainting in its known pixels' context; generation has no "
                "known pixels (it is inpainting.py's)")
    unused = unused_decoding_flag(args)
    if unused:
        p.error(unused)
    try:
        decoding_settings(args)
    except ValueError as e:
        p.error(str(e))
    return args


def image_ids(labels, index):
    """Image ids int64 of images number `index` of class ids `labels` (None: unconditional), the (class, i) pairs
    their randomness comes from (image_seeds), so image i of a class is the same whatever else is generated."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return index + (0 if labels is None else (torch.as_tensor(labels, dtype=torch.int64) + 1) << 32)


def class_folder(model, label):
    """The output name of a class id (None: unconditional)."""
    if label is None:
        return 'unconditional'
    names = model.transformer.class_emb.names
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', names[label]) if names else f'class_{label}'


def check_classes(model, labels, given, cfg_scale):
    """One-line errors for --class flags that would do nothing: a class given twice (its n images written once
    over), --cfg-scale without a class (guidance towards the null class is no guidance)."""
    for k, label in enumerate(labels):
        if label in labels[:k]:
            first, name = given[labels.index(label)], class_folder(model, label)
            raise ValueError(f"--class {first} and --class {given[k]} are the same class ({name}): give it once")
    if cfg_scale > 0 and labels == [None]:
        raise ValueError(f"--cfg-scale {cfg_scale} guides towards a class: give --class (without it the null class "
                         f"is decoded unguided)")


@torch.no_grad()
def run(args):
    device, model, cfg, settings = setup(args)
    labels = [class_label(model, settings, c, args.MaskGitConfig) for c in args.classes or [None]]  # checked first
    check_classes(model, labels, args.classes, settings.cfg_scale)
    if args.n > 1 and settings.temperature == 0 and settings.choice_temperature == 0:
        print(f"note: --temperature 0 with --choice-temperature 0 draws no randomness: the {args.n} images of a "
              f"class are the same (--temperature 1 samples)", file=sys.stderr)
    inp = Inpainter(model, settings, *data_stats(cfg, 'test'), amp=args.amp)
    n_tok, null = model.num_image_tokens, model.transformer.num_classes
    for label in labels:
        name = class_folder(model, label)
        ids = image_ids(label, torch.arange(args.n))
        grid, strip = [], []
        for i in tqdm(range(0, args.n, args.batch_size), desc=f"generating {name}", unit='batch'):
            b = ids[i:i + args.batch_size]
            cond = {} if label is None else dict(labels=torch.full((len(b),), label), null_label=null)
            out = generate(inp.logits, len(b), n_tok, image_seeds(settings.seed, b), model.mask_token_id, settings,
                           device, **cond)
            images = inp.images(out.tokens).cpu()                                # [B, 3, H, W]
            for k, img in enumerate(images):  # written now: an interruption keeps every finished batch
                atomic_save_image(tensor01_to_pil(img), os.path.join(args.output_dir, name, f'image_{i + k:03d}.png'))
            grid.append(images[:max(0, GRID_IMAGES - i)])
            preds = out.preds[:, :max(0, STRIP_IMAGES - i)].transpose(0, 1)      # [k, S, N]: the strip's rows
            if len(preds):
                strip.append(inp.images(preds.flatten(0, 1)).cpu())              # [k*S, 3, H, W]
        grid = torch.cat(grid)
        save_grid(grid, os.path.join(args.output_dir, f'{name}_grid.png'), nrow=math.ceil(math.sqrt(len(grid))))
        save_grid(torch.cat(strip), os.path.join(args.output_dir, f'{name}_steps.png'), nrow=out.preds.shape[0])
    print(f"wrote {len(labels)} x {args.n} images to {args.output_dir}")


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
