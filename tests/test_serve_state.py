"""Stored rules (/v1/rules), scoring by a stored rule's id, and adaptation jobs (/v1/adapt, /v1/jobs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from rulebert.server.app import create_app
from tests.serving import COMMENTS, RULE, make_model_dir, start_server

from .test_adapt import MEDICAL, medical_rule

MEDICAL_BODY = {
    "text": MEDICAL,
    "positive_examples": list(medical_rule().positive_examples),
    "negative_examples": list(medical_rule().negative_examples),
}


@pytest.fixture()
def model_dir(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return make_model_dir(tiny_checkpoint, tmp_path / "model", metrics={"threshold": 0.4})


@pytest.fixture()
def client(model_dir: Path, tmp_path: Path) -> TestClient:
    return TestClient(create_app(model_dir, state_dir=tmp_path / "state"))


def test_rules_create_read_list_replace_delete(client: TestClient) -> None:
    assert client.get("/v1/rules").json() == {"rules": []}
    created = client.put("/v1/rules/medical", json=MEDICAL_BODY)
    assert created.status_code == 201
    body = created.json()
    assert body["id"] == "medical" and body["text"] == MEDICAL and body["mode"] == "examples"
    assert body["positive_examples"] == MEDICAL_BODY["positive_examples"]
    replaced = client.put("/v1/rules/medical", json={"text": "No medicine talk"})
    assert replaced.status_code == 200 and replaced.json()["mode"] == "zero-shot"  # no examples now
    assert client.get("/v1/rules/medical").json()["text"] == "No medicine talk"
    client.put("/v1/rules/ads", json={"text": RULE})
    assert [r["id"] for r in client.get("/v1/rules").json()["rules"]] == ["ads", "medical"]
    assert client.delete("/v1/rules/medical").status_code == 204
    assert client.get("/v1/rules/medical").status_code == 404
    assert client.delete("/v1/rules/medical").status_code == 404


def test_rule_bodies_are_validated_like_score_requests(client: TestClient) -> None:
    assert client.put("/v1/rules/bad id", json=MEDICAL_BODY).status_code == 422
    assert client.put("/v1/rules/" + "x" * 65, json=MEDICAL_BODY).status_code == 422
    too_many = {**MEDICAL_BODY, "positive_examples": ["spam"] * 17}
    answer = client.put("/v1/rules/medical", json=too_many)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "positive_examples"]
    assert client.put("/v1/rules/medical", json={**MEDICAL_BODY, "colour": "red"}).status_code == 422
    assert client.put("/v1/rules/medical", json={"text": ""}).status_code == 422
    assert client.get("/v1/rules").json() == {"rules": []}  # nothing half-stored


def test_score_by_stored_rule_id_uses_its_text_and_examples(client: TestClient) -> None:
    client.put("/v1/rules/medical", json=MEDICAL_BODY)
    comment = "take two 200mg sertraline pills"
    by_id = client.post("/v1/score", json={"comment": comment, "rules": [{"id": "medical"}]}).json()
    inline = client.post(
        "/v1/score", json={"comment": comment, "rules": [{"id": "medical", **MEDICAL_BODY}]}
    ).json()
    assert by_id["scores"][0]["rule"] == MEDICAL and by_id["scores"][0]["mode"] == "examples"
    assert by_id["scores"][0]["probability"] == pytest.approx(inline["scores"][0]["probability"])
    assert by_id["scores"][0]["flagged"] == (by_id["scores"][0]["probability"] >= 0.4)
    batch = client.post(
        "/v1/score/batch",
        json={"items": [{"id": "c1", "comment": comment, "rule": {"id": "medical"}}], "threshold": 0.0},
    ).json()
    assert batch["scores"][0]["item_id"] == "c1" and batch["scores"][0]["flagged"] is True
    missing = client.post(
        "/v1/score", json={"comment": comment, "rules": [{"id": "medical"}, {"id": "nope"}]}
    )
    assert missing.status_code == 422
    assert missing.json()["detail"] == [
        {
            "type": "not_found",
            "loc": ["body", "rules", 1, "id"],
            "msg": "no stored rule 'nope'",
            "input": "nope",
        }
    ]
    bad = client.post("/v1/score/batch", json={"items": [{"comment": comment, "rule": {"id": "nope"}}]})
    assert bad.json()["detail"][0]["loc"] == ["body", "items", 0, "rule", "id"]
    neither = client.post("/v1/score", json={"comment": comment, "rules": [{}]})
    assert neither.status_code == 422 and "a rule needs its text" in neither.text


def test_without_a_state_dir_rules_are_not_found(model_dir: Path) -> None:
    client = TestClient(create_app(model_dir))
    assert client.get("/v1/rules").status_code == 404
    assert client.post("/v1/adapt").status_code == 404
    answer = client.post("/v1/score", json={"comment": "hi", "rules": [{"id": "medical"}]})
    assert answer.status_code == 422 and "serve --state-dir" in answer.text


def test_adapt_refuses_what_it_cannot_do(client: TestClient) -> None:
    assert client.post("/v1/adapt").status_code == 422  # no stored rules
    client.put("/v1/rules/lonely", json={"text": "No x", "positive_examples": ["x x x"]})
    answer = client.post("/v1/adapt", json={"rules": ["lonely"]})
    assert answer.status_code == 422 and "at least one positive and one negative" in answer.text
    assert client.post("/v1/adapt", json={"rules": ["nope"]}).status_code == 422
    assert client.post("/v1/adapt", json={"rules": "nope"}).status_code == 422
    assert client.get("/v1/jobs/0123456789ab").status_code == 404


def wait_for(client: httpx.Client | TestClient, job: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/v1/jobs/{job}").json()
        if state["status"] in ("succeeded", "failed"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} not finished after {timeout} s")


def test_one_job_at_a_time_and_a_failed_job_says_why(client: TestClient, model_dir: Path) -> None:
    client.put("/v1/rules/medical", json=MEDICAL_BODY)
    first = client.post("/v1/adapt")
    assert first.status_code == 202 and first.json()["status"] in ("queued", "running")
    second = client.post("/v1/adapt")
    assert second.status_code == 409 and first.json()["job"] in second.text
    assert wait_for(client, first.json()["job"])["status"] == "succeeded"
    # the served model dir is damaged between jobs: the next job fails with the one-line reason
    served = client.get("/v1/model").json()["model_dir"]
    config = model_dir.parent / "state" / "models" / served / "config.json"
    config.write_text(config.read_text() + " ")
    failed = wait_for(client, client.post("/v1/adapt").json()["job"])
    assert (
        failed["status"] == "failed" and "config.json" in failed["message"] and "\n" not in failed["message"]
    )
    assert client.post("/v1/score", json={"comment": "hi", "rules": [{"id": "medical"}]}).status_code == 200


def test_adaptation_while_a_client_keeps_scoring(model_dir: Path, tmp_path: Path) -> None:
    """The server adapts in the background; scoring never fails; then it serves the adapted model, and a
    restart with the same state dir serves it again with the stored rules."""
    state = tmp_path / "state"
    args = ("--state-dir", str(state))
    with start_server(model_dir, tmp_path / "server.log", extra_args=args) as server:
        client = httpx.Client(base_url=server.url, timeout=60)
        assert client.put("/v1/rules/medical", json=MEDICAL_BODY).status_code == 201
        before = client.get("/v1/model").json()["model"]
        failures, answers, stop = [], [], threading.Event()

        def keep_scoring() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as scorer:
                while not stop.is_set():
                    request = {
                        "comment": COMMENTS[len(answers) % len(COMMENTS)],
                        "rules": [{"id": "medical"}],
                    }
                    try:
                        answer = scorer.post("/v1/score", json=request)
                        (answers if answer.status_code == 200 else failures).append(answer.status_code)
                        if answer.status_code == 200:
                            answers[-1] = answer.json()["scores"][0]["mode"]
                    except httpx.HTTPError as err:
                        failures.append(repr(err))

        thread = threading.Thread(target=keep_scoring)
        thread.start()
        try:
            started = client.post("/v1/adapt", json={"rules": ["medical"]})
            assert started.status_code == 202
            done = wait_for(client, started.json()["job"])
        finally:
            time.sleep(0.5)
            stop.set()
            thread.join()
        assert done["status"] == "succeeded", done
        assert failures == []
        assert "examples" in answers and answers[-1] == "trained"  # scored throughout, then by the new model
        info = client.get("/v1/model").json()
        assert info["model"] == done["model"] != before
        assert info["adapted_from"] == model_dir.name and MEDICAL.lower() in info["trained_rules"]
        scored = client.post("/v1/score", json={"comment": "take 200mg", "rules": [{"id": "medical"}]}).json()
        assert scored["model"] == done["model"] and scored["scores"][0]["mode"] == "trained"
    with start_server(model_dir, tmp_path / "again.log", extra_args=args) as server:
        client = httpx.Client(base_url=server.url, timeout=60)
        assert client.get("/v1/model").json()["model"] == done["model"]
        assert client.get("/v1/rules/medical").json()["mode"] == "trained"


def test_one_rules_schema_for_rules_jsonl_and_the_server():
    """RULES.jsonl's fields are the server's stored-rule body plus its id; both go through
    ``rule_from_json``."""
    from rulebert.domain.rules import RULE_FIELDS
    from rulebert.server.schema import Rule, RuleBody

    assert ("id", *RuleBody.model_fields) == RULE_FIELDS
    assert tuple(Rule.model_fields) == RULE_FIELDS
