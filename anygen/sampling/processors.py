"""Logits processing for one modality's rows, classifier-free guidance, and per-row random numbers.

All functions take logits (n, V) whose illegal ids are already -inf and return new
tensors (never modify their input). Order as in transformers: repetition penalty,
temperature, top-k, top-p, min-p, then draw. With finite logits and validated
`SamplingSettings` no step produces NaN: temperature scales logits shifted to a row
maximum of 0, and guidance adds logit differences.

Seeded sampling gives every batch row its own `torch.Generator`, seeded by `row_seed(seed, row)`,
so a row's draws depend on its seed and index only, never on the rows beside it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from anygen.sampling.settings import SamplingSettings

NEG_INF = float("-inf")
# Row r of a batch sampled with seed s draws from a generator seeded with (s + r * ROW_SEED_STRIDE) mod 2^64.
# Row 0 keeps the seed itself (a batch of one samples as before), and the stride is 2^64 / golden ratio
# (splitmix64's increment): odd, so rows 0..2^32-1 get distinct seeds even where a generator keeps only
# the low 32 bits (CPU mt19937), and far from small integers, so row 1 of seed s is not row 0 of seed s+1.
ROW_SEED_STRIDE = 0x9E3779B97F4A7C15


def row_seed(seed: int, row: int) -> int:
    """The generator seed of batch row `row` under `seed` (see ROW_SEED_STRIDE)."""
    return (seed + row * ROW_SEED_STRIDE) % 2 ** 64


def row_generator(seed: int, row: int) -> torch.Generator:
    """A CPU generator for batch row `row` under `seed`."""
    return torch.Generator().manual_seed(row_seed(seed, row))


class RowUniforms:
    """Uniform numbers in [0, 1) for sampling, one stream per batch row.

    Row `rows[i]`'s k-th number is the k-th `torch.rand` draw of `row_generator(seed, rows[i])`
    (float32, drawn up front: `n_draws` per row, one per sampled token at most), so what a row
    samples does not depend on which rows share its batch or on how many draws they take.
    """

    def __init__(self, seed: int, rows: Sequence[int], n_draws: int, device: torch.device | str = "cpu"):
        table = torch.stack([torch.rand(n_draws, generator=row_generator(seed, r)) for r in rows])
        self.table = table.to(device)  # (B, n_draws)
        self.taken = torch.zeros(len(rows), dtype=torch.long, device=device)  # numbers used per row

    def take(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The next number of each of `rows` (batch indices; None: every row), (n,), advancing those rows."""
        if rows is None:
            u = self.table.gather(1, self.taken[:, None])[:, 0]
            self.taken += 1
            return u
        u = self.table[rows, self.taken[rows]]
        self.taken[rows] += 1
        return u


def scale_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature up to a per-row constant, finite for any temperature > 0: each row is
    shifted to a maximum of 0 first, so the quotient cannot overflow to inf (and inf - inf to NaN)."""
    return (logits - logits.amax(-1, keepdim=True)) / temperature


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
    """Temperature, top-k, top-p, min-p (greedy settings return the logits unchanged).

    The result equals the transformers warpers' up to a per-row constant (see `scale_by_temperature`)."""
    if s.is_greedy:
        return logits
    if s.temperature != 1.0:
        logits = scale_by_temperature(logits, s.temperature)
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


def draw(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None = None,
         uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """(n, V) warped logits -> (n,) ids: argmax when greedy, else one draw per row (from `uniforms`
    (n,) when given, else from `generator`)."""
    if s.is_greedy:
        return logits.argmax(-1)
    return sample_categorical(logits.softmax(-1), generator, uniforms)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None,
                       uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of (n, V) probabilities by inverting the CDF with one uniform number.

    Same distribution as `torch.multinomial(probs, 1)`, which on CPU draws V exponentials per
    row (about a tenth of a decode step at the shapes model's size). Ids of probability 0
    are never drawn: u stays strictly below the total mass. The uniform numbers are
    `uniforms` (n,) in [0, 1) when given, else drawn from `generator`.
    """
    cdf = probs.cumsum(-1)  # (n, V)
    if uniforms is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    else:
        u = uniforms.to(cdf.dtype).view(-1, 1)
    u = u * cdf[:, -1:] * (1.0 - 1e-6)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def guide(logits: torch.Tensor, rows: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """Chained classifier-free guidance in log-probability space.

    logits (R, ..., V) of all rows; rows (G, K+1) indexes, per guided prompt, its conditional
    row then K rows that each drop more conditioning (plain CFG: [cond, null]; editing as
    InstructPix2Pix: [image+text, image only, null]). With lp = log_softmax:

        out = cond + sum_k (s_k - 1) * (lp[k-1] - lp[k])            (G, ..., V)

    which is lp_null + s_1 (lp_cond - lp_null) for K = 1 and
    lp_null + s_I (lp_img - lp_null) + s_T (lp_full - lp_img) for K = 2 (s_T = s_1, s_I = s_2),
    up to a per-row constant that sampling ignores. lp and the logits differ by a per-row constant
    too, so the logits are used as they are (no normalisation per step): K = 1 is one
    `lerp(null, cond, s)`. Every scale 1 returns `cond` bit for bit.
    """
    picked = logits[rows.T.reshape(-1)].view(rows.shape[1], rows.shape[0], *logits.shape[1:])  # (K+1, G, ..., V)
    out = picked[0]
    if len(scales) == 1:
        return out if scales[0] == 1.0 else torch.lerp(picked[1], out, scales[0])
    for k, s in enumerate(scales, start=1):
        if s != 1.0:
            out = out + (s - 1.0) * (picked[k - 1] - picked[k])
    return out
