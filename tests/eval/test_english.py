"""`anygen eval english`: perplexity of the fixed English paragraph over a pretrained LM's BPE."""

import json
import math

import pytest
import torch

from anygen.errors import AnygenError
from anygen.eval.english import english_perplexity, english_text
from model.test_init_from import save_pretrained_lm


def test_the_paragraph_is_bundled():
    text = english_text()
    assert len(text.split()) > 100 and text.isascii()


def test_perplexity_of_a_transformers_lm_is_the_mean_nll_over_text_ids(tmp_path):
    from transformers import AutoTokenizer

    from anygen.model.decoder import load_decoder

    lm = tmp_path / "lm"
    save_pretrained_lm(lm)  # 48 rows over a smaller word-level tokenizer
    text = "w1 w5 w2 w7 w3"
    got = english_perplexity(lm, text)
    tok = AutoTokenizer.from_pretrained(str(lm))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = load_decoder(lm)(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    want = torch.nn.functional.cross_entropy(logits[:, :len(tok)], torch.tensor(ids[1:]))
    assert got["kind"] == "lm" and got["tokens"] == len(ids) - 1
    assert got["perplexity"] == pytest.approx(math.exp(float(want)), rel=1e-9)
    assert got["perplexity_full_vocab"] > got["perplexity"]  # the extra rows take some probability


def test_a_model_on_anygens_own_text_tokenizer_is_refused(model_dir):
    with pytest.raises(AnygenError, match="Hugging Face BPE"):
        english_perplexity(model_dir)


def test_cli_prints_and_writes_the_figure(tmp_path, capsys):
    from anygen.cli import main

    lm = tmp_path / "lm"
    save_pretrained_lm(lm)
    assert main(["eval", "english", "--model", str(lm), "--json", str(tmp_path / "ppl.json")]) in (0, None)
    saved = json.loads((tmp_path / "ppl.json").read_text())
    assert saved["perplexity"] > 1 and saved["kind"] == "lm"
