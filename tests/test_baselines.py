"""The non-learned fills of models/baselines.py on a tiny set: known pixels untouched, holes filled."""
import pytest
import torch

from models.baselines import have_opencv, mean_fill, opencv_fill


def tiny():
    torch.manual_seed(0)
    img = torch.rand(3, 3, 16, 16)
    keep = torch.ones(3, 1, 16, 16)
    keep[:, :, 4:9, 5:12] = 0
    return img, keep


def test_mean_fill_is_the_mean_known_colour():
    img, keep = tiny()
    out = mean_fill(img, keep)
    hole = keep[0, 0] == 0
    assert torch.equal(out[:, :, ~hole], img[:, :, ~hole])
    want = img[:, :, ~hole].mean(2)                                        # [3 images, 3 channels]
    assert torch.allclose(out[:, :, hole], want[:, :, None].expand(-1, -1, int(hole.sum())), atol=1e-6)


@pytest.mark.skipif(not have_opencv(), reason="opencv-python-headless (requirements-dev.txt) not installed")
@pytest.mark.parametrize('method', ['telea', 'navier_stokes'])
def test_opencv_fills_holes_from_their_surroundings(method):
    img, keep = tiny()
    img[1] = torch.tensor([0.2, 0.6, 0.9])[:, None, None]                   # a flat image: the fill must match it
    out = opencv_fill(img, keep, method)
    hole = keep[0, 0] == 0
    q = (img * 255 + 0.5).floor() / 255                                    # what cv2 gets: uint8
    assert torch.equal(out[:, :, ~hole], q[:, :, ~hole])
    # Telea's weighted averages round in 8 bits (2 levels off a flat colour here); a wrong fill is ~100 levels off
    assert (out[1, :, hole] - q[1, :, :1, :1].flatten(1)).abs().max() <= 3 / 255
    assert not torch.equal(out[0, :, hole], img[0, :, hole])
