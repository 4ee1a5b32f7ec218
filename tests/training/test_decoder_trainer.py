"""Decoder trainer: exact resume, non-finite skip/abort, schedules, checkpoints, shard data."""

import json

import pytest
import torch
from safetensors.torch import load_file

from anygen.config import ConfigError
from anygen.errors import AnygenError
from anygen.training.bench import measure_mfu
from anygen.training.common import OptimConfig, lr_at
from anygen.training.decoder_trainer import (SyntheticBatches, TrainingDiverged, checkpoints, load_train_config,
                                             reset_accelerate_state, run_training, train_decoder)
from anygen.vocab import Vocab

VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)
TINY = ["model.n_layers=2", "model.hidden=32", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=8",
        "model.intermediate=64", "model.max_position=64"]


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def recipe(tmp_path, name="run", extra=()):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    return TINY + ["data.kind=synthetic", f"data.vocab_file={tmp_path / 'vocab.json'}", "data.seq_len=32",
                   "data.batch_size=2", "data.synthetic_doc_len=[4,20]", f"train.out_dir={tmp_path / name}",
                   "train.threads=1", "train.progress=false", "train.log_every=1", "optim.warmup_steps=2",
                   "optim.lr=3e-3", *extra]


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(tmp_path):
    common = ["train.steps=6", "train.save_every=3", "train.grad_accum=2"]
    full = train_decoder(None, recipe(tmp_path, "full", common))
    part = train_decoder(None, recipe(tmp_path, "part", common + ["train.stop_at=3"]))
    assert part.parent.name == "step_00000003" and not (tmp_path / "part" / "model").exists()
    resumed = train_decoder(None, recipe(tmp_path, "part", common), resume=True)
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = metrics(tmp_path / "full"), metrics(tmp_path / "part")
    last = [m for m in ma if m["split"] == "train"][-1]
    assert [m["step"] for m in mb if m["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [m for m in mb if m["split"] == "train"][-1]["loss"] == last["loss"]
    # optimizer moments round-trip too
    opt_a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000006" / "optimizer.safetensors"))
    opt_b = load_file(str(tmp_path / "part" / "checkpoints" / "step_00000006" / "optimizer.safetensors"))
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_checkpoints_are_safetensors_json_and_pruned(tmp_path):
    steps = ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=2"]
    out = train_decoder(None, recipe(tmp_path, "r", steps))
    run = tmp_path / "r"
    assert [p.name for p in checkpoints(run)] == ["step_00000003", "step_00000004"]
    files = {p.name for p in run.rglob("*") if p.is_file()}
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    state = json.loads((checkpoints(run)[-1] / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["data"]["index"] == 4
    assert out == run / "model" and (out / "anygen_decoder.json").exists()
    m = metrics(run)
    assert {"loss", "loss_text", "acc_image", "tokens_per_s", "lr", "grad_norm"} <= set(m[0])
    with pytest.raises(AnygenError, match="already holds checkpoints"):
        train_decoder(None, recipe(tmp_path, "r", ["train.steps=4"]))


def test_nonfinite_loss_skips_then_aborts(tmp_path):
    from anygen.model.decoder import build_decoder

    cfg = load_train_config(None, recipe(tmp_path, "nan", ["train.steps=4", "train.max_bad_steps=2"]))
    model = build_decoder(cfg.model, VOCAB, seed=0)
    calls = {"n": 0}

    def poison_second_step(module, args, output):  # forward of micro-batch 2 returns NaN logits
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    model.lm_head.register_forward_hook(poison_second_step)
    with pytest.warns(UserWarning, match="step 2: non-finite loss or gradient, update skipped"):
        run_training(cfg, model=model)
    m = [r for r in metrics(tmp_path / "nan") if r["split"] == "train"]
    assert [r["skipped"] for r in m] == [0, 1, 1, 1] and "loss" not in m[1]
    w = weights(tmp_path / "nan" / "model")
    assert all(torch.isfinite(t).all() for t in w.values())

    cfg = load_train_config(None, recipe(tmp_path, "nan2", ["train.steps=6", "train.max_bad_steps=3"]))
    model = build_decoder(cfg.model, VOCAB, seed=0)
    model.lm_head.register_forward_hook(lambda mod, a, out: out * float("nan"))
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"), pytest.warns(UserWarning):
        run_training(cfg, model=model)
    assert not checkpoints(tmp_path / "nan2")  # nothing written from a diverged run


def test_lr_schedules():
    cos = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2, schedule="cosine")
    assert [lr_at(s, cos, 10) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cos, 10) == pytest.approx(1.0) and lr_at(10, cos, 10) == pytest.approx(0.1)
    assert all(lr_at(s, cos, 10) >= lr_at(s + 1, cos, 10) for s in range(2, 10))
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, schedule="wsd", decay_fraction=0.2)
    assert [round(lr_at(s, wsd, 10), 6) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1, 1, 0.5, 0]


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_train_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="data.shard_dir"):
        load_train_config(None, ["data.kind=shards"])
    with pytest.raises(ConfigError, match="train.train_only_new_rows"):
        load_train_config(None, ["train.train_only_new_rows=true", "data.kind=synthetic"])


def test_trains_from_token_shards_with_eval(tmp_path):
    from anygen.data.shards import ShardWriter

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("eval", 4)):
        meta = {"worlds": ["shapes"], "tasks": ["text_to_image"]}  # what pretokenize records
        with ShardWriter(tmp_path / split, VOCAB, max_len=24, meta=meta) as w:
            for _ in range(n):
                ids = torch.randint(0, VOCAB.size, (int(torch.randint(6, 24, (1,), generator=g)),), generator=g)
                w.add(ids.numpy(), (ids >= 0).numpy(), "t2i")
    tok = tmp_path / "tok"  # stands in for a MultimodalTokenizer directory
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"format": "anygen.tokenizer", "vocab": VOCAB.to_dict()}))
    out = train_decoder(None, TINY + [
        f"data.tokenizer_dir={tok}",
        "data.kind=shards", f"data.shard_dir={tmp_path / 'train'}", f"data.eval_shard_dir={tmp_path / 'eval'}",
        "data.seq_len=24", "data.batch_size=2", f"train.out_dir={tmp_path / 'run'}", "train.steps=3",
        "train.eval_every=2", "train.eval_batches=2", "train.threads=1", "train.progress=false"])
    m = metrics(tmp_path / "run")
    assert [r["step"] for r in m if r["split"] == "eval"] == [2, 3]
    saved = json.loads((out / "anygen_decoder.json").read_text())
    assert saved["vocab"] == VOCAB.to_dict()
    assert saved["worlds"] == ["shapes"] and saved["tasks"] == ["text_to_image"]  # anygen.load picks strategies by it
    assert (out / "tokenizer" / "tokenizer.json").exists()  # a complete model directory (anygen.load)
    state = json.loads((checkpoints(tmp_path / "run")[-1] / "trainer_state.json").read_text())
    assert state["data"]["row"] == 6  # 3 steps × 2 rows


def test_trains_from_a_stream_read_by_workers_and_resumes_exactly(tmp_path):
    from anygen.data.shards import ShardWriter

    g = torch.Generator().manual_seed(0)
    with ShardWriter(tmp_path / "train", VOCAB, max_len=24) as w:
        for _ in range(40):
            ids = torch.randint(0, VOCAB.size, (int(torch.randint(6, 24, (1,), generator=g)),), generator=g)
            w.add(ids.numpy(), (ids >= 0).numpy(), "t")
    stream = TINY + ["data.kind=stream", f"data.shard_dir={tmp_path / 'train'}", "data.num_workers=2",
                     "data.seq_len=24", "data.batch_size=2", "train.threads=1", "train.progress=false",
                     "train.steps=5", "train.save_every=0"]
    full = train_decoder(None, stream + [f"train.out_dir={tmp_path / 'full'}"])
    train_decoder(None, stream + [f"train.out_dir={tmp_path / 'part'}", "train.stop_at=3"])  # 3 batches: odd
    state = json.loads((checkpoints(tmp_path / "part")[-1] / "trainer_state.json").read_text())
    assert state["data"]["batches"] == 3 and state["data"]["next_worker"] == 1
    resumed = train_decoder(None, stream + [f"train.out_dir={tmp_path / 'part'}"], resume=True)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_train_config(None, ["data.kind=shards", "data.shard_dir=x", "data.num_workers=2"])


def test_synthetic_batches_format_and_resume():
    src = SyntheticBatches(VOCAB, 32, 3, seed=1, doc_len=(4, 12))
    it = iter(src)
    b0, b1 = next(it), next(it)
    assert set(b0) == {"input_ids", "labels", "position_ids", "document_ids"}
    assert all(t.shape == (3, 32) for t in b0.values())
    starts = b0["position_ids"] == 0
    assert (b0["labels"][starts & (b0["document_ids"] > 0)] == -100).all()
    fresh = SyntheticBatches(VOCAB, 32, 3, seed=1, doc_len=(4, 12))
    fresh.load_state_dict({"index": 1})
    again = next(iter(fresh))
    assert all(torch.equal(b1[k], again[k]) for k in b1)


def test_measure_mfu_reports_consistent_numbers():
    from anygen.model.decoder import DecoderConfig

    r = measure_mfu(DecoderConfig(n_layers=1, hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64),
                    vocab=128, seq_len=32, batch_size=2, steps=2, warmup=1, threads=1, matmul_n=128)
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1.5
    assert r["achieved_flops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"])
    # 6N + 12·L·H·Q·T
    assert r["flops_per_token"] == 6 * r["matmul_params"] + 12 * 1 * 2 * 16 * 32


def test_bench_train_cli_measures_a_recipe(tmp_path, capsys):
    from anygen.cli import main

    tiny = [o for o in recipe(tmp_path) if not o.startswith(("train.progress", "train.log_every", "optim."))]
    assert main(["bench", "train", *tiny, "--steps", "1", "--json", str(tmp_path / "mfu.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "mfu.json").read_text())
    assert printed["vocab_size"] == VOCAB.size and printed["seq_len"] == 32 and printed["steps"] == 1


def test_init_weights_fine_tunes_from_a_saved_decoder(tmp_path):
    """train.init_weights starts from a saved decoder's weights (fresh optimizer), not from random init."""
    first = train_decoder(None, recipe(tmp_path, "first", ["train.steps=4"]))
    zero_lr = ["train.steps=1", "optim.lr=1e-12", "optim.warmup_steps=1"]
    tuned = train_decoder(None, recipe(tmp_path, "tuned", zero_lr + [f"train.init_weights={first}"]))
    fresh = train_decoder(None, recipe(tmp_path, "fresh", zero_lr))
    a, b, c = weights(first), weights(tuned), weights(fresh)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # one step at lr ~0 keeps the loaded weights
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="init_weights"):
        load_train_config(None, recipe(tmp_path, "x", [f"train.init_weights={first}", f"train.init_from={first}"]))


def test_init_weights_grows_the_embeddings_onto_a_keep_vocab(tmp_path):
    """Fine-tuning onto `image_keep` adds the <keep> row at the mean of the old rows; old rows load unchanged."""
    first = train_decoder(None, recipe(tmp_path, "first", ["train.steps=2"]))
    keep = Vocab(**{**VOCAB.to_dict(), "image_keep": True})
    (tmp_path / "keep.json").write_text(json.dumps(keep.to_dict()))
    zero_lr = ["train.steps=1", "optim.lr=1e-12", "optim.warmup_steps=1", f"data.vocab_file={tmp_path / 'keep.json'}"]
    tuned = train_decoder(None, recipe(tmp_path, "tuned", zero_lr + [f"train.init_weights={first}"]))
    old, new = weights(first)["model.embed_tokens.weight"], weights(tuned)["model.embed_tokens.weight"]
    assert new.shape == (keep.size, old.shape[1]) == (VOCAB.size + 1, old.shape[1])
    assert torch.allclose(new[:VOCAB.size], old, atol=1e-6)
    assert torch.allclose(new[keep.keep], old.mean(0), atol=1e-5)


def test_init_weights_deepens_a_decoder_without_changing_its_outputs(tmp_path):
    """Loading 2 layers into 4: copies of each layer with zero output projections, same logits."""
    from anygen.model.decoder import DecoderConfig, build_decoder, save_decoder
    from anygen.training.decoder_trainer import _load_weights

    small = dict(hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64)
    shallow = build_decoder(DecoderConfig(n_layers=2, **small), VOCAB, seed=0).eval()
    save_decoder(shallow, tmp_path / "shallow")
    deep = build_decoder(DecoderConfig(n_layers=4, **small), VOCAB, seed=1).eval()
    _load_weights(deep, tmp_path / "shallow", grow=True)
    ids = torch.randint(0, VOCAB.size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(deep(input_ids=ids).logits, shallow(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    layers = deep.model.layers
    assert torch.equal(layers[1].self_attn.q_proj.weight, layers[0].self_attn.q_proj.weight)
    assert not layers[1].mlp.down_proj.weight.any() and layers[0].mlp.down_proj.weight.any()
    with pytest.raises(AnygenError, match="multiple"):
        _load_weights(build_decoder(DecoderConfig(n_layers=3, **small), VOCAB), tmp_path / "shallow", grow=True)


class MinuteBatches(SyntheticBatches):
    """Synthetic batches that each take one (fake) minute of the run's clock."""

    def __init__(self, clock, *args, **kw):
        super().__init__(*args, **kw)
        self.clock = clock

    def __iter__(self):
        for batch in super().__iter__():
            self.clock.now += 60.0
            yield batch


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_stops_with_a_loadable_model_and_a_checkpoint_then_resumes(tmp_path):
    from anygen.model.decoder import load_decoder

    clock = FakeClock()
    run = tmp_path / "budget"
    cfg = load_train_config(None, recipe(tmp_path, "budget", ["train.steps=10", "train.save_every=0",
                                                                 "train.time_budget_minutes=2.5"]))
    out = run_training(cfg, train_data=MinuteBatches(clock, VOCAB, 32, 2, doc_len=(4, 20)), clock=clock)
    # minutes 0, 1, 2 start a step; at 3 the 2.5-minute budget is spent
    assert out == run / "model" and [p.name for p in checkpoints(run)] == ["step_00000003"]
    assert json.loads((out / "anygen_decoder.json").read_text())["step"] == 3
    load_decoder(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "time_budget" and summary["step"] == 3 and summary["steps"] == 10
    state = json.loads((checkpoints(run)[-1] / "trainer_state.json").read_text())
    assert state["elapsed_s"] == pytest.approx(180.0)
    # the cosine schedule followed the budget: lr at the last step is past the step-only value
    lrs = [m["lr"] for m in metrics(run) if m["split"] == "train"]
    assert lrs[-1] < lr_at(2, cfg.optim, 10)
    reset_accelerate_state()
    cfg = load_train_config(None, recipe(tmp_path, "budget", ["train.steps=10", "train.save_every=0"]))
    out = run_training(cfg, resume=True, train_data=MinuteBatches(clock, VOCAB, 32, 2, doc_len=(4, 20)), clock=clock)
    assert json.loads((out / "anygen_decoder.json").read_text())["step"] == 10
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "steps" and summary["step"] == 10
    assert [m["step"] for m in metrics(run) if m["split"] == "train"] == list(range(1, 11))


def test_a_spent_budget_on_resume_stops_at_once(tmp_path):
    clock = FakeClock()
    extra = ["train.steps=10", "train.save_every=0", "train.time_budget_minutes=1"]
    run_training(load_train_config(None, recipe(tmp_path, "spent", extra)),
                 train_data=MinuteBatches(clock, VOCAB, 32, 2, doc_len=(4, 20)), clock=clock)
    reset_accelerate_state()
    out = run_training(load_train_config(None, recipe(tmp_path, "spent", extra)), resume=True,
                       train_data=MinuteBatches(clock, VOCAB, 32, 2, doc_len=(4, 20)), clock=clock)
    assert json.loads((out / "anygen_decoder.json").read_text())["step"] == 1
    assert [p.name for p in checkpoints(tmp_path / "spent")] == ["step_00000001"]


def test_time_budget_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.time_budget_minutes"):
        load_train_config(None, ["train.time_budget_minutes=-1", "data.kind=synthetic"])


def test_wall_budget_eta_is_capped_by_the_budget():
    from anygen.training.common import WallBudget

    clock = FakeClock()
    budget = WallBudget(2.0, elapsed_before=30.0, clock=clock)
    clock.now += 30.0
    assert budget.elapsed() == 60.0 and not budget.spent()
    assert budget.eta(100, 1.0) == 60.0 and budget.eta(10, 1.0) == 10.0
    assert WallBudget(0, clock=clock).eta(10, 2.0) == 20.0 and WallBudget(0, clock=clock).eta(10, None) is None
    clock.now += 60.0
    assert budget.spent() and budget.progress(1, 100) == 1.0


class FixedBatches:
    """The given batches in turn, endlessly; resumable (the trainer's data contract)."""

    def __init__(self, batches):
        self.batches, self.index = batches, 0

    def __iter__(self):
        while True:
            yield self.batches[self.index % len(self.batches)]
            self.index += 1

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def full_rows(n_batches, rows, seed=0):
    """Batches of `rows` rows, each one 32-token document: every row has 31 targets."""
    src = SyntheticBatches(VOCAB, 32, rows, seed=seed, doc_len=(32, 32))
    return [src.batch(k) for k in range(n_batches)]


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = full_rows(3, 4)
    halves = [{k: v[i:i + 2] for k, v in b.items()} for b in big for i in (0, 2)]
    one = run_training(load_train_config(None, recipe(tmp_path, "big", ["train.steps=3", "data.batch_size=4"])),
                       train_data=FixedBatches(big))
    reset_accelerate_state()
    two = run_training(load_train_config(None, recipe(tmp_path, "acc", ["train.steps=3", "train.grad_accum=2"])),
                       train_data=FixedBatches(halves))
    a, b = weights(one), weights(two)
    for k in a:  # the same up to summation order (AdamW's g/√v magnifies it where g ≈ 0)
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    la = [m["loss"] for m in metrics(tmp_path / "big") if m["split"] == "train"]
    lb = [m["loss"] for m in metrics(tmp_path / "acc") if m["split"] == "train"]
    assert la == pytest.approx(lb, rel=1e-6) and len(la) == 3


def test_gradient_checkpointing_recomputes_the_same_training(tmp_path):
    from anygen.model.decoder import build_decoder

    data = full_rows(3, 2)
    plain = run_training(load_train_config(None, recipe(tmp_path, "plain", ["train.steps=3"])),
                         train_data=FixedBatches(data))
    reset_accelerate_state()
    cfg = load_train_config(None, recipe(tmp_path, "gc", ["train.steps=3", "train.gradient_checkpointing=true"]))
    model = build_decoder(cfg.model, VOCAB, seed=cfg.train.seed)
    ckpt = run_training(cfg, train_data=FixedBatches(data), model=model)
    assert model.is_activation_checkpointing  # it was on, and the layers were recomputed in the backward pass
    a, b = weights(plain), weights(ckpt)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_bf16_mixed_precision_on_cpu_tracks_fp32_with_fp32_weights(tmp_path):
    data = full_rows(1, 2)  # one batch again and again: the loss must fall
    fp32 = run_training(load_train_config(None, recipe(tmp_path, "fp32", ["train.steps=5",
                                                                           "train.mixed_precision='no'"])),
                        train_data=FixedBatches(data))
    reset_accelerate_state()
    bf16 = run_training(load_train_config(None, recipe(tmp_path, "bf16", ["train.steps=5",
                                                                           "train.mixed_precision=bf16"])),
                        train_data=FixedBatches(data))
    b = weights(bf16)
    assert all(t.dtype == torch.float32 for t in weights(fp32).values())
    assert all(t.dtype == torch.float32 for t in b.values())  # master weights stay fp32
    la = [m["loss"] for m in metrics(tmp_path / "fp32") if m["split"] == "train"]
    lb = [m["loss"] for m in metrics(tmp_path / "bf16") if m["split"] == "train"]
    assert la != lb  # the forward really ran in bf16
    assert la == pytest.approx(lb, abs=0.05)  # and tracks the fp32 run
    assert lb[-1] < lb[0]
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["train"]["mixed_precision"] == "bf16"


def test_a_deepspeed_accelerate_config_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a DeepSpeed config
    with pytest.raises(AnygenError, match="DeepSpeed is not supported .* training/accelerate_fsdp.yaml"):
        train_decoder(None, recipe(tmp_path, "ds", ["train.steps=1"]))
    assert not (tmp_path / "ds").exists()


def test_an_fsdp_config_on_cpu_processes_is_sharded_by_the_trainer(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from anygen.training.decoder_trainer import cpu_fsdp_plugin

    gloo = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    assert cpu_fsdp_plugin(gloo) is None  # no FSDP asked for: DDP
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "Qwen3DecoderLayer")
    plugin = cpu_fsdp_plugin(gloo)
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["Qwen3DecoderLayer"]
    assert cpu_fsdp_plugin(SimpleNamespace(distributed_type=DistributedType.FSDP, mixed_precision="no")) is None
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(AnygenError, match="FSDP on CPU needs fsdp_version: 2"):
        cpu_fsdp_plugin(gloo)


def _compile_reason():
    from anygen.training.decoder_trainer import compile_unavailable

    return compile_unavailable("cpu")


@pytest.mark.skipif(_compile_reason() is not None, reason=f"torch.compile cannot run here: {_compile_reason()}")
def test_compiled_training_tracks_eager(tmp_path):
    from anygen.model.decoder import build_decoder

    data = full_rows(3, 2)
    eager = run_training(load_train_config(None, recipe(tmp_path, "eager", ["train.steps=3"])),
                         train_data=FixedBatches(data))
    reset_accelerate_state()
    cfg = load_train_config(None, recipe(tmp_path, "compiled", ["train.steps=3", "train.compile=true"]))
    model = build_decoder(cfg.model, VOCAB, seed=cfg.train.seed)
    compiled = run_training(cfg, train_data=FixedBatches(data), model=model)
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)  # the layers ran compiled
    la = [m["loss"] for m in metrics(tmp_path / "eager") if m["split"] == "train"]
    lb = [m["loss"] for m in metrics(tmp_path / "compiled") if m["split"] == "train"]
    assert lb == pytest.approx(la, abs=1e-5) and len(lb) == 3
    a, b = weights(eager), weights(compiled)
    assert a.keys() == b.keys()  # compiling in place leaves the saved names alone
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_compile_without_a_cpu_compiler_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    import torch._inductor.config as inductor

    from anygen.training.decoder_trainer import compile_unavailable

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(inductor.cpp, "cxx", (None, "no-such-g++"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "needs a C++ compiler" in compile_unavailable("cpu")
    with pytest.raises(AnygenError, match="^train.compile: torch.compile on CPU needs a C.. compiler.*"
                                          "set train.compile=false$"):
        train_decoder(None, recipe(tmp_path, "nocc", ["train.steps=1", "train.compile=true"]))
    assert not checkpoints(tmp_path / "nocc")


def test_fused_adamw_on_cpu_matches_foreach(tmp_path, capsys):
    from anygen.training.decoder_trainer import adamw_kernel

    assert adamw_kernel(None, "cuda") == "fused" and adamw_kernel(None, "cpu") == "foreach"
    assert adamw_kernel(True, "cpu") == "fused" and adamw_kernel(False, "cuda") == "foreach"
    with pytest.raises(AnygenError, match="no fused AdamW for device 'mps'"):
        adamw_kernel(True, "mps")
    data = full_rows(3, 2)
    runs = {}
    for name in ("false", "true"):
        reset_accelerate_state()
        runs[name] = weights(run_training(load_train_config(None, recipe(tmp_path, name, [
            "train.steps=3", f"train.fused_adamw={name}"])), train_data=FixedBatches(data)))
    out = capsys.readouterr().out
    assert "AdamW foreach" in out and "AdamW fused" in out  # each run said which kernel it used
    for k in runs["false"]:  # one kernel for all parameters: the same update up to rounding
        torch.testing.assert_close(runs["true"][k], runs["false"][k], rtol=1e-5, atol=1e-6)
