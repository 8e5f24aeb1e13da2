"""Moderators' decision logs as training data: the folder reader, the rows, the folds, ``train --decisions``
and a run that learned nothing (exit code 3)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert.core.errors import RulebertError
from rulebert.domain.decisions import (
    community_folds,
    decision_rows,
    read_decisions,
    rulebook_text,
)

WORDS = {
    "cats": (["insult", "idiot", "stupid"], ["kitten", "purr", "meow"]),
    "cars": (["spam", "buy", "cheap"], ["engine", "wheel", "brake"]),
    "food": (["scam", "click", "link"], ["pizza", "pasta", "soup"]),
}
RULES = [
    {"short_name": "Be civil", "description": "No insults or\n personal attacks.", "kind": "all"},
    {"short_name": "No image macros", "description": "Posts only.", "kind": "link"},
    {"short_name": "No spam", "description": "", "kind": "comment"},
]


def write_decisions(folder: Path, per_label: int = 30, seed: int = 0) -> Path:
    """A decisions folder whose removals are readable from their words (a model that learns beats chance)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "rules.jsonl", "w", encoding="utf-8") as handle:
        for name in WORDS:
            handle.write(json.dumps({"subreddit": name, "description": "d", "rules": RULES}) + "\n")
    rows = []
    for name, (removed, kept) in WORDS.items():
        for i in range(2 * per_label):
            label = i % 2
            words = [rng.choice(removed if label else kept) for _ in range(3)] + ["the", "a", "it"]
            rng.shuffle(words)
            rows.append({"subreddit": name, "body": " ".join(words) + f" {name} {i}", "removed": label})
    pd.DataFrame(rows).to_csv(folder / "comments.csv", index=False)
    return folder


def test_rulebook_is_the_numbered_comment_rules_as_pasted():
    assert rulebook_text(RULES) == "1. Be civil: No insults or personal attacks.\n2. No spam"


def test_rows_are_balanced_capped_seeded_and_labelled(tmp_path):
    log = read_decisions(write_decisions(tmp_path / "d"))
    assert log.communities == ["cars", "cats", "food"]
    assert log.rulebooks["cats"] == rulebook_text(RULES)
    rows = decision_rows(log, per_label=10, seed=0)
    counts = rows.groupby(["subreddit", "rule_violation"]).size()
    assert (counts == 10).all() and len(counts) == 6
    assert (rows["rule"] == rulebook_text(RULES)).all() and (rows["source"] == "decision").all()
    truth = dict(zip(log.comments["body"], log.comments["removed"], strict=True))
    assert all(truth[t] == label for t, label in zip(rows["text"], rows["rule_violation"], strict=True))
    assert rows.equals(decision_rows(log, per_label=10, seed=0))
    assert not set(rows["text"]) == set(decision_rows(log, per_label=10, seed=1)["text"])
    # a community with fewer of one label gives that many of each; one label only gives none
    assert len(decision_rows(log, per_label=1000, seed=0)) == len(log.comments)
    only = decision_rows(log, per_label=5, seed=0, communities=["cats"])
    assert set(only["subreddit"]) == {"cats"} and len(only) == 10


def test_folds_hold_each_community_out_once():
    names = [f"c{i}" for i in range(9)]
    folds = community_folds(names, 2)
    assert sorted(sum(folds, [])) == sorted(names) and {len(f) for f in folds} == {4, 5}
    assert folds == community_folds(reversed(names), 2) and folds != community_folds(names, 2, seed=1)
    with pytest.raises(RulebertError, match="--folds"):
        community_folds(names, 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "comments.csv").write_text("subreddit,body\ncats,hi\n"), "missing column 'removed'"),
        (
            lambda d: (d / "comments.csv").write_text("subreddit,body,removed\ncats,hi,1\ncats,yo,maybe\n"),
            r"comments.csv: row 2, column 'removed': 'maybe' is not 0 or 1",
        ),
        (
            lambda d: (d / "comments.csv").write_text("subreddit,body,removed\ncats, ,1\n"),
            r"comments.csv: row 1, column 'body': empty",
        ),
        (
            lambda d: (d / "comments.csv").write_text("subreddit,body,removed\ndogs,hi,1\n"),
            r"row 1, column 'subreddit': 'dogs' has no rules in rules.jsonl",
        ),
        (
            lambda d: (d / "rules.jsonl").write_text('{"subreddit": "cats", "rules": [}\n'),
            r"rules.jsonl: line 1: not valid JSON",
        ),
        (
            lambda d: (d / "rules.jsonl").write_text(
                '{"subreddit": "cats", "rules": [{"short_name": "x", "kind": "link"}]}\n'
            ),
            r"rules.jsonl: line 1: 'cats' has no rule that applies to comments",
        ),
        (lambda d: (d / "rules.jsonl").unlink(), r"rules.jsonl: file not found"),
    ],
)
def test_bad_decisions_are_one_line_errors(tmp_path, edit, message):
    folder = write_decisions(tmp_path / "d")
    edit(folder)
    with pytest.raises(RulebertError, match=message):
        read_decisions(folder)


def rulebert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rulebert.cli", *args], capture_output=True, text=True, timeout=600
    )


def tiny_train(tiny_checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("train", "--model", str(tiny_checkpoint), "--output-dir", str(out), "--epochs", "3"),
        *("--batch-size", "8", "--max-length", "48", "--val-fraction", "0.3", "--no-export", "--no-progress"),
        *extra,
    ]


def test_train_on_decisions_alone_and_score_a_new_community(tiny_checkpoint, tmp_path):
    folder = write_decisions(tmp_path / "d")
    out = tmp_path / "model"
    done = rulebert(*tiny_train(tiny_checkpoint, out, "--decisions", str(folder), "--lr", "1e-3"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout is the summary alone: the Trainer's log lines go to stderr
    assert summary["validation"]["col_auc"] > 0.7
    record = json.loads((out / "rulebert.json").read_text())
    assert record["data"]["decisions"]["communities"] == ["cars", "cats", "food"]
    assert record["data"]["decisions"]["comments"]["sha256"] and record["data"]["train"] is None
    assert record["config"]["decisions_per_label"] == 150 and record["config"]["lr"] == 1e-3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["learned"] is True
    card = (out / "README.md").read_text()
    assert "Moderators' decisions" in card and "cars, cats, food" in card

    from rulebert.inference.predict import Scorer

    scorer = Scorer(out)
    assert scorer.example_weights == "skill"  # auto: its cross-encoder learnt from decision logs
    book = rulebook_text(RULES)
    details = scorer.predict([(book, "idiot stupid insult"), ("1. No memes", "kitten purr")], details=True)
    assert [d["mode"] for d in details] == ["trained", "zero-shot"]


def test_unset_flags_take_the_moderation_recipe(tiny_checkpoint, tmp_path):
    from rulebert.cli.commands import _config_from_args
    from rulebert.cli.entry_point import build_parser
    from rulebert.core.config import MODERATION_RECIPE, RECIPES

    common = ["train", "--output-dir", "x", "--model", str(tiny_checkpoint)]
    config = _config_from_args(build_parser().parse_args([*common, "--decisions", "d", "--epochs", "4"]))
    assert (config.epochs, config.lr, config.max_length) == (4, MODERATION_RECIPE["lr"], 192)
    plain = _config_from_args(build_parser().parse_args([*common, "--train", "t.csv"]))
    assert plain.lr == RECIPES["default"]["lr"]


def test_train_needs_train_or_decisions(tmp_path):
    done = rulebert("train", "--output-dir", str(tmp_path / "m"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "give --train (a labelled CSV) or --decisions (a folder)" in done.stderr
    bad = rulebert("train", "--output-dir", str(tmp_path / "m"), "--decisions", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "not a folder" in bad.stderr


def test_a_run_that_learned_nothing_exits_3_and_is_marked(tiny_checkpoint, tmp_path):
    """lr 30 drives the tiny model to one constant: the dir is written, marked, and the command fails."""
    folder = write_decisions(tmp_path / "d")
    out = tmp_path / "model"
    done = rulebert(*tiny_train(tiny_checkpoint, out, "--decisions", str(folder), "--lr", "30"))
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rulebert: error: {out}: the model learned nothing: ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["learned"] is False and metrics["not_learned"]
    assert (out / "rulebert.json").is_file()


def test_learning_failure_reasons():
    from rulebert.domain.metrics import LN2, learning_failure

    varied = np.linspace(0.2, 0.8, 10)
    assert learning_failure({"col_auc": 0.8}, [0.5], varied) is None
    assert "chance" in learning_failure({"col_auc": 0.52}, [0.5], varied)
    assert "chance" in learning_failure({"col_auc": float("nan"), "roc_auc": 0.5}, [0.5], varied)
    assert "collapsed" in learning_failure({"col_auc": 0.8}, [0.5], np.full(10, 0.37))
    assert "ln 2" in learning_failure(None, [0.6, LN2, LN2 + 0.001, LN2], np.zeros(0))
    assert learning_failure(None, [0.69, 0.6, 0.5, 0.4], np.zeros(0)) is None
    assert learning_failure(None, [0.72, 0.71, 0.70, 0.705], np.zeros(0)) is None  # noisy, not a collapse
