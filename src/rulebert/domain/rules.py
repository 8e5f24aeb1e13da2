"""A moderator's rules as data: an id, the rule text and its labelled examples.

Where they come from: a RULES.jsonl file (``rulebert adapt --rules``, ``rulebert score --rules``), the
competition layout (``--test test.csv``: each distinct rule with its example cells), or the server's store
(:class:`rulebert.server.rule_store.RuleStore`, an SQLite file under ``rulebert serve --state-dir``).

RULES.jsonl has one JSON object per line::

    {"id": "medical", "text": "No medical advice", "positive_examples": ["..."], "negative_examples": ["..."]}

``id`` is what a rule is called in a column name (``probability_<id>``) and a URL (``/v1/rules/<id>``):
letters, digits, ``_``, ``-`` and ``.``, at most 64 characters, and not ``.`` or ``..``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.domain.jsonl import json_objects
from rulebert.domain.text import is_blank, text_problem

RULE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RULE_FIELDS = ("id", "text", "positive_examples", "negative_examples")
RULE_ID_RULE = "1-64 letters, digits, '_', '-' or '.', not '.' or '..'"


def is_rule_id(value: object) -> bool:
    """Whether ``value`` is a usable rule id. ``.`` and ``..`` match the characters but are path segments a
    URL resolves away: ``/v1/rules/..`` never reaches the rule."""
    return isinstance(value, str) and RULE_ID.fullmatch(value) is not None and value not in (".", "..")


@dataclass(frozen=True)
class StoredRule:
    """A rule with its id and labelled examples (comments that break it / keep it)."""

    id: str
    text: str
    positive_examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()
    updated: float = field(default=0.0, compare=False)
    """Seconds since the epoch of the last change (set by :class:`RuleStore`)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["positive_examples"], out["negative_examples"] = (
            list(self.positive_examples),
            list(self.negative_examples),
        )
        return out


def check_rule_id(rule_id: object, where: str) -> str:
    if not is_rule_id(rule_id):
        raise RulebertError(f"{where}: id {str(rule_id)[:80]!r} must be {RULE_ID_RULE}")
    return rule_id


def rule_from_json(payload: object, where: str) -> StoredRule:
    """A :class:`StoredRule` from a parsed JSON object, every field checked (``where`` names the line)."""
    if not isinstance(payload, dict):
        raise RulebertError(f"{where}: expected a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(RULE_FIELDS))
    if unknown:
        raise RulebertError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(RULE_FIELDS)})")
    rule_id = check_rule_id(payload.get("id"), where)
    text = payload.get("text")
    if not isinstance(text, str) or is_blank(text):  # "\u200b" shows nothing either
        raise RulebertError(f"{where}: field 'text' must be a non-empty string")
    if (problem := text_problem(text)) is not None:
        raise RulebertError(f"{where}: field 'text': {problem}")
    examples = []
    for name in ("positive_examples", "negative_examples"):
        values = payload.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RulebertError(f"{where}: field {name!r} must be a list of strings")
        for i, value in enumerate(values):
            if (problem := text_problem(value)) is not None:
                raise RulebertError(f"{where}: field {name!r}, item {i + 1}: {problem}")
        examples.append(tuple(v for v in values if not is_blank(v)))
    return StoredRule(rule_id, text, examples[0], examples[1])


def read_rules_jsonl(path: str | os.PathLike) -> list[StoredRule]:
    """The rules of a RULES.jsonl file; a bad line is a one-line error naming the file and line (read as
    every JSON Lines input is: :func:`rulebert.domain.jsonl.json_objects`)."""
    path = Path(path)
    rules: dict[str, StoredRule] = {}
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise RulebertError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        for where, payload in json_objects(handle, str(path)):
            rule = rule_from_json(payload, where)
            if rule.id in rules:
                raise RulebertError(f"{where}: id {rule.id!r} appears twice")
            rules[rule.id] = rule
    if not rules:
        raise RulebertError(f"{path}: no rules (one JSON object per line)")
    return list(rules.values())


def slug(text: str, taken: set[str]) -> str:
    """A readable, unused rule id from a rule text: "No Advertising: ..." -> "no-advertising"."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    base = "-".join(words[:4])[:48] or "rule"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def rules_from_competition(frame: pd.DataFrame) -> list[StoredRule]:
    """Each distinct rule of a competition-layout frame with all of its example cells (distinct texts; a
    text given with both labels goes to the majority, ties dropped:
    :func:`rulebert.domain.data.dedupe_rows`)."""
    rows, _ = D.dedupe_rows(D.example_rows(frame))
    taken: set[str] = set()
    rules = []
    for rule_text in dict.fromkeys(frame[D.RULE]):
        own = rows[rows[D.RULE] == rule_text]
        rules.append(
            StoredRule(
                slug(rule_text, taken),
                rule_text,
                tuple(own.loc[own[D.LABEL] == 1, D.TEXT]),
                tuple(own.loc[own[D.LABEL] == 0, D.TEXT]),
            )
        )
    return rules


def check_adaptable(rules: Sequence[StoredRule]) -> None:
    """What adaptation needs of its rules: asked by ``rulebert adapt``, and by ``POST /v1/adapt`` before it
    queues a job."""
    if not rules:
        raise RulebertError("no rules to adapt on")
    for rule in rules:
        if not rule.positive_examples or not rule.negative_examples:
            raise RulebertError(
                f"rule {rule.id!r}: adapting needs at least one positive and one negative example "
                f"(it has {len(rule.positive_examples)} and {len(rule.negative_examples)})"
            )


def example_frame(rules: Sequence[StoredRule]) -> pd.DataFrame:
    """Labelled (text, rule, subreddit, label) rows from rules' examples, de-duplicated per rule: the rows
    adaptation fine-tunes on (the same rows ``rulebert run`` makes of a test file's example cells)."""
    parts = [
        pd.DataFrame(
            {
                D.TEXT: list(rule.positive_examples) + list(rule.negative_examples),
                D.RULE: rule.text,
                D.SUBREDDIT: "",
                D.LABEL: [1] * len(rule.positive_examples) + [0] * len(rule.negative_examples),
                D.SOURCE: "example",
            }
        )
        for rule in rules
    ]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[D.TEXT, D.RULE])
    rows, _ = D.dedupe_rows(rows)
    return rows
