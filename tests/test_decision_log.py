"""A moderator's decision log (``body, removed``) is a rule's examples as it stands: read by the one examples
reader, used by ``rulebert score --examples``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rulebert.core.errors import RulebertError
from rulebert.scoring.readers import read_examples


def test_a_decision_log_reads_as_examples(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    pd.DataFrame(
        {
            "subreddit": ["a"] * 4,
            "body": ["buy now", "hello there", "cheap pills", "nice post"],
            "removed": [1, 0, "removed", "kept"],
        }
    ).to_csv(log, index=False)
    examples = read_examples(log)
    assert examples.positive == ["buy now", "cheap pills"] and examples.negative == [
        "hello there",
        "nice post",
    ]
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"body": "spam spam", "removed": true}\n{"body": "thanks", "removed": false}\n')
    examples = read_examples(jsonl)
    assert examples.positive == ["spam spam"] and examples.negative == ["thanks"]


def test_a_decision_log_with_an_unknown_decision_names_the_row(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("body,removed\nbuy now,1\nhello,maybe\n")
    with pytest.raises(RulebertError, match=r"log\.csv.*line 3.*column 'removed'.*'maybe'"):
        read_examples(log)


def test_score_takes_a_decision_log_as_examples(model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "decisions.csv"
    pd.DataFrame(
        {
            "body": ["buy my pills now", "great photo", "visit my shop", "thanks for sharing"],
            "removed": [1, 0, 1, 0],
        }
    ).to_csv(log, index=False)
    comments = tmp_path / "comments.csv"
    pd.DataFrame({"body": ["cheap pills here", "lovely"]}).to_csv(comments, index=False)
    out = tmp_path / "scored.csv"
    rulebook = "1. No spam: no selling.\n2. Be civil: no insults."
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rulebert.cli",
            "score",
            "--model-dir",
            str(model_dir),
            "--rule",
            rulebook,
            "--examples",
            str(log),
            "--input",
            str(comments),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    scored = pd.read_csv(out)
    assert len(scored) == 2 and scored["probability"].between(0, 1).all()


def test_adapt_takes_a_rulebook_and_a_decision_log(model_dir: Path, tmp_path: Path) -> None:
    import json

    log = tmp_path / "decisions.csv"
    bodies = [f"buy cheap pills number {i}" for i in range(6)] + [
        f"lovely photo number {i}" for i in range(6)
    ]
    pd.DataFrame({"body": bodies, "removed": [1] * 6 + [0] * 6}).to_csv(log, index=False)
    rulebook = "1. No spam: no selling.\n2. Be civil: no insults."
    out = tmp_path / "adapted"
    command = [
        sys.executable,
        "-m",
        "rulebert.cli",
        "adapt",
        "--model-dir",
        str(model_dir),
        "--rule",
        rulebook,
    ]
    done = subprocess.run(
        [
            *command,
            "--examples",
            str(log),
            "--rule-id",
            "community",
            "--output-dir",
            str(out),
            "--no-export",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "rulebert.json").read_text())
    adapted = record["data"]["adapted_rules"]
    assert adapted == [{"id": "community", "text": rulebook, "positive_examples": 6, "negative_examples": 6}]
    alone = subprocess.run(
        [*command, "--output-dir", str(tmp_path / "other")], capture_output=True, text=True, timeout=300
    )
    assert alone.returncode == 2 and "--rule and --examples go together" in alone.stderr
    assert alone.stderr.count("\n") == 1 and not (tmp_path / "other").exists()
