"""Labelled figures: headers and row names are added around the grid, never drawn over a tile."""
import numpy as np
import torch
from PIL import Image

from plots import save_grid, wrap


def test_labels_add_margins_and_leave_every_tile_as_it_was(tmp_path):
    x = torch.rand(6, 3, 16, 16)
    save_grid(x, tmp_path / 'bare.png', nrow=3)
    save_grid(x, tmp_path / 'lab.png', nrow=3, col_labels=['masked input', 'ours', 'truth'], row_labels=['a', 'bb'])
    bare, lab = (np.asarray(Image.open(tmp_path / f)) for f in ('bare.png', 'lab.png'))
    h, w = bare.shape[:2]
    top, left = lab.shape[0] - h, lab.shape[1] - w
    assert top > 0 and left > 0
    assert np.array_equal(lab[top:, left:], bare)           # the grid itself untouched
    assert (lab[:top] < 128).any() and (lab[top:, :left] < 128).any()   # text in both margins


def test_scale_enlarges_each_tile_by_nearest_neighbour(tmp_path):
    x = torch.rand(2, 3, 8, 8)
    save_grid(x, tmp_path / 'a.png', nrow=2)
    save_grid(x, tmp_path / 'b.png', nrow=2, scale=3)
    a, b = (np.asarray(Image.open(tmp_path / f)) for f in ('a.png', 'b.png'))
    assert np.array_equal(b, a.repeat(3, 0).repeat(3, 1))


def test_wrap_breaks_at_spaces_within_the_width():
    assert wrap('masked input image', 7) == 'masked\ninput\nimage'
    assert wrap('a b c', 3) == 'a b\nc'
    assert wrap('unbreakable', 4) == 'unbreakable'
