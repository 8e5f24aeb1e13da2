"""The HTTP API, tested against the real server (``python -m rulebert.cli serve``) over loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from rulebert.inference.predict import Scorer
from rulebert.server.app import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    MAX_COMMENT_BYTES,
    MAX_EXAMPLES,
    MAX_RULES,
    create_app,
)
from tests.serving import COMMENTS, RULE, make_model_dir, start_server

METRICS = {"validation": {"roc_auc": 0.61, "col_auc": 0.58}, "threshold": 0.37}


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "model", metrics=METRICS)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with start_server(model_dir, tmp_path_factory.mktemp("log") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer(model_dir, device="cpu")


def post(server, path, payload=None, **kwargs):
    if payload is not None:
        kwargs["json"] = payload
    return httpx.post(server.url + path, timeout=60, **kwargs)


def test_one_comment_many_rules_in_order(server, scorer):
    rules = [
        {"id": "ads", "text": RULE, "positive_examples": [COMMENTS[0]], "negative_examples": [COMMENTS[1]]},
        {"text": "No legal advice: do not offer or request legal advice."},
        {"id": "civil", "text": "Be civil. " * 20},
    ]
    response = post(server, "/v1/score", {"comment": COMMENTS[2], "subreddit": "news", "rules": rules})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["id"] for s in body["scores"]] == ["ads", "1", "civil"]
    assert [s["rule"] for s in body["scores"]] == [r["text"] for r in rules]
    got = np.array([s["probability"] for s in body["scores"]])
    assert np.all((got >= 0) & (got <= 1))
    expected = scorer.score(  # the examples of "ads" are used at scoring time (a rule the model never saw)
        [COMMENTS[2]] * 3,
        [r["text"] for r in rules],
        ["news"] * 3,
        positive_examples=[r.get("positive_examples", []) for r in rules],
        negative_examples=[r.get("negative_examples", []) for r in rules],
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert body["model"].startswith("model@")


def test_batch_keeps_item_order(server, scorer):
    rule = {"text": RULE}
    items = [{"comment": c, "rule": rule} for c in COMMENTS] + [
        {"comment": COMMENTS[0], "rule": {"text": "x"}}
    ]
    response = post(server, "/v1/score/batch", {"items": items})
    assert response.status_code == 200, response.text
    got = np.array([s["probability"] for s in response.json()["scores"]])
    expected = scorer.score([i["comment"] for i in items], [i["rule"]["text"] for i in items])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(set(np.round(expected, 7))) > 1  # the rows differ, so a shuffled answer would show


def _many(value, n):
    return [value] * n


RULE_OK = {"text": "No spam."}
INVALID = {
    "empty comment": ("/v1/score", {"comment": "  ", "rules": [RULE_OK]}, "comment"),
    "comment too big": (
        "/v1/score",
        {"comment": "é" * (MAX_COMMENT_BYTES // 2 + 1), "rules": [RULE_OK]},
        "comment",
    ),
    "rule too big": ("/v1/score", {"comment": "hi", "rules": [{"text": "r" * 5000}]}, "text"),
    "no rules": ("/v1/score", {"comment": "hi", "rules": []}, "rules"),
    "too many rules": ("/v1/score", {"comment": "hi", "rules": _many(RULE_OK, MAX_RULES + 1)}, "rules"),
    "too many examples": (
        "/v1/score",
        {"comment": "hi", "rules": [{"text": "r", "positive_examples": _many("ex", MAX_EXAMPLES + 1)}]},
        "positive_examples",
    ),
    "unknown field": ("/v1/score", {"comment": "hi", "rules": [RULE_OK], "rule": "r"}, "rule"),
    "wrong type": ("/v1/score", {"comment": 12, "rules": [RULE_OK]}, "comment"),
    "missing rule": ("/v1/score/batch", {"items": [{"comment": "hi"}]}, "rule"),
    "too many items": (
        "/v1/score/batch",
        {"items": _many({"comment": "hi", "rule": RULE_OK}, MAX_BATCH + 1)},
        "items",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_fields_are_422_naming_the_field(server, case):
    path, payload, field = INVALID[case]
    response = post(server, path, payload)
    assert response.status_code == 422, response.text
    assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}


def test_malformed_json_is_422(server):
    response = post(
        server, "/v1/score", content=b'{"comment": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_oversize_body_is_413_and_the_server_stays_up(server):
    payload = {"comment": "hi", "rules": [RULE_OK], "pad": "x" * (MAX_BODY_BYTES + 10)}
    response = post(server, "/v1/score", payload)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: the server has to count as the body arrives
        data = json.dumps(payload).encode()
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    response = post(server, "/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"


def test_model_info(server, model_dir):
    info = httpx.get(server.url + "/v1/model").json()
    assert info["threshold"] == pytest.approx(0.37)
    assert info["validation"] == METRICS["validation"]
    assert info["checkpoint"] == "tiny"
    assert info["config"]["max_length"] == 64
    assert info["limits"]["items_per_batch"] == MAX_BATCH
    assert info["model_dir"] == model_dir.name  # the name only: an absolute path tells about the host
    assert info["embedder"] is False and info["embedder_checkpoint"] is None  # a model dir without one


def test_openapi_docs_and_page_are_served(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/v1/model", "/healthz"} <= set(schema["paths"])
    assert httpx.get(server.url + "/docs").status_code == 404  # Swagger UI loads a CDN: off (issue 27)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="comments"' in page.text


class RecordingScorer:
    """Stands in for a Scorer: records what the app passes to ``score``."""

    model_dir = "fake"
    record: dict = {}
    metrics: dict = {}
    threshold = 0.5

    def __init__(self):
        self.calls = []

    def score(self, bodies, rules, subreddits=None, *, positive_examples=None, negative_examples=None):
        self.calls.append((list(bodies), list(rules), subreddits, positive_examples, negative_examples))
        return np.linspace(0.1, 0.9, len(bodies))


def test_examples_reach_the_scorer_per_row():
    from fastapi.testclient import TestClient

    fake = RecordingScorer()
    client = TestClient(create_app(fake))
    rules = [{"text": "a", "positive_examples": ["p1", "p2"]}, {"text": "b", "negative_examples": ["n1"]}]
    response = client.post("/v1/score", json={"comment": "c", "subreddit": "news", "rules": rules})
    assert response.status_code == 200
    assert [s["probability"] for s in response.json()["scores"]] == [0.1, 0.9]
    bodies, texts, subreddits, positive, negative = fake.calls[0]
    assert (bodies, texts, subreddits) == (["c", "c"], ["a", "b"], ["news", "news"])
    assert positive == [["p1", "p2"], []] and negative == [[], ["n1"]]


def test_serve_with_a_bad_model_dir_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rulebert.cli", "serve", "--model-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"rulebert: error: {tmp_path / 'nope'}: model dir does not exist"
    ]
