"""FID between two image sets, the same value as `python -m pytorch_fid`, offline and faster.

    python faster-pytorch-fid/fid_score_gpu.py --predicted-path test_results --gtcsv-path test_gt.csv

The course's command line; the code is the package fid/ (fid/score.py: flags, FID; fid/inception.py: weights).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a script here: the repo root
from fid.score import main  # noqa: E402

if __name__ == '__main__':
    main()
