"""The judge of class-conditional generation (models/classifier.py) and benchmarks/eval_generation.py end to end,
on tiny random models (conftest.py's conditional lab) and tiny images; FID itself is stubbed (tests/test_fid.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import generate
from benchmarks import eval_generation as eg
from conftest import CLASS_NAMES, IMG
from dataset import class_names, read_labels
from models.classifier import ImageClassifier, accuracy, labelled_images, per_class_accuracy, train_classifier

pytestmark = pytest.mark.usefixtures('one_thread')

COLOURS = {'cat': (220, 40, 40), 'dog': (40, 220, 40), 'fish': (40, 40, 220)}  # a class's colour in the toy data
SCALES = ('0', '1', '2.5')


def png(path):
    return np.asarray(Image.open(path))


def coloured(rng, rgb, n, size=IMG):
    """n noisy images of one colour, uint8 [n, size, size, 3]."""
    return np.clip(rng.normal(rgb, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)


def write_split(root, split, names, rng, width):
    """One image per class name (None: a null-labelled one) in root/split; returns its labels.json entries."""
    (root / split).mkdir(parents=True)
    entries = {}
    for i, name in enumerate(names):
        key = f'{split}/image_{i:0{width}d}.png'
        Image.fromarray(coloured(rng, COLOURS.get(name, (128, 128, 128)), 1)[0]).save(root / key)
        entries[key] = name
    return entries


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """prepare_dataset.py's layout in small: train/ (4 a class and a null one), test/ (2 a class), labels.json."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    labels = {**write_split(root, 'train', CLASS_NAMES * 4 + [None], rng, 5),
              **write_split(root, 'test', CLASS_NAMES[::-1] * 2, rng, 3)}
    (root / 'labels.json').write_text(json.dumps(labels))
    return root


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab((), None, conditional=True)  # classes cat, dog, fish


@pytest.fixture(scope='module')
def plain_lab(make_inpainting_lab):
    return make_inpainting_lab((), None)


# ----------------------------------------------------------------------------- the classifier

def test_classifier_learns_red_against_blue():
    rng = np.random.default_rng(1)
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()             # [n, 3, H, W] uint8
    images = lambda n: to_tensor(np.concatenate([coloured(rng, COLOURS['cat'], n), coloured(rng, COLOURS['fish'], n)]))
    labels = lambda n: torch.arange(2).repeat_interleave(n)
    model = train_classifier(images(32), labels(32), 2, epochs=6, batch_size=16, width=8)
    assert sum(p.numel() for p in ImageClassifier(22).parameters()) < 1e6                  # the default, 22 classes
    assert accuracy(model, images(50), labels(50)) > 0.9


class Stated(nn.Module):
    """A 'classifier' whose answer is written in each image's first pixel (red channel)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes, self.p = num_classes, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float() + self.p


def test_accuracy_and_per_class_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    labels = torch.tensor([0, 1, 2, 2, 1, 2])    # right: images 0, 1, 3, 5 -> 4 of 6
    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = pred
    assert accuracy(Stated(3), images, labels) == pytest.approx(4 / 6)
    # class 0: 1 of 1, class 1: 1 of 2, class 2: 2 of 3; class 3 has no image
    want = torch.tensor([1, 1 / 2, 2 / 3, float('nan')], dtype=torch.float64)
    assert torch.allclose(per_class_accuracy(pred, labels, 4), want, equal_nan=True)


def test_class_ids_follow_the_sorted_names(tmp_path):
    rng = np.random.default_rng(0)
    labels = write_split(tmp_path, 'train', ['zebra', 'ant', None, 'moth', 'ant'], rng, 5)
    (tmp_path / 'labels.json').write_text(json.dumps(labels))
    labels = read_labels(tmp_path / 'labels.json')
    names = class_names(labels)
    assert names == ['ant', 'moth', 'zebra']
    images, ids = labelled_images(tmp_path / 'train', labels, names, tmp_path / 'labels.json')
    assert ids.tolist() == [2, 0, 1, 0] and images.shape == (4, 3, IMG, IMG) and images.dtype == torch.uint8


# ----------------------------------------------------------------------------- eval_generation.py

def evaluate(lab, data, out, *extra, scales=SCALES):
    return eg.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                    str(lab / 'tr.pt'), '--data', str(data), '--output-dir', str(out), '--n', '2', '--total-iter',
                    '2', '--temperature', '1', '--batch-size', '4', *(['--cfg-scales', *scales] if scales else []),
                    *extra])


@pytest.fixture
def fid_calls(monkeypatch):
    """compute_fid stubbed (Inception on a CPU costs seconds an image): records (images, ground truth, stats
    written), writes the statistics file asked for, returns the number of images."""
    calls = []

    def fake(predicted, gt, device=None, save_stats_path=None):
        n = len(list(Path(predicted).glob('*.png')))
        calls.append((n, gt, save_stats_path))
        if save_stats_path:
            np.savez(save_stats_path, mu=np.zeros(1), sigma=np.eye(1))
        return float(n)
    monkeypatch.setattr(eg, 'compute_fid', fake)
    return calls


def test_eval_generation_writes_a_row_grid_and_folder_per_scale(lab, data, tmp_path, fid_calls, capsys):
    out = tmp_path / 'out'
    assert evaluate(lab, data, out) == 0
    results = json.loads((out / 'results.json').read_text())
    assert list(results['runs']) == ['cfg_0', 'cfg_1', 'cfg_2.5']
    assert [r['cfg_scale'] for r in results['runs'].values()] == [0, 1, 2.5]
    for name, r in results['runs'].items():
        assert sorted(p.name for p in (out / name).iterdir()) == [f'{c}_{i:03d}.png' for c in CLASS_NAMES
                                                                  for i in range(2)]
        assert r['images'] == 6 and r['fid'] == 6.0 and r['settings']['cfg_scale'] == r['cfg_scale']
        assert set(r['per_class']) == set(CLASS_NAMES)
        grid, tile = png(out / f'grid_{name}.png'), IMG + 2
        left = grid.shape[1] - (2 * tile + 2)                                                # the class names' column
        assert grid.shape[0] == 3 * tile + 2 and left > 0 and (grid[:, :left] < 128).any()  # a row per class, named
        grid = grid[:, left:]
        for row, c in enumerate(CLASS_NAMES):
            for i in range(2):
                y, x = 2 + row * tile, 2 + i * tile
                assert np.array_equal(grid[y:y + IMG, x:x + IMG], png(out / name / f'{c}_{i:03d}.png'))
    # train statistics: computed from the train folder once, then read back
    assert fid_calls == [(6, str(data / 'train'), str(out / 'train_stats_13.npz'))] + \
        [(6, str(out / 'train_stats_13.npz'), None)] * 2
    c = results['classifier']
    assert (c['train_images'], c['test_images']) == (12, 6) and (out / 'classifier.pt.sha256').is_file()
    assert c['test_accuracy'] == 1.0    # colours: trivially told apart
    table = (out / 'table.md').read_text().splitlines()
    assert table[2] == '| cfg scale | FID | class accuracy | images | seconds |'
    assert [row.split(' | ')[0] for row in table[4:]] == ['| 0', '| 1', '| 2.5']
    assert 'test accuracy 100.0%' in table[0]
    # again: the classifier is loaded, not trained, and the images are those of generate.py
    capsys.readouterr()
    assert evaluate(lab, data, out, scales=['1']) == 0
    assert f"classifier: loaded {out / 'classifier.pt'}" in capsys.readouterr().out
    assert generate.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                          str(lab / 'tr.pt'), '--total-iter', '2', '--temperature', '1', '--cfg-scale', '1',
                          '--class', 'dog', '--n', '2', '--output-dir', str(tmp_path / 'gen')]) == 0
    for i in range(2):
        ours, theirs = out / 'cfg_1' / f'dog_{i:03d}.png', tmp_path / 'gen' / 'dog' / f'image_{i:03d}.png'
        assert np.abs(png(ours).astype(int) - png(theirs)).max() <= 1


def test_class_accuracy_counts_an_image_right_when_called_its_class(lab, data, tmp_path, fid_calls, monkeypatch):
    monkeypatch.setattr(eg, 'predict', lambda model, images: torch.full((len(images),), 1))  # always 'dog'
    assert evaluate(lab, data, tmp_path / 'out', scales=['0']) == 0
    r = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert r['runs']['cfg_0']['class_accuracy'] == pytest.approx(1 / 3)
    assert r['runs']['cfg_0']['per_class'] == {'cat': 0.0, 'dog': 1.0, 'fish': 0.0}
    assert r['classifier']['test_accuracy'] == pytest.approx(1 / 3)


def one_line_error(capsys, rc, out):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and not out.exists()
    return err


def test_bad_inputs_are_one_line_errors_before_any_output(lab, plain_lab, data, tmp_path, fid_calls, capsys):
    out = tmp_path / 'out'
    assert 'is unconditional' in one_line_error(capsys, evaluate(plain_lab, data, out), out)
    assert 'labels file not found' in one_line_error(capsys, evaluate(lab, data, out, '--labels', str(tmp_path / 'x')),
                                                     out)
    (tmp_path / 'd').mkdir()
    assert 'has no train split' in one_line_error(capsys, evaluate(lab, tmp_path / 'd', out), out)
    (tmp_path / 'other.json').write_text(json.dumps({'train/image_00000.png': 'cat', 'test/image_000.png': 'bird'}))
    err = one_line_error(capsys, evaluate(lab, data, out, '--labels', str(tmp_path / 'other.json')), out)
    assert "the checkpoint's classes (cat, dog, fish) are not those of" in err
    for flags, msg in [(['--cfg-scale', '2'], 'give the scales to compare with --cfg-scales'),
                       (['--cfg-scales', '1', '1'], 'a scale is given twice'),
                       (['--cfg-scales', '-1'], '--cfg-scale must be a number >= 0')]:
        with pytest.raises(SystemExit):
            evaluate(lab, data, out, *flags, scales=[])
        assert msg in capsys.readouterr().err and not out.exists()
    assert fid_calls == []


def test_images_of_an_earlier_run_are_refused_before_generating(lab, data, tmp_path, fid_calls, capsys):
    (tmp_path / 'out' / 'cfg_2').mkdir(parents=True)
    Image.fromarray(np.zeros((IMG, IMG, 3), np.uint8)).save(tmp_path / 'out' / 'cfg_2' / 'cat_002.png')  # --n 3
    assert evaluate(lab, data, tmp_path / 'out', scales=['0', '2']) == 2
    assert "cfg_2 holds 1 image(s) this run would not write (e.g. cat_002.png)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['cfg_2'] and fid_calls == []
