"""prepare_dataset.py's sources.json: every written picture of a folder source names the file it came from."""
import gzip
import json

import numpy as np
from PIL import Image

from dataset import to_square_rgb
import prepare_dataset as pd
from test_prepare_safety import pictures, run


def test_sources_json_names_each_pictures_own_file(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'out'
    pictures(src, n=8)
    # an exact duplicate under another name: one picture, the first file (sorted order) named
    (src / 'dogs' / 'p0.png').rename(src / 'dogs' / 'a0.png')
    (src / 'dogs' / 'z0.png').write_bytes((src / 'dogs' / 'a0.png').read_bytes())
    assert run(src, out, '--near-dup-rms', '0') == 0
    sources = json.loads((out / 'sources.json').read_text())
    labels = json.loads((out / 'labels.json').read_text())
    assert set(sources) == set(labels) and len(sources) == 8  # 9 files, one duplicate
    assert 'dogs/z0.png' not in sources.values()
    for name, rel in sources.items():
        # the written 16x16 picture is its source's own preprocessing, and the class its top folder
        with Image.open(src / rel) as img:
            expected = np.asarray(to_square_rgb(img, 16))
        assert np.array_equal(np.asarray(Image.open(out / name)), expected), (name, rel)
        assert labels[name] == rel.split('/')[0]


def write_idx(path, array):
    """An idx(.gz) file as Fashion-MNIST ships them (uint8)."""
    head = bytes([0, 0, 8, array.ndim]) + b''.join(n.to_bytes(4, 'big') for n in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(head + array.astype(np.uint8).tobytes())


def test_fashion_mnist_writes_no_sources_json(tmp_path):
    rng, src, out = np.random.default_rng(0), tmp_path / 'fm', tmp_path / 'out'
    src.mkdir()
    for prefix, n in (('train', 8), ('t10k', 4)):
        write_idx(src / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
        write_idx(src / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
    assert pd.main(['--source', 'fashion-mnist', '--fashion-mnist-dir', str(src), '--out', str(out),
                    '--test-count', '2', '--image-size', '16']) == 0
    assert (out / 'labels.json').is_file() and not (out / 'sources.json').exists()  # no files to point back to
