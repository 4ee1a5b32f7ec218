"""How much English a model keeps: its perplexity on a fixed English paragraph.

`anygen eval english --model DIR` reads `anygen/assets/english.txt` (a short paragraph written for
this repository: plain narrative English, no domain words) with the model's own text tokenizer,
which must be a Hugging Face BPE (the tokenizer of a pretrained LM, as `anygen tokenizer assemble
--text <LM dir>` builds and `anygen import-lm` writes). DIR is an anygen model directory whose
tokenizer's text part is such a BPE, or a plain transformers causal-LM directory with its tokenizer
(the `anygen import-lm` output: the figure *before* extending). Run it on both for before/after.

Contract: the sequence is the LM's BOS token (when its tokenizer has one) followed by the
paragraph's ids; the perplexity is exp(mean next-token negative log-likelihood) over the
paragraph's ids. `perplexity` normalises over the text ids alone (the first `n_text` rows, the
ids a text span may emit), so a pretrained LM and its extension are measured on the same
distribution; `perplexity_full_vocab` over every row the model has (new code rows included).
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path

import torch

from anygen.errors import AnygenError

ENGLISH_FILE = "english.txt"  # in anygen/assets/: the fixed paragraph every figure reads


def english_text() -> str:
    """The fixed English paragraph."""
    return resources.files("anygen").joinpath("assets", ENGLISH_FILE).read_text(encoding="utf-8").strip()


def _hf_text_tokenizer(directory: Path):
    """(the Hugging Face tokenizer of `directory`'s text, "anygen" | "lm"): an anygen model's text part,
    or the tokenizer of a plain transformers directory."""
    from anygen.codecs.text import HF_TOKENIZER_FILE, HFTextTokenizer, load_text_tokenizer

    if (directory / "tokenizer" / "text").is_dir():
        text = load_text_tokenizer(directory / "tokenizer" / "text")
        if not isinstance(text, HFTextTokenizer):
            raise AnygenError(f"{directory}: its text tokenizer is anygen's own ({text.kind}), not a pretrained "
                              "LM's Hugging Face BPE: English perplexity is measured on models built on one")
        return text.tok, "anygen"
    if (directory / HF_TOKENIZER_FILE).is_file():
        return HFTextTokenizer.from_pretrained(directory).tok, "lm"
    raise AnygenError(f"{directory}: no tokenizer/ (an anygen model) and no {HF_TOKENIZER_FILE} (a transformers LM)")


@torch.no_grad()
def english_perplexity(model_dir: str | os.PathLike, text: str | None = None) -> dict:
    """{"perplexity", "perplexity_full_vocab", "tokens", "kind"} of the model in `model_dir` on `text`
    (default: `english_text()`); see the module docstring for the contract."""
    from anygen.model.decoder import load_decoder

    directory = Path(model_dir)
    tok, kind = _hf_text_tokenizer(directory)
    text = english_text() if text is None else text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    if len(ids) < 2:
        raise AnygenError("the English text is too short to measure")
    model = load_decoder(directory).eval()
    n_text = len(tok)
    seq = torch.tensor([bos + ids])
    logits = model(input_ids=seq).logits[0, :-1].double()  # (T-1, V)
    targets = seq[0, 1:]
    full = torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
    text_only = torch.nn.functional.cross_entropy(logits[:, :n_text], targets, reduction="mean")
    return {"perplexity": math.exp(float(text_only)), "perplexity_full_vocab": math.exp(float(full)),
            "tokens": int(targets.numel()), "kind": kind}
