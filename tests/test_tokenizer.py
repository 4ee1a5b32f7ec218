"""MultimodalTokenizer: Document <-> ids round trips, special-token injection, malformed-span policy."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from anygen.document import Audio, Document, Image, Text

import fakes as fake_codecs

TOK = fake_codecs.make_tokenizer()


def _grey_image(levels):  # 2x2 grid of grey levels the fake codec reproduces exactly
    g = np.array(levels, dtype=np.uint8).reshape(2, 2)
    return PILImage.fromarray(g, mode="L").resize((8, 8), PILImage.Resampling.NEAREST).convert("RGB")


def test_document_ids_round_trip():
    image = TOK.image.decode_images(torch.tensor([[[1, 5], [9, 15]]]))[0]
    wave = TOK.audio.decode_audio(torch.tensor([[3, 5], [1, 1]]))
    doc = Document([Text("a red circle "), Image(image), Text("the notes C E"), Audio(wave, 8000)])
    ids = TOK.encode(doc)
    v = TOK.vocab
    assert ids[0] == v.bos and ids[-1] == v.eos
    assert ids.count(v.boi) == 1 and ids.count(v.boa) == 1
    back = TOK.decode(ids)
    assert [type(s) for s in back] == [Text, Image, Text, Audio]
    assert back.segments[0].text == "a red circle " and back.segments[2].text == "the notes C E"
    again = TOK.encode(back)
    cut = ids.index(TOK.vocab.boa)  # the fake audio codec is lossy; text and image codes are exact
    assert again[:cut] == ids[:cut] and len(again) == len(ids)


def test_adjacent_texts_encode_as_one_text():
    assert TOK.encode(Document([Text("m"), Text("a")])) == TOK.encode(Document.of("ma"))


def test_image_span_layout():
    codes = torch.tensor([[1, 2], [3, 4]])
    span = TOK.image_span(codes)
    v = TOK.vocab
    assert span[0] == v.boi and span[1] == v.grid_id((2, 2)) and span[-1] == v.eoi
    assert span[2:-1] == (codes.reshape(-1) + v.image_start).tolist()


@pytest.mark.parametrize("literal", ["<boi>", "<eos>", "<null>", "<grid_2x2>", "<pad><eoi>"])
def test_user_text_never_produces_special_ids(literal):
    ids = TOK.encode(Document.of(f"draw {literal} now"), bos=False, eos=False)
    assert all(0 <= i < TOK.vocab.n_text for i in ids)
    assert TOK.decode(ids).text == f"draw {literal} now"


def test_truncated_image_span_is_dropped_and_text_continues():
    v = TOK.vocab
    text = TOK.encode_text("after")
    ids = [v.bos, v.boi, v.grid_id((2, 2)), v.image_start, v.image_start + 1, v.eoi] + text + [v.eos]
    doc, dropped = TOK.decode(ids, report=True)
    assert dropped == 1 and doc.images == [] and doc.text == "after"


def test_audio_span_with_wrong_level_keeps_whole_frames():
    v = TOK.vocab
    a0, a1 = v.audio_range(0).start, v.audio_range(1).start
    ids = [v.boa, a0 + 2, a1 + 1, a0 + 3, a0 + 1, v.eoa]  # third slot should be level 1
    doc = TOK.decode(ids)
    assert len(doc.audios) == 1 and len(doc.audios[0].waveform) == TOK.audio.hop


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=TOK.vocab.size - 1), max_size=80))
def test_any_id_sequence_decodes_to_a_well_formed_document(ids):
    doc = TOK.decode(ids)
    for seg in doc:
        assert isinstance(seg, (Text, Image, Audio))
        if isinstance(seg, Audio):
            assert np.isfinite(seg.waveform).all() and len(seg.waveform) > 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).map(Text),
    st.lists(st.integers(0, 15), min_size=4, max_size=4).map(
        lambda c: Image(TOK.image.decode_images(torch.tensor(c).reshape(1, 2, 2))[0])),
), max_size=5))
@example([Text("m"), Text("a")])  # adjacent texts are one text: "ma" may be a single subword
def test_random_documents_round_trip(segments):
    ids = TOK.encode(Document(segments))
    assert TOK.encode(TOK.decode(ids)) == ids


def test_save_load_keeps_vocab(tmp_path, monkeypatch):
    import anygen.codecs.audio as audio_mod
    import anygen.codecs.image as image_mod

    monkeypatch.setattr(image_mod, "ImageCodec", fake_codecs.FakeImageCodec)
    monkeypatch.setattr(audio_mod, "AudioCodec", fake_codecs.FakeAudioCodec)
    TOK.save(tmp_path / "tok")
    from anygen.tokenizer import MultimodalTokenizer

    loaded = MultimodalTokenizer.load(tmp_path / "tok")
    assert loaded.vocab == TOK.vocab
    assert loaded.encode_text("make the red circle blue") == TOK.encode_text("make the red circle blue")


def test_load_errors(tmp_path):
    from anygen.errors import AnygenError
    from anygen.tokenizer import MultimodalTokenizer

    with pytest.raises(AnygenError, match="missing tokenizer.json"):
        MultimodalTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"format_version": 99}')
    with pytest.raises(AnygenError, match="format version 99"):
        MultimodalTokenizer.load(tmp_path)
