"""rulebert's one channel for messages to a person: the ``rulebert`` loggers (``logging.getLogger(__name__)``
in every module), and the stderr handler the command line and the server attach.

Library code never prints: a Python caller sees nothing but warnings until it configures logging, as with any
library. :func:`attach_stderr_handler` gives the CLI's lines, word for word as they were printed before::

    rulebert: predict backend: onnx-int8          (INFO)
    rulebert: warning: DIR: report.html not written (...)   (WARNING)
"""

from __future__ import annotations

import logging
import sys

ROOT = "rulebert"
PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class StderrFormatter(logging.Formatter):
    """``rulebert: [warning: |error: ]message``: the one-line shape of every rulebert message on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{ROOT}: {PREFIXES.get(record.levelno, '')}{record.getMessage()}"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def attach_stderr_handler(level: int = logging.INFO) -> logging.Handler:
    """Send the ``rulebert`` loggers' records of ``level`` and above to stderr as one line each
    (:class:`StderrFormatter`). Idempotent: a second call replaces the first handler."""
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
        logger.removeHandler(old)
    handler = _CurrentStderr()
    handler.setFormatter(StderrFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
