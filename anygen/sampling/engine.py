"""The batched interleaved sampler: prompts in, ids and span boundaries out (no pixels).

    results = generate(model, vocab, prompts, GenerationConfig(...), uncond_prompts=None, callback=None)

Each prompt is a row with its own grammar state (`RowState`); all rows advance one
token per step in one batched forward over a KV cache (prefill once). Prompts are
left-padded, so every row writes the same cache column; position ids and the padding
mask keep each row's logits equal to the row run alone.

Guidance: a prompt may bring a chain of guidance rows (`Prompt.uncond`), each dropping
more conditioning: `[null]` for classifier-free guidance, `[image_only, null]` for
InstructPix2Pix editing. They are extra rows of the same batch with their own prompts
and caches, fed the conditional row's tokens; inside image/audio spans (within
`guidance_interval`) the conditional row samples from `processors.guide`. Unconditional
prompts are the caller's: e.g. `[<bos>, <null>]` where the conditional prompt is
`[<bos>, caption...]`, with the same forced prefix after them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from anygen.errors import AnygenError
from anygen.model.positions import ImagePositions
from anygen.sampling.backends import decode_bytes_per_row, free_memory, make_decoder, resolve_lm
from anygen.sampling.jacobi import ImageJacobi, add_counts, window_per_row
from anygen.sampling.processors import RowUniforms, apply_repetition_penalty, draw, gate_keep, guide, warp
from anygen.sampling.settings import GenerationConfig
from anygen.sampling.state import AUDIO, IMAGE, TEXT, Grammar, RowState, Span
from anygen.vocab import Vocab

# The decoder memory (mostly KV cache, which FastDecoder allocates whole) of one batch of rows; larger
# requests are sampled in chunks of whole prompts. 1 GiB holds about 1,800 of the bundled model's
# text->image rows (570 KB each), so ordinary batches stay one chunk, while n=10000 samples no longer
# allocate 6 GB at once.
MAX_CHUNK_CACHE_BYTES = 1 << 30
# A chunk takes at most this share of the memory free when sampling starts: the decode's activations,
# the prefill's attention and the caller's own data need the rest.
FREE_MEMORY_SHARE = 0.5


@dataclass
class Prompt:
    """One row to generate.

    ids       the conditional prompt (must be non-empty, e.g. starts with <bos>)
    uncond    guidance chain: prompts with progressively less conditioning (see module doc);
              one scale per entry in `GenerationConfig.guidance_scales`
    force     ids the output must start with (`[<boi>]` for text→image; `[<boa>]` for speech)
    source    editing: the H*W image-code ids of the source image; the first image span
              uses its grid, and positions where `editable` is False copy the source id
    editable  editing: H*W booleans (True = may change); None = all may change
    """

    ids: Sequence[int]
    uncond: Sequence[Sequence[int]] = ()
    force: Sequence[int] = ()
    source: Sequence[int] | None = None
    editable: Sequence[bool] | None = None


@dataclass
class SampleResult:
    """Generated ids of one row (prompt excluded, forced prefix included) and its segments."""

    ids: list[int]
    spans: list[Span]
    finish_reason: str  # "eos", "image" (`stop_at_image`: it drew <boi>) or "length"

    def images(self) -> list[Span]:
        return [s for s in self.spans if s.kind == "image"]

    def audios(self) -> list[Span]:
        return [s for s in self.spans if s.kind == "audio"]


@dataclass
class GenerationStats:
    """Wall-clock split of the last `generate` call (seconds) and what its decoding took."""

    setup_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0  # sampling steps (one id per row each; speculative decoding commits more per step)
    forwards: int = 0  # decoder forward passes, the prefill included
    sjd_tested: list = field(default_factory=list)  # speculative decoding: drafts tested at window offset j + 1
    sjd_accepted: list = field(default_factory=list)  # ... and how many of them were accepted
    rows: int = 0  # batch rows including guidance rows
    chunks: int = 0  # batches the prompts were sampled in (see `generate`'s memory note)
    backend: str = ""
    first_span_s: dict = field(default_factory=dict)  # kind -> time from start until the first such span completed


def _as_prompt(p, uncond) -> Prompt:
    if isinstance(p, Prompt):
        prompt = p
    else:
        prompt = Prompt(ids=list(p))
    if uncond is not None:
        chain = list(uncond)
        if chain and not isinstance(chain[0], (list, tuple)) and not torch.is_tensor(chain[0]):
            chain = [chain]  # a single unconditional prompt
        prompt = Prompt(prompt.ids, [list(map(int, c)) for c in chain], prompt.force, prompt.source, prompt.editable)
    return prompt


def _context_length(lm) -> int | None:
    return getattr(getattr(lm, "config", None), "max_position_embeddings", None)


@torch.inference_mode()
def generate(model, vocab: Vocab, prompts: Sequence[Sequence[int] | Prompt], config: GenerationConfig | None = None,
             uncond_prompts: Sequence | None = None, callback: Callable[[int, Span], None] | None = None, *,
             force: Sequence[int] = (), stats: GenerationStats | None = None,
             max_chunk_bytes: int | None = None) -> list[SampleResult]:
    """Sample a continuation for every prompt; see the module doc.

    prompts          list of id lists or `Prompt`s
    uncond_prompts   optional, aligned with prompts: None (row unguided), an id list (one
                     unconditional row) or a list of id lists (a guidance chain)
    callback         `callback(row, span)` as each segment of a row completes
    force            ids every row's output starts with (added to each Prompt's own `force`)
    stats            filled with the timing split when given
    max_chunk_bytes  decoder memory (KV cache) one chunk of prompts may take; default
                     MAX_CHUNK_CACHE_BYTES, and at most FREE_MEMORY_SHARE of the free memory

    Seeds: with `config.seed` set, prompt i samples from its own generator, seeded with
    `processors.row_seed(seed, i)`, and its guidance rows draw nothing: a prompt's output
    depends on the seed, its index and its own prompt only, not on the other prompts of the
    batch (the first image of 5 drawn with a seed is the image drawn alone with that seed).
    seed None draws from torch's global generator.

    Memory: a batch whose decoder would need more than the chunk budget is sampled in chunks
    of whole prompts (a prompt with its guidance rows), one after the other; per-prompt
    generators make the results those of one batch. A prompt whose rows alone need more
    memory than is free is refused with the estimate before anything is allocated.
    """
    t_start = time.perf_counter()
    cfg = config or GenerationConfig()
    lm = resolve_lm(model)
    if not prompts:
        raise AnygenError("generate: no prompts given")
    if uncond_prompts is not None and len(uncond_prompts) != len(prompts):
        raise AnygenError(f"generate: {len(uncond_prompts)} unconditional prompts for {len(prompts)} prompts")
    rows = [_as_prompt(p, uncond_prompts[i] if uncond_prompts is not None else None) for i, p in enumerate(prompts)]
    device = lm.lm_head.weight.device if hasattr(lm, "lm_head") else next(lm.parameters()).device

    # ---- each prompt's rows: its conditional row, then its guidance rows -------------------------
    groups: list[list[list[int]]] = []
    for i, r in enumerate(rows):
        group = [list(map(int, r.ids))]
        if r.uncond and cfg.guided:  # every scale 1: guidance is the identity, skip its rows
            if len(r.uncond) != len(cfg.guidance_scales):
                raise AnygenError(f"prompt {i}: {len(r.uncond)} guidance prompts but guidance_scales has "
                                  f"{len(cfg.guidance_scales)} scales (one per guidance prompt)")
            group += [list(map(int, u)) for u in r.uncond]
        for ids in group:
            if not ids:
                raise AnygenError(f"generate: prompt {i} is empty (start it with <bos>)")
            bad = [t for t in ids if not 0 <= t < vocab.size]
            if bad:
                raise AnygenError(f"generate: prompt {i} has id {bad[0]} outside the vocab (size {vocab.size})")
        _check_source(i, r, vocab)
        groups.append(group)
    ctx = _context_length(lm)
    budgets = []
    for i, group in enumerate(groups):
        longest = max(len(ids) for ids in group)
        room = cfg.max_new_tokens if ctx is None else min(cfg.max_new_tokens, ctx - longest)
        if room <= 0:
            raise AnygenError(f"prompt {i} has {longest} tokens, which fills the model's context of {ctx}")
        budgets.append(room)

    if stats is not None:
        vars(stats).update(vars(GenerationStats()))
    results: list[SampleResult] = []
    for lo, hi in _chunks(lm, device, groups, budgets, max_chunk_bytes):
        results += _sample(lm, vocab, cfg, rows[lo:hi], groups[lo:hi], budgets[lo:hi], lo, device, force,
                           callback, stats, t_start)
    return results


def _check_source(i: int, r: Prompt, vocab: Vocab) -> None:
    """An editing prompt's source must fill an image grid of the vocab, and `editable` must match it."""
    if r.source is None:
        return
    n = len(r.source)
    if not any(h * w == n for h, w in vocab.image_grids):
        raise AnygenError(f"generate: prompt {i}: the source has {n} codes, which matches no image grid of "
                          f"the vocab {list(vocab.image_grids)}")
    if r.editable is not None and len(r.editable) != n:
        raise AnygenError(f"generate: prompt {i}: editable has {len(r.editable)} entries for a source of {n} codes")


def _chunks(lm, device, groups, budgets, max_chunk_bytes) -> list[tuple[int, int]]:
    """Consecutive prompt ranges [lo, hi) whose decoder memory fits the chunk budget (whole batch: one range)."""
    prompt_len = max(len(ids) for group in groups for ids in group)
    max_len = prompt_len + max(budgets)
    per_row = decode_bytes_per_row(lm, prompt_len, max_len)
    if per_row is None:  # the model's config does not give its attention shape: one batch
        return [(0, len(groups))]
    free = free_memory(device)
    widest = max(range(len(groups)), key=lambda i: len(groups[i]))
    need = per_row * len(groups[widest])
    if need > free:
        raise AnygenError(f"generate: prompt {widest} needs about {_gib(need)} of decoder memory "
                          f"({len(groups[widest])} rows × {max_len} tokens of KV cache), more than the "
                          f"{_gib(free)} free; shorten the prompt or max_new_tokens")
    budget = min(MAX_CHUNK_CACHE_BYTES if max_chunk_bytes is None else max_chunk_bytes, int(free * FREE_MEMORY_SHARE))
    ranges, lo, used = [], 0, 0
    for i, group in enumerate(groups):
        size = per_row * len(group)
        if i > lo and used + size > budget:
            ranges.append((lo, i))
            lo, used = i, 0
        used += size
    ranges.append((lo, len(groups)))
    return ranges


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def _sample(lm, vocab, cfg, rows, groups, budgets, first, device, force, callback, stats, t_start):
    """Sample one chunk: prompts `first`, `first + 1`, ... of the call (their rows, budgets) in one batch."""
    t_begin = t_start if first == 0 else time.perf_counter()
    B = len(rows)
    # ---- batch rows: B conditional rows first, then every prompt's guidance rows ---------------
    all_ids = [group[0] for group in groups]
    follow = list(range(B))  # which conditional row each batch row copies its tokens from
    chains: list[list[int]] = []  # per guided prompt: [cond row, guidance rows...]
    for i, group in enumerate(groups):
        if len(group) == 1:
            continue
        chain = [i]
        for ids in group[1:]:
            chain.append(len(all_ids))
            all_ids.append(ids)
            follow.append(i)
        chains.append(chain)
    R = len(all_ids)
    L = max(len(ids) for ids in all_ids)
    max_new = max(budgets)

    grammar = Grammar(vocab, cfg, device)
    illegal = ~grammar.masks  # (M, V)
    states = [RowState(grammar, budgets[i], list(force) + list(r.force), r.source, r.editable, prompt=all_ids[i])
              for i, r in enumerate(rows)]
    uniforms = RowUniforms(cfg.seed, range(first, first + B), max_new, device) if cfg.seed is not None else None
    settings = (cfg.text, cfg.image, cfg.audio)
    penalty = cfg.text.repetition_penalty
    seen = None
    if penalty != 1.0:
        seen = torch.zeros(B, vocab.size, dtype=torch.bool, device=device)
        for i in range(B):
            text_ids = [t for t in all_ids[i] if t < vocab.n_text]
            if text_ids:
                seen[i, text_ids] = True
    chain_rows = torch.tensor(chains, device=device) if chains else None  # (G, K+1)
    chain_of = {c[0]: g for g, c in enumerate(chains)}
    scales = cfg.guidance_scales

    ids = torch.full((R, L), vocab.pad, dtype=torch.long)
    n_pad = torch.zeros(R, dtype=torch.long)
    for j, row_ids in enumerate(all_ids):
        ids[j, L - len(row_ids):] = torch.tensor(row_ids)
        n_pad[j] = L - len(row_ids)
    decoder = make_decoder(lm, R, L + max_new, cfg.backend, ImagePositions.of(lm, vocab))
    was_training = lm.training
    lm.eval()
    t_prefill = time.perf_counter()
    col_lo, col_hi = grammar.col_lo, grammar.col_hi
    try:
        # Only the columns some free row may draw are computed (an image step needs the
        # image-code range, not the whole vocabulary; an all-forced step needs none).
        nexts = [s.next() for s in states]
        lo, hi = _window(nexts, col_lo, col_hi)
        logits = decoder.prefill(ids.to(device), n_pad.to(device), lo, hi)  # (R, hi-lo)
        t_decode = time.perf_counter()
        reported = [0] * B
        steps = 0
        expand = R > B
        forwards = 1  # the prefill
        jacobi = (ImageJacobi(cfg, grammar, B, first, follow, chain_rows, chain_of, device)
                  if cfg.parallel == "sjd" and grammar.has_image and window_per_row(cfg, R) else None)

        def commit(tokens: list[int]) -> bool:
            """Push one id per conditional row, report the segments it completes; True when every row is done."""
            all_done = True
            for i, s in enumerate(states):
                s.push(tokens[i])
                if len(s.spans) > reported[i]:
                    for span in s.spans[reported[i]:]:
                        if stats is not None and span.complete and span.kind not in stats.first_span_s:
                            stats.first_span_s[span.kind] = time.perf_counter() - t_start
                        if callback is not None:
                            callback(first + i, span)
                    reported[i] = len(s.spans)
                all_done = all_done and s.done
            if seen is not None and not all_done:
                seen[torch.arange(B, device=device), torch.tensor(tokens, device=device)] = True
            return all_done

        def check(x):
            _check_finite(x, steps, follow, first)

        while True:
            steps += 1
            forced = [n[1] for n in nexts]
            free = [i for i in range(B) if forced[i] < 0]
            if free:
                check(logits)
                tok = _choose(logits, lo, hi, B, nexts, free, illegal, settings, uniforms, seen,
                              chain_rows, chain_of, scales, expand, vocab.keep)
                tokens = [f if f >= 0 else t for f, t in zip(forced, tok)]
            else:
                tokens = forced
            if commit(tokens):
                break
            if jacobi is not None:  # inside image spans: several codes per forward
                tokens = jacobi.run(decoder, states, tokens, commit, check)
                if all(s.done for s in states):
                    break
            nexts = [s.next() for s in states]
            lo, hi = _window(nexts, col_lo, col_hi)
            step_ids = [tokens[f] for f in follow] if expand else tokens
            logits = decoder.step(torch.tensor(step_ids, device=device), lo, hi)
            forwards += 1
    finally:
        if was_training:
            lm.train()
    if stats is not None:
        now = time.perf_counter()
        stats.setup_s += t_prefill - t_begin
        stats.prefill_s += t_decode - t_prefill
        stats.decode_s += now - t_decode
        stats.steps += steps
        stats.forwards += forwards + (jacobi.stats.forwards if jacobi is not None else 0)
        if jacobi is not None:
            add_counts(stats.sjd_tested, stats.sjd_accepted, jacobi.stats.tested, jacobi.stats.accepted)
        stats.rows += R
        stats.chunks += 1
        stats.backend = type(decoder).__name__
    return [SampleResult(s.ids, s.spans, s.finish or "length") for s in states]


def _check_finite(logits: torch.Tensor, step: int, follow: list[int], first: int) -> None:
    """Refuse logits holding NaN or +inf (sampling would silently pick the last column or an arbitrary id)."""
    if math.isfinite(logits.amax().item()):  # NaN and +inf propagate to the maximum: one reduction per step
        return
    row = int((~torch.isfinite(logits.amax(-1))).nonzero()[0, 0])
    raise AnygenError(f"generate: the model's logits are not finite (NaN or inf) at step {step}, "
                      f"prompt {first + follow[row]}: its weights or inputs are broken")


def _window(nexts, col_lo, col_hi) -> tuple[int, int]:
    """The id columns [lo, hi) covering every legal id of the rows not forced next step."""
    lo = hi = 0
    for mask, forced, _, _ in nexts:
        if forced < 0:
            if hi == lo:
                lo, hi = col_lo[mask], col_hi[mask]
            else:
                lo, hi = min(lo, col_lo[mask]), max(hi, col_hi[mask])
    return lo, hi


def _choose(logits, lo, hi, B, nexts, free, illegal, settings, uniforms, seen, chain_rows, chain_of, scales, expand,
            keep=None):
    """Ids for the rows not forced this step (a list of B ints; forced rows get placeholders).

    logits (R, hi-lo) hold the columns [lo, hi) of the vocabulary. Only free rows take a number
    from `uniforms` (a `RowUniforms`, or None for torch's global generator).
    """
    x = logits[:B] if expand else logits  # (B, W) conditional rows
    if chain_rows is not None:
        active = [g for i, g in chain_of.items() if nexts[i][3]]
        if len(active) == B:  # every prompt guided now: chain g's conditional row is row g
            x = guide(logits, chain_rows, scales)
        elif active:
            rows = chain_rows if len(active) == len(chain_of) else chain_rows[active]
            x = x.index_copy(0, rows[:, 0], guide(logits, rows, scales))
    if B == 1:
        x = x.masked_fill(illegal[nexts[0][0], lo:hi], float("-inf"))
    else:
        idx = torch.tensor([n[0] for n in nexts], device=x.device)
        x = x.masked_fill(illegal[idx, lo:hi], float("-inf"))
    if seen is not None:
        seen = seen[:, lo:hi]
    keep_col = keep - lo if keep is not None and lo <= keep < hi else None

    def pick(xs, m, seen_rows, rows):  # (n, W) logits of modality m's rows (batch indices, None: all) -> ids
        s = settings[m]
        if m == TEXT and seen_rows is not None:
            xs = apply_repetition_penalty(xs, seen_rows, s.repetition_penalty)
        if m == IMAGE and keep_col is not None and s.keep_threshold > 0:
            xs = gate_keep(xs, keep_col, s.keep_threshold)
        u = uniforms.take(rows) if uniforms is not None and not s.is_greedy else None
        return (draw(warp(xs, s), s, None, u) + lo).tolist()

    modalities = {nexts[i][2] for i in free}
    if len(modalities) == 1 and len(free) == B:
        return pick(x, modalities.pop(), seen, None)
    out = [0] * B
    for m in (TEXT, IMAGE, AUDIO):
        rows = [i for i in free if nexts[i][2] == m]
        if not rows:
            continue
        idx = torch.tensor(rows, device=x.device)
        for i, t in zip(rows, pick(x[idx], m, seen[idx] if seen is not None else None, idx)):
            out[i] = t
    return out
