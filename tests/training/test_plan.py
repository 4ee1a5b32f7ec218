"""`anygen plan`: parameter counts against built models, the memory and speed arithmetic, CLI output and errors."""

import json
from pathlib import Path

import pytest
import torch

from anygen.model.decoder import build_decoder, count_parameters
from anygen.training.common import flops_per_token as measured_flops
from anygen.training.decoder_trainer import load_train_config
from anygen.training.plan import GIB, flops_per_token, make_plan
from anygen.vocab import Vocab
from test_reliability import cli_error, cli_ok

SIZES = Path(__file__).resolve().parents[2] / "training" / "sizes"
TINY = ["model.n_layers=2", "model.hidden=32", "model.n_heads=4", "model.n_kv_heads=2", "model.head_dim=8",
        "model.intermediate=64", "model.max_position=64", "data.kind=synthetic", "data.seq_len=32"]


@pytest.mark.parametrize("size", ["25m", "7b"])  # tied and untied embeddings
def test_parameter_count_matches_the_model_the_recipe_builds(size):
    cfg = load_train_config(SIZES / f"{size}.yaml")
    plan = make_plan(cfg, gpus=8, gpu_memory_gib=80, vocab_size=32768)
    with torch.device("meta"):  # the shapes without the memory
        model = build_decoder(cfg.model, 32768)
    assert plan.params == count_parameters(model)
    assert plan.params_layer == sum(p.numel() for p in model.model.layers[0].parameters())
    assert plan.params_embedding == sum(p.numel() for p in {id(m.weight): m.weight for m in
                                                              (model.get_input_embeddings(),
                                                               model.get_output_embeddings())}.values())


def test_sizes_are_what_their_names_say():
    got = {s: make_plan(load_train_config(SIZES / f"{s}.yaml"), 8, 80, vocab_size=32768).params
           for s in ("25m", "150m", "1b", "7b")}
    assert 20e6 < got["25m"] < 30e6 and 120e6 < got["150m"] < 180e6
    assert 0.8e9 < got["1b"] < 1.2e9 and 6.5e9 < got["7b"] < 7.5e9


def test_flops_per_token_match_the_trainers_count_on_a_built_model():
    for tie in ("true", "false"):
        cfg = load_train_config(None, TINY + [f"model.tie_embeddings={tie}"])
        model = build_decoder(cfg.model, 300)
        assert flops_per_token(cfg.model, 300, 32) == measured_flops(model, 32)[0]


def test_memory_per_engine_follows_the_stated_formulas(tmp_path):
    cfg = load_train_config(None, TINY + ["data.batch_size=4"])
    one, eight = make_plan(cfg, 1, 80, vocab_size=300), make_plan(cfg, 8, 80, vocab_size=300)
    n = one.params
    assert one.memory["DDP"]["total"] == 16 * n + one.memory["DDP"]["activations"]
    assert eight.memory["ZeRO-2"]["weights"] == 4 * n and eight.memory["ZeRO-2"]["adam"] == 8 * n / 8
    assert eight.memory["FSDP (ZeRO-3)"]["weights"] == 4 * n / 8
    assert eight.memory["DDP"]["total"] > eight.memory["ZeRO-2"]["total"]
    assert eight.tokens_per_step == 4 * 32 * 8
    assert eight.tokens_per_s == pytest.approx(8 * 0.4 * 989e12 / eight.flops_per_token)
    ckpt = make_plan(load_train_config(None, TINY + ["data.batch_size=4", "train.gradient_checkpointing=true"]), 1,
                     80, vocab_size=300)
    assert ckpt.memory["DDP"]["activations"] < one.memory["DDP"]["activations"]
    # the recipe's own vocab when its data is there
    vocab = Vocab(n_text=50, image_codebook_size=32)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    mine = make_plan(load_train_config(None, TINY + [f"data.vocab_file={tmp_path / 'vocab.json'}"]), 1, 80)
    assert mine.vocab_size == vocab.size and mine.vocab_source == "the recipe's data"


def test_plan_cli_prints_the_table_and_refuses_bad_arguments(capsys):
    out = cli_ok(["plan", SIZES / "7b.yaml", "--gpus", "8", "--gpu-memory", "80", "--vocab-size", "32768"], capsys)
    assert "parameters: 7.25B" in out and "524,288 tokens per step" in out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith(("  DDP ", "  ZeRO-2 ",
                                                                                               "  FSDP "))}
    assert rows == {"DDP": "no", "ZeRO-2": "yes", "FSDP": "yes"}  # 7B does not fit one 80 GiB GPU with DDP
    assert "at 40% MFU of 989 TFLOP/s per GPU" in out and "16·N/G" in out
    out = cli_ok(["plan", SIZES / "25m.yaml", "model.n_layers=2", "--gpus", "1", "--gpu-memory", "8",
                  "--peak-tflops", "100", "--mfu", "0.5"], capsys)
    assert "8 layers" not in out and "2 layers" in out and "at 50% MFU of 100 TFLOP/s" in out
    assert "assumed" in out  # no shards here: the vocab is the stated default
    assert "--gpus must be >= 1" in cli_error(["plan", SIZES / "25m.yaml", "--gpus", "0", "--gpu-memory", "80"], capsys)
    assert "--mfu" in cli_error(["plan", SIZES / "25m.yaml", "--gpus", "1", "--gpu-memory", "80", "--mfu", "2"], capsys)
    assert "model.n_layerz" in cli_error(["plan", SIZES / "25m.yaml", "model.n_layerz=2", "--gpus", "1",
                                          "--gpu-memory", "80"], capsys)
