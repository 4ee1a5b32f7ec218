"""The GPU check script: its shell syntax, and its JSON written by a tiny CPU run (no GPU needed)."""

import json
import subprocess
from pathlib import Path

from anygen.training.decoder_trainer import reset_accelerate_state
from anygen.training.gpu_check import FSDP_CONFIG, run_check, synthetic_vocab

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.n_layers=1", "model.hidden=32", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=8",
        "model.intermediate=64", "model.max_position=64", "model.image_position_stride=0", "data.seq_len=32",
        "data.batch_size=2", "data.synthetic_doc_len=[8,32]", "train.threads=1"]


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


def test_a_tiny_cpu_run_writes_every_part(tmp_path):
    launched = []

    def fake_launch(cmd, **kw):  # the FSDP run, replaced: it writes the metrics the real one would
        launched.append(cmd)
        run = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("train.out_dir=")))
        run.mkdir(parents=True)
        rows = [{"step": s, "split": "train", "tokens_per_s": t} for s, t in ((10, 5.0), (20, 100.0), (30, 300.0))]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    assert synthetic_vocab(128).size == 128
    reset_accelerate_state()
    path = run_check(tmp_path, overrides=TINY, steps=3, fsdp_steps=30, device="cpu", vocab_size=128,
                     sample_batches=(1, 2), sample_tokens=4, gpus=2, launch=fake_launch)
    report = json.loads(path.read_text())
    assert path == tmp_path / "gpu_check.json" and report["vocab_size"] == 128
    train = report["train"]
    assert "error" not in train, train
    assert train["steps"] == 3 and train["tokens_per_s"] > 0 and train["flops_per_token"] > 0
    assert train["mfu"] is None and train["mixed_precision"] == "no"  # no datasheet peak for a CPU
    assert (tmp_path / "train" / "model" / "anygen_decoder.json").exists()
    fsdp = report["fsdp"]
    assert "error" not in fsdp, fsdp
    assert fsdp["tokens_per_s"] == 200.0 and fsdp["devices"] == 2  # the median past the first window
    cmd = launched[0]
    assert cmd[cmd.index("--config_file") + 1] == str(FSDP_CONFIG) and cmd[cmd.index("--num_processes") + 1] == "2"
    assert [row["batch"] for row in report["sample"]["batches"]] == [1, 2]
    assert all(row["engine_tokens_per_s"] > 0 for row in report["sample"]["batches"])
