"""Logits processors, settings validation, presets, and likelihood scoring."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from anygen.config import ConfigError, load_config
from anygen.sampling import GenerationConfig, SamplingSettings, guide, rank_images_by_caption, score_sequences
from anygen.sampling.diffusion import DiffusionSettings
from anygen.sampling.processors import RowUniforms, apply_repetition_penalty, draw, gate_keep, row_seed, warp
from anygen.sampling.settings import (GREEDY_BELOW_TEMPERATURE, MAX_GUIDANCE_SCALE, MAX_REPETITION_PENALTY,
                                      MAX_TEMPERATURE, MIN_TOP_P)



PRESETS = Path(__file__).resolve().parents[2] / "sampling"
NEG = float("-inf")


def test_top_k_top_p_min_p_keep_the_right_ids():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(warp(logits, SamplingSettings(top_k=2))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(warp(logits, SamplingSettings(top_p=0.7))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(warp(logits, SamplingSettings(top_p=0.1))).tolist() == [[True, False, False, False]]
    assert torch.isfinite(warp(logits, SamplingSettings(min_p=0.2))).tolist() == [[True, True, True, False]]
    hot = warp(logits, SamplingSettings(temperature=2.0))
    torch.testing.assert_close(hot.log_softmax(-1), (logits / 2).log_softmax(-1))  # up to a per-row constant
    assert warp(logits, SamplingSettings(greedy=True)) is logits
    assert draw(logits, SamplingSettings(temperature=0.0), None).tolist() == [0]


def test_masked_ids_are_never_drawn():
    logits = torch.zeros(4, 6)
    logits[:, :3] = NEG
    g = torch.Generator().manual_seed(0)
    for s in (SamplingSettings(), SamplingSettings(top_k=5), SamplingSettings(top_p=0.5), SamplingSettings(min_p=0.5)):
        for _ in range(10):
            assert (draw(warp(logits, s), s, g) >= 3).all()


def test_repetition_penalty_follows_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_settings_validation_names_the_field():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingSettings(top_p=0.0)
    with pytest.raises(ConfigError, match="guidance_interval"):
        GenerationConfig(guidance_interval=(0.8, 0.2))
    with pytest.raises(ConfigError, match="backend"):
        GenerationConfig(backend="cuda-graphs")
    assert GenerationConfig(guidance_scales=3).guidance_scales == (3.0,)


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset):
    cfg = load_config(GenerationConfig, preset, ["seed=3"])
    assert isinstance(cfg.image, SamplingSettings) and cfg.seed == 3


def test_presets_exist():
    assert {"default.yaml", "shapes.yaml", "edit.yaml"} <= {p.name for p in PRESETS.glob("*.yaml")}
    assert not list(PRESETS.glob("*.py")) and not (PRESETS / "__init__.py").exists()


def test_yaml_scalar_scale_and_overrides():
    cfg = load_config(GenerationConfig, None, ["guidance_scales=2.5", "image.top_k=4", "image_grid=[8, 8]"])
    assert cfg.guidance_scales == (2.5,) and cfg.image.top_k == 4 and cfg.image_grid == (8, 8)
    cfg = load_config(GenerationConfig, None, ["guidance_scales=[3, 1.5]"])
    assert cfg.guidance_scales == (3.0, 1.5)


def test_score_sequences_matches_a_plain_forward():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64)
    model = Qwen3ForCausalLM(cfg).eval()
    seqs = [[1, 5, 6, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14]]
    masks = [[False, False, False, True, True, True], [False, True, True], [False, False, True, True]]
    got = score_sequences(model, seqs, masks, batch_size=2)
    for seq, mask, value in zip(seqs, masks, got):
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
        want = sum(float(lp[t - 1, seq[t]]) for t in range(1, len(seq)) if mask[t])
        assert abs(float(value) - want) < 1e-4
    order, scores = rank_images_by_caption(model, [[20, 21], [22, 23], [24, 25]], [5, 6], before=[1], after=[2])
    assert sorted(order) == [0, 1, 2] and scores[order[0]] == scores.max()
    with pytest.raises(ValueError, match="position 0"):
        score_sequences(model, [[1, 2]], [[True, True]])


def test_categorical_sampler_matches_the_distribution():
    from anygen.sampling.processors import sample_categorical

    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(probs.expand(20000, -1), g)
    freq = torch.bincount(draws, minlength=6).float() / 20000
    assert freq[[0, 2, 5]].sum() == 0
    assert (freq - probs).abs().max() < 0.02


def test_gate_keep_decides_keep_or_change_first():
    # column 0 is <keep>: 0.40 against codes 0.35 + 0.25 -> greedy would keep, the gate changes
    probs = torch.tensor([[0.40, 0.35, 0.25], [0.60, 0.30, 0.10]])
    logits = probs.log()
    gated = gate_keep(logits, col=0, threshold=0.5)
    assert gated[0, 0] == float("-inf") and torch.equal(gated[0, 1:], logits[0, 1:])
    assert torch.equal(gated[1], logits[1])  # a likely keep stays
    assert logits.argmax(-1).tolist() == [0, 0] and gated.argmax(-1).tolist() == [1, 0]
    assert torch.equal(gate_keep(logits, col=0, threshold=0.0), logits)


# ---- limits: values that would turn sampling into NaN or noise are refused, the rest stay finite ------
@pytest.mark.parametrize("make, field", [
    (lambda: SamplingSettings(temperature=float("inf")), "temperature"),
    (lambda: SamplingSettings(temperature=1e30), "temperature"),
    (lambda: SamplingSettings(temperature="hot"), "temperature"),
    (lambda: SamplingSettings(top_p=1e-30), "top_p"),
    (lambda: SamplingSettings(top_k=2.5), "top_k"),
    (lambda: SamplingSettings(repetition_penalty=float("inf")), "repetition_penalty"),
    (lambda: SamplingSettings(repetition_penalty=1e-300), "repetition_penalty"),
    (lambda: SamplingSettings(min_p=float("nan")), "min_p"),
    (lambda: GenerationConfig(guidance_scales=float("inf")), "guidance_scales"),
    (lambda: GenerationConfig(guidance_scales=1e30), "guidance_scales"),
    (lambda: GenerationConfig(guidance_scales=(3.0, float("inf"))), "guidance_scales"),
    (lambda: GenerationConfig(seed=2 ** 70), "seed"),
    (lambda: GenerationConfig(seed=1.5), "seed"),
    (lambda: GenerationConfig(seed="abc"), "seed"),
    (lambda: GenerationConfig(max_new_tokens=2.5), "max_new_tokens"),
    (lambda: GenerationConfig(text="hot"), "text"),
    (lambda: GenerationConfig(image={"temperature": float("inf")}), "temperature"),
    (lambda: DiffusionSettings(guidance_scale=float("inf")), "guidance_scale"),
    (lambda: DiffusionSettings(guidance_scale=1e30), "guidance_scale"),
    (lambda: DiffusionSettings(shift=float("inf")), "shift"),
    (lambda: DiffusionSettings(num_inference_steps=2.5), "num_inference_steps"),
])
def test_non_finite_and_out_of_range_values_are_refused(make, field):
    with pytest.raises(ConfigError, match=rf"^{field}(\[\d\])?: "):
        make()


def test_limits_are_inclusive_and_recipes_are_checked_too():
    SamplingSettings(temperature=MAX_TEMPERATURE, top_p=MIN_TOP_P, repetition_penalty=MAX_REPETITION_PENALTY)
    GenerationConfig(guidance_scales=(MAX_GUIDANCE_SCALE, 0.0), seed=2 ** 64 - 1)
    GenerationConfig(seed=-1)
    with pytest.raises(ConfigError, match="^image.temperature: expected a finite number"):
        load_config(GenerationConfig, None, ["image.temperature=.inf"])
    with pytest.raises(ConfigError, match="^guidance_scales: scales must be in"):
        load_config(GenerationConfig, None, ["guidance_scales=1e30"])


@pytest.mark.parametrize("temperature", [1e-40, 1e-38, 1e-20, GREEDY_BELOW_TEMPERATURE / 2])
def test_tiny_temperatures_take_the_argmax_not_the_last_column(temperature):
    s = SamplingSettings(temperature=temperature)
    assert s.is_greedy
    logits = torch.tensor([[3.0, 5.0, 4.0, NEG], [9.0, 1.0, NEG, NEG]])
    g = torch.Generator().manual_seed(0)
    assert draw(warp(logits, s), s, g).tolist() == [1, 0]


def test_extreme_valid_settings_never_produce_nan():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 1e33  # float32 logits near overflow: logits / T would be inf - inf
    logits[:, 40:] = NEG  # illegal ids
    g = torch.Generator().manual_seed(0)
    for s in (SamplingSettings(temperature=GREEDY_BELOW_TEMPERATURE), SamplingSettings(temperature=MAX_TEMPERATURE),
              SamplingSettings(temperature=1e-5, top_p=MIN_TOP_P, top_k=3, min_p=0.5),
              SamplingSettings(temperature=0.01, top_p=0.9)):
        warped = warp(logits, s)
        assert not warped.isnan().any() and torch.isfinite(warped.amax(-1)).all()
        ids = draw(warped, s, g)
        assert (ids < 40).all()
    guided = guide(torch.randn(2, 50) * 30, torch.tensor([[0, 1]]), (MAX_GUIDANCE_SCALE,))
    assert torch.isfinite(guided).all()


def test_row_uniforms_give_each_row_its_own_stream():
    table = RowUniforms(seed=7, rows=[0, 1, 2], n_draws=4)
    first = table.take()  # every row's first number
    assert torch.equal(first[0], torch.rand(1, generator=torch.Generator().manual_seed(7))[0])  # row 0: the seed
    second_of_row_2 = table.take(torch.tensor([2]))
    alone = RowUniforms(seed=7, rows=[2], n_draws=4)  # row 2 in a batch of its own
    assert torch.equal(alone.take(), first[2:]) and torch.equal(alone.take(), second_of_row_2)
    assert len(set(first.tolist())) == 3
    assert row_seed(7, 0) == 7 and row_seed(7, 1) != row_seed(8, 0) and row_seed(-1, 0) == 2 ** 64 - 1
