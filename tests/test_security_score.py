"""``rulebert score`` against CSV (formula) injection: a comment such as ``=HYPERLINK(...)`` must not become
a live formula when a moderator opens the scored CSV in a spreadsheet."""

from __future__ import annotations

import csv
import json

import pytest

from rulebert.cli import main
from rulebert.inference.predict import Scorer
from rulebert.scoring.local import defuse_formulas, score_stream
from tests.serving import RULE, make_model_dir

DANGEROUS = ['=HYPERLINK("http://evil.example","click")', "+1+2", "-2+3", "@SUM(A1:A9)", "\tfoo", "\r=1+1"]
SAFE = ["a plain comment", "x=1", "", "'already quoted", "1-2"]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("score-security") / "model")


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer(model_dir, device="cpu")


class Spy:
    def __init__(self, scorer):
        self.scorer, self.bodies = scorer, []

    def score(self, bodies, rules, subreddits=None, **examples):
        self.bodies += list(bodies)
        return self.scorer.score(bodies, rules, subreddits, **examples)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_defuse_formulas():
    assert defuse_formulas(DANGEROUS) == ["'" + cell for cell in DANGEROUS]
    assert defuse_formulas(SAFE) == SAFE


@pytest.fixture()
def dangerous_csv(tmp_path):
    source = tmp_path / "in.csv"
    pairs = zip(DANGEROUS, reversed(DANGEROUS), strict=True)
    rows = [[f"{i}", body, note] for i, (body, note) in enumerate(pairs)]
    rows += [[f"{i + 10}", f"safe comment {i}", cell] for i, cell in enumerate(SAFE)]
    write_csv(source, ["id", "body", "=note"], rows)
    return source, rows


def test_csv_cells_that_would_be_formulas_get_a_quote(scorer, dangerous_csv, tmp_path):
    source, rows = dangerous_csv
    out = tmp_path / "out.csv"
    spy = Spy(scorer)
    assert score_stream(spy, RULE, source, out, progress=False) == len(rows)
    written = read_csv(out)
    assert written[0] == ["id", "body", "'=note", "probability", "mode"]  # the header is echoed too
    assert [r[:3] for r in written[1:]] == [defuse_formulas(row) for row in rows]
    assert written[1][1] == "'" + DANGEROUS[0] and written[-1][2] == SAFE[-1]
    assert all(not r[3].startswith("'") and 0 <= float(r[3]) <= 1 for r in written[1:])
    assert spy.bodies == [row[1] for row in rows]  # the model scores the comments as they were


def test_raw_csv_writes_cells_as_they_are(scorer, dangerous_csv, tmp_path):
    source, rows = dangerous_csv
    out = tmp_path / "out.csv"
    score_stream(scorer, RULE, source, out, progress=False, raw_csv=True)
    written = read_csv(out)
    assert written[0] == ["id", "body", "=note", "probability", "mode"]
    assert [r[:3] for r in written[1:]] == rows


def test_jsonl_output_is_unchanged(scorer, tmp_path):
    records = [{"comment": body, "note": body} for body in DANGEROUS]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    score_stream(scorer, RULE, source, out, progress=False)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in w.items() if k not in ("probability", "mode")} for w in written] == records


def test_cli_defuses_by_default_and_raw_csv_turns_it_off(model_dir, dangerous_csv, tmp_path):
    source, rows = dangerous_csv
    base = ["score", "--model-dir", str(model_dir), "--rule", RULE, "--input", str(source), "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "safe.csv")]) == 0
    assert [r[:3] for r in read_csv(tmp_path / "safe.csv")[1:]] == [defuse_formulas(row) for row in rows]
    assert main([*base, "--output", str(tmp_path / "raw.csv"), "--raw-csv"]) == 0
    assert [r[:3] for r in read_csv(tmp_path / "raw.csv")[1:]] == rows
