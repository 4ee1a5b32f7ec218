"""Speculative Jacobi decoding (SJD) of image codes: several codes per forward, the same samples.

Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding". Inside an image span the sampler keeps a window of draft codes
after the last committed one and feeds `[committed, draft_1 .. draft_n]` in one forward
(`decoder.extend`), which gives the distribution p_j of every position of the window given the
drafts before it. Draft j, drawn from a proposal q_j, is accepted with probability
min(1, p_j(x) / q_j(x)); the first rejected one is replaced by a draw from the residual
max(0, p_j - q_j) (normalised), and if every draft passes, one more code is drawn from the
distribution after the last. By the speculative-sampling argument each committed code is a draw
from p_j exactly, so the images follow the same distribution as one code per forward; with greedy
settings a draft passes only if it is the argmax, so the codes are exactly the greedy ones.

The drafts of the next forward are the Jacobi update: the positions after the new committed code
take draws from this forward's p (conditioned on the old drafts), positions beyond them draws
from the last p, and the first window of a span the committed code repeated (the first code of
the range after `<grid>`): a point-mass proposal. Any proposal keeps the samples exact; a good one
only raises acceptance.

A forward over a window computes rows × window tokens, so where one code per forward is bound by
fixed costs (CPU decoding of small models) a window is nearly free while a wide batch's is not:
`sjd_window` is the tokens per forward over all rows of the batch, guidance rows included, and each
row's window is `sjd_window // rows` (`window_per_row`); a batch with fewer than `MIN_ROW_WINDOW`
per row decodes one code per forward.

Rows of a batch share the cache columns (left padding, see backends.py), so every row commits the
same number of codes per forward: the fewest any row accepted, plus one (a row that accepted more
commits its accepted drafts; each committed code is still an exact draw). A row's samples
therefore depend on the rows beside it (not their distribution); greedy rows do not. SJD's
random numbers come from a per-row stream of their own (`SJD_STREAM`), so seeded runs repeat.

Guidance, the grammar's masks, `<keep>` (and its threshold) and an edit's copied positions act
on every position of the window exactly as on one step (`RowState.code_window` says what `next()`
would for each). Text, audio and the delimiters stay one token per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from anygen.sampling.processors import gate_keep, guide, row_seed, sample_categorical, warp
from anygen.sampling.settings import GenerationConfig

# XOR-ed into a row's seed (`processors.row_seed`): SJD's acceptance tests and draft draws use a stream
# apart from the one `RowUniforms` draws codes with, so the two never reuse the same numbers.
SJD_STREAM = 0x5D1ACCE97E57A11D


# SJD runs only where each row's window holds at least this many codes: with fewer, the drafts a
# window accepts do not pay for the wider forward (the bundled model on one CPU thread, 8 rows × 2
# codes: 21 ms per image against 18 ms one code per forward; 4 rows × 4: even).
MIN_ROW_WINDOW = 4


def window_per_row(cfg: GenerationConfig, rows: int) -> int:
    """Each row's window when a batch of `rows` rows (guidance rows included) shares `cfg.sjd_window` tokens
    per forward; 0 (SJD does not run) when that is under `MIN_ROW_WINDOW` or the window itself."""
    window = cfg.sjd_window // rows
    return window if window >= min(MIN_ROW_WINDOW, cfg.sjd_window) else 0


def add_counts(tested: list, accepted: list, more_tested, more_accepted) -> None:
    """Add per-offset draft counts (`more_tested[j]`, `more_accepted[j]`) into `tested`/`accepted`, growing them."""
    for j, (n_t, n_a) in enumerate(zip(more_tested, more_accepted)):
        if j == len(tested):
            tested.append(0)
            accepted.append(0)
        tested[j] += n_t
        accepted[j] += n_a


@dataclass
class JacobiStats:
    """Forwards over windows, and draft outcomes by offset in the window: `tested[j]` drafts at offset
    j + 1 were tested, `accepted[j]` of them passed."""

    forwards: int = 0
    tested: list = field(default_factory=list)
    accepted: list = field(default_factory=list)


class ImageJacobi:
    """SJD for one batch of the engine (`engine._sample`): B conditional rows, their guidance rows.

    follow      which conditional row each batch row copies its tokens from (the engine's)
    chain_rows  (G, K+1) guidance chains, or None; chain_of: conditional row -> chain index
    first       the call's index of the batch's first prompt (seeds its rows' streams)
    """

    def __init__(self, cfg: GenerationConfig, grammar, B: int, first: int, follow: list[int], chain_rows,
                 chain_of: dict, device):
        self.window = window_per_row(cfg, len(follow))
        self.settings, self.scales = cfg.image, cfg.guidance_scales
        self.greedy = cfg.image.is_greedy
        self.B, self.follow, self.chain_rows, self.chain_of = B, follow, chain_rows, chain_of
        self.illegal = ~grammar.masks  # (M, V)
        self.any_mask, self.pad, self.keep = grammar.ANY, grammar.pad, grammar.keep
        masks = [grammar.image_codes, grammar.image_codes_keep]
        spans = [(grammar.col_lo[m], grammar.col_hi[m]) for m in masks if grammar.col_hi[m] > grammar.col_lo[m]]
        self.lo = min((a for a, _ in spans), default=0)
        self.hi = max((b for _, b in spans), default=0)
        self.device = device
        self.gens = None
        if cfg.seed is not None:
            self.gens = [torch.Generator().manual_seed(row_seed(cfg.seed, first + i) ^ SJD_STREAM) for i in range(B)]
        self.stats = JacobiStats()

    # -- eligibility ------------------------------------------------------------------------
    def windows(self, states) -> list | None:
        """Per row, `code_window` after its last committed code (None for finished rows), when every
        unfinished row has at least one draft position and one more code after it; else None."""
        out, any_open = [], False
        for s in states:
            if s.done:
                out.append(None)
                continue
            w = s.code_window(self.window)
            if len(w) < 2:
                return None
            out.append(w)
            any_open = True
        return out if any_open else None

    # -- the loop ---------------------------------------------------------------------------
    def run(self, decoder, states, tokens: list[int], commit: Callable[[list[int]], None],
            check: Callable[[torch.Tensor], None]) -> list[int]:
        """Sample codes while every row is inside an image span; returns the last committed ids.

        `tokens` are the ids last committed (pushed into `states`, not yet fed to `decoder`); the
        returned ids are too. `commit(ids)` records one id per conditional row (the engine's push).
        """
        B, W, lo, hi = self.B, self.window, self.lo, self.hi
        C = hi - lo
        carry = None  # (drafts (B, k), their proposal probability (B, k), proposals (B, k, C) or None)
        last = None  # the window's last distribution (B, C) (greedy: its argmax (B,))
        while True:
            wins = self.windows(states)
            if wins is None:
                return tokens
            d = min(W - 1, min(len(w) - 1 for w in wins if w is not None))
            u = self._uniforms(3 * W + 1)  # fill draws | acceptance tests | residual | next drafts
            drafts, q_draft, proposals = self._drafts(carry, last, tokens, d, u[:, :W])
            # forced positions (finished rows, an edit's copied cells) are drafted as themselves
            idle = [(self.any_mask, self.pad, False)] * (d + 1)
            mask_idx, forced, guided = (torch.tensor(x) for x in zip(*[e for w in wins for e in (w or idle)[:d + 1]]))
            mask_idx, forced, guided = mask_idx.view(B, -1), forced.view(B, -1), guided.view(B, -1)
            is_forced = forced >= 0
            drafts = torch.where(is_forced[:, :d], forced[:, :d], drafts)

            feed = torch.cat([torch.tensor(tokens, dtype=torch.long)[:, None], drafts], 1)  # (B, d+1)
            logits = decoder.extend(feed[self.follow].to(self.device), lo, hi)  # (R, d+1, C)
            self.stats.forwards += 1
            check(logits)
            x = self._targets(logits, mask_idx, guided)  # (B, d+1, C) processed logits

            # ---- verify the drafts ----------------------------------------------------------
            cols = (drafts - lo).clamp(0, max(C - 1, 0)).to(x.device)
            legal_col = ((drafts >= lo) & (drafts < hi)).to(x.device)
            if self.greedy:
                best = x.argmax(-1).cpu() + lo  # (B, d+1)
                ok = drafts == best[:, :d]
                probs = None
            else:
                probs = x.softmax(-1)  # (B, d+1, C)
                p_draft = probs[:, :d].gather(-1, cols[..., None])[..., 0] * legal_col  # (B, d)
                ok = (u[:, W:W + d].to(x.device) * q_draft.to(x.device) < p_draft).cpu()
            ok = ok | is_forced[:, :d]
            n_ok = ok.long().cumprod(1).sum(1)  # (B,) drafts accepted per row
            open_rows = [r for r, w in enumerate(wins) if w is not None]
            m = int(n_ok[open_rows].min())
            reached = (n_ok[open_rows, None] >= torch.arange(d + 1)).sum(0).tolist()  # rows testing offset j
            add_counts(self.stats.tested, self.stats.accepted, reached[:d], reached[1:])

            # ---- the code after the accepted drafts ---------------------------------------------
            if self.greedy:
                nxt = best[:, m]
            else:
                target = probs[:, m]
                if m < d:  # a rejected draft: draw from the residual max(0, p - q)
                    residual = (target - proposals[:, m].to(x.device)).clamp(min=0)
                    empty = residual.sum(-1, keepdim=True) <= 0  # p == q up to rounding: never rejected
                    target = torch.where(empty, target, residual)
                nxt = sample_categorical(target, uniforms=u[:, W + d].to(x.device)).cpu() + lo
            if m < d:
                nxt = torch.where(n_ok > m, drafts[:, m], nxt)
            nxt = torch.where(is_forced[:, m], forced[:, m], nxt)

            for j in range(m):
                commit(drafts[:, j].tolist())
            tokens = nxt.tolist()
            commit(tokens)
            decoder.keep(1 + m)

            # ---- the next drafts: Jacobi update of the positions after the committed code --------
            rest = slice(m + 1, d + 1)
            if self.greedy:
                carry = (best[:, rest], None, None)
                last = best[:, d]
            else:
                new = sample_categorical(probs[:, rest].reshape(-1, C),
                                         uniforms=u[:, 2 * W + 1:2 * W + 1 + d - m].reshape(-1).to(x.device))
                new = new.view(B, d - m)
                carry = (new.cpu() + lo, probs[:, rest].gather(-1, new[..., None])[..., 0].cpu(), probs[:, rest].cpu())
                last = probs[:, d].cpu()

    # -- helpers ----------------------------------------------------------------------------
    def _uniforms(self, n: int) -> torch.Tensor:
        if self.gens is None:
            return torch.rand(self.B, n)
        return torch.stack([torch.rand(n, generator=g) for g in self.gens])

    def _drafts(self, carry, last, tokens, d, u):
        """d drafts per row (B, d), each one's probability under its proposal (B, d), the proposals
        (B, d, C) (None when greedy): the carried Jacobi drafts, then draws from `last`, or at a span's
        first window the committed code repeated (a point mass; never `<grid>`, which would move positions)."""
        B, lo, C = self.B, self.lo, self.hi - self.lo
        drafts = torch.empty(B, 0, dtype=torch.long)
        q = torch.empty(B, 0)
        props = torch.empty(B, 0, C)
        if carry is not None:
            drafts, q, props = carry[0][:, :d], carry[1], carry[2]
            if not self.greedy:
                q, props = q[:, :d], props[:, :d]
        k = d - drafts.shape[1]
        if k > 0:
            if last is None:
                fill = torch.tensor(tokens, dtype=torch.long)[:, None].expand(B, k)
                fill = torch.where((fill >= lo) & (fill < lo + C), fill, lo)  # after <grid>: any code
                fill_q = torch.ones(B, k)
                in_range = (fill >= lo) & (fill < lo + C)
                fill_p = torch.zeros(B, k, C)
                fill_p.scatter_(-1, (fill - lo).clamp(0, max(C - 1, 0))[..., None], in_range[..., None].float())
            elif self.greedy:
                fill = last[:, None].expand(B, k)
            else:
                idx = sample_categorical(last.repeat_interleave(k, 0), uniforms=u[:, :k].reshape(-1)).view(B, k)
                fill, fill_q = idx + lo, last.gather(-1, idx)
                fill_p = last[:, None].expand(B, k, C)
            drafts = torch.cat([drafts, fill], 1)
            if not self.greedy:
                q, props = torch.cat([q, fill_q], 1), torch.cat([props, fill_p], 1)
        return drafts, (None if self.greedy else q), (None if self.greedy else props)

    def _targets(self, logits, mask_idx, guided):
        """The conditional rows' logits (B, n, C) as one step would sample them: guidance where the
        position is guided, the grammar's mask, the `<keep>` gate and the image settings' warping."""
        B, lo, hi = self.B, self.lo, self.hi
        x = logits[:B]
        if self.chain_rows is not None:
            g_all = guide(logits, self.chain_rows, self.scales)  # (G, n, C)
            cond = self.chain_rows[:, 0]
            flags = guided[cond.cpu()]  # (G, n)
            if len(cond) == B and bool(flags.all()):  # every prompt guided at every position
                x = g_all
            else:
                x = x.index_copy(0, cond, torch.where(flags.to(x.device)[..., None], g_all, x[cond]))
        x = x.masked_fill(self.illegal[mask_idx.to(x.device), lo:hi], float("-inf"))
        n = x.shape[1]
        flat = x.reshape(B * n, -1)
        s = self.settings
        if self.keep is not None and lo <= self.keep < hi and s.keep_threshold > 0:
            flat = gate_keep(flat, self.keep - lo, s.keep_threshold)
        return warp(flat, s).view(B, n, -1)
