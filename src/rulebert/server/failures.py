"""The server's answers to requests that fail past their route: an invalid body or parameter (422, the
capped body of :mod:`rulebert.server.validation`) and a full disk under the state dir (507).

A full disk fails every write (PUT and DELETE of a rule, starting an adaptation job) until space is freed:
each is a JSON 507 with a one-line reason, and the log gets one warning per burst, not a traceback per
request (368 of them filled a log while the disk stayed full, issue 34).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from rulebert.server.validation import InvalidBody, error_body

logger = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
QUIET_SECONDS = 60.0  # a burst of failures ends after this long without one


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full: ENOSPC / EDQUOT from a file write, or
    SQLite's SQLITE_FULL ("database or disk is full"), which is how a full disk reaches a store."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL_ERRNOS
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(err)
    return False


class BurstLog:
    """One warning per burst of a failure: the first is logged, the ones that follow it within
    ``quiet`` seconds of each other are counted, and the next burst's line says how many there were."""

    def __init__(self, quiet: float = QUIET_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet, self.clock = quiet, clock
        self._last: float | None = None
        self._unreported = 0
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self._lock:
            now, last = self.clock(), self._last
            self._last = now
            if last is not None and now - last < self.quiet:
                self._unreported += 1
                return
            unreported, self._unreported = self._unreported, 0
        more = f" ({unreported} more before this one)" if unreported else ""
        logger.warning("%s%s", message, more)


def install(app: FastAPI, state_dir: Path | None) -> None:
    """Add the 422 and 507 handlers to ``app``."""
    burst = BurstLog()

    @app.exception_handler(InvalidBody)
    async def invalid_body(request: Request, exc: InvalidBody) -> Response:
        return Response(exc.content, status_code=422, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # Not the request bodies (those are validated in _parse), but any other parameter: the same
        # capped, always-encodable answer, computed off the event loop.
        content = await run_in_threadpool(error_body, exc.errors())
        return Response(content, status_code=422, media_type="application/json")

    async def storage_failure(request: Request, exc: Exception) -> Response:
        if not disk_full(exc):
            raise exc  # any other failure: a 500 with its traceback, as before
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = " ".join(f"no space left on the state dir: {state_dir} ({cause})".split())
        burst(f"{request.method} {request.url.path}: {reason}; answering 507 until space is freed")
        return JSONResponse({"detail": reason}, status_code=507)

    app.add_exception_handler(OSError, storage_failure)
    app.add_exception_handler(sqlite3.Error, storage_failure)
