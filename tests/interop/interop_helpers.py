"""Shared by the adapter tests: the sampler seam that records what anygen sampled, and the model ids
an adapter feeds for anygen ids."""

from anygen.interop.base import RowExpander
from anygen.sampling.engine import generate


class Recorder:
    """The sampler seam: runs anygen's sampler and keeps its prompts and results."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, vocab, prompts, cfg, callback=None):
        results = generate(model, vocab, prompts, cfg, callback=callback)
        self.calls.append((prompts, results))
        return results


def expand(g, ids):
    """anygen ids -> the model ids the adapter feeds for them."""
    row = RowExpander(g.model.idmap)
    return [m for t in ids for m in row.feed(int(t))]
