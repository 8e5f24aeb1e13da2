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

import logging
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from rulebert._version import __version__
from rulebert.core.errors import RulebertError
from rulebert.core.logs import attach_stderr_handler
from rulebert.domain.examples import ZERO_SHOT
from rulebert.domain.rules import RULE_ID_RULE, StoredRule, check_adaptable, is_rule_id, rule_from_json
from rulebert.model.model_dir import VALIDATION_SCOPE
from rulebert.server.failures import install as install_failure_handlers
from rulebert.server.guard import (
    API_KEY_ENV,
    KEEP_ALIVE_SECONDS,
    LOOPBACK,
    MAX_CONNECTIONS,
    OPEN_PATHS,
    REQUEST_TIMEOUT,
    ApiKey,
    BodyLimit,
    SameOrigin,
    allowed_hosts_for,
    check_api_key,
    guarded_protocol,
)
from rulebert.server.schema import (
    LIMITS,
    MAX_BODY_BYTES,
    AdaptRequest,
    BatchRequest,
    BatchResponse,
    InvalidRequestResponse,
    Job,
    Rule,
    RuleBody,
    RuleList,
    RuleScore,
    ScoreRequest,
    ScoreResponse,
    StoredRuleOut,
    too_many_examples,
)
from rulebert.server.schema import MAX_BATCH as MAX_BATCH  # the limits, re-exported for callers of serve
from rulebert.server.schema import MAX_COMMENT_BYTES as MAX_COMMENT_BYTES
from rulebert.server.schema import MAX_EXAMPLES as MAX_EXAMPLES
from rulebert.server.schema import MAX_RULES as MAX_RULES
from rulebert.server.state import Busy, Jobs, Served, ServedModel, ServerState, checkpoint_name, with_stored
from rulebert.server.validation import MAX_ERRORS as MAX_ERRORS  # re-exported: the 422 cap is part of the API
from rulebert.server.validation import parse_body

logger = logging.getLogger(__name__)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


INVALID_422 = {422: {"model": InvalidRequestResponse, "description": "Validation Error"}}
# The page may not be framed by another site (clickjacking its buttons: save, delete, adapt).
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def create_app(
    model: str | os.PathLike | Any,
    *,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
    state_dir: str | os.PathLike | None = None,
    rules_db: str | os.PathLike | None = None,
) -> FastAPI:
    """The app, serving one model: a model dir (loaded here, once) or a loaded ``Scorer``.

    ``api_key``: when given, every request but the page, ``/healthz`` and the API docs needs
    ``Authorization: Bearer <api_key>`` (else 401). ``allowed_hosts``: when given, a request whose Host
    header names another host is a 400 (Starlette's patterns: ``*``, ``*.example.org``, ``[::1]``); see
    :func:`allowed_hosts_for`. Both default to off, as under a test client or another server.
    ``request_timeout``: seconds for a request's body to arrive (else 408).
    ``state_dir``: stored rules (``/v1/rules``) and adaptation (``/v1/adapt``) live there, see
    :mod:`rulebert.server.state`; the newest adapted model under it is served. ``rules_db``: the rules' SQLite
    file, when not ``state_dir/rules.sqlite3``.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from rulebert.inference.predict import Scorer

    if api_key is not None:
        api_key = check_api_key(api_key, "api_key")
    state = ServerState(state_dir, rules_db) if state_dir is not None else None
    if not hasattr(model, "score") and state is not None:
        adapted = state.newest_adapted(model)
        if adapted is not None:
            logger.info("serving the newest adapted model, %s", adapted)
            model = adapted
    served = ServedModel(Served.of(model if hasattr(model, "score") else Scorer(model)))
    jobs = Jobs(state, served, lambda path: Served.of(Scorer(path))) if state is not None else None
    page = resources.files("rulebert.server").joinpath("static/index.html").read_text(encoding="utf-8")

    def score_rows(
        comments: list[str], subreddits: list[str | None], rules: list[Rule], threshold: float | None
    ) -> tuple[list[RuleScore], str]:
        if (too_much := too_many_examples(rules)) is not None:  # before any fitting: 413
            raise HTTPException(413, too_much)
        current = served.current  # one whole model per request, even while an adaptation switches it
        scorer = current.scorer
        arguments = (comments, [r.text for r in rules], [s or "" for s in subreddits])
        examples = {
            "positive_examples": [r.positive_examples for r in rules],
            "negative_examples": [r.negative_examples for r in rules],
        }
        with current.lock:
            if hasattr(scorer, "score_details"):
                details = scorer.score_details(*arguments, **examples)
            else:  # a stand-in with only ``score`` (tests, wrappers): no modes to report
                n = len(comments)
                details = {"probability": scorer.score(*arguments, **examples)}
                details |= {"mode": [ZERO_SHOT] * n, "evidence": [None] * n}
        flag_at = getattr(scorer, "flag_threshold", lambda mode: scorer.threshold)
        scores = []
        for i, (rule, p, mode, evidence) in enumerate(
            zip(rules, details["probability"], details["mode"], details["evidence"], strict=True)
        ):
            p = min(1.0, max(0.0, float(p)))
            cut = float(flag_at(mode) if threshold is None else threshold)
            rule_id = rule.id if rule.id is not None else str(i)
            scores.append(
                RuleScore(
                    id=rule_id,
                    rule=rule.text,
                    probability=p,
                    flagged=p >= cut,
                    threshold=cut,
                    mode=mode,
                    evidence=evidence,
                )
            )
        return scores, current.name

    def mode_of(rule: StoredRule) -> str:
        scorer = served.current.scorer
        if not hasattr(scorer, "mode"):
            return ZERO_SHOT
        from rulebert.domain.examples import RuleExamples

        return scorer.mode(rule.text, RuleExamples.of(rule.positive_examples, rule.negative_examples))

    def rule_out(rule: StoredRule) -> StoredRuleOut:
        return StoredRuleOut(**rule.to_json(), mode=mode_of(rule))

    def need_state() -> ServerState:
        if state is None:
            raise HTTPException(404, "this server keeps no rules: start it with --state-dir")
        return state

    def stored_rule_id(rule_id: str) -> str:
        if not is_rule_id(rule_id):
            raise HTTPException(422, f"a rule id is {RULE_ID_RULE}")
        return rule_id

    app = FastAPI(
        title="rulebert",
        summary="P(a Reddit comment breaks a community rule), from a fine-tuned BERT.",
        version=__version__,
        # Swagger UI and ReDoc load their scripts from a CDN: off, since nothing is fetched at run time
        # (the schema stays at /openapi.json)
        docs_url=None,
        redoc_url=None,
    )

    install_failure_handlers(app, state.dir if state is not None else None)  # 422, 507

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": served.current.name}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        current = served.current
        scorer, record = current.scorer, current.record
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        config = record.get("config")
        if isinstance(config, dict) and "model" in config:  # --model may name a local folder
            config = {**config, "model": checkpoint_name(config["model"])}
        return {
            "model": current.name,
            "model_dir": Path(scorer.model_dir).name,  # never the absolute path: it tells about the host
            "checkpoint": checkpoint_name(record.get("base_model")),
            "created": record.get("created"),
            "config": config,
            "adapted_from": (data.get("adapted_from") or {}).get("model"),
            "validation": scorer.metrics.get("validation"),
            "validation_scope": VALIDATION_SCOPE,
            "trained_rules": sorted(getattr(scorer, "trained_rules", ())),  # scored in mode "trained"
            "embedder": getattr(scorer, "has_embedder", False),
            "embedder_checkpoint": checkpoint_name(getattr(scorer, "embedder_checkpoint", None)),
            "threshold": scorer.threshold,
            "device": getattr(scorer, "device", None),
            "stored_rules": state is not None,
            "adapting": jobs.active if jobs is not None else None,
            "limits": LIMITS,
        }

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        openapi_extra=_body_schema(ScoreRequest),
        responses=INVALID_422,
    )
    async def score(http_request: Request) -> ScoreResponse:
        """One comment against one or more rules (inline, or stored ones by ``{"id": ...}``); scores in the
        order of ``rules``."""
        request = await parse_body(http_request, ScoreRequest)
        rules = await run_in_threadpool(
            with_stored, state, request.rules, lambda i: ("body", "rules", i, "id")
        )
        n = len(rules)
        scores, name = await run_in_threadpool(
            score_rows, [request.comment] * n, [request.subreddit] * n, rules, request.threshold
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
        rules = await run_in_threadpool(
            with_stored, state, [i.rule for i in items], lambda i: ("body", "items", i, "rule", "id")
        )
        scores, name = await run_in_threadpool(
            score_rows, [i.comment for i in items], [i.subreddit for i in items], rules, request.threshold
        )
        for item, answer in zip(items, scores, strict=True):
            answer.item_id = item.id
        return BatchResponse(scores=scores, model=name)

    @app.get("/v1/rules", response_model=RuleList)
    async def list_rules() -> RuleList:
        stored = await run_in_threadpool(need_state().rules.list)
        return RuleList(rules=[rule_out(rule) for rule in stored])

    @app.get("/v1/rules/{rule_id}", response_model=StoredRuleOut)
    async def get_rule(rule_id: str) -> StoredRuleOut:
        return rule_out(await run_in_threadpool(need_state().stored_rule, stored_rule_id(rule_id)))

    @app.put(
        "/v1/rules/{rule_id}",
        response_model=StoredRuleOut,
        openapi_extra=_body_schema(RuleBody),
        responses={**INVALID_422, 201: {"model": StoredRuleOut, "description": "Created"}},
    )
    async def put_rule(rule_id: str, http_request: Request) -> JSONResponse:
        """Create (201) or replace (200) a stored rule and its examples."""
        store = need_state().rules
        body = await parse_body(http_request, RuleBody)
        try:  # the one RULES.jsonl validation; the schema above added the HTTP size limits
            rule = rule_from_json({"id": stored_rule_id(rule_id), **body.model_dump()}, f"rule {rule_id!r}")
        except RulebertError as err:
            raise HTTPException(422, str(err)) from None
        stored, created = await run_in_threadpool(store.put, rule)
        return JSONResponse(rule_out(stored).model_dump(), status_code=201 if created else 200)

    @app.delete("/v1/rules/{rule_id}", status_code=204)
    async def delete_rule(rule_id: str) -> Response:
        if not await run_in_threadpool(need_state().rules.delete, stored_rule_id(rule_id)):
            raise HTTPException(404, f"no stored rule {rule_id!r}")
        return Response(status_code=204)

    @app.post(
        "/v1/adapt",
        status_code=202,
        response_model=Job,
        openapi_extra={"requestBody": {"required": False, **_body_schema(AdaptRequest)["requestBody"]}},
        responses={**INVALID_422, 409: {"description": "an adaptation job is already queued or running"}},
    )
    async def adapt(http_request: Request) -> Job:
        """Fine-tune the served model on stored rules' examples in the background (``{"rules": [ids]}``,
        default every stored rule); poll ``GET /v1/jobs/{job}``. On success the server switches to the
        adapted model and those rules score in mode ``trained``."""
        store = need_state().rules
        request = (
            await parse_body(http_request, AdaptRequest) if await http_request.body() else AdaptRequest()
        )
        stored = await run_in_threadpool(store.list)
        by_id = {rule.id: rule for rule in stored}
        wanted = request.rules if request.rules is not None else list(by_id)
        missing = [rule_id for rule_id in wanted if rule_id not in by_id]
        if missing:
            raise HTTPException(422, f"no stored rule {missing[0]!r}")
        if not wanted:
            why = (
                "rules is empty: name at least one stored rule, or omit it to adapt on all"
                if request.rules is not None
                else "no stored rules to adapt on: PUT /v1/rules/{id} first"
            )
            raise HTTPException(422, why)
        chosen = [by_id[rule_id] for rule_id in dict.fromkeys(wanted)]
        try:
            check_adaptable(chosen)
        except RulebertError as err:
            raise HTTPException(422, str(err)) from None
        try:
            return Job(**jobs.start(chosen))
        except Busy as err:
            raise HTTPException(409, str(err)) from None

    @app.get("/v1/jobs/{job_id}", response_model=Job)
    async def job(job_id: str) -> Job:
        need_state()
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id[:40]!r}")
        return Job(**found)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the request bodies (parsed by hand, see ``_parse``) and the key."""
        if app.openapi_schema is None:
            schema = base_openapi()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for body_model in (ScoreRequest, BatchRequest, RuleBody, AdaptRequest):
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

    # Starlette runs the last added middleware first: Host check, API key, same origin, body limits.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, timeout=request_timeout)
    app.add_middleware(SameOrigin, state_changing=lambda scope: not scope["path"].startswith("/v1/score"))
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
    state_dir: str | os.PathLike | None = None,
    rules_db: str | os.PathLike | None = None,
) -> None:
    """Load the model, then serve until interrupted. Binds to loopback unless told otherwise.

    Requests must name the bound address, a loopback name or one of ``allowed_hosts`` in their Host
    header; ``api_key`` guards the API; beyond ``max_connections`` open connections requests get 503; a
    request must arrive within ``request_timeout`` seconds (headers, then body).
    """
    import uvicorn

    attach_stderr_handler()  # as the CLI: the log lines as "rulebert: [warning: ]..." on stderr
    if max_connections < 1 or not request_timeout > 0:
        raise RulebertError("--max-connections and --request-timeout must be positive")
    hosts = allowed_hosts_for(host, allowed_hosts)
    # a bad model dir fails here, as a one-line error, before binding
    app = create_app(
        model_dir,
        api_key=api_key,
        allowed_hosts=hosts,
        request_timeout=request_timeout,
        state_dir=state_dir,
        rules_db=rules_db,
    )
    if host not in LOOPBACK:
        if api_key is None:
            logger.warning(
                "listening on %s: reachable from other machines, with no authentication (set %s or "
                "--api-key-file)",
                host,
                API_KEY_ENV,
            )
        if hosts != ["*"] and host in ("0.0.0.0", "::", ""):
            logger.info(
                "note: requests must name this machine in their Host header as one of: %s; add the names "
                "clients use with --allowed-host NAME",
                ", ".join(hosts),
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
