"""Interleaved sampling: grammar-constrained, batched, KV-cached decoding with classifier-free guidance.

    from anygen.sampling import generate, GenerationConfig, Prompt
    results = generate(model, vocab, [prompt_ids], GenerationConfig(max_new_tokens=80, image_grid=(8, 8)),
                       uncond_prompts=[[vocab.bos, vocab.null]])
    results[0].ids, results[0].spans        # ids (prompt excluded) and Span(kind, start, end, ids, ...)

See engine.py (rows, guidance), state.py (grammar), backends.py (KV cache), scoring.py
(likelihood re-ranking) and bench.py (`anygen bench sample`).
"""

from anygen.sampling.engine import GenerationStats, Prompt, SampleResult, generate
from anygen.sampling.processors import guide
from anygen.sampling.scoring import rank_images_by_caption, score_sequences
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.sampling.state import Span

__all__ = ["generate", "Prompt", "SampleResult", "GenerationStats", "GenerationConfig", "SamplingSettings",
           "Span", "guide", "score_sequences", "rank_images_by_caption"]
