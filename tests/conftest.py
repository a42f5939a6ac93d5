"""Shared fixtures and tiny configs: the course's checkpoint manifests, and a tiny lab of images and a VQGAN."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.maskgit import MaskGit
from models.vqgan import VQGAN
from utils import atomic_save, load_checkpoint, load_config

ROOT = Path(__file__).resolve().parents[1]                         # the repo
SHARED_LAB = Path(__file__).resolve().parents[2] / 'shared' / 'lab'  # the course interface, when checked out beside us
TEST_DATA = Path(__file__).resolve().parent / 'data'                 # our copies, so a plain clone can run the tests

# A VQGAN for 16x16 images with a 4x4 latent and K codes: N tokens an image, seconds to train on a CPU.
TINY_VQ = dict(image_channels=3, enc_channels=[8, 8, 16], dec_channels=[8, 16], latent_dim=8, img_resolution=16,
               latent_resolution=4, num_codebook_vectors=16, beta=0.25, gn_groups=4, enc_res_blocks=1,
               dec_res_blocks=1)
K, N = 16, 16
COURSE_TRAIN = load_config(ROOT / 'configs' / 'MaskGit.yml')['train']  # every key


def tiny_mp(dropout=0.0, k=K, **transformer):
    """A tiny MaskGit model_param over TINY_VQ's tokens (VQ_Configs empty); `transformer` overrides
    Transformer_param's keys."""
    tr = dict(num_image_tokens=N, num_codebook_vectors=k, dim=32, n_layers=2, hidden_dim=64, num_heads=4,
              dropout=dropout)
    return dict(VQ_Configs={}, num_image_tokens=N, num_codebook_vectors=k, choice_temperature=4.5, gamma_type='cosine',
                Transformer_param={**tr, **transformer})


def run_args(lab, out, *extra):
    """training_transformer.py's flags for a run on a lab's mg.yml and images, writing into `out`."""
    return ['--MaskGitConfig', str(lab / 'mg.yml'), '--train_d_path', str(lab / 'train'), '--val_d_path',
            str(lab / 'val'), '--checkpoint-path', str(out / 'last_ckpt.pt'), '--device', 'cpu', '--num_workers', '0',
            *extra]


def interrupt_then_resume(lab, out, monkeypatch, *flags, crash_at=5):
    """training_transformer.py on a lab, into `out`, saving after every step (--ckpt-interval 1) and interrupted
    in optimizer step `crash_at`, then --resume'd to the end. Returns (the step train_state.pt held when
    interrupted, the resumed run's progress)."""
    import training_transformer as tt
    real, calls = tt.accumulate_grads, []

    def crash(*a, **kw):
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(tt, 'accumulate_grads', crash)
    with pytest.raises(KeyboardInterrupt):
        tt.main(run_args(lab, out, *flags, '--ckpt-interval', '1'))
    monkeypatch.setattr(tt, 'accumulate_grads', real)
    saved = load_checkpoint(out / 'train_state.pt')['step']
    return saved, tt.main(run_args(lab, out, *flags, '--resume'))


@pytest.fixture(scope='module')
def one_thread():
    """Tiny tensors: thread sync costs more than it saves, badly so on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='session')
def course_manifest():
    """name -> [(key, shape tuple)] from ../shared/lab when present, else tests/data."""
    def read(name):
        path = SHARED_LAB / name if (SHARED_LAB / name).is_file() else TEST_DATA / name
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [(k, tuple(int(s) for s in shape.split('x'))) for k, shape in rows]
    return read


@pytest.fixture(scope='session')
def make_lab(tmp_path_factory):
    """make_lab(vq_param, mp, **train) -> a new folder with random 16x16 images in train/ (12) and val/ (4), a
    random-init VQGAN (vq.yml, vq.pt; seed 0) and mg.yml: the MaskGit model_param `mp` on that VQGAN with
    COURSE_TRAIN changed by `train` (token cache in cache/). A module's `lab` fixture adds what its tests need."""
    def make(vq_param, mp, **train):
        d = tmp_path_factory.mktemp('lab')
        rng = np.random.default_rng(0)
        for split, n in (('train', 12), ('val', 4)):
            (d / split).mkdir()
            for i in range(n):
                image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(image).save(d / split / f'image_{i:05d}.png')
        (d / 'vq.yml').write_text(yaml.safe_dump({'model_param': vq_param}))
        torch.manual_seed(0)
        torch.save(VQGAN(vq_param).state_dict(), d / 'vq.pt')
        mp = dict(mp, VQ_Configs=dict(VQ_config_path=str(d / 'vq.yml'), VQ_CKPT_path=str(d / 'vq.pt')))
        train = dict(COURSE_TRAIN, cache_dir=str(d / 'cache'), **train)
        (d / 'mg.yml').write_text(yaml.safe_dump({'model_param': mp, 'train': train}))
        return d
    return make


# ----------------------------------------------------------------------------- inpainting labs

IMG, LAT, CODES = 16, 4, 16  # a 16x16 image, 4x4 tokens, 16 codes
INPAINT_VQ = dict(image_channels=3, enc_channels=[8, 8, 8], dec_channels=[8, 8], latent_dim=8, img_resolution=IMG,
                  latent_resolution=LAT, num_codebook_vectors=CODES, beta=0.25, gn_groups=4, enc_res_blocks=1,
                  dec_res_blocks=1)


def inpaint_maskgit_param(root, dim=16, **transformer):
    """model_param of a one-layer MaskGit on root's vq.yml / vq.pt; `transformer` adds Transformer_param keys."""
    return dict(VQ_Configs=dict(VQ_config_path=str(root / 'vq.yml'), VQ_CKPT_path=str(root / 'vq.pt')),
                num_image_tokens=LAT * LAT, num_codebook_vectors=CODES, choice_temperature=4.5, gamma_type='cosine',
                Transformer_param=dict(num_image_tokens=LAT * LAT, num_codebook_vectors=CODES, dim=dim, n_layers=1,
                                       hidden_dim=2 * dim, num_heads=2, **transformer))


CLASS_NAMES = ['cat', 'dog', 'fish']  # the classes of a conditional lab


def box_hole(top=None):
    """A make_inpainting_lab mask function: 0/255 [IMG, IMG], a 4x6 hole at rows top..top+3 (top None: from row
    i, the image's number, so each image's hole differs), columns 4..9."""
    def hole_mask(i):
        a = np.full((IMG, IMG), 255, np.uint8)
        r = i if top is None else top
        a[r:r + 4, 4:10] = 0
        return a
    return hole_mask


@pytest.fixture(scope='session')
def make_inpainting_lab(tmp_path_factory):
    """make_inpainting_lab(ids, hole_mask, conditional=False) -> a new folder: random-init tiny VQGAN (vq.yml, vq.pt)
    and transformer (mg.yml, tr.pt; seed 0), and per id a random image with its hole grey in img/ and the 0/255
    mask in mask/. conditional: the transformer has CLASS_NAMES, with random class vectors (classes matter)."""
    def make(ids, hole_mask, conditional=False):
        tmp = tmp_path_factory.mktemp('lab')
        torch.manual_seed(0)
        (tmp / 'vq.yml').write_text(yaml.safe_dump(dict(model_param=INPAINT_VQ)))
        atomic_save(VQGAN(INPAINT_VQ).state_dict(), str(tmp / 'vq.pt'))
        mp = inpaint_maskgit_param(tmp, **(dict(num_classes=len(CLASS_NAMES)) if conditional else {}))
        (tmp / 'mg.yml').write_text(yaml.safe_dump(dict(model_param=mp)))
        transformer = MaskGit(mp).transformer
        if conditional:
            transformer.class_emb.weight.data.normal_(0, 1.0)
            transformer.class_emb.names = CLASS_NAMES
        atomic_save(transformer.state_dict(), str(tmp / 'tr.pt'))
        rng = np.random.default_rng(0)
        for d in ('img', 'mask'):
            (tmp / d).mkdir()
        for i in ids:
            img = rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
            img[hole_mask(i) == 0] = 128
            Image.fromarray(img).save(tmp / 'img' / f'image_{i:03d}.png')
            Image.fromarray(hole_mask(i), 'L').save(tmp / 'mask' / f'mask_{i:03d}.png')
        return tmp
    return make


def random_problem(K, N, counts, seed=0):
    """tokens [B, N] of K codes and unknown [B, N] with counts[b] unknown tokens in row b (decoding tests)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (len(counts), N), generator=g)
    unknown = torch.zeros(len(counts), N, dtype=torch.bool)
    for b, c in enumerate(counts):
        unknown[b, torch.randperm(N, generator=g)[:c]] = True
    return tokens, unknown
