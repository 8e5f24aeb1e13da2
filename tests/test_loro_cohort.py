"""evaluation.evaluate.loro_cohort: the comments leave-one-rule-out scores for a held-out rule, the one rule
that ``rulebert evaluate --protocol loro`` and the loro experiments in benchmarks/experiments/ share."""

from __future__ import annotations

import pandas as pd

from rulebert.domain import data as D
from rulebert.evaluation.evaluate import loro_cohort, loro_folds


def _rows(rule: str, bodies: list[tuple[str, int]], positive: str, negative: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            D.ROW_ID: [f"{rule}-{i}" for i in range(len(bodies))],
            D.BODY: [body for body, _ in bodies],
            D.RULE: rule,
            D.SUBREDDIT: "r",
            "positive_example_1": positive,
            "positive_example_2": "",
            "negative_example_1": negative,
            "negative_example_2": "",
            D.LABEL: [label for _, label in bodies],
        }
    )


def test_the_cohort_leaves_out_example_texts_and_repeats():
    own = _rows(
        "R", [("spam!", 1), ("b", 0), ("b", 0), ("b", 1), ("kept", 1), ("hello", 0)], " spam! ", "hello"
    )
    cohort = loro_cohort(own)
    # "spam!" and "hello" are example texts (whitespace at the ends ignored); ("b", 0) counts once; ("b", 1)
    # is another (comment, label)
    assert cohort[D.BODY].tolist() == ["b", "b", "kept"] and cohort[D.LABEL].tolist() == [0, 1, 1]
    assert list(cohort.columns) == list(own.columns)  # rows of ``own``, as they were


def test_loro_folds_score_the_cohort():
    frame = pd.concat(
        [
            _rows("R", [("spam!", 1), ("b", 0), ("b", 0), ("c", 1)], "spam!", "d"),
            _rows("S", [("x", 1), ("y", 0), ("d", 0)], "x", "z"),
        ],
        ignore_index=True,
    )
    for fold in loro_folds(frame):
        cohort = loro_cohort(frame[frame[D.RULE] == fold.name])
        assert fold.score_rows[D.TEXT].tolist() == cohort[D.BODY].tolist()
        assert fold.score_rows[D.LABEL].tolist() == cohort[D.LABEL].tolist()
