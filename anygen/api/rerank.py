"""Best-of-N: sample several candidates, keep the one a score likes best.

`best_of` is the one implementation every strategy uses (pictures, edits, story steps).
`Verifier` holds the model-likelihood scores it ranks by: how likely the prompt is as a
caption of a candidate picture (`image_to_text`), and how likely an instruction is as the
description of a candidate edit (`describe_edit`, which the model must have been trained with).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch

from anygen.sampling.scoring import rank_images_by_caption, score_sequences

C = TypeVar("C")


def best_of(sample: Callable[[int], list[list[C]]], score: Callable[[int, list[C]], Sequence[Any]],
            n: int) -> list[C | None]:
    """Per row, the best of the candidates `sample(n)` draws (rows sampled together).

    `sample(n)` returns one list of candidates per row (unfinished ones left out);
    `score(row, candidates)` returns one sortable key per candidate, higher is better. A row
    with one candidate is not scored; the first of equal keys wins; a row with none gives None.
    """
    picked: list[C | None] = []
    for row, candidates in enumerate(sample(n)):
        if len(candidates) <= 1:
            picked.append(candidates[0] if candidates else None)
            continue
        keys = score(row, candidates)
        picked.append(candidates[max(range(len(candidates)), key=lambda i: keys[i])])
    return picked


class Verifier:
    """The model's own likelihoods of text given pictures, for ranking candidates."""

    def __init__(self, session):
        self.session = session

    def caption_scores(self, candidates: Sequence[torch.Tensor], caption: Sequence[int]) -> list[float]:
        """log p(caption <eos> | image) per candidate image (codes (H, W))."""
        s, v = self.session, self.session.vocab
        _, scores = rank_images_by_caption(s.model, [s.tokenizer.image_span(c) for c in candidates], caption,
                                           before=[v.bos], after=[v.eos], pad_id=v.pad, vocab=v)
        return [float(x) for x in scores]

    def edit_scores(self, source: torch.Tensor, targets: Sequence[torch.Tensor], instructions: Sequence[str],
                    per_token: bool = False) -> list[float]:
        """log p(instruction <eos> | source, target) per (target, instruction) pair under `describe_edit`;
        `per_token` divides by the answer's length (to compare different instructions)."""
        s = self.session
        seqs, masks, lengths = [], [], []
        for target, instruction in zip(targets, instructions):
            answer = s.tokenizer.encode_text(instruction) + [s.vocab.eos]
            prompt = s.prompt("describe_edit", image=source, target=target)
            seqs.append(prompt + answer)
            masks.append([False] * len(prompt) + [True] * len(answer))
            lengths.append(len(answer) if per_token else 1)
        scores = score_sequences(s.model, seqs, masks, pad_id=s.vocab.pad, vocab=s.vocab)
        return [float(x) / n for x, n in zip(scores, lengths)]
