"""Images from nothing with a trained MaskGIT: every token masked, the decoding of inpainting.py.

    python generate.py --MaskGitConfig configs/MaskGit_small_cond.yml --class animals --class 3 --n 8 --cfg-scale 2 \
        --temperature 1 --output-dir results/gen          (the shipped conditional model)
    python generate.py --n 16 --output-dir results/gen          (no --class: unconditional / the null class)

Writes, under --output-dir, for each class (its name, `class_<id>` without names, or `unconditional`):
  <name>/image_{i:03d}.png   the n images
  <name>_grid.png            the same n images in one grid
  <name>_steps.png           the decoding strip of the first (up to 8) images: a row each, the image after every step
Image i of a class decodes with its own randomness (--seed, class, i), whatever --n, the other classes or the
batch. The decoding flags are inpainting.py's (DecodeSettings); argmax with --choice-temperature 0 draws no
randomness at all, so --temperature 1 (the paper's generation setting) is the usual choice here.
"""
import argparse
import math
import os
import re
import sys

import torch
from tqdm import tqdm

from dataset import data_stats, tensor01_to_pil
from inpainting import Inpainter, add_decoding_args, add_model_args, class_label, decoding_settings, run_cli, setup
from models.decoding import generate, image_seeds
from plots import save_grid
from utils import atomic_save_image

STRIP_IMAGES = 8  # rows of a class's decoding strip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MaskGIT generation from nothing, per class or unconditional")
    p.add_argument('--class', dest='classes', action='append', default=None, metavar='NAME|ID',
                   help="a class of a conditional checkpoint (repeatable); none: unconditional (the null class)")
    p.add_argument('--n', type=int, default=8, help="images per class")
    p.add_argument('--output-dir', default='results/generate', help="where the images and grids go")
    add_model_args(p)
    add_decoding_args(p)
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        p.error("--n and --batch-size must be >= 1")
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


@torch.no_grad()
def run(args):
    device, model, cfg, settings = setup(args)
    labels = [class_label(model, settings, c, args.MaskGitConfig) for c in args.classes or [None]]  # checked first
    if args.n > 1 and settings.temperature == 0 and settings.choice_temperature == 0:
        print(f"note: --temperature 0 with --choice-temperature 0 draws no randomness: the {args.n} images of a "
              f"class are the same (--temperature 1 samples)", file=sys.stderr)
    inp = Inpainter(model, settings, *data_stats(cfg, 'test'), amp=args.amp)
    n_tok, null = model.num_image_tokens, model.transformer.num_classes
    for label in labels:
        name = class_folder(model, label)
        ids = image_ids(label, torch.arange(args.n))
        images, strip = [], []
        for i in tqdm(range(0, args.n, args.batch_size), desc=f"generating {name}", unit='batch'):
            b = ids[i:i + args.batch_size]
            cond = {} if label is None else dict(labels=torch.full((len(b),), label), null_label=null)
            out = generate(inp.logits, len(b), n_tok, image_seeds(settings.seed, b), model.mask_token_id, settings,
                           device, **cond)
            images.append(inp.images(out.tokens).cpu())                          # [B, 3, H, W]
            preds = out.preds[:, :max(0, STRIP_IMAGES - i)].transpose(0, 1)      # [k, S, N]: the strip's rows
            if len(preds):
                strip.append(inp.images(preds.flatten(0, 1)).cpu())              # [k*S, 3, H, W]
        images = torch.cat(images)
        for i, img in enumerate(images):
            atomic_save_image(tensor01_to_pil(img), os.path.join(args.output_dir, name, f'image_{i:03d}.png'))
        save_grid(images, os.path.join(args.output_dir, f'{name}_grid.png'), nrow=math.ceil(math.sqrt(args.n)))
        save_grid(torch.cat(strip), os.path.join(args.output_dir, f'{name}_steps.png'), nrow=out.preds.shape[0])
    print(f"wrote {len(labels)} x {args.n} images to {args.output_dir}")


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
