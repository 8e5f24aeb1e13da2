"""Adaptation jobs kept in an SQLite file under ``rulebert serve --state-dir`` (``S/jobs.sqlite3``).

A job outlives the process that ran it: ``GET /v1/jobs/{id}`` still answers after a restart. A job that
was queued or running when the server died (``kill -9``, a power cut) cannot finish; on the next start it
is marked ``failed`` with the reason, and its half-written staging folder is removed (:func:`recover`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import create_private

INTERRUPTED = "interrupted: the server stopped while the job ran; start it again"
KEEP_JOBS = 100  # finished jobs remembered, newest first


class JobStore:
    """Jobs as JSON rows: save (insert or replace), get, and :meth:`recover` at start-up."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        create_private(self.path)
        try:
            with self._connect() as connection:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                    "body TEXT NOT NULL, created REAL NOT NULL)"
                )
        except sqlite3.DatabaseError as err:
            raise RulebertError(f"{self.path}: not a usable jobs database ({err})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            with connection:  # commits, or rolls back on an error
                yield connection
        finally:
            connection.close()

    def save(self, job: dict[str, Any]) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO jobs (id, status, body, created) VALUES (?, ?, ?, ?)",
                (job["job"], job["status"], json.dumps(job), job["created"]),
            )
            # only the newest KEEP_JOBS finished jobs are kept
            connection.execute(
                "DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND id NOT IN "
                "(SELECT id FROM jobs ORDER BY created DESC LIMIT ?)",
                (KEEP_JOBS,),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as connection:
            row = connection.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def recover(self) -> list[str]:
        """Mark every job left queued or running by a dead server ``failed``; returns their ids."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT id, body FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchall()
            for job_id, body in rows:
                job = json.loads(body) | {"status": "failed", "message": INTERRUPTED, "finished": time.time()}
                connection.execute(
                    "UPDATE jobs SET status = ?, body = ? WHERE id = ?", ("failed", json.dumps(job), job_id)
                )
        return [job_id for job_id, _ in rows]
