"""Nothing a user made is lost or silently wrong: the three trainers refuse to replace an earlier run, an export
that would destroy its source, unwritable outputs, bad config values and flags that would do nothing; they record
the tokenizer a transformer was trained on; and a resumed VQGAN run equals the straight one bit for bit."""
import glob

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import configs_schema
import training_encoder as te
import training_transformer as tt
import training_vqgan as tv
from conftest import ROOT, TINY_VQ, run_args, tiny_mp
from models.masks import make_mask, mask_rng
from models.maskgit import MaskGit
from models.token_cache import tokenizer_sha256
from models.vqgan import VQGAN
from utils import load_checkpoint, load_config, sha256_file

pytestmark = pytest.mark.usefixtures('one_thread')
MP = tiny_mp(n_layers=1, hidden_dim=32)


@pytest.fixture(scope='module')
def lab(make_lab):
    """12 train / 4 val images of 16x16 with val masks; a tiny MaskGit (mg.yml: 3 steps an epoch), a tiny VQGAN
    training config (vq_train.yml) and encoder config (enc.yml); other.pt: another tokenizer of the same config."""
    d = make_lab(TINY_VQ, MP, epochs=2, batch_size=4, accum_grad=2, learning_rate=3e-3, warmup_steps=1,
                 save_per_epoch=1)
    (d / 'val_mask64').mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(make_mask(16, mask_rng(0, 'val', i), 0.1, 0.5))).save(d / 'val_mask64' / f'm{i}.png')
    (d / 'disc.yml').write_text(yaml.safe_dump({'model_param': dict(image_channels=3, num_filters_last=4, n_layers=2)}))
    data = dict(train_path=str(d / 'train'), val_path=str(d / 'val'))
    # 3 batches an epoch, 2 per step: the third batch's gradients are the epoch's remainder
    vq = dict(model_param=dict(TINY_VQ, restart_every=2), data=data,
              train=dict(batch_size=4, accum_grad=2, learning_rate=2e-3, epochs=3, disc_start=2, disc_weight=0.5,
                         disc_config=str(d / 'disc.yml')))
    (d / 'vq_train.yml').write_text(yaml.safe_dump(vq))
    enc = dict(epochs=1, batch_size=4, learning_rate=1e-3, clean_frac=0.5, tau=0.02, feature_weight=1.0, mask_bank=8,
               run_dir=str(d / 'enc_unused'))
    (d / 'enc.yml').write_text(yaml.safe_dump(dict(model_param=TINY_VQ, data=data, train_encoder=enc)))
    torch.manual_seed(1)
    torch.save(VQGAN(TINY_VQ).state_dict(), d / 'other.pt')
    return d


def vq_args(lab, run_dir, *extra):
    return ['--config', str(lab / 'vq_train.yml'), '--run-dir', str(run_dir), '--threads', '1', '--device', 'cpu', *extra]


def enc_args(lab, run_dir, *extra):
    return ['--config', str(lab / 'enc.yml'), '--vqgan-ckpt', str(lab / 'vq.pt'), '--device', 'cpu',
            '--run-dir', str(run_dir), *extra]


def tr_args(lab, out, *extra):
    return run_args(lab, out, '--cache-dir', str(lab / 'cache'), *extra)


def hashes(folder):
    return {p: sha256_file(p) for p in sorted(glob.glob(f'{folder}/*'))}


def one_line_exit(capsys, main, argv):
    """The one-line error of main(argv): its non-zero exit (training_vqgan.py), or the ValueError its __main__
    prints as one line (training_encoder.py, training_transformer.py)."""
    try:
        main(argv)
    except SystemExit as e:
        assert e.code != 0
        msg = str(e.code)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
    else:
        raise AssertionError(f"no error from {argv}")
    assert '\n' not in msg and 'Traceback' not in capsys.readouterr().err
    return msg


# ----------------------------------------------------------------------------- an earlier run is never replaced

def earlier_run(folder, *names):
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b'the earlier run ' + name.encode())
    return hashes(folder)


@pytest.mark.parametrize('trainer', ['vqgan', 'encoder', 'transformer'])
def test_a_fresh_run_into_a_used_folder_is_refused_and_loses_nothing(lab, tmp_path, capsys, trainer):
    main, argv, name = dict(vqgan=(tv.main, vq_args(lab, tmp_path / 'run'), 'best.pt'),
                            encoder=(te.main, enc_args(lab, tmp_path / 'run'), 'best.pt'),
                            transformer=(tt.main, tr_args(lab, tmp_path / 'run'), 'transformer_epoch_3.pt'))[trainer]
    before = earlier_run(tmp_path / 'run', name)
    msg = one_line_exit(capsys, main, argv)
    assert str(tmp_path / 'run') in msg and '--overwrite' in msg and '--resume' in msg, msg
    assert hashes(tmp_path / 'run') == before


def test_vqgan_overwrite_replaces_the_earlier_run_and_leaves_no_stale_file(lab, tmp_path):
    earlier_run(tmp_path / 'run', 'best.pt', 'best.pt.sha256', 'log.csv', 'recon_epoch009.png', 'notes.txt')
    tv.main(vq_args(lab, tmp_path / 'run', '--epochs', '1', '--overwrite'))
    names = sorted(p.name for p in (tmp_path / 'run').iterdir())
    assert names == ['best.pt', 'best.pt.sha256', 'last.pt', 'last.pt.sha256', 'log.csv', 'notes.txt',
                     'recon_epoch001.png']
    assert load_checkpoint(tmp_path / 'run' / 'best.pt')['epoch'] == 1   # this run's, verified by its sidecar
    assert (tmp_path / 'run' / 'log.csv').read_text().count('\n') == 2  # header and epoch 1, not appended


def test_transformer_overwrite_removes_stale_epoch_checkpoints(lab, tmp_path):
    earlier_run(tmp_path / 'run', 'transformer_epoch_7.pt', 'train_state.pt', 'log.csv')
    tt.main(tr_args(lab, tmp_path / 'run', '--epochs', '1', '--overwrite'))
    names = sorted(p.name for p in (tmp_path / 'run').iterdir() if not p.name.endswith('.sha256'))
    assert names == ['last_ckpt.pt', 'log.csv', 'loss_curve.png', 'train_state.pt', 'transformer_epoch_1.pt']
    with pytest.raises(ValueError, match='give one of them'):
        tt.main(tr_args(lab, tmp_path / 'run', '--resume', '--overwrite'))


def test_encoder_overwrite_replaces_the_earlier_run(lab, tmp_path):
    earlier_run(tmp_path / 'run', 'last.pt', 'log.csv')
    out = te.main(enc_args(lab, tmp_path / 'run', '--overwrite'))
    assert out['step'] == 3 and load_checkpoint(tmp_path / 'run' / 'last.pt')['step'] == 3


# ----------------------------------------------------------------------------- exports

@pytest.fixture(scope='module')
def trained(lab, tmp_path_factory):
    """One transformer run of 2 epochs (6 steps): the reference of the --max-steps and export tests."""
    out = tmp_path_factory.mktemp('tr')
    progress = tt.main(tr_args(lab, out))
    return out, progress


def test_export_onto_its_own_source_or_an_existing_file_is_refused(trained, lab, tmp_path, capsys):
    out, _ = trained
    src = out / 'train_state.pt'
    before = sha256_file(src)
    with pytest.raises(ValueError, match='is the checkpoint being exported'):
        tt.main(['--export', str(src), '--out', str(src), '--overwrite'])
    with pytest.raises(ValueError, match='is the checkpoint being exported'):  # the same file by another name
        tt.main(['--export', str(src), '--out', str(out / '.' / 'train_state.pt')])
    assert sha256_file(src) == before and 'optimizer' in load_checkpoint(src)
    shipped = tmp_path / 'shipped.pt'
    shipped.write_bytes(b'a shipped checkpoint')
    msg = one_line_exit(capsys, tv.main, ['--export', str(lab / 'vq.pt'), '--out', str(shipped)])
    assert 'exists' in msg and '--overwrite' in msg and shipped.read_bytes() == b'a shipped checkpoint'
    tv.main(['--export', str(lab / 'vq.pt'), '--out', str(shipped), '--overwrite'])
    assert load_checkpoint(shipped)['quant_conv.weight'].dtype == torch.float16


def test_encoder_export_writes_the_students_fp16_weights(lab, tmp_path):
    te.main(enc_args(lab, tmp_path / 'run'))
    ck = load_checkpoint(tmp_path / 'run' / 'last.pt')
    te.main(['--export', str(tmp_path / 'run' / 'last.pt'), '--out', str(tmp_path / 'enc.pt')])
    sd = load_checkpoint(tmp_path / 'enc.pt')  # verifies its sidecar
    assert sd.keys() == ck['model'].keys()
    assert all(v.dtype == torch.float16 and torch.equal(v, ck['model'][k].half()) for k, v in sd.items())
    changed = [k for k in sd if not torch.equal(ck['model'][k], load_checkpoint(lab / 'vq.pt')[k])]
    assert changed and all(k.startswith(('encoder.', 'quant_conv.')) for k in changed)  # the student's, trained
    with pytest.raises(ValueError, match='exists'):
        te.main(['--export', str(tmp_path / 'run' / 'last.pt'), '--out', str(tmp_path / 'enc.pt')])


# ----------------------------------------------------------------------------- unwritable outputs

def test_unwritable_outputs_are_refused_before_training(lab, tmp_path, capsys):
    (tmp_path / 'file').write_text('a file')
    under = tmp_path / 'file' / 'run'
    with pytest.raises(ValueError, match=r'--checkpoint-path .*file/run/last_ckpt.pt cannot be created: .*is a file'):
        tt.main(tr_args(lab, under))
    for main, argv in ((tv.main, vq_args(lab, under)), (te.main, enc_args(lab, under))):
        assert '--run-dir' in one_line_exit(capsys, main, argv)
    assert (tmp_path / 'file').read_text() == 'a file'


# ----------------------------------------------------------------------------- config values and flags

def test_every_shipped_config_passes_its_schema():
    for path in sorted(glob.glob(str(ROOT / 'configs' / '*.yml'))):
        cfg = load_config(path)
        schema = (configs_schema.DISCRIMINATOR if 'Discriminator' in path else
                  configs_schema.MASKGIT_CONFIG if 'MaskGit' in path else configs_schema.VQGAN_CONFIG)
        configs_schema.validate(cfg, path, schema)
        if 'train_encoder' in cfg:
            configs_schema.validate(cfg, path, configs_schema.ENCODER_CONFIG)
    tt.config_train({})  # configs/MaskGit.yml sets every train: key


def edited(lab, tmp_path, name, path, value):
    """lab's config `name` with the key at dotted `path` set to value (None: deleted), as a new file."""
    cfg = yaml.safe_load((lab / name).read_text())
    *parents, last = path.split('.')
    node = cfg
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    out = tmp_path / f'edited_{name}'
    out.write_text(yaml.safe_dump(cfg))
    return out


BAD_VALUES = [  # (trainer, config, key, value, expectation in the error)
    ('transformer', 'mg.yml', 'model_param.Transformer_param.n_layers', None, 'is missing: expected a positive integer'),
    ('transformer', 'mg.yml', 'model_param.Transformer_param.dim', 'sixty-four', "expected a positive integer, got 'sixty-four'"),
    ('transformer', 'mg.yml', 'train.learning_rate', 'fast', "expected a number >= 0, got 'fast'"),
    ('transformer', 'mg.yml', 'train.hole_mask_frac', 1.5, 'expected a number in [0, 1], got 1.5'),
    ('vqgan', 'vq_train.yml', 'model_param.latent_dim', None, 'is missing'),
    ('vqgan', 'vq_train.yml', 'model_param.num_codebook_vectors', 512.0, 'expected a positive integer, got 512.0'),
    ('vqgan', 'vq_train.yml', 'model_param.num_codebook_vectors', 0, 'expected a positive integer, got 0'),
    ('vqgan', 'vq_train.yml', 'model_param.beta', 'abc', "expected a number >= 0, got 'abc'"),
    ('encoder', 'enc.yml', 'train_encoder.clean_frac', 'half', "expected a number in [0, 1], got 'half'"),
]


@pytest.mark.parametrize('trainer,name,key,value,want', BAD_VALUES, ids=[f'{c[0]}-{c[2]}={c[3]}' for c in BAD_VALUES])
def test_a_bad_config_value_is_one_line_naming_file_and_key(lab, tmp_path, capsys, trainer, name, key, value, want):
    path = edited(lab, tmp_path, name, key, value)
    main, argv = dict(transformer=(tt.main, tr_args(lab, tmp_path / 'run', '--MaskGitConfig', str(path))),
                      vqgan=(tv.main, vq_args(lab, tmp_path / 'run', '--config', str(path))),
                      encoder=(te.main, enc_args(lab, tmp_path / 'run', '--config', str(path))))[trainer]
    msg = one_line_exit(capsys, main, argv)
    assert f"config {path}: key {key}" in msg and want in msg, msg
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flags,want', [
    (('--start-from-epoch', '5', '--epochs', '2'), '--start-from-epoch 5 leaves nothing to train'),
    (('--ckpt-interval', '-2'), "--ckpt-interval: expected an integer >= 0, got -2"),
    (('--max-steps', '0'), "--max-steps: expected a positive integer, got 0"),
    (('--batch-size', '0'), "--batch-size: expected a positive integer, got 0")])
def test_transformer_flags_that_would_do_nothing_are_refused(lab, tmp_path, flags, want):
    with pytest.raises(ValueError, match=want):
        tt.main(tr_args(lab, tmp_path / 'run', *flags))
    assert not (tmp_path / 'run').exists()


def test_encoder_batch_flags_are_refused(lab, tmp_path, capsys):
    assert '--batch-size: expected a positive integer, got 0' in one_line_exit(
        capsys, te.main, enc_args(lab, tmp_path / 'run', '--batch-size', '0'))
    msg = one_line_exit(capsys, te.main, enc_args(lab, tmp_path / 'run', '--batch-size', '13'))  # 12 images
    assert '--batch-size 13 is more than the 12 training images' in msg
    assert not (tmp_path / 'run').exists()


def test_resume_of_a_weights_only_checkpoint_names_it(trained, lab, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match=r'--resume \S*last_ckpt.pt is not a train_state.pt'):
        tt.main(tr_args(lab, tmp_path / 'run', '--resume', str(out / 'last_ckpt.pt')))


# ----------------------------------------------------------------------------- the tokenizer a transformer was trained on

def test_train_state_and_exports_record_the_tokenizer_and_course_files_stay_plain(trained, lab, tmp_path):
    out, _ = trained
    want = tokenizer_sha256(lab / 'vq.pt')
    assert load_checkpoint(out / 'train_state.pt')['tokenizer_sha256'] == want
    tt.main(['--export', str(out / 'train_state.pt'), '--out', str(tmp_path / 'export.pt')])
    assert load_checkpoint(tmp_path / 'export.pt')['tokenizer_sha256'] == want
    # the course's files are model.transformer.state_dict(): its own strict load_state_dict reads them
    for name in ('last_ckpt.pt', 'transformer_epoch_1.pt', 'transformer_epoch_2.pt'):
        MaskGit(MP).transformer.load_state_dict(load_checkpoint(out / name), strict=True)


def test_resume_on_another_tokenizer_is_refused(trained, lab, tmp_path):
    out, _ = trained
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'train_state.pt').write_bytes((out / 'train_state.pt').read_bytes())
    state = sha256_file(run / 'train_state.pt')
    flags = ('--epochs', '3', '--vqgan-ckpt', str(lab / 'other.pt'), '--cache-dir', str(tmp_path / 'cache'))
    with pytest.raises(ValueError, match='trained on the tokens of another VQGAN'):
        tt.main(tr_args(lab, run, *flags, '--resume'))
    assert sha256_file(run / 'train_state.pt') == state


# ----------------------------------------------------------------------------- --max-steps, validation figures

def test_max_steps_stops_mid_epoch_and_resume_ends_where_the_straight_run_ends(trained, lab, tmp_path, capsys):
    out, straight = trained
    run = tmp_path / 'run'
    cut = tt.main(tr_args(lab, run, '--max-steps', '2'))                       # 3 steps an epoch
    assert (cut['epoch'], cut['step']) == (0, 2) and load_checkpoint(run / 'train_state.pt')['step'] == 2
    assert '--max-steps 2: stopped at step 2 of 3 in epoch 1' in capsys.readouterr().err
    assert (run / 'last_ckpt.pt').is_file() and not (run / 'log.csv').exists()
    with pytest.raises(ValueError, match='already at step 2'):
        tt.main(tr_args(lab, run, '--max-steps', '2', '--resume'))
    tt.main(tr_args(lab, run, '--resume'))
    a, b = (load_checkpoint(p / 'last_ckpt.pt') for p in (out, run))
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert (run / 'log.csv').read_text().count('\n') == 3


def test_conditional_val_hole_accuracy_is_the_null_class_figure(one_thread):
    """val_hole_acc is what inpainting's default (the null class) gets; val_hole_acc_class the true class's."""
    torch.manual_seed(0)
    raw = MaskGit(tiny_mp(num_classes=2)).eval()
    raw.transformer.class_emb.weight.data.normal_(0, 3.0)  # classes matter
    g = torch.Generator().manual_seed(0)
    tokens, context = torch.randint(16, (8, 16), generator=g), torch.randint(16, (8, 16), generator=g)
    holes = torch.rand(8, 16, generator=g) < 0.5
    s = dict(tt.config_train({}), batch_size=4)
    cpu = torch.device('cpu')
    labels = torch.tensor([0, 1] * 4)
    _, _, hole, hole_class = tt.evaluate(raw, tokens, s, 0, 1, 0, cpu, holes=(holes, context), labels=labels)
    null = tt.evaluate(raw, tokens, s, 0, 1, 0, cpu, holes=(holes, context), labels=torch.full((8,), 2))
    assert hole == null[2] == null[3]   # the null-class figure, whatever the images' classes
    assert hole_class != hole           # the true classes change the figure: it is theirs
    plain = tt.evaluate(MaskGit(tiny_mp()).eval(), tokens, s, 0, 1, 0, cpu, holes=(holes, context))
    assert plain[3] != plain[3]         # NaN: an unconditional model has no class figure
    assert tt.LOG_FIELDS[6] == 'val_hole_acc' and 'val_hole_acc_class' in tt.LOG_FIELDS


# ----------------------------------------------------------------------------- a resumed VQGAN run

def test_vqgan_resume_is_bit_exact_with_restarts_and_a_remainder_of_micro_batches(lab, tmp_path):
    """3 epochs straight == 1 epoch, then --resume to 3: every weight, and the codebook's restart window, equal
    exactly (dead-code restarts every 2 calls; 3 micro-batches an epoch, 2 a step; the GAN on from step 2)."""
    tv.main(vq_args(lab, tmp_path / 'a'))
    tv.main(vq_args(lab, tmp_path / 'b', '--epochs', '1'))
    tv.main(vq_args(lab, tmp_path / 'b', '--resume', str(tmp_path / 'b' / 'last.pt')))
    a, b = (load_checkpoint(tmp_path / run / 'last.pt') for run in 'ab')
    assert a['step'] == b['step'] == 3
    for part in ('model', 'disc'):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a['codebook']['calls'] == b['codebook']['calls'] == 9
    assert torch.equal(a['codebook']['usage'], b['codebook']['usage'])
    assert torch.equal(a['codebook']['recent'], b['codebook']['recent'])
