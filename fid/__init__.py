"""FID offline: pytorch-fid's value, faster (score.py), with weights found or converted locally (inception.py).

The course's command line is faster-pytorch-fid/fid_score_gpu.py; this package is what code imports.
"""
from fid.inception import build_inception, find_weights
from fid.score import activation_statistics, compute_fid, fast_inception, frechet_distance, statistics_of

__all__ = ['activation_statistics', 'build_inception', 'compute_fid', 'fast_inception', 'find_weights',
           'frechet_distance', 'statistics_of']
