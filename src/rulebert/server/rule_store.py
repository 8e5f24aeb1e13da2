"""The server's stored rules: an SQLite file under ``rulebert serve --state-dir`` (``PUT /v1/rules/<id>``).

A small class (put, get, list, delete) on purpose: a deployment that wants rules in a shared database
re-implements these four methods.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from rulebert.core.errors import RulebertError
from rulebert.core.files import create_private, tighten
from rulebert.domain.rules import StoredRule, check_rule_id, rule_from_json

logger = logging.getLogger(__name__)


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a state-dir SQLite file: committed, or rolled back on an error, then closed."""
    connection = sqlite3.connect(path, timeout=30)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def open_database(path: Path, create_table: str, what: str) -> None:
    """Create (owner only, WAL) or check an SQLite file of the state dir and its table."""
    try:
        create_private(path)
    except OSError as err:  # /proc/x.sqlite3, a read-only place: one line at start-up, not a traceback
        raise RulebertError(f"{path}: cannot create the {what} database ({err.strerror or err})") from None
    _make_private(path)
    try:
        with connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(create_table)
    except sqlite3.DatabaseError as err:
        raise RulebertError(f"{path}: not a usable {what} database ({err})") from None


def _make_private(path: Path) -> None:
    """An existing database (and its WAL files) readable by others, as an older rulebert or a copy left it:
    owner only, with one warning line each."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            loose = tighten(file, 0o600) if file.exists() else None
        except OSError as err:
            logger.warning("%s: open to other users and cannot be made private (%s)", file, err)
            continue
        if loose is not None:
            logger.warning("%s: was mode %o (open to other users); now 600", file, loose)


class UnreadableRule(RulebertError):
    """A stored row that is not a rule (written by another program or by hand, or damaged): it fails alone;
    every other rule still reads."""


class RuleStore:
    """Rules kept in an SQLite file: create/replace, read, list, delete. Safe from many threads (a connection
    per call) and from several processes on one machine (SQLite's locking; WAL journal).

    SQLite wants a local disk: several servers sharing one rule set should share one server (clients
    are cheap), or point ``--rules-db`` at a file only one of them writes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._reported: set[tuple[object, object]] = set()  # bad rows already logged: once each
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise RulebertError(f"{self.path}: cannot create its folder ({err.strerror or err})") from None
        open_database(  # owner only: moderators' rules and examples
            self.path,
            "CREATE TABLE IF NOT EXISTS rules (id TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL)",
            "rules",
        )

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    @staticmethod
    def _row(rule_id: object, body: object, updated: object) -> StoredRule:
        """A row as a rule, checked as a PUT body is; :class:`UnreadableRule` for one that is not."""
        where = f"stored rule {str(rule_id)[:80]!r}"
        try:
            payload = json.loads(body)  # type: ignore[arg-type]
        except (TypeError, ValueError, RecursionError) as err:
            raise UnreadableRule(f"{where}: not JSON ({err})") from None
        if not isinstance(payload, dict):
            raise UnreadableRule(f"{where}: expected a JSON object, got {type(payload).__name__}")
        try:
            rule = rule_from_json({**payload, "id": rule_id}, where)
        except RulebertError as err:
            raise UnreadableRule(str(err)) from None
        stamp = (
            float(updated) if isinstance(updated, int | float) else 0.0
        )  # a lost time is no reason to fail
        return dataclasses.replace(rule, updated=stamp)

    def _report(self, row: tuple, err: UnreadableRule) -> None:
        if (row[0], row[2]) not in self._reported:  # (id, updated): a replaced row is reported again
            self._reported.add((row[0], row[2]))
            logger.warning("%s: %s: skipped (PUT it again or DELETE it)", self.path, err)

    def put(self, rule: StoredRule) -> tuple[StoredRule, bool]:
        """Create or replace a rule; returns it (with its time) and whether it is new."""
        check_rule_id(rule.id, "rule")
        body = json.dumps({k: v for k, v in rule.to_json().items() if k not in ("id", "updated")})
        stamped = StoredRule(rule.id, rule.text, rule.positive_examples, rule.negative_examples, time.time())
        row = (rule.id, body, stamped.updated)
        with self._connect() as connection:
            # One statement decides "new": of many concurrent puts of a new id, exactly one inserts (a
            # SELECT then an INSERT let several see "absent" and all answer 201).
            created = connection.execute(
                "INSERT OR IGNORE INTO rules (id, body, updated) VALUES (?, ?, ?)", row
            ).rowcount
            if not created:
                connection.execute("UPDATE rules SET body = ?, updated = ? WHERE id = ?", row[1:] + row[:1])
        return stamped, created == 1

    def get(self, rule_id: str) -> StoredRule | None:
        with self._connect() as connection:
            row = connection.execute(
                "SELECT id, body, updated FROM rules WHERE id = ?", (rule_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            return self._row(*row)
        except UnreadableRule as err:
            self._report(row, err)
            raise

    def list(self) -> list[StoredRule]:
        with self._connect() as connection:
            rows = connection.execute("SELECT id, body, updated FROM rules ORDER BY id").fetchall()
        rules = []
        for row in rows:  # one bad row is left out (and logged), never the whole list
            try:
                rules.append(self._row(*row))
            except UnreadableRule as err:
                self._report(row, err)
        return rules

    def delete(self, rule_id: str) -> bool:
        with self._connect() as connection:
            return connection.execute("DELETE FROM rules WHERE id = ?", (rule_id,)).rowcount > 0
