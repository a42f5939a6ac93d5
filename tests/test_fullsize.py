"""fullsize.py: own pictures filled at their own size, with fake fill functions (no model)."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import fullsize as fs
from models.baselines import have_opencv

BLUE = torch.tensor([0.0, 0.0, 1.0])[:, None, None]


class Fill:
    """A fake model: the crop as given off the holes, blue on them; records every call."""
    def __init__(self):
        self.calls = []

    def __call__(self, x, holes):
        self.calls.append((x.clone(), holes.clone()))
        return x * (1 - holes) + BLUE * holes


def noise(w, h, mode='RGB', seed=0):
    """A noise picture (every changed pixel shows), greys to keep clear of the fake fill's blue."""
    a = np.random.default_rng(seed).integers(60, 200, (h, w, len(mode)), dtype=np.uint8)
    return Image.fromarray(a[:, :, 0] if mode == 'L' else a)


def block(w, h, *boxes):
    hole = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        hole[y0:y1, x0:x1] = True
    return hole


def far(hole, feather=fs.FEATHER):
    """Pixels farther than the feather band from every hole."""
    return ndimage.distance_transform_edt(~hole) > feather


@pytest.mark.parametrize('w,h', [(32, 32), (63, 200), (200, 63), (1000, 700)])
def test_own_size_and_mode_far_pixels_identical_hole_filled(w, h):
    img = noise(w, h)
    hole = block(w, h, (w // 3, h // 3, w // 3 + 12, h // 3 + 12))
    fill = Fill()
    out = fs.inpaint_fullsize(img, hole, fill, strategy='model')
    assert out.size == (w, h) and out.mode == 'RGB'
    a, b = np.asarray(img), np.asarray(out)
    assert np.array_equal(a[far(hole)], b[far(hole)])
    assert b[hole][:, 2].mean() > 200 and b[hole][:, 0].mean() < 80    # blue now, noisy grey before
    assert len(fill.calls) == 1


def test_one_crop_per_hole_group():
    img = noise(600, 400)
    apart, close = Fill(), Fill()
    fs.inpaint_fullsize(img, block(600, 400, (20, 20, 40, 40), (540, 340, 560, 360)), apart, strategy='model')
    fs.inpaint_fullsize(img, block(600, 400, (20, 20, 40, 40), (46, 20, 66, 40)), close, strategy='model')
    assert [c[0].shape[0] for c in apart.calls] == [2]
    assert [c[0].shape[0] for c in close.calls] == [1]
    x, holes = apart.calls[0]
    assert x.shape[1:] == (3, fs.RES, fs.RES) and holes.shape[1:] == (1, fs.RES, fs.RES)
    assert (x[holes.expand_as(x) > 0] - 128 / 255).abs().max() < 1e-6    # the model is shown grey holes


def test_no_hole_pixel_lost_when_downscaling():
    """A 1-px hole in a big box still marks its token: max-pooled, not averaged away."""
    hole = block(1000, 700, (100, 100, 300, 300), (310, 150, 311, 151))
    boxes = fs.plan_crops(hole)
    assert len(boxes) == 1
    _, holes = fs._model_inputs(np.zeros((700, 1000, 3), np.uint8), hole, boxes, fs.RES)
    x0, y0, x1, _ = boxes[0]
    col = (310 - x0) * fs.RES // (x1 - x0)
    assert holes[0, 0, :, col].any()


def test_holes_whose_boxes_overlap_share_a_crop():
    hole = block(1000, 700, (100, 100, 140, 140), (170, 100, 210, 140))  # 30 px apart: not one group by gap
    assert len(fs.plan_crops(hole)) == 1
    assert len(fs.plan_crops(block(1000, 700, (100, 100, 140, 140), (400, 100, 440, 140)))) == 2


def test_whole_picture_when_hole_covers_most():
    hole = block(300, 200, (10, 10, 290, 190))
    assert fs.plan_crops(hole) == [(0, -50, 300, 250)]                   # the picture, padded to a square
    fill = Fill()
    out = fs.inpaint_fullsize(noise(300, 200), hole, fill, strategy='model')
    assert fill.calls[0][0].shape[0] == 1 and out.size == (300, 200)


def test_small_picture_whole():
    assert fs.plan_crops(block(100, 90, (5, 5, 10, 10))) == [(0, -5, 100, 95)]


def test_box_holds_context_inside_picture():
    hole = block(1000, 700, (980, 5, 1000, 25))                          # at a corner
    (x0, y0, x1, y1), = fs.plan_crops(hole)
    assert x1 - x0 == y1 - y0 >= fs.RES and 0 <= x0 and x1 <= 1000 and 0 <= y0 and y1 <= 700
    assert x0 <= 980 - fs.MIN_CONTEXT
    (x0, y0, x1, y1), = fs.plan_crops(block(1000, 100, (500, 20, 560, 80)))  # the box is taller than the picture
    assert y1 - y0 == 120 and (y0, y1) == (-10, 110)                    # padded equally above and below


def test_rgba_alpha_kept_and_alpha_holes_made_opaque():
    a = np.asarray(noise(80, 80, 'RGBA')).copy()
    a[:, :, 3] = 255
    a[:, :40, 3] = 200                                                   # half translucent
    a[30:40, 50:60, 3] = 0                                               # a transparent hole
    img = Image.fromarray(a)
    hole = fs.mask_from_alpha(img)
    assert hole.sum() == 100 and hole[35, 55]
    out = fs.inpaint_fullsize(img, hole, Fill(), strategy='model')
    assert out.mode == 'RGBA' and np.array_equal(np.asarray(out)[:, :, 3], a[:, :, 3])
    opaque = fs.inpaint_fullsize(img, hole, Fill(), strategy='model', fill_alpha=True)
    assert (np.asarray(opaque)[:, :, 3][hole] == 255).all()
    assert np.array_equal(np.asarray(opaque)[:, :, 3][~hole], a[:, :, 3][~hole])


def test_greyscale_in_greyscale_out():
    img = noise(120, 90, 'L')
    hole = block(120, 90, (50, 40, 70, 60))
    out = fs.inpaint_fullsize(img, hole, Fill(), strategy='model')
    assert out.mode == 'L' and out.size == (120, 90)
    assert np.array_equal(np.asarray(out)[far(hole)], np.asarray(img)[far(hole)])
    assert not np.array_equal(np.asarray(out)[hole], np.asarray(img)[hole])


def test_16bit_png_read_and_written_back(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (70, 90)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / 'deep.png')
    pic = fs.read_image(tmp_path / 'deep.png')
    assert pic.image.mode == 'RGB' and pic.mode in fs.HIGH_DEPTH and pic.size == (90, 70)
    hole = block(90, 70, (40, 30, 50, 40))
    out = fs.inpaint_fullsize(pic, hole, Fill(), strategy='model')
    assert out.mode == pic.mode
    assert np.array_equal(np.asarray(out)[far(hole)], a[far(hole)])    # 16 bits kept off the band


def test_exif_orientation_6_comes_back_upright(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)                                  # stored 60 wide, 40 high
    a[:20, :30] = (255, 0, 0)                                            # red: stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                                     # rotate 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / 'phone.jpg', exif=exif, quality=95)
    pic = fs.read_image(tmp_path / 'phone.jpg')
    assert pic.size == (40, 60)                                          # displayed: 40 wide, 60 high
    up = np.asarray(pic.image)
    assert up[5, 35, 0] > 200 and up[5, 5, 0] < 50                       # red now top-right


def test_unreadable_and_bad_sizes_refused(tmp_path):
    (tmp_path / 'junk.png').write_bytes(b'not a picture')
    Image.fromarray(np.zeros((31, 100, 3), np.uint8)).save(tmp_path / 'thin.png')
    with pytest.raises(ValueError, match='junk.png'):
        fs.read_image(tmp_path / 'junk.png')
    with pytest.raises(ValueError, match=r'thin.png is 100x31: sides must be 32 to 4000'):
        fs.read_image(tmp_path / 'thin.png')


def save_mask(tmp_path, a, name='m.png'):
    Image.fromarray(a).save(tmp_path / name)
    return tmp_path / name


def test_mask_conventions(tmp_path):
    a = np.zeros((40, 50), np.uint8)
    a[10:20, 10:20] = 255
    white, note = fs.read_mask(save_mask(tmp_path, a), (50, 40))
    assert white.sum() == 100 and white[15, 15] and note is None         # white = hole by default
    black, _ = fs.read_mask(save_mask(tmp_path, a), (50, 40), convention='black')
    assert np.array_equal(black, ~white)
    rgba = np.full((40, 50, 4), 255, np.uint8)
    rgba[0:5, 0:7, 3] = 0
    for convention in fs.CONVENTIONS:                                    # transparent = hole, either way
        alpha, _ = fs.read_mask(save_mask(tmp_path, rgba, 'a.png'), (50, 40), convention)
        assert alpha.sum() == 35 and alpha[0, 0]


def test_mask_refusals_name_the_file(tmp_path):
    for name, value in (('nohole.png', 0), ('allhole.png', 255)):
        with pytest.raises(ValueError, match=f"{name} has (no|only) hole"):
            fs.read_mask(save_mask(tmp_path, np.full((40, 50), value, np.uint8), name), (50, 40))
    small = np.zeros((20, 25), np.uint8)
    small[5:10, 5:10] = 255
    path = save_mask(tmp_path, small, 'small.png')
    with pytest.raises(ValueError, match=r'small.png is 25x20 but its image is 50x40'):
        fs.read_mask(path, (50, 40))
    hole, _ = fs.read_mask(path, (50, 40), resize=True)
    assert hole.shape == (40, 50) and hole.sum() == 100


def test_mask_mostly_hole_gets_a_note(tmp_path):
    a = np.full((40, 50), 255, np.uint8)
    a[:2, :2] = 0
    _, note = fs.read_mask(save_mask(tmp_path, a), (50, 40))
    assert note and '--mask-convention black' in note and 'm.png' in note


def test_outpaint_keeps_original_and_extends():
    img = noise(300, 200)
    canvas, hole = fs.outpaint_canvas(img, left=64, top=10)
    assert canvas.size == (364, 210) and hole.shape == (210, 364) and hole.sum() == 364 * 210 - 300 * 200
    assert np.array_equal(np.asarray(canvas)[10:, 64:], np.asarray(img))
    fill = Fill()
    out = fs.inpaint_fullsize(canvas, hole, fill, strategy='model')
    assert out.size == (364, 210)
    assert np.array_equal(np.asarray(out)[10:, 64:][far(hole)[10:, 64:]], np.asarray(img)[far(hole)[10:, 64:]])
    assert (fill.calls[0][1] == 0).float().mean() > 0.3                  # the crops see the original too


def test_outpaint_long_strip_in_tiles_with_context():
    canvas, hole = fs.outpaint_canvas(noise(1000, 700), left=64)
    boxes = fs.plan_crops(hole)
    assert len(boxes) > 1                                                # not one 1064-px box squeezed to 64
    assert all(x1 - x0 < 400 and x1 > 64 + fs.MIN_CONTEXT for x0, _, x1, _ in boxes)
    hole[300:330, 120:150] = True                                        # a hole beside the strip
    assert max(x1 - x0 for x0, _, x1, _ in fs.plan_crops(hole)) < 400   # not merged into one giant box


def test_outpaint_refusals():
    with pytest.raises(ValueError, match='extensions must be >= 0'):
        fs.outpaint_canvas(noise(40, 40))
    with pytest.raises(ValueError, match='at most 4000'):
        fs.outpaint_canvas(noise(40, 40), right=4000)


@pytest.mark.skipif(not have_opencv(), reason="opencv-python-headless (requirements-dev.txt) not installed")
def test_thin_scribble_to_telea_block_to_model():
    a = np.full((400, 600, 3), 90, np.uint8)
    a[100, 50:550] = (255, 0, 0)                                         # a red 1-px line to remove
    img = Image.fromarray(a)
    scribble, big = block(600, 400, (50, 100, 550, 101)), block(600, 400, (300, 200, 360, 260))
    hole = scribble | big
    assert np.array_equal(fs.thin_hole_rule(hole), scribble)
    fill = Fill()
    out = np.asarray(fs.inpaint_fullsize(img, hole, fill))
    assert len(fill.calls) == 1 and fill.calls[0][1].shape[0] == 1     # only the block reached the model
    assert (np.abs(out[scribble].astype(int) - 90) <= 2).all()          # Telea: the grey around the line
    assert out[big][:, 2].mean() > 200                                  # the model's blue
    model_only = Fill()
    fs.inpaint_fullsize(img, hole, model_only, strategy='model')
    assert model_only.calls[0][1].shape[0] == 1 + np.ceil(500 / (fs.ELONGATED * fs.RES))  # block; line in tiles
    telea_only = Fill()
    fs.inpaint_fullsize(img, hole, telea_only, strategy='telea')
    assert telea_only.calls == []


@pytest.mark.skipif(not have_opencv(), reason="opencv-python-headless (requirements-dev.txt) not installed")
def test_classical_fill_full_size():
    img = noise(90, 70, 'L')
    hole = block(90, 70, (20, 20, 30, 30))
    out = fs.classical_fill(img, hole)
    assert out.mode == 'L' and out.size == (90, 70)
    assert np.array_equal(np.asarray(out)[~hole], np.asarray(img)[~hole])


def test_colour_match_hides_the_fills_tint():
    """A fill whose whole crop is tinted comes back at the picture's colour around the hole."""
    img = Image.fromarray(np.full((300, 300, 3), 100, np.uint8))
    hole = block(300, 300, (140, 140, 160, 160))
    tinted = lambda x, holes: (x * (1 - holes) + holes * 100 / 255 + 0.2).clamp(0, 1)  # noqa: E731
    out = np.asarray(fs.inpaint_fullsize(img, hole, tinted, strategy='model')).astype(int)
    assert np.abs(out[hole] - 100).max() <= 2
    raw = np.asarray(fs.inpaint_fullsize(img, hole, tinted, strategy='model', colour_match=False)).astype(int)
    assert np.abs(raw[hole] - 100).min() > 40


def test_median_colour_match_ignores_one_wrong_block_in_the_ring():
    """The fill right on the hole but white in one block of the ring around it: the median shift stays ~0 and the
    hole keeps the picture's grey; the mean would darken the whole fill (the block's share of the ring)."""
    img = Image.fromarray(np.full((300, 300, 3), 100, np.uint8))
    hole = block(300, 300, (140, 140, 160, 160))                         # its box: 64 px, filled at scale 1

    def blotch(x, holes):
        out = x * (1 - holes) + holes * 100 / 255
        ys, xs = np.nonzero(holes[0, 0].numpy())
        out[:, :, ys.min() - 4:ys.min() + 6, xs.min() - 4:xs.min() + 6] = 1.0  # a white 10x10 block on the corner
        return out

    out = np.asarray(fs.inpaint_fullsize(img, hole, blotch, strategy='model', colour_match='median')).astype(int)
    inner = block(300, 300, (146, 146, 160, 160))                        # off the white block
    assert np.abs(out[inner] - 100).max() <= 1
    mean = np.asarray(fs.inpaint_fullsize(img, hole, blotch, strategy='model', colour_match='mean')).astype(int)
    assert (100 - mean[inner]).min() > 5                                # the mean's tint: what the median avoids
    with pytest.raises(ValueError, match="colour_match 'avg'"):
        fs.inpaint_fullsize(img, hole, blotch, colour_match='avg')


@pytest.mark.parametrize('pad', ['white', 'edge'])
def test_padding_hides_what_is_under_the_hole_and_adds_no_hole(pad):
    """A wide picture filled whole (a square box reaching above and below it), its hole on the top border: the
    model input is the same whatever is under the hole, and its holes are the picture's only (none mirrored)."""
    w, h = 120, 60
    hole = block(w, h, (40, 0, 70, 20))
    a = np.asarray(noise(w, h)).copy()
    b = a.copy()
    b[hole] = 255 - b[hole]                                              # other pixels under the hole only
    (x0, y0, x1, y1), = fs.plan_crops(hole)
    assert (x0, y0, x1, y1) == (0, -30, 120, 90)
    calls = []
    for img in (a, b):
        fill = Fill()
        fs.inpaint_fullsize(Image.fromarray(img), hole, fill, strategy='model', pad=pad)
        calls.append(fill.calls[0])
    assert torch.equal(calls[0][0], calls[1][0])                         # nothing under the hole reaches the model
    square = np.zeros((w, w), bool)
    square[-y0:-y0 + h] = hole                                           # the padding: known
    expected = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(square).float()[None, None], fs.RES)
    assert torch.equal(calls[0][1], expected)
    top = calls[0][0][0, :, :fs.RES * 30 // 120 - 4]                     # the padding above the picture
    if pad == 'white':
        assert (top - 1).abs().max() < 1e-5
    reflect = Fill()
    fs.inpaint_fullsize(Image.fromarray(a), hole, reflect, strategy='model', pad='reflect')
    assert reflect.calls[0][1].sum() > expected.sum()                   # mirroring shows the model extra holes
