"""prepare_dataset.py and the loaders of dataset.py, on small image folders made here."""
import gzip
import hashlib
import json
import os
import struct
import threading

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import neardup
import prepare_dataset as pd
from dataset import (MASK_FILL, TEST_MEAN, TEST_STD, TRAIN_MEAN, TRAIN_STD, ImageDataset, MaskDataset,
                     PairedTestDataset, data_stats, inference_stats, maskgit_stats, read_gt_csv,
                     to_square_rgb, write_gt_csv)
from models import masks
from models.masks import latent_mask


def make_source(root, n=40, seed=0):
    """n distinct RGB images of odd sizes in two category folders, plus one exact duplicate."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / ('animals' if i % 2 else 'plants')
        d.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f'img{i:03d}.png')
    (root / 'plants' / 'copy_of_img001.png').write_bytes((root / 'animals' / 'img001.png').read_bytes())
    return root


def build(src, out, *extra):
    return pd.main(['--source', str(src), '--out', str(out), '--test-count', '8', '--val-frac', '0.2',
                    '--image-size', '32', '--workers', '1', *extra])


def read_png(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp('ds')
    src = make_source(base / 'src')
    assert build(src, base / 'out') == 0
    return src, base / 'out'


# ----------------------------------------------------------------------------- layout and conventions

def test_layout_names_and_counts(dataset, capsys):
    _, out = dataset
    names = {d: sorted(os.listdir(out / d)) for d in ('train', 'val', 'test', 'mask64', 'masked_image')}
    assert names['test'] == [f'image_{i:03d}.png' for i in range(8)]
    assert names['masked_image'] == names['test']
    assert names['mask64'] == [f'mask_{i:03d}.png' for i in range(8)]
    # 40 distinct images (the copy is dropped): 8 test, the other 32 split 80/20
    assert len(names['val']) == round(32 * 0.2) and len(names['train']) == 32 - len(names['val'])
    assert names['train'] == [f'image_{i:05d}.png' for i in range(len(names['train']))]
    assert {read_png(out / 'train' / n)[1].shape for n in names['train']} == {(32, 32, 3)}
    labels = json.loads((out / 'labels.json').read_text())
    assert set(labels) == {f'{d}/{n}' for d in ('train', 'val', 'test') for n in names[d]}
    assert set(labels.values()) == {'animals', 'plants'}
    assert not (out.parent / 'out.tmp').exists()


def test_masks_follow_course_conventions(dataset):
    _, out = dataset
    fracs = []
    for i in range(8):
        mode, m = read_png(out / 'mask64' / f'mask_{i:03d}.png')
        assert mode == 'L' and set(np.unique(m)) <= {0, 255}
        hole = m == 0
        assert 0 < hole.mean() < 1
        fracs.append(hole.mean())
        _, gt = read_png(out / 'test' / f'image_{i:03d}.png')
        _, masked = read_png(out / 'masked_image' / f'image_{i:03d}.png')
        assert (masked[hole] == MASK_FILL).all()
        assert np.array_equal(masked[~hole], gt[~hole])
    assert all(0.1 <= f <= 0.5 for f in fracs)


def test_csv_round_trip_equals_test_pngs(dataset):
    _, out = dataset
    gt = read_gt_csv(out / 'test_gt.csv')
    assert gt.shape == (8, 32, 32, 3) and gt.dtype == np.uint8
    for i in range(8):
        assert np.array_equal(gt[i], read_png(out / 'test' / f'image_{i:03d}.png')[1])
    header = (out / 'test_gt.csv').read_text().splitlines()[0].split(',')
    assert header == [str(i) for i in range(32 * 32 * 3)]


def test_split_is_deterministic_and_independent_of_listing(dataset, tmp_path):
    src, out = dataset
    # the same images under other names and folders give the same split and the same files
    renamed = tmp_path / 'renamed'
    for i, p in enumerate(sorted(src.rglob('*.png'), reverse=True)):
        (renamed / ('c' if i % 3 else 'd')).mkdir(parents=True, exist_ok=True)
        (renamed / ('c' if i % 3 else 'd') / f'z{i}.png').write_bytes(p.read_bytes())
    assert build(renamed, tmp_path / 'again') == 0
    for d in ('test', 'mask64', 'masked_image'):
        for name in os.listdir(out / d):
            assert (out / d / name).read_bytes() == (tmp_path / 'again' / d / name).read_bytes(), (d, name)
    as_set = lambda root, d: {read_png(p)[1].tobytes() for p in (root / d).iterdir()}
    assert as_set(out, 'train') == as_set(tmp_path / 'again', 'train')
    assert build(src, tmp_path / 'other_seed', '--seed', '1') == 0
    assert as_set(out, 'test') != as_set(tmp_path / 'other_seed', 'test')


def test_duplicates_dropped_and_summary_printed(tmp_path, capsys):
    src = make_source(tmp_path / 'src', n=12)
    (tmp_path / 'src' / 'animals' / 'again.png').write_bytes((src / 'plants' / 'img000.png').read_bytes())
    assert build(src, tmp_path / 'out') == 0
    line = capsys.readouterr().out
    assert 'skipped: 2 duplicates' in line and 'test 8' in line and '2 classes' in line


def test_transparent_palette_and_greyscale_images_composited_on_white(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    rgba = np.zeros((40, 20, 4), np.uint8)  # fully transparent, tall: padded to square
    rgba[:, :, 0] = 200
    Image.fromarray(rgba, 'RGBA').save(src / 'rgba.png')
    pal = Image.new('P', (30, 30), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    pal.info['transparency'] = 0
    pal.save(src / 'palette.png', transparency=0)
    la = np.zeros((30, 30, 2), np.uint8)
    la[:, :, 0] = 50
    la[:15, :, 1] = 255  # top half opaque dark grey, bottom half transparent
    Image.fromarray(la, 'LA').save(src / 'grey_alpha.png')
    for p in sorted(src.iterdir()):
        with Image.open(p) as img:
            a = np.asarray(to_square_rgb(img, 16))
        assert a.shape == (16, 16, 3)
        if p.name == 'grey_alpha.png':
            assert (a[2, :, :] < 80).all() and (a[13, :, :] > 240).all()
        else:
            assert (a > 240).all(), p.name  # transparent -> white, never the hidden colour


def test_oversized_images_skipped_and_unreadable_counted(tmp_path, capsys):
    src = make_source(tmp_path / 'src', n=12)
    Image.new('RGB', (400, 300), 'red').save(src / 'animals' / 'huge.png')
    (src / 'plants' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    assert build(src, tmp_path / 'out', '--max-pixels', '100000') == 0
    line = capsys.readouterr().out
    assert '1 unreadable' in line and '1 over --max-pixels' in line
    assert pd.load_source_image((str(src / 'animals' / 'huge.png'), 16, 100_000)) == ('too_large', None)


# ----------------------------------------------------------------------------- masks

def test_mask_generator_fraction_and_determinism():
    fracs = []
    for i in range(60):
        m = masks.make_mask(64, np.random.default_rng([3, i]), 0.1, 0.5)
        assert m.mode == 'L' and m.size == (64, 64)
        a = np.asarray(m)
        assert set(np.unique(a)) == {0, 255}
        fracs.append(masks.hole_fraction(m))
        assert np.array_equal(a, np.asarray(masks.make_mask(64, np.random.default_rng([3, i]), 0.1, 0.5)))
    assert min(fracs) > 0 and max(fracs) <= 0.5
    assert np.mean([f >= 0.1 for f in fracs]) > 0.9  # the target is almost always reached
    tight = [masks.hole_fraction(masks.make_mask(64, np.random.default_rng(i), 0.3, 0.35)) for i in range(20)]
    assert max(tight) <= 0.35 and np.mean(tight) > 0.25


# ----------------------------------------------------------------------------- Fashion-MNIST

def write_idx(path, array):
    header = struct.pack('>BBBB', 0, 0, 8, array.ndim) + b''.join(struct.pack('>I', s) for s in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_official_split_and_labels(tmp_path):
    fm = tmp_path / 'fm'
    fm.mkdir()
    rng = np.random.default_rng(0)
    official = {}
    for prefix, n in (('train', 30), ('t10k', 12)):
        official[prefix] = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        write_idx(fm / f'{prefix}-images-idx3-ubyte.gz', official[prefix])
        write_idx(fm / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
    out = tmp_path / 'out'
    assert pd.main(['--source', 'fashion-mnist', '--fashion-mnist-dir', str(fm), '--out', str(out),
                    '--test-count', '10', '--val-frac', '0.1', '--image-size', '32']) == 0
    assert len(os.listdir(out / 'test')) == 10 and len(os.listdir(out / 'val')) == 3
    assert len(os.listdir(out / 'train')) == 27
    as_png = lambda a: np.asarray(to_square_rgb(Image.fromarray(a, 'L'), 32)).tobytes()
    label_of = {prefix: {as_png(a): pd.FASHION_MNIST_LABELS[i % 10] for i, a in enumerate(imgs)}
                for prefix, imgs in official.items()}
    labels = json.loads((out / 'labels.json').read_text())
    for split, prefix in (('test', 't10k'), ('train', 'train'), ('val', 'train')):
        for name in os.listdir(out / split):  # each image from its official split, with its own label
            key = read_png(out / split / name)[1].tobytes()
            assert label_of[prefix][key] == labels[f'{split}/{name}']
    assert pd.main(['--source', 'fashion-mnist', '--fashion-mnist-dir', str(tmp_path / 'none'),
                    '--out', str(tmp_path / 'o2')]) == 2


# ----------------------------------------------------------------------------- bad input

def test_missing_and_empty_sources_are_one_line_errors(tmp_path, capsys):
    assert pd.main(['--source', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'o')]) == 2
    assert 'source folder not found' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
    assert pd.main(['--source', str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert 'no images found under' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()


def test_too_few_images_for_the_test_split(tmp_path, capsys):
    src = make_source(tmp_path / 'src', n=5)
    assert build(src, tmp_path / 'out') == 2
    assert 'only 5 images available for the test split' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_non_empty_output_refused_without_overwrite(tmp_path, capsys):
    src = make_source(tmp_path / 'src', n=12)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    assert build(src, out) == 2
    assert 'is not empty (use --overwrite' in capsys.readouterr().err
    assert (out / 'keep.txt').read_text() == 'precious'
    assert build(src, out, '--overwrite') == 0
    assert not (out / 'keep.txt').exists() and (out / 'test_gt.csv').exists()


def test_crash_leaves_no_dataset_that_looks_complete(tmp_path, monkeypatch):
    src = make_source(tmp_path / 'src', n=12)
    out = tmp_path / 'out'
    assert build(src, out) == 0
    before = sorted(p.relative_to(out) for p in out.rglob('*'))

    def boom(*a, **k):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the CSV is being written

    monkeypatch.setattr(pd, 'write_gt_csv', boom)
    with pytest.raises(KeyboardInterrupt):
        build(src, out, '--overwrite', '--seed', '5')
    assert sorted(p.relative_to(out) for p in out.rglob('*')) == before  # the old dataset is untouched
    monkeypatch.undo()
    assert build(src, out, '--overwrite', '--seed', '5') == 0  # the leftover out.tmp is not reused
    assert not (tmp_path / 'out.tmp').exists()


def test_output_that_is_a_file_is_replaced_with_overwrite_and_no_old_left(tmp_path, capsys):
    src = make_source(tmp_path / 'src', n=12)
    out = tmp_path / 'out'
    out.write_text('a file where the dataset goes')
    assert build(src, out) == 2 and 'use --overwrite' in capsys.readouterr().err
    assert build(src, out, '--overwrite') == 0
    assert (out / 'test_gt.csv').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out', 'src']  # no out.old, no out.tmp


# ----------------------------------------------------------------------------- symlinked folders

def listed(root):
    """(path relative to root, label) of list_source_files, with a time limit: a loop must not hang it."""
    result = []
    t = threading.Thread(target=lambda: result.extend(pd.list_source_files(str(root))), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "list_source_files did not finish: a symlink loop is followed"
    return [(os.path.relpath(p, root), label) for p, label in result]


def test_symlink_loops_are_walked_once_with_real_classes(tmp_path):
    src = make_source(tmp_path / 'src', n=6)
    want = listed(src)
    assert len(want) == 7 and {label for _, label in want} == {'animals', 'plants'}
    os.symlink('..', src / 'animals' / 'loop')           # animals/loop/plants/... would be "animals"
    assert listed(src) == want
    os.symlink('../plants', src / 'plants' / 'self')     # a second loop: exponential without the fix
    os.symlink('../animals', src / 'plants' / 'other')
    assert listed(src) == want
    os.symlink('plants', src / 'a_shortcut')             # listed before plants: plants keeps its class
    assert listed(src) == want
    assert build(src, tmp_path / 'out', '--test-count', '2') == 0
    labels = json.loads((tmp_path / 'out' / 'labels.json').read_text())
    assert len(labels) == 6 and set(labels.values()) == {'animals', 'plants'}  # 6 distinct images, real classes


def test_symlinked_folder_outside_the_source_is_followed_once(tmp_path):
    src = make_source(tmp_path / 'src', n=4)
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    Image.new('RGB', (20, 20), 'red').save(outside / 'red.png')
    os.symlink(outside, src / 'linked')
    os.symlink(outside, src / 'linked_again')
    os.symlink(tmp_path / 'missing', src / 'broken')
    got = listed(src)
    assert [x for x in got if x[1] not in ('animals', 'plants')] == [(os.path.join('linked', 'red.png'), 'linked')]


def test_bad_flags_rejected():
    for argv in (['--hole-min', '0.6', '--hole-max', '0.5'], ['--hole-max', '1.0'], ['--val-frac', '1'],
                 ['--test-count', '0']):
        with pytest.raises(SystemExit):
            pd.parse_args(argv)


# ----------------------------------------------------------------------------- loaders (dataset.py)

def test_image_dataset_sorted_partial_and_normalised(dataset):
    _, out = dataset
    ds = ImageDataset(out / 'train', partial=0.5)
    files = sorted(os.listdir(out / 'train'))
    assert [os.path.basename(p) for p in ds.paths] == files[:int(len(files) * 0.5)]
    x = ds[0]
    raw = torch.from_numpy(read_png(out / 'train' / files[0])[1].copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(TRAIN_MEAN)[:, None, None], torch.tensor(TRAIN_STD)[:, None, None]
    assert x.shape == (3, 32, 32) and torch.allclose(x, (raw - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match='--partial'):
        ImageDataset(out / 'train', partial=0)


def test_stats_come_from_config_with_course_defaults():
    assert data_stats({}, 'train') == (TRAIN_MEAN, TRAIN_STD)
    assert data_stats({}, 'test') == (TEST_MEAN, TEST_STD)
    cfg = {'data': {'train_mean': [0.5, 0.5, 0.5], 'train_std': [0.25, 0.25, 0.25]}}
    assert data_stats(cfg, 'train') == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert data_stats(cfg, 'test') == (TEST_MEAN, TEST_STD)


def test_inference_normalises_with_the_tokenizer_configs_statistics(tmp_path):
    """One home for the statistics: the VQGAN config. Decoding takes its test statistics (the course's template)
    unless it says inference_stats: train; a MaskGit config reaches them through VQ_config_path."""
    vq = {'data': {'train_mean': [0.5] * 3, 'train_std': [0.25] * 3, 'test_mean': [0.4] * 3}}
    assert inference_stats({}) == (TEST_MEAN, TEST_STD)
    assert inference_stats(vq) == ((0.4, 0.4, 0.4), TEST_STD)
    vq['data']['inference_stats'] = 'train'
    assert inference_stats(vq) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    (tmp_path / 'vq.yml').write_text(yaml.safe_dump(vq))
    assert maskgit_stats({'model_param': {'VQ_Configs': {'VQ_config_path': str(tmp_path / 'vq.yml')}}}) == \
        ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_paired_test_set_and_masks(dataset, tmp_path):
    _, out = dataset
    ds = PairedTestDataset(out / 'masked_image', out / 'mask64')
    img, mask, idx = ds[3]
    assert img.shape == (3, 32, 32) and mask.shape == (1, 32, 32) and idx == 3
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(MaskDataset(out / 'mask64')[3], mask)
    # a masked image without its mask is named in the error
    imgs, masks = tmp_path / 'imgs', tmp_path / 'masks'
    imgs.mkdir(), masks.mkdir()
    for i in (0, 1, 2):
        (imgs / f'image_{i:03d}.png').write_bytes((out / 'masked_image' / f'image_{i:03d}.png').read_bytes())
    for i in (0, 2):
        (masks / f'mask_{i:03d}.png').write_bytes((out / 'mask64' / f'mask_{i:03d}.png').read_bytes())
    with pytest.raises(ValueError, match=r'image_001\.png has no mask'):
        PairedTestDataset(imgs, masks)
    (masks / 'mask_001.png').write_bytes((out / 'mask64' / 'mask_001.png').read_bytes())
    (masks / 'mask_009.png').write_bytes((out / 'mask64' / 'mask_001.png').read_bytes())
    with pytest.raises(ValueError, match=r'mask_009\.png has no masked image'):
        PairedTestDataset(imgs, masks)


def test_latent_mask_of_dataset_masks_matches_the_rule(dataset):
    _, out = dataset
    m = MaskDataset(out / 'mask64')[0][None]  # [1, 1, 32, 32]
    lm = latent_mask(m)
    assert lm.shape == (1, 8, 8)
    blocks = m[0, 0].reshape(8, 4, 8, 4).permute(0, 2, 1, 3).reshape(8, 8, 16)
    assert torch.equal(lm[0], (blocks < 1).any(-1))  # unknown iff any pixel of the 4x4 block is a hole


def test_gt_csv_bad_width_is_a_clear_error(tmp_path):
    write_gt_csv(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / 'ok.csv')
    assert read_gt_csv(tmp_path / 'ok.csv').shape == (2, 8, 8, 3)
    (tmp_path / 'bad.csv').write_text('a,b,c,d\n1,2,3,4\n')
    with pytest.raises(ValueError, match='rows of 4 values'):
        read_gt_csv(tmp_path / 'bad.csv')


# ----------------------------------------------------------------------------- near-duplicates and held-out classes

def drawing(rng, side=256):
    """A few big filled shapes of random colours on white: smooth, like clip art."""
    from PIL import ImageDraw
    img = Image.new('RGB', (side, side), 'white')
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, side // 2, 2)
        x1, y1 = (x0, y0) + rng.integers(side // 4, side // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([int(x0), int(y0), int(x1), int(y1)], fill=colour)
    return np.asarray(img)


def make_near_source(root, n=30, n_copied=6, seed=0):
    """n distinct drawings (classes a, b, c in turn); drawings 0..n_copied-1 also as a 1-level recolour and a
    1-px shift, in another class's folder. -> [[file, ...] per drawing]."""
    rng = np.random.default_rng(seed)
    classes, files = ('a', 'b', 'c'), []
    for i in range(n):
        px = drawing(rng)
        variants = [('', px)]
        if i < n_copied:
            variants += [('_recolour', np.clip(px.astype(int) + 1, 0, 255).astype(np.uint8)),
                         ('_shift', np.pad(px, ((1, 0), (1, 0), (0, 0)), constant_values=255)[:-1, :-1])]
        files.append([])
        for j, (suffix, a) in enumerate(variants):
            d = root / classes[(i + j) % 3]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(d / f'd{i:02d}{suffix}.png')
            files[-1].append(d / f'd{i:02d}{suffix}.png')
    return files


def split_of_each(out, files, size=32):
    """Source file -> the split its preprocessed pixels were written to."""
    where = {}
    for split in ('train', 'val', 'test', 'holdout'):
        for p in (out / split).glob('*.png') if (out / split).is_dir() else ():
            where[read_png(p)[1].tobytes()] = split
    with_px = lambda f: np.asarray(to_square_rgb(Image.open(f), size)).tobytes()
    return {f: where.get(with_px(f), 'dropped') for group in files for f in group}


@pytest.fixture(scope='module')
def near_source(tmp_path_factory):
    base = tmp_path_factory.mktemp('near')
    files = make_near_source(base / 'src')
    grey = neardup.small_grey([to_square_rgb(Image.open(f), 32) for g in files for f in g])
    d = np.sqrt(((grey[:, None] - grey[None]) ** 2).mean(-1))  # [42, 42] the fixture's premise:
    copies = np.repeat(np.arange(len(files)), [len(g) for g in files])
    same = copies[:, None] == copies[None]
    assert d[same].max() < 8 and d[~same].min() > 20  # copies under the default 10 levels, distinct drawings far
    return base / 'src', files


def test_near_copies_land_in_one_split_and_test_count_is_exact(near_source, tmp_path, capsys):
    src, files = near_source
    out = tmp_path / 'out'
    assert build(src, out) == 0  # 42 images: 6 drawings x 3 copies, 24 alone; 8 test
    assert len(os.listdir(out / 'test')) == 8 and not (out / 'holdout').exists()
    where = split_of_each(out, files)
    for group in files:
        assert len({where[f] for f in group}) == 1, [(f.name, where[f]) for f in group]
    assert 'near-duplicates: 6 groups of 2+ images (18 images)' in capsys.readouterr().out
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['near_dup_groups'], summary['near_dup_images'], summary['test']) == (6, 18, 8)
    assert summary['train'] + summary['val'] == 34 and summary['val'] == round(34 * 0.2)


def test_near_dup_rms_zero_is_the_plain_content_hash_split(near_source, tmp_path):
    src, files = near_source
    out = tmp_path / 'out'
    assert build(src, out, '--near-dup-rms', '0', '--seed', '3') == 0
    px = [np.asarray(to_square_rgb(Image.open(f), 32)) for g in files for f in g]
    key = lambda a: hashlib.sha256(f"3:{hashlib.sha256(a.tobytes()).hexdigest()}".encode()).hexdigest()
    order = sorted(px, key=key)  # the split before grouping: test first, then val, then train, in key order
    n_val = round(34 * 0.2)
    want = {'test': order[:8], 'val': order[8:8 + n_val], 'train': order[8 + n_val:]}
    for split, images in want.items():
        got = [read_png(p)[1] for p in sorted((out / split).iterdir())]
        assert len(got) == len(images) and all(np.array_equal(a, b) for a, b in zip(got, images)), split


def test_groups_fill_the_count_exactly_by_passing_over_big_ones():
    groups = [['a1', 'a2', 'a3'], ['b'], ['c1', 'c2'], ['d'], ['e']]
    labels = dict.fromkeys([h for g in groups for h in g], 'x')
    members = pd.assign_splits(groups, labels, None, set(), 4, 0.5)
    assert members['test'] == ['a1', 'a2', 'a3', 'b']  # c1, c2 would overflow: passed over, in order
    assert members['val'] == ['c1', 'c2'] and members['train'] == ['d', 'e']
    assert pd.assign_splits(groups, labels, None, set(), 2, 0)['test'] == ['b', 'd']
    with pytest.raises(ValueError, match='--near-dup-rms'):
        pd.assign_splits([['a1', 'a2', 'a3'], ['c1', 'c2']], labels, None, set(), 4, 0)


def test_holdout_classes_go_to_a_val_like_split_and_their_mixed_copies_are_dropped(near_source, tmp_path):
    src, files = near_source
    out = tmp_path / 'out'
    assert build(src, out, '--holdout-classes', 'a') == 0
    where = split_of_each(out, files)
    labels = json.loads((out / 'labels.json').read_text())
    pure = [f for g in files if all(f.parent.name == 'a' for f in g) for f in g]
    mixed = [g for g in files if {f.parent.name for f in g} - {'a'} and 'a' in {f.parent.name for f in g}]
    assert pure and mixed  # the fixture has both kinds
    held = pure
    assert sorted(f for f in where if where[f] == 'holdout') == sorted(held)
    for g in mixed:  # a's images dropped; the others stay together in one trained/measured split
        assert {where[f] for f in g if f.parent.name == 'a'} == {'dropped'}
        assert len({where[f] for f in g if f.parent.name != 'a'}) == 1
        assert {where[f] for f in g if f.parent.name != 'a'} <= {'train', 'val', 'test'}
    assert 'a' not in {v for k, v in labels.items() if not k.startswith('holdout/')}
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['holdout_dropped'] == sum(f.parent.name == 'a' for g in mixed for f in g)
    n = len(held)
    names = [f'image_{i:05d}.png' for i in range(n)]
    assert sorted(os.listdir(out / 'holdout')) == names == sorted(os.listdir(out / 'holdout_masked_image'))
    assert sorted(os.listdir(out / 'holdout_mask64')) == [f'mask_{i:05d}.png' for i in range(n)]
    assert sorted(k for k in labels if k.startswith('holdout/')) == [f'holdout/{x}' for x in names]
    gt = read_gt_csv(out / 'holdout_gt.csv')
    assert gt.shape == (n, 32, 32, 3) and len(os.listdir(out / 'test')) == 8
    for i in range(n):
        m = read_png(out / 'holdout_mask64' / f'mask_{i:05d}.png')[1]
        shown = read_png(out / 'holdout_masked_image' / f'image_{i:05d}.png')[1]
        assert np.array_equal(gt[i], read_png(out / 'holdout' / names[i])[1])
        assert (shown[m == 0] == MASK_FILL).all() and np.array_equal(shown[m == 255], gt[i][m == 255])
        val_mask = out / 'val_mask64' / f'mask_{i:05d}.png'  # its own mask stream, not val's
        assert not val_mask.exists() or not np.array_equal(m, read_png(val_mask)[1])


def test_unknown_holdout_class_is_a_one_line_error_naming_the_known(near_source, tmp_path, capsys):
    src, _ = near_source
    assert build(src, tmp_path / 'out', '--holdout-classes', 'a,zebra') == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and '--holdout-classes' in err and 'zebra' in err
    assert 'known: a, b, c' in err and not (tmp_path / 'out').exists() and not (tmp_path / 'out.tmp').exists()


def test_default_holdout_only_for_openclipart():
    known = ['x', 'y'] + [c.strip() for c in pd.OPENCLIPART_HOLDOUT.split(',') if c.strip()]
    assert pd.holdout_classes(pd.parse_args(['--source', 'some/folder']), known) == set()
    assert pd.holdout_classes(pd.parse_args(['--source', 'openclipart']), known) == set(known[2:])
    assert pd.holdout_classes(pd.parse_args(['--source', 'openclipart', '--holdout-classes', '']), known) == set()


# ----------------------------------------------------------------------------- --extra-train

def test_extra_train_adds_only_to_train_and_drops_near_copies_of_evaluated_images(near_source, tmp_path, capsys):
    src, files = near_source
    base, out = tmp_path / 'base', tmp_path / 'out'
    assert build(src, base) == 0
    where = split_of_each(base, files)
    held_out = [g[0] for g in files if where[g[0]] in ('val', 'test')][:3]
    trained = next(g[0] for g in files if where[g[0]] == 'train')
    extra = tmp_path / 'extra' / 'sub'
    extra.mkdir(parents=True)
    rng = np.random.default_rng(7)
    new = [drawing(rng) for _ in range(4)]
    for i, a in enumerate(new):
        Image.fromarray(a).save(extra / f'new{i}.png')
    for i, f in enumerate(held_out):  # a 2-level recolour of a val/test image: a near-copy, must not train
        a = np.asarray(Image.open(f).convert('RGB')).astype(int)
        Image.fromarray(np.clip(a + 2, 0, 255).astype(np.uint8)).save(extra / f'near{i}.png')
    Image.open(trained).save(extra / 'copy.png')  # an exact copy of a training image: a duplicate
    assert build(src, out, '--extra-train', str(tmp_path / 'extra')) == 0
    assert 'extra training images: 4 from' in capsys.readouterr().out
    for split in ('val', 'test', 'mask64', 'val_mask64', 'masked_image'):  # the evaluated splits do not move
        assert sorted(os.listdir(out / split)) == sorted(os.listdir(base / split))
        for n in os.listdir(base / split):
            assert (out / split / n).read_bytes() == (base / split / n).read_bytes()
    assert (out / 'test_gt.csv').read_bytes() == (base / 'test_gt.csv').read_bytes()
    n_base = len(os.listdir(base / 'train'))
    train = sorted(os.listdir(out / 'train'))
    assert len(train) == n_base + 4
    for n in sorted(os.listdir(base / 'train')):  # the openclipart-like part first, unchanged
        assert (out / 'train' / n).read_bytes() == (base / 'train' / n).read_bytes()
    added = {read_png(out / 'train' / n)[1].tobytes() for n in train[n_base:]}
    assert added == {np.asarray(to_square_rgb(Image.fromarray(a), 32)).tobytes() for a in new}
    labels = json.loads((out / 'labels.json').read_text())
    assert [labels[f'train/{n}'] for n in train[n_base:]] == [None] * 4  # unlabelled: the null class
    s = json.loads((out / 'summary.json').read_text())
    assert (s['extra_train'], s['extra_near_dropped'], s['train']) == (4, 3, n_base + 4)


def test_missing_extra_train_folder_is_a_one_line_error_before_any_work(near_source, tmp_path, capsys):
    src, _ = near_source
    with pytest.raises(SystemExit):
        build(src, tmp_path / 'out', '--extra-train', str(tmp_path / 'nowhere'))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert '--extra-train folder not found' in err and 'nowhere' in err and not (tmp_path / 'out').exists()


@pytest.mark.skipif(not os.path.isfile(pd.NOTO_EMOJI_FONT), reason='fonts-noto-color-emoji not installed')
def test_noto_emoji_renders_distinct_glyphs_without_the_holdout_subjects():
    imgs = list(pd.emoji_records(16))
    assert len(imgs) > 1000  # Debian 12's font: 1,035 single-code-point colour emoji once the skipped are out
    px = np.stack([r[0] for r in imgs])                        # [N, 16, 16, 3]
    assert px.shape[1:] == (16, 16, 3) and all(r[1:] == (None, None, None) for r in imgs)
    assert (px.reshape(len(px), -1).min(1) < 255).all()  # every one draws something on the white page
    assert len({a.tobytes() for a in px}) > 0.9 * len(px)
    assert 0x1F98A in pd.EMOJI_SKIP and 0x1F68C in pd.EMOJI_SKIP  # fox, bus: the holdout's subjects left out


def test_out_inside_an_extra_train_folder_is_refused(near_source, tmp_path, capsys):
    src, _ = near_source
    extra = tmp_path / 'extra'
    extra.mkdir()
    Image.fromarray(drawing(np.random.default_rng(1))).save(extra / 'x.png')
    assert build(src, extra / 'built', '--extra-train', str(extra)) == 2
    assert 'source folder' in capsys.readouterr().err and os.listdir(extra) == ['x.png']
