"""Output paths and flags of every CLI verb are checked before a model loads or work starts.

Each bad case runs with `--model` naming a directory that does not exist: the one-line error
must be about the output path (or flag), which shows the check comes before the model load.
"""

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import anygen
import anygen.io as aio
from anygen.cli import main as cli_main
from anygen.cli import writing_output
from anygen.document import Audio
from anygen.errors import AnygenError
from anygen.io import atomic_directory, check_output_path
from anygen.worlds.shapes.judges import measure_judges
from test_reliability import cli_error


@pytest.fixture
def places(tmp_path):
    """A scratch folder with a file, a folder, a source image and a model path that does not exist."""
    (tmp_path / "file.txt").write_text("keep me")
    (tmp_path / "folder").mkdir()
    PILImage.new("RGB", (16, 16), "white").save(tmp_path / "src.png")
    return tmp_path


NO_MODEL = ["--model", "{tmp}/no-model"]
DRAW = ["draw", "a red circle", *NO_MODEL]
EDIT = ["edit", "{tmp}/src.png", "make it blue", *NO_MODEL]
SAY = ["say", "the notes C E G", *NO_MODEL]
GENERATE = ["generate", "a red circle", *NO_MODEL]

BAD_OUTPUTS = [
    # image and audio files: a folder, no or an unknown ending, empty, under a file
    (DRAW + ["--out", "{tmp}/folder"], "--out: {tmp}/folder is a directory; expected a file name"),
    (DRAW + ["--out", "{tmp}/picture"], "--out: {tmp}/picture has no file ending (expected .png, .jpg"),
    (DRAW + ["--out", "{tmp}/picture.xyz"], "has ending '.xyz' (expected .png"),
    (DRAW + ["--out", "{tmp}/picture.wav"], "has ending '.wav' (expected .png"),
    (DRAW + ["--out", ""], "--out: expected a path, got ''"),
    (DRAW + ["--out", "{tmp}/file.txt/x.png"], "cannot write {tmp}/file.txt/x.png: {tmp}/file.txt is a file"),
    (DRAW + ["--out", "{tmp}/file.txt/deeper/x.png"], "{tmp}/file.txt is a file, not a directory"),
    (EDIT + ["--out", "{tmp}/folder"], "--out: {tmp}/folder is a directory"),
    (EDIT + ["--out", "{tmp}/edited.xyz"], "has ending '.xyz'"),
    (EDIT + ["--out", ""], "--out: expected a path"),
    (EDIT + ["--out", "{tmp}/file.txt/x.png"], "{tmp}/file.txt is a file, not a directory"),
    (SAY + ["--out", "{tmp}/folder"], "--out: {tmp}/folder is a directory"),
    (SAY + ["--out", "{tmp}/sound"], "has no file ending (expected .wav)"),
    (SAY + ["--out", "{tmp}/sound.png"], "has ending '.png' (expected .wav)"),
    (SAY + ["--out", ""], "--out: expected a path"),
    (SAY + ["--out", "{tmp}/file.txt/x.wav"], "{tmp}/file.txt is a file, not a directory"),
    # document and artifact directories: an existing file, empty, under a file
    (GENERATE + ["--out", "{tmp}/file.txt"], "--out: {tmp}/file.txt is a file; expected a directory"),
    (GENERATE + ["--out", ""], "--out: expected a path"),  # not the current directory
    (GENERATE + ["--out", "{tmp}/file.txt/doc"], "{tmp}/file.txt is a file, not a directory"),
    (["worlds", "sample", "shapes", "--out", "{tmp}/file.txt"], "--out: {tmp}/file.txt is a file"),
    (["demo", *NO_MODEL, "--out", "{tmp}/file.txt"], "--out: {tmp}/file.txt is a file"),
    (["bundle", "{tmp}/no-model", "--out", "{tmp}/file.txt"], "--out: {tmp}/file.txt is a file"),
    (["tokenizer", "assemble", "--text", "{tmp}/no-text", "--out", "{tmp}/file.txt"],
     "--out: {tmp}/file.txt is a file"),
    # --json files
    (["eval", "judges", "--n", "1", "--json", "{tmp}/folder"], "--json: {tmp}/folder is a directory"),
    (["eval", "shapes", *NO_MODEL, "--json", "{tmp}/file.txt/r.json"], "--json: cannot write"),
    (["tokenizer", "eval", "{tmp}/no-codec", "--json", "{tmp}/folder"], "--json: {tmp}/folder is a directory"),
    (["bench", "sample", *NO_MODEL, "--json", "{tmp}/folder"], "--json: {tmp}/folder is a directory"),
    (["bench", "train", "{tmp}/no-recipe.yaml", "--json", "{tmp}/folder"], "--json: {tmp}/folder is a directory"),
]


@pytest.mark.parametrize("argv,message", BAD_OUTPUTS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_output_paths_are_refused_before_the_model_loads(places, capsys, argv, message):
    argv = [a.replace("{tmp}", str(places)) for a in argv]
    line = cli_error(argv, capsys)
    assert message.replace("{tmp}", str(places)) in line
    assert "no-model" not in line  # the model was never looked at
    assert (places / "file.txt").read_text() == "keep me"  # nothing replaced
    assert sorted(p.name for p in places.iterdir()) == ["file.txt", "folder", "src.png"]  # nothing written


@pytest.mark.parametrize("argv", [DRAW + ["--out", "{tmp}/a/b.png"], SAY + ["--out", "{tmp}/a/b.wav"],
                                  GENERATE + ["--out", "{tmp}/a/b"], ["eval", "judges", "--json", "{tmp}/a/b.json"]])
def test_unwritable_output_folders_are_refused(places, capsys, monkeypatch, argv):
    """The writability check goes through `anygen.io.writable_dir` (a read-only filesystem, no permission)."""
    asked = []
    monkeypatch.setattr(aio, "writable_dir", lambda d: asked.append(Path(d)) or False)
    line = cli_error([a.replace("{tmp}", str(places)) for a in argv], capsys)
    assert re.search(r"--(out|json): cannot write .*: .* is not writable \(read-only filesystem or no permission\)",
                     line), line
    assert asked == [places]  # the deepest folder that exists (a/ is created only when writing)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(AnygenError, match="is not writable"):
            check_output_path(ro / "x.png", "--out", (".png",))
    finally:
        ro.chmod(0o755)


def test_writable_dir_sees_permissions_and_read_only_mounts(tmp_path):
    assert aio.writable_dir(tmp_path)
    assert not aio.writable_dir(tmp_path / "missing")


@pytest.mark.parametrize("argv,message", [
    (DRAW + ["--seed", str(2 ** 70), "--out", "{tmp}/x.png"], "seed: must be in [-2**63, 2**64)"),
    (SAY + ["--seed", str(2 ** 70), "--out", "{tmp}/x.wav"], "seed: must be in"),
    (EDIT + ["--seed", str(-2 ** 70), "--out", "{tmp}/x.png"], "seed: must be in"),
    (["caption", "{tmp}/src.png", *NO_MODEL, "--seed", str(2 ** 64)], "seed: must be in"),
    (DRAW + ["--temperature", "inf", "--out", "{tmp}/x.png"], "temperature: expected a finite number"),
    (DRAW + ["--top-p", "1e-30", "--out", "{tmp}/x.png"], "top_p: must be in"),
    (DRAW + ["--n", "0", "--out", "{tmp}/x.png"], "--n must be in 1..4096, got 0"),
    (DRAW + ["--sjd-window", "1", "--out", "{tmp}/x.png"], "sjd_window: must be in [2, 4096]"),
    (["bench", "sample", *NO_MODEL, "--sjd-window", "0"], "sjd_window: must be in [2, 4096]"),
    (GENERATE + ["--max-new-tokens", "0", "--out", "{tmp}/o"], "--max-new-tokens must be at least 1"),
    (["draw", " ", *NO_MODEL, "--out", "{tmp}/x.png"], "prompt is empty"),
    (["edit", "{tmp}/src.png", "", *NO_MODEL, "--out", "{tmp}/x.png"], "instruction is empty"),
    (["caption", "{tmp}/missing.png", *NO_MODEL], "missing.png: image file not found"),
    (["describe-edit", "{tmp}/src.png", "{tmp}/file.txt", *NO_MODEL], "file.txt: cannot read image"),
    (["transcribe", "{tmp}/src.png", *NO_MODEL], "src.png: cannot read audio, expected a WAV file"),
    (["eval", "judges", "--n", "0"], "n must be an integer >= 1, got 0"),
    (["eval", "shapes", *NO_MODEL, "--n", "0"], "--n: must be >= 1, got 0"),
])
def test_flags_and_inputs_are_checked_before_the_model_loads(places, capsys, argv, message):
    line = cli_error([a.replace("{tmp}", str(places)) for a in argv], capsys)
    assert message in line and "no-model" not in line


def test_measure_judges_refuses_no_samples():
    with pytest.raises(AnygenError, match="n must be an integer >= 1, got 0"):
        measure_judges(n=0)


class FakeGenerator:
    """What `anygen.load` returns here: draws grey squares and says silence (only the writing is tested)."""

    def draw(self, text, n=1, seed=0, options=None, strict=False, **settings):
        return [PILImage.new("RGB", (8, 8), "grey") for _ in range(n)]

    def say(self, text, guidance_scale=1.0, seed=0, strict=False):
        return Audio(np.zeros(80, np.float32), 8000)


def test_good_outputs_are_written_in_the_format_their_ending_names(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(anygen, "load", lambda directory=None, device="cpu": FakeGenerator())
    assert cli_main(["draw", "a red circle", "--out", str(tmp_path / "one.JPG")]) == 0
    with PILImage.open(tmp_path / "one.JPG") as im:
        assert im.format == "JPEG"
    assert cli_main(["draw", "a red circle", "--n", "2", "--out", str(tmp_path / "new" / "two.webp")]) == 0
    for i in range(2):
        with PILImage.open(tmp_path / "new" / f"two_{i}.webp") as im:
            assert im.format == "WEBP"
    assert cli_main(["say", "the notes C E G", "--out", str(tmp_path / "s.WAV")]) == 0
    assert (tmp_path / "s.WAV").read_bytes()[:4] == b"RIFF"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_failed_write_is_one_line(tmp_path):
    with pytest.raises(AnygenError, match=r"--out: cannot write .*x\.png \(No space left on device\)"):
        with writing_output(tmp_path / "x.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_file_is_never_replaced_by_a_directory(tmp_path, tiny_tokenizer):
    """An artifact directory saved over an existing file: refused, and the file is left as it was."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(AnygenError, match="notes.txt is a file, not a directory"):
        tiny_tokenizer.save(tmp_path / "notes.txt")
    with pytest.raises(AnygenError, match="is a file, not a directory"):
        with atomic_directory(tmp_path / "notes.txt"):
            pass
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("out,message", [("{tmp}/file.txt", "out: {tmp}/file.txt is a file; expected a directory"),
                                         ("{tmp}/file.txt/shards", "{tmp}/file.txt is a file, not a directory")])
def test_pretokenize_checks_its_out_dir_before_loading_the_tokenizer(places, capsys, out, message):
    (places / "p.yaml").write_text("seq_len: 64\n")
    line = cli_error(["pretokenize", places / "p.yaml", f"tokenizer={places}/no-tokenizer",
                      "out=" + out.replace("{tmp}", str(places))], capsys)
    assert message.replace("{tmp}", str(places)) in line and "no-tokenizer" not in line


def test_saving_a_document_over_a_file_is_one_error(places):
    from anygen.document import Document, Text

    with pytest.raises(AnygenError, match="document directory: .*file.txt is a file; expected a directory"):
        Document([Text("hi")]).save(places / "file.txt")
    with pytest.raises(AnygenError, match="file.txt is a file, not a directory"):
        Document([Text("hi")]).save(places / "file.txt" / "doc")
    assert Document.load(Document([Text("hi")]).save(places / "doc")).text == "hi"
