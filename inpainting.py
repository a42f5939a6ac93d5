"""Inpaint the course's masked test images with a trained MaskGIT (batched iterative decoding).

The course's flags keep their meaning. Writes, under --output-dir:
  test_results/image_{i:03d}.png  the inpainted image (what the FID script reads)
  mask_scheduling/test_{i}.png    the latent mask at every step, one row (white = known)
  imga/test_{i}.png               the input, then the image decoded at every step
  schedules.png                   each row a mask schedule on the first images of the first batch:
                                  the mask of the first image at every step, then the results
  gallery.png                     with --gallery N: input | each step | result | OpenCV Telea | ground truth
Beyond the course: --class, or --labels for each image's own class (a conditional checkpoint; classifier-free
guidance with --cfg-scale), --outpaint REGION and --box x0,y0,x1,y1 (what to regenerate, besides the masks'
holes).

Your own pictures (any size, mode and format; pipeline.py and fullsize.py do the work): --image PATH --mask PATH
writes <stem>_result.png into --output-dir, the picture at its own width, height and mode, every pixel farther
than a few px from the hole the input's, byte for byte. Masks: white = hole by default (IOPaint, diffusers;
--mask-convention black for the course's 0 = hole), transparent pixels = hole, the picture's own transparency with
--mask-from-alpha; a mask of another size is refused unless --resize-mask. --outpaint side=px[,side=px...] (the '='
tells it from the test folders' REGION) extends the canvas, --box x0,y0,x1,y1 adds a hole; --fill-strategy picks
the model, OpenCV's Telea or both (auto: holes thinner than a token to Telea). An existing result is refused
unless --overwrite; --save-steps adds <stem>_steps.png. --image DIR --mask DIR does a folder: files paired by
stem (the mask <stem>.png or <stem>_mask.png), unmatched files reported first, the model loaded once.
Before anything is written, every image and mask is decoded in full and checked (pairs by number without
ambiguity, sizes, binary masks: a 0/1 mask or a non-mask is refused, a lossy one thresholded at 128 with a
note, one almost all hole warned about) and --output-dir is checked for writing; errors are one line. Files an
earlier run left in test_results/, mask_scheduling/ or imga/ that this run will not write are refused (they would
mix into the FID), or deleted with --overwrite.
"""
import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import (MASK_FILL, PairedTestDataset, denormalize, list_images, load_rgb, maskgit_stats, pil_to_tensor01,
                     tensor01_to_pil)
from fullsize import CONVENTIONS, mask_from_alpha, outpaint_canvas, read_image, read_mask
from models.baselines import have_opencv, opencv_fill
from models.decoding import SCHEDULES
from models.masks import OUTPAINT_REGIONS, box_keep, outpaint_keep
from pipeline import (SETTINGS, Inpainter, Pipeline, add_decoding_args, add_model_args, check_inputs, class_label,
                      decoding_settings, image_labels, parse_box, run_cli, setup, unused_decoding_flag)
from plots import save_grid
from utils import atomic_save_image

SUMMARY_IMAGES = 4  # images per row of schedules.png
# prepare_dataset.py's splits with masked images (labels.json keys test/..., val/..., holdout/...)
LABEL_SPLITS = ('test', 'val', 'holdout')
SIDES = ('left', 'right', 'top', 'bottom')  # --outpaint side=px of an own picture
FILL_STRATEGIES = ('auto', 'model', 'telea')
STRIP_SIDE = 512  # px: the longer side of each picture of --save-steps' strip, at most


def parse_outpaint(text):
    """argparse type of --outpaint: a REGION of the test folders (str), or 'side=px,...' (a '=' in it) -> {side: px}
    with every side, the canvas extension of --image."""
    if '=' not in text:
        if text not in OUTPAINT_REGIONS:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (a region: {', '.join(OUTPAINT_REGIONS)}; "
                                             f"or side=pixels, e.g. left=64,top=32, with --image)")
        return text
    sides = dict.fromkeys(SIDES, 0)
    for item in text.split(','):
        side, _, px = item.partition('=')
        if side.strip() not in SIDES or not px.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected side=pixels with sides {', '.join(SIDES)} and pixels an "
                                             f"integer >= 0, e.g. left=64,top=32; got {item!r}")
        sides[side.strip()] = int(px)
    if not any(sides.values()):
        raise argparse.ArgumentTypeError(f"{text!r} extends nothing: give a side > 0 px")
    return sides


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MaskGIT inpainting (batched Gumbel-confidence decoding)")
    add_model_args(p)
    p.add_argument('--partial', type=float, default=1.0, help="keep the first int(n * partial) test images")
    p.add_argument('--num_workers', type=int, default=0, help="DataLoader workers")
    p.add_argument('--test-maskedimage-path', default='data/openclipart/masked_image')
    p.add_argument('--test-mask-path', default='data/openclipart/mask64')
    p.add_argument('--output-dir', default='.', help="where test_results/, mask_scheduling/, imga/ go")
    p.add_argument('--overwrite', action='store_true',
                   help="delete the files of test_results/, mask_scheduling/, imga/ this run does not write (an "
                        "earlier run's); without it such files are refused: they would mix into the FID")
    add_decoding_args(p)
    p.add_argument('--paste-known', action='store_true',
                   help="composite the input's known pixels over the result (--image: always)")
    p.add_argument('--gallery', type=int, default=0, metavar='N',
                   help="write gallery.png: the first N images as rows of input | steps | result | OpenCV Telea's "
                        "fill (when opencv-python-headless is installed) | ground truth (with --gt-path)")
    p.add_argument('--gt-path', default=None, help="ground-truth folder (image_{i:03d}.png) for the gallery's last column")
    given = p.add_mutually_exclusive_group()
    given.add_argument('--class', dest='class_name', default=None, metavar='NAME|ID',
                       help="condition every image on this class (a conditional checkpoint; default: the null class)")
    given.add_argument('--labels', default=None, metavar='JSON',
                       help="condition each image on its own class (a conditional checkpoint), read from a labels.json "
                            "as prepare_dataset.py writes it (file -> class name; null: the null class): the masked "
                            "image numbered i takes the class of the --labels-split key numbered i, e.g. "
                            "test/image_003.png for masked_image/image_003.png")
    p.add_argument('--labels-split', default=None, choices=LABEL_SPLITS,
                   help="the split whose files the masked images mirror, i.e. the keys of --labels read (default: "
                        "the folder's prefix when --test-maskedimage-path is named <split>_* like prepare_dataset.py's "
                        "val_masked_image or holdout_masked_image, else test)")
    region = p.add_mutually_exclusive_group()
    region.add_argument('--outpaint', default=None, type=parse_outpaint, metavar='REGION|side=px,...',
                        help="the test folders: REGION (" + ', '.join(OUTPAINT_REGIONS) + ") keeps this region's "
                             "tokens and regenerates the rest (besides the masks' holes): center keeps the central "
                             "quarter of the token grid, a side half of it, a corner a quarter. --image: side=pixels "
                             "(left, right, top, bottom; e.g. left=64,top=32) extends the picture's canvas and "
                             "fills the new pixels around the whole original")
    region.add_argument('--box', type=parse_box, default=None, metavar='x0,y0,x1,y1',
                        help="regenerate inside this pixel box (x1, y1 exclusive), under --class if given: on the "
                             "test folders the tokens it touches, every pixel outside them the input's; with "
                             "--image a hole (besides --mask's) at the picture's own size")
    own = p.add_argument_group('your own pictures (--image)')
    own.add_argument('--image', default=None, metavar='PATH|DIR',
                     help="inpaint this picture (any size, mode and format) into --output-dir/<stem>_result.png at its "
                          "own size instead of the test folders; a folder: each of its pictures")
    own.add_argument('--mask', default=None, metavar='PATH|DIR',
                     help="the mask of --image, its size (white = hole; see --mask-convention); a folder with "
                          "--image DIR: <stem>.png or <stem>_mask.png for each picture <stem>.*")
    own.add_argument('--mask-convention', default=None, choices=CONVENTIONS,
                     help="which --mask pixels are the hole: white (255, the default: IOPaint, diffusers) or black "
                          "(0, the course's masks); transparent pixels are the hole whatever this says")
    own.add_argument('--invert-mask', action='store_true', help=argparse.SUPPRESS)  # refused: see --mask-convention
    own.add_argument('--mask-from-alpha', action='store_true',
                     help="the hole is --image's transparent pixels (instead of --mask); filled ones become opaque")
    own.add_argument('--resize-mask', action='store_true',
                     help="resize a --mask of another size than its picture (nearest); without it that is an error")
    own.add_argument('--fill-strategy', default=None, choices=FILL_STRATEGIES,
                     help="auto (the default): holes thinner than a token at their crop's scale to OpenCV's Telea, "
                          "the rest to the model; model; telea (OpenCV only)")
    own.add_argument('--save-steps', action='store_true',
                     help="also write <stem>_steps.png: the input with its hole grey, then the picture after each "
                          f"decoding step (each at most {STRIP_SIDE} px a side)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if not 0 < args.partial <= 1:  # also refuses nan
        p.error(f"--partial must be in (0, 1], got {args.partial}")
    if args.mask and not args.image:
        p.error("--mask needs --image (the test folders' masks are --test-mask-path)")
    if args.invert_mask:  # its meaning flipped with the default convention: refused rather than silently inverted
        p.error("--invert-mask is gone: masks are white = hole by default now; for 0 = hole (the course's masks) pass "
                "--mask-convention black")
    own_flag_errors(p, args)
    if args.labels_split and not args.labels:
        p.error("--labels-split needs --labels")
    if args.gt_path and not args.gallery:
        p.error("--gt-path is the last column of --gallery N's rows; give --gallery")
    unused = unused_decoding_flag(args)
    if unused:
        p.error(unused)
    if args.labels and not args.labels_split:  # the split of prepare_dataset.py's <split>_masked_image, else test
        prefix = os.path.basename(os.path.normpath(args.test_maskedimage_path)).partition('_')[0]
        args.labels_split = prefix if prefix in LABEL_SPLITS[1:] else 'test'
    try:  # the given flags over the defaults; the config's values are checked when it is read
        decoding_settings(args)
    except ValueError as e:
        p.error(str(e))
    return args


def own_flag_errors(p, args):
    """argparse errors of the own-picture flags: each names what it needs or what it is for."""
    own_only = [('--mask-convention', args.mask_convention), ('--mask-from-alpha', args.mask_from_alpha),
                ('--resize-mask', args.resize_mask), ('--fill-strategy', args.fill_strategy),
                ('--save-steps', args.save_steps)]
    for flag, value in own_only:
        if value and not args.image:
            p.error(f"{flag} is for --image (your own pictures), not the test folders")
    sides = isinstance(args.outpaint, dict)
    if sides and not args.image:
        p.error("--outpaint side=pixels extends the canvas of --image; the test folders take a REGION "
                f"({', '.join(OUTPAINT_REGIONS)})")
    if not args.image:
        return
    if args.outpaint and not sides:
        side = args.outpaint.split('-')[0] if args.outpaint != 'center' else 'left'
        p.error(f"--outpaint {args.outpaint} is a region of the test folders' images; to extend your picture give "
                f"side=pixels, e.g. --outpaint {side}=64")
    if args.mask and args.mask_from_alpha:
        p.error("--mask and --mask-from-alpha both give the hole: give one")
    for flag, value in (('--mask-convention', args.mask_convention), ('--resize-mask', args.resize_mask)):
        if value and not args.mask:
            p.error(f"{flag} reads --mask; give --mask")
    if not (args.mask or args.mask_from_alpha or args.outpaint or args.box):
        p.error("--image needs --mask (or --mask-from-alpha, --outpaint side=px or --box to say what to fill)")
    folder = os.path.isdir(args.image)
    if folder and (args.outpaint or args.box):
        p.error("--outpaint and --box are for one --image file, not a folder")
    if folder and not (args.mask or args.mask_from_alpha):
        p.error("--image DIR needs --mask DIR (or --mask-from-alpha)")
    if args.mask and folder != os.path.isdir(args.mask):
        p.error(f"--image and --mask must both be files or both folders ({args.image}, {args.mask})")
    if args.gallery:
        p.error("--gallery is for the test folders, not --image")
    if args.labels:
        p.error("--labels is for the test folders, not --image (use --class)")
    if args.partial != 1.0:
        p.error("--partial is for the test folders, not --image")
    args.mask_convention = args.mask_convention or 'white'
    args.fill_strategy = args.fill_strategy or 'auto'


def mask_tiles(masks, latent_res, img_res):
    """masks [..., N] bool (True = unknown) -> [..., 3, img_res, img_res] tiles, white = known."""
    m = (~masks).float().reshape(-1, 1, latent_res, latent_res)
    m = F.interpolate(m, size=(img_res, img_res), mode='nearest').expand(-1, 3, -1, -1)
    return m.reshape(*masks.shape[:-1], 3, img_res, img_res)


TEMP_FILE = re.compile(r'^\..+\.tmp\d+$')  # utils.atomic_open's temporary names: a write in progress, not an output
OUTPUT_FOLDERS = {'test_results': 'image_{:03d}.png', 'mask_scheduling': 'test_{}.png', 'imga': 'test_{}.png'}


def stale_outputs(output_dir, ids):
    """{folder: [files]} of the files in --output-dir's OUTPUT_FOLDERS that a run on images `ids` will not
    write (an earlier run's), sorted; folders without any are left out."""
    stale = {}
    for sub, name in OUTPUT_FOLDERS.items():
        d = os.path.join(output_dir, sub)
        if os.path.isdir(d):
            ours = {name.format(i) for i in ids}
            files = sorted(n for n in os.listdir(d) if n not in ours and not TEMP_FILE.match(n)
                           and not os.path.isdir(os.path.join(d, n)))
            if files:
                stale[sub] = files
    return stale


def clear_stale_outputs(output_dir, ids, overwrite):
    """Refuse (one line naming the folder and a count) the files an earlier run left in the output folders,
    which would pass the FID's count check beside this run's; with overwrite, delete exactly those and say so."""
    stale = stale_outputs(output_dir, ids)
    if stale and not overwrite:
        sub, files = next(iter(stale.items()))
        raise ValueError(f"--output-dir {output_dir}: {sub}/ holds {len(files)} file(s) this run will not write "
                         f"(e.g. {files[0]}, an earlier run's?); they would mix into the FID: pass --overwrite to "
                         f"delete them, or use another --output-dir")
    for sub, files in stale.items():
        for name in files:
            os.remove(os.path.join(output_dir, sub, name))
        print(f"--overwrite: deleted {len(files)} file(s) of an earlier run from {os.path.join(output_dir, sub)}",
              file=sys.stderr)


def write_results(output_dir, ids, shown, steps, final, masks, latent_res):
    """The three per-image files of one batch, from CPU tensors (runs in the writer thread)."""
    S, img_res = steps.shape[0], final.shape[-1]
    tiles = mask_tiles(masks, latent_res, img_res)                              # [S+1, B, 3, H, W]
    for b, i in enumerate(ids):
        path = {sub: os.path.join(output_dir, sub, name.format(i)) for sub, name in OUTPUT_FOLDERS.items()}
        atomic_save_image(tensor01_to_pil(final[b]), path['test_results'])
        save_grid(tiles[:, b], path['mask_scheduling'], nrow=S + 1)
        save_grid(torch.cat([shown[b:b + 1], steps[:, b]]), path['imga'], nrow=S + 1)


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
    S = steps.shape[0]
    cols = ['masked input'] + [f'step {k + 1}' for k in range(S - 1)] + ['last step', 'result'] + \
        (['OpenCV Telea'] if telea is not None else []) + (['ground truth'] if gt_root else [])
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0], col_labels=cols,
              row_labels=[f'#{i}' for i in ids[:n].tolist()])


def save_schedules(inp, imgs, masks, ids, out, final, path):
    """One row per schedule: the first image's mask after every step, then the results of the first images.
    The settings' own schedule row is the batch's decoding (out, final); only the other schedules are decoded."""
    n, vq = min(SUMMARY_IMAGES, len(ids)), inp.vqgan
    others = [mode for mode in SCHEDULES if mode != inp.settings.mask_func]
    rep = lambda x: x[:n].repeat(len(others), *[1] * (x.dim() - 1))          # [len(others)*n, ...], schedule-major
    more = inp(rep(imgs), rep(masks), rep(ids), [mode for mode in others for _ in range(n)])
    more_final = inp.final(rep(imgs), rep(masks), more)
    rows = {mode: (more.masks[:, j * n], more_final[j * n:(j + 1) * n]) for j, mode in enumerate(others)}
    rows[inp.settings.mask_func] = (out.masks[:, 0], final[:n])              # masks [S+1, N] of the first image
    tiles = [torch.cat([mask_tiles(rows[mode][0], vq.latent_resolution, vq.img_resolution), rows[mode][1]])
             for mode in SCHEDULES]
    S = rows[SCHEDULES[0]][0].shape[0]
    cols = ['masks: input'] + [f'after step {k}' for k in range(1, S)] + [f'result #{i}' for i in ids[:n].tolist()]
    save_grid(torch.cat(tiles), path, nrow=tiles[0].shape[0], col_labels=cols, row_labels=list(SCHEDULES))
    return [f"{mode}: {rows[mode][0].sum(1).tolist()}" for mode in SCHEDULES]


def region_keep(args, vqgan):
    """The pixels --outpaint or --box keep, [1, H, W] float (1 = keep), or None without them."""
    res, factor = vqgan.img_resolution, vqgan.factor
    if args.outpaint:
        return outpaint_keep(args.outpaint, res, factor)
    return None if args.box is None else box_keep(args.box, res, factor)


def class_flags(args, model, settings):
    """The class id of --class (None without it), after the checks of --class and --cfg-scale."""
    label = class_label(model, settings, args.class_name, args.MaskGitConfig)
    if settings.cfg_scale > 0 and args.class_name is None and not args.labels:  # would guide nothing
        raise ValueError(f"--cfg-scale {settings.cfg_scale} guides towards a class: give --class or --labels "
                         f"(without them every image is decoded unguided, under the null class)")
    return label


# ----------------------------------------------------------------------------- your own pictures

def stem_of(path):
    return os.path.splitext(os.path.basename(path))[0]


def by_stem(paths, what, flag):
    """{stem: path}; one-line error for two files of one stem (their results would share a name)."""
    found = {}
    for path in paths:
        stem = stem_of(path)
        if stem in found:
            raise ValueError(f"{flag}: {os.path.basename(found[stem])} and {os.path.basename(path)} share the stem "
                             f"{stem!r} ({what}s are paired and named by stem): rename one")
        found[stem] = path
    return found


def few(names, n=3):
    return ', '.join(sorted(names)[:n]) + (', ...' if len(names) > n else '')


def own_jobs(args):
    """[(stem, picture path, mask path or None)] of --image and --mask: one file, or folders paired by stem (the
    mask <stem>.<ext> or <stem>_mask.<ext>; one folder for both: the *_mask files are the masks). Unmatched files
    are reported in one line on stderr before any work; none matched is an error."""
    if not os.path.isdir(args.image):
        return [(stem_of(args.image), args.image, args.mask)]
    same = args.mask and os.path.realpath(args.mask) == os.path.realpath(args.image)
    files = list_images(args.image)
    pictures = by_stem([f for f in files if not (same and stem_of(f).endswith('_mask'))], 'picture', '--image')
    if args.mask_from_alpha:
        return [(stem, path, None) for stem, path in sorted(pictures.items())]
    masks = {}
    for path in ([f for f in files if stem_of(f).endswith('_mask')] if same else list_images(args.mask, what='mask')):
        stem = stem_of(path)
        key = stem if stem in pictures and not same else stem[:-len('_mask')] if stem.endswith('_mask') else stem
        if key in masks:
            raise ValueError(f"--mask {args.mask}: {os.path.basename(masks[key])} and {os.path.basename(path)} are "
                             f"both masks of {key!r}: keep one")
        masks[key] = path
    lone_pictures = [os.path.basename(pictures[k]) for k in pictures if k not in masks]
    lone_masks = [os.path.basename(masks[k]) for k in masks if k not in pictures]
    if lone_pictures or lone_masks:
        print(f"note: skipped {len(lone_pictures)} picture(s) without a mask ({few(lone_pictures) or '-'}) and "
              f"{len(lone_masks)} mask(s) without a picture ({few(lone_masks) or '-'}); masks are named <stem>.png "
              f"or <stem>_mask.png", file=sys.stderr)
    jobs = [(stem, pictures[stem], masks[stem]) for stem in sorted(pictures) if stem in masks]
    if not jobs:
        raise ValueError(f"--image {args.image} and --mask {args.mask}: no picture has a mask of its stem")
    return jobs


def box_hole(box, size):
    """--box x0,y0,x1,y1 as a hole bool [H, W] of a picture of size (w, h), clipped to it."""
    w, h = size
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"--box {','.join(map(str, box))} holds no pixel of the {w}x{h} picture (x1, y1 exclusive)")
    hole = np.zeros((h, w), bool)
    hole[y0:y1, x0:x1] = True
    return hole


def own_input(args, image, mask):
    """(Picture to fill: the canvas with --outpaint sides, hole bool [H, W] (True = hole), fill_alpha) of one own
    picture, every check of its files done (one-line errors naming them; notes on stderr)."""
    pic = read_image(image)
    hole, fill_alpha = np.zeros(pic.size[::-1], bool), False
    if mask:
        hole, note = read_mask(mask, pic.size, args.mask_convention, args.resize_mask)
        if note:
            print(note, file=sys.stderr)
    elif args.mask_from_alpha:
        hole, fill_alpha = mask_from_alpha(pic, image), True
    if args.box:
        hole = hole | box_hole(args.box, pic.size)
    if isinstance(args.outpaint, dict):
        o = args.outpaint
        pic, new = outpaint_canvas(pic, **o)
        hole = new | np.pad(hole, ((o['top'], o['bottom']), (o['left'], o['right'])))
    return pic, hole, fill_alpha


def own_outputs(args, stem):
    """The files one own picture writes: <stem>_result.png, and <stem>_steps.png with --save-steps."""
    base = os.path.join(args.output_dir, stem)
    return [f"{base}_result.png"] + ([f"{base}_steps.png"] if args.save_steps else [])


def save_steps_strip(pic, hole, steps, path):
    """<stem>_steps.png: the input with its hole grey, then the picture after each step, a row, each scaled to at
    most STRIP_SIDE px a side."""
    rgb = np.asarray(pic.image.convert('RGB'))
    frames = [Image.fromarray(np.where(hole[:, :, None], np.array(MASK_FILL, np.uint8), rgb))]
    frames += [f.convert('RGB') for f in steps]
    scale = min(1.0, STRIP_SIDE / max(pic.size))
    size = (max(1, round(pic.size[0] * scale)), max(1, round(pic.size[1] * scale)))
    tiles = [pil_to_tensor01(f.resize(size, Image.Resampling.LANCZOS) if scale < 1 else f) for f in frames]
    save_grid(torch.stack(tiles), path, nrow=len(tiles))


def own_pictures(args):
    """--image / --mask: each picture checked (and its outputs: none overwritten without --overwrite) before the
    model loads, then filled at its own size through the pipeline into --output-dir."""
    jobs = own_jobs(args)
    for _, image, mask in jobs:  # every file decoded and checked before any work
        own_input(args, image, mask)
    for stem, _, _ in jobs:
        for path in own_outputs(args, stem):
            if os.path.exists(path) and not args.overwrite:
                raise ValueError(f"--output-dir {args.output_dir}: {os.path.basename(path)} exists (an earlier "
                                 f"run's?): pass --overwrite to replace it, or use another --output-dir")
    _, model, cfg, settings = setup(args)
    class_flags(args, model, settings)
    pipe = Pipeline(model, cfg, args.MaskGitConfig, amp=args.amp, batch_size=args.batch_size)
    given = {name: getattr(args, name) for name in SETTINGS}
    for stem, image, mask in tqdm(jobs, desc='inpainting', unit='picture', disable=len(jobs) == 1):
        pic, hole, fill_alpha = own_input(args, image, mask)
        result, steps = pipe.fill(pic, hole, fill_alpha, args.save_steps, class_name=args.class_name,
                                  strategy=args.fill_strategy, **given)
        paths = own_outputs(args, stem)
        atomic_save_image(result, paths[0])
        if args.save_steps:
            save_steps_strip(pic, hole, steps, paths[1])
        if len(jobs) == 1:
            print(f"wrote {' and '.join(paths)} ({result.size[0]}x{result.size[1]} {result.mode})")
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} results to {args.output_dir}")


@torch.no_grad()
def run(args):
    if args.image:
        return own_pictures(args)
    device, model, cfg, settings = setup(args)
    mean, std = maskgit_stats(cfg)
    label = class_flags(args, model, settings)
    keep = region_keep(args, model.vqgan)
    data = PairedTestDataset(args.test_maskedimage_path, args.test_mask_path, args.partial, mean, std)
    check_inputs(data, model.vqgan.img_resolution)
    if args.labels:  # each image's own class: needs the images' numbers
        label = image_labels(model, args.labels, args.labels_split, data, args.MaskGitConfig)
    inp = Inpainter(model, settings, mean, std, amp=args.amp, paste_known=args.paste_known or args.box is not None,
                    label=label)
    if args.gallery and args.gt_path:  # checked before any output is written
        missing = [gt_file(args.gt_path, i) for i in data.indices[:min(args.gallery, args.batch_size)]
                   if not os.path.isfile(gt_file(args.gt_path, i))]
        if missing:
            raise FileNotFoundError(f"--gt-path: no ground truth {missing[0]} for the gallery")
        for i in data.indices[:min(args.gallery, args.batch_size)]:
            load_rgb(gt_file(args.gt_path, i))  # decoded in full now: a broken file is named before any output
    clear_stale_outputs(args.output_dir, data.indices, args.overwrite)  # the last check: deletes under --overwrite
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    with ThreadPoolExecutor(max_workers=1) as writer:  # PNGs of one batch are written while the next decodes
        pending = None
        for k, (imgs, masks, ids) in enumerate(tqdm(loader, desc='inpainting', unit='batch')):
            imgs, masks = imgs.to(device), masks.to(device)
            if keep is not None:
                imgs, masks = inp.regenerate(imgs, masks, keep)
            out = inp(imgs, masks, ids)
            steps, final = inp.render(imgs, masks, out)
            shown = denormalize(imgs, mean, std)
            if pending is not None:
                pending.result()  # re-raises a failed write; one batch in flight bounds the memory held
            pending = writer.submit(write_results, args.output_dir, ids.tolist(), shown.cpu(), steps.cpu(),
                                    final.cpu(), out.masks.cpu(), model.vqgan.latent_resolution)
            if k == 0:
                if args.gallery:
                    save_gallery(shown, steps, final, masks, ids, args.gt_path,
                                 os.path.join(args.output_dir, 'gallery.png'), args.gallery)
                summary = os.path.join(args.output_dir, 'schedules.png')
                counts = save_schedules(inp, imgs, masks, ids, out, final, summary)
                tqdm.write(f"masked tokens per step of image {ids[0].item()} -> {summary}\n  " + "\n  ".join(counts))
        if pending is not None:
            pending.result()
    print(f"wrote {len(data)} images to {os.path.join(args.output_dir, 'test_results')}")


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
