"""One batching loop for every backend (:func:`run_batches`): rows are sorted by length and cut into batches
by a token budget, so a batch of short comments is not padded to the length of a long one (the notebook
padded every row to 512)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rulebert.core.errors import RulebertError

Features = list[dict[str, list[int]]]


def violation_probability(logits: np.ndarray) -> np.ndarray:
    """P(violation) from a classifier's two logits per row: the softmax's second column, computed as
    ``exp(l1 - logaddexp(l0, l1))`` so that large logits neither overflow nor round to NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))


def token_budget_batches(lengths: Sequence[int], max_tokens: int | None, max_rows: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut so that rows x longest length <= ``max_tokens`` and no
    batch has more than ``max_rows`` rows; ``max_tokens=None``: ``max_rows`` rows each (a caller's
    ``batch_size``)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        budget = max_rows if max_tokens is None else max_tokens // max(longest, 1)
        size = max(1, min(max_rows, budget))
        batches.append(order[start : start + size])
        start += size
    return batches


def run_batches(
    features: Features,
    run: Callable[[list[dict[str, list[int]]]], np.ndarray],
    *,
    max_tokens: int | None,
    max_rows: int,
    progress: bool = False,
    width: int | None = None,
) -> np.ndarray:
    """``run`` over length-sorted token-budget batches of ``features``; results back in input order.

    ``run`` takes a batch of unpadded rows and returns one value (or ``width`` values) per row.
    """
    from tqdm.auto import tqdm

    shape = (len(features),) if width is None else (len(features), width)
    out = np.zeros(shape, dtype=np.float32)
    batches = token_budget_batches([len(f["input_ids"]) for f in features], max_tokens, max_rows)
    with tqdm(total=len(features), desc="predict", unit="row", disable=not progress) as bar:
        for batch in batches:
            out[batch] = run([features[i] for i in batch])
            bar.update(len(batch))
    return out


def batch_limits(max_tokens: int, max_rows: int, batch_size: int | None) -> tuple[int | None, int]:
    """(max_tokens, max_rows) for :func:`run_batches`: a backend's token budget, or, when the caller gives a
    ``batch_size`` (``Scorer.predict(batch_size=...)``), exactly that many rows a batch."""
    if batch_size is None:
        return max_tokens, max_rows
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RulebertError(f"batch_size must be a positive integer, got {batch_size!r}")
    return None, batch_size
