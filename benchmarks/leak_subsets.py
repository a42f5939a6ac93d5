"""Split a built dataset's test images by their distance to the nearest training image (issue 30's leak check).

    python benchmarks/leak_subsets.py --data data/openclipart_v1 --out data/oc_v1     # -> data/oc_v1_unseen, _near

Each test image's nearest train/val image at 32x32 grey (RMS difference in 0..255 levels, the measure the leak was
found with). Writes two datasets in the course's test layout (test/, mask64/, masked_image/, test_gt.csv, numbered
0..n-1, with the original number in index.json), which benchmarks/eval_inpainting.py --split test --data reads:
  OUT_unseen: no train/val image within --far levels (what a model that cannot recall must inpaint)
  OUT_near:   a train/val image within --near levels (where it can recall)
Prints the share of test images within 2, 5 and 10 levels.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from dataset import list_images, read_gt_csv, write_gt_csv  # noqa: E402
from neardup import nearest_rms, small_grey  # noqa: E402
from utils import atomic_open  # noqa: E402


def write_subset(data, picks, nearest, out):
    """Test images `picks` of `data` renumbered 0..n-1 in the course layout under `out` (built in out.tmp)."""
    tmp = out + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ('test', 'mask64', 'masked_image'):
        os.makedirs(os.path.join(tmp, d))
    for j, i in enumerate(picks):
        shutil.copy(os.path.join(data, 'test', f'image_{i:03d}.png'), os.path.join(tmp, 'test', f'image_{j:03d}.png'))
        shutil.copy(os.path.join(data, 'mask64', f'mask_{i:03d}.png'), os.path.join(tmp, 'mask64', f'mask_{j:03d}.png'))
        shutil.copy(os.path.join(data, 'masked_image', f'image_{i:03d}.png'),
                    os.path.join(tmp, 'masked_image', f'image_{j:03d}.png'))
    write_gt_csv(read_gt_csv(os.path.join(data, 'test_gt.csv'))[picks], os.path.join(tmp, 'test_gt.csv'))
    with atomic_open(os.path.join(tmp, 'index.json')) as f:
        json.dump({'source': os.path.abspath(data), 'test_numbers': [int(i) for i in picks],
                   'nearest_train_rms': [round(float(nearest[i]), 3) for i in picks]}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='a dataset built by prepare_dataset.py')
    p.add_argument('--out', required=True, help='prefix of the two output datasets (OUT_unseen, OUT_near)')
    p.add_argument('--far', type=float, default=10.0, help='unseen: no train/val image within this RMS (levels)')
    p.add_argument('--near', type=float, default=5.0, help='near: a train/val image within this RMS (levels)')
    args = p.parse_args(argv)
    for suffix in ('_unseen', '_near'):
        if os.path.exists(args.out + suffix) and not os.path.isfile(os.path.join(args.out + suffix, 'index.json')):
            raise SystemExit(f"--out: {args.out + suffix} exists and is not this script's output; not overwriting it")
    test = list_images(os.path.join(args.data, 'test'), what='test image')
    seen = list_images(os.path.join(args.data, 'train'), what='train image') + \
        list_images(os.path.join(args.data, 'val'), what='val image')
    nearest = nearest_rms(small_grey(test), small_grey(seen))                     # [n_test] levels
    for t in (2, 5, 10):
        print(f"test images with a train/val image within RMS {t:g}: {(nearest < t).mean():.1%}")
    unseen, near = np.flatnonzero(nearest >= args.far), np.flatnonzero(nearest < args.near)
    write_subset(args.data, unseen, nearest, args.out + '_unseen')
    write_subset(args.data, near, nearest, args.out + '_near')
    print(f"wrote {args.out}_unseen ({len(unseen)} images, none within {args.far:g}) and {args.out}_near "
          f"({len(near)} images, within {args.near:g}) of {len(test)}")


if __name__ == '__main__':
    main()
