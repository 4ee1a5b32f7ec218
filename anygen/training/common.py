"""What the decoder, text->image and tokenizer trainers share.

- `OptimConfig` and `lr_at`: AdamW settings and the learning rate as a pure function of the step.
- RNG state capture/restore (python, numpy, torch CPU and CUDA) as JSON + tensors.
- Optimizer state as tensors (safetensors) + JSON, and the one-directory checkpoint
  (`save_checkpoint` / `load_checkpoint`: model, optimizer, RNG, state.json).
- Run directories: `refuse_existing_run`, `trim_metrics`.
- `flops_per_token`: training FLOPs of a decoder (6·N + attention).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anygen.config import check, choice, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes

CHECKPOINT_FORMAT = 1  # state.json of `save_checkpoint`; bump when that layout changes


# ---- optimizer and schedule -------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr × min_lr_ratio
    schedule: str = choice("cosine", "wsd", "constant")
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to the final lr
    weight_decay: float = 0.1  # on matrices only (not embeddings, norms, biases)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self):
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 < self.decay_fraction <= 1, "decay_fraction", "must be in (0, 1]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")


def lr_at(step: int, cfg: OptimConfig, total: int, progress: float | None = None) -> float:
    """Learning rate of update `step` (0-based) of `total`: linear warmup, then cosine or WSD to lr·min_lr_ratio.

    `progress` (the cosine schedule only) is the fraction of the run done, for a run that
    also ends by wall time: the cosine then follows max(step/total, time used/budget)
    as the caller computes it. Without it the schedule is a pure function of the step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine" and progress is not None:  # this arithmetic keeps tokenizer runs bit-identical
        warm = cfg.warmup_steps / total
        t = min(max((progress - warm) / max(1e-9, 1 - warm), 0.0), 1.0)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = max(cfg.warmup_steps, total - int(round(cfg.decay_fraction * total)))
    if step < decay_start:
        return cfg.lr
    t = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
    return cfg.lr + (lo - cfg.lr) * t


# ---- RNG state ----------------------------------------------------------------------------------
def rng_state(prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's python and numpy RNG states (JSON-able) and torch's (tensors `{prefix}torch`, `{prefix}cudaNN`)."""
    py = random.getstate()
    npst = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    tensors = {f"{prefix}torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"{prefix}cuda{i:02d}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Restore what `rng_state(prefix)` captured (CUDA states when both sides have them)."""
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors[f"{prefix}torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(f"{prefix}cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---- optimizer state ----------------------------------------------------------------------------
def flatten_optimizer(sd: dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """An optimizer state dict's per-parameter state -> tensors `{prefix}{param}.{name}` and the
    JSON-able rest as {param: {name: value}} (every parameter listed)."""
    tensors, rest = {}, {}
    for idx, st in sd["state"].items():
        rest[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                rest[str(idx)][k] = v
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, dict], param_groups: list[dict],
                        prefix: str = "") -> dict:
    """The optimizer state dict `flatten_optimizer` took apart; tensors without `prefix` are ignored.

    Parameters are indices (torch.optim) or names (a full FSDP optimizer state dict).
    """
    def key(i: str):
        return int(i) if i.isdigit() else i

    state = {key(i): dict(v) for i, v in rest.items()}
    for flat, t in tensors.items():
        if not flat.startswith(prefix):
            continue
        idx, name = flat[len(prefix):].rsplit(".", 1)
        state.setdefault(key(idx), {})[name] = t
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in param_groups]
    return {"state": state, "param_groups": groups}


def json_default(obj):
    """`json.dumps(default=...)` for config values: tuples as lists, paths as strings."""
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---- one-directory checkpoints ----------------------------------------------------------------
def save_checkpoint(directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                    elapsed: float, recipe, cpu_s: float = 0.0, extra: dict | None = None) -> None:
    """Model + optimizer + step + RNG states (+ `extra` entries in state.json) into `directory`, replaced atomically.

    Layout: model.safetensors; optimizer.safetensors (AdamW tensors `opt.*`, torch RNG `rng.*`);
    state.json (format_version, step, elapsed_s, cpu_s, optimizer param groups and scalars,
    python/numpy RNG, the recipe).
    """
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    opt_tensors, rest = flatten_optimizer(opt_sd, "opt.")
    scalars = {f"{idx}.{k}": v for idx, st in rest.items() for k, v in st.items()}
    rng_meta, rng_tensors = rng_state("rng.")
    state = {"format_version": CHECKPOINT_FORMAT, "step": step, "elapsed_s": elapsed, "cpu_s": cpu_s,
             "optimizer": {"param_groups": opt_sd["param_groups"], "scalars": scalars}, "rng": rng_meta,
             "recipe": to_dict(recipe), **(extra or {})}
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, default=json_default) + "\n", encoding="utf-8")


def load_checkpoint(directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore what `save_checkpoint` wrote; returns state.json's contents."""
    from safetensors.torch import load_file

    for name in ("state.json", "model.safetensors", "optimizer.safetensors"):
        if not (directory / name).exists():
            raise AnygenError(f"{directory / name}: checkpoint file missing")
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnygenError(f"{directory / 'state.json'}: not valid JSON ({e})") from None
    if state.get("format_version") != CHECKPOINT_FORMAT:
        raise AnygenError(f"{directory / 'state.json'}: unsupported checkpoint format_version "
                          f"{state.get('format_version')!r} (this anygen reads {CHECKPOINT_FORMAT})")
    try:
        weights = load_file(str(directory / "model.safetensors"))
        extra = load_file(str(directory / "optimizer.safetensors"))
        model.load_state_dict(weights)
        rest: dict[str, dict] = {}
        for key, v in state["optimizer"].get("scalars", {}).items():
            idx, name = key.split(".", 1)
            rest.setdefault(idx, {})[name] = v
        opt.load_state_dict(unflatten_optimizer(extra, rest, state["optimizer"]["param_groups"], "opt."))
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise AnygenError(f"{directory}: checkpoint does not match the recipe's model ({e})") from None
    set_rng_state(state["rng"], extra, "rng.")
    return state


# ---- run directories ----------------------------------------------------------------------------
def refuse_existing_run(directory: Path, what: str, field: str) -> None:
    """The one-line error for starting a run where `what` ("a run", "checkpoints") already is."""
    raise AnygenError(f"{directory} already holds {what}: pass --resume to continue it, or choose another {field}")


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric rows (JSONL with a "step") logged after `step`, and torn lines; a resumed run logs them again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash
    atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


# ---- compute ------------------------------------------------------------------------------------
def flops_per_token(model, seq_len: int) -> tuple[float, int]:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (PaLM appendix B / nanoGPT's estimate_mfu).

    N = parameters that take part in matmuls (all but the input embedding lookup; the
    output projection counts even when tied); 6 = 2 FLOPs per multiply-add × (forward
    + 2× backward). The attention term counts QKᵀ and AV over the full T×T square
    (L layers, H heads of size Q), as PaLM does: causal/packed masking does not skip work
    in SDPA's math here, so this is the work actually done, not a useful-work discount.
    """
    from anygen.model.decoder import count_parameters

    cfg = model.config
    n = count_parameters(model, non_embedding=True)
    if getattr(cfg, "tie_word_embeddings", False):
        n += model.get_output_embeddings().weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq_len, n
