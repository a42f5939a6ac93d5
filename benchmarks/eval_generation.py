"""Class-conditional generation, one row per decoding run: FID and precision/recall against real images, class
accuracy and speed, beside the published figures.

    python benchmarks/eval_generation.py --MaskGitConfig configs/MaskGit_fashion.yml --data data/fashion-mnist-t10k \
        --n 1000 --runs default= halton=--order,halton lin=--cfg-scale,3,--cfg-schedule,linear T8=--total-iter,8

The papers' protocol on Fashion-MNIST: 10,000 generated images (--n 1000 over the 10 classes) against the official
10,000 test images, which `python prepare_dataset.py --source fashion-mnist --out data/fashion-mnist-t10k
--test-count 10000` puts in its test split. The conditional config names its checkpoint; an unconditional one is
refused.

Runs (--runs NAME=FLAGS): the decoding flags of inpainting.py (pipeline.add_decoding_args) joined by commas, e.g.
`cfg3=--cfg-scale,3`, `halton=--cfg-scale,3,--order,halton`, `T8=--total-iter,8`, `default=` (no flag). A run's
flag > the same flag given to this script (the base of every run) > the config's `model_param: generate:` section
> its decoding keys > the default, as in generate.py. --cfg-scales W ... is shorthand for runs cfg_<W>=--cfg-scale,W
(the default, 0 1 2 4, when --runs is not given). Image i of class c of a run has generate.py's randomness
(its seed, c, i): the same image `generate.py --class c` writes with the run's flags.

Each run is scored by
  FID        against --reference (default DATA/test, the test split: earlier versions measured against the train
             split), from Inception pool features (2048); the reference's are computed once and cached in OUT,
             keyed by a fingerprint of its files (names, sizes, mtimes: utils.files_fingerprint)
  precision  share of generated images inside the k-NN ball (k=3) of some reference image, and
  recall     share of reference images inside the k-NN ball of some generated image, both in the same Inception
             features (Kynkaanniemi et al. 2019, "Improved precision and recall metric for assessing generative
             models")
  class accuracy  share of images of class c a small CNN (models/classifier.py) calls c; the CNN is trained on the
             train split of --data (its labels.json), saved to --classifier (default OUT/classifier.pt) and loaded
             from there when the file exists (delete it to retrain); its own accuracy on the test split is the
             ceiling to read the class accuracy against
  s/image    seconds per image of generation alone (decoding to pixels; no writing, no scoring)
With --tokenizer-ceiling, a row for the reference's own images through the tokenizer (encoded to tokens, decoded):
what a transformer that drew exactly the reference's token grids would score, the floor of any generator over them.
Writes, under --output-dir (OUT):
  OUT/<run>/<class>_<i>.png     the run's images (--n of every class)
  OUT/grid_<run>.png            a row per class (named): its first GRID_IMAGES images
  OUT/reference_features_<n>_<key>.npy  the reference's Inception features [n, 2048] float32
  OUT/results.json, OUT/table.md  this call's runs and the published figures (results.json adds per-class accuracy,
                                the flags and the settings)
"""
import argparse
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from dataset import class_names, data_stats, list_images, maskgit_stats, read_labels, tensor01_to_pil  # noqa: E402
from fid import score as fs  # noqa: E402
from models.classifier import (EPOCHS, labelled_images, load_classifier, per_class_accuracy, predict,  # noqa: E402
                               save_classifier, train_classifier)
from models.baselines import tokenizer_recon  # noqa: E402
from models.transformer import require_classes  # noqa: E402
from pipeline import (SETTINGS, Inpainter, add_decoding_args, add_model_args, class_folder,  # noqa: E402
                      decoding_settings, generation_settings, id_classes, image_ids, run_cli, setup,
                      unused_decoding_flag)
from plots import save_grid  # noqa: E402
from utils import atomic_open, atomic_save_image, files_fingerprint  # noqa: E402

GRID_IMAGES = 8      # columns of a run's grid
K = 3                # neighbours of precision/recall (Kynkaanniemi et al. 2019)
FID_DIMS = 2048      # Inception pool features
PROTOCOL_IMAGES = 10_000  # generated images of the papers' FID
CHUNK = 1024         # rows of a distance block: 1024 x 10,000 float64 is 80 MB
PUBLISHED = [        # (model, FID, class accuracy): Fashion-MNIST figures to read ours against
    ('class-conditional diffusion, small EDM (50k samples)', '~10', ''),
    ('GANs, unconditional (Lucic et al. 2018, "Are GANs created equal?")', '21.5-26.5', ''),
    ('diffusion, a classifier on the generated samples (DDPM .. DDIM)', '', '~88% .. ~96%'),
]


def image_file(model, label, i):
    """The file name of image i of class id `label` in a run's folder."""
    return f'{class_folder(model, label)}_{i:03d}.png'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='data/openclipart', help="dataset with train/, test/ and labels.json")
    p.add_argument('--labels', default=None, metavar='JSON', help="image -> class file (default DATA/labels.json)")
    p.add_argument('--reference', default=None, metavar='DIR',
                   help="real images FID and precision/recall are measured against (default DATA/test; the papers: "
                        "the 10,000 Fashion-MNIST test images)")
    p.add_argument('--output-dir', default='results/eval_generation', help="OUT: images, grids, results")
    p.add_argument('--runs', nargs='+', default=None, metavar='NAME=FLAGS',
                   help="decoding runs: inpainting.py's decoding flags joined by commas (e.g. halton=--order,halton)")
    p.add_argument('--cfg-scales', type=float, nargs='+', default=None, metavar='W',
                   help="shorthand for runs cfg_<W>=--cfg-scale,W (default 0 1 2 4 when --runs is not given)")
    p.add_argument('--n', type=int, default=50, help="images per class and run")
    p.add_argument('--classifier', default=None, metavar='PATH',
                   help="classifier checkpoint: loaded when it exists, else trained and saved there "
                        "(default OUT/classifier.pt)")
    p.add_argument('--tokenizer-ceiling', action='store_true',
                   help="also score the reference images through the tokenizer (encode, decode): the generator's floor")
    p.add_argument('--classifier-epochs', type=int, default=EPOCHS, help=f"epochs of a classifier trained here (default {EPOCHS})")
    add_model_args(p, 'the conditional transformer checkpoint')
    add_decoding_args(p)  # the base of every run
    a = p.parse_args(argv)
    if a.n < 1 or a.batch_size < 1 or a.classifier_epochs < 1:
        p.error("--n, --batch-size and --classifier-epochs must be >= 1")
    return a


class _RunParser(argparse.ArgumentParser):
    """The decoding flags of one run; a bad one is a ValueError (one line), not an exit with a usage block."""

    def error(self, message):
        raise ValueError(message)


def plan_runs(a):
    """{run name: (flags as written, namespace of the decoding flags)}: --cfg-scales' runs, then --runs'. A run's
    flag overrides the script's; values are checked over the defaults here, before anything is loaded or written
    (the config's bounds once it is read). Bad input: a one-line ValueError naming the run."""
    scales = a.cfg_scales if a.cfg_scales is not None or a.runs is not None else [0, 1, 2, 4]
    if scales and a.cfg_scale is not None:
        raise ValueError("--cfg-scale: give the scales to compare with --cfg-scales (or a run's --cfg-scale)")
    if len(set(scales or [])) < len(scales or []):
        raise ValueError(f"--cfg-scales: a scale is given twice in {' '.join(f'{w:g}' for w in scales)}")
    specs = [f'cfg_{w:g}=--cfg-scale,{w:g}' for w in scales or []] + (a.runs or [])
    runs = {}
    for spec in specs:
        name, eq, flags = spec.partition('=')
        if not eq:
            raise ValueError(f"--runs: '{spec}' is not NAME=FLAGS (e.g. halton=--order,halton; default= for none)")
        if not name.replace('_', '').replace('.', '').replace('-', '').isalnum() or name.strip('.') == '':
            raise ValueError(f"--runs: bad run name in '{spec}' (use letters, digits, _ . -)")
        if name in runs:
            raise ValueError(f"--runs: run name {name} given twice")
        flags = [f for f in flags.split(',') if f]
        try:
            ns = add_decoding_args(_RunParser(prog=f'--runs {name}', add_help=False)).parse_args(flags)
        except ValueError as e:
            raise ValueError(f"--runs {name}: {e}") from None
        for s in SETTINGS:  # unset in the run: the script's flag
            if getattr(ns, s) is None:
                setattr(ns, s, getattr(a, s))
        try:
            unused = unused_decoding_flag(ns)  # generate.py's refusal of a flag that would do nothing
            if unused:
                raise ValueError(unused)
            decoding_settings(ns)
        except ValueError as e:
            raise ValueError(f"--runs {name}: {e}") from None
        runs[name] = (' '.join(flags), ns)
    if not runs:
        raise ValueError("--runs: no run given")
    return runs


def dataset_classes(a, transformer):
    """(labels, class names, labels path, train folder, test folder), checked against the checkpoint's classes."""
    require_classes(transformer, 'eval_generation.py', a.MaskGitConfig, 'class-conditional generation')
    folders = [os.path.join(a.data, split) for split in ('train', 'test')]
    for split, folder in zip(('train', 'test'), folders):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset {a.data} has no {split} split ({folder} not found; "
                                    f"prepare_dataset.py writes it)")
    labels_path = a.labels or os.path.join(a.data, 'labels.json')
    labels = read_labels(labels_path)
    names = class_names(labels)
    own = transformer.class_emb.names
    if own is not None and own != names or len(names) != transformer.num_classes:
        own = ', '.join(own) if own else f'{transformer.num_classes} unnamed'
        raise ValueError(f"the checkpoint's classes ({own}) are not those of {labels_path} ({', '.join(names)})")
    return labels, names, labels_path, *folders


def reference_files(folder):
    """The reference's image files; too few for FID and precision/recall is a one-line error naming --reference."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--reference: image folder not found: {folder}")
    files = list_images(folder)
    if len(files) <= K:
        raise ValueError(f"--reference {folder}: {len(files)} image(s); FID and precision/recall (k={K}) need "
                         f"at least {K + 1}")
    return files


def judge(a, cfg, labels, names, labels_path, train_dir, test_dir, size, device):
    """The classifier (loaded or trained, then saved) and its test split's summary."""
    train_x, train_y = labelled_images(train_dir, labels, names, labels_path)        # [n, 3, H, W] uint8
    if train_x.shape[-2:] != (size, size):
        raise ValueError(f"the train images are {train_x.shape[-1]}x{train_x.shape[-2]} but the model generates "
                         f"{size}x{size}")
    path = a.classifier or os.path.join(a.output_dir, 'classifier.pt')
    if os.path.isfile(path):
        clf = load_classifier(path, names, device)
        print(f"classifier: loaded {path}")
    else:
        clf = train_classifier(train_x, train_y, len(names), *data_stats(cfg, 'train'), epochs=a.classifier_epochs,
                               device=device)
        save_classifier(clf, names, path)
        print(f"classifier: trained on {len(train_x)} images ({a.classifier_epochs} epochs), saved to {path}")
    test_x, test_y = labelled_images(test_dir, labels, names, labels_path)
    pred = predict(clf, test_x)
    summary = dict(path=path, parameters=sum(p.numel() for p in clf.parameters()), train_images=len(train_x),
                   test_images=len(test_x), test_accuracy=(pred == test_y).double().mean().item(),
                   test_accuracy_per_class=per_class_accuracy(pred, test_y, len(names)).nanmean().item())
    print(f"classifier test accuracy {summary['test_accuracy']:.1%} ({summary['test_accuracy_per_class']:.1%} "
          f"averaged over classes), {len(test_x)} test images")
    return clf, summary


# ----------------------------------------------------------------------------- features, FID, precision/recall

@functools.lru_cache(maxsize=1)
def _inception(device):
    return fs.fast_inception(FID_DIMS, device)


def inception_features(images, device, desc):
    """Inception pool features [n, 2048] float32 numpy (the network's own precision) of `images`: a uint8
    [n, 3, H, W] tensor or a Dataset of them (fid.score.ImageFiles)."""
    return fs.activation_features(images, _inception(str(device)), device=device, desc=desc).astype(np.float32)


def reference_features(files, out_dir, device):
    """The reference's features: computed once, cached in out_dir under a key of the files' fingerprint (a
    reference rebuilt with as many images gets new features, never a stale file's); (features, cache path)."""
    key = hashlib.sha256(files_fingerprint(files).encode()).hexdigest()[:16]
    path = os.path.join(out_dir, f'reference_features_{len(files)}_{key}.npy')
    if os.path.isfile(path):
        feats = np.load(path, allow_pickle=False)
        if feats.shape[0] == len(files):
            print(f"reference features: loaded {path}")
            return feats, path
    feats = inception_features(fs.ImageFiles(files), device, 'reference')
    with atomic_open(path, 'wb') as f:
        np.save(f, feats)
    return feats, path


def tokenizer_reconstructions(vqgan, files, mean, std, batch_size, device):
    """uint8 [n, 3, H, W] of the image files through the tokenizer (encode to tokens, decode), as a PNG holds them."""
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(files), batch_size), desc='tokenizer ceiling', unit='batch'):
            x = torch.stack([*fs.ImageFiles(files[i:i + batch_size])]).to(device).float() / 255   # [B, 3, H, W]
            y = tokenizer_recon(vqgan, x, mean, std).float()                              # [B, 3, H, W] in [0, 1]
            out.append((y * 255 + 0.5).floor().to(torch.uint8).cpu())
    return torch.cat(out)


def check_sizes(files, size, flag):
    """One-line error naming `flag` and the first file that is not size x size."""
    for f in files:
        with Image.open(f) as im:
            if im.size != (size, size):
                raise ValueError(f"{flag}: {f} is {im.size[0]}x{im.size[1]}, the tokenizer takes {size}x{size}")


def fid_of_features(fake, real, device='cpu'):
    """FID between two feature sets [n, D] (float64 statistics, fid.score's Frechet distance)."""
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (np.asarray(x, np.float64) for x in (fake, real))]
    return fs.frechet_distance(*stats[0], *stats[1], device=device)


def knn_radii(feats, k=K, chunk=CHUNK):
    """Distance of each row of feats [n, D] to its k-th nearest other row, [n]; blocks of `chunk` rows."""
    return torch.cat([torch.cdist(feats[i:i + chunk], feats).kthvalue(k + 1, dim=1).values  # [c, n] -> [c]
                      for i in range(0, len(feats), chunk)])   # k + 1: the row itself is at distance 0


def inside(points, centres, radii, chunk=CHUNK):
    """[len(points)] bool: each point within radii[j] of some centre j."""
    return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radii).any(1)          # [c, m] -> [c]
                      for i in range(0, len(points), chunk)])


def precision_recall(real, fake, k=K, chunk=CHUNK, device='cpu'):
    """Kynkaanniemi et al. 2019: precision = share of fake samples inside the k-NN ball of some real sample,
    recall = share of real samples inside the k-NN ball of some fake one. real [n, D], fake [m, D]."""
    real, fake = (torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device) for x in (real, fake))
    for what, x in (('reference', real), ('generated', fake)):
        if len(x) <= k:
            raise ValueError(f"precision/recall with k={k} needs more than {k} {what} images, got {len(x)}")
    precision = inside(fake, real, knn_radii(real, k, chunk), chunk).double().mean().item()
    recall = inside(real, fake, knn_radii(fake, k, chunk), chunk).double().mean().item()
    return precision, recall


# ----------------------------------------------------------------------------- generation

@torch.no_grad()
def generate_setting(model, settings, mean, std, n, batch_size, folder, amp=False):
    """n images of every class decoded under `settings`, written to folder/<class>_<i>.png; (the files
    (class-major), their class ids [C*n], seconds of generation alone)."""
    inp = Inpainter(model, settings, mean, std, amp=amp, label=id_classes)  # each image's class from its id
    classes = torch.arange(model.transformer.num_classes).repeat_interleave(n)        # [C*n] each image's class
    index = torch.arange(n).repeat(model.transformer.num_classes)                    # [C*n] its number in the class
    ids = image_ids(classes, index)  # generate.py's: its randomness, its images
    files = [os.path.join(folder, image_file(model, c, i)) for c, i in zip(classes.tolist(), index.tolist())]
    seconds, cuda = 0.0, next(model.parameters()).is_cuda
    for k in tqdm(range(0, len(ids), batch_size), desc=os.path.basename(folder), unit='batch'):
        b = slice(k, k + batch_size)
        t0 = time.perf_counter()
        images = inp.images(inp.generate(ids[b]).tokens)                              # [B, 3, H, W] in [0, 1]
        if cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        for img, f in zip(images.cpu(), files[b]):
            atomic_save_image(tensor01_to_pil(img), f)
    return files, classes, seconds


def check_stale(folder, files):
    """One-line error for images in a run's folder that this run would not write (another --n or another
    dataset's classes): FID would count them."""
    if os.path.isdir(folder):
        stale = sorted({os.path.basename(f) for f in os.listdir(folder) if f.endswith('.png')}
                       - {os.path.basename(f) for f in files})
        if stale:
            raise ValueError(f"{folder} holds {len(stale)} image(s) this run would not write (e.g. {stale[0]}): FID "
                             f"would count them; remove the folder or use another --output-dir")


def run(a):
    runs = plan_runs(a)                                                # bad --runs: before anything is loaded
    device, model, cfg, _ = setup(a, generation=True)
    labels, names, labels_path, train_dir, test_dir = dataset_classes(a, model.transformer)   # checked first
    reference = a.reference or test_dir
    ref_files = reference_files(reference)
    C, n = len(names), a.n
    if a.tokenizer_ceiling:
        check_sizes(ref_files, model.vqgan.img_resolution, '--reference')
    if C * n <= K:
        raise ValueError(f"--n {n}: {C * n} images a run; precision/recall (k={K}) need more than {K}")
    settings = {}
    for name, (_, ns) in runs.items():  # the config's values and bounds; stale folders: before any output
        try:
            settings[name] = generation_settings(ns, cfg['model_param'], a.MaskGitConfig)
        except ValueError as e:
            raise ValueError(f"--runs {name}: {e}") from None
        check_stale(os.path.join(a.output_dir, name), [image_file(model, c, i) for c in range(C) for i in range(n)])
        s = settings[name]
        if s.temperature == 0 and s.choice_temperature == 0 and n > 1:
            print(f"note: run {name}: --temperature 0 with --choice-temperature 0 draws no randomness: the {n} "
                  f"images of a class are the same (--temperature 1 samples)", file=sys.stderr)
    clf, summary = judge(a, cfg, labels, names, labels_path, train_dir, test_dir, model.vqgan.img_resolution, device)
    real, ref_cache = reference_features(ref_files, a.output_dir, device)            # [N, 2048]
    results = dict(checkpoint=a.load_transformer_ckpt_path or (cfg.get('checkpoint') or {}).get('path'),
                   config=a.MaskGitConfig, data=a.data, classifier=summary,
                   reference=dict(path=reference, images=len(ref_files), features=ref_cache), runs={})
    if a.tokenizer_ceiling:
        recon = tokenizer_reconstructions(model.vqgan, ref_files, *maskgit_stats(cfg), a.batch_size, device)
        fake = inception_features(recon, device, 'tokenizer ceiling')                  # [N, 2048]
        precision, recall = precision_recall(real, fake, device=device)
        results['tokenizer_ceiling'] = dict(fid=fid_of_features(fake, real, device), precision=precision,
                                            recall=recall, images=len(recon))
        tqdm.write(f"tokenizer ceiling: FID {results['tokenizer_ceiling']['fid']:.2f}, precision {precision:.3f}, "
                   f"recall {recall:.3f}")
    for name, s in settings.items():
        folder = os.path.join(a.output_dir, name)
        files, classes, seconds = generate_setting(model, s, *maskgit_stats(cfg), n, a.batch_size, folder, a.amp)
        images = torch.stack([*fs.ImageFiles(files)])                                 # [C*n, 3, H, W] uint8, as saved
        grid = images.view(C, n, *images.shape[1:])[:, :GRID_IMAGES].flatten(0, 1)    # [C*k, 3, H, W]
        save_grid(grid.float() / 255, os.path.join(a.output_dir, f'grid_{name}.png'),
                  nrow=min(n, GRID_IMAGES), row_labels=list(names))
        fake = inception_features(images, device, name)                               # [C*n, 2048]
        precision, recall = precision_recall(real, fake, device=device)
        pred = predict(clf, images)                                                   # right: pred == its class
        r = results['runs'][name] = dict(
            flags=runs[name][0], cfg_scale=s.cfg_scale, fid=fid_of_features(fake, real, device),
            precision=precision, recall=recall, class_accuracy=(pred == classes).double().mean().item(),
            per_class=dict(zip(names, per_class_accuracy(pred, classes, C).tolist())), images=len(files),
            images_per_class=n, seconds_per_image=seconds / len(files), settings=asdict(s))
        tqdm.write(f"{name}: FID {r['fid']:.2f}, precision {precision:.3f}, recall {recall:.3f}, class accuracy "
                   f"{r['class_accuracy']:.1%}, {r['seconds_per_image']:.3f} s/image")
    with atomic_open(os.path.join(a.output_dir, 'results.json')) as f:
        json.dump(results, f, indent=1)
    report(results, a.output_dir)


def fid_notes(n_fake, n_real):
    """The caveats of an FID measured off the papers' protocol (10,000 generated images), one line each."""
    notes = []
    if n_fake < PROTOCOL_IMAGES:
        notes.append(fs.small_set_note(n_fake, FID_DIMS) or
                     f"note: FID of {n_fake} generated images, fewer than the protocol's {PROTOCOL_IMAGES:,}: biased "
                     f"upward against the published figures")
    if n_real < PROTOCOL_IMAGES:
        notes.append(f"note: the reference holds {n_real} images, not the {PROTOCOL_IMAGES:,} test images of the "
                     f"protocol")
    return notes


def report(results, out_dir):
    c, ref = results['classifier'], results['reference']
    rows = [f"reference: {ref['images']} images of {ref['path']}; classifier: {c['parameters'] / 1e6:.2f} M "
            f"parameters, test accuracy {c['test_accuracy']:.1%} ({c['test_accuracy_per_class']:.1%} averaged over "
            f"classes) on {c['test_images']} real test images", '',
            '| run | flags | cfg scale | FID | precision | recall | class accuracy | images | s/image |',
            '|---|---|---|---|---|---|---|---|---|']
    rows += [f"| {name} | {r['flags'] or '-'} | {r['cfg_scale']:g} | {r['fid']:.2f} | {r['precision']:.3f} | "
             f"{r['recall']:.3f} | {r['class_accuracy']:.1%} | {r['images']} | {r['seconds_per_image']:.4f} |"
             for name, r in results['runs'].items()]
    t = results.get('tokenizer_ceiling')
    if t:
        rows += [f"| tokenizer ceiling (the reference through encode/decode) | - | - | {t['fid']:.2f} | "
                 f"{t['precision']:.3f} | {t['recall']:.3f} | - | {t['images']} | - |"]
    n_fake = min((r['images'] for r in results['runs'].values()), default=0)
    rows += [''] + fid_notes(n_fake, ref['images'])
    rows += ['', f"Published (Fashion-MNIST; FID of {PROTOCOL_IMAGES:,} generated images against the "
                 f"{PROTOCOL_IMAGES:,} test images unless said):", '',
             '| model | FID | class accuracy |', '|---|---|---|']
    rows += [f"| {m} | {fid or '-'} | {acc or '-'} |" for m, fid, acc in PUBLISHED]
    rows += [f"| ours: classifier on the real test images | - | {c['test_accuracy']:.1%} |"]
    with atomic_open(os.path.join(out_dir, 'table.md')) as f:
        f.write('\n'.join(rows) + '\n')
    print('\n'.join(rows))


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
