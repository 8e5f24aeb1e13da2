"""Hardening, second round (issue 27), for ``rulebert serve``: cross-site requests, jobs that survive a
``kill -9``, no CDN docs, owner-only state files, atomic rule inserts, strict types, framing.

Every test talks to the real server (``python -m rulebert.cli serve``) on loopback; the page's tests drive
headless Chromium.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import RULE, start_server

from .test_serve_state import MEDICAL_BODY, wait_for

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    """A model dir whose record names its base checkpoint by an absolute path, as a local --model does."""
    from rulebert.core.config import TrainConfig
    from rulebert.model.backbones import load_checkpoint
    from rulebert.model.model_dir import save_model_dir

    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    out = tmp_path_factory.mktemp("hardening") / "model"
    config = TrainConfig(model=str(tiny_checkpoint), max_length=64)
    return save_model_dir(
        out, model, tokenizer, config=config, base_model=str(tiny_checkpoint), data={}, metrics={}
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("served") / "state"


@pytest.fixture(scope="module")
def server(model_dir, state_dir):
    log = state_dir.parent / "server.log"
    with start_server(model_dir, log, extra_args=("--state-dir", str(state_dir))) as running:
        yield running


# --- 2. cross-site requests -------------------------------------------------------------------------------


def test_a_foreign_origin_cannot_change_state(server):
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL}
    answer = httpx.post(server.url + "/v1/adapt", content=b"", headers=form)
    assert answer.status_code == 403 and "Origin" in answer.json()["detail"]
    foreign = {"Content-Type": "application/json", "Origin": EVIL}
    body = json.dumps({"text": RULE}).encode()
    assert httpx.put(server.url + "/v1/rules/csrf", content=body, headers=foreign).status_code == 403
    assert httpx.delete(server.url + "/v1/rules/csrf", headers={"Origin": EVIL}).status_code == 403
    assert httpx.post(server.url + "/v1/adapt", headers={"Origin": "null"}).status_code == 403
    assert httpx.get(server.url + "/v1/rules/csrf").status_code == 404  # nothing was stored
    assert httpx.get(server.url + "/v1/model").json()["adapting"] is None  # nothing was started


def test_state_changes_need_a_json_body(server):
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; b=x"):
        headers = {"Content-Type": content_type}
        body = json.dumps({"text": RULE}).encode()
        put = httpx.put(server.url + "/v1/rules/typed", content=body, headers=headers)
        assert put.status_code == 415, put.text
        assert httpx.post(server.url + "/v1/adapt", content=b"", headers=headers).status_code == 415
    # the server's own origin, JSON: as the page and curl send them
    same = {"Origin": server.url, "Content-Type": "application/json; charset=utf-8"}
    body = json.dumps({"text": RULE}).encode()
    assert httpx.put(server.url + "/v1/rules/typed", content=body, headers=same).status_code == 201
    assert httpx.delete(server.url + "/v1/rules/typed", headers={"Origin": server.url}).status_code == 204


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)")
def test_a_form_on_another_page_cannot_start_an_adaptation(server):
    """What a hostile page would do: a form posted across sites, as a browser sends it."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_web import CHROMIUM_ARGS

    httpx.put(server.url + "/v1/rules/medical", json=MEDICAL_BODY).raise_for_status()
    form = f'<form method="post" action="{server.url}/v1/adapt"><input name="x" value="1"></form>'
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content(form)
            with page.expect_navigation():
                page.evaluate("document.forms[0].submit()")
            assert "cross-origin request refused" in page.content()
        finally:
            browser.close()
    assert httpx.get(server.url + "/v1/model").json()["adapting"] is None
    httpx.delete(server.url + "/v1/rules/medical").raise_for_status()


# --- 4, 9, 16. what the server shows ---------------------------------------------------------------------


def test_no_docs_that_load_a_cdn(server):
    assert httpx.get(server.url + "/docs").status_code == 404
    assert httpx.get(server.url + "/redoc").status_code == 404
    assert "/v1/score" in httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "cdn" not in httpx.get(server.url + "/").text.lower()


def test_model_info_names_the_checkpoint_without_its_path(server, tiny_checkpoint):
    info = httpx.get(server.url + "/v1/model").json()
    assert info["checkpoint"] == tiny_checkpoint.name
    assert str(tiny_checkpoint) not in json.dumps(info)
    assert info["config"]["model"] == tiny_checkpoint.name


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)")
def test_the_page_cannot_be_framed(server):
    headers = httpx.get(server.url + "/").headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_web import CHROMIUM_ARGS

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content(f'<iframe src="{server.url}/" width="600" height="400"></iframe>')
            page.wait_for_timeout(1500)
            frames = [f for f in page.frames if f is not page.main_frame]
            assert frames and all(f.url != server.url + "/" or not f.query_selector("#rule") for f in frames)
        finally:
            browser.close()


# --- 10, 11, 12, 15. rules and requests -------------------------------------------------------------------


def _put_at_once(url: str, barrier: threading.Barrier, statuses: list[int]) -> None:
    barrier.wait()
    statuses.append(httpx.put(url, json={"text": RULE}).status_code)


def test_concurrent_puts_of_a_new_rule_create_it_once(server):
    for round_ in range(3):
        statuses: list[int] = []
        barrier = threading.Barrier(20)
        url = f"{server.url}/v1/rules/race-{round_}"
        threads = [threading.Thread(target=_put_at_once, args=(url, barrier, statuses)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(statuses) == [200] * 19 + [201], statuses


@pytest.mark.parametrize("rule_id", ["%2E", "%2E%2E", "."])
def test_dot_rule_ids_are_refused(server, rule_id):
    answer = httpx.put(f"{server.url}/v1/rules/{rule_id}", json={"text": RULE})
    assert answer.status_code in (404, 405, 422), answer.text  # never stored
    assert all(r["id"] not in (".", "..") for r in httpx.get(server.url + "/v1/rules").json()["rules"])


def test_dot_rule_ids_are_refused_everywhere(tmp_path):
    from rulebert.core.errors import RulebertError
    from rulebert.domain.rules import StoredRule, read_rules_jsonl
    from rulebert.server.rule_store import RuleStore

    with pytest.raises(RulebertError, match="not '.' or '..'"):
        RuleStore(tmp_path / "r.sqlite3").put(StoredRule("..", "text"))
    (tmp_path / "rules.jsonl").write_text('{"id": ".", "text": "t"}\n')
    with pytest.raises(RulebertError, match="rules.jsonl: line 1"):
        read_rules_jsonl(tmp_path / "rules.jsonl")


def test_state_files_are_private(server, state_dir):
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "models").stat().st_mode) == 0o700
    for name in ("rules.sqlite3", "jobs.sqlite3"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("threshold", ["0.5", True, None, [0.5]])
def test_a_threshold_is_a_number_not_a_string_or_a_bool(server, threshold):
    body = {"comment": "hi", "rules": [{"text": RULE}], "threshold": threshold}
    answer = httpx.post(server.url + "/v1/score", json=body)
    assert answer.status_code == (200 if threshold is None else 422), answer.text
    batch = {"items": [{"comment": "hi", "rule": {"text": RULE}}], "threshold": threshold}
    assert httpx.post(server.url + "/v1/score/batch", json=batch).status_code == answer.status_code
    assert httpx.post(server.url + "/v1/score", json={**body, "threshold": 1}).status_code == 200


def test_adapting_on_an_empty_list_says_so(server):
    httpx.put(server.url + "/v1/rules/kept", json={"text": RULE}).raise_for_status()
    answer = httpx.post(server.url + "/v1/adapt", json={"rules": []})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("rules is empty: name at least one stored rule")
    httpx.delete(server.url + "/v1/rules/kept").raise_for_status()


# --- 3. a job killed with the server ----------------------------------------------------------------------


def test_a_job_killed_with_the_server_is_failed_after_a_restart(model_dir, tmp_path):
    state = tmp_path / "state"
    args = ("--state-dir", str(state))
    with start_server(model_dir, tmp_path / "first.log", extra_args=args) as first:
        httpx.put(first.url + "/v1/rules/medical", json=MEDICAL_BODY).raise_for_status()
        job = httpx.post(first.url + "/v1/adapt").json()["job"]
        deadline = time.monotonic() + 180
        while not list((state / "models").glob(".adapting-*")):
            assert time.monotonic() < deadline, "the job never started writing"
            assert httpx.get(f"{first.url}/v1/jobs/{job}").json()["status"] in ("queued", "running")
            time.sleep(0.05)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
    assert list((state / "models").glob(".adapting-*"))  # what the kill left behind
    with start_server(model_dir, tmp_path / "second.log", extra_args=args) as second:
        answer = httpx.get(f"{second.url}/v1/jobs/{job}")
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["status"] == "failed" and found["message"].startswith("interrupted"), found
        assert found["finished"] is not None
        assert not list((state / "models").glob(".adapting-*"))
        assert "interrupted" in (tmp_path / "second.log").read_text()
        # and a new job can run to the end
        again = httpx.post(second.url + "/v1/adapt").json()["job"]
        with httpx.Client(base_url=second.url) as client:
            assert wait_for(client, again)["status"] == "succeeded"
