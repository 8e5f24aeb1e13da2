"""An HTTP API (and a small web page) that scores comments against community rules.

The model is loaded once, at start-up. Scoring runs in a worker thread (never on the event loop, so
``/healthz`` answers while a batch is scored) behind a lock, because the one model instance is shared.
Every field has a size limit: an oversize field is a 422 naming the field, an oversize body a 413, both
before any tokenising.
"""

from __future__ import annotations

import os
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Limits. A comment's size is counted in UTF-8 bytes (10 kB, what a Reddit comment holds, 10,000 chars,
# is at most 40 kB of UTF-8; moderators paste real comments, not novels).
MAX_COMMENT_BYTES = 10_000
MAX_RULE_BYTES = 2_000
MAX_EXAMPLE_BYTES = 10_000
MAX_EXAMPLES = 16  # per rule, for each of positive / negative
MAX_RULES = 64  # rules per /v1/score request
MAX_BATCH = 256  # items per /v1/score/batch request
MAX_BODY_BYTES = 1_048_576  # whole request body
DRAIN_BYTES = 16 * MAX_BODY_BYTES  # an oversize body is read and dropped up to this, then the socket closed
MAX_ID_CHARS = 200
MAX_SUBREDDIT_CHARS = 100
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being parsed.

    The declared Content-Length is checked first; a chunked body is counted as it arrives.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, receive, send, f"{int(declared)} bytes", more=True)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._reject(scope, receive, send, f"over {self.limit} bytes", more=more)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Any, send: Any, size: str, more: bool) -> None:
        # Read (and drop) what the client is still sending, up to a bound: closing a socket with unread
        # data resets it, and the client would see a broken connection instead of this 413.
        drained = 0
        while more and drained <= DRAIN_BYTES:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        detail = f"request body is {size}; the limit is {self.limit} bytes"
        response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _model_name(model_dir: Path, record: dict[str, Any]) -> str:
    """The model dir's name plus the start of its weights' hash: tells two models of one name apart."""
    hashes = "".join(sorted((record.get("weights_sha256") or {}).values()))
    return f"{model_dir.name}@{hashes[:12]}" if hashes else model_dir.name


def _json_safe(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error as plain JSON (non-finite floats and odd objects in ``input`` become text)."""
    import json

    error = jsonable_encoder(error, custom_encoder={Exception: str})
    try:
        json.dumps(error, allow_nan=False)
    except ValueError:
        error["input"] = repr(error.get("input"))
    return error


def create_app(model: str | os.PathLike | Any) -> FastAPI:
    """The app, serving one model: a model dir (loaded here, once) or a loaded ``Scorer``."""
    from rulebert.predict import Scorer

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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 echoes each bad ``input``; a body of bare ``NaN`` (Python's json accepts it)
        # then cannot be rendered as JSON and the client got a 500. Echo such inputs as their repr.
        return JSONResponse({"detail": [_json_safe(error) for error in exc.errors()]}, status_code=422)

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
            "model_dir": str(scorer.model_dir),
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

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(request: ScoreRequest) -> ScoreResponse:
        """One comment against one or more rules; scores in the order of ``rules``."""
        n = len(request.rules)
        probabilities = await run_in_threadpool(
            score_rows, [request.comment] * n, [request.subreddit] * n, request.rules
        )
        scores = [
            RuleScore(id=rule.id if rule.id is not None else str(i), rule=rule.text, probability=p)
            for i, (rule, p) in enumerate(zip(request.rules, probabilities, strict=True))
        ]
        return ScoreResponse(scores=scores, model=name)

    @app.post("/v1/score/batch", response_model=BatchResponse)
    async def score_batch(request: BatchRequest) -> BatchResponse:
        """Many (comment, rule) items at once; results in the order of ``items``."""
        items = request.items
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

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def _version() -> str:
    from rulebert import __version__

    return __version__


def run_server(
    model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Load the model, then serve until interrupted. Binds to loopback unless told otherwise."""
    import uvicorn

    app = create_app(model_dir)  # a bad model dir fails here, as a one-line error, before binding
    if host not in LOOPBACK:
        print(
            f"rulebert: warning: listening on {host}: reachable from other machines, with no authentication",
            file=sys.stderr,
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
