"""Every sweet spot from one decode (models/decoding.py decode(completed=True)), the --total-iter bound, and
benchmarks/sweep_schedules.py end to end on a tiny lab."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline
from conftest import random_problem
from benchmarks import sweep_schedules as sw
from dataset import PairedTestDataset, data_stats, tensor01_to_pil
from models.decoding import DecodeSettings, decode, image_seeds
from models.transformer import BidirectionalTransformer
from test_eval_inpainting import hole, pooled_fid, write_split  # noqa: F401 (pooled_fid: a fixture)

K, N, CLASSES = 16, 16, 3
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def transformer():
    """A tiny random class-conditional transformer, every weight drawn large: each token's logits depend on the
    others (a filled token moves the argmax of its neighbours), eval mode."""
    torch.manual_seed(0)
    m = BidirectionalTransformer(dict(num_image_tokens=N, num_codebook_vectors=K, dim=32, n_layers=1, hidden_dim=64,
                                      num_heads=4, num_classes=CLASSES)).eval()
    with torch.no_grad():
        for w in m.parameters():
            w.normal_(0, 0.5)
    return m




@pytest.mark.parametrize('mask_func, T, kw', [
    ('cosine', 6, dict()),
    ('linear', 5, dict(temperature=1.5, choice_temperature=2.0)),
    ('square', 7, dict(choice_temperature=0.0)),
    ('cosine', 4, dict(cfg_scale=2.0, cfg_schedule='linear')),   # the fill pass's guidance weight is step s+1's
])
def test_completed_states_are_every_sweet_spot(transformer, mask_func, T, kw):
    tokens, unknown = random_problem(K, N, [16, 9, 3, 0])  # a row with nothing to fill, one with fewer tokens than steps
    seeds = image_seeds(3, [5, 1, 7, 2])
    cond = (torch.tensor([0, 2, 1, 3]), CLASSES) if 'cfg_scale' in kw else ()
    fn = (lambda t, labels: transformer(t, labels)) if cond else transformer
    base = DecodeSettings(total_iter=T, mask_func=mask_func, **kw)
    schedule = base.schedule(unknown.sum(1))
    every = decode(fn, tokens, unknown, seeds, K, schedule, base, *cond, completed=True)
    assert every.completed.shape == (T, 4, N) and torch.equal(every.completed[-1], every.tokens)
    fills = 0
    for s in range(1, T + 1):
        one = decode(fn, tokens, unknown, seeds, K, schedule, DecodeSettings(**{**base.__dict__, 'sweet_spot': s}),
                     *cond)
        assert torch.equal(every.completed[s - 1], one.tokens), s
        fills += s < T and not torch.equal(one.tokens, every.tokens)
    assert fills  # the sweet spots differ from the full decode: the check above compares something
    assert decode(fn, tokens, unknown, seeds, K, schedule, base, *cond).completed is None


def test_completed_needs_all_steps(transformer):
    tokens, unknown = random_problem(K, N, [10])
    s = DecodeSettings(total_iter=4, sweet_spot=2)
    with pytest.raises(ValueError, match='completed'):
        decode(transformer, tokens, unknown, image_seeds(0, [0]), K, s.schedule(unknown.sum(1)), s, completed=True)


def test_total_iter_is_bounded_by_the_token_count(transformer):
    """Steps past the token count cannot unmask anything: refused in one line naming --total-iter and the bound,
    by decode (the tokens' count) and by from_config (the model's num_image_tokens, before any decoding)."""
    tokens, unknown = random_problem(K, N, [16])
    s = DecodeSettings(total_iter=N + 1)
    with pytest.raises(ValueError, match=rf'^--total-iter must be at most {N} .*got {N + 1}$'):
        decode(transformer, tokens, unknown, image_seeds(0, [0]), K, s.schedule(unknown.sum(1)), s)
    with pytest.raises(ValueError, match=rf'^--total-iter must be at most 256 .*got 100000$'):
        DecodeSettings.from_config(dict(num_image_tokens=256), total_iter=100000)
    with pytest.raises(ValueError, match='--total-iter must be at most 256'):
        DecodeSettings.from_config(dict(num_image_tokens=256, total_iter=300))   # the config's own value too
    assert DecodeSettings.from_config(dict(num_image_tokens=256), total_iter=256).total_iter == 256
    full = decode(transformer, tokens, unknown, image_seeds(0, [0]), K, DecodeSettings(total_iter=N).schedule(
        unknown.sum(1)), DecodeSettings(total_iter=N))
    assert (full.tokens < K).all()


# ----------------------------------------------------------------------------- the script

@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab([], hole)


def sweep(lab, data, out, *extra):
    return sw.main(['--data', str(data), '--out', str(out), '--MaskGitConfig', str(lab / 'mg.yml'),
                    '--load-transformer-ckpt-path', str(lab / 'tr.pt'), '--device', 'cpu', *extra])


def cell_pngs(out, m, t, s):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(sw.cell_folder(out, m, t, s)).glob('*.png'))])


def test_sweep_cells_are_separate_sweet_spot_decodes_from_one_decode_each(lab, tmp_path, pooled_fid, monkeypatch):
    data, out = tmp_path / 'data', tmp_path / 'out'
    write_split(data, 'val', n=5)
    passes = []
    real = pipeline.Inpainter.logits
    monkeypatch.setattr(pipeline.Inpainter, 'logits', lambda self, *a: passes.append(1) or real(self, *a))
    assert sweep(lab, data, out, '--schedules', 'cosine,square', '--total-iter', '2,3', '--limit-images', '4',
                 '--batch-size', '3', '--temperature', '1') == 0  # sampled: a sweet spot's argmax fill differs
    assert len(passes) == 2 * (2 + 3) * 2  # schedules x (T passes of one decode) x batches: no pass per cell
    res = json.loads((out / 'results.json').read_text())
    assert [(c['schedule'], c['total_iter'], c['sweet_spot']) for c in res['cells']] == [
        (m, t, s) for m in ('cosine', 'square') for t in (2, 3) for s in range(1, t + 1)]
    for c in res['cells']:
        assert all(math.isfinite(c[k]) for k in ('fid', 'hole_l1', 'hole_psnr')) and c['images'] == 4
        assert c['passes'] == c['sweet_spot'] + (c['sweet_spot'] < c['total_iter'])
    table = (out / 'table.md').read_text().splitlines()
    assert len([r for r in table if r.startswith('| cosine') or r.startswith('| square')]) == len(res['cells'])
    with Image.open(out / 'sweet_spot.png') as im:
        assert im.size == (640, 400)
    # each cell, image for image, is inpainting.py's decode with --sweet-spot s (refine 0, paste-known)
    model, cfg = pipeline.load_maskgit(sw.parse_args(['--MaskGitConfig', str(lab / 'mg.yml'),
                                                        '--load-transformer-ckpt-path', str(lab / 'tr.pt')]), 'cpu')
    mean, std = data_stats(cfg, 'test')
    ds = PairedTestDataset(data / 'val_masked_image', data / 'val_mask64', 1.0, mean, std)
    imgs, masks, ids = (torch.stack([ds[i][0] for i in range(4)]), torch.stack([ds[i][1] for i in range(4)]),
                        torch.tensor([ds[i][2] for i in range(4)]))
    differ = 0
    for m in ('cosine', 'square'):
        for t in (2, 3):
            for s in range(1, t + 1):
                st = DecodeSettings.from_config(cfg['model_param'], total_iter=t, mask_func=m, sweet_spot=s, refine=0,
                                                temperature=1.0)
                inp = pipeline.Inpainter(model, st, mean, std, paste_known=True)
                want = np.stack([np.asarray(tensor01_to_pil(x)) for x in inp.final(imgs, masks, inp(imgs, masks, ids))])
                got = cell_pngs(out, m, t, s)
                assert np.array_equal(got, want), (m, t, s)
                differ += s < t and not np.array_equal(got, cell_pngs(out, m, t, t))
    assert differ  # some sweet spot is not the full decode: the comparison can fail


def test_sweep_bad_input_is_one_line_before_any_output(lab, tmp_path, pooled_fid, capsys):
    data, out = tmp_path / 'data', tmp_path / 'out'
    write_split(data, 'val', n=3)
    assert sweep(lab, data, out, '--total-iter', '17') == 2   # the tiny model has 16 tokens
    err = capsys.readouterr().err.strip()
    assert '--total-iter must be at most 16' in err and '\n' not in err and not out.exists()
    for args, words in ((['--schedules', 'cosine,nope'], '--schedules'), (['--limit-images', '1'], '--limit-images')):
        with pytest.raises(SystemExit):
            sweep(lab, data, out, *args)
        assert words in capsys.readouterr().err and not out.exists()
    (out / 'cosine_T2' / 's01').mkdir(parents=True)
    (out / 'cosine_T2' / 's01' / 'image_09999.png').write_bytes(b'')
    assert sweep(lab, data, out, '--schedules', 'cosine', '--total-iter', '2') == 2
    assert 'image_09999.png' in capsys.readouterr().err and not (out / 'results.json').exists()
