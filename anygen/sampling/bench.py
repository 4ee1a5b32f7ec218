"""`anygen bench sample`: decode speed, bandwidth use, guidance cost and time to first image.

Everything is measured in one process on the same model and weights with the thread count
set explicitly; each figure is the median of `repeats` runs, and competing variants run
interleaved (A B C A B C ...) so that load from other processes hits them alike.

- decode tokens/s at batch 1: `generate` (text only, greedy, no early stop) against
  transformers' `model.generate(min_new_tokens=max_new_tokens)`, end to end (prefill
  included in both) and the engine's decode loop alone.
- memory-bandwidth utilisation: bytes a decode step must read (weights + KV cache at the
  mean context) × decode tokens/s ÷ the bandwidth of a large tensor copy measured here.
- guided ÷ unguided wall time for one image (batched CFG: one extra row): the median ratio of
  `GUIDANCE_PAIRS` paired runs, one code per forward and with speculative Jacobi decoding (SJD).
- decode tokens/s at larger batches (`batches`): the same comparison with B copies of the prompt,
  counting B × new tokens (`decode_batches`).
- time to first image: prefill, code sampling, and an optional codec decode callable.
- SJD against one code per forward at batch 1: forward passes (the prefill included) and wall
  time per image, greedy and sampled, and the share of drafts accepted at each window offset; on
  the model given (with the caller's text->image prompts, else a random one) and on a larger
  random model (`LARGE_BENCH_MODEL`), where a forward reads more weights per token.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

from anygen.sampling.backends import kv_bytes_per_token, resolve_lm
from anygen.sampling.engine import GenerationStats, Prompt, generate
from anygen.sampling.jacobi import add_counts
from anygen.sampling.settings import DEFAULT_SJD_WINDOW, GenerationConfig, SamplingSettings
from anygen.threads import set_threads
from anygen.vocab import Vocab

# Guided ÷ unguided time is the median ratio of this many back-to-back pairs: a pair shares the load of
# the moment, and an odd count has a middle value.
GUIDANCE_PAIRS = 9
# The larger random decoder SJD is also timed on: twice the shapes recipe's depth and width, where a
# one-token forward reads about 25M weights and a window of codes costs little more than one code.
LARGE_BENCH_MODEL = {"n_layers": 8, "hidden": 512, "n_heads": 8, "n_kv_heads": 8, "head_dim": 64,
                     "intermediate": 1536}
# Image sampling the SJD comparison uses besides greedy: the API's sampled draws (temperature 1, top-k 64).
SAMPLED_IMAGE = SamplingSettings(temperature=1.0, top_k=64)


def shapes_bench_model(seed: int = 0, **size):
    """The shapes recipe's decoder size (Qwen3, 4 layers, hidden 256, 4 heads × 64) with random weights;
    `size`: other `DecoderConfig` fields (e.g. `LARGE_BENCH_MODEL`)."""
    vocab = Vocab(n_text=1024, image_codebook_size=1000, image_grids=((8, 8),), audio_codebook_size=256,
                  audio_levels=2)
    try:
        from anygen.model.decoder import DecoderConfig, build_decoder

        model = build_decoder(DecoderConfig(**size), vocab, seed=seed)
    except ImportError:  # the decoder module is optional for this benchmark
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(seed)
        cfg = Qwen3Config(vocab_size=vocab.size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
                          tie_word_embeddings=True)
        cfg._attn_implementation = "sdpa"
        model = Qwen3ForCausalLM(cfg)
    return model.eval(), vocab


def copy_bandwidth(mb: int = 256, repeats: int = 7) -> float:
    """GB/s of a large tensor copy, counting bytes read plus bytes written (median)."""
    src = torch.empty(mb * 2 ** 20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def decode_bytes_per_token(lm, context: float, head_columns: int | None = None) -> float:
    """Bytes one decode step reads: every weight matrix once (the input embedding only as a row,
    unless tied to the output head), the output head's `head_columns` columns (default: all;
    the sampler computes only the columns legal ids may take), and the KV cache at `context` tokens."""
    emb = lm.get_input_embeddings().weight
    head = lm.get_output_embeddings().weight
    seen, total = set(), 0
    for p in lm.parameters():
        if id(p) in seen or (p is emb and p is not head):
            continue
        seen.add(id(p))
        n = p.numel()
        if p is head and head_columns is not None:
            n = n * head_columns // head.shape[0]
        total += n * p.element_size()
    kv = kv_bytes_per_token(lm) * context
    return total + kv


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def run_sample_bench(model=None, vocab: Vocab | None = None, threads: int = 1, n_tokens: int = 128,
                     prompt_len: int = 16, repeats: int = 5, guidance_scale: float = 3.0,
                     codec_decode: Callable | None = None, bandwidth_mb: int = 256,
                     include_hf_backend: bool = True, progress: Callable[[str], None] | None = None,
                     image_prompts: list[Prompt] | None = None, sjd_window: int = DEFAULT_SJD_WINDOW,
                     large_model: bool = True, guidance_pairs: int = GUIDANCE_PAIRS, batches: tuple[int, ...] = (),
                     device: str | None = None) -> dict:
    """Run the sampler benchmark and return its figures (see the module doc).

    model/vocab    default: `shapes_bench_model()` (random weights)
    codec_decode   optional `codec_decode(codes) -> anything` with codes a (1, H, W) LongTensor of
                   codebook indices (e.g. `ImageCodec.decode_images`), timed as the codec part
                   of time-to-first-image
    image_prompts  text->image prompts for the SJD comparison and the guidance cost (each with its
                   unconditional prompt in `uncond`; `force` is set to `<boi>`); default: one random prompt
    large_model    also compare SJD on `LARGE_BENCH_MODEL` with random weights
    batches        also time text decoding at these batch sizes against transformers' generate (`decode_batches`)
    device         move the model(s) there first (e.g. "cuda"; default: where the model is)
    """
    if (model is None) != (vocab is None):
        raise ValueError("pass both model and vocab, or neither")
    if model is None:
        model, vocab = shapes_bench_model()
    if device is not None:
        model = model.to(device)
    lm = resolve_lm(model)
    say = progress or (lambda msg: None)
    old_threads = torch.get_num_threads()
    threads = set_threads(threads, "threads")
    try:
        result = _run(lm, vocab, threads, n_tokens, prompt_len, repeats, guidance_scale, codec_decode, bandwidth_mb,
                      include_hf_backend, say, image_prompts, sjd_window, guidance_pairs)
        if batches:
            say("decode by batch")
            result["decode_batches"] = [decode_at_batch(lm, vocab, b, n_tokens, prompt_len, repeats) for b in batches]
        if large_model:
            say("sjd, larger random model")
            big, big_vocab = shapes_bench_model(**LARGE_BENCH_MODEL)
            big = big.to(lm.lm_head.weight.device)
            big_lm = resolve_lm(big)
            prompt = _random_prompt(big_vocab, prompt_len)
            result["sjd_large"] = {"model": _describe(big_lm, big_vocab),
                                   **compare_sjd(big_lm, big_vocab, [prompt], max(1, repeats // 2), sjd_window)}
        return result
    finally:
        torch.set_num_threads(old_threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_at_batch(lm, vocab: Vocab, batch: int, n_tokens: int = 128, prompt_len: int = 16,
                    repeats: int = 5) -> dict:
    """Greedy text decoding of `batch` copies of a random prompt, `n_tokens` each, by `generate` and by
    transformers' `generate` (no early stop), interleaved; tokens/s count batch × n_tokens over the median
    wall time (prefill included in both)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    device = lm.lm_head.weight.device
    g = torch.Generator().manual_seed(0)
    prompt = [vocab.bos] + torch.randint(0, vocab.n_text, (prompt_len - 1,), generator=g).tolist()
    cfg = GenerationConfig(max_new_tokens=n_tokens, text=SamplingSettings(greedy=True), allow_image=False,
                           allow_audio=False, stop_at_eos=False, seed=0)
    ids = torch.tensor([prompt] * batch, device=device)

    def engine():
        _sync(device)
        t = time.perf_counter()
        out = generate(lm, vocab, [prompt] * batch, cfg)
        _sync(device)
        assert len(out) == batch and all(len(o.ids) == n_tokens for o in out)
        return time.perf_counter() - t

    def hf():
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                              min_new_tokens=n_tokens, do_sample=False, pad_token_id=vocab.pad)
        _sync(device)
        assert out.shape == (batch, len(prompt) + n_tokens)
        return time.perf_counter() - t

    engine(), hf()  # warm-up
    engine_t, hf_t = [], []
    for _ in range(repeats):
        engine_t.append(engine())
        hf_t.append(hf())
    engine_tps, hf_tps = batch * n_tokens / _median(engine_t), batch * n_tokens / _median(hf_t)
    return {"batch": batch, "new_tokens": n_tokens, "prompt_tokens": len(prompt), "device": str(device),
            "engine_tokens_per_s": engine_tps, "hf_generate_tokens_per_s": hf_tps,
            "speedup_vs_hf_generate": engine_tps / hf_tps}


def _random_prompt(vocab: Vocab, prompt_len: int) -> Prompt:
    g = torch.Generator().manual_seed(0)
    ids = [vocab.bos] + torch.randint(0, vocab.n_text, (prompt_len - 1,), generator=g).tolist()
    return Prompt(ids, uncond=[[vocab.bos, vocab.null]], force=[vocab.boi])


def _describe(lm, vocab) -> dict:
    n_params = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    return {"params": n_params, "layers": lm.config.num_hidden_layers, "hidden": lm.config.hidden_size,
            "vocab": vocab.size, "dtype": str(lm.lm_head.weight.dtype).replace("torch.", ""),
            "device": str(lm.lm_head.weight.device)}


def _image_config(vocab: Vocab, image: SamplingSettings, scale: float = 1.0, **extra) -> GenerationConfig:
    grid = vocab.image_grids[0]
    return GenerationConfig(max_new_tokens=grid[0] * grid[1] + 3, image_grid=grid, allow_audio=False, seed=0,
                            image=image, guidance_scales=(scale,), **extra)


def _timed(lm, vocab, prompt, cfg) -> tuple[float, GenerationStats]:
    stats = GenerationStats()
    t = time.perf_counter()
    generate(lm, vocab, [prompt], cfg, stats=stats)
    return time.perf_counter() - t, stats


def compare_sjd(lm, vocab: Vocab, prompts: list[Prompt], repeats: int, window: int) -> dict:
    """SJD against one code per forward: per image at batch 1, unguided, greedy and sampled.

    Each prompt is drawn `repeats` times each way, interleaved; figures are medians over all draws.
    """
    out = {"window": window, "images_per_variant": repeats * len(prompts)}
    for name, image in (("greedy", SamplingSettings(greedy=True)), ("sampled", SAMPLED_IMAGE)):
        seq_cfg = _image_config(vocab, image)
        sjd_cfg = _image_config(vocab, image, parallel="sjd", sjd_window=window)
        plain = [Prompt(p.ids, force=p.force) for p in prompts]
        for p in plain:  # warm-up
            generate(lm, vocab, [p], seq_cfg), generate(lm, vocab, [p], sjd_cfg)
        times = {"sequential": [], "sjd": []}
        forwards = {"sequential": [], "sjd": []}
        tested, accepted = [], []
        for _ in range(repeats):
            for p in plain:
                for variant, cfg in (("sequential", seq_cfg), ("sjd", sjd_cfg)):
                    wall, stats = _timed(lm, vocab, p, cfg)
                    times[variant].append(wall)
                    forwards[variant].append(stats.forwards)
                    add_counts(tested, accepted, stats.sjd_tested, stats.sjd_accepted)
        seq_f, sjd_f = _median(forwards["sequential"]), _median(forwards["sjd"])
        seq_t, sjd_t = _median(times["sequential"]), _median(times["sjd"])
        out[name] = {
            "sequential": {"forwards_per_image": seq_f, "s_per_image": seq_t},
            "sjd": {"forwards_per_image": sjd_f, "s_per_image": sjd_t},
            "forward_reduction": seq_f / sjd_f, "speedup": seq_t / sjd_t,
            "acceptance_by_offset": [a / t if t else None for a, t in zip(accepted, tested)],
            "drafts_tested_by_offset": tested,
        }
    out["goal_forward_reduction"], out["goal_speedup"] = 2.0, 1.6
    return out


def guidance_cost(lm, vocab: Vocab, prompts: list[Prompt], scale: float, pairs: int, **extra) -> dict:
    """Guided ÷ unguided wall time per image at batch 1: the median ratio of `pairs` back-to-back pairs
    (each pair draws every prompt unguided, then guided)."""
    unguided_cfg = _image_config(vocab, SAMPLED_IMAGE, **extra)
    guided_cfg = _image_config(vocab, SAMPLED_IMAGE, scale, **extra)
    plain = [Prompt(p.ids, force=p.force) for p in prompts]
    for p, q in zip(plain, prompts):  # warm-up
        generate(lm, vocab, [p], unguided_cfg), generate(lm, vocab, [q], guided_cfg)
    ratios, unguided_t, guided_t = [], [], []
    for _ in range(pairs):
        u = sum(_timed(lm, vocab, p, unguided_cfg)[0] for p in plain)
        g = sum(_timed(lm, vocab, q, guided_cfg)[0] for q in prompts)
        unguided_t.append(u / len(prompts))
        guided_t.append(g / len(prompts))
        ratios.append(g / u)
    return {"unguided_s": _median(unguided_t), "guided_s": _median(guided_t), "ratio": _median(ratios),
            "ratios": ratios}


def _run(lm, vocab, threads, n_tokens, prompt_len, repeats, guidance_scale, codec_decode, bandwidth_mb,
         include_hf_backend, say, image_prompts, sjd_window, guidance_pairs):
    device = lm.lm_head.weight.device
    g = torch.Generator().manual_seed(0)
    prompt = [vocab.bos] + torch.randint(0, vocab.n_text, (prompt_len - 1,), generator=g).tolist()
    greedy = SamplingSettings(greedy=True)
    text_cfg = GenerationConfig(max_new_tokens=n_tokens, text=greedy, allow_image=False, allow_audio=False,
                                stop_at_eos=False, seed=0)
    hf_cfg = GenerationConfig(**{**text_cfg.__dict__, "backend": "hf"})
    ids = torch.tensor([prompt], device=device)

    def run_engine(cfg):
        stats = GenerationStats()
        t = time.perf_counter()
        out = generate(lm, vocab, [prompt], cfg, stats=stats)
        wall = time.perf_counter() - t
        assert len(out[0].ids) == n_tokens
        return wall, stats

    def run_hf_generate():
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                              min_new_tokens=n_tokens, do_sample=False, pad_token_id=vocab.pad)
        wall = time.perf_counter() - t
        assert out.shape[1] == len(prompt) + n_tokens
        return wall

    say("bandwidth")
    bandwidth = copy_bandwidth(bandwidth_mb)
    say("decode")
    run_engine(text_cfg), run_hf_generate()  # warm-up
    engine_wall, engine_decode, hf_wall, hfb_wall = [], [], [], []
    for _ in range(repeats):
        wall, stats = run_engine(text_cfg)
        engine_wall.append(wall)
        engine_decode.append((stats.steps - 1) / stats.decode_s)  # steps after the prefill's token
        hf_wall.append(run_hf_generate())
        if include_hf_backend:
            hfb_wall.append(run_engine(hf_cfg)[0])
    engine_tps = n_tokens / _median(engine_wall)
    hf_tps = n_tokens / _median(hf_wall)
    decode_tps = _median(engine_decode)
    # text-only greedy decoding: the head computes the text-id columns [0, n_text) only
    bytes_per_token = decode_bytes_per_token(lm, len(prompt) + n_tokens / 2, head_columns=vocab.n_text)
    achieved = bytes_per_token * decode_tps / 1e9

    say("image")
    grid = vocab.image_grids[0]
    n_codes = grid[0] * grid[1]
    image_cfg = _image_config(vocab, SamplingSettings(temperature=1.0))
    draw_prompt = Prompt(prompt, force=[vocab.boi])
    prefill_t, codes_t, codec_t = [], [], []
    generate(lm, vocab, [draw_prompt], image_cfg)  # warm-up
    for _ in range(repeats):
        stats = GenerationStats()
        res = generate(lm, vocab, [draw_prompt], image_cfg, stats=stats)[0]
        prefill_t.append(stats.setup_s + stats.prefill_s)
        codes_t.append(stats.decode_s)
        if codec_decode is not None:
            t = time.perf_counter()
            span = res.spans[0]
            codes = vocab.image_codes(torch.tensor(span.codes)).view(1, *span.grid)  # (1, H, W) codebook indices
            codec_decode(codes)
            codec_t.append(time.perf_counter() - t)
    prompts = [Prompt(p.ids, uncond=p.uncond, force=[vocab.boi]) for p in image_prompts] if image_prompts \
        else [_random_prompt(vocab, prompt_len)]
    say("guidance")
    guidance = {"guidance_scale": guidance_scale, "image_tokens": n_codes + 3, "pairs": guidance_pairs,
                "goal_ratio": 1.3,
                **guidance_cost(lm, vocab, prompts, guidance_scale, guidance_pairs),
                "sjd": guidance_cost(lm, vocab, prompts, guidance_scale, guidance_pairs, parallel="sjd",
                                     sjd_window=sjd_window)}
    say("sjd")
    sjd = compare_sjd(lm, vocab, prompts, repeats, sjd_window)

    result = {
        "model": _describe(lm, vocab),
        "threads": threads, "repeats": repeats, "prompt_tokens": len(prompt), "new_tokens": n_tokens,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "decode": {
            "engine_tokens_per_s": engine_tps,
            "engine_decode_only_tokens_per_s": decode_tps,
            "hf_generate_tokens_per_s": hf_tps,
            "speedup_vs_hf_generate": engine_tps / hf_tps,
            "engine_hf_backend_tokens_per_s": n_tokens / _median(hfb_wall) if hfb_wall else None,
            "goal_speedup": 1.5,
        },
        "bandwidth": {
            "copy_gb_per_s": bandwidth,
            "bytes_per_decode_token": bytes_per_token,
            "head_columns": vocab.n_text,
            "achieved_gb_per_s": achieved,
            "utilisation": achieved / bandwidth,
            "goal_utilisation": 0.35,
        },
        "guidance": guidance,
        "first_image": {
            "prefill_s": _median(prefill_t), "code_sampling_s": _median(codes_t),
            "codec_decode_s": _median(codec_t) if codec_t else None,
            "total_s": _median(prefill_t) + _median(codes_t) + (_median(codec_t) if codec_t else 0.0),
        },
        "sjd": sjd,
    }
    return result


def format_sample_bench(r: dict) -> str:
    """A short human-readable report of `run_sample_bench`'s result."""
    d, b, gd, fi = r["decode"], r["bandwidth"], r["guidance"], r["first_image"]
    m = r["model"]
    lines = [
        f"model: {m['params'] / 1e6:.2f}M params, {m['layers']} layers × {m['hidden']}, vocab {m['vocab']}, "
        f"{m['dtype']} on {m['device']}; threads {r['threads']}; medians of {r['repeats']}",
        f"decode (batch 1, {r['new_tokens']} tokens after {r['prompt_tokens']}): engine {d['engine_tokens_per_s']:.0f} tok/s "
        f"vs transformers generate() {d['hf_generate_tokens_per_s']:.0f} tok/s -> {d['speedup_vs_hf_generate']:.2f}× "
        f"(goal ≥ {d['goal_speedup']}×); decode loop alone {d['engine_decode_only_tokens_per_s']:.0f} tok/s"
        + (f"; engine on the HF forward {d['engine_hf_backend_tokens_per_s']:.0f} tok/s"
           if d.get("engine_hf_backend_tokens_per_s") else ""),
        f"bandwidth: {b['bytes_per_decode_token'] / 1e6:.1f} MB/token × decode rate = {b['achieved_gb_per_s']:.2f} GB/s "
        f"of {b['copy_gb_per_s']:.1f} GB/s copy -> {100 * b['utilisation']:.0f}% (goal ≥ {100 * b['goal_utilisation']:.0f}%)",
        f"guidance (scale {gd['guidance_scale']}, {gd['image_tokens']}-token image, median of {gd['pairs']} paired "
        f"runs): guided {gd['guided_s'] * 1e3:.0f} ms / unguided {gd['unguided_s'] * 1e3:.0f} ms = "
        f"{gd['ratio']:.2f}×; "
        f"with SJD {gd['sjd']['guided_s'] * 1e3:.0f} / {gd['sjd']['unguided_s'] * 1e3:.0f} ms = "
        f"{gd['sjd']['ratio']:.2f}× (goal ≤ {gd['goal_ratio']}×)",
        f"first image: prefill {fi['prefill_s'] * 1e3:.1f} ms + code sampling {fi['code_sampling_s'] * 1e3:.0f} ms"
        + (f" + codec decode {fi['codec_decode_s'] * 1e3:.1f} ms" if fi["codec_decode_s"] is not None else "")
        + f" = {fi['total_s'] * 1e3:.0f} ms",
    ]
    for row in r.get("decode_batches", ()):
        lines.append(f"decode (batch {row['batch']}, {row['new_tokens']} tokens each): engine "
                     f"{row['engine_tokens_per_s']:.0f} tok/s vs transformers generate() "
                     f"{row['hf_generate_tokens_per_s']:.0f} tok/s -> {row['speedup_vs_hf_generate']:.2f}×")
    lines += format_sjd(r["sjd"], "this model")
    if r.get("sjd_large"):
        big = r["sjd_large"]["model"]
        lines += format_sjd(r["sjd_large"], f"random {big['layers']} layers × {big['hidden']}, "
                                            f"{big['params'] / 1e6:.1f}M params")
    return "\n".join(lines)


def format_sjd(r: dict, what: str) -> list[str]:
    """Lines of `compare_sjd`'s result."""
    lines = [f"SJD (window {r['window']}) vs one code per forward, batch 1, {what}, medians of "
             f"{r['images_per_variant']} images (goal: ≥ {r['goal_forward_reduction']}× fewer forwards, "
             f"≥ {r['goal_speedup']}× faster):"]
    for name in ("greedy", "sampled"):
        x = r[name]
        acc = " ".join("-" if a is None else f"{a:.2f}" for a in x["acceptance_by_offset"])
        lines.append(f"  {name}: forwards/image {x['sequential']['forwards_per_image']:.0f} -> "
                     f"{x['sjd']['forwards_per_image']:.0f} ({x['forward_reduction']:.2f}×); time/image "
                     f"{x['sequential']['s_per_image'] * 1e3:.0f} -> {x['sjd']['s_per_image'] * 1e3:.0f} ms "
                     f"({x['speedup']:.2f}×); accepted by draft offset: {acc}")
    return lines


if __name__ == "__main__":  # python -m anygen.sampling.bench [threads]
    import json
    import sys

    out = run_sample_bench(threads=int(sys.argv[1]) if len(sys.argv) > 1 else 1,
                           progress=lambda m: print(f"[bench] {m}", file=sys.stderr))
    print(format_sample_bench(out))
    print(json.dumps(out, indent=2))
