"""Class-conditional generation per guidance scale: FID against the train split and class accuracy, one table.

    python benchmarks/eval_generation.py --MaskGitConfig configs/MaskGit_small_cond.yml --temperature 1 --n 50

(cfg scales 0 1 2 4; the conditional config names its checkpoint; an unconditional one is refused.)

A small CNN (models/classifier.py) is trained on the train split of --data (its labels.json) and scored on its
test split; it is saved to --classifier (default OUT/classifier.pt) and loaded from there when the file exists
(delete it to retrain). For each --cfg-scales value, --n images of every class are generated from nothing by
models.decoding.generate with the conditional checkpoint, image i of class c with generate.py's randomness
(--seed, c, i): the same images `generate.py --class c` writes. The decoding flags are inpainting.py's, with the
config's `model_param: generate:` defaults as in generate.py; without those the default is argmax (--temperature 0),
and with the small config's choice temperature 0 that draws no randomness, so pass --temperature 1 (the paper's
generation setting). Each setting is scored by FID of all its images against
the train split (whose Inception statistics are computed once per output folder) and by the share of images of
class c the classifier calls c. Writes, under --output-dir (OUT):
  OUT/cfg_<W>/<class>_<i>.png   the images of scale W (the folder FID reads)
  OUT/grid_cfg_<W>.png          a row per class: its first GRID_IMAGES images
  OUT/results.json, OUT/table.md cfg scale | FID | class accuracy | images | seconds (generation and writing),
                                this call's scales only (results.json adds per-class accuracy and the settings)
The classifier's test accuracy is printed and kept in both: plain, and averaged over classes (the generated sets
are balanced, the test split is not), the reference to read the class accuracy against.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repo root
from dataset import class_names, data_stats, list_images, maskgit_stats, read_labels, tensor01_to_pil  # noqa: E402
from fid import compute_fid  # noqa: E402
from fid.score import ImageFiles  # noqa: E402
from models.classifier import (EPOCHS, labelled_images, load_classifier, per_class_accuracy, predict,  # noqa: E402
                               save_classifier, train_classifier)
from models.transformer import require_classes  # noqa: E402
from pipeline import (Inpainter, add_decoding_args, add_model_args, class_folder, decoding_settings,  # noqa: E402
                      id_classes, image_ids, run_cli, setup)
from plots import save_grid  # noqa: E402
from utils import atomic_open, atomic_save_image  # noqa: E402

GRID_IMAGES = 8  # columns of a setting's grid


def image_file(model, label, i):
    """The file name of image i of class id `label` in a setting's folder."""
    return f'{class_folder(model, label)}_{i:03d}.png'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='data/openclipart', help="dataset with train/, test/ and labels.json")
    p.add_argument('--labels', default=None, metavar='JSON', help="image -> class file (default DATA/labels.json)")
    p.add_argument('--output-dir', default='results/eval_generation', help="OUT: images, grids, results")
    p.add_argument('--cfg-scales', type=float, nargs='+', default=[0, 1, 2, 4], metavar='W',
                   help="guidance scales, one setting each (--cfg-schedule applies to every one)")
    p.add_argument('--n', type=int, default=50, help="images per class and setting")
    p.add_argument('--classifier', default=None, metavar='PATH',
                   help="classifier checkpoint: loaded when it exists, else trained and saved there "
                        "(default OUT/classifier.pt)")
    p.add_argument('--classifier-epochs', type=int, default=EPOCHS, help=f"epochs of a classifier trained here (default {EPOCHS})")
    add_model_args(p, 'the conditional transformer checkpoint')
    add_decoding_args(p)
    a = p.parse_args(argv)
    if a.cfg_scale is not None:
        p.error("--cfg-scale: give the scales to compare with --cfg-scales")
    if a.n < 1 or a.batch_size < 1 or a.classifier_epochs < 1:
        p.error("--n, --batch-size and --classifier-epochs must be >= 1")
    if len(set(a.cfg_scales)) < len(a.cfg_scales):
        p.error(f"--cfg-scales: a scale is given twice in {' '.join(f'{w:g}' for w in a.cfg_scales)}")
    try:  # every scale over the given flags, before anything is loaded
        base = decoding_settings(a)
        for w in a.cfg_scales:
            replace(base, cfg_scale=w)
    except ValueError as e:
        p.error(str(e))
    return a


def dataset_classes(a, transformer):
    """(labels, class names, train folder, test folder), checked against the checkpoint's class table."""
    require_classes(transformer, f"--cfg-scales {' '.join(f'{w:g}' for w in a.cfg_scales)}", a.MaskGitConfig,
                    'class-conditional generation')
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


@torch.no_grad()
def generate_setting(model, settings, mean, std, n, batch_size, folder, amp=False):
    """n images of every class decoded under `settings`, written to folder/<class>_<i>.png; returns the files
    (class-major) and their class ids [C*n]."""
    inp = Inpainter(model, settings, mean, std, amp=amp, label=id_classes)  # each image's class from its id
    classes = torch.arange(model.transformer.num_classes).repeat_interleave(n)        # [C*n] each image's class
    index = torch.arange(n).repeat(model.transformer.num_classes)                    # [C*n] its number in the class
    ids = image_ids(classes, index)  # generate.py's: its randomness, its images
    files = [os.path.join(folder, image_file(model, c, i)) for c, i in zip(classes.tolist(), index.tolist())]
    for k in tqdm(range(0, len(ids), batch_size), desc=os.path.basename(folder), unit='batch'):
        b = slice(k, k + batch_size)
        out = inp.generate(ids[b])
        for img, f in zip(inp.images(out.tokens).cpu(), files[b]):                   # [B, 3, H, W] in [0, 1]
            atomic_save_image(tensor01_to_pil(img), f)
    return files, classes


def check_stale(folder, files):
    """One-line error for images in a setting's folder that this run would not write (another --n or another
    dataset's classes): FID would count them."""
    if os.path.isdir(folder):
        stale = sorted({os.path.basename(f) for f in os.listdir(folder) if f.endswith('.png')}
                       - {os.path.basename(f) for f in files})
        if stale:
            raise ValueError(f"{folder} holds {len(stale)} image(s) this run would not write (e.g. {stale[0]}): FID "
                             f"would count them; remove the folder or use another --output-dir")


def run(a):
    device, model, cfg, base = setup(a, generation=True)
    labels, names, labels_path, train_dir, test_dir = dataset_classes(a, model.transformer)   # checked first
    if base.temperature == 0 and base.choice_temperature == 0 and a.n > 1:
        print(f"note: --temperature 0 with --choice-temperature 0 draws no randomness: the {a.n} images of a class "
              f"are the same (--temperature 1 samples)", file=sys.stderr)
    C, n = len(names), a.n
    planned = {w: os.path.join(a.output_dir, f'cfg_{w:g}') for w in a.cfg_scales}
    for folder in planned.values():  # before the classifier's training: nothing is spent on a run that must stop
        check_stale(folder, [image_file(model, c, i) for c in range(C) for i in range(n)])
    clf, summary = judge(a, cfg, labels, names, labels_path, train_dir, test_dir, model.vqgan.img_resolution, device)
    stats = os.path.join(a.output_dir, f'train_stats_{len(list_images(train_dir))}.npz')
    runs = {}
    for w, folder in planned.items():
        settings = replace(base, cfg_scale=w)
        t0 = time.time()
        files, classes = generate_setting(model, settings, *maskgit_stats(cfg), n, a.batch_size, folder, a.amp)
        seconds = time.time() - t0
        images = torch.stack([*ImageFiles(files)])                                    # [C*n, 3, H, W] uint8, as saved
        grid = images.view(C, n, *images.shape[1:])[:, :GRID_IMAGES].flatten(0, 1)    # [C*k, 3, H, W]
        save_grid(grid.float() / 255, os.path.join(a.output_dir, f'grid_{os.path.basename(folder)}.png'),
                  nrow=min(n, GRID_IMAGES), row_labels=list(names))
        fid = compute_fid(folder, stats if os.path.isfile(stats) else train_dir, device=device,
                          save_stats_path=None if os.path.isfile(stats) else stats)
        pred = predict(clf, images)                                                   # right: pred == its class
        r = runs[os.path.basename(folder)] = dict(
            cfg_scale=w, fid=fid, class_accuracy=(pred == classes).double().mean().item(),
            per_class=dict(zip(names, per_class_accuracy(pred, classes, C).tolist())),
            images=len(files), images_per_class=n, seconds=round(seconds, 1), settings=asdict(settings))
        tqdm.write(f"cfg scale {w:g}: FID {fid:.2f}, class accuracy {r['class_accuracy']:.1%} ({seconds:.0f} s)")
    results = dict(checkpoint=a.load_transformer_ckpt_path or (cfg.get('checkpoint') or {}).get('path'),
                   config=a.MaskGitConfig, data=a.data, classifier=summary, runs=runs)
    with atomic_open(os.path.join(a.output_dir, 'results.json')) as f:
        json.dump(results, f, indent=1)
    report(results, a.output_dir)


def report(results, out_dir):
    c = results['classifier']
    rows = [f"classifier: {c['parameters'] / 1e6:.2f} M parameters, test accuracy {c['test_accuracy']:.1%} "
            f"({c['test_accuracy_per_class']:.1%} averaged over classes) on {c['test_images']} test images", '',
            '| cfg scale | FID | class accuracy | images | seconds |', '|---|---|---|---|---|']
    rows += [f"| {r['cfg_scale']:g} | {r['fid']:.2f} | {r['class_accuracy']:.1%} | {r['images']} | {r['seconds']:.0f} |"
             for r in results['runs'].values()]
    with atomic_open(os.path.join(out_dir, 'table.md')) as f:
        f.write('\n'.join(rows) + '\n')
    print('\n'.join(rows))


def main(argv=None):
    return run_cli(run, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
