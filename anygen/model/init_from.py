"""Extend a pretrained local Hugging Face causal LM with anygen's special and codebook tokens.

The MultimodalTokenizer keeps the pretrained tokenizer's ids first (`Vocab.n_text ==
len(tokenizer)`), so extending is: resize the input and output embeddings to
`Vocab.size` and initialise every row from `n_text` on. Rows the checkpoint had past
`n_text` (vocabularies padded to a multiple of 64/128) are unused by the tokenizer and
are re-initialised too.

New-row initialisation (documented choice, after Hewitt 2021, "Initializing New Word
Embeddings for Pretrained Language Models"): each new row is the mean of the
pretrained rows plus Gaussian noise with `noise` × the per-dimension standard deviation
of those rows. With the mean, a new token's logit is about the average logit, so the
extended model's distribution over old tokens barely moves (bounded KL) instead of
being swamped by random rows; the small noise breaks the symmetry among new rows. The
input and (when untied) output embeddings are initialised from their own statistics.

`train_only_new_rows` (Anole's recipe for adapting an LM to new token rows): every
parameter is frozen except the input/output embedding matrices, and the gradients of
their first `n_text` rows are zeroed after each backward (`mask_old_row_grads`), so the
pretrained text model stays bit-for-bit intact. Embeddings are kept out of weight decay
by the trainer, which would otherwise shrink the frozen rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from anygen.errors import AnygenError
from anygen.vocab import Vocab
from anygen.weights import refuse_remote_code

DEFAULT_NOISE = 0.1


def _tokenizer_len(directory: Path) -> int | None:
    """len() of the tokenizer saved beside the model, None when there is none."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((directory / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer

    refuse_remote_code(directory)
    try:
        return len(AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False))
    except Exception as e:  # a broken tokenizer is a user error worth naming
        raise AnygenError(f"cannot load the pretrained tokenizer ({e})") from None


def embedding_matrices(model) -> list[torch.nn.Parameter]:
    """The distinct input/output embedding weights (one when tied)."""
    out = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not out[0]:
        out.append(head.weight)
    return out


@torch.no_grad()
def init_new_rows(weight: torch.Tensor, n_old: int, noise: float = DEFAULT_NOISE,
                  generator: torch.Generator | None = None) -> None:
    """rows [n_old:] <- mean(rows[:n_old]) + noise · std(rows[:n_old]) · N(0, 1), per dimension."""
    old = weight[:n_old].float()
    mean, std = old.mean(0), old.std(0, unbiased=False)  # (D,)
    n_new = weight.shape[0] - n_old
    if n_new <= 0:
        return
    z = torch.randn(n_new, weight.shape[1], generator=generator)
    weight[n_old:] = (mean + noise * std * z).to(weight.dtype)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a transformers causal LM (`model.model.layers`)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise AnygenError(f"{type(model).__name__}: cannot find its decoder layers (model.layers)")
    return layers


def keep_layers(model, k: int, top: int = 0) -> None:
    """Keep `k` transformer blocks in place: the first `k - top` and the last `top` (a shallower
    model that starts from pretrained layers; the final norm and the output projection stay). The
    last blocks are the ones that map into the vocabulary, so keeping some makes the shallower
    model's first predictions closer to the pretrained model's. The config and each block's
    cache index follow."""
    layers = list(decoder_layers(model))
    if not 1 <= k <= len(layers):
        raise AnygenError(f"train.init_layers: must be in 1..{len(layers)} (the model's layers), got {k}")
    if not 0 <= top <= k:
        raise AnygenError(f"train.init_top_layers: must be in 0..{k} (train.init_layers), got {top}")
    chosen = list(range(k - top)) + list(range(len(layers) - top, len(layers)))
    model.model.layers = torch.nn.ModuleList(layers[i] for i in chosen)
    for new, layer in enumerate(model.model.layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new
    model.config.num_hidden_layers = k
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in chosen]


def freeze_first_layers(model, n: int) -> None:
    """The first `n` transformer blocks stop training (requires_grad off); embeddings and later blocks train."""
    layers = decoder_layers(model)
    if not 0 <= n <= len(layers):
        raise AnygenError(f"train.freeze_layers: must be in 0..{len(layers)} (the model's layers), got {n}")
    for layer in list(layers)[:n]:
        layer.requires_grad_(False)


def extend_pretrained(directory: str | os.PathLike, vocab: Vocab, *, noise: float = DEFAULT_NOISE,
                      seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
                      n_layers: int = 0, top_layers: int = 0):
    """Load the causal LM in `directory`, extend it to `vocab.size` rows, initialise the new rows.

    Returns the model; its `config.vocab_size == vocab.size`; with `n_layers` > 0 only `n_layers`
    of its blocks, the last `top_layers` of them its last ones (`keep_layers`). The tokenizer
    beside the model (when there is one) must have exactly `vocab.n_text` ids. The directory passes
    `anygen.model.decoder.open_causal_lm`'s checks (safetensors only, no checkpoint code).
    """
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise AnygenError(f"--init-from {directory}: not a Hugging Face model directory (no config.json)")
    from anygen.model.decoder import open_causal_lm, quiet_hf_progress

    try:
        n_tok = _tokenizer_len(directory)
        if n_tok is not None and n_tok != vocab.n_text:
            raise AnygenError(f"its tokenizer has {n_tok} ids but the vocab's text range has "
                              f"{vocab.n_text}; build the MultimodalTokenizer from this model's tokenizer")
        with quiet_hf_progress():
            model = open_causal_lm(directory, dtype=dtype, attn_implementation=attn_implementation)
    except AnygenError as e:
        raise AnygenError(f"--init-from {directory}: {e}") from None
    except (OSError, ValueError) as e:
        raise AnygenError(f"--init-from {directory}: cannot load the model ({e})") from None
    if n_layers:
        keep_layers(model, n_layers, top_layers)
    n_rows = model.get_input_embeddings().weight.shape[0]
    if vocab.n_text > n_rows:
        raise AnygenError(f"--init-from {directory}: the vocab has {vocab.n_text} text ids but the model's "
                          f"embedding only {n_rows} rows")
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    g = torch.Generator().manual_seed(seed)
    for w in embedding_matrices(model):
        init_new_rows(w.data, vocab.n_text, noise, g)
    model.config.vocab_size = vocab.size
    for name, token in (("pad_token_id", "pad"), ("bos_token_id", "bos"), ("eos_token_id", "eos")):
        if getattr(model.config, name, None) is None:
            setattr(model.config, name, vocab.special(f"<{token}>"))
    return model


def freeze_all_but_embeddings(model) -> list[torch.nn.Parameter]:
    """requires_grad only on the embedding matrices; returns them (Anole's new-rows-only recipe)."""
    keep = {id(p) for p in embedding_matrices(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if id(p) in keep]


@torch.no_grad()
def mask_old_row_grads(model, n_old: int) -> None:
    """Zero the gradients of embedding rows [0, n_old) (call after backward, before clipping)."""
    for w in embedding_matrices(model):
        if w.grad is not None:
            w.grad[:n_old] = 0
