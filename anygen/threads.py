"""Torch's CPU thread count, from `ANYGEN_THREADS` or a `threads` option.

Counts above this machine's CPU count are clamped to it (libgomp crashes on absurd counts);
a value that is not a whole number >= 1 is a one-line AnygenError naming where it came from.
"""

from __future__ import annotations

import os

from anygen.errors import AnygenError

THREADS_ENV = "ANYGEN_THREADS"  # sets the thread count for every verb


def parse_threads(value, what: str) -> int:
    """`value` (an int, or text as in the environment) as a thread count in [1, os.cpu_count()]."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("+-").isdigit() or int(text) < 1:
        raise AnygenError(f"{what}: expected a whole number of threads >= 1, got {value!r}")
    return min(int(text), os.cpu_count() or 1)


def set_threads(value, what: str) -> int:
    """torch.set_num_threads(parse_threads(value, what)); returns the count set."""
    import torch

    n = parse_threads(value, what)
    torch.set_num_threads(n)
    return n


def set_threads_from_env() -> int | None:
    """Apply `ANYGEN_THREADS` when it is set and not empty; returns the count set."""
    value = os.environ.get(THREADS_ENV, "")
    return set_threads(value, THREADS_ENV) if value.strip() else None
