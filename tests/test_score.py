"""``rulebert score``: CSV/JSONL in, the same format out with a probability column, streamed in chunks."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from rulebert.cli import main
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.scoring.local import Examples, read_examples, score_stream
from tests.serving import COMMENTS, RULE, make_model_dir


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("score") / "model")


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer(model_dir, device="cpu")


class Spy:
    """Wraps a Scorer; records the size and the examples of every call."""

    def __init__(self, scorer):
        self.scorer, self.calls = scorer, []

    def score(self, bodies, rules, subreddits=None, **examples):
        self.calls.append((len(bodies), examples))
        return self.scorer.score(bodies, rules, subreddits, **examples)


def comments(n):
    return [f"{COMMENTS[i % len(COMMENTS)]} {i}" for i in range(n)]


def test_csv_keeps_every_cell_and_adds_probability(scorer, tmp_path):
    bodies = comments(9) + ['quoted, with a comma\nand a newline "inside"']
    source = tmp_path / "in.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "body", "note"])
        writer.writerows([f"{i:03d}", b, "" if i % 2 else "NA"] for i, b in enumerate(bodies))
    out = tmp_path / "out.csv"
    spy = Spy(scorer)
    assert score_stream(spy, RULE, source, out, chunk_rows=4, progress=False) == 10
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "body", "note", "probability", "mode"]
    assert [r[:3] for r in rows[1:]] == [[f"{i:03d}", b, "" if i % 2 else "NA"] for i, b in enumerate(bodies)]
    expected = scorer.score(bodies, [RULE] * len(bodies))
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], expected, atol=1e-5)
    assert [n for n, _ in spy.calls] == [4, 4, 2]  # never more than a chunk at once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temp file left


def test_jsonl_with_comment_key_and_examples(scorer, tmp_path):
    records = [{"comment": c, "n": i, "tags": ["a"], "subreddit": "news"} for i, c in enumerate(comments(5))]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n", encoding="utf-8")
    examples_file = tmp_path / "examples.csv"
    examples_file.write_text("text,label\nbuy now,1\nnice story,0\nclick here,1\n", encoding="utf-8")
    examples = read_examples(examples_file)
    assert examples == Examples(positive=["buy now", "click here"], negative=["nice story"])
    spy = Spy(scorer)
    out = tmp_path / "out.jsonl"
    score_stream(spy, RULE, source, out, examples=examples, progress=False)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in w.items() if k not in ("probability", "mode")} for w in written] == records
    expected = scorer.score(  # the examples are used at scoring time
        [r["comment"] for r in records],
        [RULE] * 5,
        positive_examples=[examples.positive] * 5,
        negative_examples=[examples.negative] * 5,
    )
    np.testing.assert_allclose([w["probability"] for w in written], expected, atol=1e-5)
    assert spy.calls[0][1]["positive_examples"] == [["buy now", "click here"]] * 5
    assert spy.calls[0][1]["negative_examples"] == [["nice story"]] * 5


def test_stdin_is_sniffed_and_stdout_has_the_same_format(model_dir, monkeypatch, capsys):
    data = "\n".join(json.dumps({"body": c}) for c in COMMENTS).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    assert (
        main(["score", "--model-dir", str(model_dir), "--rule", RULE, "--input", "-", "--no-progress"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["body"] for line in lines] == COMMENTS
    assert all(0 <= json.loads(line)["probability"] <= 1 for line in lines)


def test_real_pipe_with_csv(model_dir):
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["body"], *([c] for c in COMMENTS)])  # some comments hold commas
    data = buffer.getvalue()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rulebert.cli",
            "score",
            "--model-dir",
            str(model_dir),
            "--rule",
            RULE,
            "--input",
            "-",
        ],
        input=data.encode(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(result.stdout.decode())))
    assert [r["body"] for r in rows] == COMMENTS and all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert b"score" in result.stderr  # the progress bar goes to stderr, never into the data


BAD_INPUTS = {
    "no_text.csv": (b"id,text\n1,hello\n", r"no text column 'body' or 'comment' \(found: id, text\)"),
    "empty_body.csv": (
        b"body,x\nhello,1\n  ,2\n",
        r"empty_body.csv: row 2 \(line 3\), column 'body': empty comment",
    ),
    "ragged.csv": (b"body,x\nhello,1\nbye\n", r"ragged.csv: row 2 \(line 3\): 1 fields, the header has 2"),
    "latin1.csv": (b"body\nok\ncaf\xe9\n", r"latin1.csv: line 3: not valid UTF-8 \(byte 0xe9\)"),
    "bad.jsonl": (b'{"body": "ok"}\n{"body": \n', r"bad.jsonl: line 2: not valid JSON"),
    "number.jsonl": (b'{"comment": 5}\n', r"number.jsonl: line 1, key 'comment': expected a string, got int"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(scorer, tmp_path, name):
    content, message = BAD_INPUTS[name]
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / ("out" + source.suffix)
    with pytest.raises(RulebertError, match=message) as info:
        score_stream(scorer, RULE, source, out, progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no output, no temp file


def test_bad_examples_label(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(RulebertError, match=r"ex.jsonl: line 2, column 'label': label 'maybe' is not 0 or 1"):
        read_examples(path)


def test_cli_missing_input_exits_2(model_dir, tmp_path, capsys):
    missing = tmp_path / "none.csv"
    code = main(["score", "--model-dir", str(model_dir), "--rule", RULE, "--input", str(missing)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"rulebert: error: {missing}: file not found"


# --- several rules in one pass, and the output format by extension ------------------------------------


def test_rules_file_scores_every_rule_in_one_pass(model_dir, scorer, tmp_path, monkeypatch):
    import rulebert.inference.predict

    rules = tmp_path / "rules.jsonl"
    rules.write_text(
        json.dumps({"id": "ads", "text": RULE, "positive_examples": ["buy now"], "negative_examples": ["hi"]})
        + "\n"
        + json.dumps({"id": "legal", "text": "No legal advice"})
        + "\n"
    )
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as handle:
        csv.writer(handle).writerows([["body"], *([c] for c in COMMENTS)])
    loads = []
    real = rulebert.inference.predict.Scorer
    monkeypatch.setattr(
        rulebert.inference.predict, "Scorer", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    out = tmp_path / "out.csv"
    assert main(["score", "--model-dir", str(model_dir), "--rules", str(rules), "--input", str(source),
                 "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    assert loads == [1]  # one model load for every rule
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["body", "probability_ads", "mode_ads", "probability_legal", "mode_legal"]
    ads = scorer.score(COMMENTS, RULE, positive_examples=[["buy now"]] * 4, negative_examples=[["hi"]] * 4)
    legal = scorer.score(COMMENTS, "No legal advice")
    np.testing.assert_allclose([float(r["probability_ads"]) for r in rows], ads, atol=1e-5)
    np.testing.assert_allclose([float(r["probability_legal"]) for r in rows], legal, atol=1e-5)


def test_output_format_follows_the_extension(scorer, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,body\n1,=cmd|x\n2,hello there\n")
    score_stream(scorer, RULE, source, tmp_path / "out.jsonl", progress=False)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(w["id"], w["body"]) for w in written] == [
        ("1", "=cmd|x"),
        ("2", "hello there"),
    ]  # no CSV quoting
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"body": "=1+1", "n": 1, "tags": ["a"]}\n{"body": "hi", "n": 2, "tags": null}\n')
    score_stream(scorer, RULE, jsonl, tmp_path / "out.csv", progress=False)
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0] == ["body", "n", "tags", "probability", "mode"]
    assert rows[1][:3] == ["'=1+1", "1", '["a"]'] and rows[2][:3] == ["hi", "2", ""]
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"body": "a"}\n{"body": "b", "extra": 1}\n')
    with pytest.raises(RulebertError, match=r"ragged.jsonl: line 2: key 'extra' is not among the first row"):
        score_stream(scorer, RULE, ragged, tmp_path / "ragged.csv", progress=False)
    assert not (tmp_path / "ragged.csv").exists()  # nothing half-written


@pytest.mark.parametrize("name", ["out.json", "out.txt", "out"])
def test_an_output_of_unknown_format_is_refused_before_loading(model_dir, tmp_path, capsys, name):
    source = tmp_path / "in.csv"
    source.write_text("body\nhello\n")
    code = main(["score", "--model-dir", str(tmp_path / "no-model"), "--rule", RULE, "--input", str(source),
                 "--output", str(tmp_path / name)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "output format unknown" in err and "name the output .csv or .jsonl" in err
    assert err.count("\n") == 1 and not (tmp_path / name).exists()


def test_rules_and_rule_are_exclusive_and_examples_go_with_rule(model_dir, tmp_path, capsys):
    rules = tmp_path / "rules.jsonl"
    rules.write_text('{"id": "x", "text": "No x"}\n')
    with pytest.raises(SystemExit):
        main(["score", "--model-dir", str(model_dir), "--rule", RULE, "--rules", str(rules), "--input", "-"])
    code = main(["score", "--model-dir", str(model_dir), "--rules", str(rules), "--examples", str(rules),
                 "--input", "-"])  # fmt: skip
    assert code == 2 and "--examples goes with --rule" in capsys.readouterr().err
