"""train.py: one command from a folder of pictures to a loadable pair and a demo (tiny base pair, tiny budget)."""
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train
import trainlib as tl
import training_encoder as te
from conftest import ROOT, TINY_VQ, tiny_mp
from models.masks import make_mask, mask_rng
from pipeline import load
from utils import load_checkpoint, sha256_file

pytestmark = pytest.mark.usefixtures('one_thread')
SHIPPED = ('checkpoints', 'configs', 'cache')  # every file compared: the shipped pair, its configs, the token caches
LISTED = ('.', 'runs', 'data', 'results')      # the names in them compared: the stages' default outputs


def pictures(folder, n, seed=0):
    """n random 24x24 pictures in two class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / ('reds' if i % 2 else 'blues')
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f'p{i}.png')
    return folder


def tree(folder):
    """{path: (size, mtime)} of every file under folder (__pycache__ aside)."""
    out = {}
    for d, dirs, names in os.walk(folder):
        dirs[:] = [x for x in dirs if x != '__pycache__']
        for n in names:
            st = os.stat(os.path.join(d, n))
            out[os.path.join(d, n)] = (st.st_size, st.st_mtime_ns)
    return out


def repo_outputs():
    """What a stage writing to its default places would change in the repo."""
    names = {d: sorted(n for n in os.listdir(ROOT / d) if n not in ('__pycache__', '.pytest_cache'))
             for d in LISTED if (ROOT / d).is_dir()}
    return names, {k: v for d in SHIPPED for k, v in tree(ROOT / d).items()}


@pytest.fixture(scope='module')
def base(make_inpainting_lab):
    """The tiny pair to fine-tune (16x16 images, 4x4 tokens): mg.yml names its VQGAN and its transformer."""
    lab = make_inpainting_lab([], None)
    cfg = yaml.safe_load((lab / 'mg.yml').read_text())
    (lab / 'mg.yml').write_text(yaml.safe_dump(dict(cfg, checkpoint=dict(path=str(lab / 'tr.pt')))))
    return lab


def flags(base, pics, runs, *extra):
    return ['--data', str(pics), '--name', 'mine', '--runs', str(runs), '--base', str(base / 'mg.yml'),
            '--budget', '1', '--max-epochs', '2', '--device', 'cpu', '--quiet', *extra]


@pytest.fixture(scope='module')
def trained(base, tmp_path_factory):
    """One whole run on 12 pictures: (run folder, pictures, runs folder, repo outputs before, after, output)."""
    tmp = tmp_path_factory.mktemp('own')
    pics, runs = pictures(tmp / 'pics', 12), tmp / 'runs'
    pics_before, repo_before = tree(pics), repo_outputs()
    rc = train.main(flags(base, pics, runs))
    assert rc == 0
    return dict(run=runs / 'mine', pics=pics, runs=runs, pics_before=pics_before, repo_before=repo_before)


def test_one_command_gives_a_pair_that_loads_and_inpaints(trained, base):
    run = trained['run']
    for f in ('vqgan.pt', 'transformer.pt', 'VQGAN.yml', 'MaskGit.yml', 'demo/gallery.png', 'logs/transformer.log'):
        assert (run / f).is_file(), f
    assert sorted(os.listdir(run / 'demo' / 'test_results')) == sorted(os.listdir(run / 'data' / 'test'))
    pipe = load(run / 'MaskGit.yml', device='cpu')
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    hole = np.zeros((32, 32), bool)
    hole[8:16, 8:16] = True
    out = pipe.inpaint(picture, hole)
    assert out.size == picture.size
    far = np.ones((32, 32), bool)
    far[5:19, 5:19] = False  # more than 3 px from the hole: the input's
    assert (np.asarray(out)[far] == np.asarray(picture)[far]).all()
    # the decoder was fine-tuned, the encoder and codebook kept (the base transformer's codes); the transformer trained
    new, old = load_checkpoint(run / 'vqgan.pt'), load_checkpoint(base / 'vq.pt')
    same = lambda k: torch.equal(new[k], old[k].to(new[k].dtype))
    kept = [k for k in old if k.startswith(('encoder.', 'quant_conv.', 'codebook.'))]
    assert kept and all(same(k) for k in kept)
    assert not all(same(k) for k in old if k.startswith('decoder.'))
    tr_new, tr_old = load_checkpoint(run / 'transformer.pt'), load_checkpoint(base / 'tr.pt')
    assert not all(torch.equal(tr_new[k], tr_old[k].to(tr_new[k].dtype)) for k in tr_old if torch.is_tensor(tr_old[k]))
    state = json.loads((run / 'train_state.json').read_text())
    assert state['done'] == list(tl.STAGES)


def test_nothing_is_written_outside_the_run_folder(trained):
    assert tree(trained['pics']) == trained['pics_before']  # the pictures only read
    assert os.listdir(trained['runs']) == ['mine']
    assert repo_outputs() == trained['repo_before']  # no cache/, data/, runs/, checkpoints/ of the repo touched


def test_resume_skips_the_finished_stages(trained, base, capsys):
    before = tree(trained['run'])
    assert train.main(flags(base, trained['pics'], trained['runs'], '--resume')) == 0
    out = capsys.readouterr().out
    for stage in tl.STAGES:
        assert f"== {stage}: finished earlier, skipped" in out
    changed = {p for p, v in tree(trained['run']).items() if before.get(p) != v}
    assert changed <= {str(trained['run'] / f) for f in ('train_state.json', 'VQGAN.yml', 'MaskGit.yml')}


def test_a_used_name_is_refused_without_resume_or_overwrite(trained, base, capsys):
    before = tree(trained['run'])
    assert train.main(flags(base, trained['pics'], trained['runs'])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '--resume' in err and '--overwrite' in err
    assert tree(trained['run']) == before


def test_a_too_small_folder_is_refused_before_any_output(base, tmp_path, capsys):
    pics = pictures(tmp_path / 'pics', tl.MIN_PICTURES - 1)
    (pics / 'notes.txt').write_text('not a picture')
    (pics / 'broken.png').write_bytes(b'not a png')
    assert train.main(flags(base, pics, tmp_path / 'runs')) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f'{tl.MIN_PICTURES - 1} readable pictures' in err
    assert not (tmp_path / 'runs').exists()


def test_pictures_overlapping_the_run_folder_are_refused(base, tmp_path, capsys):
    run = tmp_path / 'runs' / 'mine'
    pics = pictures(run / 'pics', 12)
    (run / 'train_state.json').write_text('{}')  # an earlier run, which --overwrite would delete with the pictures
    before = tree(tmp_path)
    assert train.main(flags(base, pics, tmp_path / 'runs', '--overwrite')) == 2
    assert 'overlap' in capsys.readouterr().err
    assert train.main(flags(base, tmp_path, tmp_path / 'runs', '--overwrite')) == 2  # the run inside the pictures
    assert 'overlap' in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_a_failed_stage_is_one_line_naming_it_and_its_log(tmp_path):
    log = tmp_path / 'logs' / 'x.log'
    with pytest.raises(tl.StageFailed) as e:
        tl.run_stage('transformer', ['-c', "import sys; print('step 1'); sys.exit('error: it broke')"], str(log), True)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and 'stage transformer failed' in msg and 'error: it broke' in msg
    assert str(log) in msg and 'step 1' in log.read_text()


# ----------------------------------------------------------------------------- the budget plan

COSTS = dict(vq_step=0.5, tr_step=0.8, vq_img=0.01, tr_seq=0.002, vq_save=0.2, tr_save=0.3, mask=0.001, vq_batch=16,
             tr_batch=32)
MG = dict(model_param=dict(refine=2, total_iter=8), train=dict(hole_mask_frac=0.5, context_variants=4, mask_bank=4096))


def seconds(p):
    return sum(s.seconds if isinstance(s, tl.StagePlan) else s for s in p.values())


def test_the_plan_fits_the_budget_and_grows_with_it():
    counts = (3000, 300, 64)
    small, large = (tl.plan(counts, COSTS, 5, MG, 60 * m, 40) for m in (20, 60))
    for p, m in ((small, 20), (large, 60)):
        assert 0.9 * 60 * m < seconds(p) <= 60 * m
        tok, tr = (p[s].seconds - tl.fixed_costs(counts, COSTS, 5, MG)[s] for s in ('tokenizer', 'transformer'))
        assert tok / (tok + tr) == pytest.approx(tl.TOKENIZER_SHARE, abs=0.05)  # the transformer: whole epochs
        assert p['transformer'].steps % p['transformer'].steps_per_epoch == 0  # the cosine schedule ends with the run
    assert large['tokenizer'].steps > 2 * small['tokenizer'].steps and large['transformer'].steps > small['transformer'].steps
    with pytest.raises(ValueError, match='--budget'):
        tl.plan(counts, COSTS, 5, MG, 30, 40)  # half a minute: not even the scripts' starts


def test_a_small_folder_stops_at_the_epoch_cap_and_gives_the_rest_to_the_transformer():
    p = tl.plan((30, 4, 4), COSTS, 5, MG, 3600, 40)
    assert p['tokenizer'].capped and p['tokenizer'].epochs == 40 and p['transformer'].epochs == 40
    assert p['tokenizer'].batch == 16 and p['transformer'].batch == 32 and p['transformer'].steps_per_epoch == 1


def test_a_stage_that_saved_a_checkpoint_continues_from_it(tmp_path):
    paths = tl.layout(str(tmp_path))
    argv = ['training_vqgan.py', '--config', 'c.yml', '--init-from', 'base.pt', '--epochs', '3', '--overwrite']
    assert tl.resumed('tokenizer', argv, paths) is None  # nothing saved: start again
    os.makedirs(paths.tokenizer)
    open(os.path.join(paths.tokenizer, 'last.pt'), 'wb').close()
    again = tl.resumed('tokenizer', argv, paths)
    assert again[-2:] == ['--resume', os.path.join(paths.tokenizer, 'last.pt')]
    assert '--init-from' not in again and '--overwrite' not in again and again[:5] == argv[:3] + ['--epochs', '3']


# ----------------------------------------------------------------------------- training_encoder.py's data flags

def test_encoder_reads_the_folders_its_flags_name(make_lab, tmp_path):
    lab = make_lab(TINY_VQ, tiny_mp())
    (lab / 'val_mask64').mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(make_mask(16, mask_rng(0, 'val', i), 0.1, 0.5))).save(lab / 'val_mask64' / f'm{i}.png')
    enc = dict(epochs=1, batch_size=4, learning_rate=1e-3, clean_frac=0.5, tau=0.02, feature_weight=1.0, mask_bank=8,
               run_dir=str(tmp_path / 'run'))
    cfg = tmp_path / 'enc.yml'
    cfg.write_text(yaml.safe_dump(dict(model_param=TINY_VQ, train_encoder=enc,
                                       data=dict(train_path=str(tmp_path / 'none'), val_path=str(tmp_path / 'none')))))
    out = te.main(['--config', str(cfg), '--vqgan-ckpt', str(lab / 'vq.pt'), '--device', 'cpu',
                   '--train-path', str(lab / 'train'), '--val-path', str(lab / 'val')])
    assert out['step'] == 3 and sha256_file(tmp_path / 'run' / 'last.pt')  # 12 images, batch 4
