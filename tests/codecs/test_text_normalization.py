"""Text is encoded as the tokenizer's corpus was written: the normalisation learned when the text
tokenizer is trained (NFKC, whitespace runs, the corpus's case) is recorded in text.json and applied
before every encoding; a text.json without it encodes text as written."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anygen.codecs.text import TextNormalization, load_text_tokenizer, train_text_tokenizer
from anygen.errors import AnygenError

# lower-case captions and instructions, note names in capitals (as a world writes them)
LOWER_CORPUS = [
    "a large red circle at the top left and a small blue square at the center",
    "a small green triangle at the bottom right, a large yellow square at the top",
    "make the red circle blue", "remove the green triangle", "then the red circle turns blue.",
    "the notes C D E", "the notes A G A", "the notes E F G B",
]
MIXED_CORPUS = [
    "The red circle sits at the top left.", "A blue square is in the middle.",
    "Make the circle blue. Then remove the square.", "Anna drew a triangle in Paris.",
]


@pytest.fixture(scope="module")
def lower_text():
    return train_text_tokenizer(LOWER_CORPUS * 4, vocab_size=300)


def test_capitals_encode_as_the_lower_case_corpus(lower_text):
    enc = lower_text.encode
    assert lower_text.normalize.lowercase
    assert enc("A Large Red Circle At The Top Left.") == enc("a large red circle at the top left.")
    assert enc("A LARGE RED CIRCLE AT THE TOP LEFT") == enc("a large red circle at the top left")
    assert enc("Make the red circle blue") == enc("make the red circle blue")
    assert enc("The red circle. Then The Circle Turns Blue.") == enc("the red circle. then the circle turns blue.")


def test_words_the_corpus_writes_in_capitals_keep_them(lower_text):
    """Note names are capitals after "notes" or another note; "a" at a sentence start is the article."""
    enc = lower_text.encode
    assert enc("The Notes A G A") == enc("the notes A G A")
    assert enc("the notes a g a") == enc("the notes A G A")
    assert enc("A red circle") == enc("a red circle")


def test_unicode_forms_and_whitespace_runs_encode_as_plain_text(lower_text):
    enc = lower_text.encode
    plain = enc("a large red circle at the top")
    assert enc("ａ ｌａｒｇｅ red circle at the top") == plain  # full-width letters
    assert enc("a\u00a0large red\u2003circle at the top") == plain  # non-breaking and em spaces
    assert enc("a  large red\tcircle\n at the top") == plain


def test_the_trainer_records_case_for_a_lower_case_corpus_only(tmp_path):
    train_text_tokenizer(LOWER_CORPUS * 4, vocab_size=300, out_dir=tmp_path / "lower")
    train_text_tokenizer(MIXED_CORPUS * 4, vocab_size=300, out_dir=tmp_path / "mixed")
    lower = json.loads((tmp_path / "lower" / "text.json").read_text())["normalize"]
    mixed = json.loads((tmp_path / "mixed" / "text.json").read_text())["normalize"]
    assert lower["lowercase"] is True and lower["unicode"] == "NFKC" and lower["collapse_whitespace"] is True
    assert mixed["lowercase"] is False and mixed["unicode"] == "NFKC"
    text = load_text_tokenizer(tmp_path / "mixed")
    assert text.encode("The red circle") != text.encode("the red circle")  # prose keeps its capitals


def test_a_corpus_with_line_breaks_keeps_its_whitespace():
    rule = TextNormalization.learn(["a red circle", "the notes\nC D"])
    assert not rule.collapse_whitespace and rule("a  red\ncircle") == "a  red\ncircle"


def test_save_load_keeps_the_rule(lower_text, tmp_path):
    lower_text.save(tmp_path)
    loaded = load_text_tokenizer(tmp_path)
    assert loaded.normalize == lower_text.normalize
    for text in ("A Large Red Circle", "The Notes a g", "ａ\u00a0b"):
        assert loaded.encode(text) == lower_text.encode(text)


def test_a_directory_without_the_rule_encodes_text_as_written(lower_text, tmp_path):
    lower_text.save(tmp_path)
    (tmp_path / "text.json").write_text('{"kind": "sentencepiece"}')  # written before the rule was recorded
    old = load_text_tokenizer(tmp_path)
    assert old.normalize == TextNormalization()
    assert old.encode("A Large Red Circle") == old.sp.encode("A Large Red Circle", out_type=int)
    assert old.encode("A Large Red Circle") != old.encode("a large red circle")


@pytest.mark.parametrize("bad, message", [
    ([], "'normalize' must be an object"),
    ({"unicode": "NFX"}, "'unicode' must be one of NFC, NFKC"),
    ({"lowercase": "yes"}, "'lowercase' must be true or false"),
    ({"words": {"a": 1}}, "'words' must map words to forms"),
    ({"case": True}, "unknown 'normalize' field"),
])
def test_a_malformed_rule_is_one_error(lower_text, tmp_path, bad, message):
    lower_text.save(tmp_path)
    (tmp_path / "text.json").write_text(json.dumps({"kind": "sentencepiece", "normalize": bad}))
    with pytest.raises(AnygenError, match=message):
        load_text_tokenizer(tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_normalising_twice_changes_nothing(lower_text, text):
    rule = lower_text.normalize
    once = rule(text)
    assert rule(once) == once
    assert lower_text.encode(lower_text.decode(lower_text.encode(text))) == lower_text.encode(text)


def test_api_prompts_in_capitals_reach_the_model_as_the_corpus_writes_them(model_dir):
    """draw: the prompt ids of a capitalised, space-padded prompt are the lower-case prompt's."""
    from anygen.api import load_model
    from anygen.sampling.engine import generate

    asked = []

    def recorder(model, vocab, prompts, cfg, callback=None):
        asked.append([list(p.ids) for p in prompts])
        return generate(model, vocab, prompts, cfg, callback=callback)

    gen = load_model(model_dir, sampler=recorder)
    gen.draw_batch(["  Make The Red Circle BLUE ", "make the red circle blue"])
    assert asked[0][0] == asked[0][1]
