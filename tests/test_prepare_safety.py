"""prepare_dataset.py must never delete or re-read the user's pictures, nor blow up memory on a thin image."""
import os

import numpy as np
import pytest
from PIL import Image

import prepare_dataset as pd


def pictures(root, n=6, seed=0):
    """n distinct noise pictures in two class folders; -> {relative path: bytes}."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / ('cats' if i % 2 else 'dogs')
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f'p{i}.png')
    return snapshot(root)


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def run(src, out, *extra):
    return pd.main(['--source', str(src), '--out', str(out), '--test-count', '2', '--image-size', '16',
                    '--workers', '1', '--overwrite', *extra])


@pytest.mark.parametrize('where', ['same', 'above', 'inside', 'symlink', 'its_tmp'])
def test_out_over_or_inside_the_source_is_refused_and_nothing_lost(tmp_path, capsys, where):
    src = tmp_path / 'data' / ('mine.tmp' if where == 'its_tmp' else 'mine')
    before = pictures(src)
    os.symlink(src, tmp_path / 'alias')  # another name for the same folder
    out = {'same': src, 'above': tmp_path / 'data', 'inside': src / 'built', 'symlink': tmp_path / 'alias',
           'its_tmp': tmp_path / 'data' / 'mine'}[where]  # a rebuild of OUT removes OUT.tmp: here the source
    assert run(src, out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and '--out' in err and 'source folder' in err
    assert snapshot(src) == before  # every original, byte for byte
    assert sorted(os.listdir(src)) == ['cats', 'dogs']  # and nothing written into it


def test_out_beside_the_source_still_works(tmp_path):
    src = tmp_path / 'mine'
    before = pictures(src)
    assert run(src, tmp_path / 'mine_built') == 0  # a shared name prefix is not "inside"
    assert snapshot(src) == before and (tmp_path / 'mine_built' / 'test_gt.csv').is_file()


def test_thin_image_counted_by_its_padded_square_before_decoding(tmp_path, capsys):
    src = tmp_path / 'src'
    pictures(src, n=4)
    thin = src / 'dogs' / 'thin.png'
    Image.new('RGB', (2, 20000), 'black').save(thin)  # a few hundred bytes; padded: 20000 x 20000
    assert thin.stat().st_size < 2000
    # 2 x 20000 = 40,000 pixels is under the limit, the 400 M pixel square it becomes is not
    assert pd.load_source_image((str(thin), 16, 100_000)) == ('too_large', None)
    assert run(src, tmp_path / 'out', '--max-pixels', '100000') == 0
    assert '1 over --max-pixels' in capsys.readouterr().out
