"""`anygen serve`: the web app's functions through `gradio_client` against a server started here
on a free localhost port with a tiny model, the app's own checks (files it may read, painted
masks, a missing Gradio), and one headless-Chromium run of the page (skipped only when chromium
or chromedriver is not installed)."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from anygen.cli import main as cli_main
from anygen.document import Document, Text
from anygen.errors import AnygenError
from anygen.serve import App, Models, import_gradio, mask_of, model_choices

REQUEST_TIMEOUT_S = 60  # one request on the tiny model takes well under a second
BROWSER_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir):
    """(url, the tiny model's name in the picker): a server in this process (so it loads the fake codecs)."""
    pytest.importorskip("gradio")
    from anygen.serve import launch

    saved = os.environ.get("GRADIO_TEMP_DIR")
    demo, url = launch([str(model_dir)], port=free_port(), block=False)
    yield url, str(model_dir)
    demo.close()
    shutil.rmtree(demo.anygen_workdir, ignore_errors=True)
    os.environ.pop("GRADIO_TEMP_DIR") if saved is None else os.environ.__setitem__("GRADIO_TEMP_DIR", saved)


@pytest.fixture(scope="module")
def client(server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(server[0], verbose=False, httpx_kwargs={"timeout": REQUEST_TIMEOUT_S})


def draw(client, name, n=2):
    return client.predict(name, "a large red circle at the top left", n, 1.0, 1, 0, 25, api_name="/draw")


def test_draw_returns_images(client, server):
    images = draw(client, server[1])
    assert len(images) == 2
    for item in images:
        with PILImage.open(item["image"]) as im:
            assert im.format == "PNG" and im.width > 0
    fresh = client.predict(server[1], "a large red circle at the top left", 1, 1.0, 1, None, 25, api_name="/draw")
    assert len(fresh) == 1  # an empty seed field samples afresh


def test_caption_returns_text(client, server):
    from gradio_client import handle_file

    image = draw(client, server[1], n=1)[0]["image"]
    caption = client.predict(server[1], handle_file(image), api_name="/caption")
    assert isinstance(caption, str)


def test_bad_upload_shows_the_library_message(client, server, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a picture")
    with pytest.raises(Exception) as caught:
        client.predict(server[1], handle_file(str(bad)), api_name="/caption")
    message = str(caught.value)
    assert "holiday.png: cannot read image: not a PNG/JPEG" in message
    assert "anygen-serve-" not in message  # the server's own folder is not shown


def test_edit_returns_before_after_and_plan(client, server):
    from gradio_client import handle_file

    image = draw(client, server[1], n=1)[0]["image"]
    before, after, plan = client.predict(server[1], handle_file(image), "make the red circle blue", 1.0, 1.0, 2,
                                         True, False, False, 0, 0, "box:0,0,0,0", None, api_name="/edit")
    with PILImage.open(image) as source, PILImage.open(before) as shown, PILImage.open(after) as edited:
        assert shown.size == source.size and edited.size == source.size
    assert isinstance(plan, str)


def test_edit_accepts_a_painted_mask(client, server, tmp_path):
    from gradio_client import handle_file

    image = draw(client, server[1], n=1)[0]["image"]
    with PILImage.open(image) as source:
        layer = PILImage.new("RGBA", source.size, (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (0, 0, layer.width // 4, layer.height // 4))
    layer.save(tmp_path / "layer.png")
    painted = {"background": handle_file(image), "layers": [handle_file(str(tmp_path / "layer.png"))],
               "composite": None, "id": None}
    _, after, _ = client.predict(server[1], handle_file(image), "make the red circle blue", 1.0, 1.0, 1, False,
                                 False, False, 0, 5, "", painted, api_name="/edit")
    assert Path(after).is_file()


def test_story_renders_and_downloads(client, server):
    html, files = client.predict(server[1], "story", "a small green square at the center", 1, 1, False, False, 32,
                                 0, api_name="/story")
    assert "a small green square at the center" in html
    archive = next(f for f in files if f.endswith(".zip"))
    assert "document.json" in zipfile.ZipFile(archive).namelist()
    assert any(f.endswith("index.html") for f in files)


def test_bench_times_each_request_through_a_server(model_dir, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ.get("GRADIO_TEMP_DIR", str(tmp_path)))  # restored after
    assert cli_main(["bench", "serve", "--model", str(model_dir), "--repeats", "1",
                     "--json", str(tmp_path / "b.json")]) == 0
    results = json.loads((tmp_path / "b.json").read_text())
    assert set(results) == {"draw.seconds", "edit_accurate.seconds", "story.seconds", "story_reasoned.seconds"}
    assert all(0 < v < REQUEST_TIMEOUT_S for v in results.values())


def test_say_then_transcribe(client, server):
    from gradio_client import handle_file

    wav = client.predict(server[1], "the notes C E G", 1.0, 0, api_name="/say")
    assert Path(wav).read_bytes()[:4] == b"RIFF"
    assert isinstance(client.predict(server[1], handle_file(wav), api_name="/transcribe"), str)


# ---- the app's own checks (no server) ----------------------------------------------------------
class NoModels(Models):
    def get(self, name):
        raise AssertionError("the model is not needed to refuse the file")


def test_app_reads_only_files_inside_its_folder(tmp_path):
    app = App(NoModels({"m": tmp_path}), tmp_path / "work")
    outside = tmp_path / "secret.png"
    PILImage.new("RGB", (4, 4)).save(outside)
    with pytest.raises(AnygenError, match="not a file this app received"):
        app.caption("m", str(outside))
    with pytest.raises(AnygenError, match="not a file this app received"):
        app.caption("m", str(tmp_path / "work" / ".." / "secret.png"))
    with pytest.raises(AnygenError, match="not a file this app received"):
        app.transcribe("m", "/etc/passwd")


class RecordingModel:
    """What `App.edit` needs of a model: a 2x2 code grid, no world; it records the options it is given."""

    vocab = type("Vocab", (), {"image_grids": [(2, 2)]})
    meta: dict = {}

    def edit(self, image, instruction, seed, options):
        self.options = options
        return image


def test_edit_passes_the_painted_and_typed_mask(tmp_path):
    model = RecordingModel()
    app = App(Models({"m": tmp_path}, loader=lambda directory: model), tmp_path / "work")
    source = app.save_image(PILImage.new("RGB", (8, 8), "white"))
    layer = np.zeros((8, 8, 4), np.uint8)
    layer[0:2, 0:2, 3] = 255  # painted over the top-left cell
    app.edit("m", source, "make it red", 1.0, 1.0, 1, False, False, False, 0, 0, "box:1,1,1,1", {"layers": [layer]})
    assert model.options.editable == (True, False, False, True)
    app.edit("m", source, "make it red", 1.0, 1.0, 1, False, False, False, 0, 0, "", {"layers": [layer]})
    assert model.options.editable == (True, False, False, False)
    app.edit("m", source, "make it red", 1.0, 1.0, 1, False, False, False, 0, 0, "", None)
    assert model.options.editable is None


def test_story_is_shown_as_it_grows(tmp_path, gen, model_dir):
    """The app yields the opening, then the opening plus each finished segment; the last is the story."""
    app = App(Models({"m": model_dir}, loader=lambda directory: gen), tmp_path / "work")
    shown = list(app.story("m", "a small red circle", 2, 1, False, False, 0))
    assert shown[0] == Document([Text("a small red circle")]) and len(shown) > 2
    assert all(len(a) < len(b) for a, b in zip(shown[1:-1], shown[2:-1]))  # each view adds a segment
    story = gen.story("a small red circle", n_steps=2, seed=0)
    assert shown[-1].with_text_joined() == story.with_text_joined() == shown[-2].with_text_joined()
    with pytest.raises(AnygenError, match="opening is empty"):
        next(app.story("m", "  ", 2, 1, False, False, 0))


def test_painted_cells_become_the_editable_flags():
    layer = np.zeros((40, 40, 4), np.uint8)
    layer[2:5, 30:33, 3] = 255  # a stroke in the top-right quarter
    assert mask_of({"background": None, "layers": [layer], "composite": None}, (2, 2)) == [False, True, False, False]
    assert mask_of({"layers": [np.zeros((40, 40, 4), np.uint8)]}, (2, 2)) is None
    assert mask_of(None, (2, 2)) is None


def test_missing_gradio_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(AnygenError, match=r"pip install anygen\[ui\]"):
        import_gradio()


def test_serve_refuses_an_unknown_model_before_starting(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "not a model directory nor a bundled model" in capsys.readouterr().err
    assert list(model_choices())[0] == "default"  # the bundled model is always offered


# ---- the page in a browser ---------------------------------------------------------------------
def chrome_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def test_browser_draws_an_image(server, tmp_path):
    browser, driver_path = chrome_paths()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(BROWSER_TIMEOUT_S)
        driver.get(server[0])
        wait = WebDriverWait(driver, BROWSER_TIMEOUT_S)
        prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#draw-prompt textarea")))
        prompt.clear()
        prompt.send_keys("a small blue square at the center")
        driver.find_element(By.CSS_SELECTOR, "#draw-button").click()
        image = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#draw-gallery img")))
        assert image.get_attribute("src")
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 0
        assert server[1] in driver.page_source  # the tiny model is the one picked
        urls = requested_urls(driver)
        assert urls, "the browser's network log is empty"
        hosts = {url.split("/")[2] for url in urls if url.startswith(("http://", "https://"))}
        assert hosts <= {server[0].split("/")[2]}, f"the page fetched from outside: {sorted(hosts)}"
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
