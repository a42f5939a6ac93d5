"""Files and runs: config loading, atomic writes, checkpoint I/O with hashes and export, seeding, the device.

The data (images, masks, datasets) is dataset.py's; figures are plots.py's.
"""
import contextlib
import glob
import hashlib
import math
import os
import random

import numpy as np
import torch
import yaml
from PIL import Image


# ----------------------------------------------------------------------------- config, files

def load_config(path):
    """YAML config as a dict; a missing or malformed file is a one-line error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config not found: {path}")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping, got {type(cfg).__name__}")
    return cfg


def _pid_alive(pid):
    """Whether a process with this id exists here (a process we may not signal exists too)."""
    if pid <= 0:
        return True  # not a pid we wrote: leave its file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def remove_stale_temps(path):
    """Remove the temporary files of `path` (`.NAME.tmpPID`, see atomic_open) whose process is dead:
    what a killed save leaves behind. Files of live processes (a save in progress) are kept.
    Returns the removed paths."""
    d, base = os.path.split(os.path.abspath(path))
    prefix = f'.{base}.tmp'
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(d, name))
                removed.append(os.path.join(d, name))
    return removed


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
    """open() on a temporary name in the same folder, renamed to `path` only when the block succeeds:
    a crash never leaves a torn file (folders are made as needed). Temporary files of `path` left by
    killed processes (kill -9 during a save) are removed first."""
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    remove_stale_temps(path)
    tmp = os.path.join(d, f'.{base}.tmp{os.getpid()}')
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    """torch.save, atomically. A `<path>.sha256` sidecar left from an earlier save_checkpoint is removed:
    it would no longer match (use save_checkpoint to write a new one)."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)
    with contextlib.suppress(FileNotFoundError):
        os.remove(f"{path}.sha256")


def atomic_save_image(img, path):
    """Save a PIL image (format from the extension of `path`) atomically."""
    with atomic_open(path, 'wb') as f:
        img.save(f, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])


def check_writable(path, flag, folder=False):
    """Raise a one-line ValueError naming `flag` unless `path` can be written, without creating anything:
    a folder (folder=True) or a file that exists or can be created in its nearest existing folder."""
    path = os.path.abspath(path)
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{flag} {path} is {'a file, not a folder' if folder else 'a folder, not a file'}")
    probe = path if folder else os.path.dirname(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} is not writable: no permission to write in {probe} (or read-only)")


def claim_run_dir(folder, patterns, resume=False, overwrite=False):
    """The files a fresh run into `folder` would replace (`patterns`: names or globs, with their .sha256
    sidecars), for the caller to remove (remove_files) once every other check has passed. A fresh run
    (no --resume) into a folder holding any of them is a one-line error unless --overwrite."""
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces one: give one of them")
    if resume:
        return []
    found = sorted({p for pat in patterns for p in glob.glob(os.path.join(glob.escape(folder), pat))})
    found += [f"{p}.sha256" for p in found if os.path.exists(f"{p}.sha256")]
    if found and not overwrite:
        names = ', '.join(os.path.basename(p) for p in found[:3]) + (', ...' if len(found) > 3 else '')
        raise ValueError(f"{folder} holds an earlier run ({names}): give --resume to continue it or --overwrite "
                         f"to replace it (or another folder)")
    return found


def remove_files(paths):
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


# ----------------------------------------------------------------------------- checkpoints

def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(paths):
    """sha256 over each file's name, size and mtime: cheap staleness check of a cache built from `paths`."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.basename(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_checkpoint(path, map_location='cpu'):
    """torch.load with weights_only=True; missing or unreadable files are one-line errors naming the file.

    A sidecar `<path>.sha256` (the shipped checkpoints have one) is verified before loading.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sidecar = f"{path}.sha256"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            want = (f.read().split() or [''])[0]
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"checkpoint {path} has SHA-256 {got[:16]}..., but {sidecar} says {want[:16]}...: "
                             f"the file is corrupt or was replaced")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise ValueError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from None


def save_checkpoint(obj, path):
    """torch.save, atomically, with a `<path>.sha256` sidecar (sha256sum's format) that load_checkpoint
    verifies: a corrupted checkpoint is then an error instead of loading silently.

    The old sidecar is removed before the new checkpoint replaces the old one, and the new sidecar is renamed
    in last: a crash at any point leaves a checkpoint that matches its sidecar or has none, never a pair that
    disagrees (which would make a good checkpoint unloadable)."""
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    sidecar = os.path.join(d, f'{base}.sha256')
    for target in (path, sidecar):
        remove_stale_temps(target)
    tmp, tmp_sidecar = (os.path.join(d, f'.{name}.tmp{os.getpid()}') for name in (base, f'{base}.sha256'))
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
        with open(tmp_sidecar, 'w') as f:
            f.write(f"{sha256_file(tmp)}  {base}\n")
        with contextlib.suppress(FileNotFoundError):
            os.remove(sidecar)
        os.replace(tmp, path)
        os.replace(tmp_sidecar, sidecar)
    finally:
        for t in (tmp, tmp_sidecar):
            if os.path.exists(t):
                os.remove(t)


def export_state_dict(state_dict, path, dtype=torch.float16):
    """A plain state_dict with floating tensors in `dtype`, written by save_checkpoint (atomically, with a
    `<path>.sha256` sidecar that load_checkpoint verifies)."""
    sd = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state_dict.items()}
    save_checkpoint(sd, path)
    return sd


def export_checkpoint(src, out, state_dict_of=lambda ck: ck, overwrite=False):
    """The --export of the training scripts: the state_dict in checkpoint `src` (picked by state_dict_of)
    written to `out` in fp16 with its sidecar, and a line saying so. `out` may not be `src` (the training
    checkpoint would be lost) nor, without --overwrite, any file that exists (e.g. a shipped checkpoint)."""
    if not out:
        raise ValueError("--export needs --out")
    if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
        raise ValueError(f"--out {out} is the checkpoint being exported: writing it would lose the training "
                         f"state; give another --out")
    if os.path.lexists(out) and not overwrite:
        raise ValueError(f"--out {out} exists: give another path, or --overwrite to replace it")
    check_writable(out, '--out')
    sd = export_state_dict(state_dict_of(load_checkpoint(src)), out)
    tensors = [v for v in sd.values() if torch.is_tensor(v)]  # besides e.g. a model's class names
    print(f"wrote {out}: {len(tensors)} tensors, {sum(v.numel() for v in tensors) / 1e6:.2f}M values, fp16")


# Entries a checkpoint carries beside a module's own keys (record, not weights): the transformer's tokenizer hash.
RECORD_KEYS = ('tokenizer_sha256',)


def load_state_dict_checked(module, state_dict, source):
    """Strict load whose error names the first missing/unexpected/mismatching key and both shapes (entries
    that are not tensors, such as a module's extra state, have their type for a shape). RECORD_KEYS are
    not the module's and are skipped."""
    state_dict = {k: v for k, v in state_dict.items() if k not in RECORD_KEYS}
    own = module.state_dict()
    shape = lambda v: tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
    for k, v in state_dict.items():
        if k not in own:
            raise ValueError(f"{source}: unexpected key '{k}' (shape {shape(v)}) not in the model; "
                             f"does the checkpoint match the config?")
        if shape(own[k]) != shape(v):
            raise ValueError(f"{source}: key '{k}' has shape {shape(v)} in the checkpoint "
                             f"but {shape(own[k])} in the model built from the config")
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ValueError(f"{source}: key '{missing[0]}' (shape {shape(own[missing[0]])}) is missing "
                         f"from the checkpoint ({len(missing)} missing in all)")
    try:
        module.load_state_dict(state_dict, strict=True)
    except ValueError as e:  # a module's own check of its extra state
        raise ValueError(f"{source}: {e}") from None
    return module


# ----------------------------------------------------------------------------- runs

def lr_factor(step, warmup, total):
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name=None):
    """'cuda' when available and not overridden; a request for CUDA without CUDA is an error."""
    if name in (None, '', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(name)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for CUDA, but torch sees no GPU here (use --device cpu)")
    return dev
