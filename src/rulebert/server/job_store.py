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
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rulebert.server.rule_store import connect, open_database

INTERRUPTED = "interrupted: the server stopped while the job ran; start it again"
KEEP_JOBS = 100  # finished jobs remembered, newest first


class JobStore:
    """Jobs as JSON rows: save (insert or replace), get, and :meth:`recover` at start-up."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        open_database(
            self.path,
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "body TEXT NOT NULL, created REAL NOT NULL)",
            "jobs",
        )

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

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
