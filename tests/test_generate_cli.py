"""generate.py: images written as each batch finishes, --n bounded, flags that would do nothing refused, and the
flags of issue 34 (--sweet-spot, --amp) run end to end."""
import numpy as np
import pytest
import torch
from PIL import Image

import generate
import pipeline
from conftest import IMG, box_hole

pytestmark = pytest.mark.usefixtures('one_thread')


hole_mask = box_hole(2)


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    """A tiny conditional lab (classes cat, dog, fish)."""
    return make_inpainting_lab((1,), hole_mask, conditional=True)


@pytest.fixture(scope='module')
def plain_lab(make_inpainting_lab):
    return make_inpainting_lab((1,), hole_mask)


def gen(lab, out, *extra):
    return generate.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                          str(lab / 'tr.pt'), '--total-iter', '3', '--temperature', '1', '--output-dir', str(out),
                          *extra])


def png(path):
    return np.asarray(Image.open(path)).astype(int)


def one_line_error(capsys, rc, out):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    assert not out.exists()   # refused before any output
    return err


def refused_by_argparse(capsys, run, out):
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2 and not out.exists()
    return capsys.readouterr().err


def test_streamed_batches_write_the_images_of_one_batch_run(lab, tmp_path):
    """Images written batch by batch are those of one batch of all n (pixels within one uint8 level: the fp32
    decoder may sum in another order for another batch size), and so are the grid and the strip."""
    assert gen(lab, tmp_path / 'one', '--class', 'dog', '--n', '5', '--batch-size', '5') == 0
    assert gen(lab, tmp_path / 'two', '--class', 'dog', '--n', '5', '--batch-size', '2') == 0
    for run in ('one', 'two'):
        assert sorted(p.name for p in (tmp_path / run / 'dog').iterdir()) == [f'image_{i:03d}.png' for i in range(5)]
    for name in [f'dog/image_{i:03d}.png' for i in range(5)] + ['dog_grid.png', 'dog_steps.png']:
        assert np.abs(png(tmp_path / 'one' / name) - png(tmp_path / 'two' / name)).max() <= 1, name
    tile = IMG + 2
    assert Image.open(tmp_path / 'two' / 'dog_grid.png').size == (3 * tile + 2, 2 * tile + 2)   # 5 images, 3 a row


def test_an_interrupted_run_keeps_every_finished_batch(lab, tmp_path, monkeypatch):
    real, calls = pipeline.generate, []

    def interrupted(*a, **kw):  # the third batch never finishes
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(pipeline, 'generate', interrupted)
    with pytest.raises(KeyboardInterrupt):
        gen(lab, tmp_path / 'o', '--class', 'cat', '--n', '6', '--batch-size', '2')
    assert sorted(p.name for p in (tmp_path / 'o' / 'cat').iterdir()) == [f'image_{i:03d}.png' for i in range(4)]
    monkeypatch.undo()
    assert gen(lab, tmp_path / 'all', '--class', 'cat', '--n', '6', '--batch-size', '2') == 0
    for i in range(4):  # the kept images are the finished run's
        f = f'cat/image_{i:03d}.png'
        assert (tmp_path / 'o' / f).read_bytes() == (tmp_path / 'all' / f).read_bytes()


def test_the_grid_holds_the_first_grid_images_whatever_n(lab, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, 'GRID_IMAGES', 3)
    assert gen(lab, tmp_path / 'o', '--class', 'cat', '--n', '5', '--batch-size', '2') == 0
    tile = IMG + 2
    grid = png(tmp_path / 'o' / 'cat_grid.png')
    assert grid.shape == (2 * tile + 2, 2 * tile + 2, 3)                                  # 3 images, 2 a row
    for k in range(3):
        y, x = 2 + (k // 2) * tile, 2 + (k % 2) * tile
        assert np.array_equal(grid[y:y + IMG, x:x + IMG], png(tmp_path / 'o' / 'cat' / f'image_{k:03d}.png'))
    assert len(list((tmp_path / 'o' / 'cat').iterdir())) == 5                           # all written


def test_n_above_the_maximum_is_refused_in_one_line(lab, tmp_path, capsys):
    out = tmp_path / 'o'
    err = refused_by_argparse(capsys, lambda: gen(lab, out, '--n', str(generate.MAX_N + 1)), out)
    assert f'--n {generate.MAX_N + 1}: at most 100,000 images per class' in err
    assert generate.parse_args(['--n', str(generate.MAX_N)]).n == generate.MAX_N


def test_flags_that_would_do_nothing_are_refused(lab, plain_lab, tmp_path, capsys):
    out = tmp_path / 'o'
    err = one_line_error(capsys, gen(lab, out, '--class', 'cat', '--class', '0', '--n', '2'), out)
    assert '--class cat and --class 0 are the same class (cat): give it once' in err
    err = one_line_error(capsys, gen(lab, out, '--cfg-scale', '2'), out)
    assert '--cfg-scale 2.0 guides towards a class: give --class' in err
    err = one_line_error(capsys, gen(plain_lab, out, '--cfg-scale', '2'), out)   # the model's error first
    assert 'unconditional' in err
    assert '--refine re-decodes the holes' in refused_by_argparse(capsys, lambda: gen(lab, out, '--refine', '1'), out)
    err = refused_by_argparse(capsys, lambda: gen(lab, out, '--class', 'cat', '--cfg-schedule', 'linear'), out)
    assert '--cfg-schedule linear shapes the guidance of --cfg-scale' in err


def test_sweet_spot_stops_early_and_fills_the_rest(lab, tmp_path):
    """--sweet-spot 1 of 3 steps: a strip of 2 tiles a row (step 1, then the fill), images unlike the full run's."""
    assert gen(lab, tmp_path / 'full', '--class', 'cat', '--n', '2') == 0
    assert gen(lab, tmp_path / 'sweet', '--class', 'cat', '--n', '2', '--sweet-spot', '1') == 0
    tile = IMG + 2
    assert Image.open(tmp_path / 'full' / 'cat_steps.png').size == (3 * tile + 2, 2 * tile + 2)
    assert Image.open(tmp_path / 'sweet' / 'cat_steps.png').size == (2 * tile + 2, 2 * tile + 2)
    images = lambda run: [png(tmp_path / run / 'cat' / f'image_{i:03d}.png') for i in range(2)]
    assert any(not np.array_equal(a, b) for a, b in zip(images('full'), images('sweet')))


def test_amp_runs_in_bfloat16_and_writes_every_output(lab, tmp_path, monkeypatch):
    dtypes, real = [], torch.nn.functional.linear

    def linear(x, w, b=None):
        dtypes.append((x @ w.t()).dtype)   # what autocast makes of a matmul here
        return real(x, w, b)
    assert gen(lab, tmp_path / 'fp32', '--class', 'fish', '--n', '2') == 0
    monkeypatch.setattr(torch.nn.functional, 'linear', linear)
    assert gen(lab, tmp_path / 'amp', '--class', 'fish', '--n', '2', '--amp') == 0
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert sorted(p.name for p in (tmp_path / 'amp').iterdir()) == ['fish', 'fish_grid.png', 'fish_steps.png']
    for i in range(2):
        assert png(tmp_path / 'amp' / 'fish' / f'image_{i:03d}.png').shape == (IMG, IMG, 3)
