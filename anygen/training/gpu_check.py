"""The GPU check (`scripts/gpu_check.sh`): the figures training/README's GPU table is filled from, in one JSON.

    python -m anygen.training.gpu_check --out DIR            # on a GPU machine: DIR/gpu_check.json
    run_check(out_dir, recipe=..., overrides=[...], steps=3, device="cpu")   # the same on CPU (tests)

Three parts, each recorded even when another fails (a failing part holds {"error": "..."}):

- `train`: the 150M recipe (`training/sizes/150m.yaml`) trained by the decoder trainer for
  `steps` steps on one device with bf16 autocast, on synthetic packed documents over a
  32,768-id vocab (the recipe's shards are not needed); tokens/s is the median of the logged
  windows after the first (compilation and warm-up), MFU = tokens/s × FLOPs per token ÷ peak,
  with FLOPs per token as `anygen plan` counts them (6·N' + 12·L·H·Q·T) and the peak the
  datasheet's dense bf16 figure for the GPU (`DATASHEET_TFLOPS`), also against a bf16 matmul
  measured on the device;
- `fsdp`: the same recipe under `training/accelerate_fsdp.yaml` on all the GPUs, when there
  are more than one (`fsdp_steps` steps);
- `sample`: greedy text decoding with the recipe's model (random weights, bf16 on CUDA) at
  batch 1 and 16, anygen's sampler against transformers' `generate`
  (`anygen.sampling.bench.decode_at_batch`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from anygen.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "training" / "sizes" / "150m.yaml"
FSDP_CONFIG = ROOT / "training" / "accelerate_fsdp.yaml"
TRAIN_STEPS = 200  # the measurement: 200 steps of the 150M recipe
FSDP_STEPS = 50  # enough logged windows past the first for a median; the sharded run is a check, not a benchmark
LOG_EVERY = 10  # steps per tokens/s window
VOCAB_SIZE = 32768  # `anygen plan`'s assumed vocab (the recipes' shards are not on a fresh GPU machine)
# a few documents per 2048-token row: the synthetic batch is made on the CPU each step and must cost little
# next to a GPU step, yet rows stay packed (the block-diagonal mask the trainer uses on real shards)
SYNTHETIC_DOC_LEN = (256, 2048)
SAMPLE_BATCHES = (1, 16)
SAMPLE_TOKENS = 128
# dense bf16 tensor-core TFLOP/s from NVIDIA's datasheets (without sparsity), by a word of the device name
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
MATMUL_N = 8192  # side of the bf16 matmul whose FLOP/s is the measured peak


def synthetic_vocab(size: int = VOCAB_SIZE):
    """A Vocab of exactly `size` ids (half text, the rest image codes), as `anygen bench train` makes one."""
    from anygen.training.bench import N_SPECIALS
    from anygen.vocab import Vocab

    n_text = size // 2
    vocab = Vocab(n_text=n_text, image_codebook_size=size - n_text - N_SPECIALS)
    if vocab.size != size:  # the specials changed: say so rather than report another model
        raise AssertionError(f"synthetic vocab has {vocab.size} ids, not {size}")
    return vocab


def datasheet_tflops(device_name: str) -> float | None:
    return next((v for k, v in DATASHEET_TFLOPS.items() if k in device_name.upper()), None)


def train_overrides(vocab_file: Path, out_dir: Path, steps: int, mixed_precision: str) -> list[str]:
    lo, hi = SYNTHETIC_DOC_LEN
    return ["data.kind=synthetic", f"data.vocab_file={vocab_file}", "data.num_workers=0",
            f"data.synthetic_doc_len=[{lo},{hi}]", f"train.steps={steps}", f"train.log_every={LOG_EVERY}",
            "train.save_every=0", "train.eval_batches=1", "train.progress=false",
            f"train.mixed_precision='{mixed_precision}'", f"train.out_dir={out_dir}"]


def _windows(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in rows if r["split"] == "train"]


def train_figures(run_dir: Path, tokens_per_s: list[float], cfg, vocab_size: int, devices: int,
                  peak_flops: float | None, matmul_flops: float | None) -> dict:
    """tokens/s (median of the windows after the first) and MFU against the datasheet and a measured matmul."""
    from anygen.training.plan import flops_per_token

    steady = tokens_per_s[1:] or tokens_per_s
    tps = statistics.median(steady)
    fpt = flops_per_token(cfg.model, vocab_size, cfg.data.seq_len)
    return {"run_dir": str(run_dir), "devices": devices, "tokens_per_s": tps, "tokens_per_s_windows": tokens_per_s,
            "flops_per_token": fpt, "achieved_tflops": tps * fpt / 1e12,
            "peak_tflops_per_device": peak_flops / 1e12 if peak_flops else None,
            "mfu": tps * fpt / (devices * peak_flops) if peak_flops else None,
            "matmul_tflops_per_device": matmul_flops / 1e12 if matmul_flops else None,
            "mfu_vs_matmul": tps * fpt / (devices * matmul_flops) if matmul_flops else None,
            "seq_len": cfg.data.seq_len, "batch_size": cfg.data.batch_size, "grad_accum": cfg.train.grad_accum,
            "mixed_precision": cfg.train.mixed_precision}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_check(out_dir: str | os.PathLike, *, recipe: str | os.PathLike = RECIPE, overrides: list[str] = (),
              steps: int = TRAIN_STEPS, fsdp_steps: int = FSDP_STEPS, device: str | None = None,
              vocab_size: int = VOCAB_SIZE, sample_batches: tuple[int, ...] = SAMPLE_BATCHES,
              sample_tokens: int = SAMPLE_TOKENS, gpus: int | None = None, launch=subprocess.run) -> Path:
    """Run the three parts and write `out_dir/gpu_check.json`; returns its path.

    `device` defaults to cuda when there is one, `gpus` (the FSDP part's process count) to the
    GPUs torch sees. `overrides` go after the check's own (a smaller model for a CPU run).
    `launch` runs the FSDP command (subprocess.run's signature): a seam for tests. On CPU: fp32.
    """
    from anygen.training.decoder_trainer import load_train_config, reset_accelerate_state, train_decoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    gpus = gpus if gpus is not None else torch.cuda.device_count() if cuda else 0
    name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    vocab = synthetic_vocab(vocab_size)
    (out / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    precision = "bf16" if cuda else "no"
    report: dict = {"device": name, "gpus": gpus, "torch": torch.__version__, "recipe": str(recipe),
                    "overrides": list(overrides), "vocab_size": vocab.size, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    peak = datasheet_tflops(name) * 1e12 if cuda and datasheet_tflops(name) else None
    matmul = None
    if cuda:
        from anygen.training.bench import matmul_peak_flops

        matmul = matmul_peak_flops(MATMUL_N, reps=10, dtype=torch.bfloat16, device="cuda")

    def part(key, fn):
        try:
            report[key] = fn()
        except Exception as e:  # one failing part must not lose the others' figures
            report[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        atomic_write_bytes(out / "gpu_check.json", (json.dumps(report, indent=2) + "\n").encode())

    def one_device():
        run = out / "train"
        args = train_overrides(out / "vocab.json", run, steps, precision) + list(overrides)
        cfg = load_train_config(recipe, args)
        reset_accelerate_state()
        t = time.perf_counter()
        train_decoder(recipe, args)
        fig = train_figures(run, _windows(run), cfg, vocab.size, 1, peak, matmul)
        return {**fig, "steps": steps, "wall_s": time.perf_counter() - t}

    def sharded():
        if gpus < 2:
            return {"skipped": f"{gpus} GPU(s): FSDP needs more than one"}
        run = out / "fsdp"
        args = train_overrides(out / "vocab.json", run, fsdp_steps, precision) + list(overrides)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--num_processes", str(gpus), "--main_process_port", str(_free_port()), "-m", "anygen", "train",
               str(recipe), *args]
        t = time.perf_counter()
        proc = launch(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"accelerate launch exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
        cfg = load_train_config(recipe, args)
        fig = train_figures(run, _windows(run), cfg, vocab.size, gpus, peak, matmul)
        return {**fig, "steps": fsdp_steps, "wall_s": time.perf_counter() - t, "command": cmd}

    def sample():
        from anygen.model.decoder import build_decoder
        from anygen.sampling.bench import decode_at_batch

        cfg = load_train_config(recipe, train_overrides(out / "vocab.json", out / "unused", 1, precision)
                                + list(overrides))
        model = build_decoder(cfg.model, vocab, seed=0).eval()
        model = model.to(device=device, dtype=torch.bfloat16 if cuda else torch.float32)
        rows = [decode_at_batch(model, vocab, b, n_tokens=sample_tokens) for b in sample_batches]
        return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "batches": rows}

    part("train", one_device)
    part("fsdp", sharded)
    part("sample", sample)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_bytes(out / "gpu_check.json", (json.dumps(report, indent=2) + "\n").encode())
    return out / "gpu_check.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m anygen.training.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out", help="output folder (default: $OUT, else out/)")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--steps", type=int, default=TRAIN_STEPS)
    p.add_argument("--fsdp-steps", type=int, default=FSDP_STEPS, dest="fsdp_steps")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides")
    args = p.parse_args(argv)
    path = run_check(args.out, recipe=args.recipe, overrides=args.overrides, steps=args.steps,
                     fsdp_steps=args.fsdp_steps)
    print(f"wrote {path}")
    print(path.read_text())


if __name__ == "__main__":
    main()
