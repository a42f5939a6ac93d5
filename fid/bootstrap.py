"""Is a difference in FID between two runs on the same images real? A paired bootstrap over images.

Every resample draws n image indices with replacement and applies the SAME indices to the ground truth and to
every run, so run-to-run differences are compared on identical image sets (decoding here is deterministic:
this measures image-sampling noise only, not decoding noise or training noise).

Read the intervals of DIFFERENCES, not of absolute FIDs: the bootstrap FID itself is biased upward (duplicated
images shrink the effective sample, and FID grows as the sample shrinks), and that bias largely cancels in a
paired difference.

Tr sqrt(S_a S_b) for n rows < D dims: the nonzero eigenvalues of S_a S_b = Ac^T Ac Bc^T Bc / (n-1)^2 are those of
M M^T with M = Ac Bc^T / (n-1) [n, n] (XY and YX share them), so the term is M's nuclear norm: one n x n SVD, exact.
A resample only re-indexes and re-centres M's Gram matrix (M_r = H K[i][:, i] H, H the centring matrix), so
no resample touches the D-dimensional features except through vectorised means and traces.
"""
import numpy as np
import torch
from tqdm import tqdm

from fid.score import frechet_distance


def frechet_from_features(a, b):
    """FID between feature matrices a [n_a, D] and b [n_b, D] (np.cov's unbiased covariances), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    (n, d), m = a.shape, len(b)
    if n != m or n >= d:  # the D x D route
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ac, bc = a - a.mean(0), b - b.mean(0)                                   # [n, D]
    nuc = torch.linalg.svdvals(torch.from_numpy(ac @ bc.T / (n - 1))).sum().item()  # Tr sqrt(S_a S_b)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + ((ac ** 2).sum() + (bc ** 2).sum()) / (n - 1) - 2 * nuc)


def resample_indices(n, n_boot, seed=0):
    """[n_boot, n] image indices drawn with replacement, one Generator seeded by `seed`."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def paired_bootstrap(runs, gt, n_boot=1000, seed=0):
    """{name: {'fid': FID on all images, 'boot': [n_boot] FIDs on the resamples}}.

    runs: {name: features [n, D]}, gt: features [n, D], rows aligned (row i of every array is image i).
    Resample k uses the same image indices for gt and for every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # n x n SVDs: one thread measured ~4x faster than two when the cores are shared
    try:
        return _paired_bootstrap(runs, gt, n_boot, seed)
    finally:
        torch.set_num_threads(threads)


def _paired_bootstrap(runs, gt, n_boot, seed):
    gt = np.asarray(gt, np.float64)
    n, d = gt.shape
    runs = {k: np.asarray(v, np.float64) for k, v in runs.items()}
    for k, f in runs.items():
        if f.shape != gt.shape:
            raise ValueError(f"run {k}: features {f.shape} but ground truth {gt.shape}: rows must be aligned")
    idx = resample_indices(n, n_boot, seed)                                 # [n_boot, n]
    out = {k: {'fid': frechet_from_features(f, gt), 'boot': np.empty(n_boot)} for k, f in runs.items()}
    if n >= d:  # the D x D route on the resampled rows
        for r in tqdm(range(n_boot), desc='bootstrap', unit='resample'):
            for k, f in runs.items():
                out[k]['boot'][r] = frechet_from_features(f[idx[r]], gt[idx[r]])
        return out
    # means and traces of every resample at once, from per-image counts w [n_boot, n]
    w = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(np.float64)
    gc = gt - gt.mean(0)                                                    # [n, D]
    mg = w @ gc / n                                                         # [n_boot, D] resample mean - full mean
    tr_g = (w @ (gc ** 2).sum(1) - n * (mg ** 2).sum(1)) / (n - 1)          # [n_boot] Tr S_gt of each resample
    grams, rest = [], {}
    for k, f in runs.items():
        fc = f - f.mean(0)
        mf = w @ fc / n
        tr_f = (w @ (fc ** 2).sum(1) - n * (mf ** 2).sum(1)) / (n - 1)
        dmu = (f.mean(0) - gt.mean(0)) + mf - mg                            # [n_boot, D]
        rest[k] = (dmu ** 2).sum(1) + tr_f + tr_g
        grams.append(torch.from_numpy(fc @ gc.T))                           # [n, n]
    grams = torch.stack(grams)                                              # [R, n, n]
    nuc = np.empty((len(runs), n_boot))
    for r in tqdm(range(n_boot), desc='bootstrap', unit='resample'):
        i = torch.from_numpy(idx[r])
        m = grams[:, i][:, :, i]                                            # [R, n, n] the resample's Gram
        m = m - m.mean(1, keepdim=True) - m.mean(2, keepdim=True) + m.mean((1, 2), keepdim=True)  # H K H
        nuc[:, r] = torch.linalg.svdvals(m).sum(-1).numpy() / (n - 1)
    for j, k in enumerate(runs):
        out[k]['boot'] = rest[k] - 2 * nuc[j]
    return out


def _interval(x):
    return [float(v) for v in np.percentile(x, [2.5, 97.5])]


def summarise(result, reference):
    """{name: fid, fid_interval (95 % percentile), diff (run - reference on all images), diff_interval (over
    the paired resamples), opposite_share (resamples whose difference has the other sign than diff)}."""
    ref = result[reference]
    out = {}
    for k, r in result.items():
        diff, boot = r['fid'] - ref['fid'], r['boot'] - ref['boot']       # paired: resample j of both = same images
        out[k] = dict(fid=float(r['fid']), fid_interval=_interval(r['boot']), diff=float(diff),
                      diff_interval=_interval(boot), opposite_share=float(np.mean(boot * diff < 0)))
    return out
