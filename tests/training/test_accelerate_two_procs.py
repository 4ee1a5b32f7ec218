"""Scale: the decoder trainer under `accelerate launch --num_processes 2 --cpu` (gloo DDP)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from anygen.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)


def test_two_process_training_run(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {n_layers: 2, hidden: 32, n_heads: 4, n_kv_heads: 2, head_dim: 8, intermediate: 64, max_position: 64}\n"
        f"data: {{kind: synthetic, vocab_file: {tmp_path / 'vocab.json'}, seq_len: 32, batch_size: 2,"
        " synthetic_doc_len: [4, 20]}\n"
        f"train: {{out_dir: {tmp_path / 'run'}, steps: 3, save_every: 2, threads: 1, progress: false, log_every: 1}}\n"
        "optim: {warmup_steps: 1, lr: 0.003}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "anygen.training.decoder_trainer", str(recipe), "train.grad_accum=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    assert proc.stdout.strip().splitlines()[-1] == str(run / "model")  # printed once, by the main process
    state = json.loads((run / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["data"]["index"] == 6  # 3 steps × 2 micro-batches of global batches (each rank takes its rows)
    rng = load_file(str(run / "checkpoints" / "step_00000003" / "rng.safetensors"))
    assert {"rank0.torch", "rank1.torch"} <= set(rng)
    train = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3]
    # targets of both ranks are counted: 2 ranks × 2 micro-batches × 2 rows of up to 31 targets
    assert all(2 * 31 < m["target_tokens"] <= 8 * 31 for m in train)
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
