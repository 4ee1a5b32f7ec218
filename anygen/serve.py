"""`anygen serve`: a local web app (Gradio) over the Python API.

One page with a model picker and a tab per task: Draw, Caption, Edit (with the recommended
accurate settings as a preset, the model's plan, and an optional mask painted on the image),
Document (a story or any continuation, streamed segment by segment; downloadable as HTML or a
zip of the Document directory) and Audio (say, transcribe).

The contract:
- It binds to 127.0.0.1 unless `--host` says otherwise, and fetches nothing from outside
  (no analytics, system fonts).
- Requests wait in a queue; one model call runs at a time (`CONCURRENCY`).
- Uploads are bounded (`MAX_UPLOAD`) and read with the library's own checks (`read_image_file`,
  `read_audio_file`); a bad file, prompt or option shows the `AnygenError` line, never a traceback.
- It reads and writes only files inside its own temporary folder: the uploads Gradio received
  and what it wrote itself; the folder is removed when the server stops.

Gradio is an optional extra (`pip install anygen[ui]`), imported only when the app is built.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from anygen.document import Document, Text
from anygen.errors import AnygenError

DEFAULT_HOST = "127.0.0.1"  # this machine only; serving a network is an explicit --host
DEFAULT_PORT = 7860  # Gradio's usual port
MAX_UPLOAD = "20mb"  # far above any image or WAV the models read (images are refused over 4096x4096 anyway)
CONCURRENCY = 1  # model calls at a time: sampling already uses every thread it is given
QUEUE_SIZE = 32  # requests waiting beyond this are refused at once instead of waiting for minutes
CACHE_MAX_AGE_S = 3600  # uploads and results older than this are deleted while the server runs
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm"]  # read_image_file's formats
AUDIO_TYPES = [".wav"]  # read_audio_file reads WAV only
MAX_IMAGES = 16  # images per Draw click
MAX_STORY_STEPS = 8  # story turns per click; a longer story outgrows the bundled model's context
ACCURATE_EDIT = dict(reason=True, best_of=16, greedy_plan=True, plan_in_words=True, retries=2)  # the README's
# most accurate edit setting on the bundled model (anygen eval shapes --only edit)
FAST_EDIT = dict(reason=False, best_of=1, greedy_plan=False, plan_in_words=False, retries=0)
EDIT_PRESETS = {"accurate (reason, best of 16, plan in words, retries 2)": ACCURATE_EDIT, "fast (one plain edit)": FAST_EDIT}
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")  # nothing downloaded
MONO_FONTS = ("ui-monospace", "Consolas", "monospace")
CSS = (".anygen-pixels img, .anygen-doc img {image-rendering: pixelated; width: 192px !important; "
       "height: 192px !important; object-fit: contain} "
       "#draw-gallery img {image-rendering: pixelated}")  # the models' images are small: enlarge them without blur
MISSING_GRADIO = "anygen serve needs Gradio: pip install anygen[ui]"
EXAMPLE_PROMPT = "a large red circle at the top left"  # the page's first values: the default model's words
EXAMPLE_INSTRUCTION = "make the red circle blue"
EXAMPLE_OPENING = "a small green square at the center"
BENCH_STORY_STEPS = 3


def import_gradio():
    """gradio, with analytics off; a one-line AnygenError when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise AnygenError(MISSING_GRADIO) from None
    return gradio


# ---- models ------------------------------------------------------------------------------
def bundled_root() -> Path:
    from anygen.api import BUNDLED_MODELS

    return BUNDLED_MODELS


def model_choices(given=()) -> dict[str, Path]:
    """Display name -> model directory: each `--model` (a directory or a bundled model's name), then
    the bundled models; the first is the one the page starts with."""
    from anygen.api import bundled_models

    bundled = bundled_models()
    choices = {}
    for item in given:
        path = Path(item)
        if path.is_dir():
            choices.setdefault(str(path), path)
        elif item in bundled:
            choices.setdefault(item, bundled[item])
        else:
            raise AnygenError(f"--model {item}: not a model directory nor a bundled model ({', '.join(bundled)})")
    return choices | {name: path for name, path in bundled.items() if path not in choices.values()}


class Models:
    """The models a server offers, each loaded (with `anygen.load`) the first time it is used."""

    def __init__(self, choices: dict[str, Path], loader=None):
        import anygen

        self.choices, self.loader = choices, loader or anygen.load
        self._loaded, self._lock = {}, threading.Lock()

    def get(self, name: str):
        if name not in self.choices:
            raise AnygenError(f"unknown model {name!r}; choose one of {', '.join(self.choices)}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self.loader(self.choices[name])
            return self._loaded[name]

    def meta(self, name: str) -> dict:
        from anygen.api import model_meta

        return model_meta(self.choices[name])

    def describe(self, name: str) -> str:
        """What the model can do, in Markdown: its recorded tasks, worlds and image head."""
        meta = self.meta(name)
        tasks = ", ".join(meta.get("tasks", ())) or "not recorded"
        worlds = ", ".join(meta.get("worlds", ())) or "none recorded"
        where = "bundled" if self.choices[name].parent == bundled_root() else self.choices[name]
        return (f"**{name}** ({where}) · tasks: {tasks} · worlds: {worlds} · "
                f"image head: {meta.get('image_head', 'tokens')}")


def mask_of(editor_value, grid: tuple[int, int]) -> list[bool] | None:
    """The editable flags (H*W over the code grid, row-major) of what was painted on an image
    editor's layers (`{"layers": [RGBA arrays], ...}`): a cell is editable when any of its pixels
    is painted; None when nothing is."""
    import numpy as np

    layers = [np.asarray(layer) for layer in (editor_value or {}).get("layers") or () if layer is not None]
    painted = [layer[..., 3] > 0 for layer in layers if layer.ndim == 3 and layer.shape[2] == 4]
    if not painted or not any(p.any() for p in painted):
        return None
    h, w = grid
    flags = [False] * (h * w)
    for p in painted:
        ph, pw = p.shape
        for r in range(h):
            for c in range(w):
                cell = p[r * ph // h:max((r + 1) * ph // h, r * ph // h + 1), c * pw // w:max((c + 1) * pw // w, c * pw // w + 1)]
                flags[r * w + c] |= bool(cell.any())
    return flags


# ---- the app -----------------------------------------------------------------------------
class App:
    """The app's functions (what each button runs), over `Models`, writing into `workdir`."""

    def __init__(self, models: Models, workdir: Path):
        self.models, self.workdir = models, Path(workdir).resolve()
        (self.workdir / "out").mkdir(parents=True, exist_ok=True)

    # files
    def own_file(self, path, what: str) -> Path:
        """`path` when it lies inside this app's folder (an upload or a result), else an AnygenError."""
        if not path:
            raise AnygenError(f"no {what} given")
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.workdir):
            raise AnygenError(f"{what}: not a file this app received")
        return resolved

    def read_image(self, path):
        from anygen.io import read_image_file

        path = self.own_file(path, "image")
        try:
            return read_image_file(path)
        except AnygenError as e:  # name the upload, not the server's folder
            raise AnygenError(str(e).replace(str(path), path.name)) from None

    def new_dir(self) -> Path:
        path = self.workdir / "out" / uuid.uuid4().hex
        path.mkdir()
        return path

    def save_image(self, image, name: str = "image.png") -> str:
        path = self.new_dir() / name
        image.save(path)
        return str(path)

    # tasks
    def draw(self, model: str, prompt: str, n: int, guidance_scale: float, best_of: int, seed: int,
             num_inference_steps: int | None = None) -> list[str]:
        from anygen.api import DrawOptions

        gen = self.models.get(model)
        steps = int(num_inference_steps) if num_inference_steps and gen.diffusion is not None else None
        options = DrawOptions(guidance_scale=float(guidance_scale), best_of=int(best_of), num_inference_steps=steps)
        images = gen.draw(prompt, n=int(n), seed=seed_of(seed), options=options)
        folder = self.new_dir()
        paths = []
        for i, image in enumerate(images):
            image.save(folder / f"draw_{i}.png")
            paths.append(str(folder / f"draw_{i}.png"))
        return paths

    def caption(self, model: str, image_path) -> str:
        image = self.read_image(image_path)
        return self.models.get(model).caption(image)

    def edit(self, model: str, image_path, instruction: str, guidance_scale: float, image_guidance_scale: float,
             best_of: int, reason: bool, plan_in_words: bool, greedy_plan: bool, retries: int, seed: int,
             mask_text: str = "", painted=None) -> tuple[str, str, str]:
        """(the source as read, the edited image, the plan the model wrote or "")."""
        from anygen.api import EditOptions
        from anygen.cli import parse_mask

        options = EditOptions(guidance_scale=float(guidance_scale), image_guidance_scale=float(image_guidance_scale),
                              best_of=int(best_of), reason=bool(reason), plan_in_words=bool(plan_in_words),
                              greedy_plan=bool(greedy_plan), retries=int(retries))
        image = self.read_image(image_path)
        gen = self.models.get(model)
        grid = tuple(gen.vocab.image_grids[0])
        masks = [m for m in (parse_mask(mask_text, grid, gen.meta.get("worlds", ())) if (mask_text or "").strip()
                             else None, mask_of(painted, grid)) if m is not None]
        if masks:
            from dataclasses import replace

            options = replace(options, editable=[any(flags) for flags in zip(*masks)])
        if options.reason:
            edited, plan = gen.edit_with_reasoning(image, instruction, seed=seed_of(seed), options=options)
        else:
            edited, plan = gen.edit(image, instruction, seed=seed_of(seed), options=options), ""
        return self.save_image(image, "before.png"), self.save_image(edited, "after.png"), plan

    def story(self, model: str, opening: str, n_steps: int, best_of: int, reason: bool, plan_in_words: bool,
              seed: int):
        """Yield the growing story (the opening, then each finished segment); the last one yielded
        is the whole story."""
        from anygen.api import StoryOptions
        from anygen.api.inputs import check_text

        options = StoryOptions(n_steps=int(n_steps), best_of=int(best_of), reason=bool(reason),
                               plan_in_words=bool(plan_in_words))
        gen = self.models.get(model)
        yield from streamed(Document([Text(check_text(opening, "opening"))]), lambda callback: Document(list(
            gen.story(opening, seed=seed_of(seed), options=options, callback=callback))[1:]))

    def continuation(self, model: str, opening: str, max_new_tokens: int, seed: int):
        """Yield the growing Document (the opening, then each finished segment) while the model writes it;
        the last one yielded is the whole result."""
        from anygen.api.inputs import check_text

        gen = self.models.get(model)
        yield from streamed(Document([Text(check_text(opening, "opening"))]), lambda callback: gen.generate(
            Document([Text(opening)]), max_new_tokens=int(max_new_tokens), seed=seed_of(seed), callback=callback))

    def downloads(self, doc) -> list[str]:
        """The Document saved (JSON, media, index.html) and zipped: [zip, index.html]."""
        folder = self.new_dir()
        doc.save(folder / "document")
        archive = shutil.make_archive(str(folder / "document"), "zip", folder / "document")
        return [archive, str(folder / "document" / "index.html")]

    def say(self, model: str, text: str, guidance_scale: float, seed: int) -> str:
        from anygen.document import wav_bytes

        audio = self.models.get(model).say(text, guidance_scale=float(guidance_scale), seed=seed_of(seed))
        path = self.new_dir() / "say.wav"
        path.write_bytes(wav_bytes(audio.waveform, audio.sample_rate))
        return str(path)

    def transcribe(self, model: str, audio_path) -> str:
        from anygen.io import read_audio_file

        path = self.own_file(audio_path, "audio")
        try:
            audio = read_audio_file(path)
        except AnygenError as e:
            raise AnygenError(str(e).replace(str(path), path.name)) from None
        return self.models.get(model).transcribe(audio)


def streamed(prompt, write: Callable):
    """Yield `prompt`, then `prompt` plus each segment `write(callback)` hands its callback, as it comes (the model
    works in a thread), then `prompt` plus what `write` returns: the whole result, as the last."""
    segments, done, result = queue.Queue(), object(), {}

    def work():
        try:
            result["doc"] = write(segments.put)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e
        finally:
            segments.put(done)

    threading.Thread(target=work, daemon=True).start()
    doc = prompt
    yield doc
    while (item := segments.get()) is not done:
        doc = doc + item
        yield doc
    if "error" in result:
        raise result["error"]
    yield prompt + result["doc"]


def seed_of(value) -> int | None:
    """A seed field's value: None (left empty) samples afresh, a number is the seed."""
    return None if value is None or value == "" else int(value)


def document_html(doc) -> str:
    return f"<div class='anygen-doc'>{doc.html_body()}</div>"


# ---- the page ----------------------------------------------------------------------------
def _shown(gr, fn):
    """`fn` with an `AnygenError` shown as Gradio's error toast (its one line), for plain and
    generator functions alike; the signature (with any gr.Progress default) is kept."""
    def message(e):
        return gr.Error(" ".join(str(e).split()))

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except AnygenError as e:
                raise message(e) from None
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except AnygenError as e:
                raise message(e) from None
    return wrapped


def build(app: App, gr):
    """The Blocks page over `app`. API names (for gradio_client): /draw, /caption, /edit, /story,
    /say, /transcribe, /describe_model."""
    names = list(app.models.choices)

    def progressed(desc):
        def decorate(fn):
            @functools.wraps(fn)
            def run(*args, progress=gr.Progress()):
                progress(0, desc=desc)
                return fn(*args)
            run.__signature__ = inspect.Signature(  # gradio reads the inputs and the progress tracker from it
                list(inspect.signature(fn).parameters.values())
                + [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())])
            return _shown(gr, run)
        return decorate

    def describe(model):
        meta = app.models.meta(model)
        diffusion = meta.get("image_head", "tokens") == "diffusion"
        return app.models.describe(model), gr.update(visible=diffusion)

    with gr.Blocks(title="anygen", analytics_enabled=False, delete_cache=(CACHE_MAX_AGE_S, CACHE_MAX_AGE_S)) as demo:
        drawn = gr.State([])
        gr.Markdown("## anygen\nAny-to-any generation with a local model. Each request waits its turn in a queue.")
        with gr.Row():
            model = gr.Dropdown(names, value=names[0], label="model", scale=1)
            about = gr.Markdown(app.models.describe(names[0]))
        with gr.Tabs() as tabs:
            with gr.Tab("Draw", id="draw"):
                with gr.Row():
                    prompt = gr.Textbox(label="prompt", value=EXAMPLE_PROMPT, scale=4,
                                        elem_id="draw-prompt")
                    draw_btn = gr.Button("Draw", variant="primary", scale=1, elem_id="draw-button")
                with gr.Row():
                    n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images")
                    guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="guidance_scale (1 = none)")
                    best_of = gr.Slider(1, 16, value=1, step=1, label="best_of")
                    seed = gr.Number(0, precision=0, label="seed (empty: random)")
                    steps = gr.Slider(1, 100, value=25, step=1, label="num_inference_steps (diffusion head)",
                                      visible=app.models.meta(names[0]).get("image_head") == "diffusion")
                gallery = gr.Gallery(label="images", columns=8, height=260, elem_id="draw-gallery")
                picked = gr.Number(0, visible=False, precision=0)
                with gr.Row():
                    to_caption = gr.Button("Caption the selected image")
                    to_edit = gr.Button("Edit the selected image")
            with gr.Tab("Caption", id="caption"):
                with gr.Row():
                    cap_file = gr.File(label="image (PNG, JPEG, WEBP, GIF, BMP, TIFF, PPM)", file_types=IMAGE_TYPES,
                                       type="filepath")
                    cap_view = gr.Image(label="as read", interactive=False, height=220, elem_classes="anygen-pixels")
                cap_btn = gr.Button("Caption", variant="primary")
                cap_text = gr.Textbox(label="caption", interactive=False)
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    edit_file = gr.File(label="source image", file_types=IMAGE_TYPES, type="filepath")
                    instruction = gr.Textbox(label="instruction", value=EXAMPLE_INSTRUCTION)
                preset = gr.Radio(list(EDIT_PRESETS), value=next(iter(EDIT_PRESETS)), label="settings")
                with gr.Accordion("advanced", open=False):
                    with gr.Row():
                        e_guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="guidance_scale")
                        e_image_guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="image_guidance_scale")
                        e_best_of = gr.Slider(1, 64, value=ACCURATE_EDIT["best_of"], step=1, label="best_of")
                        e_retries = gr.Slider(0, 16, value=ACCURATE_EDIT["retries"], step=1, label="retries")
                        e_seed = gr.Number(0, precision=0, label="seed (empty: random)")
                    with gr.Row():
                        e_reason = gr.Checkbox(ACCURATE_EDIT["reason"], label="reason")
                        e_words = gr.Checkbox(ACCURATE_EDIT["plan_in_words"], label="plan_in_words")
                        e_greedy = gr.Checkbox(ACCURATE_EDIT["greedy_plan"], label="greedy_plan")
                with gr.Accordion("mask: what may change (optional)", open=False):
                    mask_text = gr.Textbox(label="cells or boxes: 'box:r0,c0,r1,c1' over the code grid, or a "
                                                 "region the model's world names (shapes: '0,4')")
                    painted = gr.ImageEditor(label="or paint over the parts that may change", type="numpy",
                                             sources=(), transforms=(), layers=False, height=300,
                                             brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"))
                edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Row():
                    before = gr.Image(label="before", interactive=False, height=220, elem_classes="anygen-pixels")
                    after = gr.Image(label="after", interactive=False, height=220, elem_classes="anygen-pixels")
                plan = gr.Textbox(label="the model's plan (with reason)", interactive=False)
            with gr.Tab("Document", id="document"):
                opening = gr.Textbox(label="opening", value=EXAMPLE_OPENING)
                mode = gr.Radio(["story", "continue"], value="story", label="what to write",
                                info="either is shown segment by segment as the model writes it")
                with gr.Row():
                    s_steps = gr.Slider(1, MAX_STORY_STEPS, value=3, step=1, label="story: steps")
                    s_best_of = gr.Slider(1, 16, value=1, step=1, label="story: best_of")
                    s_reason = gr.Checkbox(False, label="story: reason")
                    s_words = gr.Checkbox(False, label="story: plan_in_words")
                with gr.Row():
                    s_tokens = gr.Slider(16, 1024, value=256, step=16, label="continue: max_new_tokens")
                    s_seed = gr.Number(0, precision=0, label="seed (empty: random)")
                doc_btn = gr.Button("Write", variant="primary", elem_id="document-button")
                doc_view = gr.HTML(label="document")
                doc_files = gr.File(label="download: zip of the Document directory, or its HTML page",
                                    file_count="multiple", interactive=False)
            with gr.Tab("Audio", id="audio"):
                with gr.Row():
                    say_text = gr.Textbox(label="text", value="the notes C E G", scale=3)
                    a_guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="guidance_scale")
                    a_seed = gr.Number(0, precision=0, label="seed (empty: random)")
                say_btn = gr.Button("Say", variant="primary")
                said = gr.Audio(label="audio", type="filepath", interactive=False)
                heard = gr.Audio(label="audio to transcribe (WAV)", type="filepath", format=None,
                                 sources=["upload", "microphone"])
                with gr.Row():
                    take_said = gr.Button("Use the audio above")
                    tr_btn = gr.Button("Transcribe", variant="primary")
                tr_text = gr.Textbox(label="transcript", interactive=False)

        # ---- events
        model.change(describe, model, [about, steps], api_name="describe_model")

        @progressed("drawing")
        def do_draw(model, prompt, n, guidance, best_of, seed, steps):
            paths = app.draw(model, prompt, n, guidance, best_of, seed, steps)
            return paths, paths

        draw_btn.click(do_draw, [model, prompt, n, guidance, best_of, seed, steps], [gallery, drawn], api_name="draw")
        prompt.submit(do_draw, [model, prompt, n, guidance, best_of, seed, steps], [gallery, drawn],
                      api_name=False)

        def select(evt):
            return evt.index

        select.__annotations__ = {"evt": gr.SelectData}  # how gradio knows to pass the selection

        gallery.select(select, None, picked, api_name=False)

        def chosen(paths, index):
            if not paths:
                raise gr.Error("draw an image first")
            return paths[min(int(index or 0), len(paths) - 1)]

        def send_caption(paths, index):
            path = chosen(paths, index)
            return path, path, gr.Tabs(selected="caption")

        def send_edit(paths, index):
            path = chosen(paths, index)
            return path, path, gr.Tabs(selected="edit")

        to_caption.click(send_caption, [drawn, picked], [cap_file, cap_view, tabs], api_name=False)
        to_edit.click(send_edit, [drawn, picked], [edit_file, painted, tabs], api_name=False)

        def show_upload(path):
            return None if not path else app.save_image(app.read_image(path))

        show_upload = _shown(gr, show_upload)

        cap_file.upload(show_upload, cap_file, cap_view, api_name=False)
        edit_file.upload(show_upload, edit_file, painted, api_name=False)

        @progressed("captioning")
        def do_caption(model, path):
            return app.caption(model, path)

        cap_btn.click(do_caption, [model, cap_file], cap_text, api_name="caption")

        def use_preset(name):
            p = EDIT_PRESETS[name]
            return p["best_of"], p["retries"], p["reason"], p["plan_in_words"], p["greedy_plan"]

        preset.change(use_preset, preset, [e_best_of, e_retries, e_reason, e_words, e_greedy], api_name=False)

        @progressed("editing")
        def do_edit(model, path, instruction, guidance, image_guidance, best_of, reason, words, greedy, retries,
                    seed, mask_text="", painted=None):
            return app.edit(model, path, instruction, guidance, image_guidance, best_of, reason, words, greedy,
                            retries, seed, mask_text, painted)

        edit_btn.click(do_edit, [model, edit_file, instruction, e_guidance, e_image_guidance, e_best_of, e_reason,
                                 e_words, e_greedy, e_retries, e_seed, mask_text, painted],
                       [before, after, plan], api_name="edit")

        def do_document(model, mode, opening, steps, best_of, reason, words, tokens, seed, progress=gr.Progress()):
            if mode == "story":
                progress(0, desc=f"writing a {int(steps)}-step story")
                growing = app.story(model, opening, steps, best_of, reason, words, seed)
            else:
                growing = app.continuation(model, opening, tokens, seed)
            doc = None
            for doc in growing:
                yield document_html(doc), None
            yield document_html(doc), app.downloads(doc)

        doc_btn.click(_shown(gr, do_document), [model, mode, opening, s_steps, s_best_of, s_reason, s_words, s_tokens,
                                                s_seed], [doc_view, doc_files], api_name="story")

        @progressed("saying")
        def do_say(model, text, guidance, seed):
            return app.say(model, text, guidance, seed)

        say_btn.click(do_say, [model, say_text, a_guidance, a_seed], said, api_name="say")
        take_said.click(lambda path: path, said, heard, api_name=False)

        @progressed("transcribing")
        def do_transcribe(model, path):
            return app.transcribe(model, path)

        tr_btn.click(do_transcribe, [model, heard], tr_text, api_name="transcribe")
    return demo


def launch(model_dirs=(), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True, loader=None):
    """Build the app over the bundled models and `model_dirs` and serve it at http://host:port;
    returns (demo, url). With `block=False` the server runs in a thread (`demo.close()` stops it)."""
    workdir = Path(tempfile.mkdtemp(prefix="anygen-serve-")).resolve()
    atexit.register(shutil.rmtree, workdir, True)
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")  # Gradio's uploads land in the app's folder
    gr = import_gradio()
    app = App(Models(model_choices(model_dirs), loader), workdir)
    demo = build(app, gr).queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    _, url, _ = demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, theme=theme, css=CSS,
                            ssr_mode=False, share=False, prevent_thread_lock=not block, quiet=not block,
                            footer_links=["api"], mcp_server=False)
    if not block:
        demo.anygen_workdir = workdir
    return demo, url


def cmd_serve(args) -> None:
    if not 0 < args.port < 65536:
        raise AnygenError(f"--port must be in 1..65535, got {args.port}")
    model_choices(args.model or ())  # checked before Gradio loads
    launch(args.model or (), host=args.host, port=args.port)


def bench(model: str | None = None, repeats: int = 3, prompt: str = EXAMPLE_PROMPT,
          instruction: str = EXAMPLE_INSTRUCTION, opening: str = EXAMPLE_OPENING) -> dict[str, float]:
    """Seconds from request to result through a local server (`gradio_client`, as a click does), the
    median of `repeats` after one warm-up call each: one drawn image, an edit with the accurate
    preset, a `BENCH_STORY_STEPS`-step story, plain and reasoned."""
    import socket
    import statistics
    import time

    from gradio_client import Client, handle_file

    with socket.socket() as probe:
        probe.bind((DEFAULT_HOST, 0))
        port = probe.getsockname()[1]
    given = [model] if model else []
    name = next(iter(model_choices(given)))  # the model named, else the page's first
    demo, url = launch(given, port=port, block=False)
    try:
        client = Client(url, verbose=False)
        [first] = client.predict(name, prompt, 1, 1.0, 1, 0, 25, api_name="/draw")
        source = handle_file(first["image"])
        a = ACCURATE_EDIT
        calls = {
            "draw": lambda: client.predict(name, prompt, 1, 1.0, 1, 0, 25, api_name="/draw"),
            "edit_accurate": lambda: client.predict(name, source, instruction, 1.0, 1.0, a["best_of"], a["reason"],
                                                    a["plan_in_words"], a["greedy_plan"], a["retries"], 0, "", None,
                                                    api_name="/edit"),
            "story": lambda: client.predict(name, "story", opening, BENCH_STORY_STEPS, 1, False, False, 256, 0,
                                            api_name="/story"),
            "story_reasoned": lambda: client.predict(name, "story", opening, BENCH_STORY_STEPS, 1, True, False, 256,
                                                     0, api_name="/story"),
        }
        results = {}
        for what, call in calls.items():
            call()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            results[f"{what}.seconds"] = statistics.median(times)
        return results
    finally:
        demo.close()
        shutil.rmtree(demo.anygen_workdir, ignore_errors=True)


def add_command(sub) -> None:
    """Register `anygen serve` on the CLI's subparsers."""
    p = sub.add_parser("serve", help="a local web app (Gradio) over the Python API (pip install anygen[ui])")
    p.add_argument("--model", action="append", metavar="DIR|NAME",
                   help="a model directory or a bundled model's name to offer beside the bundled ones (repeatable)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_serve)
