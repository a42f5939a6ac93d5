"""What a config may hold, declared once for every stage: key path -> kind, range, required.

    validate(cfg, path, VQGAN_CONFIG)   # right after utils.load_config; raises a one-line ValueError:
    config configs/x.yml: key model_param.n_layers: expected a positive integer, got 'x'

Keys not listed are left alone (other stages' sections, notes). The same rules check flags (check_flags).
"""
import math
from dataclasses import dataclass

from models.decoding import SCHEDULES


@dataclass(frozen=True)
class Key:
    kind: str                 # int, number, bool, str, section, ints (list of ints), numbers (list of numbers)
    lo: float = None          # smallest value allowed (ints, numbers, list items)
    hi: float = None          # largest value allowed
    hi_open: bool = False     # hi itself excluded
    lo_open: bool = False     # lo itself excluded
    required: bool = True
    length: int = None        # a list's length
    choices: tuple = None     # str values allowed

    def want(self):
        """The expectation, as the error says it."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.kind in ('bool', 'str', 'section'):
            return dict(bool='true or false', str='a string', section='a mapping (a section of keys)')[self.kind]
        noun = 'integer' if self.kind in ('int', 'ints') else 'number'
        if self.kind == 'int' and self.lo == 1 and self.hi is None:
            what = 'a positive integer'
        elif self.kind == 'int' and self.lo == 0 and self.hi is None:
            what = 'an integer >= 0'
        elif self.hi is not None:
            what = f"a {noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            what = f"a {noun} {'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            what = f'a {noun}'
        if self.kind in ('ints', 'numbers'):
            return f"a list of {self.length or 'one or more'} values, each {what}"
        return what

    def ok_scalar(self, v, kind):
        if kind == 'int' and not (isinstance(v, int) and not isinstance(v, bool)):
            return False
        if kind == 'number' and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            return False
        lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return lo_ok and hi_ok

    def ok(self, v):
        if self.kind == 'bool':
            return isinstance(v, bool)
        if self.kind == 'str':
            return isinstance(v, str) and bool(v) and (not self.choices or v in self.choices)
        if self.kind == 'section':
            return isinstance(v, dict)
        if self.kind in ('ints', 'numbers'):
            return (isinstance(v, list) and len(v) > 0 and (self.length is None or len(v) == self.length)
                    and all(self.ok_scalar(x, self.kind[:-1]) for x in v))
        return self.ok_scalar(v, self.kind)


def opt(key):
    """The same rule, for a key that may be absent."""
    return Key(**{**key.__dict__, 'required': False})


POS_INT, NONNEG_INT = Key('int', lo=1), Key('int', lo=0)
POSITIVE, NONNEG = Key('number', lo=0, lo_open=True), Key('number', lo=0)
FRACTION = Key('number', lo=0, hi=1)                       # a share, 0 and 1 included
BETAS = Key('numbers', lo=0, hi=1, hi_open=True, length=2)  # Adam's betas
STR, BOOL, SECTION = Key('str'), Key('bool'), Key('section')

# ----------------------------------------------------------------------------- the VQGAN's config

# The stages' settings: every key optional in a run's config, every key set by the defaults config's section
# (configs/VQGAN.yml, configs/MaskGit.yml; training.settings checks it), flags over both.
DATA_PATHS = {  # the folders a trainer reads (the defaults configs' data: section sets both)
    'data': opt(SECTION),
    'data.train_path': opt(STR),
    'data.val_path': opt(STR),
}

VQGAN_MODEL = {
    'model_param': SECTION,
    'model_param.image_channels': POS_INT,
    'model_param.enc_channels': Key('ints', lo=1),
    'model_param.dec_channels': Key('ints', lo=1),
    'model_param.latent_dim': POS_INT,
    'model_param.img_resolution': POS_INT,
    'model_param.latent_resolution': POS_INT,
    'model_param.num_codebook_vectors': POS_INT,
    'model_param.beta': NONNEG,
    'model_param.gn_groups': opt(POS_INT),
    'model_param.enc_res_blocks': opt(NONNEG_INT),
    'model_param.dec_res_blocks': opt(NONNEG_INT),
    'model_param.l2_codes': opt(BOOL),
    'model_param.restart_every': opt(NONNEG_INT),
    'model_param.restart_threshold': opt(NONNEG),
    'checkpoint': opt(SECTION),
    'checkpoint.path': opt(STR),
    **DATA_PATHS,
    'data.val_mask_path': opt(STR),
    'data.train_mean': opt(Key('numbers', lo=0, hi=1, length=3, required=False)),
    'data.train_std': opt(Key('numbers', lo=0, hi=1, lo_open=True, length=3, required=False)),
    'data.test_mean': opt(Key('numbers', lo=0, hi=1, length=3, required=False)),
    'data.test_std': opt(Key('numbers', lo=0, hi=1, lo_open=True, length=3, required=False)),
    'data.inference_stats': opt(Key('str', choices=('test', 'train'), required=False)),
}
VQGAN_TRAIN = {  # training_vqgan.py
    'train': opt(SECTION),
    'train.batch_size': opt(POS_INT),
    'train.accum_grad': opt(POS_INT),
    'train.learning_rate': opt(NONNEG),
    'train.betas': opt(BETAS),
    'train.epochs': opt(POS_INT),
    'train.l1_weight': opt(NONNEG),
    'train.l2_weight': opt(NONNEG),
    'train.grad_weight': opt(NONNEG),
    'train.disc_start': opt(NONNEG_INT),
    'train.disc_weight': opt(NONNEG),
    'train.disc_config': opt(STR),
    'train.run_dir': opt(STR),
    'train.lr_schedule': opt(Key('str', choices=('constant', 'cosine'))),
    'train.hflip': opt(BOOL),
}
ENCODER_TRAIN = {  # training_encoder.py
    'train_encoder': opt(SECTION),
    'train_encoder.epochs': opt(POS_INT),
    'train_encoder.batch_size': opt(POS_INT),
    'train_encoder.learning_rate': opt(NONNEG),
    'train_encoder.clean_frac': opt(FRACTION),
    'train_encoder.tau': opt(POSITIVE),
    'train_encoder.feature_weight': opt(NONNEG),
    'train_encoder.mask_bank': opt(POS_INT),
    'train_encoder.run_dir': opt(STR),
}
DISCRIMINATOR = {
    'model_param': SECTION,
    'model_param.image_channels': POS_INT,
    'model_param.num_filters_last': POS_INT,
    'model_param.n_layers': POS_INT,
}

# ----------------------------------------------------------------------------- the MaskGit's config

MASKGIT_MODEL = {
    'model_param': SECTION,
    'model_param.VQ_Configs': opt(SECTION),  # or --config-vqgan / --vqgan-ckpt
    'model_param.VQ_Configs.VQ_config_path': opt(STR),
    'model_param.VQ_Configs.VQ_CKPT_path': opt(STR),
    'model_param.num_image_tokens': POS_INT,
    'model_param.num_codebook_vectors': POS_INT,
    'model_param.choice_temperature': opt(NONNEG),
    'model_param.gamma_type': opt(Key('str', choices=tuple(SCHEDULES))),
    'model_param.total_iter': opt(POS_INT),
    'model_param.refine': opt(NONNEG_INT),
    'model_param.Transformer_param': SECTION,
    'model_param.Transformer_param.num_image_tokens': POS_INT,
    'model_param.Transformer_param.num_codebook_vectors': POS_INT,
    'model_param.Transformer_param.dim': POS_INT,
    'model_param.Transformer_param.n_layers': POS_INT,
    'model_param.Transformer_param.hidden_dim': POS_INT,
    'model_param.Transformer_param.num_heads': opt(POS_INT),
    'model_param.Transformer_param.dropout': opt(Key('number', lo=0, hi=1, hi_open=True)),
    'model_param.Transformer_param.num_classes': opt(NONNEG_INT),
    'checkpoint': opt(SECTION),
    'checkpoint.path': opt(STR),
    **DATA_PATHS,
}
MASKGIT_TRAIN = {  # training_transformer.py
    'train': opt(SECTION),
    'train.epochs': opt(POS_INT),
    'train.batch_size': opt(POS_INT),
    'train.accum_grad': opt(POS_INT),
    'train.learning_rate': opt(NONNEG),
    'train.warmup_steps': opt(NONNEG_INT),
    'train.grad_clip': opt(NONNEG),
    'train.weight_decay': opt(NONNEG),
    'train.betas': opt(BETAS),
    'train.label_smoothing': opt(Key('number', lo=0, hi=1, hi_open=True)),
    'train.masked_only': opt(BOOL),
    'train.hole_mask_frac': opt(FRACTION),
    'train.mask_bank': opt(POS_INT),
    'train.context_variants': opt(POS_INT),
    'train.cond_drop': opt(FRACTION),
    'train.save_per_epoch': opt(NONNEG_INT),
    'train.cache_dir': opt(STR),
}

VQGAN_CONFIG = {**VQGAN_MODEL, **VQGAN_TRAIN}     # training_vqgan.py
ENCODER_CONFIG = {**VQGAN_MODEL, **ENCODER_TRAIN}  # training_encoder.py
MASKGIT_CONFIG = {**MASKGIT_MODEL, **MASKGIT_TRAIN}  # training_transformer.py (inpainting.py: MASKGIT_MODEL)


_MISSING = object()


def _lookup(cfg, dotted):
    node = cfg
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def validate(cfg, path, schema):
    """Raise a one-line ValueError naming the config file and the first key that breaks `schema`; returns cfg.
    A key under an absent optional section is not required."""
    for dotted, key in schema.items():
        v = _lookup(cfg, dotted)
        parent = dotted.rpartition('.')[0]
        if v is _MISSING or v is None and key.kind == 'section' and not key.required:
            if key.required and (not parent or isinstance(_lookup(cfg, parent), dict)):
                raise ValueError(f"config {path}: key {dotted} is missing: expected {key.want()}")
            continue
        if not key.ok(v):
            raise ValueError(f"config {path}: key {dotted}: expected {key.want()}, got {v!r}")
    return cfg


def check_flags(args, rules):
    """Raise a one-line ValueError naming the first flag (rules: attribute name -> Key) whose given value
    breaks its rule; flags left at None are not given."""
    for name, key in rules.items():
        v = getattr(args, name, None)
        if v is not None and not key.ok(v):
            raise ValueError(f"--{name.replace('_', '-')}: expected {key.want()}, got {v!r}")


# ----------------------------------------------------------------------------- facts of a config pair

def downsampling(vq_param):
    """Pixels per token side, f = img_resolution / latent_resolution: derived from the VQGAN's model_param, the
    one home of both, and never written in a config."""
    return vq_param['img_resolution'] // vq_param['latent_resolution']


def check_pair(mp, mg_path, vq_p, vq_path):
    """Refuse (one line) a MaskGit model_param whose code count K or tokens per image disagree with its VQGAN's.
    The course's format writes K in model_param, Transformer_param and the VQGAN config, and the tokens per
    image twice: the VQGAN config is the one home of both (K, latent_resolution ** 2), the others must agree."""
    want = dict(num_codebook_vectors=vq_p['num_codebook_vectors'], num_image_tokens=vq_p['latent_resolution'] ** 2)
    for where, section in (('model_param', mp), ('model_param.Transformer_param', mp.get('Transformer_param') or {})):
        for key, v in want.items():
            if key in section and section[key] != v:
                raise ValueError(f"config {mg_path}: key {where}.{key} {section[key]} does not match VQGAN config "
                                 f"{vq_path} (num_codebook_vectors {vq_p['num_codebook_vectors']}, latent_resolution "
                                 f"{vq_p['latent_resolution']}: {key} {v})")
