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

import os
import sys
import threading
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rulebert._version import __version__
from rulebert.errors import RulebertError
from rulebert.http_guard import (
    API_KEY_ENV,
    KEEP_ALIVE_SECONDS,
    LOOPBACK,
    MAX_CONNECTIONS,
    OPEN_PATHS,
    REQUEST_TIMEOUT,
    ApiKey,
    BodyLimit,
    allowed_hosts_for,
    check_api_key,
    guarded_protocol,
)
from rulebert.http_validation import MAX_ERRORS, InvalidBody, error_body, parse_body
from rulebert.model import VALIDATION_SCOPE

# Limits. A comment's size is counted in UTF-8 bytes (10 kB, what a Reddit comment holds, 10,000 chars,
# is at most 40 kB of UTF-8; moderators paste real comments, not novels).
MAX_COMMENT_BYTES = 10_000
MAX_RULE_BYTES = 2_000
MAX_EXAMPLE_BYTES = 10_000
MAX_EXAMPLES = 16  # per rule, for each of positive / negative
MAX_RULES = 64  # rules per /v1/score request
MAX_BATCH = 256  # items per /v1/score/batch request
MAX_BODY_BYTES = 1_048_576  # whole request body
MAX_ID_CHARS = 200
MAX_SUBREDDIT_CHARS = 100


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


Threshold = Annotated[
    float | None, Field(None, ge=0, le=1, description="flag at this probability (default: the model's)")
]


class ScoreRequest(Strict):
    comment: Comment
    subreddit: Subreddit | None = None
    rules: list[Rule] = Field(min_length=1, max_length=MAX_RULES)
    threshold: Threshold = None


class BatchItem(Strict):
    id: str | None = Field(None, max_length=MAX_ID_CHARS, description="echoed back as item_id")
    comment: Comment
    subreddit: Subreddit | None = None
    rule: Rule


class BatchRequest(Strict):
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)
    threshold: Threshold = None


class Evidence(BaseModel):
    text: str = Field(description="the labelled example most similar to the comment")
    label: int = Field(description="1: it breaks the rule, 0: it keeps it")
    similarity: float


class RuleScore(BaseModel):
    id: str
    rule: str
    probability: float = Field(ge=0, le=1, description="P(the comment breaks the rule)")
    flagged: bool = Field(description="probability >= the threshold (the request's, else the model's)")
    mode: str = Field(
        description="trained: the model was trained on this rule; examples: the rule's examples were used "
        "at scoring time; zero-shot: neither (a rule the model never saw: treat the score with caution)"
    )
    evidence: Evidence | None = Field(None, description="in mode examples: the nearest labelled example")
    item_id: str | None = Field(None, description="the batch item's id, when it had one")


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

    def score_rows(
        comments: list[str], subreddits: list[str | None], rules: list[Rule], threshold: float | None
    ) -> list[RuleScore]:
        arguments = (comments, [r.text for r in rules], [s or "" for s in subreddits])
        examples = {
            "positive_examples": [r.positive_examples for r in rules],
            "negative_examples": [r.negative_examples for r in rules],
        }
        with lock:
            if hasattr(scorer, "score_details"):
                details = scorer.score_details(*arguments, **examples)
            else:  # a stand-in with only ``score`` (tests, wrappers): no modes to report
                n = len(comments)
                details = {"probability": scorer.score(*arguments, **examples)}
                details |= {"mode": ["zero-shot"] * n, "evidence": [None] * n}
        cut = scorer.threshold if threshold is None else threshold
        scores = []
        for i, (rule, p, mode, evidence) in enumerate(
            zip(rules, details["probability"], details["mode"], details["evidence"], strict=True)
        ):
            p = min(1.0, max(0.0, float(p)))
            rule_id = rule.id if rule.id is not None else str(i)
            scores.append(
                RuleScore(
                    id=rule_id, rule=rule.text, probability=p, flagged=p >= cut, mode=mode, evidence=evidence
                )
            )
        return scores

    app = FastAPI(
        title="rulebert",
        summary="P(a Reddit comment breaks a community rule), from a fine-tuned BERT.",
        version=__version__,
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
            "validation_scope": VALIDATION_SCOPE,
            "trained_rules": sorted(getattr(scorer, "trained_rules", ())),  # scored in mode "trained"
            "embedder": getattr(scorer, "has_embedder", False),
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
        request = await parse_body(http_request, ScoreRequest)
        n = len(request.rules)
        scores = await run_in_threadpool(
            score_rows, [request.comment] * n, [request.subreddit] * n, request.rules, request.threshold
        )
        return ScoreResponse(scores=scores, model=name)

    @app.post(
        "/v1/score/batch",
        response_model=BatchResponse,
        openapi_extra=_body_schema(BatchRequest),
        responses=INVALID_422,
    )
    async def score_batch(http_request: Request) -> BatchResponse:
        """Many (comment, rule) items at once; results in the order of ``items``."""
        request = await parse_body(http_request, BatchRequest)
        items = request.items
        scores = await run_in_threadpool(
            score_rows,
            [i.comment for i in items],
            [i.subreddit for i in items],
            [i.rule for i in items],
            request.threshold,
        )
        for item, answer in zip(items, scores, strict=True):
            answer.item_id = item.id
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
        http=guarded_protocol(request_timeout),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # uvicorn answers 503 once the open connections, this one included, reach the limit: +1 lets
        # exactly max_connections be served at once
        limit_concurrency=max_connections + 1,
    )
