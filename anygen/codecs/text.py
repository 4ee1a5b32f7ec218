"""Text tokenizers: a sentencepiece BPE with byte fallback (trained or loaded), or a local HF tokenizer.

Both expose the same small surface: `vocab_size`, `encode(str) -> list[int]`,
`decode(list[int]) -> str`, `save(dir)`. Special tokens of the multimodal vocabulary
live *after* the text ids, so no user string can ever produce one: a literal `<boi>`
typed by a user is encoded as ordinary text pieces. A local HF tokenizer never runs
code shipped with it: `auto_map` is refused and `trust_remote_code=False`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

from anygen.errors import AnygenError, short_repr
from anygen.io import atomic_write_bytes, read_json_file

TEXT_KINDS = ("sentencepiece", "huggingface")  # what text.json's "kind" may say


class TextTokenizer:
    """sentencepiece model; exact round trip (identity normalisation, no dummy prefix)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        atomic_write_bytes(directory / "text.model", self.model_proto)
        atomic_write_bytes(directory / "text.json", json.dumps({"kind": self.kind}).encode())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        path = Path(path)
        if not path.exists():
            raise AnygenError(f"{path}: sentencepiece model not found")
        try:
            return cls(path.read_bytes())
        except Exception as e:
            raise AnygenError(f"{path}: not a sentencepiece model ({e})") from None


class HFTextTokenizer:
    """A local Hugging Face tokenizer (for `--init-from` a pretrained text LM).

    Encodes with `split_special_tokens=True`, so the LM's own special-token strings in
    user text stay text too.
    """

    kind = "huggingface"

    def __init__(self, tokenizer):
        self.tok = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.tok.save_pretrained(directory / "hf_tokenizer")
        atomic_write_bytes(directory / "text.json", json.dumps({"kind": self.kind}).encode())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "HFTextTokenizer":
        from transformers import AutoTokenizer

        from anygen.weights import refuse_remote_code

        refuse_remote_code(directory)
        try:
            return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False))
        except Exception as e:
            raise AnygenError(f"{directory}: cannot load a Hugging Face tokenizer ({e})") from None


def load_text_tokenizer(directory: str | os.PathLike):
    """Load whichever text tokenizer `save` wrote into `directory`."""
    directory = Path(directory)
    meta_path = directory / "text.json"
    meta = read_json_file(meta_path) if meta_path.exists() else {"kind": "sentencepiece"}
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in TEXT_KINDS:
        raise AnygenError(f"{meta_path}: unknown text tokenizer kind {short_repr(kind)} "
                          f"(expected {{\"kind\": ...}} with one of {', '.join(TEXT_KINDS)})")
    if kind == "huggingface":
        return HFTextTokenizer.from_pretrained(directory / "hf_tokenizer")
    return TextTokenizer.from_file(directory / "text.model")


def train_text_tokenizer(lines: Iterable[str], vocab_size: int = 1000,
                         out_dir: str | os.PathLike | None = None, model_type: str = "bpe") -> TextTokenizer:
    """Train a sentencepiece BPE (byte fallback) on `lines`; save to `out_dir` when given."""
    import sentencepiece as spm

    sentences = [line for line in lines if line and line.strip()]
    if not sentences:
        raise AnygenError("text tokenizer: the corpus is empty")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_by_whitespace=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    tokenizer = TextTokenizer(proto.getvalue())
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir)
    return tokenizer
