"""Moderators' decision logs as training data (``rulebert train --decisions DIR``).

A decisions folder is laid out as ``shared/data/communities``:

- ``rules.jsonl``: one line per community, ``{"subreddit": ..., "rules": [{"short_name", "description",
  "kind"}]}``; ``kind`` ``link`` marks a rule for posts only (left out of the rulebook), ``all`` / ``comment``
  (or none) a rule for comments.
- ``comments.csv``: ``subreddit, body, removed``: 1 where the community's moderators removed the comment, 0
  where they left it up.

Each decision becomes one labelled (comment, rulebook) row: the rule text is the community's rulebook as a
moderator pastes it (:func:`rulebook_text`), the label is ``removed``. Rows are balanced and capped per
community (:func:`decision_rows`), so that a big community does not drown the others and a model learns what
removal means across communities rather than one community's base rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.domain.jsonl import json_objects

RULES_FILE, COMMENTS_FILE = "rules.jsonl", "comments.csv"
REMOVED = "removed"
DECISION_SOURCE = "decision"
"""The ``source`` of a labelled row made from a decision (beside ``body`` and ``example``)."""


def rulebook_text(rules: Sequence[dict[str, Any]]) -> str:
    """A community's rulebook as a moderator pastes it: numbered ``short name: description`` lines of the
    rules that apply to comments (``kind`` not ``link``), descriptions on one line."""
    lines = []
    for rule in rules:
        if rule.get("kind") == "link":
            continue
        name = " ".join(str(rule.get("short_name") or "").split())
        description = " ".join(str(rule.get("description") or "").split())
        if not (name or description):
            continue
        text = f"{name}: {description}" if name and description else name or description
        lines.append(f"{len(lines) + 1}. {text}")
    return "\n".join(lines)


@dataclass
class DecisionLog:
    """A decisions folder, read and checked: each community's rulebook and its moderators' decisions."""

    rulebooks: dict[str, str]
    """subreddit -> rulebook text (:func:`rulebook_text`)."""
    comments: pd.DataFrame
    """``subreddit``, ``body``, ``removed`` (int 0/1), in file order."""
    fingerprint: dict[str, Any]
    """What a model dir records of the folder: both files' names, sizes and SHA-256."""

    @property
    def communities(self) -> list[str]:
        """The communities with decisions, sorted."""
        return sorted(self.comments[D.SUBREDDIT].unique().tolist())


def _read_rulebooks(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise RulebertError(f"{path}: file not found (a decisions folder: {RULES_FILE}, {COMMENTS_FILE})")
    books: dict[str, str] = {}
    with open(path, "rb") as handle:
        for where, record in json_objects(handle, str(path)):
            name, rules = record.get("subreddit"), record.get("rules")
            if not isinstance(name, str) or not name.strip():
                raise RulebertError(f"{where}: field 'subreddit' must be a non-empty string")
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                raise RulebertError(f"{where}: field 'rules' must be a list of objects")
            for number, rule in enumerate(rules, start=1):
                for key in ("short_name", "description", "kind"):
                    if rule.get(key) is not None and not isinstance(rule[key], str):
                        raise RulebertError(f"{where}: rules item {number}: field {key!r} must be a string")
            if name.strip() in books:
                raise RulebertError(f"{where}: subreddit {name.strip()!r} appears twice")
            book = rulebook_text(rules)
            if not book:
                raise RulebertError(f"{where}: {name.strip()!r} has no rule that applies to comments")
            books[name.strip()] = book
    if not books:
        raise RulebertError(f"{path}: no communities")
    return books


def read_decisions(folder: str | os.PathLike) -> DecisionLog:
    """Read a decisions folder (``rules.jsonl`` + ``comments.csv``); a one-line error names file, row and
    column of anything wrong (a missing column, a label not 0/1, an empty body, a community without rules)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RulebertError(f"{folder}: not a folder (--decisions: {RULES_FILE} + {COMMENTS_FILE})")
    books = _read_rulebooks(folder / RULES_FILE)
    path = folder / COMMENTS_FILE
    frame = D.read_table(path)
    for column in (D.SUBREDDIT, D.BODY, REMOVED):
        if column not in frame.columns:
            raise D.missing_column(path, frame, column)
    if frame.empty:
        raise RulebertError(f"{path}: no data rows")
    frame[D.SUBREDDIT] = frame[D.SUBREDDIT].str.strip()
    for column in (D.SUBREDDIT, D.BODY):
        blank = (frame[column].str.strip() == "").to_numpy()
        if blank.any():
            raise RulebertError(f"{D.where(path, frame, int(np.flatnonzero(blank)[0]), column)}: empty")
    values = frame[REMOVED].str.strip().str.lower()
    valid = values.isin(["0", "1", "0.0", "1.0", "true", "false"]).to_numpy()
    if not valid.all():
        index = int(np.flatnonzero(~valid)[0])
        shown = repr(values.iloc[index][:40]) if values.iloc[index] else "empty"
        raise RulebertError(f"{D.where(path, frame, index, REMOVED)}: {shown} is not 0 or 1")
    unknown = ~frame[D.SUBREDDIT].isin(set(books)).to_numpy()
    if unknown.any():
        index = int(np.flatnonzero(unknown)[0])
        name = frame[D.SUBREDDIT].iloc[index][:60]
        where = D.where(path, frame, index, D.SUBREDDIT)
        raise RulebertError(f"{where}: {name!r} has no rules in {RULES_FILE}")
    frame[REMOVED] = values.isin(["1", "1.0", "true"]).astype(int)
    fingerprint = {
        "rules": D.file_fingerprint(folder / RULES_FILE),
        "comments": D.file_fingerprint(path),
    }
    return DecisionLog(books, frame[[D.SUBREDDIT, D.BODY, REMOVED]].reset_index(drop=True), fingerprint)


def decision_rows(
    log: DecisionLog,
    per_label: int,
    seed: int,
    communities: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Labelled (text, rule, subreddit, label, source) rows from ``log``: per community (all, or
    ``communities``) up to ``per_label`` removed and as many kept comments, drawn at random (``seed``),
    balanced: a community with fewer of one label gives that many of each. A community with no decision of
    either label gives none (a removal rate of 0 or 1 teaches nothing of what is removed)."""
    wanted = set(log.communities if communities is None else communities)
    parts = []
    for name, group in log.comments.groupby(D.SUBREDDIT, sort=True):
        if name not in wanted:
            continue
        rng = np.random.default_rng([seed, *name.encode("utf-8")])
        labels = group[REMOVED].to_numpy()
        n = min(per_label, int(labels.sum()), int((1 - labels).sum()))
        if n == 0:
            continue
        chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == v))[:n] for v in (1, 0)])
        picked = group.iloc[np.sort(chosen)]
        parts.append(
            pd.DataFrame(
                {
                    D.TEXT: picked[D.BODY].to_numpy(),
                    D.RULE: log.rulebooks[name],
                    D.SUBREDDIT: name,
                    D.LABEL: picked[REMOVED].to_numpy().astype(int),
                    D.SOURCE: DECISION_SOURCE,
                }
            )
        )
    if not parts:
        raise RulebertError("the decisions hold no community with both removed and kept comments")
    return pd.concat(parts, ignore_index=True)


def community_folds(communities: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """``communities`` dealt into ``folds`` groups of near-equal size, in a seeded random order (the
    leave-communities-out protocol: each group is held out once while the others train)."""
    names = sorted(set(communities))
    if not 2 <= folds <= len(names):
        raise RulebertError(f"--folds must be between 2 and the {len(names)} communities, got {folds}")
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in order[f::folds]) for f in range(folds)]
