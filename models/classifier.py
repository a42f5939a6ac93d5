"""A small CNN that names the class of a 64x64 RGB image: the judge of class-conditional generation.

Trained on a dataset's train split (labels.json as prepare_dataset.py writes it), it tells how often a generated
image of class c is recognised as c (benchmarks/eval_generation.py). Class ids are dataset.class_names' order, the
order of the transformer's class table. Images go in as uint8 [B, 3, H, W] (what the PNGs hold; or floats in
[0, 1]) and are normalised inside with the statistics the model was built with (dataset.py's), which its
checkpoint keeps. Conv blocks (conv 3x3, BatchNorm, ReLU, max-pool 2), global average pooling, one linear layer:
~0.39 M parameters at width 32, any image size.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from dataset import TRAIN_MEAN, TRAIN_STD, image_labels, list_images, normalize
from fid.score import ImageFiles
from utils import load_checkpoint, load_state_dict_checked, save_checkpoint

WIDTH, BLOCKS = 32, 4  # channels of the first block (doubled each block), blocks
EPOCHS = 8             # train_classifier's and eval_generation's --classifier-epochs


class ImageClassifier(nn.Module):
    """images [B, 3, H, W] uint8 (or float in [0, 1]) -> logits [B, num_classes]."""

    def __init__(self, num_classes, mean=TRAIN_MEAN, std=TRAIN_STD, width=WIDTH, blocks=BLOCKS):
        super().__init__()
        chans = [3] + [width * 2 ** i for i in range(blocks)]
        self.features = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b),
                                                      nn.ReLU(inplace=True), nn.MaxPool2d(2))
                                        for a, b in zip(chans, chans[1:])])
        self.head = nn.Linear(chans[-1], num_classes)
        self.mean, self.std, self.width, self.blocks = tuple(mean), tuple(std), width, blocks  # kept by save_classifier

    def forward(self, x):
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        x = self.features(normalize(x, self.mean, self.std))               # [B, C, H/2^blocks, W/2^blocks]
        return self.head(x.mean((2, 3)))                                   # global average pool: [B, classes]


def labelled_images(folder, labels, names, source):
    """A split's images that have a class: (uint8 [n, 3, H, W], class ids [n] long). labels: read_labels(source),
    whose keys are paths relative to the labels file's folder; ids are places in `names` (class_names(labels)).
    Images labelled null are left out. One-line errors for an image the file does not list, mixed sizes."""
    paths = [os.path.abspath(p) for p in list_images(folder)]
    ids = image_labels(labels, paths, os.path.dirname(os.path.abspath(source)), names, source)
    keep = ids < len(names)                                                # not the null class
    images = [*ImageFiles([p for p, k in zip(paths, keep) if k])]
    if len({x.shape for x in images}) > 1:
        raise ValueError(f"the images of {folder} differ in size: {sorted({tuple(x.shape[1:]) for x in images})}")
    if not images:
        raise ValueError(f"no image of {folder} has a class in {source}")
    return torch.stack(images), ids[keep]


def train_classifier(images, labels, num_classes, mean=TRAIN_MEAN, std=TRAIN_STD, epochs=EPOCHS, batch_size=64,
                     lr=2e-3, weight_decay=0.05, width=WIDTH, seed=0, device='cpu'):
    """A new ImageClassifier trained on images [n, 3, H, W] (uint8) with class ids [n]: AdamW with cosine decay,
    each image flipped horizontally with probability 1/2 (clipart has no handedness). Returns it in eval mode."""
    torch.manual_seed(seed)  # the initial weights
    model = ImageClassifier(num_classes, mean, std, width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)  # order and flips: the run's own stream
    bar = tqdm(total=steps, desc='classifier', unit='step')
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(batch_size):
            x = images[idx]                                                # [b, 3, H, W]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model, images, batch_size=256):
    """Class ids [n] (on the CPU) the model gives images [n, 3, H, W]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x.to(device)).argmax(1).cpu() for x in images.split(batch_size)])


def accuracy(model, images, labels):
    """Share of images [n, 3, H, W] whose predicted class is their label [n]."""
    return (predict(model, images) == labels.cpu()).double().mean().item()


def per_class_accuracy(pred, labels, num_classes):
    """Recall of each class [num_classes] float (nan for a class without images) from predictions and labels [n]."""
    right = torch.bincount(labels[pred == labels], minlength=num_classes)
    return right.double() / torch.bincount(labels, minlength=num_classes).double()


def save_classifier(model, names, path):
    """The weights, the normalisation statistics, the widths and the class names, by save_checkpoint."""
    save_checkpoint({'state_dict': model.state_dict(), 'mean': model.mean, 'std': model.std, 'width': model.width,
                     'blocks': model.blocks, 'names': list(names)}, path)


def load_classifier(path, names, device='cpu'):
    """A save_classifier checkpoint on `device`, in eval mode; one-line error when its classes are not `names`."""
    ck = load_checkpoint(path)
    if ck.get('names') != list(names):
        raise ValueError(f"classifier {path} was trained on the classes {', '.join(ck.get('names') or ['(none)'])}, "
                         f"not the labels file's {', '.join(names)}: delete it or pass another --classifier")
    model = ImageClassifier(len(names), ck['mean'], ck['std'], ck['width'], ck['blocks'])
    return load_state_dict_checked(model, ck['state_dict'], path).to(device).eval()
