"""Shared fixtures: a tiny random BERT checkpoint and small synthetic competition CSVs.

Unit tests never touch the real competition data or the bundled MiniLM weights (only its tokenizer
files): a 2-layer, 32-wide BERT trains in seconds on 2 cores.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network

RULES = {
    "No advertising: spam and promotional links are not allowed.": (
        ["buy", "cheap", "discount", "http", "click", "offer", "free", "deal"],
        ["think", "agree", "story", "weather", "family", "game", "book", "movie"],
    ),
    "No legal advice: do not offer or request legal advice.": (
        ["lawyer", "sue", "court", "contract", "lawsuit", "attorney", "legal", "judge"],
        ["pizza", "music", "garden", "holiday", "coffee", "dog", "paint", "river"],
    ),
}
FILLER = ["the", "a", "you", "i", "it", "this", "that", "is", "was", "and", "so", "really"]


def make_comment(rng: random.Random, words: list[str], length: int = 12) -> str:
    chosen = [rng.choice(words) for _ in range(3)] + [rng.choice(FILLER) for _ in range(length - 3)]
    rng.shuffle(chosen)
    return " ".join(chosen)


def make_frame(n_rows: int, seed: int, labelled: bool = True) -> pd.DataFrame:
    """Rows whose label is readable from their words: a model that learns anything beats chance."""
    rng = random.Random(seed)
    rows = []
    for index in range(n_rows):
        rule = list(RULES)[index % len(RULES)]
        positive, negative = RULES[rule]
        label = rng.randint(0, 1)
        row = {
            "row_id": 1000 + index,
            "body": make_comment(rng, positive if label else negative),
            "rule": rule,
            "subreddit": rng.choice(["news", "AskReddit", "legaladvice"]),
            "positive_example_1": make_comment(rng, positive),
            "positive_example_2": make_comment(rng, positive),
            "negative_example_1": make_comment(rng, negative),
            "negative_example_2": make_comment(rng, negative),
        }
        if labelled:
            row["rule_violation"] = label
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A competition-shaped folder: train.csv (48 rows), test.csv (10 rows), sample_submission.csv."""
    folder = tmp_path / "data"
    folder.mkdir()
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    test = make_frame(10, seed=2, labelled=False)
    test.to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"row_id": test["row_id"], "rule_violation": 0.5}).to_csv(
        folder / "sample_submission.csv", index=False
    )
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (a bare ``BertModel``, like the default checkpoint) with MiniLM's tokenizer."""
    from .serving import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def model_dir(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A finished model dir around the tiny checkpoint's untrained weights (max_length 64)."""
    from .serving import make_model_dir

    return make_model_dir(tiny_checkpoint, tmp_path / "model")
