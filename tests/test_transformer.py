"""Bidirectional transformer, MaskGit masking/loss, token cache and training_transformer.py (tiny configs, CPU)."""
import argparse
import math
import os
import socket
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
import yaml
from PIL import Image

import training_transformer as tt
from benchmarks.flops import peak_tflops
from conftest import COURSE_TRAIN, ROOT, TINY_VQ, K, N, interrupt_then_resume, run_args, tiny_mp
from dataset import ImageDataset, data_stats
from models.maskgit import MaskGit, gamma_func, mvtm_loss
from models.token_cache import TOKENIZER_PREFIXES, cache_path, load_tokens, tokenizer_sha256, vqgan_meta
from models.transformer import BidirectionalTransformer, MultiHeadAttention
from models.vqgan import VQGAN, load_vqgan
from utils import load_checkpoint, load_config, sha256_file

torch.set_num_threads(1)

SETTINGS = dict(COURSE_TRAIN, batch_size=4, accum_grad=2)


def same_entries(a, b):
    """Two state dicts hold the same keys, equal tensors and equal records (the tokenizer's hash)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


@pytest.fixture(scope='module')
def lab(make_lab):
    """Tiny image folders (and an empty one), a random-init tiny VQGAN and a MaskGit config: 2 epochs, saving each."""
    d = make_lab(TINY_VQ, tiny_mp(dropout=0.1), epochs=2, batch_size=4, accum_grad=1, learning_rate=3e-3,
                 warmup_steps=2, save_per_epoch=1)
    (d / 'empty').mkdir()
    return d


# ----------------------------------------------------------------------------- model

def torch_reference_attention(att):
    """torch.nn.MultiheadAttention (float64) holding the weights of our MultiHeadAttention: an independent
    reference for the projections, head split, scale, softmax and head merge (only the test uses it)."""
    dim = att.out.in_features
    ref = torch.nn.MultiheadAttention(dim, att.num_heads, dropout=0.0, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(att.qkv.weight)  # [3*dim, dim]: the rows of Q, K, V stacked, as in our fused qkv
        ref.in_proj_bias.copy_(att.qkv.bias)
        ref.out_proj.weight.copy_(att.out.weight)
        ref.out_proj.bias.copy_(att.out.bias)
    return ref.eval()


@pytest.mark.parametrize('explicit', [False, True], ids=['sdpa', 'explicit'])
def test_attention_equals_torch_multihead_attention(explicit):
    torch.manual_seed(0)
    att = MultiHeadAttention(32, 4, attn_drop=0.0).double().eval()
    att.explicit = explicit
    with torch.no_grad():
        att.qkv.weight.mul_(3.0)  # peakier attention (scores of a few units), so a missing 1/sqrt(d) shows
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    want = torch_reference_attention(att)(x, x, x, need_weights=False)[0]
    # float64: outputs are O(1) and each of the 4 chained reductions has at most 32 terms, so the two
    # implementations differ by ~1e-14 (eps 1.1e-16; measured 1.3e-15); 1e-12 leaves a 100x margin, while
    # a missing 1/sqrt(d) moves them by 1.1 here. (In fp32 the same bound is ~1e-5 and CPU-dependent.)
    torch.testing.assert_close(att(x), want, rtol=0, atol=1e-12)


def test_transformer_sdpa_equals_explicit_attention():
    # whole model, with dropout layers present but in eval mode; float64 for the reason above
    tr = BidirectionalTransformer(dict(tiny_mp(dropout=0.1)['Transformer_param'])).double().eval()
    z = torch.randint(0, K + 1, (2, N), generator=torch.Generator().manual_seed(0))
    a = tr(z)
    tr.set_explicit_attention(True)
    torch.testing.assert_close(a, tr(z), rtol=0, atol=1e-12)
    assert a.shape == (2, N, K + 1)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in tr.modules())


@pytest.mark.parametrize('explicit', [False, True], ids=['sdpa', 'explicit'])
def test_transformer_is_bidirectional(explicit):
    """Each token sees every other: a change at the last position moves the logits at the first and at
    every other position, and a change at the first moves the last (a causal or local mask would not)."""
    torch.manual_seed(0)
    tr = BidirectionalTransformer(dict(tiny_mp()['Transformer_param'])).double().eval()
    tr.set_explicit_attention(explicit)
    z = torch.randint(0, K, (1, N))
    base = tr(z)[0]
    for pos in (N - 1, 0):
        other = z.clone()
        other[0, pos] = K  # the mask token
        moved = (tr(other)[0] - base).abs().amax(-1)  # [N]
        # positions that cannot see `pos` would move by exactly 0 (float64 noise ~1e-16); here they move ~1e-4
        assert (moved[torch.arange(N) != pos] > 1e-9).all(), (pos, moved)


@pytest.mark.parametrize('n', [N, 9])
def test_flops_per_token_equals_counted_matmuls(n):
    # the MFU figures of the benchmarks divide by this count: it must equal what the forward pass runs
    from torch.utils.flop_counter import FlopCounterMode
    tr = BidirectionalTransformer(dict(tiny_mp()['Transformer_param'], hidden_dim=48)).eval()
    tr.set_explicit_attention(True)  # FlopCounterMode does not count the CPU SDPA kernel
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tr(torch.randint(0, K + 1, (3, n)))
    assert counter.get_total_flops() == 3 * n * tr.flops_per_token(n)


def test_peak_tflops_given_or_measured():
    cpu = torch.device('cpu')
    assert peak_tflops(cpu, torch.float32, given=12.5) == (12.5, 'given')
    tflops, source = peak_tflops(cpu, torch.float32, size=256)
    assert 0 < tflops < 100 and source == 'measured float32 256^3 matmul'


def test_course_config_keys_match_manifest(course_manifest):
    cfg = yaml.safe_load((ROOT / 'configs' / 'MaskGit.yml').read_text())
    with torch.device('meta'):
        model = MaskGit(cfg['model_param'])
    ours = [(k, tuple(v.shape)) for k, v in model.transformer.state_dict().items() if '.MultiHeadAttention.' not in k]
    assert ours == course_manifest('transformer_state_dict_keys.txt')
    assert model.mask_token_id == 1024


@pytest.mark.parametrize('mode,half', [('cosine', math.cos(math.pi / 4)), ('linear', 0.5), ('square', 0.75),
                                       ('arccos', 2 / 3), ('root', 1 - math.sqrt(0.5))])
def test_gamma_values_and_monotone(mode, half):
    g = gamma_func(mode)
    assert g(0.0) == pytest.approx(1.0) and g(1.0) == pytest.approx(0.0, abs=1e-12)
    assert g(0.5) == pytest.approx(half)
    ys = g(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert (ys[1:] < ys[:-1]).all()


def test_gamma_unknown_mode():
    with pytest.raises(ValueError, match="unknown gamma_type 'cos'"):
        gamma_func('cos')


def test_mask_counts_are_per_sample():
    torch.manual_seed(0)
    m = MaskGit(tiny_mp())
    z = torch.randint(0, K, (6, N))
    r = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 0.999])
    masked, mask = m.mask_tokens(z, r)
    expect = torch.tensor([math.ceil(math.cos(math.pi * v / 2) * N) for v in r.tolist()])
    assert torch.equal(mask.sum(1), expect)
    assert (masked[mask] == m.mask_token_id).all() and torch.equal(masked[~mask], z[~mask])
    # forward draws one ratio per sample: counts differ across a batch; targets are the real tokens
    logits, target, mask = m(torch.randint(0, K, (64, N)))
    assert mask.sum(1).unique().numel() > 3
    assert logits.shape == (64, N, K + 1) and target.max() < K


def test_loss_ignores_unmasked_and_mask_id_is_never_a_class():
    torch.manual_seed(0)
    logits = torch.randn(4, N, K + 1, requires_grad=True)
    target = torch.randint(0, K, (4, N))
    mask = torch.rand(4, N) < 0.5
    loss = mvtm_loss(logits, target, mask, K)
    loss.backward()
    g = logits.grad
    assert g[~mask].abs().max() == 0 and g[mask].abs().max() > 0
    assert g[..., K].abs().max() == 0  # the mask id column gets no gradient: it is not a class
    other = logits.detach().clone()
    other[~mask] += 100 * torch.randn_like(other[~mask])
    other[..., K] = 1e4  # a huge mask-id logit changes nothing
    assert mvtm_loss(other, target, mask, K).item() == pytest.approx(loss.item())
    assert mvtm_loss(logits, target, mask, K, masked_only=False).item() != pytest.approx(loss.item())
    with pytest.raises((IndexError, RuntimeError)):
        mvtm_loss(logits, torch.full_like(target, K), mask, K)  # the mask id as a target is rejected


def test_short_run_overfits_tiny_token_set():
    """100 steps on 2 random sequences: loss falls far below its start (ln 16 = 2.77), accuracy far above 1/16."""
    torch.manual_seed(0)
    raw = MaskGit(tiny_mp())
    tokens = torch.randint(0, K, (2, N))
    held = tokens.repeat(32, 1)  # the same 2 sequences under 64 fixed masks: a steadier estimate
    s = dict(SETTINGS, batch_size=2, accum_grad=1, learning_rate=3e-3)
    opt = tt.make_optimizer(raw, s, torch.device('cpu'))
    before = tt.evaluate(raw, held, s, 0, 1, 0, torch.device('cpu'))[0]
    for step in range(100):
        tt.accumulate_grads(raw, raw, tokens, torch.arange(2), 0, step, s, 0, 1, 0, torch.device('cpu'))
        opt.step()
        opt.zero_grad()
    after, acc = tt.evaluate(raw, held, s, 0, 1, 0, torch.device('cpu'))[:2]  # (loss, acc, hole acc)
    assert before > 2.5 and after < 0.5 * before and acc > 0.45, (before, after, acc)


def test_bf16_autocast_on_cpu_trains():
    """--amp bf16 on CPU really runs the transformer in bf16, and 60 steps still learn (auto stays fp32 on CPU)."""
    cpu = torch.device('cpu')
    assert tt.amp_setup(cpu, 'auto')[0] is nullcontext
    autocast, scaler = tt.amp_setup(cpu, 'bf16')
    torch.manual_seed(0)
    raw = MaskGit(tiny_mp())
    tokens = torch.randint(0, K, (2, N))
    seen = []
    linear = next(m for m in raw.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with autocast():
        raw(tokens)
    assert seen == [torch.bfloat16]
    s = dict(SETTINGS, batch_size=2, accum_grad=1, learning_rate=3e-3)
    opt = tt.make_optimizer(raw, s, cpu)
    before = tt.evaluate(raw, tokens.repeat(32, 1), s, 0, 1, 0, cpu, autocast)[0]
    for step in range(60):
        tt.accumulate_grads(raw, raw, tokens, torch.arange(2), 0, step, s, 0, 1, 0, cpu, autocast, scaler)
        opt.step()
        opt.zero_grad()
    after = tt.evaluate(raw, tokens.repeat(32, 1), s, 0, 1, 0, cpu, autocast)[0]
    assert torch.isfinite(torch.tensor(after)) and after < 0.7 * before, (before, after)


# ----------------------------------------------------------------------------- DDP

def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _grads(world, rank, tokens, s):
    torch.manual_seed(0)
    raw = MaskGit(tiny_mp()).double()  # float64: see the tolerance in the test below
    model = torch.nn.parallel.DistributedDataParallel(raw) if world > 1 else raw
    order = tt.epoch_order(len(tokens), 1, 0, world, rank)
    loss = tt.accumulate_grads(model, raw, tokens, order, 0, 3, s, 0, world, rank, torch.device('cpu'))
    return {n: p.grad.clone() for n, p in raw.named_parameters()}, loss


def _ddp_worker(rank, world, port, tokens, s, out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    grads, _ = _grads(world, rank, tokens, s)
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()  # neither rank tears gloo down while the other still uses it (else: SIGABRT at exit)
    dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_global_batch(tmp_path):
    torch.manual_seed(1)
    tokens = torch.randint(0, K, (40, N))
    s = dict(SETTINGS, batch_size=3, accum_grad=2)
    tmp_mp.spawn(_ddp_worker, args=(2, _free_port(), tokens, s, str(tmp_path / 'g.pt')), nprocs=2)
    ddp = torch.load(tmp_path / 'g.pt')
    single, _ = _grads(1, 0, tokens, dict(s, batch_size=6))
    assert ddp.keys() == single.keys()
    # The two runs differ only in summation order (per-rank sums + all-reduce vs one sum). The model runs
    # in float64 (~1e-16 per rounding, < 200 terms per gradient entry); the one fp32 step, the
    # cross-entropy of mvtm_loss, acts row by row on the same float32 logits in both runs, and could at
    # worst move an entry by one fp32 ulp (6e-8 relative). rtol=1e-6, atol=1e-9 cover that with margin and
    # no CPU's kernels can reach them; a wrong normaliser or gradient sync is off by O(1) relative.
    for k in single:
        assert ddp[k].dtype == torch.float64
        torch.testing.assert_close(ddp[k], single[k], atol=1e-9, rtol=1e-6, msg=k)
    assert sum(g.abs().sum() for g in single.values()) > 0


# ----------------------------------------------------------------------------- token cache

def test_token_cache_flips_reuse_and_stale_rebuild(lab, tmp_path):
    vq = load_vqgan(str(lab / 'vq.yml'), str(lab / 'vq.pt'))
    calls, logs = [], []

    def get_vqgan():
        calls.append(1)
        return vq
    vq_cfg = load_config(lab / 'vq.yml')
    kw = dict(cache_dir=str(tmp_path), get_vqgan=get_vqgan, log=logs.append)
    tok = load_tokens(str(lab / 'train'), vqgan_meta(vq_cfg, lab / 'vq.pt'), **kw)
    assert tok.shape == (24, N) and len(calls) == 1
    x = torch.stack([ImageDataset(str(lab / 'train'), 1.0, *data_stats({}))[i] for i in range(2)])
    assert torch.equal(tok[:4].long(), torch.stack([vq.encode_indices(x), vq.encode_indices(x.flip(-1))], 1).flatten(0, 1))
    again = load_tokens(str(lab / 'train'), vqgan_meta(vq_cfg, lab / 'vq.pt'), **kw)
    assert torch.equal(again, tok) and len(calls) == 1
    # MaskGit on images runs the same frozen VQGAN; a VQGAN with other codes is refused
    m = MaskGit(tiny_mp(), vq)
    assert torch.equal(m.encode_to_z(x)[1], tok[0:4:2].long()) and m(x)[1].shape == (2, N)
    with pytest.raises(ValueError, match='num_codebook_vectors=32 but the VQGAN has 16 codes'):
        MaskGit(tiny_mp(k=32), vq)
    # another decoder (a --decoder-only fine-tune): same tokens, the cache is kept
    sd = VQGAN(TINY_VQ).state_dict()
    sd.update({k: v for k, v in load_checkpoint(lab / 'vq.pt').items() if k.startswith(TOKENIZER_PREFIXES)})
    torch.save(sd, tmp_path / 'new_decoder.pt')
    assert torch.equal(load_tokens(str(lab / 'train'), vqgan_meta(vq_cfg, tmp_path / 'new_decoder.pt'), **kw), tok)
    assert len(calls) == 1
    # another encoder or codebook: the cache is stale and re-encoded in place
    for i, key in enumerate(['encoder.', 'codebook.']):
        sd = load_checkpoint(lab / 'vq.pt')
        name = next(k for k in sd if k.startswith(key))
        sd[name] = sd[name] + 1e-3
        torch.save(sd, tmp_path / f'other{i}.pt')
        load_tokens(str(lab / 'train'), vqgan_meta(vq_cfg, tmp_path / f'other{i}.pt'), **kw)
        assert len(calls) == 2 + i and any('stale' in m and 'tokenizer_sha256' in m for m in logs)
        meta = load_checkpoint(cache_path(str(tmp_path), str(lab / 'train')))['meta']
        assert meta['tokenizer_sha256'] == tokenizer_sha256(tmp_path / f'other{i}.pt')


# ----------------------------------------------------------------------------- training script

def test_resume_equals_uninterrupted(lab, tmp_path, monkeypatch):
    full = tt.main(run_args(lab, tmp_path / 'a', '--accum-grad', '2'))
    assert full['step'] == 2 * 3  # 24 sequences / (4 x 2) per step, 2 epochs
    rows = full['rows']
    assert len(rows) == 2
    # 6 steps at lr 3e-3 learn: both losses fall from epoch 1 to 2 (measured 2.63 -> 2.26 train, 2.34 -> 2.19
    # val); the val loss uses the same fixed masks every epoch, so its fall is not mask luck
    assert rows[1]['train_loss'] < rows[0]['train_loss'] and rows[1]['val_loss'] < rows[0]['val_loss'], rows
    assert (tmp_path / 'a' / 'log.csv').read_text().count('\n') == 3
    assert Image.open(tmp_path / 'a' / 'loss_curve.png').size == (640, 400)

    saved, resumed = interrupt_then_resume(lab, tmp_path / 'b', monkeypatch, '--accum-grad', '2')
    assert saved == 4  # mid-epoch 2
    a = load_checkpoint(tmp_path / 'a' / 'last_ckpt.pt')
    b = load_checkpoint(tmp_path / 'b' / 'last_ckpt.pt')
    assert same_entries(a, b)
    assert load_checkpoint(tmp_path / 'b' / 'train_state.pt')['tokenizer_sha256'] == tokenizer_sha256(lab / 'vq.pt')
    assert [r['train_loss'] for r in resumed['rows']] == [r['train_loss'] for r in rows]
    sa, sb = (load_checkpoint(p / 'train_state.pt') for p in (tmp_path / 'a', tmp_path / 'b'))
    assert all(torch.equal(x, y) for x, y in zip(sa['optimizer']['state'][0].values(), sb['optimizer']['state'][0].values()))
    assert set(os.listdir(tmp_path / 'a')) >= {'last_ckpt.pt', 'transformer_epoch_1.pt', 'transformer_epoch_2.pt'}


def test_export_writes_fp16_state_dict_with_verified_hash(tmp_path):
    sd = MaskGit(tiny_mp()).transformer.state_dict()
    torch.save(dict(transformer=sd, epoch=2), tmp_path / 'train_state.pt')  # train_state.pt's layout
    out = tmp_path / 'ship' / 'tr.pt'
    tt.main(['--export', str(tmp_path / 'train_state.pt'), '--out', str(out)])
    exported = load_checkpoint(out)  # verifies out.sha256
    assert exported.keys() == sd.keys()
    # fp32 -> fp16 is IEEE round-to-nearest on every machine: the export must equal that rounding exactly
    assert all(v.dtype == torch.float16 and torch.equal(v, sd[k].half()) for k, v in exported.items())
    assert (tmp_path / 'ship' / 'tr.pt.sha256').read_text().split() == [sha256_file(out), 'tr.pt']


def test_nan_loss_stops_and_keeps_last_good_checkpoint(lab, tmp_path, monkeypatch):
    real, calls = tt.mvtm_loss, []

    def nan_in_epoch_2(*a, **kw):
        loss = real(*a, **kw)
        calls.append(1)
        return loss * float("nan") if len(calls) > 7 else loss  # epoch 1: 3 steps x 2 + 1 validation
    monkeypatch.setattr(tt, 'mvtm_loss', nan_in_epoch_2)
    with pytest.raises(tt.TrainingDiverged, match=r'loss nan .* epoch 2.*last good checkpoint'):
        tt.main(run_args(lab, tmp_path, '--accum-grad', '2', '--save-per-epoch', '1'))
    state = load_checkpoint(tmp_path / 'train_state.pt')
    assert state['epoch'] == 1
    last = load_checkpoint(tmp_path / 'last_ckpt.pt')
    assert same_entries(last, state['transformer'])
    assert not (tmp_path / 'transformer_epoch_2.pt').exists()


def test_bad_inputs_give_clear_errors(lab, tmp_path):
    with pytest.raises(FileNotFoundError, match='VQGAN checkpoint not found: .*missing.pt'):
        tt.main(run_args(lab, tmp_path, '--vqgan-ckpt', str(tmp_path / 'missing.pt')))
    cfg = yaml.safe_load((lab / 'mg.yml').read_text())
    cfg['model_param'].update(tiny_mp(k=32), VQ_Configs=cfg['model_param']['VQ_Configs'])
    (tmp_path / 'k32.yml').write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match='num_codebook_vectors 32.*does not match VQGAN config'):
        tt.main(run_args(lab, tmp_path, '--MaskGitConfig', str(tmp_path / 'k32.yml')))
    torch.save(VQGAN(dict(TINY_VQ, latent_dim=4)).state_dict(), tmp_path / 'wrong.pt')  # ckpt of another VQGAN
    with pytest.raises(ValueError, match=r"wrong.pt: key '.*' has shape"):
        tt.main(run_args(lab, tmp_path, '--vqgan-ckpt', str(tmp_path / 'wrong.pt')))
    with pytest.raises(ValueError, match='no image files in .*empty'):
        tt.main(run_args(lab, tmp_path, '--train_d_path', str(lab / 'empty')))
    with pytest.raises(ValueError, match='64 samples per optimizer step, but .* gives only 24'):
        tt.main(run_args(lab, tmp_path, '--batch-size', '32', '--accum-grad', '2'))
    with pytest.raises(ValueError, match='--amp fp16 needs CUDA'):
        tt.main(run_args(lab, tmp_path, '--amp', 'fp16'))
    # from the command line: one line on stderr, non-zero exit
    p = subprocess.run([sys.executable, str(ROOT / 'training_transformer.py'),
                        *run_args(lab, tmp_path, '--vqgan-ckpt', str(tmp_path / 'missing.pt'))],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.strip().count('\n') == 0 and 'VQGAN checkpoint not found' in p.stderr


def test_training_settings_have_one_home(tmp_path):
    """configs/MaskGit.yml's train: section is every config's defaults: the course's config (no train:) trains
    with them, a config's own key overrides only that key, and a flag overrides both."""
    flags = lambda **kw: argparse.Namespace(**{**dict.fromkeys(tt.FLAG_KEYS), **kw})
    course_model_only = {'model_param': load_config(ROOT / 'configs' / 'MaskGit.yml')['model_param']}
    assert tt.train_settings(course_model_only, flags()) == COURSE_TRAIN
    small = load_config(ROOT / 'configs' / 'MaskGit_small.yml')
    assert set(small['train']) <= set(COURSE_TRAIN)                   # no key that only one config knows
    s = tt.train_settings({'train': {'label_smoothing': 0.2}}, flags(epochs=3))
    assert s == dict(COURSE_TRAIN, label_smoothing=0.2, epochs=3)


def test_a_run_parses_the_vqgan_config_and_hashes_its_checkpoint_once(lab, tmp_path, monkeypatch):
    """A run that encodes (a fresh cache: train, val and the val holes) still reads vq.yml and hashes vq.pt once."""
    import models.token_cache
    import utils
    parsed, hashed = [], []
    safe_load, sha256 = yaml.safe_load, utils.sha256_file
    monkeypatch.setattr(yaml, 'safe_load', lambda f: parsed.append(os.path.basename(getattr(f, 'name', ''))) or
                        safe_load(f))
    tok_sha = models.token_cache.tokenizer_sha256
    monkeypatch.setattr(utils, 'sha256_file', lambda p, *a: hashed.append(os.path.basename(p)) or sha256(p, *a))
    monkeypatch.setattr(models.token_cache, 'tokenizer_sha256', lambda p: hashed.append(os.path.basename(p)) or tok_sha(p))
    tt.main(run_args(lab, tmp_path, '--cache-dir', str(tmp_path / 'cache'), '--epochs', '1'))
    assert (tmp_path / 'log.csv').is_file() and len(os.listdir(tmp_path / 'cache')) == 2
    assert parsed.count('vq.yml') == 1 and parsed.count('mg.yml') == 1 and hashed.count('vq.pt') == 1, (parsed, hashed)


# ----------------------------------------------------------------------------- a transformer moved onto new codes

def test_remap_codes_gives_each_group_of_new_codes_the_old_codes_probability():
    """New code 2i or 2i+1 stands for old code i: the remapped model, read on the new tokens, gives each pair
    exactly the probability the old model gave i on the old tokens (tied head + log p(j | i) in the bias)."""
    from models.transformer import remap_codes
    torch.manual_seed(0)
    old = BidirectionalTransformer(tiny_mp(k=8)['Transformer_param']).eval()
    old.bias.data.normal_(0, 1)
    new = BidirectionalTransformer(tiny_mp(k=16)['Transformer_param']).eval()
    old_tokens = torch.randint(0, 8, (64, N))
    new_tokens = 2 * old_tokens + (torch.rand(64, N) < 0.3).long()                 # 2i+1 rarer than 2i
    sd, m = remap_codes(old.state_dict(), new_tokens, old_tokens, 16)
    assert m.tolist() == [j // 2 for j in range(16)]
    new.load_state_dict(sd)
    x_old, x_new = old_tokens[:4].clone(), new_tokens[:4].clone()
    x_old[:, ::3], x_new[:, ::3] = 8, 16                                             # some masked positions
    with torch.no_grad():
        p_old = old(x_old).softmax(-1)                                               # [4, N, 9]
        p_new = new(x_new).softmax(-1)                                               # [4, N, 17]
    grouped = torch.cat([p_new[..., :16].unflatten(-1, (8, 2)).sum(-1), p_new[..., 16:]], -1)
    torch.testing.assert_close(grouped, p_old, atol=1e-6, rtol=1e-5)
    n0, n1 = [(new_tokens == j).sum().item() + 1 for j in (0, 1)]                  # counts + 1, as documented
    ratio = (p_new[..., 1] / p_new[..., 0]).flatten()
    torch.testing.assert_close(ratio, torch.full_like(ratio, n1 / n0), rtol=1e-4, atol=0)


def test_remap_codes_matches_a_naive_count_and_refuses_mismatched_tokens():
    from models.transformer import remap_codes
    g = torch.Generator().manual_seed(1)
    old_tokens, new_tokens = torch.randint(0, 5, (20, 6), generator=g), torch.randint(0, 7, (20, 6), generator=g)
    sd = {'tok_emb.weight': torch.randn(6, 3, generator=g), 'bias': torch.randn(6, 6, generator=g), 'x': torch.ones(1)}
    out, m = remap_codes(sd, new_tokens, old_tokens, 7)
    for j in range(7):
        counts = [0] * 5
        for a, b in zip(new_tokens.flatten().tolist(), old_tokens.flatten().tolist()):
            counts[b] += a == j
        i = counts.index(max(counts))                                                # first maximum, as argmax
        assert m[j] == i and torch.equal(out['tok_emb.weight'][j], sd['tok_emb.weight'][i])
    assert torch.equal(out['tok_emb.weight'][7], sd['tok_emb.weight'][5])             # the mask token
    assert torch.equal(out['bias'][:, 7], sd['bias'][:, 5]) and out['x'] is sd['x']
    with pytest.raises(ValueError, match='differ in shape'):
        remap_codes(sd, new_tokens[:5], old_tokens, 7)


def test_init_codes_from_starts_a_new_tokenizer_run_from_the_old_model(lab, tmp_path):
    """--init-from a model of the lab's 16-code tokenizer, --init-codes-from its config, on a 32-code tokenizer,
    at learning rate 0: the saved weights are the old ones with every new code on an old code's embedding and
    bias offsets log p(j | i) that sum to 1 over each old code's group."""
    cfg = yaml.safe_load((lab / 'mg.yml').read_text())
    vq32 = dict(TINY_VQ, num_codebook_vectors=32)
    (tmp_path / 'vq32.yml').write_text(yaml.safe_dump({'model_param': vq32}))
    torch.manual_seed(1)
    torch.save(VQGAN(vq32).state_dict(), tmp_path / 'vq32.pt')
    mp = tiny_mp(dropout=0.1, k=32)
    mp['VQ_Configs'] = dict(VQ_config_path=str(tmp_path / 'vq32.yml'), VQ_CKPT_path=str(tmp_path / 'vq32.pt'))
    (tmp_path / 'mg32.yml').write_text(yaml.safe_dump({'model_param': mp, 'train': dict(cfg['train'], epochs=1,
                                                                                          learning_rate=0.0)}))
    torch.manual_seed(2)
    old = MaskGit(tiny_mp(dropout=0.1)).transformer.state_dict()
    old['bias'].normal_(0, 1)
    torch.save(old, tmp_path / 'old.pt')
    args = ['--MaskGitConfig', str(tmp_path / 'mg32.yml'), '--train_d_path', str(lab / 'train'), '--val_d_path',
            str(lab / 'val'), '--checkpoint-path', str(tmp_path / 'run' / 'last_ckpt.pt'), '--device', 'cpu',
            '--num_workers', '0', '--init-from', str(tmp_path / 'old.pt')]
    with pytest.raises(ValueError, match='give --init-from too'):
        tt.main([a for a in args if a not in ('--init-from', str(tmp_path / 'old.pt'))] +
                ['--init-codes-from', str(lab / 'mg.yml')])
    tt.main(args + ['--init-codes-from', str(lab / 'mg.yml')])
    new = load_checkpoint(tmp_path / 'run' / 'last_ckpt.pt')
    emb_old, emb_new = old['tok_emb.weight'], new['tok_emb.weight']                   # [17, C], [33, C]
    m = torch.cdist(emb_new[:32].float(), emb_old[:16]).argmin(1)                     # which old row each copies
    torch.testing.assert_close(emb_new[:32].float(), emb_old[m])
    torch.testing.assert_close(emb_new[32], emb_old[16])
    offset = new['bias'][:, :32] - old['bias'][:, m]                                  # [N, 32]: log p(j | m(j))
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), atol=1e-5, rtol=0)
    group = torch.zeros(16).index_add_(0, m, offset[0].exp())
    torch.testing.assert_close(group[m.unique()], torch.ones(m.unique().numel()), atol=1e-5, rtol=0)
    assert all(torch.equal(new[k], old[k]) for k in old if k not in ('tok_emb.weight', 'bias'))


def test_tokenizer_hash_of_a_channels_last_checkpoint_equals_the_plain_ones(tmp_path):
    """A 1x1 conv weight saved channels-last (as a model moved to channels_last exports it) is 'contiguous' with
    a last stride of 64: the hash must read its values, not refuse it, and equal the plain copy's."""
    torch.manual_seed(0)
    sd = VQGAN(TINY_VQ).state_dict()
    plain = {k: v.half() for k, v in sd.items()}
    cl = {k: (v.to(memory_format=torch.channels_last) if v.dim() == 4 else v).half() for k, v in sd.items()}
    assert cl['quant_conv.weight'].stride()[-1] != 1
    torch.save(plain, tmp_path / 'plain.pt')
    torch.save(cl, tmp_path / 'cl.pt')
    assert tokenizer_sha256(tmp_path / 'cl.pt') == tokenizer_sha256(tmp_path / 'plain.pt')
