"""The package ships a default model that loads with the real codecs and fits the size budget."""

import torch

import anygen


def test_bundled_model_loads_and_fits_the_budget():
    from anygen.api import DEFAULT_MODEL

    assert DEFAULT_MODEL.is_dir(), "the package ships its default model in anygen/assets/default"
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
    assert size < 30e6, f"bundled model is {size / 1e6:.1f} MB, over the 30 MB budget"
    gen = anygen.load()
    assert gen.tokenizer.image is not None and gen.tokenizer.audio is not None
    assert gen.model.get_input_embeddings().weight.shape[0] == gen.vocab.size
    assert gen.model.dtype == torch.float32  # stored in float16, computed in float32


def test_bundled_model_reasons_about_an_edit_before_drawing_it():
    """The bundled model was trained with reasoned_edit in the `slots` form: it lists the image's objects,
    then the same list with the edit made in place."""
    from anygen.worlds.shapes.world import Edit, Obj, Scene, apply_instruction, render_scene
    from anygen.worlds.shapes.plans import parse_reasoning
    from anygen.worlds.shapes.judges import judge_image

    source = Scene((Obj("square", "blue", "small", 0), Obj("circle", "red", "large", 4)))
    target = apply_instruction(source, "make the red circle green")
    edited, reasoning = anygen.load().edit_with_reasoning(render_scene(source), "make the red circle green")
    assert parse_reasoning(reasoning) == Edit("recolor", "make the red circle green", source, target).slots()
    assert judge_image(edited) == target


def test_bundled_model_encodes_prompts_as_its_corpus_writes_them():
    """Its text tokenizer records its corpus's normalisation: capitals, full-width letters and space
    runs encode as the lower-case captions it learned; note names stay capitals."""
    text = anygen.load().tokenizer.text
    enc = text.encode
    assert enc("A Large Red Circle At The Top Left") == enc("a large red circle at the top left")
    assert enc("MAKE THE RED CIRCLE BLUE") == enc("make the red circle blue")
    assert enc("ａ\u00a0small  blue square") == enc("a small blue square")
    assert enc("The Notes C E G") == enc("the notes c e g") == text.sp.encode("the notes C E G", out_type=int)


def test_bundled_model_refuses_an_edit_of_an_absent_object_in_one_line(tmp_path, capsys):
    """`anygen edit` refuses an edit that names an object the image does not hold (rc 2, one line), and
    draws it with --no-refuse."""
    from anygen.cli import main as cli_main
    from anygen.worlds.shapes.world import Obj, Scene, render_scene

    render_scene(Scene((Obj("circle", "red", "small", 4),))).save(tmp_path / "source.png")
    argv = ["edit", str(tmp_path / "source.png"), "remove the yellow circle", "--out", str(tmp_path / "out.png")]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == "anygen: error: edit refused: the image holds no yellow circle\n" and captured.out == ""
    assert not (tmp_path / "out.png").exists()
    assert cli_main(argv + ["--no-refuse"]) == 0 and (tmp_path / "out.png").exists()


def test_bundled_model_story_keeps_an_opening_that_ends_at_the_bottom():
    """The model once continued such openings ("... at the bottom left"): the first picture
    now follows the opening as written."""
    from anygen.document import Image, Text

    opening = "a small orange triangle at the bottom"  # was continued: "... at the bottom left"
    segments = list(anygen.load().story(opening, seed=24))
    assert segments[0] == Text(opening) and isinstance(segments[1], Image)
