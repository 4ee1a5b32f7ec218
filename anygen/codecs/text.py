"""Text tokenizers: a sentencepiece BPE with byte fallback (trained or loaded), or a local HF tokenizer.

Both expose the same small surface: `vocab_size`, `encode(str) -> list[int]`,
`decode(list[int]) -> str`, `save(dir)`. Special tokens of the multimodal vocabulary
live *after* the text ids, so no user string can ever produce one: a literal `<boi>`
typed by a user is encoded as ordinary text pieces. A local HF tokenizer never runs
code shipped with it: `auto_map` is refused and `trust_remote_code=False`.

Every text a tokenizer encodes first goes through its `TextNormalization`, the rule its corpus
was written in, recorded in `text.json` under "normalize" (see that class); decoding is exact and
never normalises. A `text.json` without "normalize" encodes text as written.
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from anygen.errors import AnygenError, short_repr
from anygen.io import atomic_write_bytes, read_json_file

TEXT_KINDS = ("sentencepiece", "huggingface")  # what text.json's "kind" may say
HF_TOKENIZER_FILE = "tokenizer.json"  # a directory holding this (and no text.json) is a Hugging Face tokenizer
UNICODE_FORMS = ("NFC", "NFKC")  # what "normalize"."unicode" may say (unicodedata's names)
TRAINED_UNICODE_FORM = "NFKC"  # a trained tokenizer folds full-width letters, ligatures and odd spaces
# a corpus counts as lower-case text when at most this share of its sentences start with a capital
# (captions and instructions written in lower case); prose capitalises nearly every sentence
MAX_CAPITAL_STARTS = 0.1
WORD = re.compile(r"[^\W_]+")  # a run of letters and digits: what the case rule looks at
SENTENCE_GAP = re.compile(r"[.!?]\s")  # between two words, this ends a sentence (the next word starts one)
ODD_WHITESPACE = re.compile(r"\s\s|[^\S ]")  # a run of whitespace, or whitespace other than a space


def _words(text: str):
    """(match, previous word in lower case or "" at a sentence start) for each word of `text`."""
    previous, end = "", 0
    for m in WORD.finditer(text):
        if end and SENTENCE_GAP.search(text, end, m.start()):
            previous = ""
        yield m, previous
        previous, end = m.group().lower(), m.end()


def _casing_kept(word: str, lower: str) -> bool:
    """Lower-casing `word` would change its length or split it (e.g. 'İ'): it stays as written, so
    that normalising twice gives what normalising once gave."""
    return len(lower) != len(word) or not WORD.fullmatch(lower) or unicodedata.normalize("NFKC", lower) != lower


def _most_common(forms: Counter, lower: str) -> str:
    """The form written most often; a tie goes to the lower-case form, then to the first in order."""
    return max(sorted(forms), key=lambda f: (forms[f], f == lower))


@dataclass(frozen=True)
class TextNormalization:
    """The rule a text tokenizer's corpus was written in, applied to every text before encoding, so
    that text written differently from the corpus (capitals, full-width letters, non-breaking spaces,
    runs of spaces) encodes as the corpus would have written it.

    In order: `unicode` ("NFKC": compatibility forms folded; None: as written); `collapse_whitespace`
    (every run of whitespace becomes one space; the ends keep one space, as texts encoded in pieces
    need them); `lowercase` (each word, a run of letters and digits, takes the case the corpus gave
    it: the form written most often after the same previous word, `after[previous][word]`, "" for a
    sentence start; else the form written most often anywhere, `words[word]`; else lower case).
    Keys are lower case; only forms other than lower case are recorded. Punctuation is kept: the
    corpus may end sentences with a period. Normalising twice gives what normalising once gave.
    """

    unicode: str | None = None
    collapse_whitespace: bool = False
    lowercase: bool = False
    words: dict[str, str] = field(default_factory=dict)
    after: dict[str, dict[str, str]] = field(default_factory=dict)

    def __call__(self, text: str) -> str:
        if self.unicode:
            text = unicodedata.normalize(self.unicode, text)
        if self.collapse_whitespace:
            text = re.sub(r"\s+", " ", text)
        if self.lowercase:
            text = self._corpus_case(text)
        return text

    def _corpus_case(self, text: str) -> str:
        parts, end = [], 0
        for m, previous in _words(text):
            word = m.group()
            lower = word.lower()
            if _casing_kept(word, lower):
                continue
            form = self.after.get(previous, {}).get(lower, self.words.get(lower, lower))
            if form != word:
                parts += [text[end:m.start()], form]
                end = m.end()
        return "".join(parts) + text[end:] if parts else text

    @classmethod
    def learn(cls, lines: Iterable[str]) -> "TextNormalization":
        """The rule `lines` (a corpus, already in the `TRAINED_UNICODE_FORM`) are written in: whitespace
        is collapsed when no line has a run of it (or a tab or newline); case is the corpus's when the
        corpus is lower-case text (at most `MAX_CAPITAL_STARTS` of its sentences start with a capital)."""
        lines = list(lines)
        anywhere: dict[str, Counter] = defaultdict(Counter)
        pairs: dict[tuple[str, str], Counter] = defaultdict(Counter)
        starts = capital_starts = 0
        for line in lines:
            for m, previous in _words(line):
                word = m.group()
                lower = word.lower()
                if previous == "":
                    starts += 1
                    capital_starts += word[0].isupper()
                if not _casing_kept(word, lower):
                    anywhere[lower][word] += 1
                    pairs[previous, lower][word] += 1
        lowercase = starts > 0 and capital_starts <= MAX_CAPITAL_STARTS * starts
        words, after = {}, defaultdict(dict)
        if lowercase:
            words = {k: f for k, forms in anywhere.items() if (f := _most_common(forms, k)) != k}
            for (previous, k), forms in pairs.items():
                if (f := _most_common(forms, k)) != words.get(k, k):
                    after[previous][k] = f
        return cls(unicode=TRAINED_UNICODE_FORM,
                   collapse_whitespace=not any(ODD_WHITESPACE.search(line) for line in lines),
                   lowercase=lowercase, words=words, after=dict(after))

    def to_dict(self) -> dict:
        out = {"unicode": self.unicode, "collapse_whitespace": self.collapse_whitespace, "lowercase": self.lowercase}
        if self.lowercase:
            out.update(words=dict(sorted(self.words.items())),
                       after={p: dict(sorted(f.items())) for p, f in sorted(self.after.items())})
        return out

    @classmethod
    def from_dict(cls, data, where: str) -> "TextNormalization":
        """Read `to_dict`'s form; anything else is an AnygenError naming `where` and the field."""
        if not isinstance(data, dict):
            raise AnygenError(f"{where}: 'normalize' must be an object, got {short_repr(data)}")
        unknown = set(data) - {"unicode", "collapse_whitespace", "lowercase", "words", "after"}
        if unknown:
            raise AnygenError(f"{where}: unknown 'normalize' field(s) {', '.join(sorted(unknown))}")
        if data.get("unicode") not in UNICODE_FORMS + (None,):
            raise AnygenError(f"{where}: 'normalize'.'unicode' must be one of {', '.join(UNICODE_FORMS)} or null, "
                              f"got {short_repr(data.get('unicode'))}")
        for flag in ("collapse_whitespace", "lowercase"):
            if not isinstance(data.get(flag, False), bool):
                raise AnygenError(f"{where}: 'normalize'.'{flag}' must be true or false, got {short_repr(data[flag])}")
        words, after = data.get("words", {}), data.get("after", {})
        if not _str_map(words) or not isinstance(after, dict) or not all(
                isinstance(p, str) and _str_map(f) for p, f in after.items()):
            raise AnygenError(f"{where}: 'normalize'.'words' must map words to forms and 'after' words to such maps")
        return cls(data.get("unicode"), data.get("collapse_whitespace", False), data.get("lowercase", False),
                   dict(words), {p: dict(f) for p, f in after.items()})


def _str_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _save_meta(directory: Path, kind: str, normalize: TextNormalization) -> None:
    meta = {"kind": kind}
    if normalize != TextNormalization():
        meta["normalize"] = normalize.to_dict()
    atomic_write_bytes(directory / "text.json", json.dumps(meta, ensure_ascii=False, indent=1).encode())


class TextTokenizer:
    """sentencepiece model (its own normalisation the identity, no dummy prefix); `normalize` is
    applied before encoding, so decoding gives back the normalised text exactly."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, normalize: TextNormalization | None = None):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.normalize = normalize or TextNormalization()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(self.normalize(text), out_type=int) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        atomic_write_bytes(directory / "text.model", self.model_proto)
        _save_meta(directory, self.kind, self.normalize)

    @classmethod
    def from_file(cls, path: str | os.PathLike, normalize: TextNormalization | None = None) -> "TextTokenizer":
        path = Path(path)
        if not path.exists():
            raise AnygenError(f"{path}: sentencepiece model not found")
        try:
            return cls(path.read_bytes(), normalize)
        except Exception as e:
            raise AnygenError(f"{path}: not a sentencepiece model ({e})") from None


class HFTextTokenizer:
    """A local Hugging Face tokenizer (for `--init-from` a pretrained text LM).

    Encodes with `split_special_tokens=True`, so the LM's own special-token strings in
    user text stay text too.
    """

    kind = "huggingface"

    def __init__(self, tokenizer, normalize: TextNormalization | None = None):
        self.tok = tokenizer
        self.normalize = normalize or TextNormalization()

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tok(self.normalize(text), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.tok.save_pretrained(directory / "hf_tokenizer")
        _save_meta(directory, self.kind, self.normalize)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        normalize: TextNormalization | None = None) -> "HFTextTokenizer":
        from transformers import AutoTokenizer

        from anygen.weights import refuse_remote_code

        refuse_remote_code(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise AnygenError(f"{directory}: cannot load a Hugging Face tokenizer ({e})") from None
        return cls(tokenizer, normalize)


def load_text_tokenizer(directory: str | os.PathLike):
    """Load whichever text tokenizer `save` wrote into `directory`, with the normalisation it records
    (none when `text.json` records none: such a directory encodes text as written). A directory
    without `text.json` that has a `tokenizer.json` (a Hugging Face tokenizer or model directory, e.g.
    one `anygen import-lm` wrote) is that Hugging Face tokenizer, encoding text as written."""
    directory = Path(directory)
    meta_path = directory / "text.json"
    if not meta_path.exists() and (directory / HF_TOKENIZER_FILE).is_file():
        return HFTextTokenizer.from_pretrained(directory)
    meta = read_json_file(meta_path) if meta_path.exists() else {"kind": "sentencepiece"}
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in TEXT_KINDS:
        raise AnygenError(f"{meta_path}: unknown text tokenizer kind {short_repr(kind)} "
                          f"(expected {{\"kind\": ...}} with one of {', '.join(TEXT_KINDS)})")
    normalize = TextNormalization.from_dict(meta.get("normalize", {}), str(meta_path))
    if kind == "huggingface":
        return HFTextTokenizer.from_pretrained(directory / "hf_tokenizer", normalize)
    return TextTokenizer.from_file(directory / "text.model", normalize)


def train_text_tokenizer(lines: Iterable[str], vocab_size: int = 1000,
                         out_dir: str | os.PathLike | None = None, model_type: str = "bpe") -> TextTokenizer:
    """Train a sentencepiece BPE (byte fallback) on `lines`, recording the normalisation they are
    written in (`TextNormalization.learn`, on the lines in `TRAINED_UNICODE_FORM`) and training on
    the lines so normalised; save to `out_dir` when given."""
    import sentencepiece as spm

    sentences = [unicodedata.normalize(TRAINED_UNICODE_FORM, line) for line in lines if line and line.strip()]
    normalize = TextNormalization.learn(sentences)
    sentences = [normalize(line) for line in sentences]
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
    tokenizer = TextTokenizer(proto.getvalue(), normalize)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir)
    return tokenizer
