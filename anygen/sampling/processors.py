"""Logits processing for one modality's rows, and classifier-free guidance.

All functions take logits (n, V) whose illegal ids are already -inf and return new
tensors (never modify their input). Order as in transformers: repetition penalty,
temperature, top-k, top-p, min-p, then draw.
"""

from __future__ import annotations

import torch

from anygen.sampling.settings import SamplingSettings

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on ids already seen (bool (n, V)): positive logits ÷ p, negative × p."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def gate_keep(logits: torch.Tensor, col: int, threshold: float) -> torch.Tensor:
    """Forbid `<keep>` (column `col`) in rows where its probability is below `threshold`.

    Greedy decoding takes `<keep>` whenever it beats every single code, even when a change is
    more likely overall (P(keep) 0.4 against codes 0.35 + 0.25). With threshold 0.5 the
    sampler first decides "keep or change" by the model's probability, then which code.
    """
    p_keep = logits.softmax(-1)[:, col]  # (n,)
    drop = torch.zeros_like(logits, dtype=torch.bool)
    drop[:, col] = p_keep < threshold
    return logits.masked_fill(drop, NEG_INF)


def warp(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p (greedy settings return the logits unchanged)."""
    if s.is_greedy:
        return logits
    if s.temperature != 1.0:
        logits = logits / s.temperature
    vocab = logits.shape[-1]
    if 0 < s.top_k < vocab:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > s.top_p  # mass before this id already exceeds p; keeps the top id
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    if s.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < s.min_p * probs.amax(-1, keepdim=True), NEG_INF)
    return logits


def draw(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """(n, V) warped logits -> (n,) ids: argmax when greedy, else one multinomial draw per row."""
    if s.is_greedy:
        return logits.argmax(-1)
    return sample_categorical(logits.softmax(-1), generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (n, V) probabilities by inverting the CDF with one uniform number.

    Same distribution as `torch.multinomial(probs, 1)`, which on CPU draws V exponentials per
    row (about a tenth of a decode step at the shapes model's size). Ids of probability 0
    are never drawn: u stays strictly below the total mass.
    """
    cdf = probs.cumsum(-1)  # (n, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    u = u * cdf[:, -1:] * (1.0 - 1e-6)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def guide(logits: torch.Tensor, rows: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """Chained classifier-free guidance in log-probability space.

    logits (R, V) of all rows; rows (G, K+1) indexes, per guided prompt, its conditional
    row then K rows that each drop more conditioning (plain CFG: [cond, null]; editing as
    InstructPix2Pix: [image+text, image only, null]). With lp = log_softmax:

        out = cond + sum_k (s_k - 1) * (lp[k-1] - lp[k])            (G, V)

    which is lp_null + s_1 (lp_cond - lp_null) for K = 1 and
    lp_null + s_I (lp_img - lp_null) + s_T (lp_full - lp_img) for K = 2 (s_T = s_1, s_I = s_2),
    up to a per-row constant that sampling ignores. Every scale 1 returns `cond` bit for bit.
    """
    lp = logits.log_softmax(-1)
    out = logits[rows[:, 0]]
    for k, s in enumerate(scales, start=1):
        if s != 1.0:
            out = out + (s - 1.0) * (lp[rows[:, k - 1]] - lp[rows[:, k]])
    return out
