"""Token cache: a dataset encoded once by the frozen VQGAN, so training steps never run the VQGAN.

One file per (image folder, --partial, flip) in `cache_dir`, `{folder}_{key}.pt`, written atomically:
  {'meta': {...}, 'tokens': int16 [n_images, views, h*w]}  (views = 2 with horizontal flips, else 1)
`meta` holds a sha256 of the VQGAN's tokenizing weights (encoder, quant_conv, codebook: a decoder-only
fine-tune keeps every token, so it keeps the cache), its config's model_param and normalisation (vqgan_meta,
computed once per run), and a fingerprint of the image files (names, sizes, mtimes). Any difference
makes the file stale: it is re-encoded and replaced.
"""
import hashlib
import json
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import ImageDataset, data_stats, list_images
from models.masks import fill_holes, normalised_fill
from models.vqgan import model_state_dict
from utils import atomic_save, files_fingerprint, load_checkpoint

FORMAT = 1


def cache_path(cache_dir, image_root, partial=1.0, flip=True):
    ident = f"{os.path.abspath(image_root)}|{partial}|{flip}"
    name = os.path.basename(os.path.normpath(image_root)) or 'images'
    return os.path.join(cache_dir, f"{name}_{hashlib.sha256(ident.encode()).hexdigest()[:12]}.pt")


TOKENIZER_PREFIXES = ('encoder.', 'quant_conv.', 'codebook.')  # VQGAN.encode: what a token depends on


def tokenizer_sha256(vq_ckpt_path):
    """sha256 over the names, dtypes, shapes and bytes of a VQGAN checkpoint's encoder, quant_conv and codebook
    tensors (the decoder and post_quant_conv do not change a token)."""
    sd = model_state_dict(load_checkpoint(vq_ckpt_path))
    h = hashlib.sha256()
    for k in sorted(k for k in sd if k.startswith(TOKENIZER_PREFIXES)):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')  # flat: a 1x1 conv in
        # channels-last counts as contiguous with a last stride != 1, which view(uint8) refuses
    return h.hexdigest()


def vqgan_meta(vq_cfg, vq_ckpt_path):
    """What the tokens depend on besides the images: the VQGAN's tokenizing weights (tokenizer_sha256), its
    config's (parsed YAML) model_param and normalisation. Computed once per run and passed to every cache;
    the VQGAN itself is built only if something must be encoded."""
    mean, std = data_stats(vq_cfg, 'train')
    return {'tokenizer_sha256': tokenizer_sha256(vq_ckpt_path),
            'vqgan_model_param': json.dumps(vq_cfg.get('model_param'), sort_keys=True),
            'mean': list(mean), 'std': list(std)}


def cache_meta(image_root, vq_meta, partial=1.0, flip=True):
    """What a cache file must match to be reused: the VQGAN (vqgan_meta) and the image files."""
    paths = list_images(image_root, partial)
    return {'format': FORMAT, **vq_meta, 'n_images': len(paths), 'files': files_fingerprint(paths),
            'partial': float(partial), 'flip': bool(flip)}


@torch.no_grad()
def encode_folder(vqgan, image_root, partial, flip, mean, std, batch_size=64, num_workers=0):
    """Tokens int16 [n_images, views, h*w] of a folder's images (and their horizontal flips)."""
    ds = ImageDataset(image_root, partial, mean, std)
    dev = next(vqgan.parameters()).device
    out = []
    for x in tqdm(DataLoader(ds, batch_size=batch_size, num_workers=num_workers), desc=f"encode {image_root}",
                  leave=False):
        x = x.to(dev)
        views = [x, x.flip(-1)] if flip else [x]
        out.append(torch.stack([vqgan.encode_indices(v) for v in views], 1).to(torch.int16).cpu())  # [B, V, N]
    return torch.cat(out)


def load_tokens(image_root, vq_meta, cache_dir, get_vqgan, partial=1.0, flip=True, batch_size=64, num_workers=0,
                log=print):
    """Cached tokens of `image_root` as int16 [n_images * views, h*w]; (re)built when missing or stale.

    vq_meta: vqgan_meta() of the frozen VQGAN; get_vqgan: a callable returning that VQGAN, called only when
    the folder must be encoded.
    """
    meta = cache_meta(image_root, vq_meta, partial, flip)
    path = cache_path(cache_dir, image_root, partial, flip)
    if os.path.isfile(path):
        try:
            cached = load_checkpoint(path)
            old = cached['meta']
        except (ValueError, KeyError, TypeError) as e:
            log(f"token cache {path} is unreadable ({e}); re-encoding")
        else:
            changed = [k for k in meta if old.get(k) != meta[k]]
            if not changed:
                return cached['tokens'].flatten(0, 1)
            log(f"token cache {path} is stale ({', '.join(changed)} changed); re-encoding")
    vqgan = get_vqgan()
    if vqgan.num_codebook_vectors > torch.iinfo(torch.int16).max:
        raise ValueError(f"VQGAN has {vqgan.num_codebook_vectors} codes; the int16 token cache holds at most 32767")
    tokens = encode_folder(vqgan, image_root, partial, flip, meta['mean'], meta['std'], batch_size, num_workers)
    atomic_save({'meta': meta, 'tokens': tokens}, path)
    log(f"token cache {path}: {tokens.shape[0]} images x {tokens.shape[1]} views x {tokens.shape[2]} tokens")
    return tokens.flatten(0, 1)


@torch.no_grad()
def load_context_tokens(image_root, vq_meta, cache_dir, get_vqgan, bank, variants, seed, partial=1.0, batch_size=64,
                        log=print):
    """What inpainting will show the transformer outside a hole, for training: each image and its flip with
    `variants` holes from `bank` (pixel masks [M, 1, H, W], 1 = keep) filled with the course's grey and
    encoded whole, as inpainting.py encodes a masked image. Cached like load_tokens.

    Returns (context int16 [n_images * 2, variants, h*w], hole ids long [n_images * 2, variants] into `bank`);
    rows follow load_tokens(..., flip=True).
    """
    meta = cache_meta(image_root, vq_meta, partial, True)
    meta.update(context_variants=int(variants), context_seed=int(seed), bank_size=len(bank),
                bank_sha256=hashlib.sha256(bank.numpy().tobytes()).hexdigest())
    path = cache_path(cache_dir, image_root, partial, True).replace('.pt', f'_context{variants}.pt')
    if os.path.isfile(path):
        try:
            cached = load_checkpoint(path)
            if cached['meta'] == meta:
                return cached['context'].long(), cached['holes']
            log(f"context cache {path} is stale; re-encoding")
        except (ValueError, KeyError, TypeError) as e:
            log(f"context cache {path} is unreadable ({e}); re-encoding")
    vqgan = get_vqgan()
    dev = next(vqgan.parameters()).device
    fill = normalised_fill(meta['mean'], meta['std'], dev)
    ds = ImageDataset(image_root, partial, meta['mean'], meta['std'])
    holes = torch.randint(len(bank), (len(ds) * 2, variants), generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for x in tqdm(DataLoader(ds, batch_size=batch_size), desc=f"encode masked {image_root}", leave=False):
        x = x.to(dev)
        views = torch.stack([x, x.flip(-1)], 1).flatten(0, 1)                      # [2B, 3, H, W], rows as load_tokens
        h = holes[start:start + len(views)]                                        # [2B, V]
        start += len(views)
        masked = fill_holes(views[:, None], bank[h].to(dev), fill)                 # [2B, V, 3, H, W]
        tok = vqgan.encode_indices(masked.flatten(0, 1)).view(len(views), variants, -1)
        out.append(tok.to(torch.int16).cpu())
    context = torch.cat(out)
    atomic_save({'meta': meta, 'context': context, 'holes': holes}, path)
    log(f"context cache {path}: {context.shape[0]} sequences x {variants} masked variants")
    return context.long(), holes
