"""`anygen bench sample`: decode speed, bandwidth use, guidance cost and time to first image.

Everything is measured in one process on the same model and weights with the thread count
set explicitly; each figure is the median of `repeats` runs, and competing variants run
interleaved (A B C A B C ...) so that load from other processes hits them alike.

- decode tokens/s at batch 1: `generate` (text only, greedy, no early stop) against
  transformers' `model.generate(min_new_tokens=max_new_tokens)`, end to end (prefill
  included in both) and the engine's decode loop alone.
- memory-bandwidth utilisation: bytes a decode step must read (weights + KV cache at the
  mean context) × decode tokens/s ÷ the bandwidth of a large tensor copy measured here.
- guided ÷ unguided wall time for one image (batched CFG: one extra row).
- time to first image: prefill, code sampling, and an optional codec decode callable.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

from anygen.sampling.backends import kv_bytes_per_token, resolve_lm
from anygen.sampling.engine import GenerationStats, Prompt, generate
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.threads import set_threads
from anygen.vocab import Vocab


def shapes_bench_model(seed: int = 0):
    """The shapes recipe's decoder size (Qwen3, 4 layers, hidden 256, 4 heads × 64) with random weights."""
    vocab = Vocab(n_text=1024, image_codebook_size=1000, image_grids=((8, 8),), audio_codebook_size=256,
                  audio_levels=2)
    try:
        from anygen.model.decoder import DecoderConfig, build_decoder

        model = build_decoder(DecoderConfig(), vocab, seed=seed)
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
                     include_hf_backend: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Run the sampler benchmark and return its figures (see the module doc).

    model/vocab    default: `shapes_bench_model()` (random weights)
    codec_decode   optional `codec_decode(codes) -> anything` with codes a (1, H, W) LongTensor of
                   codebook indices (e.g. `ImageCodec.decode_images`), timed as the codec part
                   of time-to-first-image
    """
    if (model is None) != (vocab is None):
        raise ValueError("pass both model and vocab, or neither")
    if model is None:
        model, vocab = shapes_bench_model()
    lm = resolve_lm(model)
    say = progress or (lambda msg: None)
    old_threads = torch.get_num_threads()
    threads = set_threads(threads, "threads")
    try:
        return _run(lm, vocab, threads, n_tokens, prompt_len, repeats, guidance_scale, codec_decode, bandwidth_mb,
                    include_hf_backend, say)
    finally:
        torch.set_num_threads(old_threads)


def _run(lm, vocab, threads, n_tokens, prompt_len, repeats, guidance_scale, codec_decode, bandwidth_mb,
         include_hf_backend, say):
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
    image_cfg = GenerationConfig(max_new_tokens=n_codes + 3, image_grid=grid, allow_audio=False, seed=0,
                                 image=SamplingSettings(temperature=1.0))
    guided_cfg = GenerationConfig(**{**image_cfg.__dict__, "guidance_scales": (guidance_scale,)})
    draw_prompt = Prompt(prompt, force=[vocab.boi])
    guided_prompt = Prompt(prompt, uncond=[[vocab.bos, vocab.null]], force=[vocab.boi])
    unguided_t, guided_t, prefill_t, codes_t, codec_t = [], [], [], [], []
    generate(lm, vocab, [draw_prompt], image_cfg), generate(lm, vocab, [guided_prompt], guided_cfg)  # warm-up
    for _ in range(repeats):
        stats = GenerationStats()
        t = time.perf_counter()
        res = generate(lm, vocab, [draw_prompt], image_cfg, stats=stats)[0]
        unguided_t.append(time.perf_counter() - t)
        prefill_t.append(stats.setup_s + stats.prefill_s)
        codes_t.append(stats.decode_s)
        if codec_decode is not None:
            t = time.perf_counter()
            span = res.spans[0]
            codes = vocab.image_codes(torch.tensor(span.codes)).view(1, *span.grid)  # (1, H, W) codebook indices
            codec_decode(codes)
            codec_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        generate(lm, vocab, [guided_prompt], guided_cfg)
        guided_t.append(time.perf_counter() - t)

    n_params = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    result = {
        "model": {"params": n_params, "layers": lm.config.num_hidden_layers, "hidden": lm.config.hidden_size,
                  "vocab": vocab.size, "dtype": str(lm.lm_head.weight.dtype).replace("torch.", ""),
                  "device": str(device)},
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
        "guidance": {
            "guidance_scale": guidance_scale, "image_tokens": n_codes + 3,
            "unguided_s": _median(unguided_t), "guided_s": _median(guided_t),
            "ratio": _median(guided_t) / _median(unguided_t), "goal_ratio": 1.3,
        },
        "first_image": {
            "prefill_s": _median(prefill_t), "code_sampling_s": _median(codes_t),
            "codec_decode_s": _median(codec_t) if codec_t else None,
            "total_s": _median(prefill_t) + _median(codes_t) + (_median(codec_t) if codec_t else 0.0),
        },
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
        f"guidance (scale {gd['guidance_scale']}, {gd['image_tokens']}-token image): guided {gd['guided_s'] * 1e3:.0f} ms / "
        f"unguided {gd['unguided_s'] * 1e3:.0f} ms = {gd['ratio']:.2f}× (goal ≤ {gd['goal_ratio']}×)",
        f"first image: prefill {fi['prefill_s'] * 1e3:.1f} ms + code sampling {fi['code_sampling_s'] * 1e3:.0f} ms"
        + (f" + codec decode {fi['codec_decode_s'] * 1e3:.1f} ms" if fi["codec_decode_s"] is not None else "")
        + f" = {fi['total_s'] * 1e3:.0f} ms",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m anygen.sampling.bench [threads]
    import json
    import sys

    out = run_sample_bench(threads=int(sys.argv[1]) if len(sys.argv) > 1 else 1,
                           progress=lambda m: print(f"[bench] {m}", file=sys.stderr))
    print(format_sample_bench(out))
    print(json.dumps(out, indent=2))
