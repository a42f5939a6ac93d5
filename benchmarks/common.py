"""What the inpainting benchmarks share: the splits' layout, the ground truth, its FID statistics, hole errors."""
import hashlib
import os

import torch

from dataset import PairedTestDataset, load_rgb, pil_to_tensor01
from fid import compute_fid
from fid import score as fs
from utils import files_fingerprint

# split -> (masked images, masks, ground truth) folders of prepare_dataset.py's layout; DATA/<split>_gt.csv beside
SPLITS = {'val': ('val_masked_image', 'val_mask64', 'val'), 'test': ('masked_image', 'mask64', 'test'),
          'holdout': ('holdout_masked_image', 'holdout_mask64', 'holdout')}
FID_DIMS = 2048  # Inception pool3 features, pytorch-fid's default


def hole_errors(out, gt, masks):
    """Per-image (L1 in 0..255 levels, PSNR in dB) over the hole pixels; images [B, 3, H, W] in [0, 1]."""
    hole = (1 - masks).expand_as(out)
    n = hole.sum((1, 2, 3)).clamp(min=1)
    q = lambda x: (x * 255 + 0.5).floor() / 255                # what the saved PNG holds
    diff = q(out) - q(gt)
    l1 = (diff.abs() * hole).sum((1, 2, 3)) / n * 255
    mse = (diff.pow(2) * hole).sum((1, 2, 3)) / n
    return l1, 10 * torch.log10(1 / mse.clamp(min=1e-10))


def split_data(root, split, mean, std, partial=1.0, limit=None):
    """(PairedTestDataset of the split's masked images and masks, the ground-truth file of each image, in the
    dataset's order): the first int(n * partial) images, then the first `limit` of those. A missing ground
    truth is a one-line ValueError naming it."""
    img_dir, mask_dir, gt_dir = (os.path.join(root, d) for d in SPLITS[split])
    data = PairedTestDataset(img_dir, mask_dir, partial, mean, std)
    if limit is not None:  # the dataset's three parallel lists, cut alike
        data.indices, data.images, data.masks = data.indices[:limit], data.images[:limit], data.masks[:limit]
    gt_files = [os.path.join(gt_dir, os.path.basename(f)) for f in data.images]
    missing = [(g, f) for g, f in zip(gt_files, data.images) if not os.path.isfile(g)]
    if missing:
        raise ValueError(f"no ground truth {missing[0][0]} for {missing[0][1]} (rebuild with prepare_dataset.py)")
    return data, gt_files


def load_images(files):
    """float [N, 3, H, W] in [0, 1] of image files."""
    return torch.stack([pil_to_tensor01(load_rgb(f)) for f in files])


def gt_stats(out_dir, split, gt_files, gt, csv=None, device='cpu'):
    """Path of the ground truth's Inception statistics in out_dir, computed on first need and then reused.

    The name holds the split, the count and a fingerprint (names, sizes, mtimes) of gt_files and of `csv`: a
    dataset rebuilt with as many images gets new statistics, never a stale file's. csv: the split's ground-truth
    CSV, read when every image of the split is scored (the course's FID input); else the images gt
    [N, 3, H, W] in [0, 1] (the files' pixels) are."""
    key = hashlib.sha256(files_fingerprint(list(gt_files) + ([csv] if csv else [])).encode()).hexdigest()[:16]
    path = os.path.join(out_dir, f'gt_stats_{split}_{len(gt_files)}_{key}.npz')
    if not os.path.isfile(path):
        model = lambda: fs.fast_inception(FID_DIMS, device)
        images = None if csv else ((gt * 255 + 0.5).floor().to(torch.uint8), 0)  # what the PNGs hold, decoded
        fs.save_stats(path, *fs.statistics_of(csv or f'{split} ground truth', model, device=device, dims=FID_DIMS,
                                              images=images))
    return path


def fid_of(folder, stats, device):
    """FID of an image folder against gt_stats' statistics file."""
    return compute_fid(folder, stats, device=device, dims=FID_DIMS)

