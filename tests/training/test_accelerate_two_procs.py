"""Scale: the decoder trainer in two processes (DDP and FSDP2 over gloo on CPU) under `accelerate launch`.

accelerate's `--cpu` launcher starts a single process unless MPI is set up, so the CPU
run uses `--multi_gpu` (torchrun underneath); with no GPU visible the trainer selects
accelerate's MULTI_CPU mode (gloo). Under an FSDP config the trainer shards the model itself
(accelerate selects FSDP on accelerator devices only).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import fakes

from anygen.training.decoder_trainer import reset_accelerate_state, train_decoder
from anygen.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)
MODEL = "{n_layers: 2, hidden: 32, n_heads: 4, n_kv_heads: 2, head_dim: 8, intermediate: 64, max_position: 64}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, launcher_args: list[str], train_args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch LAUNCHER_ARGS -m anygen train TRAIN_ARGS` in two CPU processes; fails the test on error."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "-m", "anygen", "train", *train_args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_metrics(run_dir: Path) -> list[dict]:
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m["split"] == "train"]


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
    proc = launch(tmp_path, ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"], [str(recipe)])
    two = tmp_path / "two"
    assert proc.stdout.strip().splitlines()[-1] == f"model written to {two / 'model'}"  # once, by the main process
    assert proc.stdout.count("model written to") == 1
    ckpt = two / "checkpoints" / "step_00000003"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["data"]["index"] == 6  # 3 steps × 2 micro-batches of global batches
    assert {"rank0.torch", "rank1.torch"} <= set(load_file(str(ckpt / "rng.safetensors")))
    train = train_metrics(two)
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

    kinds, reshard = {}, {}
    for path in sorted((ROOT / "training").glob("accelerate_*.yaml")):
        cfg = load_config_from_file(str(path))
        kinds[path.stem] = cfg.distributed_type.value
        if cfg.fsdp_config:
            reshard[path.stem] = cfg.fsdp_config["fsdp_reshard_after_forward"]
    assert kinds == {"accelerate_cpu_2proc": "MULTI_GPU", "accelerate_ddp": "MULTI_GPU", "accelerate_fsdp": "FSDP",
                     "accelerate_fsdp_cpu_2proc": "FSDP", "accelerate_fsdp_zero2": "FSDP"}
    # full sharding (ZeRO-3-like) frees each layer's weights after its forward; the ZeRO-2-like config keeps them
    assert reshard == {"accelerate_fsdp": True, "accelerate_fsdp_cpu_2proc": True, "accelerate_fsdp_zero2": False}


def test_fsdp_two_processes_match_one_process_resume_exactly_and_export_a_loadable_model(tmp_path, monkeypatch):
    """FSDP2 (full sharding per decoder layer) on two gloo processes: the same loss curve and weights as one
    process on the same global batch, a stop + resume that lands where the uninterrupted run does, and a
    single model directory that anygen.load opens."""
    fakes.make_tokenizer().save(tmp_path / "tok")
    recipe = tmp_path / "tiny.yaml"
    # every row is one full-length document, so the mean of the two ranks' losses is the global mean
    recipe.write_text(
        f"model: {MODEL}\n"
        f"data: {{kind: synthetic, tokenizer_dir: {tmp_path / 'tok'}, seq_len: 32, batch_size: 2,"
        " synthetic_doc_len: [32, 32]}\n"
        f"train: {{out_dir: {tmp_path / 'fsdp'}, steps: 4, save_every: 2, threads: 1, progress: false,"
        " log_every: 1, grad_accum: 2}\n"
        "optim: {warmup_steps: 1, lr: 0.003}\n")
    config = ["--config_file", str(ROOT / "training" / "accelerate_fsdp_cpu_2proc.yaml")]
    first = launch(tmp_path, config, [str(recipe), "train.stop_at=2"])
    assert "MULTI_CPU + FSDP2 (CPU)" in first.stdout  # sharded, not silently DDP: each process holds half
    held, total = (int(x.replace(",", "")) for x in re.search(r"holds ([\d,]+) of ([\d,]+) parameters",
                                                                 first.stdout).groups())
    assert held * 2 == total
    fsdp = tmp_path / "fsdp"
    assert not (fsdp / "model").exists()
    launch(tmp_path, config, [str(recipe), "--resume"])
    state = json.loads((fsdp / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["index"] == 8  # 4 steps × 2 micro-batches

    reset_accelerate_state()
    one = train_decoder(recipe, ["data.batch_size=4", f"train.out_dir={tmp_path / 'one'}"])
    a_metrics, b_metrics = train_metrics(tmp_path / "one"), train_metrics(fsdp)
    assert [m["step"] for m in b_metrics] == [1, 2, 3, 4]
    for a, b in zip(a_metrics, b_metrics):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(fsdp / "model" / "model.safetensors"))
    # the gathered state dict names the tied output matrix too: the same tensor as the embedding
    assert set(b) - set(a) <= {"lm_head.weight"} and set(a) <= set(b)
    assert torch.equal(b.pop("lm_head.weight", b["model.embed_tokens.weight"]), b["model.embed_tokens.weight"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # AdamW's moments came back from the step-2 checkpoint: the step-4 states agree too
    opt = [load_file(str(run / "checkpoints" / "step_00000004" / "optimizer.safetensors")) for run in (tmp_path / "one", fsdp)]
    assert opt[0].keys() == opt[1].keys()
    for k in opt[0]:
        torch.testing.assert_close(opt[1][k], opt[0][k], rtol=1e-4, atol=1e-6)

    import anygen

    fakes.use_fake_codecs(monkeypatch)
    gen = anygen.load(fsdp / "model")
    assert json.loads((fsdp / "model" / "anygen_decoder.json").read_text())["architecture"] == "Qwen3ForCausalLM"
    loaded = gen.model.state_dict()
    assert all(torch.equal(loaded[k].float(), b[k]) for k in b)
