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
flags are inpainting.py's (DecodeSettings; not --refine: nothing is known to re-decode around). Their defaults: the
config's `model_param: generate:` section when it has one (e.g. temperature: 1, choice_temperature: 4.5,
cfg_scale: 2; its guidance applies only with --class), else the decoding keys of model_param and DecodeSettings';
argmax with --choice-temperature 0 draws no randomness at all, so --temperature 1 (the paper's generation setting)
is the usual choice here. Flags that would do nothing are refused: a class given twice, --cfg-scale without --class.
pipeline.load(config).generate(class, n) returns the same images as a list.
"""
import argparse
import math
import os
import sys
from dataclasses import replace

import torch
from tqdm import tqdm

from dataset import maskgit_stats, tensor01_to_pil
from pipeline import (Inpainter, add_decoding_args, add_model_args, class_folder, class_label, decoding_settings,
                      image_ids, run_cli, setup, unused_decoding_flag)
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
    _, model, cfg, settings = setup(args, generation=True)
    if not args.classes and args.cfg_scale is None:  # the config's guidance needs a class to guide towards
        settings = replace(settings, cfg_scale=0.0, cfg_schedule='constant')
    labels = [class_label(model, settings, c, args.MaskGitConfig) for c in args.classes or [None]]  # checked first
    check_classes(model, labels, args.classes, settings.cfg_scale)
    if args.n > 1 and settings.temperature == 0 and settings.choice_temperature == 0:
        print(f"note: --temperature 0 with --choice-temperature 0 draws no randomness: the {args.n} images of a "
              f"class are the same (--temperature 1 samples)", file=sys.stderr)
    for label in labels:
        inp = Inpainter(model, settings, *maskgit_stats(cfg), amp=args.amp, label=label)
        name = class_folder(model, label)
        ids = image_ids(label, torch.arange(args.n))
        grid, strip = [], []
        for i in tqdm(range(0, args.n, args.batch_size), desc=f"generating {name}", unit='batch'):
            out = inp.generate(ids[i:i + args.batch_size])
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
