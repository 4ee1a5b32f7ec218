"""Crash safety of decoder training: SIGKILL a training subprocess while it writes a
checkpoint; the previous checkpoint must still load, and resuming from it must end bitwise at
the weights of an uninterrupted run.

The subprocess wraps the file operations of checkpointing (safetensors writes, JSON writes,
`save_pretrained`, the atomic rename, the pruning of old checkpoints, the final model save) and
kills itself with SIGKILL just before, just after or half-way through one of them (a half-written
file, a half-deleted old checkpoint). One test kills at a fixed point in the middle of a
checkpoint; the other at a random operation (the seed is in the failure message; set
ANYGEN_CRASH_SEED to replay it).
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anygen.errors import AnygenError
from anygen.model.decoder import load_decoder
from anygen.training.decoder_trainer import checkpoints, reset_accelerate_state, train_decoder
from anygen.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)
STEPS = 4


def recipe(tmp: Path, out: Path) -> list[str]:
    (tmp / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    return ["model.n_layers=1", "model.hidden=32", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=8",
            "model.intermediate=64", "model.max_position=64", "data.kind=synthetic",
            f"data.vocab_file={tmp / 'vocab.json'}", "data.seq_len=32", "data.batch_size=2",
            "data.synthetic_doc_len=[4,20]", f"train.out_dir={out}", f"train.steps={STEPS}", "train.save_every=1",
            "train.keep_checkpoints=1", "train.threads=1", "train.progress=false", "train.log_every=1",
            "optim.warmup_steps=2", "optim.lr=3e-3"]


HOOKS = textwrap.dedent("""
    import os, pathlib, shutil, signal
    import safetensors.torch, transformers
    import anygen.model.decoder as dec
    import anygen.training.decoder_trainer as dt

    def install(target, killed_file):
        \"\"\"Wrap checkpointing's file operations; SIGKILL this process at `target` =
        "OP:PATH_PART:N:MODE": the N-th matching operation once a first checkpoint is complete
        (OP a hook name or "any"; MODE before, after or during).\"\"\"
        op_name, path_part, nth, mode = target.split(":")
        nth = int(nth)
        state = {"armed": False, "seen": 0}

        def die(what):
            fd = os.open(killed_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.write(fd, what.encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        def hook(name, real, path_arg):
            def wrapper(*args, **kwargs):
                path = str(path_arg(args, kwargs))
                hit = False
                if state["armed"] and op_name in ("any", name) and path_part in path:
                    state["seen"] += 1
                    hit = state["seen"] == nth
                if not hit:
                    return real(*args, **kwargs)
                what = f"{mode} {name}({path}) #{nth}"
                if mode == "before":
                    die(what)
                if mode == "during":
                    if name == "rmtree" and os.path.isdir(path):  # a half-deleted old checkpoint
                        for f in sorted(pathlib.Path(path).rglob("*.safetensors"))[:1]:
                            f.unlink()
                        die(what)
                    if name in ("save_file", "write_text", "atomic_write_bytes"):  # a torn file
                        real(*args, **kwargs)
                        p = pathlib.Path(path)
                        if p.is_file():
                            data = p.read_bytes()
                            p.write_bytes(data[:len(data) // 2])
                    die(what)
                real(*args, **kwargs)
                die(what)
            return wrapper

        first = lambda a, k: a[0] if a else ""
        second = lambda a, k: a[1] if len(a) > 1 else k.get("filename", "")
        safetensors.torch.save_file = hook("save_file", safetensors.torch.save_file, second)
        dec.atomic_write_bytes = hook("atomic_write_bytes", dec.atomic_write_bytes, first)
        os.replace = hook("replace", os.replace, first)
        shutil.rmtree = hook("rmtree", shutil.rmtree, first)
        pathlib.Path.write_text = hook("write_text", pathlib.Path.write_text, first)
        transformers.PreTrainedModel.save_pretrained = hook(
            "save_pretrained", transformers.PreTrainedModel.save_pretrained, second)

        real_checkpoint = dt.Trainer.save_checkpoint
        def save_checkpoint(self):
            result = real_checkpoint(self)
            state["armed"] = True  # from here on a complete checkpoint exists
            return result
        dt.Trainer.save_checkpoint = save_checkpoint
        return state
""")

CRASH_SCRIPT = HOOKS + textwrap.dedent("""
    import json, sys
    state = install(sys.argv[1], sys.argv[2])
    dt.train_decoder(None, json.loads(sys.argv[3]))
    print("FINISHED", state["seen"])
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Weights after an uninterrupted run of the same recipe."""
    tmp = tmp_path_factory.mktemp("reference")
    reset_accelerate_state()
    out = train_decoder(None, recipe(tmp, tmp / "run"))
    reset_accelerate_state()
    return load_file(str(out / "model.safetensors"))


def crash(tmp: Path, target: str) -> tuple[subprocess.CompletedProcess, Path, str]:
    out = tmp / "run"
    script = tmp / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), target, str(tmp / "killed_at.txt"),
                           json.dumps(recipe(tmp, out))],
                          env=env, capture_output=True, timeout=300)
    killed = (tmp / "killed_at.txt").read_text() if (tmp / "killed_at.txt").exists() else "not killed"
    return proc, out, killed


def check_latest_checkpoint_loads(out: Path, why: str) -> int:
    """The newest complete checkpoint opens: model, optimizer, RNG and trainer state. Returns its step."""
    ckpts = checkpoints(out)
    if not ckpts:
        return 0
    latest = ckpts[-1]
    state = json.loads((latest / "trainer_state.json").read_text())
    assert latest.name == f"step_{state['step']:08d}", why
    model = load_decoder(latest / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters()), why
    assert load_file(str(latest / "optimizer.safetensors")) and load_file(str(latest / "rng.safetensors")), why
    json.loads((latest / "optimizer.json").read_text())
    return state["step"]


def resume_and_compare(out: Path, tmp: Path, reference: dict, why: str) -> None:
    reset_accelerate_state()
    try:
        final = train_decoder(None, recipe(tmp, out), resume=True)
    finally:
        reset_accelerate_state()
    weights = load_file(str(final / "model.safetensors"))
    assert weights.keys() == reference.keys(), why
    assert all(torch.equal(weights[k], reference[k]) for k in reference), f"resumed weights differ ({why})"
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1)), f"{steps} ({why})"


def test_sigkill_mid_checkpoint_keeps_the_previous_one_and_resumes_exactly(tmp_path, reference):
    # die right after the step-3 optimizer state is written: model/ and optimizer are on disk, the
    # RNG state, trainer_state.json and the rename are not
    proc, out, killed = crash(tmp_path, "save_file:optimizer.safetensors:2:after")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert [p.name for p in checkpoints(out)] == ["step_00000002"], killed
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".step_00000003")]
    assert leftovers and leftovers[0].endswith(".tmp"), "the crash should leave the half-written temp directory"
    assert check_latest_checkpoint_loads(out, killed) == 2
    assert not (out / "model").exists()
    with open(out / "metrics.jsonl", "a") as f:  # a crash can also tear the last metrics line
        f.write('{"step": 4, "split": "tr')
    resume_and_compare(out, tmp_path, reference, killed)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], "temp dirs not cleaned up"
    # checkpoints carry a format version; an unknown one is refused before anything is restored
    state_file = checkpoints(out)[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["format_version"] == 1
    state_file.write_text(json.dumps({**state, "format_version": 99}))
    reset_accelerate_state()
    with pytest.raises(AnygenError, match="trainer_state.json: unsupported checkpoint format_version 99"):
        train_decoder(None, recipe(tmp_path, out), resume=True)
    reset_accelerate_state()


def crash_forked(tmp: Path, target: str) -> tuple[int, Path, str]:
    """Like `crash`, in a forked child of this process (no interpreter start-up: cheap enough to
    repeat). Returns the child's wait status."""
    out = tmp / "run"
    killed_file = tmp / "killed_at.txt"
    overrides = recipe(tmp, out)
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            namespace = {}
            exec(HOOKS, namespace)
            namespace["install"](target, str(killed_file))
            reset_accelerate_state()
            train_decoder(None, overrides)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status, out, killed_file.read_text() if killed_file.exists() else "not killed"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_random_checkpoint_operations(tmp_path, reference):
    seed = int(os.environ.get("ANYGEN_CRASH_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    for attempt in range(5):
        tmp = tmp_path / f"try{attempt}"
        tmp.mkdir()
        target = f"any::{rng.randint(1, 36)}:{rng.choice(['before', 'after', 'during'])}"
        status, out, killed = crash_forked(tmp, target)
        why = f"ANYGEN_CRASH_SEED={seed}, try {attempt}, target {target}, killed at: {killed}"
        if os.WIFEXITED(status):  # the run ended before reaching that operation
            assert os.WEXITSTATUS(status) == 0 and (out / "model" / "model.safetensors").exists(), why
        else:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, why
            assert check_latest_checkpoint_loads(out, why) >= 1, why
        resume_and_compare(out, tmp, reference, why)
