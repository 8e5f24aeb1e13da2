"""The examples model's answers from a handful of examples, and how it weighs its members."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest

from rulebert.domain.examples import ExampleModel, RuleExamples, shrink_to_evidence
from tests.serving import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("blend") / "model")


def test_two_plus_two_examples_give_bounded_probabilities_on_the_cli(model_dir, tmp_path):
    """With 2 + 2 examples mode examples answered 0.9999999989 and 3.4e-9; now within [1/6, 5/6]."""
    examples = tmp_path / "examples.csv"
    examples.write_text(
        "text,label\nbuy cheap pills now,1\nclick this cheap deal,1\n"
        "what a lovely garden,0\nmy dog likes the river,0\n"
    )
    comments = "body\n" + "".join(
        f"{t}\n" for t in ["buy cheap pills now now", "lovely garden and dog", "cheap deal click", "river"]
    )
    done = subprocess.run(
        [sys.executable, "-m", "rulebert.cli", "score", "--model-dir", str(model_dir), "--rule", "No ads"]
        + ["--examples", str(examples), "--input", "-", "--output", "-", "--no-progress"],
        input=comments,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    column = next(c for c in rows[0] if c.startswith("probability"))
    values = [float(r[column]) for r in rows]
    assert all(1 / 6 - 1e-9 <= v <= 5 / 6 + 1e-9 for v in values), values
    assert max(values) - min(values) > 0.2  # still an answer, not a constant


def test_shrinking_keeps_every_ranking_and_the_even_point():
    p = np.array([3.4e-9, 0.2, 0.5, 0.7, 0.9999999989])
    shrunk = shrink_to_evidence(p, 4)
    assert np.all(np.diff(shrunk) > 0) and shrunk[2] == 0.5
    assert shrunk[0] == pytest.approx(1 / 6) and shrunk[-1] == pytest.approx(5 / 6)
    assert np.allclose(shrink_to_evidence(p, 10**9), p, atol=1e-8)


def test_skill_weights_follow_each_members_ranking():
    """``skill``: a cross-encoder that ranks the examples perfectly weighs 1, a useless member 0."""
    rng = np.random.default_rng(0)
    positive = tuple(f"spam offer {i} {rng.integers(1000)}" for i in range(12))
    negative = tuple(f"nice story {i} {rng.integers(1000)}" for i in range(12))
    examples = RuleExamples.of(positive, negative)
    ce = np.where(examples.labels == 1, 0.8, 0.2) + rng.normal(0, 0.01, len(examples.labels))
    noise = rng.normal(size=(len(examples.labels), 4))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    fixed = ExampleModel.fit(examples, ce, noise)
    assert fixed.weights["tfidf"] == fixed.weights["embedding"] == 1.0
    skilled = ExampleModel.fit(examples, ce, noise, weights="skill")
    assert skilled.weights["cross-encoder"] == pytest.approx(fixed.weights["cross-encoder"]) == 1.0
    assert skilled.weights["embedding"] < 0.5 < skilled.weights["tfidf"]


def test_auto_weights_by_skill_only_a_model_that_learnt_from_decisions(model_dir):
    from rulebert.domain.examples import member_weights
    from rulebert.inference.predict import Scorer

    assert member_weights("auto", True) == "skill" and member_weights("auto", False) == "fixed"
    assert member_weights("fixed", True) == "fixed" and member_weights("skill", False) == "skill"
    assert Scorer(model_dir).example_weights == "fixed"  # trained on competition rows
