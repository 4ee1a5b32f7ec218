"""The interleaved sampler: grammar, budget, batching, guidance, editing, seeds."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from anygen.codecs.layout import AudioSpanState
from anygen.errors import AnygenError
from anygen.sampling import GenerationConfig, GenerationStats, Prompt, SamplingSettings, generate, guide
from anygen.vocab import Vocab


def make_vocab(layout="flat", image_keep=False):
    return Vocab(n_text=24, image_codebook_size=16, image_grids=((2, 2), (2, 3)), audio_codebook_size=8,
                 audio_levels=2, audio_layout=layout, image_keep=image_keep)


def tiny_model(vocab, seed=0, image_position_stride=0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab.size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    if image_position_stride:
        cfg.image_position_stride = image_position_stride
    return Qwen3ForCausalLM(cfg).eval()


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM whose logits favour chosen ids hugely (to push against the grammar)."""

    def __init__(self, vocab, favour, noise=0.0, seed=0):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=512, model_type="scripted")
        self.bias = torch.zeros(vocab.size)
        self.bias[list(favour)] = 100.0
        self.noise, self.gen = noise, torch.Generator().manual_seed(seed)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        B, T = input_ids.shape
        logits = self.bias.expand(B, T, -1).clone()
        if self.noise:
            logits += self.noise * torch.randn(B, T, logits.shape[-1], generator=self.gen)
        return SimpleNamespace(logits=logits)


def check_grammar(vocab, ids, grids=None):
    """An independent reading of the sequence grammar; returns the kinds of spans seen."""
    kinds, i, n = [], 0, len(ids)
    grid_ids = {vocab.grid_id(g): g for g in vocab.image_grids}
    while i < n:
        t = ids[i]
        if t == vocab.eos:
            assert i == n - 1, "tokens after <eos>"
            return kinds
        if t == vocab.boi:
            kinds.append("image")
            assert ids[i + 1] in grid_ids, f"no grid token after <boi>: {ids[i + 1]}"
            h, w = grid_ids[ids[i + 1]]
            if grids is not None:
                assert (h, w) in grids
            codes = ids[i + 2: i + 2 + h * w]
            assert len(codes) == h * w, "image cut short"
            assert all(c in vocab.image_range for c in codes), codes
            assert ids[i + 2 + h * w] == vocab.eoi
            i += 3 + h * w
            continue
        if t == vocab.boa:
            kinds.append("audio")
            state = AudioSpanState(vocab.audio_levels, vocab.audio_layout, max_frames=10 ** 6)
            i += 1
            while True:
                t = ids[i]
                level, may_end, must_pad = state.allowed()
                if t == vocab.eoa:
                    assert vocab.audio_layout == "delay" and level is None or may_end and vocab.audio_layout == "flat"
                    i += 1
                    break
                if must_pad:
                    assert t == vocab.apad
                elif t == vocab.apad:
                    assert vocab.audio_layout == "delay" and may_end and level == 0
                else:
                    assert t in vocab.audio_range(level), (t, level)
                state.advance(ended=t == vocab.apad and level == 0 and not must_pad and state.n_frames is None)
                i += 1
            continue
        assert t < vocab.n_text, f"special/code id {t} in text"
        i += 1
    return kinds


# ---- grammar ---------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(2, 2), (2, 3)])
def test_forced_image_span_has_exact_length(grid):
    vocab = make_vocab()
    model = tiny_model(vocab)
    cfg = GenerationConfig(max_new_tokens=30, image_grid=grid, seed=0)
    res = generate(model, vocab, [[vocab.bos, 3, 4]], cfg, force=[vocab.boi])[0]
    n = grid[0] * grid[1]
    assert res.ids[0] == vocab.boi and res.ids[1] == vocab.grid_id(grid) and res.ids[2 + n] == vocab.eoi
    assert all(c in vocab.image_range for c in res.ids[2:2 + n])
    image = res.spans[0]
    assert (image.kind, image.start, image.end, image.grid, image.complete) == ("image", 0, 3 + n, grid, True)
    assert len(image.codes) == n
    check_grammar(vocab, res.ids)


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_only_legal_ids_inside_spans(layout):
    vocab = make_vocab(layout)
    # a model that keeps pushing illegal ids: specials and codes of every kind, with noise
    favour = [vocab.boi, vocab.boa, vocab.eoi, vocab.eoa, vocab.apad, vocab.null, vocab.pad,
              vocab.image_start, vocab.audio_start, vocab.audio_start + vocab.audio_codebook_size]
    kinds = set()
    for seed in range(6):
        lm = ScriptedLM(vocab, favour, noise=150.0, seed=seed)
        cfg = GenerationConfig(max_new_tokens=120, audio_max_frames=5, seed=seed, stop_at_eos=seed % 2 == 0)
        for res in generate(lm, vocab, [[vocab.bos], [vocab.bos, 5, 6]], cfg):
            kinds.update(check_grammar(vocab, res.ids))
            if seed % 2:
                assert vocab.eos not in res.ids and len(res.ids) == 120
    assert kinds == {"image", "audio"}


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_audio_span_follows_layout_and_frame_limit(layout):
    vocab = make_vocab(layout)
    model = tiny_model(vocab)
    for seed in range(3):
        cfg = GenerationConfig(max_new_tokens=60, audio_max_frames=3, seed=seed)
        res = generate(model, vocab, [[vocab.bos]], cfg, force=[vocab.boa])[0]
        audio = res.spans[0]
        assert audio.kind == "audio" and audio.complete and res.ids[audio.end - 1] == vocab.eoa
        check_grammar(vocab, res.ids)
        q = vocab.audio_levels
        slots = len(audio.codes)
        assert slots <= (3 * q if layout == "flat" else (3 + q - 1) * q)
        assert slots % q == 0


def test_budget_suppresses_spans_that_cannot_fit():
    vocab = make_vocab()
    lm = ScriptedLM(vocab, [vocab.boi])  # always wants an image
    cfg = GenerationConfig(image_grid=(2, 2), seed=0)  # an image span is 7 tokens
    for budget in (6, 3):
        cfg.max_new_tokens = budget
        res = generate(lm, vocab, [[vocab.bos]], cfg)[0]
        assert vocab.boi not in res.ids and len(res.ids) == budget
    cfg.max_new_tokens = 10
    res = generate(lm, vocab, [[vocab.bos]], cfg)[0]
    assert res.ids[0] == vocab.boi and res.spans[0].complete
    assert vocab.boi not in res.ids[7:]  # 3 tokens left: no second image
    # audio: <boa> + 2 levels × 1 frame + <eoa> = 4 tokens at least (flat)
    lm = ScriptedLM(vocab, [vocab.boa])
    cfg = GenerationConfig(max_new_tokens=3, audio_max_frames=4, seed=0)
    assert vocab.boa not in generate(lm, vocab, [[vocab.bos]], cfg)[0].ids
    cfg.max_new_tokens = 7  # room for one frame only: the span is cut to fit
    res = generate(lm, vocab, [[vocab.bos]], cfg)[0]
    assert res.spans[0].kind == "audio" and res.spans[0].complete and res.ids[res.spans[0].end - 1] == vocab.eoa
    check_grammar(vocab, res.ids)


def test_grid_choice_respects_budget():
    vocab = make_vocab()
    lm = ScriptedLM(vocab, [vocab.boi, vocab.grid_id((2, 3))])  # prefers the bigger grid
    res = generate(lm, vocab, [[vocab.bos]], GenerationConfig(max_new_tokens=8, seed=0))[0]
    assert res.ids[1] == vocab.grid_id((2, 2))  # 2x3 needs 9 tokens
    res = generate(lm, vocab, [[vocab.bos]], GenerationConfig(max_new_tokens=9, seed=0))[0]
    assert res.ids[1] == vocab.grid_id((2, 3))


# ---- batching --------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [0, 8], ids=["consecutive", "image_aligned"])
def test_mixed_state_batch_and_left_padding_match_rows_alone(stride):
    vocab = make_vocab()
    model = tiny_model(vocab, image_position_stride=stride)
    cfg = GenerationConfig(max_new_tokens=24, image_grid=(2, 2), text=SamplingSettings(greedy=True),
                           image=SamplingSettings(greedy=True), audio=SamplingSettings(greedy=True), stop_at_eos=False)
    image = [vocab.boi, vocab.grid_id((2, 2))] + [vocab.image_start + c for c in (1, 2, 3, 4)] + [vocab.eoi]
    prompts = [Prompt([vocab.bos, 3, 4, 5, 6, 7], force=[vocab.boi]),  # starts inside an image
               Prompt([vocab.bos, 9]),  # starts in text (shorter: left-padded)
               Prompt([vocab.bos, 11, 12, 13], force=[vocab.boa]),
               Prompt([vocab.bos, 5] + image + [6], force=[vocab.boi])]  # an image in the prompt, then another
    batch = generate(model, vocab, prompts, cfg)
    assert batch[0].ids[0] == vocab.boi and batch[1].ids[0] < vocab.n_text and batch[2].ids[0] == vocab.boa
    for p, got in zip(prompts, batch):
        alone = generate(model, vocab, [p], cfg)[0]
        assert got.ids == alone.ids
        check_grammar(vocab, got.ids)
    hf = generate(model, vocab, prompts, GenerationConfig(**{**cfg.__dict__, "backend": "hf"}))
    assert [r.ids for r in hf] == [r.ids for r in batch]


def test_seeds_reproduce_and_differ():
    vocab = make_vocab()
    model = tiny_model(vocab)

    def run(seed):
        cfg = GenerationConfig(max_new_tokens=30, seed=seed, image_grid=(2, 2))
        return [r.ids for r in generate(model, vocab, [[vocab.bos, 3], [vocab.bos]], cfg)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_callback_sees_each_segment_as_it_completes():
    vocab = make_vocab()
    model = tiny_model(vocab)
    seen = []
    stats = GenerationStats()
    cfg = GenerationConfig(max_new_tokens=20, image_grid=(2, 2), seed=3, stop_at_eos=False, allow_audio=False)
    res = generate(model, vocab, [Prompt([vocab.bos, 3], force=[5, 6, vocab.boi])], cfg,
                   callback=lambda row, span: seen.append((row, span)), stats=stats)[0]
    assert [s for _, s in seen] == res.spans
    assert res.spans[0].kind == "text" and res.spans[0].ids == (5, 6)
    assert res.spans[1].kind == "image" and res.spans[1].start == 2
    assert stats.steps == 20 and stats.rows == 1 and "image" in stats.first_span_s


def test_stop_at_image_ends_a_row_as_it_opens_an_image():
    vocab = make_vocab()
    model = tiny_model(vocab)
    cfg = GenerationConfig(max_new_tokens=20, image_grid=(2, 2), seed=3, stop_at_eos=False, allow_audio=False,
                           stop_at_image=True)
    opens, plain = generate(model, vocab, [Prompt([vocab.bos, 3], force=[5, 6, vocab.boi]),
                                           Prompt([vocab.bos, 3], force=[5, 6])],
                            cfg)
    assert opens.ids == [5, 6, vocab.boi] and opens.finish_reason == "image"
    assert [s.kind for s in opens.spans] == ["text"] and opens.spans[0].ids == (5, 6)
    assert vocab.boi not in plain.ids[:-1] and plain.finish_reason in ("image", "length")
    [image] = generate(model, vocab, [Prompt([vocab.bos, 3], force=[vocab.boi])], replace(cfg, stop_at_image=False))
    assert image.images()  # off: the image is drawn


# ---- guidance ----------------------------------------------------------------------------------
def test_guide_formulas():
    torch.manual_seed(0)
    logits = torch.randn(3, 11) * 3
    lp = logits.log_softmax(-1)
    # plain CFG: rows [cond, null]
    got = guide(logits, torch.tensor([[0, 1]]), (2.5,))
    want = lp[1] + 2.5 * (lp[0] - lp[1])
    torch.testing.assert_close(got[0].log_softmax(-1), want.log_softmax(-1))
    # InstructPix2Pix: rows [full, image-only, null], scales (text, image)
    s_t, s_i = 3.0, 1.5
    got = guide(logits, torch.tensor([[0, 1, 2]]), (s_t, s_i))
    want = lp[2] + s_i * (lp[1] - lp[2]) + s_t * (lp[0] - lp[1])
    torch.testing.assert_close(got[0].log_softmax(-1), want.log_softmax(-1))
    # scales of 1 are plain conditioning, bit for bit
    assert torch.equal(guide(logits, torch.tensor([[0, 1, 2]]), (1.0, 1.0))[0], logits[0])
    assert torch.equal(guide(logits, torch.tensor([[0, 1]]), (1.0,))[0], logits[0])


def test_guidance_scale_one_equals_unguided():
    vocab = make_vocab()
    model = tiny_model(vocab)
    prompt = Prompt([vocab.bos, 3, 4, 5], force=[vocab.boi])
    for seed in (0, 1):
        cfg = GenerationConfig(max_new_tokens=16, image_grid=(2, 3), seed=seed,
                               image=SamplingSettings(temperature=1.3, top_k=8, top_p=0.95))
        plain = generate(model, vocab, [prompt], cfg)[0]
        cfg.guidance_scales = (1.0,)
        guided = generate(model, vocab, [prompt], cfg, uncond_prompts=[[vocab.bos, vocab.null]])[0]
        assert guided.ids == plain.ids
        # guidance rows present in the batch but never applied (empty interval): same draws
        cfg.guidance_scales, cfg.guidance_interval = (3.0,), (1.0, 1.0)
        stats = GenerationStats()
        idle = generate(model, vocab, [prompt], cfg, uncond_prompts=[[vocab.bos, vocab.null, 9, 9, 9]], stats=stats)[0]
        assert stats.rows == 2 and idle.ids == plain.ids
        cfg.guidance_interval = (0.0, 1.0)
    cfg.guidance_scales = (4.0,)
    strong = [generate(model, vocab, [prompt], cfg, uncond_prompts=[[vocab.bos, vocab.null]])[0].ids
              for cfg.seed in range(4)]
    unguided = [generate(model, vocab, [prompt], cfg)[0].ids for cfg.seed in range(4)]
    assert strong != unguided
    for ids in strong:
        check_grammar(vocab, ids)


def test_guidance_interval_limits_guidance_to_part_of_the_span():
    vocab = make_vocab()
    model = tiny_model(vocab)
    prompt = Prompt([vocab.bos, 3, 4, 5], force=[vocab.boi])
    g = dict(max_new_tokens=12, image_grid=(2, 3), image=SamplingSettings(greedy=True), text=SamplingSettings(greedy=True))
    plain = generate(model, vocab, [prompt], GenerationConfig(**g))[0].ids
    late = generate(model, vocab, [prompt], GenerationConfig(**g, guidance_scales=8.0, guidance_interval=(0.5, 1.0)),
                    uncond_prompts=[[vocab.bos, vocab.null]])[0].ids
    assert late[:5] == plain[:5]  # <boi> <grid> and the first 3 of 6 codes are unguided


def test_three_row_edit_guidance_at_scale_one_is_plain_conditioning():
    vocab = make_vocab()
    model = tiny_model(vocab)
    src = [vocab.boi, vocab.grid_id((2, 2)), *[vocab.image_start + c for c in (1, 2, 3, 4)], vocab.eoi]
    full = [vocab.bos, *src, 7, 8, 9]
    image_only = [vocab.bos, *src, vocab.null]
    null = [vocab.bos, vocab.null]
    cfg = GenerationConfig(max_new_tokens=7, image_grid=(2, 2), seed=5, guidance_scales=(1.0, 1.0))
    plain = generate(model, vocab, [Prompt(full, force=[vocab.boi])], GenerationConfig(max_new_tokens=7, image_grid=(2, 2), seed=5))
    edited = generate(model, vocab, [Prompt(full, uncond=[image_only, null], force=[vocab.boi])], cfg)
    assert edited[0].ids == plain[0].ids
    cfg.guidance_scales = (5.0, 1.5)
    out = generate(model, vocab, [Prompt(full, uncond=[image_only, null], force=[vocab.boi])], cfg)[0]
    check_grammar(vocab, out.ids)
    with pytest.raises(AnygenError, match="guidance_scales"):
        generate(model, vocab, [Prompt(full, uncond=[null], force=[vocab.boi])], cfg)


def test_edit_mask_copies_codes_outside_the_mask():
    vocab = make_vocab()
    model = tiny_model(vocab)
    source = [vocab.image_start + c for c in (1, 2, 3, 4, 5, 6)]  # a 2x3 source image
    editable = [False, True, False, False, True, False]
    cfg = GenerationConfig(max_new_tokens=9, seed=0, guidance_scales=(3.0, 1.5),
                           image=SamplingSettings(temperature=2.0))  # grid comes from the source
    changed = set()
    for seed in range(5):
        cfg.seed = seed
        prompt = Prompt([vocab.bos, 7], uncond=[[vocab.bos, 8], [vocab.bos]], force=[vocab.boi],
                        source=source, editable=editable)
        res = generate(model, vocab, [prompt], cfg)[0]
        image = res.spans[0]
        assert image.grid == (2, 3) and len(image.codes) == 6
        for p, (code, src, may) in enumerate(zip(image.codes, source, editable)):
            if not may:
                assert code == src
            elif code != src:
                changed.add(p)
    assert changed  # the editable cells were actually sampled


# ---- errors ------------------------------------------------------------------------------------
def test_clear_errors():
    vocab = make_vocab()
    model = tiny_model(vocab)
    with pytest.raises(AnygenError, match="empty"):
        generate(model, vocab, [[]])
    with pytest.raises(AnygenError, match="context"):
        generate(model, vocab, [[vocab.bos] * 256])
    with pytest.raises(AnygenError, match="outside the vocab"):
        generate(model, vocab, [[vocab.size + 3]])


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_prompt_ending_inside_a_span_is_continued(layout):
    vocab = make_vocab(layout)
    model = tiny_model(vocab)
    g = vocab.grid_id((2, 2))
    head = [vocab.bos, 3, vocab.boi, g, vocab.image_start + 1, vocab.image_start + 2]
    res = generate(model, vocab, [head], GenerationConfig(max_new_tokens=10, seed=0))[0]
    image = res.spans[0]
    assert image.kind == "image" and image.start == -4 and image.end == 3 and image.complete
    assert image.ids[:4] == tuple(head[2:]) and res.ids[2] == vocab.eoi
    assert all(c in vocab.image_range for c in res.ids[:2])
    check_grammar(vocab, head[1:] + res.ids)
    audio_head = [vocab.bos, vocab.boa, vocab.audio_start + 1]  # level 0 of the first frame/step
    res = generate(model, vocab, [audio_head], GenerationConfig(max_new_tokens=30, audio_max_frames=3, seed=0))[0]
    assert res.spans[0].kind == "audio" and res.spans[0].start == -2
    check_grammar(vocab, audio_head[1:] + res.ids)


# ---- <keep>: image codes copied from the previous image -------------------------------------------
def test_drawn_keeps_are_recorded_as_the_previous_images_codes():
    vocab = make_vocab(image_keep=True)
    source = [vocab.image_start + c for c in (5, 6, 7, 8)]
    prompt = [vocab.bos, 3, vocab.boi, vocab.grid_id((2, 2))] + source + [vocab.eoi]
    model = ScriptedLM(vocab, favour=[vocab.keep])
    cfg = GenerationConfig(max_new_tokens=7, seed=0, image_grid=(2, 2))
    res = generate(model, vocab, [Prompt(prompt, force=[vocab.boi])], cfg)[0]
    assert res.spans[0].codes == tuple(source) and vocab.keep not in res.ids
    # without a previous image <keep> is illegal: the same model draws plain codes
    res = generate(model, vocab, [Prompt([vocab.bos, 3], force=[vocab.boi])], cfg)[0]
    assert len(res.spans[0].codes) == 4 and all(c in vocab.image_range for c in res.spans[0].codes)


def test_edit_mask_with_keep_feeds_keep_and_copies_the_source():
    vocab = make_vocab(image_keep=True)
    model = tiny_model(vocab)
    source = [vocab.image_start + c for c in (1, 2, 3, 4, 5, 6)]
    prompt = [vocab.bos, 7, vocab.boi, vocab.grid_id((2, 3))] + source + [vocab.eoi]
    editable = [False, True, False, False, True, False]
    fed = []
    original_forward = model.forward

    def recording_forward(input_ids=None, **kw):
        fed.append(input_ids[0, -1].item())
        return original_forward(input_ids=input_ids, **kw)

    model.forward = recording_forward
    cfg = GenerationConfig(max_new_tokens=9, seed=0, image=SamplingSettings(temperature=2.0), backend="hf")
    res = generate(model, vocab, [Prompt(prompt, force=[vocab.boi], source=source, editable=editable)], cfg)[0]
    codes = res.spans[0].codes
    assert [c for c, may in zip(codes, editable) if not may] == [s for s, may in zip(source, editable) if not may]
    assert vocab.keep not in res.ids
    assert fed.count(vocab.keep) >= editable.count(False)  # the model saw <keep>, as in training


# ---- seeds: one generator per prompt -----------------------------------------------------------------
@pytest.mark.parametrize("guidance_scales", [1.0, 3.0], ids=["unguided", "guided"])
def test_a_prompts_sample_does_not_depend_on_its_batch(guidance_scales):
    vocab = make_vocab()
    model = tiny_model(vocab)
    cfg = GenerationConfig(max_new_tokens=7, image_grid=(2, 2), seed=7, guidance_scales=guidance_scales,
                           image=SamplingSettings(temperature=1.5), text=SamplingSettings(temperature=1.0))
    p = Prompt([vocab.bos, 3, 4], uncond=[[vocab.bos, vocab.null]], force=[vocab.boi])
    q = Prompt([vocab.bos, 9, 10, 11, 12], uncond=[[vocab.bos, vocab.null]])  # longer, text first: other states

    def ids(prompts):
        return [r.ids for r in generate(model, vocab, prompts, cfg)]

    five = ids([p] * 5)
    assert ids([p])[0] == five[0]  # the first of five is the one drawn alone
    assert ids([p] * 4)[3] == five[3]
    assert ids([p, q, p, q, p])[::2] == five[::2]  # neighbours of another kind change nothing
    assert len({tuple(x) for x in five}) > 1  # the rows are sampled, not greedy
    cfg.seed = 8
    assert ids([p] * 5) != five


def test_greedy_rows_draw_nothing_and_sampled_rows_keep_their_streams():
    """A row sampling text while its neighbours are forced (or greedy) takes one number per sampled token."""
    vocab = make_vocab()
    model = tiny_model(vocab)
    cfg = GenerationConfig(max_new_tokens=6, seed=3, allow_image=False, allow_audio=False, stop_at_eos=False,
                           text=SamplingSettings(temperature=1.0))
    long_force = Prompt([vocab.bos, 5], force=[6, 7, 8, 9])  # forced for 4 steps while row 1 samples
    sampled = Prompt([vocab.bos, 3])
    together = generate(model, vocab, [sampled, long_force], cfg)
    alone = generate(model, vocab, [sampled], cfg)
    assert together[0].ids == alone[0].ids


# ---- memory: chunks and refusal ------------------------------------------------------------------------
def test_large_batches_are_sampled_in_chunks_with_the_same_results():
    from anygen.sampling.backends import decode_bytes_per_row

    vocab = make_vocab()
    model = tiny_model(vocab)
    cfg = GenerationConfig(max_new_tokens=9, seed=11, guidance_scales=2.0, image=SamplingSettings(temperature=1.2),
                           text=SamplingSettings(temperature=1.0))
    prompts = [Prompt([vocab.bos, 3 + i % 4] + [5] * (i % 3), uncond=[[vocab.bos, vocab.null]] if i % 2 else (),
                      force=[vocab.boi] if i % 3 else ()) for i in range(7)]

    def run(**kw):
        seen, stats = [], GenerationStats()
        out = generate(model, vocab, prompts, cfg, callback=lambda row, span: seen.append((row, span)), stats=stats,
                       **kw)
        return [r.ids for r in out], seen, stats

    whole, whole_spans, whole_stats = run()
    per_row = decode_bytes_per_row(model, 6, 6 + 9)
    chunked, chunked_spans, chunked_stats = run(max_chunk_bytes=3 * per_row)
    assert whole_stats.chunks == 1 and chunked_stats.chunks >= 3
    assert chunked == whole
    assert sorted(chunked_spans, key=lambda x: x[0]) == sorted(whole_spans, key=lambda x: x[0])  # global row numbers
    assert chunked_stats.rows == whole_stats.rows == 7 + 3


def test_a_prompt_too_big_for_memory_is_refused_with_the_estimate():
    vocab = make_vocab()
    lm = ScriptedLM(vocab, [vocab.boi])
    # a config whose KV cache would take terabytes per token: refused before anything is allocated
    lm.config.num_hidden_layers, lm.config.num_attention_heads, lm.config.head_dim = 10 ** 9, 8, 128
    with pytest.raises(AnygenError, match=r"prompt 0 needs about [\d.]+ GiB of decoder memory .* free"):
        generate(lm, vocab, [[vocab.bos]], GenerationConfig(max_new_tokens=8, seed=0))


# ---- non-finite logits ------------------------------------------------------------------------------
class NaNAfter(ScriptedLM):
    """Finite logits for the first `calls` forwards, then NaN in batch row `row` (activations that overflow)."""

    def __init__(self, vocab, calls, row):
        super().__init__(vocab, [5], noise=1.0)
        self.calls, self.row, self.n = calls, row, 0

    def forward(self, input_ids, **kw):
        out = super().forward(input_ids, **kw)
        self.n += 1
        if self.n > self.calls:
            out.logits[self.row] = float("nan")
        return out


@pytest.mark.parametrize("greedy", [True, False])
def test_nan_logits_are_an_error_naming_the_step(greedy):
    vocab = make_vocab()
    cfg = GenerationConfig(max_new_tokens=10, seed=0, allow_image=False, allow_audio=False,
                           text=SamplingSettings(greedy=greedy))
    with pytest.raises(AnygenError, match="not finite .* at step 3, prompt 1"):
        generate(NaNAfter(vocab, calls=2, row=1), vocab, [[vocab.bos, 3], [vocab.bos]], cfg)


def test_source_and_grid_mistakes_are_clear_errors():
    vocab = make_vocab()
    model = tiny_model(vocab)
    source = [vocab.image_start + c for c in (1, 2, 3, 4)]
    cfg = GenerationConfig(max_new_tokens=7, seed=0)
    with pytest.raises(AnygenError, match="editable has 3 entries for a source of 4 codes"):
        generate(model, vocab, [Prompt([vocab.bos], force=[vocab.boi], source=source, editable=[True] * 3)], cfg)
    with pytest.raises(AnygenError, match="source has 5 codes"):
        generate(model, vocab, [Prompt([vocab.bos], force=[vocab.boi], source=source + source[:1])], cfg)
    with pytest.raises(AnygenError, match="image_grid: \\[9, 9\\] is not a grid"):
        generate(model, vocab, [[vocab.bos]], GenerationConfig(max_new_tokens=7, image_grid=(9, 9)))
