"""Guards shared by the trainers: non-finite saves, impossible sizes, threads, run-directory locks,
existing runs, stale temporaries and failed writes, each a one-line error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from anygen.cli import main as cli_main
from anygen.config import ConfigError
from anygen.errors import AnygenError
from anygen.training.decoder_trainer import (SyntheticBatches, checkpoints, load_train_config,
                                             reset_accelerate_state, train_decoder)
from anygen.training.tokenizer_trainer import train_tokenizer
from anygen.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)
TINY = ["model.n_layers=2", "model.hidden=32", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=8",
        "model.intermediate=64", "model.max_position=64"]


@pytest.fixture(autouse=True)
def fresh_state():
    threads = torch.get_num_threads()
    reset_accelerate_state()
    yield
    reset_accelerate_state()
    torch.set_num_threads(threads)


def decoder_recipe(tmp_path: Path, out: Path, extra=()) -> list[str]:
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    return TINY + ["data.kind=synthetic", f"data.vocab_file={tmp_path / 'vocab.json'}", "data.seq_len=32",
                   "data.batch_size=2", "data.synthetic_doc_len=[4,20]", f"train.out_dir={out}", "train.threads=1",
                   "train.progress=false", "train.log_every=1", "optim.warmup_steps=2", "optim.lr=3e-3",
                   "train.steps=2", *extra]


def tokenizer_recipe(tmp_path: Path, out: Path, name: str = "recipe", **train) -> Path:
    recipe = {"kind": "image", "out": str(out), "data": {"source": "shapes"},
              "codec": {"image_size": 16, "channels": [8, 16], "downsample": 2, "encoder_blocks": 1,
                        "decoder_blocks": 1, "fsq_levels": [5, 5, 3]},
              "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "warmup": 1, "checkpoint_every": 1,
                        "log_every": 1, "threads": 1, "seed": 0, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def empty_recipe(tmp_path: Path) -> str:
    """A recipe file with every key at its default (the overrides say the rest)."""
    (tmp_path / "empty.yaml").write_text("{}\n")
    return str(tmp_path / "empty.yaml")


def cli_error(argv, capsys) -> str:
    """Run the CLI, expect exit code 2 and exactly one stderr line; return it."""
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("anygen: error: "), (code, err)
    return err[0]


# ---- non-finite weights ---------------------------------------------------------------------------
def test_a_diverged_run_saves_neither_checkpoint_nor_model(tmp_path):
    from anygen.model.decoder import build_decoder
    from anygen.training.decoder_trainer import run_training

    out = tmp_path / "run"
    cfg = load_train_config(None, decoder_recipe(tmp_path, out))
    model = build_decoder(cfg.model, VOCAB, seed=0)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # every step is then skipped, the weight stays NaN
    message = f"step_00000002: not saved: 1 of {len(model.state_dict())} weight tensors hold NaN or Inf"
    with pytest.raises(AnygenError, match=message), pytest.warns(UserWarning, match="non-finite"):
        run_training(cfg, model=model)
    assert not (out / "model").exists() and not checkpoints(out)


def test_the_one_directory_checkpoint_refuses_non_finite_weights(tmp_path):
    """The t2i and tokenizer trainers' checkpoints (common.save_checkpoint)."""
    from anygen.training.common import save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(AnygenError, match="checkpoint: not saved: 1 of 2 weight tensors hold NaN or Inf"):
        save_checkpoint(tmp_path / "checkpoint", model, opt, 1, 0.0, load_train_config(None, ["data.kind=synthetic"]))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("lr", ["1e308", "1e38"])  # 1e38 / (1 - 0.9) is over float32's 3.4e38
def test_a_learning_rate_that_overflows_adamw_is_refused(lr):
    with pytest.raises(ConfigError, match="optim.lr: .* is too large: AdamW's step size"):
        load_train_config(None, ["data.kind=synthetic", f"optim.lr={lr}"])


# ---- config validation ------------------------------------------------------------------------------
def test_a_context_shorter_than_the_sequences_is_refused():
    with pytest.raises(ConfigError, match=r"model.max_position: must be >= data.seq_len \(32\), got 16"):
        load_train_config(None, ["data.kind=synthetic", "data.seq_len=32", "model.max_position=16"])


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_out_dir_is_refused(value):
    with pytest.raises(ConfigError, match="train.out_dir: is required"):
        load_train_config(None, ["data.kind=synthetic", f"train.out_dir={value}"])


@pytest.mark.parametrize("where", ["/dev/null", "file/run"])
def test_an_out_dir_that_cannot_be_a_directory_is_one_line(tmp_path, capsys, where):
    (tmp_path / "file").write_text("a file, not a directory")
    out = where if where.startswith("/") else tmp_path / where
    line = cli_error(["train", empty_recipe(tmp_path), *decoder_recipe(tmp_path, out)], capsys)
    assert f"train.out_dir: cannot use {out} as a run directory" in line


@pytest.mark.parametrize("override", ["model.n_layers=1000000000", "data.batch_size=1000000000",
                                      f"model.hidden={2 ** 40}", "data.seq_len=10000000000"])
def test_sizes_that_cannot_fit_in_memory_are_refused_before_building(tmp_path, capsys, override):
    extra = [override] + (["model.max_position=10000000000"] if override.startswith("data.seq_len") else [])
    line = cli_error(["train", empty_recipe(tmp_path),
                      *decoder_recipe(tmp_path, tmp_path / "run", extra)], capsys)
    assert "training needs at least" in line and "GiB of memory" in line


# ---- threads ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
def test_bad_anygen_threads_is_one_line_for_any_verb(monkeypatch, capsys, value):
    monkeypatch.setenv("ANYGEN_THREADS", value)
    line = cli_error(["generate", " "], capsys)
    assert f"ANYGEN_THREADS: expected a whole number of threads >= 1, got {value!r}" in line


def test_thread_counts_above_the_cpus_are_clamped(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ANYGEN_THREADS", "100000")
    cli_error(["generate", " "], capsys)  # an empty prompt: the thread count is set, nothing computes
    assert torch.get_num_threads() <= os.cpu_count()
    monkeypatch.delenv("ANYGEN_THREADS")
    from anygen.training.decoder_trainer import run_training

    seen = []

    class Spy(SyntheticBatches):
        def batch(self, k):
            seen.append(torch.get_num_threads())
            return super().batch(k)

    cfg = load_train_config(None, decoder_recipe(tmp_path, tmp_path / "run", ["train.threads=1000000"]))
    run_training(cfg, train_data=Spy(VOCAB, 32, 2, doc_len=(4, 20)))
    assert seen and max(seen) <= os.cpu_count()


# ---- one run per directory ---------------------------------------------------------------------------
class SecondRunAtBatch(SyntheticBatches):
    """Training data that, at batch 1, runs `anygen ARGV` in another process and keeps its result."""

    def __init__(self, argv, **kw):
        super().__init__(VOCAB, 32, 2, doc_len=(4, 20), **kw)
        self.argv, self.result = argv, None

    def batch(self, k):
        if k == 1 and self.result is None:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ANYGEN_THREADS": "1"}
            self.result = subprocess.run([sys.executable, "-m", "anygen", *self.argv], env=env, capture_output=True,
                                         text=True, timeout=300)
        return super().batch(k)


def test_a_second_decoder_run_on_the_same_out_dir_is_refused_at_once(tmp_path):
    from anygen.training.decoder_trainer import run_training

    out = tmp_path / "run"
    overrides = decoder_recipe(tmp_path, out, ["train.steps=3", "train.save_every=1"])
    data = SecondRunAtBatch(["train", empty_recipe(tmp_path), *overrides, "--resume"])
    run_training(load_train_config(None, overrides), train_data=data)
    assert data.result.returncode == 2, data.result.stderr[-3000:]
    assert data.result.stderr.strip().splitlines()[-1] == (
        f"anygen: error: {out} is in use by another run (pid {os.getpid()}); wait for it to finish "
        f"or choose another train.out_dir")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]  # the first run's lines only
    assert [p.name for p in checkpoints(out)] == ["step_00000002", "step_00000003"]


def test_tokenizer_and_t2i_runs_lock_their_directory(tmp_path):
    from anygen.training.common import lock_run_dir
    from anygen.training.t2i_trainer import train_t2i

    out = tmp_path / "tok"
    with lock_run_dir(out, "out"):
        with pytest.raises(AnygenError, match=f"in use by another run \\(pid {os.getpid()}\\).*another out$"):
            train_tokenizer(tokenizer_recipe(tmp_path, out), progress=False)
    t2i = tmp_path / "t2i"
    with lock_run_dir(t2i, "train.out_dir"):
        with pytest.raises(AnygenError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            train_t2i(ROOT / "training" / "t2i_tokens.yaml", [f"train.out_dir={t2i}"], progress=False)
    train_tokenizer(tokenizer_recipe(tmp_path, out), progress=False)  # released


# ---- existing runs and stale temporaries ---------------------------------------------------------------
def test_tokenizer_train_on_an_existing_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "tok"
    recipe = tokenizer_recipe(tmp_path, out)
    train_tokenizer(recipe, progress=False)
    before = (out / "metrics.jsonl").read_text()
    line = cli_error(["tokenizer", "train", str(recipe)], capsys)
    assert line == f"anygen: error: {out} already holds a run: pass --resume to continue it, or choose another out"
    assert (out / "metrics.jsonl").read_text() == before


def test_stale_temporaries_are_cleared_on_start(tmp_path, capsys):
    out = tmp_path / "run"
    overrides = decoder_recipe(tmp_path, out, ["train.stop_at=1"])
    train_decoder(None, overrides)
    (out / ".model.k2x9.tmp").mkdir()  # a final save killed half-way
    (out / ".model.k2x9.tmp" / "model.safetensors").write_text("half")
    (out / "checkpoints" / ".step_00000002.a1b2.tmp").mkdir()
    (out / ".config.json.q7.tmp").write_text("{")
    reset_accelerate_state()
    train_decoder(None, overrides[:-1], resume=True)
    assert sorted(p.name for p in out.rglob(".*")) == [".anygen.lock"]
    assert (out / "model" / "model.safetensors").exists()

    tok = tmp_path / "tok"
    train_tokenizer(tokenizer_recipe(tmp_path, tok), progress=False)
    (tok / ".checkpoint.f00.tmp").mkdir()
    (tok / ".artifact.b4r").mkdir()
    (tok / ".summary.json.x1.tmp").write_text("{")
    os.replace(tok / "checkpoint", tok / ".checkpoint.old.4242")  # killed between atomic_directory's two renames
    capsys.readouterr()
    train_tokenizer(tokenizer_recipe(tmp_path, tok, "longer", steps=3), resume=True, progress=False)
    assert "no checkpoint" not in capsys.readouterr().err  # resumed from the step-2 checkpoint put back
    assert sorted(p.name for p in tok.rglob(".*")) == [".anygen.lock"]
    assert json.loads((tok / "checkpoint" / "state.json").read_text())["step"] == 3
# ---- failed writes --------------------------------------------------------------------------------------
FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from anygen.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-size write then fails with EFBIG, as a full disk would
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
""")


def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ANYGEN_THREADS": "1"}
    # the model's weights (about 100 kB) fit under the limit, its optimizer state (twice that) does not
    proc = subprocess.run([sys.executable, str(script), "150000", "train", empty_recipe(tmp_path),
                           *decoder_recipe(tmp_path, out, ["train.save_every=1"])],
                          env=env, capture_output=True, text=True, timeout=300)
    err = [line for line in proc.stderr.splitlines() if line.startswith("anygen") or "Traceback" in line]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith(f"anygen: error: {out / 'checkpoints' / 'step_00000001'}: cannot write (")
    assert not list((out / "checkpoints").iterdir())  # the temporary directory is gone too


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"ACCELERATE_USE_FSDP": "true"},
                                 {"ACCELERATE_USE_DEEPSPEED": "true"}], ids=["two-processes", "fsdp", "deepspeed"])
@pytest.mark.parametrize("trainer", ["t2i", "transfusion"])
def test_the_single_process_trainers_refuse_a_distributed_launch_in_one_line(tmp_path, monkeypatch, env, trainer):
    """The text->image (either head) and all-task Transfusion trainers are single-process loops: accelerate launch
    is refused before anything is built or written, naming the way to run them."""
    from anygen.training.common import refuse_distributed
    from anygen.training.t2i_trainer import train_t2i
    from anygen.training.transfusion_trainer import train_transfusion

    refuse_distributed("x", {"WORLD_SIZE": "1", "ACCELERATE_USE_FSDP": "false"})  # one plain process: fine
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    train, recipe = {"t2i": (train_t2i, "t2i_diffusion.yaml"),
                     "transfusion": (train_transfusion, "shapes_transfusion.yaml")}[trainer]
    with pytest.raises(AnygenError) as e:
        train(ROOT / "training" / recipe, [f"train.out_dir={tmp_path / 'run'}"])
    message = str(e.value)
    assert "runs in one process only: it is not wired for DDP, FSDP or DeepSpeed" in message
    assert "\n" not in message and not (tmp_path / "run").exists()
