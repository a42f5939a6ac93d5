"""benchmarks/hybrid_rule.py: per-hole measures against an independent computation, composition, a run end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from benchmarks import hybrid_rule as hr


def test_width_and_flatness_of_each_hole_match_a_direct_computation():
    rng = np.random.default_rng(0)
    keep = np.ones((2, 32, 32), bool)
    keep[0, 5:8, 2:30] = False      # a 3 px stroke
    keep[0, 15:24, 10:19] = False   # a 9 x 9 square
    keep[1, 20:21, 3:25] = False    # a 1 px line
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0, :, 10:30, 5:25] = torch.tensor([0.2, 0.5, 0.7])[:, None, None]  # the square's surround: flat
    ids, width, flat = hr.hole_features(keep, images)
    assert len(width) == 4 and sorted(width[1:].tolist()) == [1.0, 3.0, 9.0]
    for i in range(2):
        for h in np.unique(ids[i][ids[i] > 0]):
            comp = ids[i] == h
            ring = ndimage.binary_dilation(comp, np.ones((7, 7), bool)) & keep[i]  # RING = 3 px around it
            want = np.mean([(images[i, c].numpy() * 255)[ring].std() for c in range(3)])
            assert flat[h] == pytest.approx(want, rel=1e-6, abs=1e-6)
    square = ids[0, 19, 14]
    assert flat[square] < 1e-3 and flat[ids[0, 6, 15]] > 30  # flat around the square, noise around the stroke


def test_compose_takes_the_classical_fill_exactly_in_the_holes_sent_to_it():
    keep = np.ones((1, 16, 16), bool)
    keep[0, 2:4, 2:12] = False
    keep[0, 8:14, 8:14] = False
    ids, width, flat = hr.hole_features(keep, torch.zeros(1, 3, 16, 16))
    ours, classical = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    send = np.r_[False, width[1:] < 4]  # the 2 px stroke only
    out = hr.compose(ours, classical, ids, send)
    stroke = torch.zeros(16, 16, dtype=torch.bool)
    stroke[2:4, 2:12] = True
    assert (out[0, :, stroke] == 1).all() and (out[0, :, ~stroke] == 0).all()


def test_a_run_writes_a_table_and_keeps_the_model_when_the_classical_fill_is_worse(tmp_path):
    """Ours = the ground truth, classical = black holes: no cell can win, and every score says so."""
    rng = np.random.default_rng(1)
    data, n = tmp_path / 'data', 6
    for d in ('val', 'val_mask64', 'val_masked_image', 'ours', 'black'):
        (data / d).mkdir(parents=True)
    gts = []
    for i in range(n):
        gt = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        mask = np.full((64, 64), 255, np.uint8)
        mask[10:13, 5:60] = 0
        mask[30:50, 20:40] = 0
        masked, black = gt.copy(), gt.copy()
        masked[mask == 0], black[mask == 0] = 128, 0
        for d, a in (('val', gt), ('val_masked_image', masked), ('ours', gt), ('black', black)):
            Image.fromarray(a).save(data / d / f'image_{i:05d}.png')
        Image.fromarray(mask).save(data / 'val_mask64' / f'mask_{i:05d}.png')
        gts.append(gt)
    with open(data / 'val_gt.csv', 'w') as f:
        for gt in gts:
            f.write(','.join(map(str, gt.reshape(-1))) + '\n')
    out = tmp_path / 'rule'
    assert hr.main(['--data', str(data), '--split', 'val', '--ours', str(data / 'ours'), '--classical',
                    str(data / 'black'), '--out', str(out), '--widths', '0', '4', '--flatness', '0',
                    '--fid-cells', '1']) == 0
    r = json.loads((out / 'results.json').read_text())
    assert r['holes'] == 2 * n and r['chosen'] is None
    assert r['rows']['ours']['hole_l1'] == 0 and r['rows']['classical']['hole_l1'] > 50
    assert r['cells']['w4_f0']['holes_classical'] == 0.5  # the 3 px strokes
    assert r['rows']['ours']['hole_l1'] < r['cells']['w4_f0']['hole_l1'] < r['rows']['classical']['hole_l1']
    assert r['rows']['ours']['fid'] < r['cells']['w4_f0']['fid']
    assert (out / 'table.md').read_text().count('\n') == 2 + 2 + 2 + 2
