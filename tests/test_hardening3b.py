"""Hardening, third round, the rest (issue 34): the work one scoring request may ask for and the memory of
the fitted examples models, a full disk under the state dir, tampered model dirs.

Real servers on loopback (tests/serving.py) and real subprocesses (``python -m rulebert.cli``), as in
tests/test_hardening3.py.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rulebert.core.files import sha256_file
from rulebert.domain.examples import ExampleModel, ExampleModelCache, RuleExamples
from rulebert.server.failures import BurstLog
from rulebert.server.job_store import JobStore
from rulebert.server.rule_store import RuleStore
from rulebert.server.schema import MAX_REQUEST_EXAMPLE_BYTES, MAX_REQUEST_EXAMPLES
from rulebert.server.state import Jobs
from tests import test_hardening3 as hardening3
from tests.conftest import make_frame
from tests.serving import RULE, make_model_dir, start_server
from tests.test_hardening_cli import one_error_line, run


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("hardening3b") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served3b")
    with start_server(model_dir, folder / "server.log", extra_args=("--state-dir", str(folder / "s"))) as up:
        yield up


def post(server, path: str, body: dict) -> httpx.Response:
    return hardening3.post(server, path, body, timeout=600)  # a request at the limit fits for a minute


def texts(rng: random.Random, n: int, size: int = 480) -> list[str]:
    """``n`` distinct texts of ``size`` ASCII bytes, made of random words."""
    out = []
    for i in range(n):
        words = [f"w{i}"]
        while sum(len(w) + 1 for w in words) < size:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))))
        out.append(" ".join(words)[:size])
    return out


def rules_with_examples(n_rules: int, size: int = 480, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "text": f"{RULE} ({i})",
            "positive_examples": texts(rng, 16, size),
            "negative_examples": texts(rng, 16, size),
        }
        for i in range(n_rules)
    ]


# --- 1. the work of one request, the memory of the fitted rules -------------------------------------------


def test_a_request_with_too_many_examples_to_fit_is_a_quick_413(server):
    """64 rules of 16 + 16 distinct 480-byte examples (a 1 MB body, inside the body limits) held the scorer
    for 215 s; now refused before any fitting, with a one-line reason naming the limit."""
    body = {"comment": "buy my stuff", "rules": rules_with_examples(64)}
    assert len(json.dumps(body)) < 1_048_576
    start = time.monotonic()
    answer = post(server, "/v1/score", body)
    seconds = time.monotonic() - start
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert "2048 distinct labelled examples" in detail and "examples_per_request" in detail
    assert "\n" not in detail and seconds < 10
    # one rule over the limit is refused as well; the server still scores
    over = {"comment": "hi", "rules": rules_with_examples(MAX_REQUEST_EXAMPLES // 32 + 1, seed=1)}
    assert post(server, "/v1/score", over).status_code == 413
    assert post(server, "/v1/score", {"comment": "hi", "rules": [{"text": RULE}]}).status_code == 200


def test_the_example_bytes_of_a_request_are_bounded_too(server):
    size = MAX_REQUEST_EXAMPLE_BYTES // MAX_REQUEST_EXAMPLES + 100  # the count at the limit, the bytes over
    body = {"comment": "hi", "rules": rules_with_examples(MAX_REQUEST_EXAMPLES // 32, size=size)}
    answer = post(server, "/v1/score", body)
    assert answer.status_code == 413 and "example_bytes_per_request" in answer.json()["detail"]


def test_a_batch_of_one_rule_repeated_counts_its_examples_once(server):
    rule = rules_with_examples(1)[0]
    items = [{"comment": f"comment {i}", "rule": rule} for i in range(MAX_REQUEST_EXAMPLES // 16)]
    answer = post(server, "/v1/score/batch", {"items": items})
    assert answer.status_code == 200, answer.text
    assert {s["mode"] for s in answer.json()["scores"]} == {"examples"}


def fitted(seed: int) -> ExampleModel:
    rng = random.Random(seed)
    examples = RuleExamples.of(texts(rng, 16), texts(rng, 16))
    return ExampleModel.fit(examples, np.linspace(0.1, 0.9, 32))


def test_the_examples_cache_is_bounded_by_memory_not_only_count():
    models = [fitted(seed) for seed in range(3)]
    cost = ExampleModelCache.estimate(models[0])
    assert cost > 200_000  # its TF-IDF vocabularies and coefficients are counted, not just the object
    cache = ExampleModelCache(size=256, budget=int(2.5 * cost))
    for i, model in enumerate(models):
        cache.put(str(i), model)
        cache.put(str(i), model)  # asked again: no double count
    assert cache.get("0") is None and cache.get("1") is models[1] and cache.get("2") is models[2]
    assert cache.bytes <= cache.budget
    small = ExampleModelCache(budget=cost // 2)  # a model larger than the whole budget is not kept
    small.put("0", models[0])
    assert small.get("0") is None and small.bytes == 0


# --- 2. a full disk under the state dir -------------------------------------------------------------------


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def full_database(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")  # what SQLite says of a full disk


@pytest.fixture()
def state_client(model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from rulebert.server.app import create_app

    state = tmp_path / "state"
    with TestClient(create_app(model_dir, state_dir=state), raise_server_exceptions=False) as client:
        yield client, state


def test_a_full_disk_is_a_json_507_logged_once_per_burst(state_client, monkeypatch, caplog):
    client, state = state_client
    rule = {"text": RULE, "positive_examples": ["buy now"], "negative_examples": ["nice day"]}
    assert client.put("/v1/rules/ads", json=rule).status_code == 201
    monkeypatch.setattr(RuleStore, "put", full_disk)
    monkeypatch.setattr(RuleStore, "delete", full_database)
    caplog.set_level(logging.WARNING)
    answers = [client.put(f"/v1/rules/r{i}", json=rule) for i in range(368)] + [
        client.delete("/v1/rules/ads")
    ]
    assert {a.status_code for a in answers} == {507}
    assert {a.headers["content-type"] for a in answers} == {"application/json"}
    detail = answers[0].json()["detail"]
    assert detail.startswith(f"no space left on the state dir: {state}") and "No space left" in detail
    assert "\n" not in detail and "disk is full" in answers[-1].json()["detail"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "507" in warnings[0].getMessage() and warnings[0].exc_info is None
    # the disk is freed: the server works again, scoring never stopped
    monkeypatch.undo()
    assert client.put("/v1/rules/r1", json=rule).status_code == 201
    assert client.post("/v1/score", json={"comment": "hi", "rules": [{"id": "ads"}]}).status_code == 200


def test_an_adaptation_job_that_cannot_be_recorded_is_a_507_and_not_left_active(state_client, monkeypatch):
    client, _ = state_client
    rule = {"text": RULE, "positive_examples": ["buy now"], "negative_examples": ["nice day"]}
    assert client.put("/v1/rules/ads", json=rule).status_code == 201
    monkeypatch.setattr(Jobs, "_run", lambda self, job, rules: None)  # no training here: only the queueing
    monkeypatch.setattr(JobStore, "save", full_disk)
    assert client.post("/v1/adapt").status_code == 507
    monkeypatch.setattr(JobStore, "save", lambda self, job: None)
    assert client.post("/v1/adapt").status_code == 202  # not 409: the failed job was never active


def test_other_store_failures_are_still_500s(state_client, monkeypatch):
    client, _ = state_client
    monkeypatch.setattr(RuleStore, "put", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert client.put("/v1/rules/x", json={"text": RULE}).status_code == 500


def test_the_burst_log_reports_the_failures_it_held_back(caplog):
    now = [0.0]
    burst = BurstLog(quiet=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for step in (0, 1, 1, 1, 100):
        now[0] += step
        burst("disk full")
    assert [r.getMessage() for r in caplog.records] == ["disk full", "disk full (3 more before this one)"]


# --- 3. a tampered model dir, its hashes redone -----------------------------------------------------------


@pytest.fixture(scope="module")
def exported_dir(model_dir, tmp_path_factory):
    """``model_dir`` with ``model.int8.onnx`` (``rulebert export --int8``)."""
    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(model_dir, folder)
    code, _, err = run("export", "--model-dir", folder, "--int8")
    assert code == 0, err
    return folder


@pytest.fixture()
def tampered(exported_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(exported_dir, folder)
    make_frame(6, seed=2, labelled=False).to_csv(tmp_path / "test.csv", index=False)
    return folder


def redo_hash(model_dir: Path, name: str) -> None:
    """Record ``name``'s new hash where the dir lists it (rulebert.json or onnx.json), as a crafted dir
    would: only the checks of what the file says can refuse it."""
    if name.endswith(".onnx"):
        record = json.loads((model_dir / "onnx.json").read_text())
        record[name]["sha256"] = sha256_file(model_dir / name)
        (model_dir / "onnx.json").write_text(json.dumps(record))
    else:
        record = json.loads((model_dir / "rulebert.json").read_text())
        record["files_sha256"][name] = sha256_file(model_dir / name)
        (model_dir / "rulebert.json").write_text(json.dumps(record))


def predict(model_dir: Path, backend: str) -> tuple[int, str, Path]:
    out = model_dir.parent / "submission.csv"
    test = model_dir.parent / "test.csv"
    code, _, err = run(
        "predict", "--model-dir", model_dir, "--test", test, "--output", out, "--backend", backend
    )
    return code, err, out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vocab_size": 100}, "vocab_size 100 does not hold the tokenizer's"),
        ({"vocab_size": 40_000}, "the model does not load (RuntimeError"),  # the weights' shapes differ
        ({"model_type": "evilbert"}, "model_type 'evilbert' is not one transformers knows"),
    ],
)
def test_a_config_json_edited_with_its_hash_redone_is_one_line(tampered, change, message):
    config = json.loads((tampered / "config.json").read_text())
    (tampered / "config.json").write_text(json.dumps({**config, **change}))
    redo_hash(tampered, "config.json")
    code, err, out = predict(tampered, "torch")
    line = one_error_line(err)
    assert code == 2 and f"{tampered / 'config.json'}: " in line and message in line
    assert not out.exists()
    code, _, err = run("export", "--model-dir", tampered)
    assert code == 2 and message in one_error_line(err)


def foreign_graph(path: Path) -> None:
    """A valid ONNX graph that is not a rulebert export: input_ids in, ``scores`` out."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["scores"], to=TensorProto.FLOAT)],
        "foreign",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "tokens"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize(
    ("swap", "message"),
    [
        (foreign_graph, "not a rulebert export: it has no output 'logits'"),
        (lambda path: path.write_bytes(b"not a graph at all"), "not a graph ONNX Runtime can run"),
    ],
)
def test_a_swapped_onnx_graph_is_one_line_before_any_output(tampered, swap, message):
    graph = tampered / "model.int8.onnx"
    swap(graph)
    redo_hash(tampered, graph.name)
    code, err, out = predict(tampered, "onnx")
    line = one_error_line(err)
    assert code == 2 and f"{graph}: {message}" in line
    assert not out.exists()  # the CSV header was written before ONNX Runtime refused the output name
