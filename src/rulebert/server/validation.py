"""Request bodies for ``rulebert serve``: parsed and validated in a worker thread (a 1 MB body never blocks
the event loop), and a 422 that is always encodable and small: at most ``MAX_ERRORS`` errors, each echoing at
most ``MAX_ECHO_CHARS`` characters of its input, lone surrogates and non-finite numbers made safe.
"""

from __future__ import annotations

import email.message
import json
import math
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from rulebert.domain.jsonl import duplicate_key

MAX_ERRORS = 20  # validation errors reported in a 422; the rest are counted
MAX_ECHO_CHARS = 200  # characters of a bad input echoed in a 422
MANY_ERRORS = 1_000  # more validation errors than this are counted, and only a few of them listed


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
        parsed = model.model_validate_json(body)  # strict JSON: a lone surrogate escape is invalid JSON
    except ValidationError as err:
        total = err.error_count()
        if total > MANY_ERRORS:  # listing them all would hold the GIL (and the event loop) for long
            err = _few_errors(model, body) or err
        return error_body(err.errors(include_url=False), total, prefix=("body",))
    # pydantic keeps a repeated key's last value; checked once the body is valid (an invalid one is refused
    # already, and a 1 MB one is parsed a second time only when it is going to be scored)
    if (key := duplicate_key(body)) is not None:
        msg = f"duplicate key {key[:MAX_ECHO_CHARS]!r}: give each key once"
        return error_body([{"type": "duplicate_key", "loc": ("body",), "msg": msg, "input": key}])
    return parsed


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


async def parse_body(request: Request, model: type[M]) -> M:
    body = await request.body()
    result = await run_in_threadpool(_validate, model, body, request.headers.get("content-type"))
    if isinstance(result, bytes):
        raise InvalidBody(result)
    return result
