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
import sqlite3
import time

import httpx
import numpy as np
import pytest

from rulebert.domain.examples import ExampleModel, ExampleModelCache, RuleExamples
from rulebert.server.failures import BurstLog
from rulebert.server.job_store import JobStore
from rulebert.server.rule_store import RuleStore
from rulebert.server.schema import MAX_REQUEST_EXAMPLE_BYTES, MAX_REQUEST_EXAMPLES
from rulebert.server.state import Jobs
from tests.serving import RULE, make_model_dir, start_server


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("hardening3b") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served3b")
    with start_server(model_dir, folder / "server.log", extra_args=("--state-dir", str(folder / "s"))) as up:
        yield up


def post(server, path: str, body: dict) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(server.url + path, content=json.dumps(body).encode(), headers=headers, timeout=600)


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
