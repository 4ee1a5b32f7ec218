"""Scale: the decoder trainer in two processes (DDP over gloo on CPU) under `accelerate launch`.

accelerate's `--cpu` launcher starts a single process unless MPI is set up, so the CPU
run uses `--multi_gpu` (torchrun underneath); with no GPU visible the trainer selects
accelerate's MULTI_CPU mode (gloo).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from anygen.training.decoder_trainer import reset_accelerate_state, train_decoder
from anygen.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)
MODEL = "{n_layers: 2, hidden: 32, n_heads: 4, n_kv_heads: 2, head_dim: 8, intermediate: 64, max_position: 64}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    recipe = tmp_path / "tiny.yaml"
    # every row is one full-length document, so the mean of the two ranks' losses is the global mean
    recipe.write_text(
        f"model: {MODEL}\n"
        f"data: {{kind: synthetic, vocab_file: {tmp_path / 'vocab.json'}, seq_len: 32, batch_size: 2,"
        " synthetic_doc_len: [32, 32]}\n"
        f"train: {{out_dir: {tmp_path / 'two'}, steps: 3, save_every: 2, threads: 1, progress: false,"
        " log_every: 1, grad_accum: 2}\n"
        "optim: {warmup_steps: 1, lr: 0.003}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "anygen", "train", str(recipe)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = tmp_path / "two"
    assert proc.stdout.strip().splitlines()[-1] == f"model written to {two / 'model'}"  # once, by the main process
    assert proc.stdout.count("model written to") == 1
    ckpt = two / "checkpoints" / "step_00000003"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["data"]["index"] == 6  # 3 steps × 2 micro-batches of global batches
    assert {"rank0.torch", "rank1.torch"} <= set(load_file(str(ckpt / "rng.safetensors")))
    train = [m for m in map(json.loads, (two / "metrics.jsonl").read_text().splitlines()) if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3]
    assert all(m["target_tokens"] == 2 * 2 * 2 * 31 for m in train)  # both ranks' targets are counted

    # one process over the same global batch (4 rows) reaches the same weights
    reset_accelerate_state()
    one = train_decoder(recipe, ["data.batch_size=4", f"train.out_dir={tmp_path / 'one'}"])
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a[k], load_file(str(ckpt.parent / "step_00000002" / "model" / "model.safetensors"))[k])
               for k in a)


def test_example_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "training").glob("accelerate_*.yaml")):
        cfg = load_config_from_file(str(path))
        kinds[path.stem] = cfg.distributed_type.value
    assert kinds == {"accelerate_cpu_2proc": "MULTI_GPU", "accelerate_ddp": "MULTI_GPU", "accelerate_fsdp": "FSDP"}
