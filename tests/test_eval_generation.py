"""The judge of class-conditional generation (models/classifier.py), precision/recall against a brute-force
reference, and benchmarks/eval_generation.py end to end on tiny random models (conftest.py's conditional lab) and
tiny images; the Inception features are stubbed (Inception on a CPU costs seconds an image; tests/test_fid.py)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
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


# ----------------------------------------------------------------------------- precision/recall, FID of features

def brute_precision_recall(real, fake, k):
    """Kynkaanniemi et al. 2019 written out with numpy loops: the k-th nearest other sample's distance is each
    sample's radius; a sample is covered by a set when it lies within some member's radius."""
    def radii(x):
        return np.array([np.sort(np.linalg.norm(x - p, axis=1))[k] for p in x])   # [0] is the sample itself

    def covered(points, centres):
        r = radii(centres)
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])
    return covered(fake, real), covered(real, fake)


@pytest.mark.parametrize('k, chunk', [(3, 7), (1, 1000), (5, 3)])
def test_precision_recall_matches_a_brute_force_reference(k, chunk):
    rng = np.random.default_rng(k)
    real, fake = rng.normal(0, 1, (41, 6)), rng.normal(0.7, 1.3, (29, 6))   # overlapping clouds: neither 0 nor 1
    want = brute_precision_recall(real, fake, k)
    assert 0 < want[0] < 1 and 0 < want[1] < 1
    assert eg.precision_recall(real, fake, k=k, chunk=chunk) == pytest.approx(want, abs=1e-12)


def test_precision_recall_invariants():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (30, 8))
    assert eg.precision_recall(x, x) == (1.0, 1.0)                 # identical sets
    assert eg.precision_recall(x, x[::-1] + 1e3) == (0.0, 0.0)     # far away
    with pytest.raises(ValueError, match='needs more than 3 generated images, got 3'):
        eg.precision_recall(x, x[:3])


def test_fid_of_features_matches_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, (200, 5)), rng.normal(0.5, 2, (150, 5)) @ rng.normal(0, 1, (5, 5))
    (m1, s1), (m2, s2) = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert eg.fid_of_features(a, b) == pytest.approx(want, rel=1e-8)
    assert abs(eg.fid_of_features(a, a)) < 1e-9


# ----------------------------------------------------------------------------- eval_generation.py

def evaluate(lab, data, out, *extra, scales=SCALES):
    return eg.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                    str(lab / 'tr.pt'), '--data', str(data), '--output-dir', str(out), '--n', '2', '--total-iter',
                    '2', '--temperature', '1', '--batch-size', '4', *(['--cfg-scales', *scales] if scales else []),
                    *extra])


@pytest.fixture
def features(monkeypatch):
    """inception_features stubbed: 8 cheap features of each image (its channel means and spreads, two corner pixels);
    records (desc, number of images) of each call."""
    calls = []

    def fake(images, device, desc):
        x = torch.stack([*images]) if not torch.is_tensor(images) else images            # [n, 3, H, W] uint8
        x = x.double() / 255
        calls.append((desc, len(x)))
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), x[:, :2, 0, 0]], 1).float().numpy()   # [n, 8]
    monkeypatch.setattr(eg, 'inception_features', fake)
    return calls


def test_eval_generation_writes_a_row_grid_and_folder_per_scale(lab, data, tmp_path, features, capsys):
    out = tmp_path / 'out'
    assert evaluate(lab, data, out) == 0
    results = json.loads((out / 'results.json').read_text())
    assert list(results['runs']) == ['cfg_0', 'cfg_1', 'cfg_2.5']
    assert [r['cfg_scale'] for r in results['runs'].values()] == [0, 1, 2.5]
    for name, r in results['runs'].items():
        assert sorted(p.name for p in (out / name).iterdir()) == [f'{c}_{i:03d}.png' for c in CLASS_NAMES
                                                                  for i in range(2)]
        assert r['images'] == 6 and r['settings']['cfg_scale'] == r['cfg_scale'] and r['fid'] > 0
        assert 0 <= r['precision'] <= 1 and 0 <= r['recall'] <= 1 and r['seconds_per_image'] > 0
        assert set(r['per_class']) == set(CLASS_NAMES)
        grid, tile = png(out / f'grid_{name}.png'), IMG + 2
        left = grid.shape[1] - (2 * tile + 2)                                                # the class names' column
        assert grid.shape[0] == 3 * tile + 2 and left > 0 and (grid[:, :left] < 128).any()  # a row per class, named
        grid = grid[:, left:]
        for row, c in enumerate(CLASS_NAMES):
            for i in range(2):
                y, x = 2 + row * tile, 2 + i * tile
                assert np.array_equal(grid[y:y + IMG, x:x + IMG], png(out / name / f'{c}_{i:03d}.png'))
    # the reference: the test split by default, its features computed once and cached
    assert results['reference']['path'] == str(data / 'test') and results['reference']['images'] == 6
    assert features == [('reference', 6), ('cfg_0', 6), ('cfg_1', 6), ('cfg_2.5', 6)]
    cache = Path(results['reference']['features'])
    assert cache.parent == out and cache.name.startswith('reference_features_6_') and np.load(cache).shape == (6, 8)
    c = results['classifier']
    assert (c['train_images'], c['test_images']) == (12, 6) and (out / 'classifier.pt.sha256').is_file()
    assert c['test_accuracy'] == 1.0    # colours: trivially told apart
    table = (out / 'table.md').read_text()
    rows = table.splitlines()
    assert rows[2] == '| run | flags | cfg scale | FID | precision | recall | class accuracy | images | s/image |'
    assert [row.split(' | ')[:2] for row in rows[4:7]] == [['| cfg_0', '--cfg-scale 0'], ['| cfg_1', '--cfg-scale 1'],
                                                           ['| cfg_2.5', '--cfg-scale 2.5']]
    assert 'test accuracy 100.0%' in rows[0] and 'FID of 6 images, fewer than the 2048 features' in table
    assert '| GANs, unconditional (Lucic et al. 2018' in table
    assert '| ours: classifier on the real test images | - | 100.0% |' in table
    # again: the classifier and the reference's features are loaded, and the images are those of generate.py
    capsys.readouterr()
    features.clear()
    assert evaluate(lab, data, out, scales=['1']) == 0
    printed = capsys.readouterr().out
    assert f"classifier: loaded {out / 'classifier.pt'}" in printed and f"reference features: loaded {cache}" in printed
    assert features == [('cfg_1', 6)]
    assert generate.main(['--device', 'cpu', '--MaskGitConfig', str(lab / 'mg.yml'), '--load-transformer-ckpt-path',
                          str(lab / 'tr.pt'), '--total-iter', '2', '--temperature', '1', '--cfg-scale', '1',
                          '--class', 'dog', '--n', '2', '--output-dir', str(tmp_path / 'gen')]) == 0
    for i in range(2):
        ours, theirs = out / 'cfg_1' / f'dog_{i:03d}.png', tmp_path / 'gen' / 'dog' / f'image_{i:03d}.png'
        assert np.abs(png(ours).astype(int) - png(theirs)).max() <= 1


def test_runs_are_measured_side_by_side_with_their_own_flags(lab, data, tmp_path, features):
    out = tmp_path / 'out'
    assert evaluate(lab, data, out, '--runs', 'default=', 'halton=--order,halton', 'T1=--total-iter,1',
                    's5=--seed,5', scales=['0']) == 0
    runs = json.loads((out / 'results.json').read_text())['runs']
    assert list(runs) == ['cfg_0', 'default', 'halton', 'T1', 's5']
    st = {name: r['settings'] for name, r in runs.items()}
    assert st['halton']['order'] == 'halton' and st['default']['order'] != 'halton'
    assert st['T1']['total_iter'] == 1 and st['default']['total_iter'] == 2      # the run's flag > the script's
    assert {s['temperature'] for s in st.values()} == {1}                        # the script's flags: every run's base
    assert runs['halton']['flags'] == '--order halton' and runs['default']['flags'] == ''
    assert all((out / f'grid_{name}.png').is_file() for name in runs)
    pngs = lambda name: [png(out / name / f'{c}_{i:03d}.png') for c in CLASS_NAMES for i in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(pngs('default'), pngs('cfg_0')))       # the same settings
    assert not all(np.array_equal(x, y) for x, y in zip(pngs('default'), pngs('s5')))      # another seed
    assert [f[0] for f in features] == ['reference', *runs]
    rows = (out / 'table.md').read_text().splitlines()
    assert [row.split(' | ')[0] for row in rows[4:9]] == [f'| {name}' for name in runs]


def test_reference_features_are_cached_by_content(lab, data, tmp_path, features):
    ref = tmp_path / 'ref'
    ref.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5):
        Image.fromarray(coloured(rng, COLOURS['cat'], 1)[0]).save(ref / f'r{i}.png')
    out = tmp_path / 'out'
    assert evaluate(lab, data, out, '--reference', str(ref), scales=['0']) == 0
    r = json.loads((out / 'results.json').read_text())['reference']
    assert r['path'] == str(ref) and r['images'] == 5 and features[0] == ('reference', 5)
    features.clear()
    assert evaluate(lab, data, out, '--reference', str(ref), scales=['0']) == 0
    assert features == [('cfg_0', 6)]                                             # unchanged: read back
    Image.fromarray(coloured(rng, COLOURS['dog'], 1)[0]).save(ref / 'r3.png')     # a file replaced
    os.utime(ref / 'r3.png', ns=(1, 1))
    features.clear()
    assert evaluate(lab, data, out, '--reference', str(ref), scales=['0']) == 0
    assert features[0] == ('reference', 5)                                        # recomputed, under a new key
    assert len(list(out.glob('reference_features_5_*.npy'))) == 2


def test_class_accuracy_counts_an_image_right_when_called_its_class(lab, data, tmp_path, features, monkeypatch):
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


def test_bad_inputs_are_one_line_errors_before_any_output(lab, plain_lab, data, tmp_path, features, capsys):
    out = tmp_path / 'out'
    assert 'is unconditional' in one_line_error(capsys, evaluate(plain_lab, data, out), out)
    assert 'labels file not found' in one_line_error(capsys, evaluate(lab, data, out, '--labels', str(tmp_path / 'x')),
                                                     out)
    (tmp_path / 'd').mkdir()
    assert 'has no train split' in one_line_error(capsys, evaluate(lab, tmp_path / 'd', out), out)
    (tmp_path / 'other.json').write_text(json.dumps({'train/image_00000.png': 'cat', 'test/image_000.png': 'bird'}))
    err = one_line_error(capsys, evaluate(lab, data, out, '--labels', str(tmp_path / 'other.json')), out)
    assert "the checkpoint's classes (cat, dog, fish) are not those of" in err
    err = one_line_error(capsys, evaluate(lab, data, out, '--reference', str(tmp_path / 'none')), out)
    assert err == f"error: --reference: image folder not found: {tmp_path / 'none'}"
    for flags, msg in [(['--cfg-scale', '2'], 'give the scales to compare with --cfg-scales'),
                       (['--cfg-scales', '1', '1'], 'a scale is given twice'),
                       (['--cfg-scales', '-1'], '--runs cfg_-1: --cfg-scale must be a number >= 0')]:
        assert msg in one_line_error(capsys, evaluate(lab, data, out, *flags, scales=[]), out)
    assert features == []


@pytest.mark.parametrize('spec, msg', [
    ('halton', "--runs: 'halton' is not NAME=FLAGS"),
    ('a/b=--order,halton', "--runs: bad run name in 'a/b=--order,halton'"),
    ('x=--order,spiral', "--runs x: argument --order: invalid choice: 'spiral'"),
    ('x=--total-iter,many', "--runs x: argument --total-iter: invalid int value: 'many'"),
    ('x=--no-such-flag', "--runs x: unrecognized arguments: --no-such-flag"),
    ('x=--cfg-schedule,linear', "--runs x: --cfg-schedule linear shapes the guidance of --cfg-scale W > 0"),
    ('x=--total-iter,4096', "--runs x: "),          # the model's bound: known once the config is read
])
def test_a_bad_runs_spec_is_a_one_line_error_before_any_output(lab, data, tmp_path, features, capsys, spec, msg):
    out = tmp_path / 'out'
    err = one_line_error(capsys, evaluate(lab, data, out, '--runs', 'ok=', spec, scales=[]), out)
    assert err.startswith(f'error: {msg}')
    assert features == []


def test_a_run_name_given_twice_is_refused(lab, data, tmp_path, features, capsys):
    out = tmp_path / 'out'
    err = one_line_error(capsys, evaluate(lab, data, out, '--runs', 'cfg_0=--order,halton', scales=['0']), out)
    assert err == 'error: --runs: run name cfg_0 given twice'


def test_images_of_an_earlier_run_are_refused_before_generating(lab, data, tmp_path, features, capsys):
    (tmp_path / 'out' / 'cfg_2').mkdir(parents=True)
    Image.fromarray(np.zeros((IMG, IMG, 3), np.uint8)).save(tmp_path / 'out' / 'cfg_2' / 'cat_002.png')  # --n 3
    assert evaluate(lab, data, tmp_path / 'out', scales=['0', '2']) == 2
    assert "cfg_2 holds 1 image(s) this run would not write (e.g. cat_002.png)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['cfg_2'] and features == []


# ----------------------------------------------------------------------------- the tokenizer's ceiling

class _IdentityTokenizer:
    """encode/decode that return their input: the ceiling's images must then be the reference's own pixels."""
    encode_indices = decode_indices = staticmethod(lambda x: x)


@pytest.mark.parametrize('mean, std', [((0.5,) * 3, (0.5,) * 3), ((0.2, 0.4, 0.6), (0.3, 0.25, 0.2))])
def test_the_ceiling_of_a_lossless_tokenizer_is_the_reference_itself(data, mean, std):
    files = sorted(str(f) for f in (data / 'test').iterdir())
    want = torch.stack([torch.from_numpy(png(f).copy()).permute(2, 0, 1) for f in files])   # [n, 3, H, W] uint8
    got = eg.tokenizer_reconstructions(_IdentityTokenizer(), files, mean, std, 4, 'cpu')   # maskgit_stats' kind
    assert got.dtype == torch.uint8 and torch.equal(got, want)   # normalised, decoded, denormalised: exact


def test_tokenizer_ceiling_row_scores_the_reference_through_the_tokenizer(lab, data, tmp_path, features):
    out = tmp_path / 'out'
    assert evaluate(lab, data, out, '--tokenizer-ceiling', scales=['0']) == 0
    t = json.loads((out / 'results.json').read_text())['tokenizer_ceiling']
    assert t['images'] == 6 and t['fid'] > 0 and 0 <= t['precision'] <= 1 and 0 <= t['recall'] <= 1
    assert features == [('reference', 6), ('tokenizer ceiling', 6), ('cfg_0', 6)]
    row = [r for r in (out / 'table.md').read_text().splitlines() if r.startswith('| tokenizer ceiling')]
    assert row == [f"| tokenizer ceiling (the reference through encode/decode) | - | - | {t['fid']:.2f} | "
                   f"{t['precision']:.3f} | {t['recall']:.3f} | - | 6 | - |"]


def test_a_reference_the_tokenizer_cannot_take_is_refused_before_any_output(lab, data, tmp_path, features, capsys):
    ref = tmp_path / 'ref'
    ref.mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([IMG, IMG, IMG, IMG + 4]):
        Image.fromarray(coloured(rng, COLOURS['cat'], 1, size)[0]).save(ref / f'r{i}.png')
    out = tmp_path / 'out'
    err = one_line_error(capsys, evaluate(lab, data, out, '--reference', str(ref), '--tokenizer-ceiling',
                                          scales=['0']), out)
    assert err == (f"error: --reference: {ref / 'r3.png'} is {IMG + 4}x{IMG + 4}, the tokenizer takes "
                   f"{IMG}x{IMG}")
    assert features == []
