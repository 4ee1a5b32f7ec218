"""What every released-checkpoint adapter shares: the id map, the text tokenizer, the expanding decoder.

A released any-to-any model has its own id space and image layout. anygen keeps its own
(`anygen.vocab.Vocab`: text ids, specials, one code range; image span `<boi> <grid> codes <eoi>`)
and translates at the model's edge, so the sampler, grammar, guidance and API run unchanged:

- `IdMap`: each anygen id -> the model ids fed for it (its *expansion*: one id for text and
  codes; a special may stand for several, e.g. Emu3's `<grid_HxW>` is the text "H*W" and the
  image wrapper token, or none, e.g. `<null>` is an empty negative prompt), plus `row_end`, an
  id the model expects after every row of codes (Emu3's end-of-line), and the model column
  whose logit scores each anygen id (none: the id is never drawn).
- `ModelText`: the model's own Hugging Face tokenizer as anygen's text tokenizer, in anygen ids.
- `InteropLM`: the model as the sampler sees it; `anygen_decoder(...)` (the seam
  `anygen.sampling.backends.make_decoder` calls) gives an `ExpandingDecoder`, which feeds each
  row the expansion of its anygen ids over the model's KV cache (rows whose expansions differ
  in length are padded inside the cache and masked) and returns logits in anygen columns from
  the model's final hidden state and its output head, reordered once into anygen's id order.
- `Checkpoint.open` loads a transformers class through `anygen.weights.open_pretrained`: safetensors
  only, no `auto_map` (checkpoint code is never run), no missing tensors, finite weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import torch
from torch import nn

from anygen import weights
from anygen.errors import AnygenError
from anygen.vocab import Vocab
from anygen.weights import open_pretrained

# Model ids an image span adds beyond its codes (Emu3: the "H*W" text, wrapper, end-of-file and
# end-of-image ids; row ends are counted apart): the context anygen reports leaves room for them.
SPAN_OVERHEAD = 16


@dataclass(frozen=True)
class IdMap:
    """anygen ids <-> one model's ids (see the module docstring).

    text        model id of each anygen text id, in anygen order (len == vocab.n_text)
    codes       model id of each image code, in code order (len == vocab.image_codebook_size)
    specials    anygen special name ("<bos>", "<grid_4x4>", ...) -> the model ids fed for it
    scores      anygen special name -> the model id whose logit scores it (absent: never drawn)
    row_end     model id fed after every `width` codes of an image span (None: no row ends)
    pad         model id that fills the masked slots of shorter expansions
    """

    vocab: Vocab
    text: tuple[int, ...]
    codes: tuple[int, ...]
    specials: Mapping[str, tuple[int, ...]]
    scores: Mapping[str, int]
    row_end: int | None
    pad: int

    def __post_init__(self):
        v = self.vocab
        if len(self.text) != v.n_text or len(self.codes) != v.image_codebook_size:
            raise ValueError("IdMap: text/code id lists do not match the vocab")
        missing = set(v.specials) - set(self.specials)
        if missing:
            raise ValueError(f"IdMap: no expansion for {sorted(missing)}")

    def expansion(self, token: int) -> tuple[int, ...]:
        """The model ids fed for anygen id `token` (row ends excluded: `RowExpander` adds them)."""
        v = self.vocab
        if 0 <= token < v.n_text:
            return (self.text[token],)
        if v.image_start <= token < v.audio_start:
            return (self.codes[token - v.image_start],)
        for name, i in v.specials.items():
            if i == token:
                return tuple(self.specials[name])
        raise AnygenError(f"id {token} has no meaning for this model (vocab size {v.size})")

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(model column of each anygen id (V,), True where the id is never drawn (V,))."""
        v = self.vocab
        cols = torch.zeros(v.size, dtype=torch.long)
        never = torch.ones(v.size, dtype=torch.bool)
        cols[:v.n_text] = torch.tensor(self.text, dtype=torch.long)
        never[:v.n_text] = False
        if self.codes:
            cols[v.image_start:v.audio_start] = torch.tensor(self.codes, dtype=torch.long)
            never[v.image_start:v.audio_start] = False
        for name, i in v.specials.items():
            if name in self.scores:
                cols[i], never[i] = self.scores[name], False
        return cols, never

    def to_anygen(self, model_vocab_size: int) -> torch.Tensor:
        """(model vocab,) anygen text id of each model id, -1 where the model id is no anygen text."""
        out = torch.full((model_vocab_size,), -1, dtype=torch.long)
        out[torch.tensor(self.text, dtype=torch.long)] = torch.arange(len(self.text))
        return out


class RowExpander:
    """One row's anygen ids -> model ids, adding `row_end` after every row of an image's codes."""

    __slots__ = ("map", "grids", "width", "n")

    def __init__(self, idmap: IdMap):
        self.map = idmap
        self.grids = {idmap.vocab.grid_id(g): g for g in idmap.vocab.image_grids}
        self.width, self.n = None, 0

    def feed(self, token: int) -> tuple[int, ...]:
        v, out = self.map.vocab, self.map.expansion(token)
        if token in self.grids:
            self.width, self.n = self.grids[token][1], 0
        elif v.image_start <= token < v.audio_start and self.width is not None and self.map.row_end is not None:
            self.n += 1
            if self.n % self.width == 0:
                out = out + (self.map.row_end,)
        elif token == v.eoi:
            self.width = None
        return out


class ModelText:
    """A model's Hugging Face tokenizer in anygen text ids (`vocab_size`, `encode`, `decode`).

    Encoding splits the model's special-token strings (typed text never becomes a special); a
    model id that is no anygen text id (an image code's added token typed as text) is dropped."""

    kind = "huggingface"

    def __init__(self, tokenizer, idmap_text: Sequence[int], model_vocab_size: int):
        self.tok = tokenizer
        self.model_ids = torch.tensor(list(idmap_text), dtype=torch.long)
        self.anygen_of = torch.full((max(model_vocab_size, len(tokenizer)),), -1, dtype=torch.long)
        self.anygen_of[self.model_ids] = torch.arange(len(self.model_ids))

    @property
    def vocab_size(self) -> int:
        return len(self.model_ids)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        mapped = self.anygen_of[torch.tensor(ids, dtype=torch.long)] if ids else torch.zeros(0, dtype=torch.long)
        return [int(i) for i in mapped if i >= 0]

    def encode_model(self, text: str) -> list[int]:
        """`text` in the model's own ids."""
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(self.model_ids[torch.tensor([int(i) for i in ids], dtype=torch.long)].tolist()
                               if ids else [], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        raise AnygenError("a released model's tokenizer is read from its own directory; it is not saved by anygen")


class InteropLM(nn.Module):
    """A released model as anygen's sampler drives it: `body(input_ids, attention_mask, position_ids,
    cache, use_cache)` returns final hidden states, `head` (V_model, D) the output weights.

    `config.max_position_embeddings` is the context in anygen ids: the model's context less one
    row end per image row and `SPAN_OVERHEAD` (the longest expansion of an image span)."""

    def __init__(self, hf, body, head: nn.Module, idmap: IdMap, context: int, model_type: str,
                 llama_body: bool = False):
        super().__init__()
        self.hf, self.idmap, self.model_type = hf, idmap, model_type
        # `FastDecoder` reproduces a Llama-style body; it needs every id fed while sampling to feed something
        fed_later = [n for n in idmap.specials if n not in ("<null>", "<boa>", "<eoa>", "<apad>")]
        self.fast_ok = llama_body and all(idmap.specials[n] for n in fed_later)
        self._body = body
        self._head_module = head
        cols, never = idmap.columns()
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("never", never, persistent=False)
        grid = max((h * w for h, w in idmap.vocab.image_grids), default=0)
        rows = max((h for h, w in idmap.vocab.image_grids), default=0)
        room = context - (SPAN_OVERHEAD + rows if grid and idmap.row_end is not None else 0)
        body_cfg = getattr(body, "config", None)
        shape = {k: getattr(body_cfg, k, None) for k in ("num_attention_heads", "num_key_value_heads", "head_dim",
                                                         "num_hidden_layers", "hidden_size")}
        # the attention shape lets the sampler size its KV cache per row (chunking large batches)
        self.config = SimpleNamespace(max_position_embeddings=max(room, 1), model_type=model_type,
                                      **{k: v for k, v in shape.items() if v is not None})
        self._prepared = None

    def train(self, mode: bool = True):
        """Switch train/eval mode, walking the submodules only when the mode changes (the sampler
        asks for eval mode on every call)."""
        if mode != self.training or any(m.training != mode for m in (self.hf, self._body)):
            super().train(mode)
        return self

    def head_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, D) output weights in anygen id order and (V,) bias (-inf for ids never drawn); cached."""
        weight = self._head_module.weight
        key = (weight.data_ptr(), weight._version, weight.device)
        if self._prepared is None or self._prepared[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors: FastDecoder tracks their versions
                rows = weight.detach()[self.cols.to(weight.device)].contiguous()
                bias = torch.zeros(len(self.cols), dtype=rows.dtype, device=rows.device)
                bias[self.never.to(rows.device)] = float("-inf")
            self._prepared = (key, rows, bias)
        return self._prepared[1], self._prepared[2]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        """Full-sequence logits (B, T, V) in anygen ids (for scoring): position t scores the id after
        anygen id t, read where the model has been fed all of t's expansion. `attention_mask` marks
        the real ids (any padding is skipped); position ids are the model's own."""
        B, T = input_ids.shape
        valid = attention_mask.bool().tolist() if attention_mask is not None else [[True] * T] * B
        seqs, where = [], []
        for r, row in enumerate(input_ids.tolist()):
            expander, fed, at = RowExpander(self.idmap), [], []
            for t, tok in enumerate(row):
                if valid[r][t]:
                    fed += expander.feed(tok)
                at.append(max(len(fed) - 1, 0))
            seqs.append(fed)
            where.append(at)
        L = max(1, max(len(s) for s in seqs))
        ids = torch.full((B, L), self.idmap.pad, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, :len(s)] = 1
        head, bias = self.head_rows()
        device = head.device
        hidden = self._body(input_ids=ids.to(device), attention_mask=mask.to(device),
                            position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(device), use_cache=False).last_hidden_state
        picked = hidden.gather(1, torch.tensor(where, device=device)[..., None].expand(B, T, hidden.shape[-1]))
        return SimpleNamespace(logits=picked @ head.t() + bias)

    def fast_view(self) -> nn.Module:
        """The body with the output head in anygen id order (a bias of -inf on ids never drawn), as the
        causal LM `anygen.sampling.backends.FastDecoder` expects; cached while the weights stay."""
        rows, bias = self.head_rows()
        cached = getattr(self, "_fast_view", None)
        if cached is None or cached[0] is not rows:  # FastDecoder keeps its prepared weights per view
            cached = (rows, _LlamaView(self._body, rows, bias))
            object.__setattr__(self, "_fast_view", cached)  # not a submodule: no second copy in state_dict
        return cached[1]

    def anygen_decoder(self, n_rows: int, max_len: int, positions=None, backend: str = "auto") -> "ExpandingDecoder":
        """The decoder `anygen.sampling.backends.make_decoder` uses for this model: the model's own forward
        (backend "hf", and models `FastDecoder` does not reproduce) or `FastDecoder` over its weights."""
        if backend == "fast" and not self.fast_ok:
            raise ValueError(f"the fast decoder does not support {self.model_type}; use backend='hf'")
        return ExpandingDecoder(self, n_rows, max_len, fast=self.fast_ok and backend != "hf")


class _LlamaView(nn.Module):
    """A Llama-style body plus an anygen-ordered output head, shaped as the causal LM `FastDecoder` reads."""

    def __init__(self, body, rows: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model, self.config = body, body.config
        self.lm_head = nn.Linear(rows.shape[1], rows.shape[0], bias=True, device="meta")
        self.lm_head.weight = nn.Parameter(rows, requires_grad=False)
        self.lm_head.bias = nn.Parameter(bias, requires_grad=False)


class ExpandingDecoder:
    """`prefill`/`step` in anygen ids over a model fed their expansions (see the module docstring).

    `fast`: the expansions run through `FastDecoder` one model id per sub-step (rows with shorter
    expansions hold, right-aligned, so every row's last sub-step is a real id); else through the
    model's forward with a `DynamicCache`, all of a step's expansions in one call."""

    def __init__(self, lm: InteropLM, n_rows: int, max_len: int, fast: bool = False):
        self.lm, self.n_rows, self.max_len, self.fast = lm, n_rows, max_len, fast
        self.head, self.bias = lm.head_rows()
        self.device = self.head.device

    def _model_len(self, prefill_len: int, anygen_len: int) -> int:
        """An upper bound on the model ids a row holds: its prefill, then one id per new anygen id,
        a row end per row of codes and `SPAN_OVERHEAD` per image span."""
        v = self.lm.idmap.vocab
        new = max(self.max_len - anygen_len, 0)
        widths = [w for _, w in v.image_grids] if v.image_codebook_size else []
        row_ends = new // min(widths) + 1 if widths and self.lm.idmap.row_end is not None else 0
        spans = new // (3 + min(h * w for h, w in v.image_grids)) + 1 if widths else 0
        return prefill_len + new + row_ends + spans * SPAN_OVERHEAD + 1

    def _feed(self, seqs: list[tuple[int, ...]]) -> None:
        """Append each row's model ids to the cache (shorter rows: masked pad slots first)."""
        R = len(seqs)
        lengths = torch.tensor([len(s) for s in seqs])
        k = int(lengths.max())
        if k == 0:
            return
        ids = torch.full((R, k), self.lm.idmap.pad, dtype=torch.long)
        mask = torch.zeros(R, k, dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, k - len(s):] = torch.tensor(s)
                mask[r, k - len(s):] = 1
        pos = (self.next_pos[:, None] + (mask.cumsum(1) - 1).clamp(min=0))  # pads take the next real position
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        out = self.lm._body(input_ids=ids.to(self.device), attention_mask=self.mask.to(self.device),
                            position_ids=pos.to(self.device), cache=self.cache, use_cache=True)
        h = out.last_hidden_state[:, -1]
        fed = lengths > 0
        self.h = h if self.h is None else torch.where(fed.to(self.device)[:, None], h, self.h)
        self.next_pos += lengths

    def _logits(self, lo: int, hi: int | None):
        hi = self.head.shape[0] if hi is None else hi
        if hi <= lo:
            return None
        return torch.addmm(self.bias[lo:hi], self.h, self.head[lo:hi].t())

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, n_pad: torch.Tensor, lo: int = 0, hi: int | None = None):
        R = ids.shape[0]
        self.rows = [RowExpander(self.lm.idmap) for _ in range(R)]
        seqs = [tuple(t for tok in ids[r, int(n_pad[r]):].tolist() for t in self.rows[r].feed(tok)) for r in range(R)]
        if self.fast:
            from anygen.sampling.backends import FastDecoder

            width = max(len(s) for s in seqs)
            model_ids = torch.tensor([[self.lm.idmap.pad] * (width - len(s)) + list(s) for s in seqs])
            self.inner = FastDecoder(self.lm.fast_view(), R, self._model_len(width, ids.shape[1]))
            return self.inner.prefill(model_ids.to(self.device),
                                      torch.tensor([width - len(s) for s in seqs], device=self.device), lo, hi)
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.mask, self.h = None, None
        self.next_pos = torch.zeros(R, dtype=torch.long)
        self._feed(seqs)
        return self._logits(lo, hi)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None):
        seqs = [self.rows[r].feed(t) for r, t in enumerate(tokens.tolist())]
        if not self.fast:
            self._feed(seqs)
            return self._logits(lo, hi)
        k = max(len(s) for s in seqs)
        if k == 1:
            return self.inner.step(torch.tensor([s[0] for s in seqs], device=self.device), lo, hi)
        logits, first = None, [k - len(s) for s in seqs]  # right-aligned: row r starts at sub-step first[r]
        for j in range(k):
            fed = torch.tensor([s[j - f] if j >= f else self.lm.idmap.pad for s, f in zip(seqs, first)],
                               device=self.device)
            hold = torch.tensor([j < f for f in first], device=self.device)
            last = j == k - 1
            logits = self.inner.step(fed, lo if last else 0, hi if last else 0, hold if bool(hold.any()) else None)
        return logits


def read_config(directory: str | os.PathLike) -> dict:
    """A transformers directory's config.json as a dict ({} when there is none)."""
    from anygen.io import read_json_file

    path = Path(directory) / "config.json"
    if not path.is_file():
        return {}
    data = read_json_file(path)
    return data if isinstance(data, dict) else {}


def open_tokenizer(directory: str | os.PathLike):
    """The directory's own Hugging Face tokenizer (local files only, no checkpoint code)."""
    from transformers import AutoTokenizer

    weights.refuse_remote_code(directory)
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise AnygenError(f"{directory}: cannot load its tokenizer ({type(e).__name__}: {msg})") from None


def open_parts(directory: Path, model_cls, processor_cls, device: str):
    """(model, tokenizer, image processor) of a transformers directory: weights in bfloat16 on a GPU,
    float32 on the CPU; the processor from `preprocessor_config.json`, else its defaults."""
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    hf = open_pretrained(directory, model_cls, dtype).to(device)
    processor = (processor_cls.from_pretrained(str(directory), local_files_only=True)
                 if (directory / "preprocessor_config.json").is_file() else processor_cls())
    return hf, open_tokenizer(directory), processor


@dataclass
class Checkpoint:
    """What every adapter reads from a released directory, checked once (`Checkpoint.open`).

    hf (the loaded model), tokenizer (its HF tokenizer), processor (its image processor),
    vocabulary (config.json's token name -> id map), bos/eos/pad (model ids), codes (model id of
    each VQ code, in code order)."""

    directory: Path
    model_type: str
    hf: object
    tokenizer: object
    processor: object
    vocabulary: dict
    bos: int
    eos: int
    pad: int
    codes: tuple[int, ...]

    @classmethod
    def open(cls, directory, model_type: str, model_cls, processor_cls, device: str, text_config, code_of,
             codebook_size) -> "Checkpoint":
        """Load `model_cls` and its parts; `text_config(hf)` is the config holding the bos/eos/pad ids,
        `code_of(name)` a vocabulary name's code (None: not an image code), `codebook_size(hf)` the VQ's."""
        directory = Path(directory)
        hf, tokenizer, processor = open_parts(directory, model_cls, processor_cls, device)
        where = f"{directory}/config.json: {model_type}"
        vocabulary = dict(hf.config.vocabulary_map or {})
        if not vocabulary:
            raise AnygenError(f"{where}: no vocabulary_map")
        cfg = text_config(hf)
        if cfg.bos_token_id is None or cfg.eos_token_id is None:
            raise AnygenError(f"{where}: the config needs bos_token_id and eos_token_id")
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        visual = sorted((code, int(i)) for name, i in vocabulary.items() if (code := code_of(name)) is not None)
        codebook = int(codebook_size(hf))
        if [c for c, _ in visual] != list(range(codebook)):
            raise AnygenError(f"{where}: the vocabulary has {len(visual)} image-code tokens, the VQVAE codebook {codebook}")
        return cls(directory, model_type, hf, tokenizer, processor, vocabulary, int(cfg.bos_token_id),
                   int(cfg.eos_token_id), int(pad), tuple(i for _, i in visual))

    def special(self, name: str) -> int:
        """The model id of token `name`; a one-line error when the vocabulary has none."""
        if name not in self.vocabulary:
            raise AnygenError(f"{self.model_type}: the model's vocabulary has no {name} token")
        return int(self.vocabulary[name])

    def text_ids(self, n_model: int, structural) -> list[int]:
        """The model ids that are anygen text: all but the image codes and the `structural` ids."""
        skip = set(structural) | set(self.codes) | {self.bos, self.eos, self.pad}
        return [i for i in range(n_model) if i not in skip]
