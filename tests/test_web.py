"""The web page at ``/``, driven by headless Debian Chromium through Playwright (no ``playwright install``).

``make test`` installs /usr/bin/chromium when it is missing. Set RULEBERT_SCREENSHOT=docs/web.png to
refresh the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving import COMMENTS, RULE, make_model_dir, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)"
)


COMMENTS_SHOWN = [*COMMENTS, "<b>not bold</b> & a tag that must stay text"]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    """A model dir whose recommended threshold is the median score of the comments the test types, so
    that some land above the mark and some below."""
    from rulebert.inference.predict import Scorer
    from rulebert.model.model_dir import set_threshold

    model_dir = make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("web") / "model")
    scores = Scorer(model_dir, device="cpu").score(COMMENTS_SHOWN, [RULE] * len(COMMENTS_SHOWN))
    metrics = {"validation": {"roc_auc": 0.5}}
    (model_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    set_threshold(
        model_dir, float(np.median(scores))
    )  # metrics.json's threshold is checked against the record
    return model_dir


@pytest.fixture(scope="module")
def threshold(model_dir):
    return json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))["threshold"]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with start_server(model_dir, tmp_path_factory.mktemp("log") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:  # one per thread: every test shares it
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
    return page


def test_page_scores_comments_sorted_with_the_threshold_marked(server, page, threshold, tmp_path):
    comments = COMMENTS_SHOWN
    page.fill("#rule", RULE)
    # No examples here: with three of them the per-rule model's probabilities bunch on one side of the
    # threshold, and this test is about the page's sorting and threshold mark (examples: test_examples.py).
    page.fill("#positive", "")
    page.fill("#negative", "")
    page.fill("#comments", "\n".join(comments) + "\n\n")
    page.click("#score")
    page.wait_for_selector(f"#results li:nth-child({len(comments)})")

    rows = page.eval_on_selector_all(
        "#results li",
        "items => items.map(li => [li.querySelector('.text').textContent, Number(li.dataset.probability),"
        " li.classList.contains('over'), li.querySelector('.mark').style.left])",
    )
    shown = {text: p for text, p, _, _ in rows}
    assert sorted(shown) == sorted(comments)  # every comment once, as text (the <b> is not markup)
    assert page.locator("#results b").count() == 0
    probabilities = [p for _, p, _, _ in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all((p >= threshold) == over for _, p, over, _ in rows)
    assert any(over for _, _, over, _ in rows) and not all(over for _, _, over, _ in rows)
    assert {mark for *_, mark in rows} == {f"{100 * threshold:.1f}%"}
    assert page.text_content("#threshold") == f"{threshold:.2f}"

    rule = {"text": RULE}
    api = httpx.post(
        server.url + "/v1/score/batch", json={"items": [{"comment": c, "rule": rule} for c in comments]}
    ).json()
    for comment, score in zip(comments, api["scores"], strict=True):
        assert shown[comment] == pytest.approx(score["probability"], abs=1e-9)

    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RULEBERT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RULEBERT_SCREENSHOT"])


def test_page_reports_a_rejected_request(page):
    page.fill("#rule", "r" * 3000)  # over the rule size limit: the server answers 422
    page.fill("#comments", "hello")
    page.click("#score")
    page.wait_for_function("document.getElementById('status').className === 'error'")
    assert "text" in page.text_content("#status")


def test_page_stores_rules_and_shows_the_mode(model_dir, browser, tmp_path):
    """With --state-dir the page lists stored rules, saves the form as a rule, loads a rule back into the
    form, and says how every score was made: a visible warning when the rule is zero-shot."""
    args = ("--state-dir", str(tmp_path / "state"))
    with start_server(model_dir, tmp_path / "server.log", extra_args=args) as server:
        httpx.put(f"{server.url}/v1/rules/ads", json={"text": RULE}).raise_for_status()
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#rulelist li[data-id='ads']")
        assert "(zero-shot; 0+ / 0-)" in page.text_content("#rulelist")

        page.fill("#rule", "No medical advice")
        page.fill("#comments", "take two pills\nnice weather today")
        page.click("#score")
        page.wait_for_function("document.getElementById('mode').dataset.mode === 'zero-shot'")
        assert page.is_visible("#mode") and "warning" in page.get_attribute("#mode", "class")
        assert "these scores are a guess" in page.text_content("#mode")

        page.fill("#positive", "take 200mg of sertraline\nask for xanax")
        page.fill("#negative", "I like pizza\nthe river is cold")
        page.fill("#ruleid", "medical")
        page.click("#save")
        page.wait_for_selector("#rulelist li[data-id='medical']")
        stored = httpx.get(f"{server.url}/v1/rules/medical").json()
        assert stored["positive_examples"] == ["take 200mg of sertraline", "ask for xanax"]
        assert "(examples; 2+ / 2-)" in page.text_content("#rulelist li[data-id='medical']")
        page.click("#score")
        page.wait_for_function("document.getElementById('mode').dataset.mode === 'examples'")
        assert "warning" not in (page.get_attribute("#mode", "class") or "")

        page.fill("#rule", "")
        page.click("#rulelist li[data-id='medical'] button")
        assert page.input_value("#rule") == "No medical advice"
        assert page.input_value("#negative") == "I like pizza\nthe river is cold"
        page.close()
