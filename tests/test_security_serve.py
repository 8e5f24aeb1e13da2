"""Hardening of ``rulebert serve``: API key, Host header check, hostile bodies, slow clients.

Most tests run against the real server (``python -m rulebert.cli serve``) on loopback, with raw sockets
where the HTTP client would hide what the server does. Every loop and read is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from rulebert.core.errors import RulebertError
from rulebert.server.app import MAX_BODY_BYTES, MAX_ERRORS, allowed_hosts_for, create_app
from tests.serving import COMMENTS, RULE, free_port, make_model_dir

KEY = "s3cret-key-for-tests_0123456789"
FILE_KEY = "another-key-from-a-file"
TIMEOUT = 2.0  # --request-timeout of the server that tests slow clients
MAX_CONNECTIONS = 4
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@contextlib.contextmanager
def serve(
    model_dir: Path, log: Path, *args: str, env: dict | None = None, key: str = KEY
) -> Iterator[Server]:
    """The real server on a free loopback port, with extra flags and environment; stopped after."""
    port = free_port()
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [sys.executable, "-m", "rulebert.cli", "serve", "--model-dir", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(url, port, process, key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    metrics = {"validation": {"roc_auc": 0.5}, "threshold": 0.5}
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("security") / "model", metrics=metrics)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """Default flags; the key comes from RULEBERT_API_KEY."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    with serve(model_dir, log, env={"RULEBERT_API_KEY": KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def strict_server(model_dir, tmp_path_factory):
    """Short request timeout, few connections, the key from a file, one extra allowed host."""
    folder = tmp_path_factory.mktemp("strict")
    key_file = folder / "key.txt"
    key_file.write_text(f"\n  {FILE_KEY}  \n", encoding="utf-8")
    args = ["--api-key-file", str(key_file), "--allowed-host", "example.org"]
    args += ["--request-timeout", str(TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)]
    env = {"RULEBERT_API_KEY": "not-this-one"}  # the file wins
    with serve(model_dir, folder / "server.log", *args, env=env, key=FILE_KEY) as running:
        yield running


# --- raw sockets ------------------------------------------------------------------------------------------


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def head(server: Server, method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool, float]:
    """(what came, whether the server closed the connection, seconds until the first byte) in ``within`` s."""
    start, data, first = time.monotonic(), b"", float("inf")
    while (left := start + within - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False, first
        except ConnectionResetError:
            return data, True, first
        if not chunk:
            return data, True, first
        if not data:
            first = time.monotonic() - start
        data += chunk
    return data, False, first


# --- 1. API key -------------------------------------------------------------------------------------------


def test_v1_needs_the_key_and_the_page_and_healthz_do_not(server):
    for path in ("/v1/model", "/v1/model/"):
        response = httpx.get(server.url + path)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    payload = {"comment": COMMENTS[0], "rules": [{"text": RULE}]}
    for headers in ({}, server.auth("wrong"), {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.post(server.url + "/v1/score", json=payload, headers=headers)
        assert response.status_code == 401, headers
        assert "key" in response.json()["detail"]
    assert httpx.post(server.url + "/v1/score", json=payload, headers=server.auth()).status_code == 200
    assert httpx.get(server.url + "/v1/model", headers={"Authorization": f"bearer  {KEY}"}).status_code == 200
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert 'id="comments"' in httpx.get(server.url + "/").text


def test_key_from_a_file_beats_the_environment(strict_server):
    url = strict_server.url + "/v1/model"
    assert httpx.get(url, headers=strict_server.auth()).status_code == 200
    assert httpx.get(url, headers=strict_server.auth("not-this-one")).status_code == 401


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_an_empty_key_file_is_a_one_line_error(tmp_path, content):
    key_file = tmp_path / "key.txt"
    key_file.write_text(content, encoding="utf-8")
    command = [sys.executable, "-m", "rulebert.cli", "serve", "--model-dir", str(tmp_path / "nope")]
    result = subprocess.run(
        [*command, "--api-key-file", str(key_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"rulebert: error: {key_file}: the API key is empty"]


class FakeScorer:
    model_dir = "/home/someone/secret/place/my-model"
    record: dict = {}
    metrics: dict = {}
    threshold = 0.5

    def score(self, bodies, rules, subreddits=None, **examples):
        return np.full(len(bodies), 0.25)


def test_create_app_key_is_compared_in_constant_time(monkeypatch):
    from fastapi.testclient import TestClient

    import rulebert.server.app

    calls = []
    real = rulebert.server.guard.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(rulebert.server.guard.hmac, "compare_digest", spy)
    client = TestClient(create_app(FakeScorer(), api_key=f" {KEY}\n"))
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert calls and all(isinstance(a, bytes) and b == KEY.encode() for a, b in calls)
    assert client.get("/healthz").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/score"]["post"]["security"] == [{"apiKey": []}]
    body = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ScoreRequest"} and "Rule" in schema["components"]["schemas"]
    with pytest.raises(RulebertError):
        create_app(FakeScorer(), api_key="  ")


def test_binding_beyond_loopback_warns_without_a_key(model_dir, monkeypatch, capsys):
    import uvicorn

    from rulebert.server.app import run_server

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append(kwargs))
    run_server(model_dir, host="0.0.0.0", port=1)
    assert "no authentication" in capsys.readouterr().err
    run_server(model_dir, host="0.0.0.0", port=1, api_key=KEY, allowed_hosts=["*"])
    assert "rulebert:" not in capsys.readouterr().err  # (the model load's progress bar may be there)
    run_server(model_dir, host="0.0.0.0", port=1, api_key=KEY)
    assert "--allowed-host" in capsys.readouterr().err  # a hint: remote clients' Host names are refused
    run_server(model_dir, host="127.0.0.1", port=1, max_connections=7)
    assert "rulebert:" not in capsys.readouterr().err
    assert runs[-1]["limit_concurrency"] == 8 and runs[-1]["timeout_keep_alive"] <= 5


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)")
def test_page_asks_for_the_key_once_and_keeps_it_in_the_tab(server):
    from tests.test_web import CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#auth:not([hidden])")
            page.fill("#apikey", "wrong")
            page.click("#usekey")
            page.wait_for_function("document.getElementById('authnote').textContent.includes('refused')")
            page.fill("#apikey", KEY)
            page.click("#usekey")
            page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
            assert page.is_hidden("#auth")
            assert page.evaluate("sessionStorage.getItem('rulebert-api-key')") == KEY
            page.fill("#rule", RULE)
            page.fill("#comments", "\n".join(COMMENTS))
            page.click("#score")
            page.wait_for_selector(f"#results li:nth-child({len(COMMENTS)})")
            page.reload()  # same tab: the key is still there, nothing is asked
            page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
            assert page.is_hidden("#auth")
        finally:
            browser.close()


# --- 2. Host header -------------------------------------------------------------------------------------


def test_unknown_host_headers_are_400(server):
    for path in ("/healthz", "/", "/v1/model"):
        for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
            response = httpx.get(server.url + path, headers={"Host": host, **server.auth()})
            assert response.status_code == 400, (path, host)
    for host in (f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}", "LOCALHOST:1"):
        assert httpx.get(server.url + "/healthz", headers={"Host": host}).status_code == 200, host


def test_allowed_host_flag(strict_server):
    url = strict_server.url + "/healthz"
    assert httpx.get(url, headers={"Host": "example.org:8000"}).status_code == 200
    assert httpx.get(url, headers={"Host": "www.example.org"}).status_code == 400


def test_allowed_hosts_for():
    assert allowed_hosts_for("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts_for("0.0.0.0") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts_for("::1") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts_for("10.1.2.3", ["Example.org", "*.corp.example", "fe80::1"])[3:] == [
        "10.1.2.3",
        "example.org",
        "*.corp.example",
        "[fe80::1]",
    ]
    assert allowed_hosts_for("0.0.0.0", ["x", "*"]) == ["*"]
    for bad in ("example.org:80", "a*.b", "http://x", ""):
        with pytest.raises(RulebertError):
            allowed_hosts_for("127.0.0.1", [bad])


def test_any_host_with_star_and_no_check_by_default():
    from fastapi.testclient import TestClient

    star = TestClient(create_app(FakeScorer(), allowed_hosts=allowed_hosts_for("127.0.0.1", ["*"])))
    assert star.get("/healthz", headers={"Host": "anything.example"}).status_code == 200
    default = TestClient(create_app(FakeScorer()))
    assert default.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_model_info_names_no_absolute_path(server, model_dir):
    info = httpx.get(server.url + "/v1/model", headers=server.auth()).json()
    assert info["model_dir"] == model_dir.name
    assert str(model_dir.parent) not in json.dumps(info)
    from fastapi.testclient import TestClient

    assert TestClient(create_app(FakeScorer())).get("/v1/model").json()["model_dir"] == "my-model"


# --- 3. lone surrogates -----------------------------------------------------------------------------------

SURROGATE = "\\ud800"  # as it appears in the JSON text: an escape of a lone surrogate
SCORE_FIELDS = {
    "comment": '{"comment": "hi %s", "rules": [{"text": "r"}]}',
    "subreddit": '{"comment": "hi", "subreddit": "%s", "rules": [{"text": "r"}]}',
    "text": '{"comment": "hi", "rules": [{"text": "r %s"}]}',
    "id": '{"comment": "hi", "rules": [{"text": "r", "id": "%s"}]}',
    "positive": '{"comment": "hi", "rules": [{"text": "r", "positive_examples": ["%s"]}]}',
    "negative": '{"comment": "hi", "rules": [{"text": "r", "negative_examples": ["x%s"]}]}',
    "key": '{"comment": "hi", "rules": [{"text": "r"}], "%s": 1}',
}
BATCH_FIELDS = {
    "comment": '{"items": [{"comment": "%s", "rule": {"text": "r"}}]}',
    "id": '{"items": [{"comment": "c", "rule": {"text": "r", "id": "%s"}}]}',
    "low surrogate": '{"items": [{"comment": "c", "subreddit": "\\udc00", "rule": {"text": "r%s"}}]}',
}


@pytest.mark.parametrize(
    ("path", "template"),
    [("/v1/score", t) for t in SCORE_FIELDS.values()]
    + [("/v1/score/batch", t) for t in BATCH_FIELDS.values()],
    ids=[f"score-{k}" for k in SCORE_FIELDS] + [f"batch-{k}" for k in BATCH_FIELDS],
)
def test_a_lone_surrogate_is_a_422_not_a_500(server, path, template):
    body = (template % SURROGATE).encode()
    headers = {"Content-Type": "application/json", **server.auth()}
    response = httpx.post(server.url + path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"
    good = (template % "fine").encode()  # the same request without the surrogate is scored
    assert httpx.post(server.url + path, content=good, headers=headers).status_code in (200, 422)


def test_the_422_handler_never_fails_to_encode():
    from fastapi.exceptions import RequestValidationError
    from fastapi.testclient import TestClient

    app = create_app(FakeScorer())
    nasty = [
        {"type": "x", "loc": ("query", "\ud800"), "msg": "bad \udc00", "input": "\ud800" * 1000},
        {
            "type": "x",
            "loc": ("query", "n"),
            "msg": "m",
            "input": float("nan"),
            "ctx": {"e": ValueError("\ud800")},
        },
        {"type": "x", "loc": ("query", "n"), "msg": "m", "input": 10**5000},
        {"type": "x", "loc": ("query", "n"), "msg": "m", "input": [object(), b"\xff", float("inf")]},
        {
            "type": "x",
            "loc": ("query", "n"),
            "msg": "m",
            "input": {"k": "\udfff" * 10, "big": list(range(10**5))},
        },
        {"type": "x", "loc": ("query", "x" * 10**5), "msg": "m" * 10**5, "input": b"\xff\xfe" * 10**5},
    ]

    @app.get("/nasty")
    async def raise_nasty() -> None:
        raise RequestValidationError(nasty)

    response = TestClient(app, raise_server_exceptions=False).get("/nasty")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert len(detail) == len(nasty)
    assert len(response.content) < 8_000
    assert detail[1]["input"] == "nan" and detail[1]["ctx"]["e"] == "\ufffd"
    assert all(len(json.dumps(d["input"], ensure_ascii=False)) < 220 for d in detail), detail


# --- 4. 422 amplification -------------------------------------------------------------------------------


def many_unknown_keys(n: int = 100_000) -> bytes:
    """A valid request plus ``n`` unknown keys, under the 1 MB body limit."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

    def name(i: int) -> str:
        out = ""
        while True:
            i, r = divmod(i, len(alphabet))
            out = alphabet[r] + out
            if not i:
                return out

    payload = {"comment": "hi", "rules": [{"text": "r"}], **{name(i): 0 for i in range(n)}}
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY_BYTES
    return body


def test_a_huge_invalid_body_gets_a_small_422_and_healthz_stays_responsive(server):
    body = many_unknown_keys()
    headers = {"Content-Type": "application/json", **server.auth()}
    answers: list[httpx.Response] = []

    def send_huge() -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(4):
                answers.append(client.post(server.url + "/v1/score", content=body, headers=headers))

    senders = [threading.Thread(target=send_huge) for _ in range(3)]  # 3 at a time, 12 in all
    latencies = []
    with httpx.Client(timeout=30) as client:
        client.get(server.url + "/healthz")  # a warm connection
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders) and len(latencies) < 2000:
            start = time.perf_counter()
            assert client.get(server.url + "/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    for sender in senders:
        sender.join(timeout=120)
    assert [a.status_code for a in answers] == [422] * 12
    for answer in answers:
        assert len(answer.content) < 20_000, len(answer.content)
        got = answer.json()
        assert len(got["detail"]) == MAX_ERRORS and got["errors_not_shown"] == 100_000 - MAX_ERRORS
        assert got["detail"][0]["type"] == "extra_forbidden" and got["detail"][0]["loc"][0] == "body"
    assert len(latencies) >= 3 and max(latencies) < 1.0, sorted(latencies)[-5:]


def test_long_inputs_are_cut_short_in_a_422(server):
    comment = "x" * 20_000  # over the comment limit: echoed, but only its first characters
    items = [{"comment": "hi", "rule": {"text": "r"}}] * 300
    for path, payload in (
        ("/v1/score", {"comment": comment, "rules": [{"text": "r"}]}),
        ("/v1/score/batch", {"items": items}),
    ):
        response = httpx.post(server.url + path, json=payload, headers=server.auth())
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert isinstance(error["input"], str) and len(error["input"]) <= 201, error["input"][:50]


# --- 5. slow and greedy clients -------------------------------------------------------------------------


def test_oversize_content_length_is_413_before_any_body(server):
    sock = connect(server)
    with sock:
        headers = {"Content-Type": "application/json", "Content-Length": "50000000", **server.auth()}
        sock.sendall(head(server, "POST", "/v1/score", headers))  # and no body at all
        data, closed, first = read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    assert b"connection: close" in data.lower()
    assert first < 1.0 and closed


def test_expect_100_continue_over_the_limit_never_gets_100(server):
    sock = connect(server)
    with sock:
        headers = {"Content-Length": str(MAX_BODY_BYTES + 1), "Expect": "100-continue", **server.auth()}
        sock.sendall(head(server, "POST", "/v1/score/batch", headers))
        data, closed, first = read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    assert b"100 Continue" not in data and closed and first < 1.0


def test_expect_100_continue_within_the_limit_still_works(server):
    payload = json.dumps({"comment": COMMENTS[0], "rules": [{"text": RULE}]}).encode()
    sock = connect(server)
    with sock:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **server.auth()}
        sock.sendall(head(server, "POST", "/v1/score", {**headers, "Expect": "100-continue"}))
        sock.settimeout(5)
        assert sock.recv(1000).startswith(b"HTTP/1.1 100")
        sock.sendall(payload + head(server, "GET", "/healthz", {"Connection": "close"}))
        data, closed, _ = read_until_closed(sock, 30)
    assert data.startswith(b"HTTP/1.1 200") and b'"scores"' in data and closed


def test_unauthorized_body_is_not_read(server):
    sock = connect(server)
    with sock:
        sock.sendall(
            head(server, "POST", "/v1/score", {"Content-Length": "500000", "Expect": "100-continue"})
        )
        data, closed, first = read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 401") and b"100 Continue" not in data and closed


def test_a_body_that_stalls_gets_408_and_the_connection_closed(strict_server):
    sock = connect(strict_server)
    with sock:
        headers = {"Content-Type": "application/json", "Content-Length": "100", **strict_server.auth()}
        sock.sendall(head(strict_server, "POST", "/v1/score", headers) + b'{"comment": ')
        data, closed, first = read_until_closed(sock, TIMEOUT + 5)
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert closed and TIMEOUT - 0.5 < first < TIMEOUT + 2


def test_idle_and_slowloris_connections_are_closed(strict_server):
    idle = connect(strict_server)
    with idle:
        data, closed, _ = read_until_closed(idle, TIMEOUT + 3)
    assert data == b"" and closed
    slow = connect(strict_server)
    start, closed = time.monotonic(), False
    with slow:
        slow.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{strict_server.port}\r\n".encode())
        for i in range(int(4 * (TIMEOUT + 3))):  # a header line every 0.25 s, never the blank line
            try:
                slow.sendall(f"X-Slow-{i}: a\r\n".encode())
            except OSError:
                closed = True
                break
            data, closed, _ = read_until_closed(slow, 0.25)
            if closed:
                break
    assert closed and time.monotonic() - start < TIMEOUT + 2.5


def test_connections_beyond_the_limit_get_503(strict_server):
    def healthz_status() -> int:
        sock = connect(strict_server)
        with sock:
            sock.sendall(head(strict_server, "GET", "/healthz", {"Connection": "close"}))
            data, _, _ = read_until_closed(sock, 5)
        return int(data.split()[1])

    held = [connect(strict_server) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        time.sleep(0.3)
        assert healthz_status() == 200  # with the held ones: exactly MAX_CONNECTIONS open
        held.append(connect(strict_server))
        time.sleep(0.3)
        assert healthz_status() == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert healthz_status() == 200
