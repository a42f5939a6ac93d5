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
holes), and --image PATH --mask PATH for one image of one's own, which writes <stem>_result.png and
<stem>_steps.png (input | each step) instead.
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
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import (PairedTestDataset, data_stats, denormalize, files_by_number, load_rgb, load_user_pair, normalize,
                     pil_to_tensor01, read_labels, tensor01_to_pil)
from models.baselines import have_opencv, opencv_fill
from models.decoding import CFG_SCHEDULES, SCHEDULES, DecodeSettings, decode, image_seeds
from models.maskgit import MaskGit, transformer_state_dict
from models.masks import OUTPAINT_REGIONS, box_keep, fill_holes, latent_mask, normalised_fill, outpaint_keep
from models.token_cache import tokenizer_sha256
from models.transformer import check_guidance, class_id, require_classes
from models.vqgan import load_vqgan
from plots import save_grid
from utils import (atomic_save_image, check_writable, load_checkpoint, load_config, load_state_dict_checked,
                   resolve_device)

SUMMARY_IMAGES = 4  # images per row of schedules.png
LABEL_SPLITS = ('test', 'val')  # prepare_dataset.py's splits with masked images (labels.json keys test/..., val/...)


def add_decoding_args(parser):
    """The decoding flags, one per DecodeSettings field, each default None: an unset flag takes the config's
    value (model_param: total_iter, gamma_type, choice_temperature, refine), else DecodeSettings' default."""
    d = DecodeSettings()
    parser.add_argument('--total-iter', type=int, default=None,
                        help=f"decoding steps T (default: the config's total_iter, else {d.total_iter})")
    parser.add_argument('--mask-func', default=None, choices=SCHEDULES,
                        help=f"mask schedule gamma (default: the config's gamma_type, else {d.mask_func})")
    parser.add_argument('--choice-temperature', type=float, default=None,
                        help="scale of the Gumbel noise on the confidence, annealed by (1 - r) (default: the "
                             f"config's choice_temperature, else {d.choice_temperature}; 0 = most likely tokens first)")
    parser.add_argument('--temperature', type=float, default=None,
                        help=f"token sampling temperature (default {d.temperature}): 0 = argmax (the course's choice), "
                             "1 = sample from the model (the paper's generation setting)")
    parser.add_argument('--sweet-spot', type=int, default=None,
                        help="stop after this step and fill the rest with the most likely tokens "
                             f"(default {d.sweet_spot}; <= 0 or >= total: all steps)")
    parser.add_argument('--seed', type=int, default=None,
                        help=f"run seed (default {d.seed}); each image's randomness is (seed, image number)")
    parser.add_argument('--refine', type=int, default=None, metavar='N',
                        help=f"after decoding, N times (default: the config's refine, else {d.refine}): paste the input's known pixels over the "
                             "result, re-encode it for the known tokens' context and decode the holes again (seed + k)")
    parser.add_argument('--cfg-scale', type=float, default=None, metavar='W',
                        help=f"classifier-free guidance of a conditional model (default {d.cfg_scale}: off): logits = "
                             "(1+W) cond - W uncond, both from one batched pass")
    parser.add_argument('--cfg-schedule', default=None, choices=CFG_SCHEDULES,
                        help=f"W over the steps (default {d.cfg_schedule}): constant, or linear from 0 at the first "
                             "step to W at the last")
    return parser


# the shipped openclipart pair: the class-conditional model, plain inpainting under its null class (RESULTS.md)
DEFAULT_CONFIG = 'configs/MaskGit_small_cond.yml'
CONDITIONAL_CONFIG, UNCONDITIONAL_CONFIG = DEFAULT_CONFIG, 'configs/MaskGit_small.yml'  # named in pairing errors


def add_model_args(parser, what='transformer checkpoint'):
    """The flags that pick the model and where it runs, shared by inpainting.py, generate.py and the benchmarks."""
    parser.add_argument('--device', default='auto', help="cpu, cuda, cuda:N, or auto (cuda when available)")
    parser.add_argument('--batch-size', type=int, default=64, help="images decoded together")
    parser.add_argument('--MaskGitConfig', default=DEFAULT_CONFIG,
                        help="MaskGit config (course: configs/MaskGit.yml)")
    parser.add_argument('--load-transformer-ckpt-path', default=None,
                        help=f"{what}: a state_dict (the course's format) or a train_state.pt (default: the "
                             f"config's checkpoint: path, the shipped one for {DEFAULT_CONFIG})")
    parser.add_argument('--vqgan-ckpt', default=None, help="VQGAN checkpoint (default: VQ_CKPT_path of the config)")
    parser.add_argument('--amp', action='store_true', help="bfloat16 autocast for the networks")
    return parser


def unused_decoding_flag(args):
    """The error of a decoding flag that would do nothing, or None: --cfg-schedule shapes a --cfg-scale > 0."""
    if args.cfg_schedule is not None and not args.cfg_scale:
        return f"--cfg-schedule {args.cfg_schedule} shapes the guidance of --cfg-scale W > 0; give --cfg-scale"
    return None


def parse_box(text):
    """argparse type of --box: 'x0,y0,x1,y1' -> four ints."""
    try:
        box = tuple(int(v) for v in text.split(','))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 (four integers, pixels), got {text!r}")
    return box


def decoding_settings(args, model_param=None):
    """DecodeSettings from parsed decoding flags: given > the config's model_param > default."""
    return DecodeSettings.from_config(model_param, **{f.name: getattr(args, f.name) for f in fields(DecodeSettings)})


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
    p.add_argument('--paste-known', action='store_true', help="composite the input's known pixels over the result")
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
                        "val when --test-maskedimage-path's folder is named val_* like prepare_dataset.py's "
                        "val_masked_image, else test)")
    region = p.add_mutually_exclusive_group()
    region.add_argument('--outpaint', default=None, choices=OUTPAINT_REGIONS,
                        help="keep this region's tokens and regenerate the rest (besides the masks' holes): center "
                             "keeps the central quarter of the token grid, a side half of it, a corner a quarter")
    region.add_argument('--box', type=parse_box, default=None, metavar='x0,y0,x1,y1',
                        help="regenerate the tokens inside this pixel box (x1, y1 exclusive; snapped outward to "
                             "tokens), under --class if given; every pixel outside it is the input's")
    p.add_argument('--image', default=None, help="inpaint this one image instead of the test folders (any size: "
                                                 "resized, centre-cropped first when not square)")
    p.add_argument('--mask', default=None, help="the mask of --image: any size (resized, nearest), 0 = hole")
    p.add_argument('--invert-mask', action='store_true', help="--mask's 0 means keep, not hole")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if not 0 < args.partial <= 1:  # also refuses nan
        p.error(f"--partial must be in (0, 1], got {args.partial}")
    if args.mask and not args.image:
        p.error("--mask needs --image (the test folders' masks are --test-mask-path)")
    if args.image and not (args.mask or args.outpaint or args.box):
        p.error("--image needs --mask (or --outpaint / --box to say what to regenerate)")
    if args.invert_mask and not args.mask:
        p.error("--invert-mask needs --mask")
    if args.image and args.gallery:
        p.error("--gallery is for the test folders, not --image")
    if args.image and args.labels:
        p.error("--labels is for the test folders, not --image (use --class)")
    if args.labels_split and not args.labels:
        p.error("--labels-split needs --labels")
    if args.gt_path and not args.gallery:
        p.error("--gt-path is the last column of --gallery N's rows; give --gallery")
    if args.image and args.partial != 1.0:
        p.error("--partial is for the test folders, not --image")
    if args.overwrite and args.image:
        p.error("--overwrite is for the test folders' outputs, not --image")
    unused = unused_decoding_flag(args)
    if unused:
        p.error(unused)
    if args.labels and not args.labels_split:  # test/ unless the folder is prepare_dataset.py's val_masked_image
        folder = os.path.basename(os.path.normpath(args.test_maskedimage_path))
        args.labels_split = 'val' if folder.startswith('val_') else 'test'
    try:  # the given flags over the defaults; the config's values are checked when it is read
        decoding_settings(args)
    except ValueError as e:
        p.error(str(e))
    return args


def load_maskgit(args, device, transformer=True):
    """(MaskGit with its VQGAN and trained transformer on `device`, config dict); with transformer=False the
    transformer stays untrained and no checkpoint is read (what uses the tokenizer alone, e.g. its rFID). A
    transformer checkpoint that does not belong with the VQGAN or the config is refused first (check_pairing)."""
    cfg = load_config(args.MaskGitConfig)
    mp = cfg.get('model_param')
    if not isinstance(mp, dict) or 'VQ_Configs' not in mp:
        raise ValueError(f"config {args.MaskGitConfig} has no 'model_param: VQ_Configs:' section")
    vq = mp['VQ_Configs']
    vqgan = load_vqgan(vq['VQ_config_path'], args.vqgan_ckpt or vq.get('VQ_CKPT_path'), device)
    model = MaskGit(mp, vqgan)
    if not transformer:
        return model.to(device).eval(), cfg
    ckpt = args.load_transformer_ckpt_path or (cfg.get('checkpoint') or {}).get('path')
    if not ckpt:
        raise ValueError(f"no transformer checkpoint: pass --load-transformer-ckpt-path or set 'checkpoint: path:' "
                         f"in {args.MaskGitConfig}")
    sd = transformer_state_dict(load_checkpoint(ckpt))
    vq_ckpt = (args.vqgan_ckpt or vq.get('VQ_CKPT_path')
               or (load_config(vq['VQ_config_path']).get('checkpoint') or {}).get('path'))  # load_vqgan's choice
    check_pairing(sd, ckpt, model, args.MaskGitConfig, vq_ckpt)
    load_state_dict_checked(model.transformer, sd, ckpt)  # skips the tokenizer_sha256 record
    return model.to(device).eval(), cfg


def check_pairing(sd, ckpt, model, config, vq_ckpt):
    """One-line errors for a transformer state_dict `sd` (from file ckpt) that does not belong with the model:
    trained on the tokens of another VQGAN than vq_ckpt (its 'tokenizer_sha256', written by
    training_transformer.py; checkpoints without it are not checked), or class-conditional under a config
    without classes, or the reverse (which config to use instead, rather than a missing key)."""
    saved = sd.get('tokenizer_sha256')
    given = tokenizer_sha256(vq_ckpt) if isinstance(saved, str) else None
    if given and saved != given:
        raise ValueError(f"transformer checkpoint {ckpt} was trained on the tokens of another VQGAN than {vq_ckpt} "
                         f"(tokenizer sha256 {saved[:12]}... vs {given[:12]}...): give the --vqgan-ckpt it was "
                         f"trained with, or its config")
    conditional = any(k.startswith('class_emb.') for k in sd)
    if conditional and model.transformer.class_emb is None:
        raise ValueError(f"transformer checkpoint {ckpt} is class-conditional (has class_emb) but {config} builds an "
                         f"unconditional model: use a config with Transformer_param num_classes, e.g. "
                         f"{CONDITIONAL_CONFIG}")
    if not conditional and model.transformer.class_emb is not None:
        raise ValueError(f"transformer checkpoint {ckpt} is unconditional (no class_emb) but {config} builds a "
                         f"class-conditional model: use a config without Transformer_param num_classes, e.g. "
                         f"{UNCONDITIONAL_CONFIG}")


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
    """Tokens in, decoding, images out, for batches of (normalised images, pixel masks, ids).

    label: the class id of every image (a conditional model, guided by settings.cfg_scale), a callable from a
    batch's ids [B] to their class ids [B] long (each image its own class: image_labels), or None: the null class
    of a conditional model, the plain pass of an unconditional one."""

    def __init__(self, model, settings, mean, std, amp=False, paste_known=False, label=None):
        self.model, self.settings, self.mean, self.std, self.paste_known = model, settings, mean, std, paste_known
        self.label = label
        self.vqgan = model.vqgan
        self.factor = self.vqgan.img_resolution // self.vqgan.latent_resolution
        self.amp = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=amp)

    def labels(self, ids):
        """Class ids [B] of the images numbered ids [B], or None (no class)."""
        if self.label is None:
            return None
        return self.label(ids) if callable(self.label) else torch.full((len(ids),), self.label)

    def logits(self, tokens, labels=None):
        with self.amp:
            return self.model.transformer(tokens, labels)

    def regenerate(self, imgs, masks, keep):
        """(images, masks) with every pixel outside keep [1, H, W] (1 = keep) a hole too, filled with the grey
        of the course's masked images' holes (what the model is shown where it regenerates)."""
        masks = masks * keep.to(masks.device)
        return fill_holes(imgs, masks, normalised_fill(self.mean, self.std, imgs.device)), masks

    def tokens(self, imgs):
        """Normalised images [B, 3, H, W] -> tokens [B, N]."""
        with self.amp:
            return self.vqgan.encode_indices(imgs)

    def images(self, tokens):
        """tokens [B, N] -> images [B, 3, H, W] in [0, 1]."""
        with self.amp:
            return denormalize(self.vqgan.decode_indices(tokens).float(), self.mean, self.std)

    def paste(self, imgs, masks, out):
        """The input's known pixels over images `out` in [0, 1]."""
        return masks * denormalize(imgs, self.mean, self.std) + (1 - masks) * out

    def schedule(self, counts, modes):
        """[T, B] tokens masked after each step: the settings' schedule, one named for all, or one per row."""
        if modes is None or isinstance(modes, str):
            return self.settings.schedule(counts, modes)
        schedule = torch.empty(self.settings.total_iter, len(modes), dtype=torch.long)
        for mode in set(modes):
            rows = torch.tensor([m == mode for m in modes])
            schedule[:, rows] = self.settings.schedule(counts[rows], mode)
        return schedule

    @torch.no_grad()
    def __call__(self, imgs, masks, ids, modes=None):
        """Decode a batch; `modes`: None (the settings' mask_func), one schedule name, or one per image.

        With settings.refine = R, R more rounds k = 1..R: the known tokens are re-encoded from the input's
        known pixels pasted over the last round's image (context closer to a clean image's than that of the
        grey holes), and the holes decoded again with the same schedule, seeds from seed + k. Returns the
        last round's Decoded."""
        s, K = self.settings, self.model.mask_token_id
        unknown = latent_mask(masks, self.factor).flatten(1)                     # [B, N]
        schedule = self.schedule(unknown.sum(1).cpu(), modes)                    # [T, B]
        labels = self.labels(ids)
        cond = () if labels is None else (labels, self.model.transformer.num_classes)
        out = decode(self.logits, self.tokens(imgs), unknown, image_seeds(s.seed, ids), K, schedule, s, *cond)
        for k in range(1, s.refine + 1):
            composite = self.paste(imgs, masks, self.images(out.tokens))
            tokens = self.tokens(normalize(composite, self.mean, self.std))
            out = decode(self.logits, tokens, unknown, image_seeds(s.seed + k, ids), K, schedule, s, *cond)
        return out

    def final(self, imgs, masks, out):
        """Decoded images, with the input's known pixels pasted back under paste_known."""
        img = self.images(out.tokens)
        return self.paste(imgs, masks, img) if self.paste_known else img

    def render(self, imgs, masks, out):
        """(every step's image [S, B, 3, H, W], the result [B, 3, H, W]) in [0, 1]: all steps' predictions in
        one VQGAN decode, the last step's being the result (preds[-1] = tokens), pasted under paste_known."""
        S, B = out.preds.shape[:2]
        steps = self.images(out.preds.flatten(0, 1))                              # [S*B, 3, H, W]
        steps = steps.view(S, B, *steps.shape[1:])
        return steps, (self.paste(imgs, masks, steps[-1]) if self.paste_known else steps[-1])


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
    save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])


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
    save_grid(torch.cat(tiles), path, nrow=tiles[0].shape[0])
    return [f"{mode}: {rows[mode][0].sum(1).tolist()}" for mode in SCHEDULES]


def class_label(model, settings, given, config):
    """The class id of `--class given` (None: no class), after the checks of --class and --cfg-scale on the
    model built from `config`."""
    check_guidance(model.transformer, settings.cfg_scale, config)
    return None if given is None else class_id(model.transformer, given, config)


def image_labels(model, path, split, data, config):
    """--labels: ids [B] -> class ids [B] of the images of `data` (a PairedTestDataset), from a labels.json as
    prepare_dataset.py writes it: the image numbered i takes the class of the key '<split>/<file>' numbered i (by
    number, not name: masked_image/image_003.png -> test/image_003.png); null is the null class. One-line errors
    (an unconditional model, an image without a key, an unknown class) name the file and the key."""
    tr = model.transformer
    require_classes(tr, f"--labels {path}", config)
    labels = read_labels(path)
    keys = files_by_number([k for k in labels if k.rpartition('/')[0] == split], 'labels',
                           f"{path} (its {split}/ keys)")
    table = torch.full((max(data.indices) + 1,), -1, dtype=torch.long)   # by image number; every one used is set
    for i, image in zip(data.indices, data.images):
        if i not in keys:
            raise ValueError(f"--labels {path} has no key {split}/{os.path.basename(image)} (nor another {split}/ "
                             f"file numbered {i}) for {image}")
        given = labels[keys[i]]
        what = f"--labels {path}: {keys[i]} is {given!r}"
        table[i] = tr.num_classes if given is None else class_id(tr, given, config, what)
    return lambda ids: table[torch.as_tensor(ids)]


def region_keep(args, vqgan):
    """The pixels --outpaint or --box keep, [1, H, W] float (1 = keep), or None without them."""
    res, factor = vqgan.img_resolution, vqgan.img_resolution // vqgan.latent_resolution
    if args.outpaint:
        return outpaint_keep(args.outpaint, res, factor)
    return None if args.box is None else box_keep(args.box, res, factor)


def inpaint_image(args, inp, keep, device):
    """--image / --mask: one image of the user's own, inpainted into <stem>_result.png and <stem>_steps.png (the
    input with its holes grey, then the image at every step) in --output-dir."""
    res = inp.vqgan.img_resolution
    image, known, note = load_user_pair(args.image, args.mask, res, args.invert_mask)
    if note:
        print(note, file=sys.stderr)
    imgs = normalize(image, inp.mean, inp.std)[None].to(device)
    imgs, masks = inp.regenerate(imgs, known[None].to(device), torch.ones(1, res, res) if keep is None else keep)
    if not latent_mask(masks, inp.factor).any():
        raise ValueError(f"--mask {args.mask} has no hole at {res}x{res} (0 = hole; --invert-mask flips it)")
    out = inp(imgs, masks, torch.tensor([0]))
    steps, final = inp.render(imgs, masks, out)
    stem = os.path.join(args.output_dir, os.path.splitext(os.path.basename(args.image))[0])
    atomic_save_image(tensor01_to_pil(final[0]), f"{stem}_result.png")
    save_grid(torch.cat([denormalize(imgs, inp.mean, inp.std), steps[:, 0]]), f"{stem}_steps.png",
              nrow=steps.shape[0] + 1)
    print(f"wrote {stem}_result.png and {stem}_steps.png")


def setup(args):
    """What a decoding script starts with: (device, model, config, DecodeSettings), after checking that
    --output-dir can be written."""
    try:
        device = resolve_device(None if args.device == 'auto' else args.device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    check_writable(args.output_dir, '--output-dir', folder=True)
    model, cfg = load_maskgit(args, device)
    return device, model, cfg, decoding_settings(args, cfg['model_param'])


@torch.no_grad()
def run(args):
    device, model, cfg, settings = setup(args)
    mean, std = data_stats(cfg, 'test')
    label = class_label(model, settings, args.class_name, args.MaskGitConfig)
    if settings.cfg_scale > 0 and args.class_name is None and not args.labels:  # would guide nothing
        raise ValueError(f"--cfg-scale {settings.cfg_scale} guides towards a class: give --class or --labels "
                         f"(without them every image is decoded unguided, under the null class)")
    keep = region_keep(args, model.vqgan)
    if not args.image:
        data = PairedTestDataset(args.test_maskedimage_path, args.test_mask_path, args.partial, mean, std)
        check_inputs(data, model.vqgan.img_resolution)
        if args.labels:  # each image's own class: needs the images' numbers
            label = image_labels(model, args.labels, args.labels_split, data, args.MaskGitConfig)
    inp = Inpainter(model, settings, mean, std, amp=args.amp, paste_known=args.paste_known or args.box is not None,
                    label=label)
    if args.image:
        return inpaint_image(args, inp, keep, device)
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


def run_cli(run, args):
    """run(args), its errors one line on stderr (exit status 2), for this script and generate.py."""
    try:
        run(args)
    except (OSError, ValueError, KeyError) as e:
        msg = f"missing config key {e} (in {args.MaskGitConfig} or its VQGAN config)" if isinstance(e, KeyError) else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
