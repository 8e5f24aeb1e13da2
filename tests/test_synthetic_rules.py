"""benchmarks/experiments/synthetic_rules.py: rules labelled by functions over the competition's comments,
written in the competition's layout that ``rulebert train`` reads (issue 25's synthetic-rules lever)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert.domain import data as D

from .conftest import make_frame

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "synthetic_rules", ROOT / "benchmarks" / "experiments" / "synthetic_rules.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def competition(tmp_path: Path) -> Path:
    """train.csv / test.csv of comments that the labelling functions fire on, and others."""
    frame = make_frame(48, seed=1)
    extra = [
        "check https://example.com for cheap deals!!",
        "why would you do that?",
        "what a stupid idiot",
        "this is damn good shit",
        "I paid $20 for it",
        "my doctor said so",
        "vote for the president in the election",
        "we smoked weed and got drunk",
    ]
    frame.loc[: len(extra) - 1, "body"] = extra
    frame.to_csv(tmp_path / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(tmp_path / "test.csv", index=False)
    return tmp_path


def test_labelling_functions_fire_on_what_their_rules_say() -> None:
    bench = _load()
    checks = {c.name: c.breaks for c in bench.CHECKS}
    assert checks["link"]("see https://example.com") and not checks["link"]("see the example")
    assert checks["question"]("is it?") and not checks["question"]("it is.")
    assert checks["insult"]("you idiot") and not checks["insult"]("you are right")
    assert checks["short"]("too short") and not checks["short"](
        "this comment has more than eight words in it"
    )
    assert checks["politics"]("the election") and not checks["politics"]("the electrician")  # whole words


def test_rows_are_balanced_per_rule_and_read_as_training_rows(competition: Path, tmp_path: Path) -> None:
    bench = _load()
    frame = bench.synthetic_frame(competition, per_label=6, rulebooks=3, seed=0)
    original = pd.read_csv(competition / "train.csv")
    assert frame.head(len(original))["body"].tolist() == original["body"].tolist()  # train.csv kept as it is
    synthetic = frame[frame["row_id"] >= 10_000_000]
    assert len(synthetic) and set(synthetic.columns) == set(original.columns)
    for rule, rows in synthetic.groupby("rule"):
        assert rows["rule_violation"].sum() * 2 == len(rows), rule  # as many broken as kept
        for row in rows.itertuples():  # example cells: other comments of the same rule, by their label
            same = rows.set_index("body")["rule_violation"]
            assert row.body not in (row.positive_example_1, row.negative_example_1)
            assert same[row.positive_example_1] == 1 and same[row.negative_example_2] == 0
    books = [r for r in synthetic["rule"].unique() if r.startswith("1. ")]
    assert 1 <= len(books) <= 3 and all(3 <= r.count("\n") + 1 <= 6 for r in books)  # too few: skipped
    # rulebert's own reader takes the file as a training CSV (bodies and example cells as rows)
    path = tmp_path / "synthetic.csv"
    frame.to_csv(path, index=False)
    rows, _ = D.labelled_rows(D.read_csv(path, labelled=True))
    assert set(synthetic["rule"]) <= set(rows[D.RULE])


def test_an_inverted_rule_flips_the_labels_of_its_check(competition: Path) -> None:
    """'Cite your sources' is broken by the comments without a link: the same comments, the other label."""
    bench = _load()
    frame = bench.synthetic_frame(competition, per_label=6, rulebooks=0, seed=0)
    link = next(c for c in bench.CHECKS if c.name == "link")
    for rule, rows in frame[frame["row_id"] >= 10_000_000].groupby("rule"):
        fired = np.array([link.breaks(t) for t in rows["body"]])
        if rule.startswith("Cite your sources"):
            assert (fired == (rows["rule_violation"] == 0)).all()
        elif rule.startswith("No links"):
            assert (fired == (rows["rule_violation"] == 1)).all()
