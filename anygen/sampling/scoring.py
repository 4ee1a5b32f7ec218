"""Sequence log-likelihoods under the model, for re-ranking (best-of-N by caption likelihood).

`score_sequences` sums log p(token | prefix) over the marked target positions of each
sequence, batched with right padding (one full forward per batch, no cache).
`rank_images_by_caption` builds `before + image span + between + caption + after` for N
candidate image spans and scores the caption (and `after`) given each image: the
candidate the model finds most consistent with the prompt text ranks first.
"""

from __future__ import annotations

from typing import Sequence

import torch

from anygen.model.positions import ImagePositions
from anygen.sampling.backends import resolve_lm
from anygen.vocab import Vocab


@torch.inference_mode()
def score_sequences(model, sequences: Sequence[Sequence[int]], target_mask: Sequence[Sequence[bool]],
                    batch_size: int = 16, pad_id: int = 0, vocab: Vocab | None = None) -> torch.Tensor:
    """(N,) float64 sums of log p(seq[t] | seq[:t]) over t with target_mask[t] True (t >= 1).

    target_mask[i] has the length of sequences[i]; position 0 cannot be a target. `vocab`
    places the positions of a model trained with image-aligned positions.
    """
    lm = resolve_lm(model)
    positions = ImagePositions.of(lm, vocab)
    if len(sequences) != len(target_mask):
        raise ValueError(f"{len(sequences)} sequences but {len(target_mask)} target masks")
    device = lm.lm_head.weight.device if hasattr(lm, "lm_head") else next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    out = torch.zeros(len(sequences), dtype=torch.float64)
    try:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a batch
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            T = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
            attn = torch.zeros(len(idx), T, dtype=torch.long)
            target = torch.zeros(len(idx), T, dtype=torch.bool)
            for r, i in enumerate(idx):
                seq, mask = list(sequences[i]), list(target_mask[i])
                if len(seq) != len(mask):
                    raise ValueError(f"sequence {i}: {len(seq)} ids but {len(mask)} target flags")
                if mask and mask[0]:
                    raise ValueError(f"sequence {i}: position 0 has no prefix and cannot be a target")
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attn[r, : len(seq)] = 1
                target[r, : len(seq)] = torch.tensor(mask, dtype=torch.bool)
            ids, attn, target = ids.to(device), attn.to(device), target.to(device)
            position_ids = positions.align(ids, (attn.cumsum(-1) - 1).clamp(min=0))  # (b, T)
            logits = lm(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits[:, :-1].float()
            logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (b, T-1)
            sums = (logp * target[:, 1:]).double().sum(-1).cpu()
            for r, i in enumerate(idx):
                out[i] = sums[r]
    finally:
        if was_training:
            lm.train()
    return out


def rank_images_by_caption(model, image_spans: Sequence[Sequence[int]], caption: Sequence[int],
                           before: Sequence[int] = (), between: Sequence[int] = (), after: Sequence[int] = (),
                           batch_size: int = 16, pad_id: int = 0, vocab: Vocab | None = None
                           ) -> tuple[list[int], torch.Tensor]:
    """Best-of-N re-ranking: order of candidates (best first) and their log p(caption + after | image).

    image_spans  N candidates, each `<boi> <grid> codes <eoi>` ids (e.g. `Span.ids`)
    caption      the prompt text's ids, scored given each image
    before / between / after   the caption task's framing, e.g. before=[<bos>], after=[<eos>]
    """
    seqs, masks = [], []
    for span in image_spans:
        head = list(before) + list(span) + list(between)
        tail = list(caption) + list(after)
        seqs.append(head + tail)
        masks.append([False] * len(head) + [True] * len(tail))
    scores = score_sequences(model, seqs, masks, batch_size=batch_size, pad_id=pad_id, vocab=vocab)
    order = sorted(range(len(seqs)), key=lambda i: -float(scores[i]))
    return order, scores
