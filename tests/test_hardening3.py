"""Hardening, third round (issue 34): deep JSON, duplicate columns, huge comments in mode examples,
invisible text, duplicate keys, one CSV cell limit, a locked state dir, one-line start-up errors, loose
permissions, a bad stored rule.

Real subprocesses (``python -m rulebert.cli``) for the command line, the real server on loopback for HTTP.
"""

from __future__ import annotations

import json

import pytest

from rulebert.core.errors import RulebertError
from rulebert.domain import jsonl
from tests.serving import COMMENTS, RULE, make_model_dir
from tests.test_hardening_cli import one_error_line, run, write_csv


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("hardening3") / "model")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- 1. deeply nested JSON --------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_one_line_error_everywhere(model_dir, tmp_path):
    deep = f'{{"body": {nested(1000)}}}\n'
    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    out = tmp_path / "scored.csv"
    inputs = tmp_path / "deep.jsonl"
    inputs.write_text('{"body": "fine"}\n' + deep)
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", inputs, "--output", out)
    assert code == 2 and f"{inputs}: line 2: JSON nested more than" in one_error_line(err)
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", "-", stdin=deep.encode())
    assert code == 2 and "<stdin>: line 1: JSON nested" in one_error_line(err)
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"text": "buy now", "label": 1}\n' + f'{{"text": "ok", "label": {nested(1000)}}}\n')
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--examples", examples, "--input", comments
    )
    assert code == 2 and f"{examples}: line 2: JSON nested" in one_error_line(err)
    rules = tmp_path / "rules.jsonl"
    rules.write_text(f'{{"id": "ads", "text": "No ads", "positive_examples": {nested(1000)}}}\n')
    code, _, err = run("score", "--model-dir", model_dir, "--rules", rules, "--input", comments)
    assert code == 2 and f"{rules}: line 1: JSON nested" in one_error_line(err)


def test_the_depth_limit_is_exact_and_below_what_python_parses(tmp_path):
    """Depth ``MAX_DEPTH`` reads; one more is refused, though Python's parser would take it: the limit does
    not depend on how deep the caller's stack is."""
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"body": "x", "meta": json.loads(nested(jsonl.MAX_DEPTH - 1))}) + "\nnull\n")
    with open(ok, "rb") as handle:
        objects = jsonl.json_objects(handle, "ok")
        assert next(objects)[1]["body"] == "x"
        with pytest.raises(RulebertError, match="line 2: expected a JSON object"):  # null is not too deep
            next(objects)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"body": "x", "meta": json.loads(nested(jsonl.MAX_DEPTH))}) + "\n")
    with (
        open(deep, "rb") as handle,
        pytest.raises(RulebertError, match=f"line 1: JSON nested more than {jsonl.MAX_DEPTH}"),
    ):
        list(jsonl.json_objects(handle, "deep"))


# --- 2. duplicate CSV columns -----------------------------------------------------------------------------


def test_score_refuses_a_csv_with_a_duplicate_column(model_dir, tmp_path):
    comments = tmp_path / "dup.csv"
    comments.write_text("body,x,body\nfirst comment,1,second comment\n")
    code, out, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", comments)
    assert code == 2 and out == ""
    assert one_error_line(err).endswith(f"{comments}: line 1: duplicate column 'body'")
    # the examples file too (read by the same reader), before any model loads
    examples = tmp_path / "examples.csv"
    examples.write_text("text,label,label\nbuy now,1,0\n")
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--examples", examples, "--input", comments
    )
    assert code == 2 and one_error_line(err).endswith(f"{examples}: line 1: duplicate column 'label'")
