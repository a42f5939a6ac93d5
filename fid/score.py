"""FID between two image sets, the same value as `python -m pytorch_fid`, offline and faster.

The command line is faster-pytorch-fid/fid_score_gpu.py (main below):
    python faster-pytorch-fid/fid_score_gpu.py --predicted-path test_results --gtcsv-path test_gt.csv
    python faster-pytorch-fid/fid_score_gpu.py --predicted-path P --gt-path GT_DIR --save-stats gt.npz
    python faster-pytorch-fid/fid_score_gpu.py --predicted-path P --gt-path gt.npz

Either side may be a folder of images, the course's ground-truth CSV or a pytorch-fid `.npz` (mu, sigma).
Features: pytorch-fid's InceptionV3 with the TF-Inception-2015-12-05 weights (fid/inception.py).
Images are read like pytorch-fid (PIL -> RGB -> [0, 1]) and resized to 299 bilinearly inside the model.
Images of different sizes in one folder are each resized to 299 the same way (pytorch-fid cannot batch them).
Speed comes from BatchNorm folded into the convolutions, channels_last, decoding in DataLoader workers and
streaming float64 statistics; the value stays within ~1e-4 of pytorch-fid's (benchmarks/bench_fid.py).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataset import list_images, load_rgb, read_gt_csv
from fid.inception import build_inception
from utils import atomic_open, check_writable, resolve_device

DIMS = (64, 192, 768, 2048)


# ----------------------------------------------------------------------------- model

def fast_inception(dims=2048, device='cpu', weights=None):
    """pytorch-fid's InceptionV3 with each conv+BN folded into one conv, channels_last, on `device`
    (on CUDA, TF32 is switched off for the process: features must stay fp32-exact)."""
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would move features by ~1e-3
        torch.backends.cuda.matmul.allow_tf32 = False
    model = build_inception(dims, weights)
    for m in model.modules():
        if isinstance(getattr(m, 'bn', None), torch.nn.BatchNorm2d):  # torchvision's BasicConv2d
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), torch.nn.Identity()
    return model.to(device, memory_format=torch.channels_last).requires_grad_(False)


# ----------------------------------------------------------------------------- inputs

class ImageFiles(Dataset):
    """Images as uint8 [3, H, W] (decoded in workers; scaled to [0, 1] on the model's device)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.asarray(load_rgb(self.paths[i]), dtype=np.uint8).copy()).permute(2, 0, 1)


def collate(items):
    """Stack same-sized images; a mixed-size batch stays a list (resized one by one on the device)."""
    return torch.stack(items) if len({x.shape for x in items}) == 1 else items


def folder_images(root):
    """Dataset of a folder's images; other entries are skipped and counted on stderr."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = list_images(root)
    skipped = len(os.listdir(root)) - len(paths)
    if skipped:
        print(f"{root}: skipped {skipped} non-image entr{'y' if skipped == 1 else 'ies'}", file=sys.stderr)
    return ImageFiles(paths)


def csv_images(path):
    """The course's ground-truth CSV as uint8 [N, 3, S, S] (the same values a PNG of it decodes to)."""
    return torch.from_numpy(read_gt_csv(path)).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- statistics

def _feature_batches(images, model, batch_size, num_workers, device, desc):
    """The model's features over `images` (a Dataset or uint8 tensor), float64 [B, D] on `device`, a batch at a time."""
    device = torch.device(device)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, pin_memory=device.type == 'cuda')
    for batch in tqdm(loader, desc=desc, unit='batch', file=sys.stderr):
        if isinstance(batch, list):  # mixed sizes: the model's own resize, one image at a time
            x = torch.cat([F.interpolate(b[None].to(device).float() / 255, size=(299, 299), mode='bilinear',
                                         align_corners=False) for b in batch])
        else:
            x = batch.to(device, non_blocking=True).float() / 255  # [B, 3, H, W] in [0, 1]
        feats = model(x.contiguous(memory_format=torch.channels_last))[0]  # [B, D, h, w]
        if feats.shape[2:] != (1, 1):  # pytorch-fid averages the spatial map of the smaller blocks
            feats = F.adaptive_avg_pool2d(feats, (1, 1))
        yield feats.flatten(1).double()  # [B, D]


@torch.inference_mode()
def activation_features(images, model, batch_size=50, num_workers=0, device='cpu', desc='features'):
    """Per-image features [n, D] float64 numpy of the model over `images` (a Dataset or uint8 tensor), in order."""
    feats = [f.cpu() for f in _feature_batches(images, model, batch_size, num_workers, device, desc)]
    return torch.cat(feats).numpy() if feats else np.zeros((0, 0))


@torch.inference_mode()
def activation_statistics(images, model, batch_size=50, num_workers=0, device='cpu', desc='features'):
    """(mu [D], sigma [D, D]) float64 numpy of the model's features over `images` (a Dataset or uint8 tensor).
    Streamed (sums and a Gram matrix on `device`): the features themselves are never all held."""
    total, gram, n = None, None, 0
    for f in _feature_batches(images, model, batch_size, num_workers, device, desc):  # [B, D]
        total = f.sum(0) if total is None else total + f.sum(0)
        gram = f.T @ f if gram is None else gram.addmm_(f.T, f)
        n += len(f)
    if n < 2:
        raise ValueError(f"{desc}: FID needs at least 2 images, got {n}")
    mu = total / n
    sigma = (gram - n * torch.outer(mu, mu)) / (n - 1)  # np.cov's unbiased estimate
    return mu.cpu().numpy(), sigma.cpu().numpy()


def load_stats(path, dims=None):
    """A pytorch-fid `.npz` (mu, sigma) as float64 arrays, checked against `dims`."""
    try:
        with np.load(path) as f:
            mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"cannot read statistics {path} (need arrays 'mu' and 'sigma'): "
                         f"{str(e).splitlines()[0]}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"statistics {path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    if dims is not None and len(mu) != dims:
        raise ValueError(f"statistics {path} have {len(mu)} dimensions but --dims is {dims}")
    return mu, sigma


def save_stats(path, mu, sigma):
    """pytorch-fid's format (np.savez_compressed with mu, sigma), written atomically."""
    with atomic_open(path, 'wb') as f:
        np.savez_compressed(f, mu=mu, sigma=sigma)


def _images_of(source):
    """(images, num_workers override) of a folder or a ground-truth CSV; None for a `.npz` of statistics."""
    if source.lower().endswith('.npz'):
        return None, None
    if source.lower().endswith('.csv'):
        return csv_images(source), 0  # already decoded
    return folder_images(source), None


def _checked(stats, source):
    """Statistics with NaN or inf are an error naming their source (they would give FID nan)."""
    mu, sigma = stats
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"statistics of {source} contain NaN or inf (broken images or a broken .npz): "
                         f"no FID can be computed")
    return mu, sigma


def statistics_of(source, model_fn, batch_size=50, num_workers=0, device='cpu', dims=2048, images=None):
    """(mu, sigma) of a folder, a ground-truth CSV or a `.npz`; `model_fn()` builds the network on first need.
    `images`: the source's images already listed (_images_of). NaN or inf statistics are an error."""
    if source.lower().endswith('.npz'):
        return _checked(load_stats(source, dims), source)
    images, workers = images if images is not None else _images_of(source)
    num_workers = num_workers if workers is None else workers
    return _checked(activation_statistics(images, model_fn(), batch_size, num_workers, device,
                                          desc=os.path.basename(os.path.normpath(source))), source)


# ----------------------------------------------------------------------------- Fréchet distance

def _noise_to_zero(eigvals):
    """Eigenvalues below rounding noise (matrix_rank's tolerance) -> 0, so sqrt does not amplify the noise."""
    tol = eigvals.abs().max() * len(eigvals) * torch.finfo(eigvals.dtype).eps
    return torch.where(eigvals > tol, eigvals, torch.zeros_like(eigvals))


def frechet_distance(mu1, sigma1, mu2, sigma2, device='cpu'):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) in float64.

    Tr sqrt(S1 S2) = Tr sqrt(sqrt(S1) S2 sqrt(S1)), a symmetric PSD matrix, so two eigh calls replace
    scipy's sqrtm: no complex numbers, and rank-deficient covariances (fewer samples than dimensions)
    stay finite.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type == 'cpu':  # multi-threaded CPU eigh measured ~15x slower when cores are shared
        torch.set_num_threads(1)
    try:
        return _frechet_distance(mu1, sigma1, mu2, sigma2, device)
    finally:
        torch.set_num_threads(threads)


def _frechet_distance(mu1, sigma1, mu2, sigma2, device):
    mu1, mu2, s1, s2 = (torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device)
                        for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in size: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)} vs {tuple(s2.shape)}")
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * _noise_to_zero(w).sqrt()) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = _noise_to_zero(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_covmean)


# ----------------------------------------------------------------------------- API, CLI

def small_set_note(n, dims=2048):
    """The caveat of an FID over fewer images than Inception features, or None. The covariance of n < dims images is
    rank-deficient, and FID's bias grows as n shrinks: such a figure compares only with FIDs of as many images."""
    if n >= dims:
        return None
    return (f"note: FID of {n} images, fewer than the {dims} features: biased upward and noisy; compare it only "
            f"with FIDs of {n} images (pytorch-fid advises at least {dims})")


def default_workers():
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)


def compute_fid(predicted, gt, batch_size=50, num_workers=None, device=None, dims=2048, save_stats_path=None,
                weights=None):
    """FID between `predicted` and `gt`, each a folder, a ground-truth CSV or a `.npz` of statistics.

    save_stats_path: write the statistics of `gt` there (pytorch-fid's format) for reuse; checked for
    writability before anything is computed, written after the FID.
    weights: a state_dict file for pytorch-fid's FIDInceptionV3 (default: found by fid.inception).
    A NaN or infinite FID (or statistics) is a ValueError; sets of different sizes are a warning on stderr.
    """
    fid, stats_gt = _fid(predicted, gt, batch_size, num_workers, device, dims, save_stats_path, weights)
    if save_stats_path is not None:
        save_stats(save_stats_path, *stats_gt)
    return fid


def _fid(predicted, gt, batch_size=50, num_workers=None, device=None, dims=2048, save_stats_path=None, weights=None):
    """(FID, statistics of gt): compute_fid without writing anything."""
    if dims not in DIMS:
        raise ValueError(f"--dims must be one of {DIMS}, got {dims}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    for p in (predicted, gt):
        if not os.path.exists(p):
            raise FileNotFoundError(f"not found: {p}")
    if save_stats_path is not None:
        if gt.lower().endswith('.npz'):
            raise ValueError(f"--save-stats: the ground truth {gt} is already statistics")
        check_writable(save_stats_path, '--save-stats')
    device = resolve_device(device)
    num_workers = default_workers() if num_workers is None else num_workers
    model = []

    def model_fn():  # built once, and only if some side is not already statistics
        if not model:
            model.append(fast_inception(dims, device, weights))
        return model[0]

    images_gt, images_pred = _images_of(gt), _images_of(predicted)
    if images_gt[0] is not None and images_pred[0] is not None and len(images_gt[0]) != len(images_pred[0]):
        print(f"warning: {len(images_pred[0])} predicted images ({predicted}) but {len(images_gt[0])} "
              f"ground-truth images ({gt}): a short CSV or stale files? The FID compares sets of different sizes",
              file=sys.stderr)
    n_pred = len(images_pred[0]) if images_pred[0] is not None else None
    if n_pred is not None and small_set_note(n_pred, dims):
        print(small_set_note(n_pred, dims), file=sys.stderr)
    stats_gt = statistics_of(gt, model_fn, batch_size, num_workers, device, dims, images=images_gt)
    stats_pred = statistics_of(predicted, model_fn, batch_size, num_workers, device, dims, images=images_pred)
    fid = frechet_distance(*stats_pred, *stats_gt, device=device)
    if not math.isfinite(fid):
        raise ValueError(f"FID is {fid} for {predicted} against {gt}: the statistics are degenerate")
    return fid, stats_gt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--predicted-path', required=True, help='folder of generated images (or a .npz)')
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--gt-path', help='folder of ground-truth images, or a .npz of their statistics')
    g.add_argument('--gtcsv-path', help="the course's ground-truth CSV (or a .npz of its statistics)")
    p.add_argument('--batch-size', type=int, default=50)
    p.add_argument('--num-workers', type=int, default=None, help='image-decoding processes (default min(8, cpus))')
    p.add_argument('--device', default=None, help='cuda if available, else cpu')
    p.add_argument('--dims', type=int, default=2048, choices=DIMS, help='Inception feature block')
    p.add_argument('--save-stats', default=None, metavar='FILE.npz', help='save the ground-truth statistics')
    p.add_argument('--json-out', default=None, metavar='FILE.json', help='also write the FID and its inputs as JSON')
    args = p.parse_args(argv)
    gt = args.gt_path or args.gtcsv_path
    try:
        if args.json_out:  # before the computation: a bad path must not cost the run
            check_writable(args.json_out, '--json-out')
        fid, stats_gt = _fid(args.predicted_path, gt, args.batch_size, args.num_workers, args.device, args.dims,
                             args.save_stats)
    except (OSError, ValueError, RuntimeError) as e:
        # errors raised in a DataLoader worker carry the worker's traceback: its last line is the message
        sys.exit(f"error: {str(e).strip().splitlines()[-1]}")
    print('FID: ', fid, flush=True)  # first: a failed write below never loses the value
    try:
        if args.save_stats:
            save_stats(args.save_stats, *stats_gt)
        if args.json_out:
            with atomic_open(args.json_out) as f:
                json.dump({'fid': fid, 'predicted': args.predicted_path, 'ground_truth': gt, 'dims': args.dims}, f,
                          indent=2)
    except OSError as e:
        sys.exit(f"error: FID computed (above) but not saved: {e}")

