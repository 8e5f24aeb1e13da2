"""JSON Lines, read one way everywhere: comments to score, decision logs and RULES.jsonl.

Each object comes with ``where`` (``NAME: line N``) for the caller's own one-line errors; a line that is not
UTF-8, holds a NUL byte, is not JSON, is not an object, names a key twice in one object, is nested more than
``MAX_DEPTH`` levels deep, or holds a lone surrogate (valid JSON, but no text) is an error here, named the
same way whichever file it is in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from rulebert.core.errors import RulebertError
from rulebert.domain.text import text_problem

MAX_DEPTH = 100
"""Arrays and objects nested deeper than this are refused. No comment or rule needs it, and Python's json
gives up with a ``RecursionError`` near 1,000 levels, reading or writing the record back, at a depth that
depends on the caller's own stack: one fixed limit, well below that, is the same error everywhere."""


def decoded_lines(handle: IO[bytes], name: str) -> Iterator[str]:
    """Lines as text (newlines kept), with a one-line error naming the line of a non-UTF-8 byte."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if b"\x00" in raw:
            raise RulebertError(f"{name}: line {number}: contains a NUL byte (not a text file?)")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = raw[err.start : err.start + 1].hex()
            raise RulebertError(f"{name}: line {number}: not valid UTF-8 (byte 0x{bad})") from None


def check_unicode(record: dict[str, Any], where: str) -> None:
    """A one-line error naming the key (and list item) of a string that is not text
    (:func:`~rulebert.domain.text.text_problem`): a lone surrogate (``"\\ud800"`` is valid JSON, but the
    tokenizer and a UTF-8 output both refuse it) or a NUL (``"\\u0000"``: a raw NUL byte is refused too)."""
    stack: list[tuple[str, Any]] = []
    for key, value in record.items():
        label = f"key {key[:40]!r}"
        stack += [(label, key), (label, value)]
    while stack:
        label, value = stack.pop()
        problem = text_problem(value) if isinstance(value, str) else None
        if isinstance(value, dict):
            for key, inner in value.items():
                inner_label = f"{label}, key {key[:40]!r}"
                stack += [(inner_label, key), (inner_label, inner)]
        elif isinstance(value, list):
            stack.extend((f"{label}, item {number}", v) for number, v in enumerate(value, start=1))
        if problem is not None:
            raise RulebertError(f"{where}, {label}: {problem}")


class DuplicateKey(ValueError):
    """A JSON object names one key twice. ``json`` (and pydantic) keep the last silently, so a record would
    be scored on a text its writer may not have meant: refused instead."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key[:40]!r}")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook`` that raises :class:`DuplicateKey` for a key given twice."""
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return record


def duplicate_key(document: str | bytes) -> str | None:
    """The first key some object of a JSON ``document`` gives twice, or None (also when it does not parse:
    the caller's own parser reports that). What the server checks of a body pydantic has validated."""
    try:
        json.loads(document, object_pairs_hook=unique_keys)
    except DuplicateKey as err:
        return err.key
    except (ValueError, RecursionError):
        return None
    return None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays / objects more than ``limit`` levels deep (no recursion:
    the walk itself must not hit the limit it checks)."""
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parsed(line: str, where: str) -> Any:
    deep = f"{where}: JSON nested more than {MAX_DEPTH} levels deep"
    try:
        record = json.loads(line, object_pairs_hook=unique_keys)
    except DuplicateKey as err:
        raise RulebertError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise RulebertError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:  # the parser's own limit
        raise RulebertError(deep) from None
    # only a line with that many brackets can be that deep: the walk is skipped for every usual line
    if line.count("[") + line.count("{") > MAX_DEPTH and too_deep(record):
        raise RulebertError(deep)
    return record


def json_objects(handle: IO[bytes], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line of a JSON Lines file opened in binary."""
    for number, line in enumerate(decoded_lines(handle, name), start=1):
        if not line.strip():
            continue
        where = f"{name}: line {number}"
        record = _parsed(line, where)
        if not isinstance(record, dict):
            raise RulebertError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "\\u" in line:  # only an escape can put a lone surrogate or a NUL in a decoded line
            check_unicode(record, where)
        yield where, record
