"""pipeline.py: the three-line use (load, inpaint, generate, outpaint) on the tiny labs, its settings and errors."""
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

import generate
import pipeline
from conftest import CLASS_NAMES, IMG, ROOT, box_hole

pytestmark = pytest.mark.usefixtures('one_thread')

W, H = 48, 36  # a non-square picture, larger than the lab model's IMG x IMG


hole_mask = box_hole(4)


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab((1,), hole_mask, conditional=True)


@pytest.fixture(scope='module')
def plain_lab(make_inpainting_lab):
    return make_inpainting_lab((1,), hole_mask)


@pytest.fixture(scope='module')
def pipe(lab):
    return pipeline.load(lab / 'mg.yml', device='cpu', transformer_ckpt=lab / 'tr.pt')


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    """(picture path, mask path (white = hole), hole bool [H, W])."""
    d = tmp_path_factory.mktemp('own')
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(d / 'photo.png')
    hole = np.zeros((H, W), bool)
    hole[12:24, 18:32] = True
    Image.fromarray(hole.astype(np.uint8) * 255, 'L').save(d / 'mask.png')
    return d / 'photo.png', d / 'mask.png', hole


def far(hole, px=4):
    return ndimage.distance_transform_edt(~hole) > px    # beyond fullsize.FEATHER: the input's pixels


def test_three_lines_inpaint_at_own_size_with_far_pixels_byte_identical(pipe, photo):
    path, mask, hole = photo
    result = pipe.inpaint(str(path), str(mask), total_iter=3, strategy='model')
    assert isinstance(result, Image.Image) and result.size == (W, H) and result.mode == 'RGB'
    out, given = np.asarray(result), np.asarray(Image.open(path))
    assert np.array_equal(out[far(hole)], given[far(hole)]) and not np.array_equal(out[hole], given[hole])
    # the same hole as an array, a PIL mask, or from a PIL picture: the same result
    for image, m in ((Image.open(path), hole), (path, Image.open(mask))):
        assert np.array_equal(np.asarray(pipe.inpaint(image, m, total_iter=3, strategy='model')), out)


def test_return_steps_are_full_size_pictures_ending_with_the_result(pipe, photo):
    path, _, hole = photo
    result, steps = pipe.inpaint(path, hole, return_steps=True, total_iter=3, strategy='model')
    assert len(steps) == 3 and all(s.size == (W, H) for s in steps)
    assert np.array_equal(np.asarray(steps[-1]), np.asarray(result))
    assert not np.array_equal(np.asarray(steps[0]), np.asarray(result))  # each step a picture of its own
    assert np.array_equal(np.asarray(pipe.inpaint(path, hole, total_iter=3, strategy='model')), np.asarray(result))


def test_the_model_loads_once(lab, photo, monkeypatch):
    calls, real = [], pipeline.load_maskgit
    monkeypatch.setattr(pipeline, 'load_maskgit', lambda *a: calls.append(1) or real(*a))
    pipe = pipeline.load(lab / 'mg.yml', device='cpu', transformer_ckpt=lab / 'tr.pt')
    pipe.inpaint(photo[0], photo[2], total_iter=2)
    pipe.generate('cat', n=1, total_iter=2)
    assert calls == [1]


def test_outpaint_extends_the_canvas_keeping_the_original(pipe, photo):
    out = pipe.outpaint(Image.open(photo[0]), left=16, bottom=8, total_iter=2)
    assert out.size == (W + 16, H + 8)
    new = np.ones((H + 8, W + 16), bool)
    new[:H, 16:] = False
    assert np.array_equal(np.asarray(out)[far(new)], np.asarray(Image.open(photo[0]))[far(new)[:H, 16:]])


def test_generate_is_generate_py_and_class_names(pipe, lab, plain_lab, tmp_path):
    assert pipe.class_names == CLASS_NAMES
    assert pipeline.load(plain_lab / 'mg.yml', device='cpu', transformer_ckpt=plain_lab / 'tr.pt').class_names is None
    images = pipe.generate('dog', n=3, total_iter=3, temperature=1.0)
    assert len(images) == 3 and all(im.size == (IMG, IMG) for im in images)
    assert generate.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                          str(lab / 'tr.pt'), '--class', '1', '--n', '3', '--total-iter', '3', '--temperature', '1',
                          '--batch-size', '2', '--output-dir', str(tmp_path)]) == 0
    for i, im in enumerate(images):   # class by name or id, any batch: the same images
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / 'dog' / f'image_{i:03d}.png')))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(pipe.generate(None, n=1, total_iter=3,
                                                                               temperature=1.0)[0]))


def test_bad_settings_are_one_line_value_errors_naming_the_setting(pipe, photo):
    path, _, hole = photo
    cases = [(dict(total_iter=0), 'total_iter must be an integer >= 1'),
             (dict(total_iter=17), 'total_iter must be at most 16'),
             (dict(mask_func='spiral'), 'mask_func must be one of'),
             (dict(temperature=-1.0), 'temperature must be a number >= 0'),
             (dict(strategy='paint'), "fill strategy 'paint'"),
             (dict(feather=-1), 'feather must be an integer >= 0'),
             (dict(class_name='zebra'), "class 'zebra': unknown class"),
             (dict(cfg_scale=2.0), 'cfg_scale 2.0 guides towards a class')]
    for kw, error in cases:
        with pytest.raises(ValueError) as e:
            pipe.inpaint(path, hole, **kw)
        assert error in str(e.value) and '\n' not in str(e.value), kw
    for call, error in [(lambda: pipe.generate('cat', n=0), 'n must be an integer >= 1'),
                        (lambda: pipe.generate('cat', refine=1), 'refine re-decodes'),
                        (lambda: pipe.outpaint(path, left=-3), 'extensions must be >= 0'),
                        (lambda: pipe.inpaint(path, hole[:, :40]), 'mask is 40x36 but the image is 48x36'),
                        (lambda: pipe.inpaint(path, np.zeros((H, W), bool)), 'mask has no hole')]:
        with pytest.raises(ValueError, match=error):
            call()
    with pytest.raises(TypeError, match='unknown setting steps'):
        pipe.inpaint(path, hole, steps=3)


def with_generate(lab, tmp_path, section):
    cfg = yaml.safe_load((lab / 'mg.yml').read_text())
    cfg['model_param']['generate'] = section
    (tmp_path / 'gen.yml').write_text(yaml.safe_dump(cfg))
    return tmp_path / 'gen.yml'


def test_the_configs_generate_section_is_generations_default(pipe, lab, tmp_path):
    config = with_generate(lab, tmp_path, dict(total_iter=2, temperature=1, cfg_scale=1.5, gamma_type='linear'))
    sectioned = pipeline.load(config, device='cpu', transformer_ckpt=lab / 'tr.pt')
    want = pipe.generate('cat', n=2, total_iter=2, temperature=1.0, cfg_scale=1.5, mask_func='linear')
    got = sectioned.generate('cat', n=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))
    assert not np.array_equal(np.asarray(got[0]), np.asarray(pipe.generate('cat', n=1)[0]))   # not the defaults
    assert len(sectioned.generate(None, n=1)) == 1      # the config's guidance without a class: dropped, no error
    # generate.py too: 2 steps a row of the strip (a flag still wins: --total-iter 3)
    base = ['--device', 'cpu', '--MaskGitConfig', str(config), '--load-transformer-ckpt-path', str(lab / 'tr.pt'),
            '--class', 'cat', '--n', '2']
    assert generate.main(base + ['--output-dir', str(tmp_path / 'a')]) == 0
    assert generate.main(base + ['--total-iter', '3', '--output-dir', str(tmp_path / 'b')]) == 0
    tile = IMG + 2
    assert Image.open(tmp_path / 'a' / 'cat_steps.png').size == (2 * tile + 2, 2 * tile + 2)
    assert Image.open(tmp_path / 'b' / 'cat_steps.png').size == (3 * tile + 2, 2 * tile + 2)
    for i in range(2):
        assert np.array_equal(np.asarray(Image.open(tmp_path / 'a' / 'cat' / f'image_{i:03d}.png')),
                              np.asarray(got[i]))


def test_a_bad_generate_section_is_refused_at_load_naming_the_key(lab, tmp_path, capsys):
    for section, error in [(dict(temperature=-1), 'key model_param.generate.temperature: --temperature must be'),
                           (dict(refine=2), 'key model_param.generate.refine: unknown key'),
                           (dict(total_iter=99), 'key model_param.generate.total_iter: --total-iter must be at most'),
                           ([1, 2], 'key model_param.generate: expected a mapping')]:
        config = with_generate(lab, tmp_path, section)
        with pytest.raises(ValueError, match=error):
            pipeline.load(config, device='cpu', transformer_ckpt=lab / 'tr.pt')
        assert generate.main(['--device', 'cpu', '--MaskGitConfig', str(config), '--load-transformer-ckpt-path',
                              str(lab / 'tr.pt'), '--output-dir', str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err.strip()
        assert error in err and '\n' not in err and not (tmp_path / 'o').exists()


@pytest.mark.skipif(not (ROOT / 'checkpoints' / 'transformer_small_cond.pt').is_file(), reason='no shipped checkpoint')
def test_the_shipped_default_config(monkeypatch):
    monkeypatch.chdir(ROOT)   # the config's paths are the repo's
    pipe = pipeline.load(device='cpu')
    assert pipe.config == pipeline.DEFAULT_CONFIG and len(pipe.class_names) == 22
    a = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    hole = np.zeros((80, 96), bool)
    hole[30:50, 40:60] = True
    out = pipe.inpaint(Image.fromarray(a), hole, total_iter=2, refine=0)
    assert out.size == (96, 80) and np.array_equal(np.asarray(out)[far(hole)], a[far(hole)])
