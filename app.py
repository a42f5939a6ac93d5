"""A page to paint on: a local Gradio app over pipeline.py. `python app.py` (or `make app`), then open
http://127.0.0.1:7860.

Tabs: Inpaint (paint the hole with a white brush on a picture of any size; the result has the picture's own
size), Outpaint (extend the canvas), Generate (class-conditional samples). The model loads once at start;
requests run one at a time (concurrency 1: the machine has two cores). build_app(pipe) takes any object with
pipeline.load's API, so tests inject a fake one.
"""
import argparse
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # a local tool: nothing sent out
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fullsize import MAX_SIDE  # noqa: E402
from models.decoding import SCHEDULES, DecodeSettings  # noqa: E402

NO_CLASS = 'none'                 # the dropdown's entry for "no class" (null class / unconditional)
STRATEGIES = ['auto', 'model', 'telea']
EXAMPLES = Path('data/openclipart/test')  # the test split's pictures (prepare_dataset.py), when present
N_EXAMPLES = 6
MAX_UPLOAD = '50mb'               # Gradio refuses larger files on the page, before any decoding
HOLE_HINT = "Paint the hole with the white brush first (the brush tool, then drag over the picture)."


def editor_picture_and_mask(value):
    """gr.ImageEditor's numpy value {'background', 'layers', 'composite'} -> (PIL picture at its own size,
    bool mask [H, W], True = hole). The hole is wherever a brush layer has alpha > 0; with no layers, wherever
    the composite differs from the background. Refused input -> gr.Error (a message on the page)."""
    bg = None if value is None else value.get('background')
    if bg is None:
        raise gr.Error("No picture: upload or paste one (or pick an example) first.")
    bg = np.asarray(bg)
    h, w = bg.shape[:2]
    if max(h, w) > MAX_SIDE:
        raise gr.Error(f"The picture is {w}x{h} px; at most {MAX_SIDE} px a side, please shrink it first.")
    layers = [np.asarray(x) for x in value.get('layers') or [] if x is not None]
    if layers:
        if any(x.shape[:2] != (h, w) for x in layers):
            raise gr.Error(f"A painted layer is not the picture's size {w}x{h}; reload the picture and paint again.")
        mask = np.zeros((h, w), bool)
        for x in layers:  # [H, W, 4] RGBA; a layer without alpha counts as painted everywhere it is not black
            mask |= x[..., 3] > 0 if x.ndim == 3 and x.shape[2] == 4 else np.asarray(x).reshape(h, w, -1).any(-1)
    else:
        comp = value.get('composite')
        mask = np.zeros((h, w), bool) if comp is None else (np.asarray(comp) != bg).reshape(h, w, -1).any(-1)
    if not mask.any():
        raise gr.Error(f"No hole painted. {HOLE_HINT}")
    return to_pil(bg), mask


def to_pil(a):
    """numpy [H, W, C] uint8 -> PIL; RGBA with nothing transparent becomes RGB (transparency is kept only
    where the picture has some)."""
    a = np.asarray(a, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 4 and (a[..., 3] == 255).all():
        a = a[..., :3]
    return Image.fromarray(a)


def call(fn, *args, **kwargs):
    """A pipeline call; its one-line ValueError becomes a message on the page, not a stack trace."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise gr.Error(str(e)) from None


def decode_kwargs(steps, schedule, sweet_spot, seed, refine, strategy=None):
    """The page's controls -> the pipeline's keyword overrides (sliders send floats)."""
    kw = dict(total_iter=int(steps), mask_func=schedule, sweet_spot=int(sweet_spot), seed=int(seed),
              refine=int(refine))
    if strategy is not None:
        kw['strategy'] = strategy
    return kw


def class_kwargs(pipe, class_name):
    """class_name= for a conditional model when one is chosen; nothing otherwise (the pipeline's default)."""
    return {} if pipe.class_names is None or class_name in (None, NO_CLASS) else {'class_name': class_name}


def make_inpaint(pipe):
    def inpaint(editor, class_name, steps, schedule, sweet_spot, seed, refine, strategy):
        """-> (the result at the picture's own size, the decoding steps for the gallery)."""
        picture, mask = editor_picture_and_mask(editor)
        result, steps_imgs = call(pipe.inpaint, picture, mask, return_steps=True, **class_kwargs(pipe, class_name),
                                  **decode_kwargs(steps, schedule, sweet_spot, seed, refine, strategy))
        box = hole_box(mask)
        crop = (lambda im: im.crop(box) if im.size == picture.size else im)  # frames at the picture's size
        return result, [(crop(im), f"step {i + 1}") for i, im in enumerate(steps_imgs)]
    return inpaint


def hole_box(mask, margin=0.5, least=32):
    """The (x0, y0, x1, y1) the step strip shows: the hole's bounding box grown by `margin` of its size (at
    least `least` px a side), inside the picture; a small hole in a big picture would not show otherwise."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    grow = max(int(margin * max(x1 - x0, y1 - y0)), (least - min(x1 - x0, y1 - y0)) // 2, 0)
    return max(x0 - grow, 0), max(y0 - grow, 0), min(x1 + grow, w), min(y1 + grow, h)


def make_outpaint(pipe):
    def outpaint(picture, left, right, top, bottom, class_name, steps, schedule, sweet_spot, seed, refine):
        if picture is None:
            raise gr.Error("No picture: upload or paste one first.")
        if max(picture.size) > MAX_SIDE:
            raise gr.Error(f"The picture is {picture.width}x{picture.height} px; at most {MAX_SIDE} px a side.")
        sides = dict(left=int(left), right=int(right), top=int(top), bottom=int(bottom))
        if not any(sides.values()):
            raise gr.Error("Nothing to extend: move at least one of the left/right/top/bottom sliders above 0.")
        return call(pipe.outpaint, picture, **sides, **class_kwargs(pipe, class_name),
                    **decode_kwargs(steps, schedule, sweet_spot, seed, refine))
    return outpaint


def make_generate(pipe):
    def generate(class_name, n, seed, temperature, choice_temperature, cfg_scale):
        name = None if class_name in (None, NO_CLASS) else class_name
        guide = {} if name is None else {'cfg_scale': float(cfg_scale)}  # guidance needs a class to guide to
        images = call(pipe.generate, name, n=int(n), seed=int(seed), temperature=float(temperature),
                      choice_temperature=float(choice_temperature), **guide)
        return [(im, class_name or NO_CLASS) for im in images]
    return generate


def example_pictures(folder=EXAMPLES, n=N_EXAMPLES):
    """A few of the test split's pictures, when the data has been prepared (make data); else none."""
    return [str(p) for p in sorted(Path(folder).glob('*.png'))[:n]] if Path(folder).is_dir() else []


def class_dropdown(pipe, first=False):
    """The class control: pipe.class_names plus 'none', at 'none' (first: at the first class); hidden for an
    unconditional model."""
    names = list(pipe.class_names or [])
    value = names[0] if first and names else NO_CLASS
    return gr.Dropdown([NO_CLASS] + names, value=value, label="class", visible=bool(names), interactive=bool(names))


def decode_controls(d):
    """Steps, schedule, sweet spot, seed, refine, with the pipeline's defaults `d` (a DecodeSettings)."""
    return (gr.Slider(1, 32, value=d.total_iter, step=1, label="steps"),
            gr.Dropdown(list(SCHEDULES), value=d.mask_func, label="schedule"),
            gr.Slider(0, 32, value=d.sweet_spot, step=1, label="sweet spot (0: off)"),
            gr.Number(value=d.seed, precision=0, label="seed"),
            gr.Slider(0, 4, value=d.refine, step=1, label="refine rounds"))


def default_settings(pipe, generation=False):
    """The defaults the controls start at: the pipeline's config's (inpainting, or its `generate:` section), else
    DecodeSettings' own."""
    settings = getattr(pipe, 'settings', None)
    return settings({}, generation=generation) if callable(settings) else DecodeSettings()


def build_app(pipe, examples=None):
    """The page over `pipe` (pipeline.load's API). -> gr.Blocks, not launched."""
    d = default_settings(pipe)
    examples = example_pictures() if examples is None else examples
    with gr.Blocks(title="MaskGIT inpainting") as demo:
        gr.Markdown("## MaskGIT inpainting\nUpload or paste a picture, paint the hole with the white brush, "
                    "press **Run**. The result keeps the picture's own size; pixels away from the hole are kept.")
        with gr.Tab("Inpaint"):
            with gr.Row():
                editor = gr.ImageEditor(
                    label="picture (paint the hole white)", type='numpy', image_mode='RGBA',
                    sources=('upload', 'clipboard'), transforms=(), layers=False, format='png',
                    brush=gr.Brush(colors=['#ffffff'], default_color='#ffffff', color_mode='fixed'),
                    elem_id='editor', height=520)
                result = gr.Image(label="result (the picture's own size)", type='pil', format='png',
                                  interactive=False, elem_id='result', height=520)
            with gr.Row():
                klass = class_dropdown(pipe)
                steps, schedule, sweet, seed, refine = decode_controls(d)
                strategy = gr.Dropdown(STRATEGIES, value='auto', label="fill strategy")
            run = gr.Button("Run", variant='primary', elem_id='run')
            gallery = gr.Gallery(label="decoding steps (around the hole)", columns=8, height=200, elem_id='steps')
            if examples:
                gr.Examples(examples, inputs=editor, label="examples (the test split)")
            run.click(make_inpaint(pipe), [editor, klass, steps, schedule, sweet, seed, refine, strategy],
                      [result, gallery], api_name='inpaint')
        with gr.Tab("Outpaint"):
            with gr.Row():
                o_in = gr.Image(label="picture", type='pil', image_mode=None, sources=('upload', 'clipboard'),
                                elem_id='outpaint-in', height=420)
                o_out = gr.Image(label="extended", type='pil', format='png', interactive=False,
                                 elem_id='outpaint-out', height=420)
            with gr.Row():
                sides = [gr.Slider(0, 256, value=64 if s == 'left' else 0, step=8, label=f"{s} (px)")
                         for s in ('left', 'right', 'top', 'bottom')]
            with gr.Row():
                o_class = class_dropdown(pipe)
                o_decode = decode_controls(d)
            o_run = gr.Button("Outpaint", variant='primary', elem_id='outpaint-run')
            o_run.click(make_outpaint(pipe), [o_in, *sides, o_class, *o_decode], o_out,
                        api_name='outpaint')
        with gr.Tab("Generate"):
            with gr.Row():
                g_class = class_dropdown(pipe, first=True)  # the null class alone draws mostly blank pages
                g_n = gr.Slider(1, 32, value=8, step=1, label="n")
                g_seed = gr.Number(value=0, precision=0, label="seed")
            g = default_settings(pipe, generation=True)  # the config's generate: section
            with gr.Row():
                g_temp = gr.Slider(0, 2, value=g.temperature, step=0.1, label="temperature (0: argmax)")
                g_choice = gr.Slider(0, 10, value=g.choice_temperature, step=0.5, label="choice temperature")
                g_cfg = gr.Slider(0, 10, value=g.cfg_scale, step=0.5, label="guidance (cfg scale)",
                                  visible=bool(pipe.class_names))
            g_run = gr.Button("Generate", variant='primary', elem_id='generate-run')
            g_out = gr.Gallery(label="samples (64x64)", columns=8, height=260, elem_id='samples')
            g_run.click(make_generate(pipe), [g_class, g_n, g_seed, g_temp, g_choice, g_cfg], g_out,
                        api_name='generate')
    demo.queue(default_concurrency_limit=1)  # one request at a time: two cores
    return demo


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--port', type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument('--host', default='127.0.0.1', help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument('--config', default='configs/MaskGit_small_cond.yml', help="MaskGit config (its checkpoints)")
    p.add_argument('--device', default='auto', help="cpu, cuda, cuda:N, or auto (cuda when available)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        sys.exit(f"app.py: --port must be 1..65535, got {args.port}")
    try:  # before the model loads: a taken port is known at once
        with socket.socket() as s:
            s.bind((args.host, args.port))
    except OSError as e:
        sys.exit(f"app.py: --host {args.host} --port {args.port}: cannot listen there ({e.strerror}); "
                 f"pass another --port")
    from pipeline import load  # the model loads once, here
    try:
        pipe = load(args.config, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"app.py: {e}")
    print(f"==> app: serving on http://{args.host}:{args.port} (Ctrl-C to stop)")
    build_app(pipe).launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
                           show_error=False)


if __name__ == '__main__':
    main()
