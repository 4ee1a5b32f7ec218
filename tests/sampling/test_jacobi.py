"""Speculative Jacobi decoding of image spans: greedy ids equal one code per forward, samples follow
the same distribution, fewer forwards, the cache stays consistent, options are checked."""

from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare
from transformers import Qwen3Config, Qwen3ForCausalLM

from anygen.config import ConfigError
from anygen.sampling import GenerationConfig, GenerationStats, Prompt, SamplingSettings, generate
from anygen.sampling.backends import FastDecoder, HFDecoder
from anygen.sampling.jacobi import MIN_ROW_WINDOW
from anygen.vocab import Vocab

GREEDY = SamplingSettings(greedy=True)


def make_vocab(image_keep=False, codebook=16, grids=((4, 4), (2, 3))):
    return Vocab(n_text=24, image_codebook_size=codebook, image_grids=grids, audio_codebook_size=8, audio_levels=2,
                 image_keep=image_keep)


def tiny_model(vocab, seed=0, stride=0, sharpen=1.0):
    """A random 2-layer Qwen3; `sharpen` scales the output head (peaked, context-dependent distributions)."""
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab.size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=256,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    if stride:
        cfg.image_position_stride = stride
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def both(model, vocab, prompts, window=6, **cfg):
    """(sequential results, stats), (SJD results, stats) under the same config; `window` codes per row."""
    out = []
    for parallel in ("none", "sjd"):
        config = GenerationConfig(parallel=parallel, **cfg)
        config.sjd_window = window * sum(1 + (len(p.uncond) if config.guided else 0) for p in prompts)
        stats = GenerationStats()
        res = generate(model, vocab, prompts, config, stats=stats)
        out.append((res, stats))
    return out


def text_to_image(vocab, captions, guided):
    return [Prompt([vocab.bos] + c, uncond=[[vocab.bos, vocab.null]] if guided else (), force=[vocab.boi])
            for c in captions]


@pytest.mark.parametrize("backend", ["fast", "hf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_sjd_equals_sequential_greedy(backend, seed, guidance):
    vocab = make_vocab()
    model = tiny_model(vocab, seed=seed, sharpen=8.0)
    prompts = text_to_image(vocab, [[3, 4, 5], [7], [9, 10, 11, 12, 2]], guided=guidance != 1.0)
    (seq, _), (sjd, stats) = both(model, vocab, prompts, max_new_tokens=40, image_grid=(4, 4), text=GREEDY,
                                  image=GREEDY, guidance_scales=(guidance,), backend=backend, seed=seed)
    assert [r.ids for r in sjd] == [r.ids for r in seq]
    assert all(r.images() and r.images()[0].complete for r in sjd)
    assert sum(stats.sjd_tested) > 0  # the drafts were really tested


def test_greedy_sjd_guides_only_inside_the_guidance_interval():
    """A window straddling the interval's start guides its later positions only, as one step would."""
    vocab = make_vocab()
    model = tiny_model(vocab, seed=8, sharpen=8.0)
    prompts = text_to_image(vocab, [[3, 4, 5], [7, 8]], guided=True)
    (seq, _), (sjd, _) = both(model, vocab, prompts, window=8, max_new_tokens=19, image_grid=(4, 4), image=GREEDY,
                              guidance_scales=(6.0,), guidance_interval=(0.4, 0.8))
    assert [r.ids for r in sjd] == [r.ids for r in seq]
    unguided = generate(model, vocab, [Prompt(p.ids, force=p.force) for p in prompts],
                        GenerationConfig(max_new_tokens=19, image_grid=(4, 4), image=GREEDY))
    assert [r.ids for r in unguided] != [r.ids for r in seq]  # the guidance acted


@pytest.mark.parametrize("stride,window", [(32, 6), (128, 16)])
def test_greedy_sjd_with_keep_aligned_positions_and_a_previous_image(stride, window):
    """`<keep>` is legal (a previous image of the grid in the prompt) and positions jump at grid tokens
    (a span's first drafts follow `<grid>` without jumping again)."""
    vocab = make_vocab(image_keep=True)
    model = tiny_model(vocab, seed=3, stride=stride, sharpen=8.0)
    grid = vocab.grid_id((4, 4))
    previous = [vocab.boi, grid] + [vocab.image_start + (i % 3) for i in range(16)] + [vocab.eoi]
    prompts = [Prompt([vocab.bos, 5] + previous + [6, 7], force=[vocab.boi]),
               Prompt([vocab.bos] + previous + [8], force=[vocab.boi])]
    for scale in (1.0, 2.0):
        for p in prompts:
            p.uncond = [[vocab.bos, vocab.null] + previous] if scale != 1.0 else ()
        (seq, _), (sjd, _) = both(model, vocab, prompts, window=window, max_new_tokens=30, image_grid=(4, 4),
                                  text=GREEDY,
                                  image=SamplingSettings(greedy=True, keep_threshold=0.3),
                                  guidance_scales=(scale,))
        assert [r.ids for r in sjd] == [r.ids for r in seq]


def test_greedy_sjd_keeps_an_edits_copied_cells():
    vocab = make_vocab(image_keep=True)
    model = tiny_model(vocab, seed=4, stride=32, sharpen=8.0)
    source = [vocab.image_start + (i * 5) % 16 for i in range(16)]
    editable = [i in (5, 6, 9, 10) for i in range(16)]
    prompt = [vocab.bos, vocab.boi, vocab.grid_id((4, 4))] + source + [vocab.eoi, 4, 5]
    prompts = [Prompt(prompt, force=[vocab.boi], source=source, editable=editable),
               Prompt(prompt[:-1], force=[vocab.boi], source=source, editable=editable)]
    (seq, _), (sjd, _) = both(model, vocab, prompts, max_new_tokens=19, text=GREEDY, image=GREEDY)
    assert [r.ids for r in sjd] == [r.ids for r in seq]
    codes = sjd[0].images()[0].codes
    assert [c for c, e in zip(codes, editable) if not e] == [s for s, e in zip(source, editable) if not e]


class CopyLM(torch.nn.Module):
    """A stand-in LM that always favours one image code: every draft after the first window is right."""

    def __init__(self, vocab, favour):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=512, model_type="scripted")
        self.bias = torch.zeros(vocab.size)
        self.bias[favour] = 50.0
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        self.calls.append(input_ids.shape[1])
        B, T = input_ids.shape
        return SimpleNamespace(logits=self.bias.expand(B, T, -1).clone())


def test_accepted_drafts_take_fewer_forwards():
    vocab = make_vocab()
    code = vocab.image_start + 7
    model = CopyLM(vocab, code)
    prompts = [Prompt([vocab.bos, 3], force=[vocab.boi])]
    for settings in (GREEDY, SamplingSettings(temperature=1.0)):
        (seq, s1), (sjd, s2) = both(model, vocab, prompts, window=8, max_new_tokens=19, image_grid=(4, 4),
                                    image=settings, seed=0)
        assert sjd[0].images()[0].codes == (code,) * 16 == seq[0].images()[0].codes
        # prefill, <boi>, <grid>, 16 codes, <eoi>: 1 + 18 sequential forwards; SJD: a first window that
        # rejects its repeated <grid> guess, then two windows of 8 and the last code and <eoi> one by one
        assert s1.forwards == 19
        assert s2.forwards <= 7, s2.forwards
        assert sum(s2.sjd_accepted) >= 12


def test_cache_is_consistent_after_rejections():
    """Ids drafted, fed and dropped leave the cache as if only the committed ones had been fed."""
    vocab = make_vocab()
    model = tiny_model(vocab, seed=5)
    ids = torch.tensor([[vocab.bos, 3, 4, 5], [vocab.pad, vocab.bos, 7, 8]])
    n_pad = torch.tensor([0, 1])
    committed = torch.tensor([[30, 31, 32, 33, 34], [35, 36, 37, 38, 39]])
    for cls in (FastDecoder, HFDecoder):
        ref = cls(model, 2, 32)
        ref.prefill(ids, n_pad)
        want = torch.stack([ref.step(committed[:, i]) for i in range(5)], 1)  # (2, 5, V)
        dec = cls(model, 2, 32)
        dec.prefill(ids, n_pad)
        dec.extend(torch.tensor([[30, 20, 21], [35, 22, 23]]))
        dec.keep(1)  # both drafts rejected
        got = [dec.extend(torch.cat([committed[:, 1:3], torch.tensor([[25], [26]])], 1))]
        dec.keep(2)  # one of two drafts accepted
        got.append(dec.extend(committed[:, 3:5]))
        assert torch.allclose(torch.cat([got[0][:, :2], got[1]], 1), want[:, 1:], atol=1e-5)


def exact_joint(model, vocab, prompt, n, guidance=1.0):
    """The exact probability of every tuple of the first `n` codes of a text->image sample (enumerated)."""
    grid = vocab.grid_id(vocab.image_grids[0])
    K = vocab.image_codebook_size
    tuples = torch.cartesian_prod(*[torch.arange(K)] * n) if n > 1 else torch.arange(K)[:, None]  # (K^n, n)
    codes = tuples + vocab.image_start

    def logprobs(prefix):
        seq = torch.cat([torch.tensor(prefix + [vocab.boi, grid]).expand(len(codes), -1), codes], 1)
        with torch.no_grad():
            logits = model(input_ids=seq).logits[:, -n - 1:-1, vocab.image_start:vocab.image_start + K]
        return logits.log_softmax(-1)  # (K^n, n, K) log p of each code slot given the earlier ones

    lp = logprobs(prompt)
    if guidance != 1.0:
        null = logprobs([vocab.bos, vocab.null])
        lp = (null + guidance * (lp - null)).log_softmax(-1)
    return lp.gather(-1, tuples[..., None])[..., 0].sum(-1).exp()  # (K^n,)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sjd_samples_follow_the_sequential_distribution(guidance):
    """The first three codes' joint distribution over many SJD samples matches the exact one."""
    vocab = make_vocab(codebook=4, grids=((2, 3),))
    model = tiny_model(vocab, seed=6, sharpen=4.0)
    caption = [vocab.bos, 3, 9]
    n_rows, n_calls = 8, 200
    prompt = Prompt(caption, uncond=[[vocab.bos, vocab.null]] if guidance != 1.0 else (), force=[vocab.boi])
    rows = n_rows * (2 if guidance != 1.0 else 1)
    cfg = GenerationConfig(max_new_tokens=9, image_grid=(2, 3), parallel="sjd", sjd_window=4 * rows,
                           guidance_scales=(guidance,))
    counts = torch.zeros(4 ** 3)
    stats = GenerationStats()
    torch.manual_seed(0)
    for _ in range(n_calls):
        for r in generate(model, vocab, [prompt] * n_rows, cfg, stats=stats):
            c = [x - vocab.image_start for x in r.images()[0].codes[:3]]
            counts[c[0] * 16 + c[1] * 4 + c[2]] += 1
    assert sum(stats.sjd_accepted) > 0 and sum(stats.sjd_tested) > sum(stats.sjd_accepted)  # both outcomes
    counts = counts.double()
    expected = exact_joint(model, vocab, caption, 3, guidance).double() * counts.sum()
    small = expected < 5  # pool rare cells (chi-square needs about 5 expected per cell)
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs, exp = torch.cat([obs, counts[small].sum()[None]]), torch.cat([exp, expected[small].sum()[None]])
    assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3


def test_seeded_sjd_repeats():
    vocab = make_vocab()
    model = tiny_model(vocab, seed=7, sharpen=4.0)
    prompts = text_to_image(vocab, [[3, 4], [5]], guided=True)
    cfg = GenerationConfig(max_new_tokens=19, image_grid=(4, 4), guidance_scales=(2.0,), seed=11, parallel="sjd")
    first, again = ([r.ids for r in generate(model, vocab, prompts, cfg)] for _ in range(2))
    assert first == again


def test_parallel_options_are_checked():
    with pytest.raises(ConfigError, match="parallel"):
        GenerationConfig(parallel="jacobi")
    with pytest.raises(ConfigError, match="sjd_window"):
        GenerationConfig(parallel="sjd", sjd_window=1)
    with pytest.raises(ConfigError, match="sjd_window"):
        GenerationConfig(sjd_window=2.5)


def test_the_window_is_shared_by_the_batch_rows():
    """`sjd_window` tokens per forward over all rows: a batch too wide for a few per row decodes one per forward."""
    vocab = make_vocab()
    model = CopyLM(vocab, vocab.image_start + 2)
    prompts = [Prompt([vocab.bos, 3], uncond=[[vocab.bos, vocab.null]], force=[vocab.boi])] * 2
    forwards = []
    for window in (32, 16, 15):  # 4 rows: 8, 4 and 3 per row
        stats = GenerationStats()
        generate(model, vocab, prompts, GenerationConfig(max_new_tokens=19, image_grid=(4, 4), guidance_scales=(2.0,),
                                                         parallel="sjd", sjd_window=window, image=GREEDY), stats=stats)
        forwards.append(stats.forwards)
        assert max(model.calls) == (window // 4 if window // 4 >= MIN_ROW_WINDOW else 2)  # 2: the prefill
        model.calls.clear()
    assert forwards[0] < forwards[1] < forwards[2] == 19


def test_draw_takes_parallel_from_the_api(gen):
    """`gen.draw(..., parallel="sjd")` reaches the sampler; greedy images are unchanged."""
    want = gen.draw("a red circle", n=2, greedy=True)
    got = gen.draw("a red circle", n=2, greedy=True, parallel="sjd", sjd_window=8)
    assert [list(a.getdata()) for a in got] == [list(b.getdata()) for b in want]


def test_draw_verb_passes_parallel_flags(tmp_path, monkeypatch):
    import anygen
    from anygen.cli import main as cli_main

    seen = []

    class Recorder:
        def draw(self, text, n=1, seed=0, options=None, strict=False, **settings):
            from PIL import Image as PILImage

            seen.append((options.greedy, settings))
            return [PILImage.new("RGB", (8, 8), "grey") for _ in range(n)]

    monkeypatch.setattr(anygen, "load", lambda directory=None, device="cpu": Recorder())
    out = str(tmp_path / "x.png")
    assert cli_main(["draw", "a red circle", "--greedy", "--parallel", "sjd", "--sjd-window", "8", "--out", out]) == 0
    assert cli_main(["draw", "a red circle", "--out", out]) == 0
    assert seen == [(True, {"parallel": "sjd", "sjd_window": 8}), (None, {})]



def test_the_cli_help_names_the_samplers_default_window():
    from anygen.cli import build_parser
    from anygen.sampling.settings import DEFAULT_SJD_WINDOW

    help_text = build_parser()._subparsers._group_actions[0].choices["draw"].format_help()
    assert f"(default {DEFAULT_SJD_WINDOW})" in " ".join(help_text.split())
    assert GenerationConfig().sjd_window == DEFAULT_SJD_WINDOW
