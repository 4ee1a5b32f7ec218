"""Fuzzing with hypothesis: random configs either validate or fail with a ConfigError naming a
field; random id sequences, including long, special-token-heavy and span-shaped ones, always
decode to a well-formed Document. (tests/test_tokenizer.py fuzzes plain random ids and
Document round trips; this file adds the structured cases.)"""

import dataclasses
import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anygen.codecs.audio import AudioCodecConfig
from anygen.codecs.image import ImageCodecConfig
from anygen.codecs.keep import encode_keeps, resolve_keeps
from anygen.config import ConfigError, build, load_config
from anygen.training.pretokenize import PretokenizeConfig
from anygen.document import Audio, Document, Image, Text
from anygen.model.decoder import DecoderConfig, LossConfig
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.training.decoder_trainer import TrainConfig
from anygen.training.tokenizer_trainer import TokenizerRecipe

torch.set_num_threads(1)

CONFIGS = [TrainConfig, DecoderConfig, LossConfig, TokenizerRecipe, ImageCodecConfig, AudioCodecConfig,
           PretokenizeConfig, GenerationConfig, SamplingSettings]


# ---- configs ---------------------------------------------------------------------------------
def _section_type(tp):
    """The dataclass inside `tp` (X or X | None), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def field_paths(cls, prefix: str = "") -> set[str]:
    """Every dotted field name of a config dataclass (sections recursively)."""
    hints = typing.get_type_hints(cls)
    paths = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        paths.add(prefix + f.name)
        section = _section_type(hints[f.name])
        if section is not None:
            paths |= field_paths(section, prefix + f.name + ".")
    return paths


SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 3), st.integers(-2**40, 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e-4, 0.99, 64.0, -1.0]),
    st.text(max_size=8), st.sampled_from(["fsq", "vq", "rvq", "flat", "delay", "synthetic", "shards", "image",
                                          "audio", "text", "cosine", "sdpa", "auto", "5e-4", "x"]),
)
KEYS = st.one_of(st.text(max_size=6), st.integers(0, 3), st.booleans())  # YAML keys need not be strings
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(KEYS, inner, max_size=3)),
                      max_leaves=8)


@st.composite
def config_data(draw, cls, depth: int = 0):
    """A dict for `cls`: a random subset of its fields, mostly plausible values, sometimes junk or unknown keys."""
    hints = typing.get_type_hints(cls)
    data = {}
    for f in dataclasses.fields(cls):
        if not f.init or not draw(st.booleans()):
            continue
        section = _section_type(hints[f.name])
        if section is not None and depth < 2 and draw(st.integers(0, 3)) > 0:
            data[f.name] = draw(config_data(section, depth + 1))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING and section is None:
            default = f.default_factory()
        choices = f.metadata.get("choices")
        options = [VALUES]
        if choices:
            options.append(st.sampled_from(choices))
        if isinstance(default, bool):
            options.append(st.booleans())
        elif isinstance(default, int):
            options.append(st.integers(-2, max(4, 2 * default)))
        elif isinstance(default, float):
            options.append(st.floats(-1.0, max(2.0, 2 * default)))
        elif isinstance(default, (list, tuple)) and default and isinstance(default[0], (int, float)):
            options.append(st.lists(st.integers(-1, 10), max_size=5))
        data[f.name] = draw(st.one_of(*options))
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text("abcxyz_", min_size=1, max_size=6))] = draw(SCALARS)
    return data


def _named_field(message: str, paths: set[str]) -> bool:
    """The message starts with a field of the schema, or (unknown key) with a known section + the key."""
    head, _, rest = message.partition(": ")
    head = re.sub(r"\[\d+\]", "", head)
    if rest.startswith("unknown config key"):  # SECTION.key, or SECTION.'odd key' (repr)
        quoted = re.split(r"['\"]", head, maxsplit=1)
        section = quoted[0].rstrip(".") if len(quoted) > 1 else head.rpartition(".")[0]
        return section == "" or section in paths
    return head in paths


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__module__.split(".")[-1] + "." + c.__name__ for c in CONFIGS])
def test_random_configs_validate_or_name_a_field(cls):
    paths = field_paths(cls)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(config_data(cls))
    def check(data):
        try:
            cfg = build(cls, data)
        except ConfigError as e:
            assert "\n" not in str(e), f"multi-line error: {e!r}"
            assert _named_field(str(e), paths), f"error does not start with a field of {cls.__name__}: {e}"
            return
        assert isinstance(cfg, cls)
        for f in dataclasses.fields(cfg):  # a validated float is a real number
            value = getattr(cfg, f.name)
            if isinstance(value, float):
                assert math.isfinite(value), f"{f.name} accepted {value}"

    check()


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=.inf", "optim.lr=-.inf", "optim.lr=nan",
                                      "optim.lr=1e999"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match=r"^optim\.lr: expected a finite number"):
        load_config(TrainConfig, None, [override, "data.kind=synthetic"])


@pytest.mark.parametrize("section,message", [
    ({1: 2, "foo": 3}, "model.1: unknown config key"),  # a YAML number key next to a string key
    ({"a\nb": 1}, "model.'a\\nb': unknown config key"),  # an odd key is quoted: the error stays one line
])
def test_odd_unknown_keys(section, message):
    with pytest.raises(ConfigError) as e:
        build(TrainConfig, {"model": section, "data": {"kind": "synthetic"}})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_default_section_that_fails_its_checks_is_named():
    with pytest.raises(ConfigError, match=r"^data\.shard_dir: is required"):
        build(TrainConfig, {})  # data.kind defaults to shards, which needs data.shard_dir


# ---- id sequences ------------------------------------------------------------------------------
import fakes as fake_codecs
TOK = fake_codecs.make_tokenizer()
V = TOK.vocab
SPECIALS = sorted(set(range(V.n_text, V.image_start)))


@st.composite
def structured_ids(draw):
    """Sequences built from span-shaped pieces: complete, truncated and corrupted image/audio spans,
    stray specials, codes outside spans, text, and ids outside the vocabulary."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "image", "audio", "special", "code", "junk"]))
        if kind == "text":
            pieces += draw(st.lists(st.integers(0, V.n_text - 1), max_size=6))
        elif kind == "image":
            body = draw(st.lists(st.integers(V.image_start, V.image_start + V.image_codebook_size - 1),
                                 max_size=6))
            grid = draw(st.sampled_from([V.grid_id((2, 2)), V.boi, V.eoi, V.eos]))
            pieces += [V.boi, grid] + body + draw(st.sampled_from([[V.eoi], [], [V.boa]]))
        elif kind == "audio":
            body = draw(st.lists(st.sampled_from([V.apad] + list(range(V.audio_start, V.size))), max_size=9))
            pieces += [V.boa] + body + draw(st.sampled_from([[V.eoa], [], [V.boi]]))
        elif kind == "special":
            pieces += draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=3))
        elif kind == "code":
            pieces += draw(st.lists(st.integers(V.image_start, V.size - 1), min_size=1, max_size=4))
        else:
            pieces += draw(st.lists(st.sampled_from([-1, V.size, V.size + 7, -100]), min_size=1, max_size=2))
    return pieces


def _well_formed(doc):
    assert isinstance(doc, Document)
    for seg in doc:
        assert isinstance(seg, (Text, Image, Audio))
        if isinstance(seg, Image):
            assert seg.image.size[0] > 0 and seg.image.mode == "RGB"
        if isinstance(seg, Audio):
            assert len(seg.waveform) > 0 and np.isfinite(seg.waveform).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_ids())
def test_structured_id_sequences_decode_to_well_formed_documents(ids):
    doc, dropped = TOK.decode(ids, report=True)
    _well_formed(doc)
    assert dropped >= 0
    assert len(doc.images) <= ids.count(V.boi) and len(doc.audios) <= ids.count(V.boa)
    _well_formed(TOK.decode(torch.tensor(ids, dtype=torch.long)))  # tensors decode the same way


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-5, V.size + 5), min_size=500, max_size=2000))
def test_long_random_sequences_decode(ids):
    _well_formed(TOK.decode(ids))


def test_complete_spans_survive_any_surrounding_noise():
    v = V
    image = [v.boi, v.grid_id((2, 2))] + [v.image_start + c for c in (1, 5, 9, 15)] + [v.eoi]
    audio = [v.boa, v.audio_range(0).start + 3, v.audio_range(1).start + 1, v.eoa]
    for noise in ([v.eoi, v.eoa], [v.image_start, v.audio_start], [v.boi], [v.boa, v.eoa]):
        doc = TOK.decode(noise + image + noise + audio)
        assert len(doc.images) == 1 and len(doc.audios) == 1


KEEP_TOK = type(TOK)(TOK.text, TOK.image, TOK.audio, image_keep=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.sampled_from([0, 1, 2, 3, "keep"]), min_size=3, max_size=5),
                          st.booleans()), max_size=4))
def test_keep_coded_sequences_decode_and_round_trip(images):
    """Image spans holding <keep> (resolvable or not, whole or cut) decode to well-formed Documents;
    spans of whole codes round-trip through encode_keeps/resolve_keeps."""
    v = KEEP_TOK.vocab
    ids = [v.bos]
    for body, close in images:
        ids += [v.boi, v.grid_id((2, 2))] + [v.keep if c == "keep" else v.image_start + c for c in body]
        ids += [v.eoi] if close else []
    doc, dropped = KEEP_TOK.decode(ids, report=True)
    _well_formed(doc)
    assert len(doc.images) + dropped <= len(images)
    plain = [t for t in ids if t != v.keep]
    assert resolve_keeps(encode_keeps(plain, v), v) == plain
