"""benchmarks/eval_fullsize.py: holes mapped back to the source's own size, hole-only scores, checked inputs."""
import json

import numpy as np
import pytest
from PIL import Image

import prepare_dataset as pd
from benchmarks import eval_fullsize as ef

W, H, RES = 192, 96, 16  # a non-square source: padded to 192 x 192 (48 px above and below), 12 px per mask pixel


def test_a_hole_lands_where_it_was_drawn_on_a_non_square_source():
    mask = np.full((RES, RES), 255, np.uint8)
    mask[8:12, 4:8] = 0                                 # on the padded square: x 48..96, y 96..144
    mask[0:3, 10:12] = 0                                # on the top padding only: not in the picture
    hole = ef.full_hole(Image.fromarray(mask), (W, H))
    expected = np.zeros((H, W), bool)
    expected[96 - 48:144 - 48, 48:96] = True
    assert hole.shape == (H, W) and np.array_equal(hole, expected)


def sources(root, n=8):
    """n distinct non-square pictures (flat colours and a bar, like clip art) in one class folder."""
    rng = np.random.default_rng(0)
    (root / 'art').mkdir(parents=True)
    for i in range(n):
        a = np.full((H, W, 3), rng.integers(0, 256, 3), np.uint8)
        a[:, rng.integers(0, W - 40):][:, :40] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(root / 'art' / f'p{i}.png')


class CopyPipe:
    """A fake pipeline whose fill is the source itself, every pixel outside the hole changed: a perfect fill."""

    def __init__(self, truth):
        self.truth, self.calls = truth, []

    def inpaint(self, image, hole, strategy='auto'):
        self.calls.append(strategy)
        a = np.asarray(self.truth[image.tobytes()]).copy()
        a[~hole] = 255 - a[~hole]                        # outside the hole: not scored
        return Image.fromarray(a)


@pytest.fixture
def built(tmp_path):
    src, data = tmp_path / 'src', tmp_path / 'data'
    sources(src)
    assert pd.main(['--source', str(src), '--out', str(data), '--test-count', '3', '--image-size', str(RES),
                    '--near-dup-rms', '0', '--holdout-classes', '', '--workers', '1']) == 0
    return src, data


def args(src, data, out, *extra):
    return ef.parse_args(['--data', str(data), '--source-root', str(src), '--n', '2', '--min-side', '64',
                          '--out', str(out), '--tile', '32', *extra])


def test_an_exact_copy_scores_zero_and_telea_does_not(built, tmp_path):
    src, data = built
    truth = {}
    for p in (src / 'art').iterdir():
        img = ef.read_source(p)
        truth[img.tobytes()] = img
    pipe = CopyPipe(truth)
    res = ef.run(args(src, data, tmp_path / 'out'), pipe=pipe)
    assert pipe.calls == ['auto', 'model'] * 2 and len(res['pictures']) == 2
    for r in res['pictures']:
        assert r['size'] == [W, H] and 0 < r['hole_share'] < 1
        assert r['ours']['l1'] == 0 and r['model']['l1'] == 0 and r['ours']['psnr'] == pytest.approx(100)
        assert r['telea']['l1'] > 0
    assert res['mean']['ours']['l1'] == 0
    table = (tmp_path / 'out' / 'table.md').read_text()
    assert '**mean of 2**' in table and json.loads((tmp_path / 'out' / 'results.json').read_text())['mean']
    with Image.open(tmp_path / 'out' / 'fullsize.png') as fig:
        assert fig.width > 4 * 32 and fig.height > 2 * 32       # 4 labelled columns, 2 rows


def test_a_wrong_source_root_is_one_line_and_writes_nothing(built, tmp_path, capsys):
    src, data = built
    other = tmp_path / 'other'
    sources(other)
    for p in (other / 'art').iterdir():                      # same names, other pictures
        Image.fromarray(255 - np.asarray(Image.open(p))).save(p)
    out = tmp_path / 'out'
    assert ef.main(['--data', str(data), '--source-root', str(other), '--min-side', '64', '--n', '2',
                    '--out', str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'does not shrink to' in err and '--source-root' in err
    assert not out.exists()


def test_a_build_without_sources_json_is_refused(built, tmp_path, capsys):
    src, data = built
    (data / 'sources.json').unlink()
    assert ef.main(['--data', str(data), '--source-root', str(src), '--out', str(tmp_path / 'out')]) == 2
    assert 'sources.json' in capsys.readouterr().err and not (tmp_path / 'out').exists()


def test_split_val_scores_the_val_pictures_with_their_own_masks(tmp_path):
    src, data = tmp_path / 'src', tmp_path / 'data'
    sources(src, 10)
    assert pd.main(['--source', str(src), '--out', str(data), '--test-count', '3', '--image-size', str(RES),
                    '--val-frac', '0.5', '--near-dup-rms', '0', '--holdout-classes', '', '--workers', '1']) == 0
    names = json.loads((data / 'sources.json').read_text())
    truth = {ef.read_source(p).tobytes(): ef.read_source(p) for p in (src / 'art').iterdir()}
    res = ef.run(args(src, data, tmp_path / 'out', '--split', 'val'), pipe=CopyPipe(truth))
    assert res['split'] == 'val' and len(res['pictures']) == 2
    for j, r in enumerate(res['pictures']):
        assert r['number'] == j and r['source'] == names[f'val/image_{j:05d}.png']
        hole = ef.full_hole(Image.open(data / 'val_mask64' / f'mask_{j:05d}.png'), (W, H))
        assert r['hole_share'] == hole.mean() and r['ours']['l1'] == 0    # val_mask64's mask, not mask64's
        assert (tmp_path / 'out' / 'images' / f'val_{j:03d}_ours.png').is_file()
    assert '| val # |' in (tmp_path / 'out' / 'table.md').read_text()


def test_subset_needs_the_test_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ef.parse_args(['--data', str(tmp_path), '--split', 'val', '--subset', str(tmp_path / 'index.json')])
    assert '--subset lists test numbers: it needs --split test' in capsys.readouterr().err
