"""The inference library under every entry point: a model pair loaded from a config, decoding settings from
the config and overrides, the Inpainter, class handling, generation, and a person's own pictures at their own
size. inpainting.py, generate.py, app.py and the benchmarks are thin CLIs over it.

    from pipeline import load
    pipe = load('configs/MaskGit_small_cond.yml', device='cpu')
    result = pipe.inpaint('photo.jpg', 'hole.png')      # PIL, the picture's size and mode; white = hole
    images = pipe.generate('animals', n=8)              # list of PIL images at the model's resolution
"""
import argparse
import os
import re
import sys
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

import fullsize
from dataset import denormalize, files_by_number, maskgit_stats, normalize, read_labels, tensor01_to_pil
from models.decoding import CFG_SCHEDULES, ORDERS, SCHEDULES, DecodeSettings, decode, generate, image_seeds
from models.decoding import _CONFIG_KEYS as DECODING_CONFIG_KEYS
from models.maskgit import MaskGit, transformer_state_dict
from models.masks import fill_holes, latent_mask, normalised_fill
from models.token_cache import tokenizer_sha256
from models.transformer import check_guidance, class_id, require_classes
from models.vqgan import load_vqgan
from utils import check_writable, load_checkpoint, load_config, load_state_dict_checked, resolve_device


# ----------------------------------------------------------------------------- flags shared by the CLIs

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
    parser.add_argument('--order', default=None, choices=ORDERS,
                        help=f"which masked tokens a step reveals (default {d.order}): the most confident, or the next "
                             "ones of a 2-D Halton sequence over the token grid (Halton-MaskGIT; the choice "
                             "temperature then plays no part)")
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
    """The error of a decoding flag that would do nothing, or None: --cfg-schedule shapes a --cfg-scale > 0;
    --choice-temperature orders by confidence, not along --order halton."""
    if args.cfg_schedule is not None and not args.cfg_scale:
        return f"--cfg-schedule {args.cfg_schedule} shapes the guidance of --cfg-scale W > 0; give --cfg-scale"
    if args.choice_temperature is not None and args.order == 'halton':
        return (f"--choice-temperature {args.choice_temperature:g} shapes the confidence order; --order halton "
                f"reveals tokens in a fixed order without it")
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


# ----------------------------------------------------------------------------- settings and loading

SETTINGS = tuple(f.name for f in fields(DecodeSettings))  # the decoding settings, one flag and one keyword each
GENERATE_SECTION = 'generate'  # model_param's generation defaults (issue 31: a config carries both)
# its keys: model_param's names of the settings (gamma_type for mask_func), less refine (nothing to re-decode around)
GENERATE_KEYS = {DECODING_CONFIG_KEYS.get(name, name): name for name in SETTINGS if name != 'refine'}


def decoding_settings(args, model_param=None):
    """DecodeSettings from parsed decoding flags: given > the config's model_param > default."""
    return DecodeSettings.from_config(model_param, **{name: getattr(args, name) for name in SETTINGS})


def generate_section(model_param, config):
    """{setting: value} of model_param's `generate:` section ({} without one), each key checked with the rules of
    the decoding keys: a one-line ValueError naming the config and the key."""
    section = (model_param or {}).get(GENERATE_SECTION)
    if section is None:
        return {}
    where = f"config {config}: key model_param.{GENERATE_SECTION}"
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping of {', '.join(GENERATE_KEYS)}, got {section!r}")
    picked = {}
    for key, value in section.items():
        if key not in GENERATE_KEYS:
            raise ValueError(f"{where}.{key}: unknown key; use one of {', '.join(GENERATE_KEYS)}")
        try:  # the value's own rule, and total_iter's bound by the model's tokens
            DecodeSettings.from_config({'num_image_tokens': model_param.get('num_image_tokens')},
                                       **{GENERATE_KEYS[key]: value})
        except ValueError as e:
            raise ValueError(f"{where}.{key}: {e}") from None
        picked[GENERATE_KEYS[key]] = value
    return picked


def generation_settings(args, model_param=None, config='config'):
    """DecodeSettings of generation from nothing: given flag > model_param's generate: section > the decoding keys
    of model_param > default."""
    given = {name: getattr(args, name) for name in SETTINGS}
    for name, value in generate_section(model_param, config).items():
        if given[name] is None:
            given[name] = value
    return DecodeSettings.from_config(model_param, **given)


def load_maskgit(args, device, transformer=True):
    """(MaskGit with its VQGAN and trained transformer on `device`, config dict); with transformer=False the
    transformer stays untrained and no checkpoint is read (what uses the tokenizer alone, e.g. its rFID). A
    transformer checkpoint that does not belong with the VQGAN or the config is refused first (check_pairing)."""
    cfg = load_config(args.MaskGitConfig)
    mp = cfg.get('model_param')
    if not isinstance(mp, dict) or 'VQ_Configs' not in mp:
        raise ValueError(f"config {args.MaskGitConfig} has no 'model_param: VQ_Configs:' section")
    generate_section(mp, args.MaskGitConfig)  # checked by every CLI, before anything is loaded
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



# ----------------------------------------------------------------------------- decoding

class Inpainter:
    """Tokens in, decoding, images out, for batches of (normalised images, pixel masks, ids).

    label: the class id of every image (a conditional model, guided by settings.cfg_scale), a callable from a
    batch's ids [B] to their class ids [B] long (each image its own class: image_labels), or None: the null class
    of a conditional model, the plain pass of an unconditional one."""

    def __init__(self, model, settings, mean, std, amp=False, paste_known=False, label=None):
        self.model, self.settings, self.mean, self.std, self.paste_known = model, settings, mean, std, paste_known
        self.label = label
        self.vqgan = model.vqgan
        self.factor = self.vqgan.factor
        self.device = next(model.parameters()).device
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp)

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
    def __call__(self, imgs, masks, ids, modes=None, completed=False):
        """Decode a batch; `modes`: None (the settings' mask_func), one schedule name, or one per image;
        completed: decode(completed=True), every sweet spot's tokens from the one decode (refine 0 to score them).

        With settings.refine = R, R more rounds k = 1..R: the known tokens are re-encoded from the input's
        known pixels pasted over the last round's image (context closer to a clean image's than that of the
        grey holes), and the holes decoded again with the same schedule, seeds from seed + k. Returns the
        last round's Decoded."""
        s, K = self.settings, self.model.mask_token_id
        unknown = latent_mask(masks, self.factor).flatten(1)                     # [B, N]
        schedule = self.schedule(unknown.sum(1).cpu(), modes)                    # [T, B]
        labels = self.labels(ids)
        cond = () if labels is None else (labels, self.model.transformer.num_classes)
        out = decode(self.logits, self.tokens(imgs), unknown, image_seeds(s.seed, ids), K, schedule, s, *cond,
                     completed=completed)
        for k in range(1, s.refine + 1):
            composite = self.paste(imgs, masks, self.images(out.tokens))
            tokens = self.tokens(normalize(composite, self.mean, self.std))
            out = decode(self.logits, tokens, unknown, image_seeds(s.seed + k, ids), K, schedule, s, *cond,
                         completed=completed)
        return out

    @torch.no_grad()
    def generate(self, ids):
        """Images from nothing (every token unknown), Decoded: image k with the randomness of ids[k] (image_ids),
        under the class of self.labels(ids)."""
        labels = self.labels(ids)
        cond = {} if labels is None else dict(labels=labels, null_label=self.model.transformer.num_classes)
        return generate(self.logits, len(ids), self.model.num_image_tokens, image_seeds(self.settings.seed, ids),
                        self.model.mask_token_id, self.settings, self.device, **cond)

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


# ----------------------------------------------------------------------------- classes

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


# ----------------------------------------------------------------------------- what a CLI starts and ends with

def setup(args, generation=False):
    """What a decoding script starts with: (device, model, config, DecodeSettings), after checking that
    --output-dir can be written. generation: the settings of generation_settings (the config's generate:)."""
    try:
        device = resolve_device(None if args.device == 'auto' else args.device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    check_writable(args.output_dir, '--output-dir', folder=True)
    model, cfg = load_maskgit(args, device)
    if generation:
        return device, model, cfg, generation_settings(args, cfg['model_param'], args.MaskGitConfig)
    return device, model, cfg, decoding_settings(args, cfg['model_param'])


def run_cli(run, args):
    """run(args), its errors one line on stderr (exit status 2): the ending of every decoding CLI."""
    try:
        run(args)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e)
        if isinstance(e, KeyError):
            msg = f"missing config key {e} (in {args.MaskGitConfig} or its VQGAN config)"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0




# ----------------------------------------------------------------------------- generation

def image_ids(labels, index):
    """Image ids int64 of images number `index` of class ids `labels` (None: unconditional), the (class, i) pairs
    their randomness comes from (image_seeds), so image i of a class is the same whatever else is generated."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return index + (0 if labels is None else (torch.as_tensor(labels, dtype=torch.int64) + 1) << 32)


def id_classes(ids):
    """The class ids [B] of image_ids of a class each (the inverse of image_ids' class part)."""
    return (torch.as_tensor(ids, dtype=torch.int64) >> 32) - 1


def class_folder(model, label):
    """The output name of a class id (None: unconditional)."""
    if label is None:
        return 'unconditional'
    names = model.transformer.class_emb.names
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', names[label]) if names else f'class_{label}'


# ----------------------------------------------------------------------------- the three-line use

def _keyword(msg):
    """A settings error as the library's callers name the setting: '--total-iter must ...' -> 'total_iter must ...'."""
    return re.sub(r'--([a-z-]+)', lambda m: m.group(1).replace('-', '_') if m.group(1).replace('-', '_') in SETTINGS
                  else m.group(0), msg)


def _hole_of_array(hole, size):
    """A bool-like [H, W] hole (True = hole) for a picture of size (w, h): one-line ValueErrors."""
    hole = np.asarray(hole)
    if hole.ndim != 2 or hole.shape != size[::-1]:
        raise ValueError(f"mask is {'x'.join(map(str, hole.shape[::-1]))} but the image is {size[0]}x{size[1]}: "
                         f"give a [H, W] mask of the image's size")
    hole = hole.astype(bool)
    if not hole.any() or hole.all():
        raise ValueError(f"mask has {'no' if not hole.any() else 'only'} hole (True = hole)")
    return hole


class Pipeline:
    """A model pair loaded once (load), and what it does with pictures of any size. Settings (keyword overrides
    of inpaint / outpaint / generate; None or absent: the config's, else DecodeSettings' default): the decoding
    settings of SETTINGS (total_iter, mask_func, sweet_spot, seed, refine, choice_temperature, temperature,
    cfg_scale, cfg_schedule), and for pictures class_name, strategy ('auto' | 'model' | 'telea': fullsize) and
    feather (px). A bad value is a one-line ValueError naming the setting."""

    def __init__(self, model, cfg, config, amp=False, batch_size=64):
        self.model, self.cfg, self.config, self.amp, self.batch_size = model, cfg, str(config), amp, batch_size
        self.mean, self.std = maskgit_stats(cfg)  # the statistics inpainting.py normalises with
        self.res = model.vqgan.img_resolution
        self.device = next(model.parameters()).device

    @property
    def class_names(self):
        """The classes of a conditional model (ids as text when its checkpoint has no names), else None."""
        tr = self.model.transformer
        if tr.class_emb is None:
            return None
        return list(tr.class_emb.names) if tr.class_emb.names else [str(i) for i in range(tr.num_classes)]

    def settings(self, overrides, generation=False):
        """DecodeSettings of the config with keyword `overrides` (generation: generation_settings)."""
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown setting {unknown[0]}; use one of {', '.join(SETTINGS)}")
        args = SimpleNamespace(**{name: overrides.get(name) for name in SETTINGS})
        try:
            if generation:
                return generation_settings(args, self.cfg['model_param'], self.config)
            return decoding_settings(args, self.cfg['model_param'])
        except ValueError as e:
            raise ValueError(_keyword(str(e))) from None

    def label(self, settings, given, cfg_given):
        """(class id or None, settings): `given` a class name or id (None: the null class / unconditional). The
        config's guidance scale without a class is dropped (nothing to guide towards); a given one is an error."""
        tr = self.model.transformer
        if given is None and settings.cfg_scale > 0:
            if cfg_given:
                raise ValueError(f"cfg_scale {settings.cfg_scale} guides towards a class: give a class "
                                 f"(without it the model decodes under its null class, unguided)")
            settings = replace(settings, cfg_scale=0.0, cfg_schedule='constant')
        try:
            check_guidance(tr, settings.cfg_scale, self.config)
            return (None if given is None else class_id(tr, str(given), self.config, f"class {given!r}")), settings
        except ValueError as e:
            raise ValueError(_keyword(str(e))) from None

    def fill_fn(self, inp, steps=None):
        """fullsize's fill_fn on Inpainter `inp`: crops [B, 3, res, res] in [0, 1] with holes [B, 1, res, res]
        (1 = hole) -> fills [B, 3, res, res] in [0, 1]: normalised with the data statistics, holes grey (the
        course's masked images), decoded, known pixels pasted back. A list `steps` gets every step's images
        [S, B, 3, res, res] appended."""
        @torch.no_grad()
        def fill(images, holes):
            fills = []
            for i in range(0, len(images), self.batch_size):
                masks = 1 - holes[i:i + self.batch_size].to(self.device)                 # 1 = keep
                imgs = normalize(images[i:i + self.batch_size].to(self.device), self.mean, self.std)
                imgs = fill_holes(imgs, masks, normalised_fill(self.mean, self.std, self.device))
                out = inp(imgs, masks, torch.arange(i, i + len(imgs)))
                if steps is None:
                    fills.append(inp.final(imgs, masks, out).float().cpu())
                    continue
                every, final = inp.render(imgs, masks, out)
                fills.append(final.float().cpu())
                steps.append(every.float().cpu())
            return torch.cat(fills)
        return fill

    def picture(self, image):
        """A PIL image, fullsize.Picture or path -> Picture (one-line ValueErrors: unreadable, size)."""
        if isinstance(image, fullsize.Picture):
            return image
        if isinstance(image, Image.Image):
            fullsize.check_size(image.size, 'image')
            return fullsize.as_picture(image)
        return fullsize.read_image(image)

    def hole(self, pic, mask):
        """(hole bool [H, W], fill_alpha) of `mask` for Picture pic: a bool array (True = hole), a PIL mask or a
        mask file (white = hole, transparent = hole: fullsize.read_mask), or None: the picture's transparent
        pixels (made opaque)."""
        if mask is None:
            return fullsize.mask_from_alpha(pic, pic.path), True
        if isinstance(mask, Image.Image):
            # fullsize's rules for a mask file, on an image in memory (reading it again would lose nothing)
            hole, _ = fullsize.mask_values(mask, 'mask', 'white')
            return _hole_of_array(hole, pic.size), False
        if isinstance(mask, (str, os.PathLike)):
            hole, note = fullsize.read_mask(mask, pic.size)
            if note:
                print(note, file=sys.stderr)
            return hole, False
        return _hole_of_array(mask, pic.size), False

    def fill(self, pic, hole, fill_alpha=False, return_steps=False, class_name=None, strategy='auto',
             feather=fullsize.FEATHER, **settings):
        """inpaint's work on a Picture and its hole bool [H, W]: (result, steps or None)."""
        s = self.settings(settings)
        label, s = self.label(s, class_name, settings.get('cfg_scale') is not None)
        if not (isinstance(feather, int) and not isinstance(feather, bool) and feather >= 0):
            raise ValueError(f"feather must be an integer >= 0 (px), got {feather!r}")
        inp = Inpainter(self.model, s, self.mean, self.std, amp=self.amp, paste_known=True, label=label)
        steps = [] if return_steps else None
        kw = dict(res=self.res, feather=feather, strategy=strategy, fill_alpha=fill_alpha)
        result = fullsize.inpaint_fullsize(pic, hole, self.fill_fn(inp, steps), **kw)
        if not return_steps:
            return result, None
        if not steps:  # every hole went to Telea: no decoding steps
            return result, [result]
        every = torch.cat(steps, 1)                                                     # [S, B, 3, res, res]
        frames = [fullsize.inpaint_fullsize(pic, hole, lambda *_, k=k: every[k], **kw) for k in range(len(every) - 1)]
        return result, frames + [result]

    def inpaint(self, image, mask, return_steps=False, **settings):
        """The picture (PIL, fullsize.Picture or path) with its hole filled: a PIL image of its size and mode, every
        pixel farther than `feather` px from the hole the input's. mask: bool [H, W] (True = hole), a PIL mask or a
        file (white = hole; transparent pixels = hole), or None (the picture's transparent pixels). With
        return_steps: (result, [the picture after each decoding step, full size; the last is the result])."""
        pic = self.picture(image)
        hole, fill_alpha = self.hole(pic, mask)
        result, steps = self.fill(pic, hole, fill_alpha, return_steps, **settings)
        return (result, steps) if return_steps else result

    def outpaint(self, image, left=0, right=0, top=0, bottom=0, return_steps=False, **settings):
        """The picture on a canvas extended by the given px on each side, the new pixels generated around the whole
        original (kept byte for byte): a PIL image; settings as inpaint."""
        for side, v in dict(left=left, right=right, top=top, bottom=bottom).items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{side} must be an integer >= 0 (px), got {v!r}")
        canvas, hole = fullsize.outpaint_canvas(self.picture(image), left, right, top, bottom)
        result, steps = self.fill(canvas, hole, False, return_steps, **settings)
        return (result, steps) if return_steps else result

    @torch.no_grad()
    def generate(self, cls=None, n=8, **settings):
        """n images from nothing (PIL, the model's resolution) of class `cls` (a name or id; None: unconditional or
        the null class), image i the same as generate.py's image i of that class with the same settings. Defaults:
        the config's model_param generate: section, then its decoding keys."""
        if 'refine' in settings:
            raise ValueError("refine re-decodes an inpainting's holes around its known pixels; generation has none")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        s = self.settings(settings, generation=True)
        label, s = self.label(s, cls, settings.get('cfg_scale') is not None)
        inp = Inpainter(self.model, s, self.mean, self.std, amp=self.amp, label=label)
        ids, images = image_ids(label, torch.arange(n)), []
        for i in range(0, n, self.batch_size):
            out = inp.generate(ids[i:i + self.batch_size])
            images += [tensor01_to_pil(x) for x in inp.images(out.tokens).cpu()]
        return images


def load(config=DEFAULT_CONFIG, device='auto', vqgan_ckpt=None, transformer_ckpt=None, amp=False, batch_size=64):
    """A Pipeline of the model pair of a MaskGit config (its VQGAN and checkpoint, or those given), loaded once.
    device: 'auto' (cuda when available), 'cpu', 'cuda', ...; amp: bfloat16 autocast. One-line ValueErrors."""
    args = SimpleNamespace(MaskGitConfig=str(config), vqgan_ckpt=vqgan_ckpt and str(vqgan_ckpt),
                           load_transformer_ckpt_path=transformer_ckpt and str(transformer_ckpt))
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    model, cfg = load_maskgit(args, dev)
    return Pipeline(model, cfg, config, amp, batch_size)
