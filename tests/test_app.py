"""app.py: the page to paint on. The Run handler called directly, and the real page in headless Debian Chromium
(Selenium) with a fake pipeline: upload a picture, paint a stroke with the mouse, press Run, read the result."""
import io
import os
import shutil
import socket
import tempfile
import urllib.request

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
gr = pytest.importorskip('gradio')
import app  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::Warning:gradio.queueing')  # gradio's own pandas deprecations
FILL = (255, 0, 255)          # the fake's hole colour: in no test picture
CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')


class FakePipe:
    """pipeline.load's API, deterministic and model-free: the hole filled with FILL; records every call."""
    class_names = ['animals', 'buildings']

    def __init__(self):
        self.calls = []

    def inpaint(self, image, mask, return_steps=False, **kw):
        self.calls.append(('inpaint', image, mask, kw))
        a = np.array(image.convert('RGB'))
        a[mask] = FILL
        out = Image.fromarray(a)
        return (out, [image, out]) if return_steps else out  # steps: full-size frames, the last the result

    def generate(self, class_name, n=8, **kw):
        self.calls.append(('generate', class_name, n, kw))
        return [Image.new('RGB', (64, 64), (10 * i, 0, 0)) for i in range(n)]

    def outpaint(self, image, left=0, right=0, top=0, bottom=0, **kw):
        self.calls.append(('outpaint', image, (left, right, top, bottom), kw))
        return Image.new('RGB', (image.width + left + right, image.height + top + bottom), FILL)


def picture(w=120, h=90):
    """A two-colour picture with a gradient, so any moved or resized pixel shows. [H, W, 3] uint8"""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (200, 180, 40)
    a[:, w // 2:] = (30, 120, 200)
    a[..., 1] += (np.arange(h) // 2).astype(np.uint8)[:, None]
    return a


def handler(demo, api_name):
    """The function behind a button of the built page, by its api_name."""
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    return next(f.fn for f in fns if f.api_name == api_name)


# --- without a browser: the Run handler on an editor value ---------------------------------------------------

def editor_value(bg, hole):
    """gr.ImageEditor's numpy value: the background RGBA and one brush layer painted white over `hole`."""
    h, w = hole.shape
    layer = np.zeros((h, w, 4), np.uint8)
    layer[hole] = 255
    bg4 = np.dstack([bg, np.full((h, w), 255, np.uint8)])
    comp = bg4.copy()
    comp[hole] = 255
    return {'background': bg4, 'layers': [layer], 'composite': comp}


def test_run_handler_passes_mask_and_returns_picture_size():
    pipe = FakePipe()
    run = handler(app.build_app(pipe, examples=[]), 'inpaint')
    bg = picture()
    hole = np.zeros(bg.shape[:2], bool)
    hole[30:50, 40:70] = True
    result, steps = run(editor_value(bg, hole), 'animals', 8, 'linear', 0, 3, 1, 'model')
    _, image, mask, kw = pipe.calls[-1]
    assert image.size == (120, 90) and image.mode == 'RGB'    # the background at its own size, opaque -> RGB
    np.testing.assert_array_equal(np.asarray(image), bg)
    np.testing.assert_array_equal(mask, hole)
    assert kw == dict(class_name='animals', total_iter=8, mask_func='linear', sweet_spot=0,
                      seed=3, refine=1, strategy='model')
    assert result.size == (120, 90) and len(steps) == 2
    # the step strip shows the hole with a margin of half its size, not the whole picture
    assert app.hole_box(hole) == (25, 15, 85, 65) and steps[-1][0].size == (60, 50)
    np.testing.assert_array_equal(np.asarray(steps[-1][0]), np.asarray(result)[15:65, 25:85])


@pytest.mark.parametrize('value, message', [
    (None, 'No picture'),
    ({'background': picture(), 'layers': [np.zeros((90, 120, 4), np.uint8)], 'composite': None}, 'No hole'),
    ({'background': np.zeros((10, 4001, 3), np.uint8), 'layers': [], 'composite': None}, '4000'),
])
def test_run_handler_refuses_bad_input_with_a_message(value, message):
    pipe = FakePipe()
    run = handler(app.build_app(pipe, examples=[]), 'inpaint')
    with pytest.raises(gr.Error, match=message):
        run(value, 'none', 8, 'cosine', 0, 0, 0, 'auto')
    assert pipe.calls == []


def test_pipeline_value_error_becomes_page_message():
    pipe = FakePipe()

    def refuse(*a, **kw):
        raise ValueError("--total-iter must be an integer >= 1, got 0")
    pipe.inpaint = refuse
    run = handler(app.build_app(pipe, examples=[]), 'inpaint')
    hole = np.zeros((90, 120), bool)
    hole[:5, :5] = True
    with pytest.raises(gr.Error, match='--total-iter'):
        run(editor_value(picture(), hole), 'none', 8, 'cosine', 0, 0, 0, 'auto')


def test_generate_passes_class_and_guides_only_towards_one():
    pipe = FakePipe()
    gen = handler(app.build_app(pipe, examples=[]), 'generate')
    images = gen('buildings', 3, 5, 1.0, 4.5, 4.0)
    assert pipe.calls[-1] == ('generate', 'buildings', 3,
                              dict(seed=5, temperature=1.0, choice_temperature=4.5, cfg_scale=4.0)) and len(images) == 3
    gen('none', 2, 0, 1.0, 4.5, 4.0)  # no class: unconditional / null class, and nothing to guide towards
    assert pipe.calls[-1] == ('generate', None, 2, dict(seed=0, temperature=1.0, choice_temperature=4.5))


# --- in a real browser ---------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def served():
    """The page over a FakePipe, served on a free local port in this process. -> (url, pipe)"""
    pipe = FakePipe()
    demo = app.build_app(pipe, examples=[])
    port = free_port()
    demo.launch(server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
    yield f'http://127.0.0.1:{port}', pipe
    demo.close()


@pytest.fixture(scope='module')
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='chromium-')
    # headless as root, and no background connections: this machine's network is closed
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync',
              '--window-size=1400,1200', f'--user-data-dir={profile}'):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_with_picture(driver, url, path):
    """Load the page and upload `path` into the editor (send_keys on its file input)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#editor input[type=file]'))
    driver.find_element(By.CSS_SELECTOR, '#editor input[type=file]').send_keys(str(path))
    WebDriverWait(driver, 20).until(lambda d: 'Upload an image' not in d.find_element(By.ID, 'editor').text)


def body_text(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, 'body').text


def test_paint_a_hole_in_the_browser(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, pipe = served
    pic = picture()
    Image.fromarray(pic).save(tmp_path / 'pic.png')
    open_with_picture(browser, url, tmp_path / 'pic.png')
    canvas = browser.find_elements(By.CSS_SELECTOR, '#editor canvas')[-1]
    # a horizontal stroke through the middle (the picture is centred on the canvas, zoomed to fit)
    stroke = ActionChains(browser).move_to_element(canvas).move_by_offset(-80, 0).click_and_hold()
    for _ in range(8):
        stroke.move_by_offset(20, 0)
    stroke.release().perform()
    n_calls = len(pipe.calls)
    browser.find_element(By.ID, 'run').click()
    img = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#result img') or 'Error' in body_text(d) and body_text(d))
    assert not isinstance(img, str), img
    with urllib.request.urlopen(img[0].get_attribute('src'), timeout=10) as r:
        result = np.asarray(Image.open(io.BytesIO(r.read())).convert('RGB'))

    assert len(pipe.calls) == n_calls + 1
    _, image, mask, _ = pipe.calls[-1]
    np.testing.assert_array_equal(np.asarray(image.convert('RGB')), pic)  # the picture itself, at its own size
    assert result.shape == pic.shape
    # the hole is the stroke: through the middle, away from the borders, a minority of the picture
    ys, xs = np.nonzero(mask)
    assert mask.shape == pic.shape[:2] and 0 < mask.mean() < 0.5
    assert abs(ys.mean() - 45) < 10 and abs(xs.mean() - 60) < 10
    assert ys.min() > 0 and ys.max() < 89 and xs.min() > 0 and xs.max() < 119
    changed = (result != pic).any(-1)
    np.testing.assert_array_equal(changed, mask)                  # painted region changed, the rest did not
    assert (result[mask] == FILL).all()


def test_run_without_painting_shows_message(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, pipe = served
    Image.fromarray(picture()).save(tmp_path / 'pic.png')
    open_with_picture(browser, url, tmp_path / 'pic.png')
    n_calls = len(pipe.calls)
    browser.find_element(By.ID, 'run').click()
    WebDriverWait(browser, 20).until(lambda d: 'No hole painted' in body_text(d))
    assert 'Traceback' not in body_text(browser)
    assert len(pipe.calls) == n_calls


def test_main_refuses_a_taken_port_before_loading_the_model(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, 'pipeline', types.SimpleNamespace(load=lambda *a, **kw: pytest.fail('loaded')))
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        with pytest.raises(SystemExit, match='cannot listen'):
            app.main(['--port', str(taken.getsockname()[1])])
