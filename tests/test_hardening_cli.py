"""Hardening, second round (issue 27), for the command line: text that is not text, output places that
cannot be written, folders left behind, how each score was made, ``serve``'s port.

Real subprocesses where the whole command matters; ``main()`` in-process where a failure is simulated.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rulebert.cli import main
from tests.serving import COMMENTS, RULE, make_model_dir


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("cli") / "model")


def run(
    *args: str | bytes | Path, stdin: bytes | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """``python -m rulebert.cli ARGS``; arguments may be bytes (not UTF-8), as a shell can pass them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-m", "rulebert.cli", *(a if isinstance(a, bytes) else str(a) for a in args)]
    result = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=300, cwd=cwd)
    return (
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def one_error_line(err: str) -> str:
    """The one ``rulebert: error:`` line, after checking there is no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rulebert: error:")]
    assert len(lines) == 1, err
    return lines[0]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- 1. lone surrogates -----------------------------------------------------------------------------------


def test_a_lone_surrogate_anywhere_is_a_one_line_error(model_dir, tmp_path):
    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    out = tmp_path / "scored.csv"
    # stdin, as the issue shows it
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--input", "-", stdin=b'{"body": "a \\ud800 b"}\n'
    )
    assert code == 2 and "<stdin>: line 1, key 'body'" in one_error_line(err) and "surrogate" in err
    # a JSONL file, in another key than the comment's (it is written back out)
    jsonl = tmp_path / "comments.jsonl"
    jsonl.write_text('{"body": "fine"}\n{"body": "fine", "note": "x\\udc00"}\n')
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", jsonl, "--output", out)
    assert code == 2 and f"{jsonl}: line 2, key 'note'" in one_error_line(err)
    # --rules
    rules = tmp_path / "rules.jsonl"
    rules.write_text('{"id": "ads", "text": "No ads", "negative_examples": ["ok", "b \\ud83d"]}\n')
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rules", rules, "--input", comments, "--output", out
    )
    assert code == 2 and "'negative_examples', item 2" in one_error_line(err) and f"{rules}: line 1" in err
    # --examples
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"text": "spam \\ud800", "label": 1}\n')
    code, _, err = run(
        "score",
        "--model-dir",
        model_dir,
        "--rule",
        RULE,
        "--examples",
        examples,
        "--input",
        comments,
        "--output",
        out,
    )
    assert code == 2 and f"{examples}: line 1, key 'text'" in one_error_line(err)
    # a --rule that is not UTF-8
    code, _, err = run("score", "--model-dir", model_dir, "--rule", b"No ads \xff here", "--input", comments)
    assert code == 2 and "--rule: not valid UTF-8 (byte 0xff" in one_error_line(err)
    assert not out.exists() and not list(tmp_path.glob(".scored*"))


# --- 5, 6. output places ----------------------------------------------------------------------------------


def test_an_unwritable_output_place_fails_before_the_model_loads(tmp_path):
    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    not_a_model = tmp_path / "no-model"
    not_a_model.mkdir()  # were the model loaded first, the error would be about it
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "file").write_text("x")
    for output, expected in [
        (tmp_path / "folder.csv", "is a folder"),
        (tmp_path / "file" / "o.csv", "is not a folder"),
        (Path("/proc/o.csv"), "cannot be written there"),
    ]:
        code, _, err = run(
            "score", "--model-dir", not_a_model, "--rule", RULE, "--input", comments, "--output", output
        )
        line = one_error_line(err)
        assert code == 2 and line.startswith(f"rulebert: error: {output}: ") and expected in line, err


def test_a_read_only_folder_names_the_output_not_a_temp_file(model_dir, tmp_path, monkeypatch, capsys):
    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    output = tmp_path / "ro" / "scored.csv"
    output.parent.mkdir()

    def refused(*args, dir=None, prefix="", suffix="", **kwargs):  # noqa: A002 - mkstemp's signature
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}abc123{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # root can write anywhere: a read-only folder, made up
    code = main(
        [
            "score",
            "--model-dir",
            str(model_dir),
            "--rule",
            RULE,
            "--input",
            str(comments),
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    line = one_error_line(capsys.readouterr().err)
    assert code == 74 and line == f"rulebert: error: {output}: Permission denied"


def test_a_failed_run_leaves_no_folder_it_created(model_dir, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [{"body": "fine"}, {"body": "also fine"}, {"body": "  "}])
    output = tmp_path / "a" / "b" / "c" / "scored.csv"
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--input", bad, "--output", output, "--no-progress"
    )
    assert code == 2 and "row 3" in one_error_line(err)
    assert not (tmp_path / "a").exists()
    # a successful run creates them
    good = write_csv(tmp_path / "good.csv", [{"body": c} for c in COMMENTS])
    code, _, err = run(
        "score",
        "--model-dir",
        model_dir,
        "--rule",
        RULE,
        "--input",
        good,
        "--output",
        output,
        "--no-progress",
    )
    assert code == 0, err
    assert output.is_file()


# --- 7. modes ---------------------------------------------------------------------------------------------


def test_every_score_says_how_it_was_made(model_dir, tmp_path):
    comments = write_csv(tmp_path / "comments.csv", [{"body": c, "probability": "old"} for c in COMMENTS])
    out = tmp_path / "scored.csv"
    code, _, err = run(
        "score",
        "--model-dir",
        model_dir,
        "--rule",
        RULE,
        "--input",
        comments,
        "--output",
        out,
        "--no-progress",
    )
    assert code == 0, err
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["body", "probability", "mode"]
    assert {row["mode"] for row in rows} == {"zero-shot"}
    assert "rulebert: warning: --rule: scored zero-shot" in err

    rules = tmp_path / "rules.jsonl"
    rules.write_text(
        json.dumps(
            {
                "id": "ads",
                "text": RULE,
                "positive_examples": [COMMENTS[0], COMMENTS[2]],
                "negative_examples": [COMMENTS[1], COMMENTS[3]],
            }
        )
        + "\n"
        + json.dumps({"id": "legal", "text": "No legal advice."})
        + "\n"
    )
    out = tmp_path / "scored.jsonl"
    code, _, err = run(
        "score",
        "--model-dir",
        model_dir,
        "--rules",
        rules,
        "--input",
        comments,
        "--output",
        out,
        "--no-progress",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(rows[0]) == [
        "body",
        "probability",
        "probability_ads",
        "mode_ads",
        "probability_legal",
        "mode_legal",
    ]
    assert {r["mode_ads"] for r in rows} == {"examples"} and {r["mode_legal"] for r in rows} == {"zero-shot"}
    assert "rule 'legal': scored zero-shot" in err and "rule 'ads'" not in err


# --- 14. serve's port -------------------------------------------------------------------------------------


def test_a_bad_or_busy_port_is_a_one_line_error(model_dir):
    code, _, err = run("serve", "--model-dir", model_dir, "--port", "99999")
    assert code == 2 and "--port 99999" in one_error_line(err)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run("serve", "--model-dir", model_dir, "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_error_line(err)


# --- 13. the threshold is checked like the hashed files ----------------------------------------------------


def test_an_edited_threshold_is_refused(tiny_checkpoint, tmp_path):
    from rulebert.core.errors import RulebertError
    from rulebert.inference.predict import Scorer
    from rulebert.model.model_dir import METRICS_FILE, RECORD_FILE, set_threshold

    model_dir = make_model_dir(tiny_checkpoint, tmp_path / "model", metrics={"threshold": 0.4, "f1": 0.5})
    metrics_path = model_dir / METRICS_FILE
    metrics_path.write_text(json.dumps({"threshold": 0.0, "f1": 0.5}))  # flags every comment
    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", comments)
    line = one_error_line(err)
    assert code == 2 and f"{metrics_path}: threshold 0.0 is not the one rulebert.json records (0.4)" in line
    metrics_path.write_text(json.dumps({"f1": 0.5}))  # a removed threshold (0.5 by default) is a change too
    with pytest.raises(RulebertError, match="threshold None"):
        Scorer(model_dir, device="cpu")
    # the way to move it: both files, and the scorer uses it
    metrics_path.write_text(json.dumps({"threshold": 0.4, "f1": 0.5}))
    set_threshold(model_dir, 0.7)
    assert Scorer(model_dir, device="cpu").threshold == 0.7
    assert json.loads(metrics_path.read_text()) == {"threshold": 0.7, "f1": 0.5}
    # a model dir saved before thresholds were recorded still loads, as it did
    record = json.loads((model_dir / RECORD_FILE).read_text())
    del record["threshold"]
    (model_dir / RECORD_FILE).write_text(json.dumps(record))
    metrics_path.write_text(json.dumps({"threshold": 0.2}))
    assert Scorer(model_dir, device="cpu").threshold == 0.2


def test_atomic_write_names_the_output_and_removes_the_folders_it_made(tmp_path, monkeypatch):
    from rulebert.core.files import atomic_write

    target = tmp_path / "x" / "y" / "out.csv"

    def refused(*args, dir=None, prefix="", suffix="", **kwargs):  # noqa: A002 - mkstemp's signature
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}abc123{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as caught, atomic_write(target) as handle:
        handle.write("never")
    assert caught.value.filename == str(target)
    assert not (tmp_path / "x").exists()
