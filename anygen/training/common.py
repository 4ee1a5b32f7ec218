"""What the decoder, text->image and tokenizer trainers share.

- `OptimConfig` and `lr_at`: AdamW settings and the learning rate as a pure function of the step.
- RNG state capture/restore (python, numpy, torch CPU and CUDA) as JSON + tensors.
- Optimizer state as tensors (safetensors) + JSON, and the one-directory checkpoint
  (`save_checkpoint` / `load_checkpoint`: model, optimizer, RNG, state.json).
- Run directories: `lock_run_dir` (one run per directory), `refuse_existing_run`,
  `remove_stale_temps`, `trim_metrics`.
- Guards: `check_finite` (no saved weights hold NaN/Inf), `check_memory` (a decoder that cannot
  fit is refused before it is built), `writing` (a failed write is one line, not a traceback).
- `flops_per_token`: training FLOPs of a decoder (6·N + attention).
- `WallBudget`: a run's wall time across resumes against `train.time_budget_minutes`, and its ETA.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from anygen.config import check, choice, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes

CHECKPOINT_FORMAT = 1  # state.json of `save_checkpoint`; bump when that layout changes
LOCK_FILE = ".anygen.lock"  # in a run directory; holds the pid of the run that has it locked
# Launchers set these in every process they start: torchrun/accelerate the world size, accelerate its engine
DISTRIBUTED_ENV = ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
# The t2i and all-task Transfusion trainers are plain single-process loops (their own batches, checkpoint and
# summary): several processes would each train the whole model on the same batches and race for one out_dir
SINGLE_PROCESS_REFUSED = ("{trainer} runs in one process only: it is not wired for DDP, FSDP or DeepSpeed (run "
                          "`anygen train RECIPE` without accelerate launch; the sharded engines train the decoder "
                          "recipes, training/README.md)")
# training keeps 4 fp32 copies per parameter: the weight, its gradient and AdamW's two moments
BYTES_PER_PARAMETER = 16
FP32 = 4  # bytes
# AdamW converts its step size lr / (1 - beta1^t) and its decay factor to the weights' dtype: larger overflows
FLOAT32_MAX = torch.finfo(torch.float32).max


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
        check(self.lr / (1 - self.betas[0]) < FLOAT32_MAX and self.lr * self.weight_decay < FLOAT32_MAX, "lr",
              f"{self.lr:g} is too large: AdamW's step size (lr / (1 - betas[0]), lr × weight_decay) would "
              f"overflow float32 (max {FLOAT32_MAX:.3g})")


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


# ---- wall-time budget ---------------------------------------------------------------------------
class WallBudget:
    """A run's wall time, counted across resumes (`elapsed_before`), against `minutes` (0: no budget).

    With a budget the run is done when its steps are or its time is, whichever comes first, and
    `progress` (what a cosine schedule follows) is the larger fraction. `clock` (seconds, monotonic)
    is the seam tests replace to spend the budget without sleeping.
    """

    def __init__(self, minutes: float, elapsed_before: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.budget_s, self.before, self.clock = float(minutes) * 60, float(elapsed_before), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.before + self.clock() - self.start

    def progress(self, step: int, steps: int) -> float:
        p = step / steps
        return max(p, self.elapsed() / self.budget_s) if self.budget_s > 0 else p

    def spent(self) -> bool:
        return self.budget_s > 0 and self.elapsed() >= self.budget_s

    def eta(self, steps_left: int, seconds_per_step: float | None) -> float | None:
        """Seconds until the run ends: the steps left at the measured pace, capped by the budget left."""
        left = [steps_left * seconds_per_step] if seconds_per_step is not None else []
        if self.budget_s > 0:
            left.append(max(0.0, self.budget_s - self.elapsed()))
        return min(left) if left else None


# ---- RNG state ----------------------------------------------------------------------------------
def rng_state(prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's python and numpy RNG states (JSON-able), and torch's as tensors
    `{prefix}torch` and `{prefix}cudaNN`."""
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
    python/numpy RNG, the recipe). Weights holding NaN/Inf are refused (`check_finite`), a failed
    write is one line (`writing`).
    """
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    check_finite(weights.values(), directory)
    opt_sd = opt.state_dict()
    opt_tensors, rest = flatten_optimizer(opt_sd, "opt.")
    scalars = {f"{idx}.{k}": v for idx, st in rest.items() for k, v in st.items()}
    rng_meta, rng_tensors = rng_state("rng.")
    state = {"format_version": CHECKPOINT_FORMAT, "step": step, "elapsed_s": elapsed, "cpu_s": cpu_s,
             "optimizer": {"param_groups": opt_sd["param_groups"], "scalars": scalars}, "rng": rng_meta,
             "recipe": to_dict(recipe), **(extra or {})}
    with writing(directory), atomic_directory(directory) as tmp:
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
class RunLock:
    """An exclusive lock (fcntl.flock on `LOCK_FILE`) on a run directory, created if missing.

    Held until `release()` (or the end of a `with` block, or of the process); a second holder
    is refused at once with a one-line AnygenError naming the first one's pid. `field` names
    the config field that chose the directory, for error messages.
    """

    def __init__(self, directory: str | os.PathLike, field: str):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise AnygenError(f"{field}: cannot use {self.directory} as a run directory "
                              f"(it or a path above it is not a directory)") from None
        except OSError as e:
            raise AnygenError(f"{field}: cannot use {self.directory} as a run directory ({_reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AnygenError(f"{field}: cannot lock {self.directory} ({_reason(e)})") from None
            raise AnygenError(f"{self.directory} is in use by another run (pid {pid}); wait for it to finish "
                              f"or choose another {field}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(directory: str | os.PathLike, field: str) -> RunLock:
    """Create `directory` if needed and lock it for this run (see `RunLock`)."""
    return RunLock(directory, field)


def holds_run(directory: Path) -> bool:
    """Whether `directory` has anything in it besides the lock file."""
    return directory.is_dir() and any(p.name != LOCK_FILE for p in directory.iterdir())


def refuse_existing_run(directory: Path, what: str, field: str) -> None:
    """The one-line error for starting a run where `what` ("a run", "checkpoints") already is."""
    raise AnygenError(f"{directory} already holds {what}: pass --resume to continue it, or choose another {field}")


def remove_stale_temps(directory: Path, names: Iterable[str], globs: Iterable[str] = ()) -> None:
    """Clear what interrupted atomic writes into `directory` left behind; call it holding the run lock.

    For each entry NAME: `.NAME.*.tmp` (anygen.io's temporaries) is removed; `.NAME.old.*` (a
    replaced directory anygen.io had not yet deleted) is put back as NAME when NAME is missing
    (the replacement never landed), else removed. Entries matching `globs` are removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    stale = [p for g in globs for p in directory.glob(g)]
    for name in names:
        stale += directory.glob(f".{name}.*.tmp")
        for old in sorted(directory.glob(f".{name}.old.*")):
            if not (directory / name).exists():
                os.replace(old, directory / name)
            else:
                stale.append(old)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


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


# ---- guards ----------------------------------------------------------------------------------------
def count_nonfinite(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(tensors holding a NaN or Inf, all tensors)."""
    bad = total = 0
    for t in tensors:
        total += 1
        bad += int(t.is_floating_point() and not bool(torch.isfinite(t).all()))
    return bad, total


def refuse_nonfinite(bad: int, total: int, where) -> None:
    """The one-line error for weights that must not be saved (see `check_finite`)."""
    if bad:
        raise AnygenError(f"{where}: not saved: {bad} of {total} weight tensors hold NaN or Inf "
                          f"(training diverged; lower the learning rate)")


def check_finite(tensors: Iterable[torch.Tensor], where) -> None:
    """Refuse to save `where` when any of the weight `tensors` holds NaN or Inf."""
    refuse_nonfinite(*count_nonfinite(tensors), where)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    return str(e)


@contextmanager
def writing(what):
    """Turn a failed write (disk full, quota, permissions; OSError or safetensors' error) into one line."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as e:
        raise AnygenError(f"{what}: cannot write ({_reason(e)})") from None


def memory_bytes() -> int:
    """Physical memory of this machine, plus the memory of its CUDA devices."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        total += sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    return total


def decoder_layer_parameters(model) -> int:
    """Parameters of one decoder layer of DecoderConfig `model`: projections, two RMSNorms, the q/k norms."""
    h, q, kv = model.hidden, model.n_heads * model.head_dim, model.n_kv_heads * model.head_dim
    return h * q + 2 * h * kv + q * h + 3 * h * model.intermediate + 2 * h + 2 * model.head_dim


def decoder_parameters(model, vocab_size: int) -> int:
    """Parameters of a decoder built from DecoderConfig `model` with `vocab_size` rows (Qwen3 layout)."""
    h = model.hidden
    return vocab_size * h * (1 if model.tie_embeddings else 2) + model.n_layers * decoder_layer_parameters(model) + h


def check_memory(model, vocab_size: int, rows: int, seq_len: int, fields: str) -> None:
    """Refuse, before building, a decoder (DecoderConfig `model`) whose training cannot fit in memory.

    The estimate is a lower bound: weights, gradients and AdamW state (`BYTES_PER_PARAMETER`
    each), fp32 logits of a micro-batch of `rows` × `seq_len` tokens, and one hidden-size and one
    intermediate-size activation per layer and token. `fields` names the config fields to change.
    """
    params = decoder_parameters(model, vocab_size)
    tokens = rows * seq_len
    need = (params * BYTES_PER_PARAMETER + tokens * vocab_size * FP32
            + tokens * model.n_layers * (model.hidden + model.intermediate) * FP32)
    have = memory_bytes()
    if need > have:
        raise AnygenError(f"{fields}: training needs at least {need / 2**30:.3g} GiB ({params:.3g} parameters, "
                          f"{tokens:.3g} tokens per micro-batch), more than this machine's "
                          f"{have / 2**30:.3g} GiB of memory")


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


def refuse_distributed(trainer: str, environ=os.environ) -> None:
    """Raise SINGLE_PROCESS_REFUSED (one line, naming `trainer`) when a launcher started this process as one of
    several or under a sharding engine (accelerate's FSDP or DeepSpeed config, whatever the process count)."""
    world = environ.get("WORLD_SIZE", "1").strip() or "1"
    sharded = any(environ.get(k, "false").lower() == "true" for k in DISTRIBUTED_ENV[1:])
    if sharded or (world.isdigit() and int(world) > 1):
        raise AnygenError(SINGLE_PROCESS_REFUSED.format(trainer=trainer))


def single_process_run(trainer: str, train, resume: bool, body: Callable[[Path], Path]) -> Path:
    """The one-process trainers' run: refuse a distributed launch (`refuse_distributed`), set the
    threads ($ANYGEN_THREADS wins over `train.threads`), hold the lock on `train.out_dir`, clear a
    killed run's temporaries, refuse a directory holding a run unless `resume`; then `body(out_dir)`."""
    from anygen.threads import THREADS_ENV, set_threads

    refuse_distributed(trainer)
    env_threads = os.environ.get(THREADS_ENV, "")
    if env_threads.strip():
        set_threads(env_threads, THREADS_ENV)
    else:
        set_threads(train.threads, "train.threads")
    out = Path(train.out_dir)
    with lock_run_dir(out, "train.out_dir"):
        remove_stale_temps(out, ("checkpoint", "model", "summary.json"))
        if holds_run(out) and not resume:
            refuse_existing_run(out, "a run", "train.out_dir")
        return body(out)
