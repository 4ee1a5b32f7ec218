"""The early-fusion decoder: one Qwen3 causal LM over the global id space, and its loss.

The backbone is transformers' `Qwen3ForCausalLM` (per-head QK RMSNorm, RoPE, SwiGLU),
built from `DecoderConfig` with `vocab_size = Vocab.size`. A saved decoder is a
directory that `AutoModelForCausalLM.from_pretrained` opens on its own
(`config.json` + `model.safetensors`), plus `anygen_decoder.json` with anygen's
resolved config, the Vocab and a `format_version`.

Loading checks the directory before transformers sees it (`open_causal_lm`): safetensors
weights only, no `auto_map` (checkpoint code is never run), config values in range, the
architecture a known causal-LM family (the one `anygen_decoder.json` records), and every
tensor present with its shape and a floating dtype; after loading, all weights finite.

Packed batches (several documents per row) carry `document_ids` (0 = padding):
attention is block-diagonal causal, so no document sees another. The mask is
built with transformers' own mask primitives — boolean for SDPA, an additive
float mask for eager attention (a boolean 4D mask with eager attention gives
wrong logits).

Loss = weighted mean over target tokens of CE + z_loss·logsumexp² (PaLM's
z-loss keeps the softmax normaliser near 1), each token weighted by the
modality of its target (text/special, image code, audio code).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anygen.config import build, check, choice, to_dict
from anygen import weights
from anygen.errors import AnygenError, short_repr
from anygen.io import atomic_directory, atomic_write_bytes, read_json_file
from anygen.model.positions import CONSECUTIVE, ImagePositions
from anygen.vocab import Vocab

FORMAT_VERSION = 1
META_FILE = "anygen_decoder.json"
MODALITIES = ("text", "image", "audio")  # index = Vocab.modality_of value
# upper bounds on a checkpoint's config.json sizes: far above any model anygen trains or extends,
# low enough that a corrupt value fails at once instead of building a billion layers
CONFIG_LIMITS = {"num_hidden_layers": 1024, "hidden_size": 1 << 17, "intermediate_size": 1 << 19,
                 "num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 1 << 13,
                 "vocab_size": 1 << 23, "max_position_embeddings": 1 << 24}
META_SECTIONS = ("decoder", "vocab", "diffusion_head")  # anygen_decoder.json entries that are objects


@dataclass
class DecoderConfig:
    """Architecture of the Qwen3 backbone (head_dim is explicit: transformers defaults it to 128)."""

    n_layers: int = 4
    hidden: int = 256
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 64
    intermediate: int = 768
    max_position: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02
    attn_implementation: str = choice("sdpa", "eager")
    image_position_stride: int = 0  # > 0: image codes start at multiples of it (anygen.model.positions)

    def __post_init__(self):
        for name in ("n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "intermediate", "max_position"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
              f"must divide n_heads ({self.n_heads}), got {self.n_kv_heads}")
        check(self.rope_theta > 0, "rope_theta", "must be positive")
        check(self.image_position_stride >= 0, "image_position_stride",
              f"must be >= 0 (0 = consecutive positions), got {self.image_position_stride}")

    def qwen3_config(self, vocab_size: int, vocab: Vocab | None = None):
        from transformers import Qwen3Config

        ids = {}
        if vocab is not None:
            ids = dict(pad_token_id=vocab.pad, bos_token_id=vocab.bos, eos_token_id=vocab.eos)
        cfg = Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_embeddings,
            initializer_range=self.init_std,
            use_cache=True,
            **ids,
        )
        cfg._attn_implementation = self.attn_implementation
        if self.image_position_stride:  # saved in config.json; read back by ImagePositions.of
            cfg.image_position_stride = self.image_position_stride
        return cfg


@dataclass
class LossConfig:
    """z-loss coefficient and per-modality weights of the target tokens."""

    z_loss: float = 1e-4
    text_weight: float = 1.0
    image_weight: float = 1.0
    audio_weight: float = 1.0

    def __post_init__(self):
        check(self.z_loss >= 0, "z_loss", f"must be >= 0, got {self.z_loss}")
        for m in MODALITIES:
            w = getattr(self, f"{m}_weight")
            check(w >= 0, f"{m}_weight", f"must be >= 0, got {w}")
        check(any(getattr(self, f"{m}_weight") > 0 for m in MODALITIES), "text_weight",
              "at least one modality weight must be positive")

    def weights(self) -> torch.Tensor:
        return torch.tensor([self.text_weight, self.image_weight, self.audio_weight])


# ---- build / save / load -------------------------------------------------------------------
@contextmanager
def quiet_hf_progress():
    """No per-file progress bars from transformers' save/load (they drown the training bar)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def build_decoder(cfg: DecoderConfig, vocab: Vocab | int, seed: int | None = None):
    """A freshly initialised Qwen3ForCausalLM sized to the vocabulary (fp32)."""
    from transformers import Qwen3ForCausalLM

    vocab_size = vocab if isinstance(vocab, int) else vocab.size
    if seed is not None:
        torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg.qwen3_config(vocab_size, None if isinstance(vocab, int) else vocab))
    return model.float()


def count_parameters(model, non_embedding: bool = False) -> int:
    """Distinct parameters (tied weights once); `non_embedding` drops the input embedding."""
    seen, n = set(), 0
    emb = model.get_input_embeddings().weight
    for p in model.parameters():
        if id(p) in seen or (non_embedding and p is emb):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def save_decoder(model, directory: str | os.PathLike, *, config: DecoderConfig | None = None,
                 vocab: Vocab | None = None, extra: dict | None = None, state_dict: dict | None = None,
                 tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write the model as a Hugging Face directory (safetensors) + `anygen_decoder.json`, atomically.

    `tokenizer_dir` (a MultimodalTokenizer directory) is copied in as `tokenizer/`, which
    makes the directory a complete anygen model (`anygen.load(DIR)`).
    """
    directory = Path(directory)
    model = getattr(model, "module", model)  # unwrap DDP
    # FSDP2 renames a sharded model's class FSDP<name>; transformers' save_pretrained strips it the same way
    meta = {"format_version": FORMAT_VERSION, "architecture": type(model).__name__.removeprefix("FSDP"),
            "vocab_size": int(model.config.vocab_size),
            "decoder": to_dict(config) if config is not None else None,
            "vocab": vocab.to_dict() if vocab is not None else None}
    meta.update(extra or {})
    with atomic_directory(directory) as tmp, quiet_hf_progress():
        model.save_pretrained(tmp, state_dict=state_dict)
        atomic_write_bytes(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        if tokenizer_dir is not None:
            import shutil

            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    return directory


def read_decoder_meta(directory: str | os.PathLike) -> dict:
    """anygen's metadata of a saved decoder ({} for a plain Hugging Face directory)."""
    path = Path(directory) / META_FILE
    if not path.exists():
        return {}
    meta = read_json_file(path)
    if not isinstance(meta, dict):
        raise AnygenError(f"{path}: expected a JSON object")
    version = meta.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:  # not 0, -5, true or "1"
        raise AnygenError(f"{path}: format_version {short_repr(version)} is not supported "
                          f"(this anygen reads 1..{FORMAT_VERSION})")
    for key in META_SECTIONS:
        if not isinstance(meta.get(key) or {}, dict):
            raise AnygenError(f"{path}: '{key}' must be an object, got {short_repr(meta[key])}")
    if not isinstance(meta.get("architecture", ""), str):
        raise AnygenError(f"{path}: 'architecture' must be a string, got {short_repr(meta['architecture'])}")
    return meta


def check_lm_config(config: dict, architecture: str | None = None) -> None:
    """Refuse a transformers config.json (as a dict) that anygen should not build a model from.

    Sizes must be integers within `CONFIG_LIMITS`, norm epsilons and RoPE theta finite and
    positive, `image_position_stride` an integer in 0..max_position_embeddings, `model_type` a
    causal-LM family transformers implements itself (and, given `architecture`, that one).
    Messages start with "config.json: ". (`auto_map` is refused by `weights.refuse_remote_code`.)
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def bad(message: str):
        raise AnygenError(f"config.json: {message}")

    if not isinstance(config, dict):
        bad("expected a JSON object")
    for key, limit in CONFIG_LIMITS.items():
        value = config.get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= limit):
            bad(f"{key} must be an integer in 1..{limit}, got {short_repr(value)}")
    rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    positive = {key: config.get(key) for key in ("rms_norm_eps", "layer_norm_eps", "rope_theta")}
    positive["rope_parameters.rope_theta"] = rope.get("rope_theta")
    for key, value in positive.items():
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
            bad(f"{key} must be a finite number > 0, got {short_repr(value)}")
    context = config.get("max_position_embeddings") or CONFIG_LIMITS["max_position_embeddings"]
    stride = config.get("image_position_stride", 0)
    if type(stride) is not int or not 0 <= stride <= context:
        bad(f"image_position_stride must be an integer in 0..{context} (max_position_embeddings), "
            f"got {short_repr(stride)}")
    model_type = config.get("model_type")
    family = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        bad(f"model_type {short_repr(model_type)} is not a causal language model transformers implements")
    if architecture and architecture not in (family if isinstance(family, tuple) else (family,)):
        bad(f"model_type {model_type!r} builds {family}, but {META_FILE} says the model is {architecture}")


def open_causal_lm(directory: str | os.PathLike, architecture: str | None = None,
                   dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """Load the causal LM in `directory` with the checks in the module docstring; never runs checkpoint code.

    Raises AnygenError naming the file in `directory` and what is wrong with it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    files = weights.safetensors_files(directory)
    weights.refuse_remote_code(directory)
    check_lm_config(read_json_file(directory / "config.json"), architecture)
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    weights.check_tensors(weights.tied_groups(skeleton), weights.safetensors_specs(files), files[0].name)
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), config=config, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation,
        use_safetensors=True, trust_remote_code=False)
    weights.check_finite(model.named_parameters(), files[0].name)
    return model


def load_decoder(directory: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """Open a saved decoder (or any local HF causal LM directory); never unpickles or runs checkpoint code."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise AnygenError(f"{directory}: not a decoder directory (no config.json)")
    meta = read_decoder_meta(directory)
    if attn_implementation is None:
        attn_implementation = (meta.get("decoder") or {}).get("attn_implementation", "sdpa")
    try:
        with quiet_hf_progress():
            model = open_causal_lm(directory, meta.get("architecture"), dtype, attn_implementation)
    except AnygenError as e:
        raise AnygenError(f"{directory}: cannot load the decoder: {e}") from None
    except Exception as e:  # config values transformers itself refuses, a failing read
        msg = " ".join(str(e).split())
        raise AnygenError(f"{directory}: cannot load the decoder ({type(e).__name__}: {msg})") from None
    return model.to(device)


def decoder_config_from_meta(meta: dict) -> DecoderConfig | None:
    d = meta.get("decoder")
    return build(DecoderConfig, d) if d else None


def vocab_from_meta(meta: dict) -> Vocab | None:
    d = meta.get("vocab")
    return Vocab.from_dict(d) if d else None


# ---- packed attention ------------------------------------------------------------------------
def packed_attention_mask(document_ids: torch.Tensor, attn_implementation: str = "sdpa",
                          dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """Block-diagonal causal mask (B, 1, T, T) from document ids (B, T).

    Returns None when every row is one document (plain causal attention, SDPA's fast
    path). Boolean (True = attend) for SDPA, additive float (0 / dtype min) for eager.
    For other implementations (flash/flex) it returns None: those use transformers'
    packed-sequence detection from `position_ids` that restart at 0 per document.
    """
    from transformers.masking_utils import and_masks, causal_mask_function, eager_mask, \
        packed_sequence_mask_function, sdpa_mask

    if attn_implementation not in ("sdpa", "eager"):
        return None
    if bool((document_ids == document_ids[:, :1]).all()):
        return None
    B, T = document_ids.shape
    fn = and_masks(causal_mask_function, packed_sequence_mask_function(document_ids))
    if attn_implementation == "eager":
        return eager_mask(batch_size=B, q_length=T, kv_length=T, mask_function=fn, dtype=dtype,
                          device=document_ids.device)
    return sdpa_mask(batch_size=B, q_length=T, kv_length=T, mask_function=fn, allow_is_causal_skip=False,
                     device=document_ids.device)


def forward_logits(model, batch: dict, attn_implementation: str = "sdpa",
                   positions: ImagePositions = CONSECUTIVE) -> torch.Tensor:
    """Logits (B, T, V) for a packed batch; documents never attend to one another.

    `positions` turns the batch's consecutive position ids into the model's own
    (image-aligned when it was trained so; see anygen.model.positions)."""
    input_ids = batch["input_ids"]
    doc = batch.get("document_ids")
    mask = None
    if doc is not None:
        dtype = next(model.parameters()).dtype
        mask = packed_attention_mask(doc, attn_implementation, dtype if dtype.is_floating_point else torch.float32)
    position_ids = batch.get("position_ids")
    if positions.stride:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        position_ids = positions.align(input_ids, position_ids, doc)
        if mask is None:  # transformers reads a jump in unmasked position ids as a new packed document
            mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.logits


# ---- loss -------------------------------------------------------------------------------------
# stats vector layout: [count(3), ce_sum(3), correct(3), z_sum, weighted_loss_sum, weight_sum]
N_STATS = 12


def decoder_loss(logits: torch.Tensor, labels: torch.Tensor, loss_cfg: LossConfig = LossConfig(),
                 vocab: Vocab | None = None, document_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): weighted CE + z-loss over next-token targets (HF convention: the loss shifts).

    labels == input_ids where loss applies, -100 elsewhere; a target whose document
    differs from the predicting position's (a packed document boundary) is ignored.
    `stats` (N_STATS,) holds detached sums, summable over micro-batches and processes;
    `stats_to_metrics` turns them into per-modality loss/accuracy.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    valid = targets != -100
    if document_ids is not None:
        valid = valid & (document_ids[:, 1:] == document_ids[:, :-1])
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(logits, dim=-1)  # (B, T-1)
    ce = lse - logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    modality = vocab.modality_of(safe) if vocab is not None else torch.zeros_like(safe)
    w = loss_cfg.weights().to(logits.device)[modality] * valid  # (B, T-1)
    per_token = ce + loss_cfg.z_loss * lse.square() if loss_cfg.z_loss else ce
    weight_sum = w.sum()
    loss_sum = (w * per_token).sum()
    loss = loss_sum / weight_sum.clamp_min(1e-12)

    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) & valid
        onehot = F.one_hot(modality, 3).to(logits.dtype) * valid.unsqueeze(-1)  # (B, T-1, 3)
        stats = torch.cat([
            onehot.sum((0, 1)),
            (onehot * ce.detach().unsqueeze(-1)).sum((0, 1)),
            (onehot * correct.unsqueeze(-1)).sum((0, 1)),
            (lse.detach().square() * valid).sum().reshape(1),
            loss_sum.detach().reshape(1),
            weight_sum.detach().reshape(1),
        ]).double()
    return loss, stats


def stats_to_metrics(stats: torch.Tensor) -> dict[str, float]:
    """Per-modality loss/accuracy (only modalities with targets), overall loss and z."""
    s = stats.double().cpu().tolist()
    count, ce, correct = s[0:3], s[3:6], s[6:9]
    total = sum(count)
    out: dict[str, float] = {}
    if s[11] > 0:
        out["loss"] = s[10] / s[11]
    if total > 0:
        out["ce"] = sum(ce) / total
        out["acc"] = sum(correct) / total
        out["lse2"] = s[9] / total
    for i, m in enumerate(MODALITIES):
        if count[i] > 0:
            out[f"loss_{m}"] = ce[i] / count[i]
            out[f"acc_{m}"] = correct[i] / count[i]
    out["target_tokens"] = total
    return out
