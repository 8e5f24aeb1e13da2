"""Hardening, third round (issue 34): deep JSON, duplicate columns, huge comments in mode examples,
invisible text, duplicate keys, one CSV cell limit, a locked state dir, one-line start-up errors, loose
permissions, a bad stored rule.

Real subprocesses (``python -m rulebert.cli``) for the command line, the real server on loopback for HTTP.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest

from rulebert.core.errors import RulebertError
from rulebert.domain import jsonl
from tests.serving import COMMENTS, RULE, make_model_dir, start_server
from tests.test_hardening_cli import one_error_line, run, write_csv


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("hardening3") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The real server with a state dir (stored rules), on loopback."""
    folder = tmp_path_factory.mktemp("served3")
    with start_server(model_dir, folder / "server.log", extra_args=("--state-dir", str(folder / "s"))) as up:
        yield up


def post(server, path: str, body: bytes | dict, method: str = "POST", timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return httpx.request(method, server.url + path, content=content, headers=headers, timeout=timeout)


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


# --- 4. invisible text ------------------------------------------------------------------------------------

INVISIBLE = ["\u200b", "\ufeff", "\u00a0", " \u200d\u2060 ", "\u0007"]


def test_is_blank_and_text_problem():
    from rulebert.domain.text import is_blank, text_problem

    assert all(is_blank(text) for text in INVISIBLE + ["", "\x00"])
    assert not any(is_blank(text) for text in ("x", "\u200bx", "\u00e9", "🙂", "a\x00b"))
    assert text_problem("a\x00b") == "a NUL character at character 2 (not text)"
    assert text_problem("fine \u200b") is None


def test_predict_reads_an_invisible_body_as_empty(tmp_path):
    from rulebert.domain.data import example_rows, read_csv

    test = tmp_path / "test.csv"
    test.write_text("row_id,body,rule\n1,fine,No ads\n2,\u200b,No ads\n", encoding="utf-8")
    with pytest.raises(RulebertError, match=r"row 2 \(row_id=2\), column 'body': empty or NaN"):
        read_csv(test, labelled=False)
    cells = ["positive_example_1", "positive_example_2", "negative_example_1", "negative_example_2"]
    test.write_text(
        "row_id,body,rule," + ",".join(cells) + "\n1,fine,No ads,buy,\u200b,ok,\ufeff\n", encoding="utf-8"
    )
    assert example_rows(read_csv(test, labelled=False))["text"].tolist() == ["buy", "ok"]


@pytest.mark.parametrize("comment", ["\u200b", "\ufeff", "a\u0000b", "\u00a0"])
def test_invisible_or_nul_comments_and_rules_are_422(server, comment):
    rule = {"text": RULE}
    answer = post(server, "/v1/score", {"comment": comment, "rules": [rule]})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "comment"], answer.text
    if comment != "\u00a0":
        assert "NUL" in answer.text if "\x00" in comment else "is empty" in answer.text
    bad_rule = {"text": comment, "positive_examples": [COMMENTS[0]], "negative_examples": [COMMENTS[1]]}
    answer = post(server, "/v1/score", {"comment": COMMENTS[0], "rules": [bad_rule]})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][:4] == ["body", "rules", 0, "text"]
    answer = post(server, "/v1/score/batch", {"items": [{"comment": COMMENTS[0], "rule": bad_rule}]})
    assert answer.status_code == 422, answer.text
    answer = post(server, "/v1/rules/invisible", {"text": RULE, "positive_examples": [comment]}, "PUT")
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][:2] == [
        "body",
        "positive_examples",
    ]
    assert post(server, "/v1/rules/invisible", {"text": comment}, "PUT").status_code == 422
    assert httpx.get(server.url + "/v1/rules/invisible").status_code == 404  # nothing was stored


def test_invisible_or_nul_text_is_a_one_line_error_on_the_cli(model_dir, tmp_path):
    for number, body in enumerate(["\u200b", "\ufeff", "a\u0000b"]):
        comments = tmp_path / f"comments{number}.jsonl"
        comments.write_text('{"body": "fine"}\n' + json.dumps({"body": body}) + "\n")
        code, out, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", comments)
        why = "key 'body': a NUL character at character 2 (not text)" if "\x00" in body else "empty comment"
        assert code == 2 and f"{comments}: line 2" in one_error_line(err) and why in err, err
    csv_comments = tmp_path / "comments.csv"
    csv_comments.write_text("body\nfine\n\u200b\n", encoding="utf-8")
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", csv_comments)
    assert code == 2 and "row 2 (line 3), column 'body': empty comment" in one_error_line(err)
    code, _, err = run("score", "--model-dir", model_dir, "--rule", "\u200b", "--input", csv_comments)
    assert code == 2 and one_error_line(err).endswith("--rule: empty rule text")
    for text in ("\u200b", "\u0000"):
        rules = tmp_path / "rules.jsonl"
        rules.write_text(json.dumps({"id": "r", "text": text}) + "\n")
        code, _, err = run("score", "--model-dir", model_dir, "--rules", rules, "--input", csv_comments)
        why = "NUL character" if text == "\u0000" else "field 'text' must be a non-empty string"
        assert code == 2 and f"{rules}: line 1" in one_error_line(err) and why in err, err
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"text": "buy now", "label": 1}\n{"text": "\\u200b", "label": 0}\n')
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--examples", examples, "--input", csv_comments
    )
    assert code == 2 and f"{examples}: line 2, column 'text': empty example text" in one_error_line(err)


@pytest.mark.parametrize(("body", "why"), [("\u200b", "empty comment"), ("a\x00b", "a NUL character")])
def test_a_parquet_shard_refuses_invisible_or_nul_comments(tmp_path, body, why):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from rulebert.scoring import ray_engine

    shard = tmp_path / "x.parquet"
    pd.DataFrame({"body": ["fine", body]}).to_parquet(shard)
    with pytest.raises(RulebertError, match=f"x.parquet: row 2, column 'body': {why}"):
        ray_engine._read_parquet(shard)


# --- 5. duplicate JSON keys -------------------------------------------------------------------------------


def test_a_duplicate_key_in_a_body_is_a_422(server):
    rule = f'{{"text": "{RULE}", "positive_examples": ["buy now"], "negative_examples": ["nice dog"]}}'
    bodies = {
        "/v1/score": [
            f'{{"comment": "fine", "comment": "other", "rules": [{rule}]}}',
            f'{{"comment": "fine", "rules": [{{"text": "a", "text": "{RULE}"}}]}}',
        ],
        "/v1/score/batch": [f'{{"items": [{{"comment": "fine", "rule": {rule}, "rule": {rule}}}]}}'],
    }
    for path, texts in bodies.items():
        for text in texts:
            answer = post(server, path, text.encode())
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert detail[0]["type"] == "duplicate_key" and detail[0]["loc"] == ["body"], detail
    answer = post(server, "/v1/rules/twice", b'{"text": "No ads", "text": "No spam"}', "PUT")
    assert answer.status_code == 422 and "duplicate key 'text'" in answer.text
    assert httpx.get(server.url + "/v1/rules/twice").status_code == 404
    # the same bodies without the repeat are fine
    assert post(server, "/v1/score", f'{{"comment": "fine", "rules": [{rule}]}}'.encode()).status_code == 200


def test_a_duplicate_key_in_json_lines_is_a_one_line_error(model_dir, tmp_path):
    comments = tmp_path / "comments.jsonl"
    comments.write_text('{"body": "fine"}\n{"body": "shown", "meta": {"a": 1, "a": 2}}\n')
    code, out, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", comments)
    assert code == 2 and one_error_line(err).endswith(f"{comments}: line 2: duplicate key 'a'")
    rules = tmp_path / "rules.jsonl"
    rules.write_text('{"id": "ads", "text": "No ads", "text": "anything goes"}\n')
    code, _, err = run("score", "--model-dir", model_dir, "--rules", rules, "--input", comments)
    assert code == 2 and one_error_line(err).endswith(f"{rules}: line 1: duplicate key 'text'")


# --- 6. one CSV cell limit; streams and folders as --input --------------------------------------------------


def test_a_long_cell_reads_in_score_as_in_predict(model_dir, tmp_path):
    """A 200 KiB comment (over the csv module's 128 KiB default) in a CSV, as in its JSONL twin."""
    long = huge_comment(200 * 1024)
    comments = write_csv(tmp_path / "long.csv", [{"body": "fine"}, {"body": long}])
    examples = write_csv(
        tmp_path / "examples.csv", [{"text": long, "label": 1}, {"text": "nice", "label": 0}]
    )
    out = tmp_path / "scored.jsonl"
    code, _, err = run(
        "score", "--model-dir", model_dir, "--rule", RULE, "--examples", examples, "--input", comments,
        "--output", out,
    )  # fmt: skip
    assert code == 0, err
    assert [json.loads(line)["body"] for line in out.read_text().splitlines()] == ["fine", long]
    from rulebert.core.files import CSV_FIELD_LIMIT
    from rulebert.domain import data

    assert CSV_FIELD_LIMIT == 1 << 30 and "CSV_FIELD_LIMIT" in vars(data)  # predict's limit is this one


def test_a_stream_is_read_and_a_folder_named_as_one(model_dir, tmp_path):
    import os
    import subprocess
    import sys
    import threading

    comments = write_csv(tmp_path / "comments.csv", [{"body": c} for c in COMMENTS])
    # a shell's process substitution: /dev/fd/63, a pipe
    command = '"$0" -m rulebert.cli score --model-dir "$1" --rule "$2" --input <(cat "$3") --no-progress'
    done = subprocess.run(
        ["bash", "-c", command, sys.executable, str(model_dir), RULE, str(comments)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [row[0] for row in csv.reader(io.StringIO(done.stdout))][1:] == COMMENTS
    # a named FIFO, fed by a writer that waits for the reader
    fifo = tmp_path / "comments.fifo.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(comments.read_bytes()), daemon=True)
    writer.start()
    out = tmp_path / "scored.csv"
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", fifo, "--output", out)
    writer.join(timeout=60)
    assert code == 0 and len(out.read_text().splitlines()) == 1 + len(COMMENTS), err
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", tmp_path)
    assert code == 2 and one_error_line(err).endswith(f"{tmp_path}: is a directory, not a file")
    code, _, err = run("score", "--model-dir", model_dir, "--rule", RULE, "--input", tmp_path / "none.csv")
    assert code == 2 and one_error_line(err).endswith("none.csv: file not found")


# --- 7. one server per state dir ----------------------------------------------------------------------------


def serve(model_dir: Path, *args: str | Path) -> tuple[int, str, str]:
    """``rulebert serve`` expected to fail at start-up with a one-line error (a server that starts instead
    is stopped after 60 s: a TimeoutExpired)."""
    import os
    import subprocess
    import sys

    from tests.serving import free_port

    argv = [sys.executable, "-m", "rulebert.cli", "serve", "--model-dir", str(model_dir)]
    argv += ["--port", str(free_port()), *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_a_second_server_on_a_state_dir_refuses_to_start(model_dir, tmp_path):
    state = tmp_path / "state"
    with start_server(model_dir, tmp_path / "a.log", extra_args=("--state-dir", str(state))) as first:
        staging = state / "models" / ".adapting-job"  # what a running adaptation is writing
        staging.mkdir()
        code, _, err = serve(model_dir, "--state-dir", state)
        assert code == 2 and one_error_line(err).endswith(
            f"{state}: --state-dir is in use by another rulebert serve (pid {first.process.pid}); one server "
            "per state dir"
        )
        assert staging.is_dir()  # the first server's job was left alone
        assert httpx.get(first.url + "/healthz").status_code == 200
    # the lock goes with its server: the next one starts (and recovers the folder)
    with start_server(model_dir, tmp_path / "b.log", extra_args=("--state-dir", str(state))) as second:
        assert (state / "server.lock").read_text().strip() == str(second.process.pid)
        assert not staging.exists()


# --- 8. start-up errors in one line -------------------------------------------------------------------------


def test_unusable_state_places_are_one_line_errors_before_any_output(model_dir, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").write_text("not a folder")
    code, out, err = serve(model_dir, "--state-dir", state)
    assert code == 2 and out == ""
    assert one_error_line(err).endswith(
        f"{state / 'models'}: the state dir's models folder exists and is not a directory"
    )
    fresh = tmp_path / "fresh"
    code, out, err = serve(model_dir, "--state-dir", fresh, "--rules-db", "/proc/rules.sqlite3")
    assert code == 2 and out == ""
    assert one_error_line(err).endswith(
        "/proc/rules.sqlite3: cannot create the rules database (No such file or directory)"
    )
    code, _, err = serve(model_dir, "--state-dir", "/proc/rulebert-state")
    assert code == 2 and one_error_line(err).endswith(
        "/proc/rulebert-state: cannot create --state-dir (No such file or directory)"
    )


# --- 9. loose permissions ---------------------------------------------------------------------------------


def test_a_loose_state_dir_and_rules_db_are_made_private_with_one_warning(model_dir, tmp_path):
    import os
    import stat

    from rulebert.server.state import ServerState

    state = tmp_path / "state"
    ServerState(state)  # an earlier server's files
    os.chmod(state, 0o777)
    os.chmod(state / "models", 0o755)
    os.chmod(state / "rules.sqlite3", 0o666)
    log = tmp_path / "server.log"
    with start_server(model_dir, log, extra_args=("--state-dir", str(state))):
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "models").stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "rules.sqlite3").stat().st_mode) == 0o600
    warnings = [line for line in log.read_text().splitlines() if "open to other users" in line]
    assert warnings == [
        f"rulebert: warning: {state}: --state-dir was mode 777 (open to other users); now 700",
        f"rulebert: warning: {state / 'models'}: the state dir's models folder was mode 755 (open to other "
        "users); now 700",
        f"rulebert: warning: {state / 'rules.sqlite3'}: was mode 666 (open to other users); now 600",
    ], log.read_text()


def test_a_shared_sticky_folder_is_never_chmod_ed(tmp_path, caplog):
    import os
    import stat

    from rulebert.server.state import state_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # as /tmp
    state_folder(shared, "--state-dir")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert "shared (sticky) folder" in caplog.text


# --- 10. an unreadable stored rule --------------------------------------------------------------------------


def test_one_unreadable_stored_rule_fails_alone(model_dir, tmp_path):
    import sqlite3

    state = tmp_path / "state"
    log = tmp_path / "server.log"
    with start_server(model_dir, log, extra_args=("--state-dir", str(state))) as running:
        assert post(running, "/v1/rules/good", {"text": RULE}, "PUT").status_code == 201
        with sqlite3.connect(state / "rules.sqlite3") as db:  # what another program (or a bad disk) left
            db.execute("INSERT INTO rules VALUES ('broken', '{\"text\": 5}', 1.0)")
            db.execute("INSERT INTO rules VALUES ('garbage', 'not json', NULL)")
        for _ in range(2):
            listed = httpx.get(running.url + "/v1/rules")
            assert listed.status_code == 200 and [r["id"] for r in listed.json()["rules"]] == ["good"]
        why = "stored rule 'broken': field 'text' must be a non-empty string: PUT it again or DELETE it"
        answer = httpx.get(running.url + "/v1/rules/broken")
        assert answer.status_code == 409 and answer.json()["detail"] == why, answer.text
        assert httpx.get(running.url + "/v1/rules/good").status_code == 200
        assert httpx.get(running.url + "/v1/rules/none").status_code == 404
        scored = post(running, "/v1/score", {"comment": COMMENTS[0], "rules": [{"id": "good"}]})
        assert scored.status_code == 200, scored.text
        scored = post(
            running, "/v1/score", {"comment": COMMENTS[0], "rules": [{"id": "good"}, {"id": "broken"}]}
        )
        assert scored.status_code == 422 and scored.json()["detail"] == [
            {
                "type": "unreadable_rule",
                "loc": ["body", "rules", 1, "id"],
                "msg": why,
                "input": "broken",
            }
        ]
        adapt = post(running, "/v1/adapt", {})  # every readable rule: 'good' has no examples to adapt on
        assert adapt.status_code == 422 and "rule 'good': adapting needs" in adapt.text, adapt.text
        assert post(running, "/v1/rules/broken", {"text": RULE}, "PUT").status_code == 200  # the way out
        assert httpx.get(running.url + "/v1/rules/broken").status_code == 200
    skipped = [line for line in log.read_text().splitlines() if "skipped (PUT it again" in line]
    assert len(skipped) == 2 and "'broken'" in skipped[0] and "'garbage': not JSON" in skipped[1], skipped
