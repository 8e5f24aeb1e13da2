"""One batching loop for every backend (:func:`run_batches`): rows are sorted by length and cut into batches
by a token budget, so a batch of short comments is not padded to the length of a long one (the notebook
padded every row to 512)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Features = list[dict[str, list[int]]]


# --- Device and precision ---------------------------------------------------------------------------------


def violation_probability(logits: np.ndarray) -> np.ndarray:
    """P(violation) from a classifier's two logits per row: the softmax's second column, computed as
    ``exp(l1 - logaddexp(l0, l1))`` so that large logits neither overflow nor round to NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut so that rows x longest length <= ``max_tokens``."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        size = max(1, min(max_rows, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def run_batches(
    features: Features,
    run: Callable[[list[dict[str, list[int]]]], np.ndarray],
    *,
    max_tokens: int,
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


# --- torch ------------------------------------------------------------------------------------------------
