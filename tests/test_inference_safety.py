"""Nothing a user made is lost or silently wrong (issue 29) in inpainting.py and dataset.py: stale outputs,
EXIF orientation, ground-truth CSVs, flags that would do nothing, checkpoints that do not belong together."""
import numpy as np
import pytest
import torch
from PIL import Image

import inpainting
import pipeline
from conftest import IMG, INPAINT_VQ, ROOT, box_hole
from dataset import load_rgb, read_gt_csv, write_gt_csv
from fullsize import read_image, read_mask
from models.token_cache import tokenizer_sha256
from models.vqgan import VQGAN
from utils import atomic_save, load_checkpoint, load_config

IDS = (1, 2, 5)

pytestmark = pytest.mark.usefixtures('one_thread')


hole_mask = box_hole()


@pytest.fixture(scope='module')
def lab(make_inpainting_lab):
    return make_inpainting_lab(IDS, hole_mask)


@pytest.fixture(scope='module')
def cond_lab(make_inpainting_lab):
    return make_inpainting_lab(IDS, hole_mask, conditional=True)


def cli(lab, out, *extra, ckpt=None, cfg=None):
    return inpainting.main(['--device', 'cpu', '--MaskGitConfig', str(cfg or lab / 'mg.yml'),
                            '--load-transformer-ckpt-path', str(ckpt or lab / 'tr.pt'),
                            '--test-maskedimage-path', str(lab / 'img'), '--test-mask-path', str(lab / 'mask'),
                            '--total-iter', '2', '--output-dir', str(out), *extra])


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


def names(folder):
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- stale outputs (29.4)

def test_an_earlier_runs_outputs_are_refused_not_mixed_into_the_fid(lab, tmp_path, capsys):
    out = tmp_path / 'o'
    assert cli(lab, out) == 0
    first = {sub: names(out / sub) for sub in inpainting.OUTPUT_FOLDERS}
    before = (out / 'test_results' / 'image_001.png').read_bytes()
    capsys.readouterr()
    # fewer images (--partial keeps image 1 only) into the same folder: 2 and 5 would stay beside it
    err = one_line_error(capsys, cli(lab, out, '--partial', '0.4', '--seed', '7'))
    assert 'test_results/ holds 2 file(s)' in err and '--overwrite' in err and str(out) in err
    assert {sub: names(out / sub) for sub in first} == first                       # nothing deleted
    assert (out / 'test_results' / 'image_001.png').read_bytes() == before         # nor rewritten
    assert cli(lab, out, '--partial', '0.4', '--overwrite') == 0
    err = capsys.readouterr().err
    assert all(f"deleted 2 file(s) of an earlier run from {out / sub}" in err for sub in first)
    assert names(out / 'test_results') == ['image_001.png']
    assert names(out / 'imga') == names(out / 'mask_scheduling') == ['test_1.png']


def test_a_rerun_of_the_same_images_and_unrelated_files_are_left_alone(lab, tmp_path):
    out = tmp_path / 'o'
    (out / 'notes').mkdir(parents=True)
    (out / 'notes' / 'mine.txt').write_text('keep')
    (out / 'test_results' / 'sub').mkdir(parents=True)                             # a folder: not an output
    assert cli(lab, out) == 0 and cli(lab, out, '--seed', '3') == 0              # same images: overwritten
    assert (out / 'notes' / 'mine.txt').read_text() == 'keep'
    assert names(out / 'test_results') == ['image_001.png', 'image_002.png', 'image_005.png', 'sub']


# ----------------------------------------------------------------------------- EXIF orientation (29.5)

ORIENTATION = 0x0112


def sideways(displayed, path, **save):
    """Save `displayed` (a PIL image) as a phone does: pixels stored rotated 90 degrees counter-clockwise, with EXIF
    orientation 6 (rotate 90 clockwise to display)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), **save)
    with Image.open(path) as img:   # what was written is sideways, and says so
        assert img.size == displayed.size[::-1] and img.getexif()[ORIENTATION] == 6
    return str(path)


def quadrant_photo(w, h):
    """Red top-left quadrant on blue: where the red is tells the orientation."""
    a = np.zeros((h, w, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[:h // 2, :w // 2] = (255, 0, 0)
    return Image.fromarray(a)


def test_a_phone_jpeg_is_read_as_displayed(tmp_path):
    path = sideways(quadrant_photo(32, 16), tmp_path / 'phone.jpg', quality=95)
    img = np.asarray(load_rgb(path)).astype(int)
    assert img.shape == (16, 32, 3)                                              # displayed: 32 wide, 16 high
    assert (np.abs(img[2:6, 2:14] - (255, 0, 0)).max(-1) < 40).all()            # red top-left, as displayed
    assert (np.abs(img[10:14, 18:30] - (0, 0, 255)).max(-1) < 40).all()


def test_a_mask_drawn_on_the_displayed_photo_covers_what_it_was_drawn_on(tmp_path):
    S = 32                                                                      # fullsize's smallest side
    photo = sideways(quadrant_photo(S, S), tmp_path / 'phone.jpg', quality=95)
    m = np.full((S, S), 255, np.uint8)
    m[:S // 2, :S // 2] = 0                                                  # the red quadrant, as seen
    Image.fromarray(m, 'L').save(tmp_path / 'mask.png')
    sideways(Image.fromarray(m, 'L'), tmp_path / 'mask_exif.png')                # a mask saved sideways too
    pic = read_image(photo)
    image = np.asarray(pic.image.convert('RGB')).astype(float) / 255                 # [H, W, 3] upright
    for mask in ('mask.png', 'mask_exif.png'):
        hole, note = read_mask(str(tmp_path / mask), pic.size, convention='black')
        assert note is None and np.array_equal(hole, m < 128), mask
        red = image[..., 0] > 0.8                                                   # [H, W]
        assert red[2:14, 2:14].all() and not red[18:, :].any() and not red[:, 18:].any()
        assert image[..., 0][hole].mean() > 0.9                                     # the hole is on the red



# ----------------------------------------------------------------------------- flags that would do nothing (29.10)

def test_inpainting_flags_that_would_do_nothing_are_refused(lab, cond_lab, tmp_path, capsys):
    out = tmp_path / 'o'
    err = one_line_error(capsys, cli(cond_lab, out, '--cfg-scale', '2'))
    assert '--cfg-scale 2.0 guides towards a class: give --class or --labels' in err and not out.exists()
    assert cli(cond_lab, out, '--cfg-scale', '2', '--class', 'dog') == 0                # with a class: guided
    photo = tmp_path / 'photo.png'
    Image.new('RGB', (IMG, IMG)).save(photo)
    for flags, error in [(['--gt-path', str(tmp_path)], '--gt-path is the last column of --gallery'),
                         (['--cfg-schedule', 'linear', '--class', 'dog'], '--cfg-schedule linear shapes the guidance'),
                         (['--image', str(photo), '--outpaint', 'left=8', '--partial', '.5'], '--partial is for'),
                         (['--save-steps'], '--save-steps is for --image')]:
        with pytest.raises(SystemExit) as e:
            cli(cond_lab, tmp_path / 'p', *flags)
        assert e.value.code == 2 and error in capsys.readouterr().err and not (tmp_path / 'p').exists(), flags


# ----------------------------------------------------------------------------- ground-truth CSVs (29.11)

def gt_images(n=3, side=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_a_csv_without_a_header_keeps_its_first_image(tmp_path):
    images = gt_images()
    write_gt_csv(images, tmp_path / 'with.csv')
    lines = (tmp_path / 'with.csv').read_text().splitlines()
    (tmp_path / 'without.csv').write_text('\n'.join(lines[1:]) + '\n')           # pandas' header=False
    assert np.array_equal(read_gt_csv(tmp_path / 'with.csv'), images)
    assert np.array_equal(read_gt_csv(tmp_path / 'without.csv'), images)         # all 3, the first one too
    tiny = np.arange(3, dtype=np.uint8).reshape(1, 1, 1, 3)                      # pixels 0,1,2: like a header
    write_gt_csv(np.concatenate([tiny, tiny + 7]), tmp_path / 'tiny.csv')
    assert np.array_equal(read_gt_csv(tmp_path / 'tiny.csv'), np.concatenate([tiny, tiny + 7]))


@pytest.mark.parametrize('line,problem', [('1,2,x' + ',0' * 45, "line 3: 'x' is not an integer"),
                                          (','.join(['7'] * 47), 'line 3 has 47 values, the lines before it 48'),
                                          ('1,2,300' + ',0' * 45, 'line 3: value 300 is outside 0..255'),
                                          ('1,2,-1' + ',0' * 45, 'line 3: value -1 is outside 0..255')])
def test_a_malformed_row_is_one_line_naming_the_file_and_the_line(tmp_path, line, problem):
    write_gt_csv(gt_images(), tmp_path / 'gt.csv')
    lines = (tmp_path / 'gt.csv').read_text().splitlines()
    (tmp_path / 'gt.csv').write_text('\n'.join(lines[:2] + [line] + lines[3:]) + '\n')
    with pytest.raises(ValueError) as e:
        read_gt_csv(tmp_path / 'gt.csv')
    assert str(e.value) == f"ground-truth CSV {tmp_path / 'gt.csv'}, {problem}"


# ----------------------------------------------------------------------------- checkpoints that belong together (29.12)

def with_tokenizer(lab, dst, vq_ckpt):
    """The lab's transformer state_dict with the 'tokenizer_sha256' record of vq_ckpt, as training writes it."""
    sd = torch.load(lab / 'tr.pt', weights_only=True)
    atomic_save({**sd, 'tokenizer_sha256': tokenizer_sha256(vq_ckpt)}, str(dst))
    return dst


def test_a_transformer_of_another_tokenizer_is_refused_naming_both_files(lab, tmp_path, capsys):
    torch.manual_seed(1)
    atomic_save(VQGAN(INPAINT_VQ).state_dict(), str(tmp_path / 'other_vq.pt'))
    own = with_tokenizer(lab, tmp_path / 'own.pt', lab / 'vq.pt')
    assert cli(lab, tmp_path / 'a', ckpt=own) == 0                                     # its own: loads, str skipped
    assert cli(lab, tmp_path / 'b') == 0                                               # no record: loads as before
    result = lambda run, f: (tmp_path / run / 'test_results' / f).read_bytes()
    assert all(result('a', f) == result('b', f) for f in names(tmp_path / 'a' / 'test_results'))
    capsys.readouterr()
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', '--vqgan-ckpt', str(tmp_path / 'other_vq.pt'), ckpt=own))
    assert f"{own} was trained on the tokens of another VQGAN than {tmp_path / 'other_vq.pt'}" in err
    stranger = with_tokenizer(lab, tmp_path / 'stranger.pt', tmp_path / 'other_vq.pt')  # the config's VQGAN
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', ckpt=stranger))
    assert f"{stranger} was trained on the tokens of another VQGAN than {lab / 'vq.pt'}" in err
    assert not (tmp_path / 'o').exists()


def test_a_conditional_checkpoint_under_a_plain_config_names_the_config_to_use(lab, cond_lab, tmp_path, capsys):
    err = one_line_error(capsys, cli(lab, tmp_path / 'o', ckpt=cond_lab / 'tr.pt'))
    assert (f"{cond_lab / 'tr.pt'} is class-conditional (has class_emb) but {lab / 'mg.yml'} builds an unconditional "
            f"model: use a config with Transformer_param num_classes, e.g. configs/MaskGit_small_cond.yml") in err
    err = one_line_error(capsys, cli(cond_lab, tmp_path / 'o', ckpt=lab / 'tr.pt'))
    assert (f"{lab / 'tr.pt'} is unconditional (no class_emb) but {cond_lab / 'mg.yml'} builds a class-conditional "
            f"model: use a config without Transformer_param num_classes, e.g. configs/MaskGit_small.yml") in err
    assert not (tmp_path / 'o').exists()


SHIPPED = ('MaskGit_small.yml', 'MaskGit_small_cond.yml', 'MaskGit_fashion.yml')


@pytest.mark.parametrize('config', SHIPPED)
def test_shipped_transformers_record_their_configs_tokenizer_and_load(config, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs' paths are relative to the repo root
    cfg = load_config(f'configs/{config}')
    sd = load_checkpoint(cfg['checkpoint']['path'])
    assert sd['tokenizer_sha256'] == tokenizer_sha256(cfg['model_param']['VQ_Configs']['VQ_CKPT_path'])
    args = inpainting.parse_args(['--MaskGitConfig', f'configs/{config}'])
    model, _ = pipeline.load_maskgit(args, torch.device('cpu'))
    assert all(torch.equal(v.float(), sd[k].float()) for k, v in model.transformer.state_dict().items()
               if torch.is_tensor(v))


def test_a_shipped_transformer_with_the_other_shipped_vqgan_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    rc = inpainting.main(['--device', 'cpu', '--MaskGitConfig', 'configs/MaskGit_small.yml', '--vqgan-ckpt',
                          'checkpoints/vqgan_fashion.pt', '--output-dir', str(tmp_path / 'o'),   # no test images:
                          '--test-maskedimage-path', str(tmp_path / 'none')])                    # never a full run
    err = one_line_error(capsys, rc)
    assert ('transformer checkpoint checkpoints/transformer_small.pt was trained on the tokens of another VQGAN '
            'than checkpoints/vqgan_fashion.pt') in err and not (tmp_path / 'o').exists()
