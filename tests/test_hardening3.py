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


# --- 3. a huge comment in mode examples -------------------------------------------------------------------


def huge_comment(chars: int = 10_000_000) -> str:
    """``chars`` characters of words from a 20,000-word vocabulary (seeded): many distinct n-grams."""
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(20_000)]
    words = rng.choices(vocabulary, k=chars // 5)
    return " ".join(words)[:chars]


def test_the_examples_blend_sees_what_the_tokenizer_sees():
    import numpy as np

    from rulebert.domain.examples import RuleExamples, blend_with_examples
    from rulebert.domain.text import cut_for_tokenizer

    huge = huge_comment(100_000)
    examples = RuleExamples.of(["buy cheap now " + huge, "click for a discount"], ["nice movie", "my dog"])
    seen: list[str] = []

    def embed(texts: list[str]) -> None:
        seen.extend(texts)
        return None  # no embedder: TF-IDF and the cross-encoder

    def blend(texts: list[str]) -> np.ndarray:
        return blend_with_examples(
            examples,
            texts,
            np.full(len(texts), 0.5),
            score_examples=lambda values: seen.extend(values) or np.full(len(values), 0.5),
            embed=embed,
            trained=False,
            max_length=64,
        )[0]

    whole = blend([huge, "a short one"])
    assert max(map(len, seen)) <= 64 * 100  # the examples and the comments alike
    assert np.allclose(whole, blend(cut_for_tokenizer([huge, "a short one"], 64)))


def test_a_huge_comment_through_score_examples_stays_small(model_dir, tiny_checkpoint, tmp_path):
    """One 10 MB comment through ``score --examples`` with an embedder: 2.9 GiB peak RSS before the cut,
    731 MiB after (690 MiB for a short comment alone; docs/reliability.md, round three)."""
    import shutil
    import subprocess
    import sys

    from rulebert.backend.export import export_embedder

    model = shutil.copytree(model_dir, tmp_path / "model")
    export_embedder(model, str(tiny_checkpoint))
    comments = tmp_path / "huge.jsonl"
    comments.write_text(
        json.dumps({"body": "a short one"}) + "\n" + json.dumps({"body": huge_comment()}) + "\n"
    )
    examples = write_csv(
        tmp_path / "examples.csv",
        [{"text": COMMENTS[i], "label": int(i % 2 == 0)} for i in range(len(COMMENTS))],
    )
    out = tmp_path / "scored.jsonl"
    argv = [sys.executable, "-m", "rulebert.cli", "score", "--model-dir", str(model), "--rule", RULE]
    argv += ["--examples", str(examples), "--input", str(comments), "--output", str(out), "--no-progress"]
    # a fresh parent: RUSAGE_CHILDREN's peak is then this one command's
    probe = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True); "
        "sys.stderr.buffer.write(done.stderr); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=300)
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    assert [json.loads(line)["mode"] for line in out.read_text().splitlines()] == ["examples"] * 2
    assert peak_kib < 1_500_000, f"peak RSS {peak_kib} KiB"
