"""An HTTP API (and a small web page) that scores comments against community rules.

The model is loaded once, at start-up. Scoring runs in a worker thread (never on the event loop, so
``/healthz`` answers while a batch is scored) behind a lock, because the one model instance is shared.
Every field has a size limit: an oversize field is a 422 naming the field, an oversize body a 413, both
before any tokenising. Request bodies are parsed and validated in a worker thread too, and a 422 reports
at most ``MAX_ERRORS`` errors, each echoing at most ``MAX_ECHO_CHARS`` characters of its input.

Hardening, for a server that may be reachable from a browser or a network:

- an API key (``create_app(api_key=...)``, ``RULEBERT_API_KEY`` or ``rulebert serve --api-key-file``):
  every request but the page, ``/healthz`` and the API docs needs ``Authorization: Bearer <key>``;
- a Host header check (``allowed_hosts``) against DNS rebinding: a page on another site cannot reach a
  loopback server through a name of its own;
- time limits on receiving a request (headers, then body) and a bound on concurrent connections, so that
  slow or idle clients cannot hold the server.
"""

from __future__ import annotations

import email.message
import hmac
import json
import math
import os
import sys
import threading
import typing
from collections.abc import Iterable, Sequence
from importlib import resources
from ipaddress import IPv6Address
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from rulebert.errors import RulebertError

# Limits. A comment's size is counted in UTF-8 bytes (10 kB, what a Reddit comment holds, 10,000 chars,
# is at most 40 kB of UTF-8; moderators paste real comments, not novels).
MAX_COMMENT_BYTES = 10_000
MAX_RULE_BYTES = 2_000
MAX_EXAMPLE_BYTES = 10_000
MAX_EXAMPLES = 16  # per rule, for each of positive / negative
MAX_RULES = 64  # rules per /v1/score request
MAX_BATCH = 256  # items per /v1/score/batch request
MAX_BODY_BYTES = 1_048_576  # whole request body
# After an early answer (413, 401) to a request whose body is still arriving, at most this much of it is
# read and dropped, for at most DRAIN_SECONDS, before the socket is closed: the answer is sent first, so
# the drain never delays it; it only spares the client a reset connection while it is still sending.
DRAIN_BYTES = MAX_BODY_BYTES
DRAIN_SECONDS = 1.0
MAX_ID_CHARS = 200
MAX_SUBREDDIT_CHARS = 100
MAX_ERRORS = 20  # validation errors reported in a 422; the rest are counted
MAX_ECHO_CHARS = 200  # characters of a bad input echoed in a 422
MANY_ERRORS = 1_000  # more validation errors than this are counted, and only a few of them listed
REQUEST_TIMEOUT = 10.0  # seconds to send a request's headers, and then its body (else 408, closed)
MAX_CONNECTIONS = 64  # open connections served at once; beyond it requests get 503
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as they appear in a Host header
OPEN_PATHS = ("/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
API_KEY_ENV = "RULEBERT_API_KEY"


def _utf8_at_most(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > limit:
            raise ValueError(f"is {size} bytes of UTF-8; the limit is {limit}")
        if not value.strip():
            raise ValueError("is empty")
        return value

    return AfterValidator(check)


Comment = Annotated[str, _utf8_at_most(MAX_COMMENT_BYTES)]
RuleText = Annotated[str, _utf8_at_most(MAX_RULE_BYTES)]
ExampleText = Annotated[str, _utf8_at_most(MAX_EXAMPLE_BYTES)]
Subreddit = Annotated[str, Field(max_length=MAX_SUBREDDIT_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class Rule(Strict):
    id: str | None = Field(None, max_length=MAX_ID_CHARS, description="echoed back; defaults to the position")
    text: RuleText
    positive_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that break the rule"
    )
    negative_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that keep the rule"
    )


class ScoreRequest(Strict):
    comment: Comment
    subreddit: Subreddit | None = None
    rules: list[Rule] = Field(min_length=1, max_length=MAX_RULES)


class BatchItem(Strict):
    comment: Comment
    subreddit: Subreddit | None = None
    rule: Rule


class BatchRequest(Strict):
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class RuleScore(BaseModel):
    id: str
    rule: str
    probability: float = Field(ge=0, le=1, description="P(the comment breaks the rule)")


class ScoreResponse(BaseModel):
    scores: list[RuleScore]
    model: str


class BatchResponse(BaseModel):
    scores: list[RuleScore] = Field(description="one per item, in the order of items")
    model: str


class InvalidRequestResponse(BaseModel):
    detail: list[dict[str, Any]] = Field(
        description=f"the first {MAX_ERRORS} errors: type, loc (starting with 'body'), msg, input (cut short)"
    )
    errors_not_shown: int | None = Field(None, description="how many more errors there were")


# --- raw ASGI helpers -----------------------------------------------------------------------------------


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _body_follows(scope: dict) -> bool:
    """Whether the request declares a body (which may still be on its way)."""
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()


async def _refuse(
    scope: dict,
    receive: Any,
    send: Any,
    status: int,
    detail: str,
    *,
    unread_body: bool,
    headers: Sequence[tuple[bytes, bytes]] = (),
    drain: bool = True,
) -> None:
    """Answer ``status`` at once, without waiting for (or asking for, with ``100 Continue``) the body.

    When part of the body may be unread the connection is closed after the answer; a little of what the
    client is still sending is read and dropped first (``DRAIN_BYTES``, ``DRAIN_SECONDS``), since closing
    a socket with unread data resets it and some clients then lose the answer.
    """
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if unread_body:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": [*raw_headers, *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": True})
    expects_continue = (_header(scope, b"expect") or b"").lower() == b"100-continue"
    if unread_body and drain and not expects_continue:  # such a client sends no body after a final answer
        with anyio.move_on_after(DRAIN_SECONDS):
            drained = 0
            while drained <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
                drained += len(message.get("body", b""))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being parsed, and one
    that has not fully arrived within ``timeout`` seconds 408; the connection is closed after either.

    The declared Content-Length is checked first, before any of the body is read (a client that sent
    ``Expect: 100-continue`` never gets ``100 Continue``); a chunked body is counted as it arrives.
    """

    def __init__(self, app: Any, limit: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = (_header(scope, b"content-length") or b"").strip()
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.limit):
            size = f"{int(declared)} bytes" if len(declared) <= 18 else f"{len(declared)} digits of bytes"
            await self._too_big(scope, receive, send, size)
            return
        chunks: list[bytes] = []
        size, complete, too_big = 0, False, False
        with anyio.move_on_after(self.timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away: there is no one to answer
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.limit:
                    too_big = True
                    break
                if not message.get("more_body", False):
                    complete = True
                    break
        if too_big:
            await self._too_big(scope, receive, send, f"over {self.limit} bytes")
            return
        if not complete:
            detail = f"the request body did not arrive within {self.timeout:g} s"
            await _refuse(scope, receive, send, 408, detail, unread_body=True, drain=False)
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_big(self, scope: dict, receive: Any, send: Any, size: str) -> None:
        detail = f"request body is {size}; the limit is {self.limit} bytes"
        await _refuse(scope, receive, send, 413, detail, unread_body=True)


class ApiKey:
    """ASGI middleware: every request but ``OPEN_PATHS`` needs ``Authorization: Bearer <key>``, else 401.

    The key is compared in constant time; a refused request's body is never read.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode("ascii")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            detail = "this server needs an API key: send the header 'Authorization: Bearer <key>'"
            challenge = [(b"www-authenticate", b"Bearer")]
            unread = _body_follows(scope)
            await _refuse(scope, receive, send, 401, detail, unread_body=unread, headers=challenge)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or b"").strip().partition(b" ")
        matches = hmac.compare_digest(token.strip(), self.key)  # constant time, whatever the scheme
        return matches and scheme.lower() == b"bearer"


def check_api_key(key: str, source: str) -> str:
    """``key`` stripped, or a one-line error naming ``source`` when it is empty or not header-safe."""
    key = key.strip()
    if not key:
        raise RulebertError(f"{source}: the API key is empty")
    if not all("\x21" <= c <= "\x7e" for c in key):
        raise RulebertError(f"{source}: the API key must be printable ASCII, without spaces")
    return key


def read_api_key(path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from the file ``path`` (its content stripped), else from ``RULEBERT_API_KEY``, else None."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise RulebertError(f"{path}: cannot read the API key file ({reason})") from None
        return check_api_key(text, str(path))
    value = (os.environ if environ is None else environ).get(API_KEY_ENV)
    return None if value is None else check_api_key(value, API_KEY_ENV)


def _host_pattern(host: str) -> str:
    """A host name or address as it appears in a Host header (an IPv6 address in brackets), lower case."""
    host = host.strip().lower()
    try:
        IPv6Address(host.strip("[]"))
    except ValueError:
        return host
    return f"[{host.strip('[]')}]"


def allowed_hosts_for(bound: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host header values a server bound to ``bound`` accepts: loopback names, the bound address
    (unless it is a wildcard) and ``extra`` (``*`` accepts any; ``*.example.org`` any subdomain)."""
    extra = [_host_pattern(h) for h in extra]
    for pattern in extra:
        wildcard_ok = pattern == "*" or (pattern.startswith("*.") and "*" not in pattern[1:])
        if not pattern or any(c in pattern for c in "/ \t,") or ("*" in pattern and not wildcard_ok):
            raise RulebertError(f"--allowed-host {pattern!r}: expected a host name, an address or '*'")
        if ":" in pattern and not pattern.startswith("["):
            raise RulebertError(f"--allowed-host {pattern!r}: give the host without a port")
    if "*" in extra:
        return ["*"]
    hosts = list(LOOPBACK_HOSTS)
    if bound not in ("0.0.0.0", "::", ""):
        hosts.append(_host_pattern(bound))
    return list(dict.fromkeys([*hosts, *extra]))


# --- validation errors ------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """At most ``MAX_ECHO_CHARS`` characters of ``value``, lone surrogates replaced (always UTF-8-safe)."""
    if len(value) > MAX_ECHO_CHARS:
        value = value[:MAX_ECHO_CHARS] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _echo(value: Any) -> Any:
    """A bad input as plain JSON, cut short: non-finite floats, huge integers and odd objects as text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 63 else _text(f"an integer of {value.bit_length()} bits")
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray):
        return _text(bytes(value[: 4 * MAX_ECHO_CHARS + 4]).decode("utf-8", "replace"))
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list | tuple | dict):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError):
            return _text(f"a {type(value).__name__} of {len(value)} items")
        if len(text) > MAX_ECHO_CHARS:
            return _text(text)
        if isinstance(value, dict):
            return {_text(str(k)): _echo(v) for k, v in value.items()}
        return [_echo(v) for v in value]
    return _text(str(value))


def _clean_error(error: dict[str, Any], prefix: tuple[str, ...]) -> dict[str, Any]:
    loc = [*prefix, *error.get("loc", ())]
    clean: dict[str, Any] = {
        "type": _text(str(error.get("type", "invalid"))),
        "loc": [p if isinstance(p, int) and not isinstance(p, bool) else _text(str(p)) for p in loc],
        "msg": _text(str(error.get("msg", ""))),
    }
    if "input" in error:
        clean["input"] = _echo(error["input"])
    if error.get("ctx"):
        clean["ctx"] = {_text(str(k)): _echo(v) for k, v in list(error["ctx"].items())[:8]}
    return clean


FALLBACK_422 = b'{"detail":[{"type":"invalid","loc":["body"],"msg":"the request is not valid"}]}'


def error_body(errors: Sequence[dict[str, Any]], total: int | None = None, prefix: tuple = ()) -> bytes:
    """A 422's JSON: the first ``MAX_ERRORS`` errors made safe to encode, and the count of the rest.

    Never fails: anything that still cannot be encoded gives a generic one-error answer.
    """
    try:
        total = len(errors) if total is None else total
        shown = [_clean_error(error, prefix) for error in errors[:MAX_ERRORS]]
        payload: dict[str, Any] = {"detail": shown}
        if total > len(shown):
            payload["errors_not_shown"] = total - len(shown)
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except Exception:  # noqa: BLE001 - the answer to a bad request must never be a 500
        return FALLBACK_422


class InvalidBody(Exception):
    """A request body that failed validation; ``content`` is the 422's JSON."""

    def __init__(self, content: bytes) -> None:
        super().__init__("invalid request body")
        self.content = content


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/*+json``; no Content-Type is not JSON."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], body: bytes, content_type: str | None) -> M | bytes:
    """``body`` as ``model``, or a 422's JSON. Runs in a worker thread: a big invalid body (100,000 unknown
    keys, say) takes a while to validate and to describe, and the event loop must not wait for it."""
    if not body:
        return error_body([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(content_type):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return error_body([{"type": "model_attributes_type", "loc": ("body",), "msg": msg, "input": body}])
    try:
        return model.model_validate_json(body)  # strict JSON: a lone surrogate escape is invalid JSON
    except ValidationError as err:
        total = err.error_count()
        if total > MANY_ERRORS:  # listing them all would hold the GIL (and the event loop) for long
            err = _few_errors(model, body) or err
        return error_body(err.errors(include_url=False), total, prefix=("body",))


def _few_errors(model: type[BaseModel], body: bytes) -> ValidationError | None:
    """The errors of ``body`` with each object's unknown keys cut to ``MAX_ERRORS``: a 1 MB object of
    100,000 unknown keys has 100,000 errors, and pydantic builds every one of them on ``errors()``."""
    from pydantic_core import from_json

    try:
        model.model_validate(_pruned(from_json(body), model))
    except ValidationError as err:
        return err
    return None  # cannot happen: only unknown keys were dropped


def _pruned(value: Any, model: type[BaseModel]) -> Any:
    """``value`` (parsed JSON, to be validated as ``model``) without the unknown keys past the first few."""
    if not isinstance(value, dict):
        return value
    fields, kept, unknown = model.model_fields, {}, 0
    for key, item in value.items():
        if key in fields:
            kept[key] = _pruned_field(item, fields[key].annotation)
        elif unknown < MAX_ERRORS:
            kept[key], unknown = item, unknown + 1
    return kept


def _pruned_field(value: Any, annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _pruned(value, annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and isinstance(value, list):
        return [_pruned_field(item, args[0]) for item in value]
    return value


async def _parse(request: Request, model: type[M]) -> M:
    body = await request.body()
    result = await run_in_threadpool(_validate, model, body, request.headers.get("content-type"))
    if isinstance(result, bytes):
        raise InvalidBody(result)
    return result


def _model_name(model_dir: Path, record: dict[str, Any]) -> str:
    """The model dir's name plus the start of its weights' hash: tells two models of one name apart."""
    hashes = "".join(sorted((record.get("weights_sha256") or {}).values()))
    return f"{model_dir.name}@{hashes[:12]}" if hashes else model_dir.name


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


INVALID_422 = {422: {"model": InvalidRequestResponse, "description": "Validation Error"}}


def create_app(
    model: str | os.PathLike | Any,
    *,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
) -> FastAPI:
    """The app, serving one model: a model dir (loaded here, once) or a loaded ``Scorer``.

    ``api_key``: when given, every request but the page, ``/healthz`` and the API docs needs
    ``Authorization: Bearer <api_key>`` (else 401). ``allowed_hosts``: when given, a request whose Host
    header names another host is a 400 (Starlette's patterns: ``*``, ``*.example.org``, ``[::1]``); see
    :func:`allowed_hosts_for`. Both default to off, as under a test client or another server.
    ``request_timeout``: seconds for a request's body to arrive (else 408).
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from rulebert.predict import Scorer

    if api_key is not None:
        api_key = check_api_key(api_key, "api_key")
    scorer = model if hasattr(model, "score") else Scorer(model)
    record = getattr(scorer, "record", None) or {}
    name = _model_name(Path(scorer.model_dir), record)
    lock = threading.Lock()
    page = resources.files("rulebert").joinpath("static/index.html").read_text(encoding="utf-8")

    def score_rows(comments: list[str], subreddits: list[str | None], rules: list[Rule]) -> list[float]:
        with lock:
            probabilities = scorer.score(
                comments,
                [r.text for r in rules],
                [s or "" for s in subreddits],
                positive_examples=[r.positive_examples for r in rules],
                negative_examples=[r.negative_examples for r in rules],
            )
        return [min(1.0, max(0.0, float(p))) for p in probabilities]

    app = FastAPI(
        title="rulebert",
        summary="P(a Reddit comment breaks a community rule), from a fine-tuned BERT.",
        version=_version(),
    )

    @app.exception_handler(InvalidBody)
    async def invalid_body(request: Request, exc: InvalidBody) -> Response:
        return Response(exc.content, status_code=422, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # Not the request bodies (those are validated in _parse), but any other parameter: the same
        # capped, always-encodable answer, computed off the event loop.
        content = await run_in_threadpool(error_body, exc.errors())
        return Response(content, status_code=422, media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        metrics = scorer.metrics
        return {
            "model": name,
            "model_dir": Path(scorer.model_dir).name,  # never the absolute path: it tells about the host
            "checkpoint": record.get("base_model"),
            "created": record.get("created"),
            "config": record.get("config"),
            "validation": metrics.get("validation"),
            "threshold": scorer.threshold,
            "device": getattr(scorer, "device", None),
            "limits": {
                "comment_bytes": MAX_COMMENT_BYTES,
                "rule_bytes": MAX_RULE_BYTES,
                "example_bytes": MAX_EXAMPLE_BYTES,
                "examples_per_rule": MAX_EXAMPLES,
                "rules_per_request": MAX_RULES,
                "items_per_batch": MAX_BATCH,
                "body_bytes": MAX_BODY_BYTES,
            },
        }

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        openapi_extra=_body_schema(ScoreRequest),
        responses=INVALID_422,
    )
    async def score(http_request: Request) -> ScoreResponse:
        """One comment against one or more rules; scores in the order of ``rules``."""
        request = await _parse(http_request, ScoreRequest)
        n = len(request.rules)
        probabilities = await run_in_threadpool(
            score_rows, [request.comment] * n, [request.subreddit] * n, request.rules
        )
        scores = [
            RuleScore(id=rule.id if rule.id is not None else str(i), rule=rule.text, probability=p)
            for i, (rule, p) in enumerate(zip(request.rules, probabilities, strict=True))
        ]
        return ScoreResponse(scores=scores, model=name)

    @app.post(
        "/v1/score/batch",
        response_model=BatchResponse,
        openapi_extra=_body_schema(BatchRequest),
        responses=INVALID_422,
    )
    async def score_batch(http_request: Request) -> BatchResponse:
        """Many (comment, rule) items at once; results in the order of ``items``."""
        items = (await _parse(http_request, BatchRequest)).items
        probabilities = await run_in_threadpool(
            score_rows, [i.comment for i in items], [i.subreddit for i in items], [i.rule for i in items]
        )
        scores = [
            RuleScore(
                id=item.rule.id if item.rule.id is not None else str(i), rule=item.rule.text, probability=p
            )
            for i, (item, p) in enumerate(zip(items, probabilities, strict=True))
        ]
        return BatchResponse(scores=scores, model=name)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the request bodies (parsed by hand, see ``_parse``) and the key."""
        if app.openapi_schema is None:
            schema = base_openapi()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for body_model in (ScoreRequest, BatchRequest):
                definition = body_model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(definition.pop("$defs", {}))
                schemas[body_model.__name__] = definition
            if api_key is not None:
                schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
                for path, operations in schema.get("paths", {}).items():
                    if path not in OPEN_PATHS:
                        for operation in operations.values():
                            operation["security"] = [{"apiKey": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Starlette runs the last added middleware first: Host check, then API key, then body limits.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, timeout=request_timeout)
    if api_key is not None:
        app.add_middleware(ApiKey, key=api_key)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    return app


def _version() -> str:
    from rulebert import __version__

    return __version__


def _guarded_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline on receiving a request.

    uvicorn closes an idle keep-alive connection, but not one that was opened and never used, nor one
    that sends its headers a byte at a time (slowloris). Here a connection's request headers must arrive
    within ``timeout`` seconds (of the connection, or of the request's first byte), else the connection is
    closed (with a 408 when part of a request came). A body is timed by :class:`BodyLimit` (408); as a
    backstop, one still arriving after twice ``timeout`` (a body no one reads) closes the connection.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    check_every = min(0.5, timeout / 4)
    timed_out = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._phase: tuple | None = self._current_phase()
            self._phase_since = self.loop.time()
            self._guard = self.loop.call_later(check_every, self._check)

        def _current_phase(self) -> tuple | None:
            """What the connection is waiting for from the client, if anything but a next request."""
            state = self.conn.their_state
            if state is h11.IDLE and (self.cycle is None or self.conn.trailing_data[0]):
                return ("headers", self.cycle)
            if state is h11.SEND_BODY:
                return ("body", self.cycle)
            return None

        def _check(self) -> None:
            self._guard = None
            if self.transport.is_closing():
                return
            phase, now = self._current_phase(), self.loop.time()
            if phase != self._phase:
                self._phase, self._phase_since = phase, now
            elif phase is not None and now - self._phase_since >= (
                timeout if phase[0] == "headers" else 2 * timeout
            ):
                if phase[0] == "headers" and self.conn.trailing_data[0]:
                    self.transport.write(timed_out)
                self.transport.close()
                return
            self._guard = self.loop.call_later(check_every, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if getattr(self, "_guard", None) is not None:
                self._guard.cancel()
                self._guard = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def run_server(
    model_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    *,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] = (),
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
) -> None:
    """Load the model, then serve until interrupted. Binds to loopback unless told otherwise.

    Requests must name the bound address, a loopback name or one of ``allowed_hosts`` in their Host
    header; ``api_key`` guards the API; beyond ``max_connections`` open connections requests get 503; a
    request must arrive within ``request_timeout`` seconds (headers, then body).
    """
    import uvicorn

    if max_connections < 1 or not request_timeout > 0:
        raise RulebertError("--max-connections and --request-timeout must be positive")
    hosts = allowed_hosts_for(host, allowed_hosts)
    # a bad model dir fails here, as a one-line error, before binding
    app = create_app(model_dir, api_key=api_key, allowed_hosts=hosts, request_timeout=request_timeout)
    if host not in LOOPBACK:
        if api_key is None:
            print(
                f"rulebert: warning: listening on {host}: reachable from other machines, with no"
                f" authentication (set {API_KEY_ENV} or --api-key-file)",
                file=sys.stderr,
            )
        if hosts != ["*"] and host in ("0.0.0.0", "::", ""):
            print(
                "rulebert: note: requests must name this machine in their Host header as one of: "
                f"{', '.join(hosts)}; add the names clients use with --allowed-host NAME",
                file=sys.stderr,
            )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_guarded_protocol(request_timeout),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # uvicorn answers 503 once the open connections, this one included, reach the limit: +1 lets
        # exactly max_connections be served at once
        limit_concurrency=max_connections + 1,
    )
