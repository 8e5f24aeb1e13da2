"""Reading a moderator's comments (and a rule's labelled examples) for ``rulebert score``: CSV or JSONL,
a file or stdin, with a one-line error naming the file, line and column of anything unreadable.

CSV goes through the ``csv`` module rather than pandas: cells stay the exact strings they were (no
``NaN``, no ``1.0`` for ``1``) and a bad byte or row is reported with its line number.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import CSV_FIELD_LIMIT, csv_field_limit
from rulebert.domain.examples import RuleExamples
from rulebert.domain.jsonl import decoded_lines, json_objects
from rulebert.domain.text import is_blank

TEXT_COLUMNS = ("body", "comment")
EXAMPLE_TEXT_COLUMNS = ("text", "body", "comment")
EXAMPLE_LABEL_COLUMNS = ("label", "rule_violation", "removed")
"""``removed``: a moderator's decision log (``body, removed``) is a rule's examples as it stands."""
POSITIVE_LABELS = ("1", "true", "1.0", "removed", "remove")
NEGATIVE_LABELS = ("0", "false", "0.0", "kept", "keep")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Examples:
    """Comments known to break (positive) or keep (negative) the rule, as read (order and repeats kept).

    A thin adapter of the one examples type, :class:`rulebert.domain.examples.RuleExamples` (what the
    scorer learns from, deduplicated): :meth:`rule_examples` gives it."""

    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)

    def rule_examples(self) -> RuleExamples:
        return RuleExamples.of(self.positive, self.negative)


@dataclass
class Row:
    """One input row: its position for error messages, the record to write back, the text to score."""

    where: str
    record: Any  # list[str] for CSV, dict for JSONL
    column: str  # where the text came from
    body: str
    subreddit: str | None


def _sniff(head: bytes) -> str:
    """JSONL when the first non-blank character opens an object, else CSV."""
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def check_input(path: str | os.PathLike) -> Path:
    """``path`` as something to read: a file, or a stream (a FIFO, a shell's ``<(cat f.csv)``), read as
    stdin is; a folder or nothing there is a one-line error. Only looked at: a stream is not opened."""
    file = Path(path)
    if file.is_dir():
        raise RulebertError(f"{file}: is a directory, not a file")
    if not file.exists():
        raise RulebertError(f"{file}: file not found")
    return file


@contextlib.contextmanager
def open_input(path: str) -> Iterator[tuple[io.BufferedReader, str, str]]:
    """(binary handle, format, name for messages); ``-`` is stdin, whose format is sniffed (as is a stream's
    without an extension: ``/dev/fd/63``)."""
    if path == "-":
        handle = sys.stdin.buffer
        yield handle, _sniff(handle.peek(256)[:256]), "<stdin>"
        return
    file = check_input(path)
    with open(file, "rb") as handle:
        fmt = FORMATS.get(file.suffix.lower()) or _sniff(handle.peek(256)[:256])
        yield handle, fmt, str(file)


def pick_column(columns: Sequence[str], wanted: Sequence[str], name: str, what: str) -> str:
    for column in wanted:
        if column in columns:
            return column
    found = ", ".join(map(str, columns)) or "none"
    names = " or ".join(f"'{c}'" for c in wanted)
    raise RulebertError(f"{name}: no {what} column {names} (found: {found})")


def _next_record(reader: Any, name: str) -> list[str] | None:
    """The next CSV record, None at the end. The cell limit is raised for this one read (not for the
    whole stream: the limit is process-wide and a lock guards it, see ``core.files.csv_field_limit``)."""
    with csv_field_limit(CSV_FIELD_LIMIT):
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as err:
            raise RulebertError(f"{name}: line {reader.line_num}: not a readable CSV ({err})") from None


def csv_rows(handle: IO[bytes], name: str, text_columns: Sequence[str]) -> tuple[list[str], Iterator[Row]]:
    reader = csv.reader(decoded_lines(handle, name))
    header = _next_record(reader, name)
    if header is None:
        raise RulebertError(f"{name}: file is empty")
    # a record is written back as {column: cell}: of two columns of one name, one would silently go
    duplicated = [column for i, column in enumerate(header) if column in header[:i]]
    if duplicated:
        raise RulebertError(f"{name}: line 1: duplicate column {duplicated[0][:80]!r}")
    text = header.index(pick_column(header, text_columns, name, "text"))
    sub = header.index("subreddit") if "subreddit" in header else None

    def rows() -> Iterator[Row]:
        number = 0
        while (cells := _next_record(reader, name)) is not None:
            if not cells:  # a blank line
                continue
            number += 1
            where = f"{name}: row {number} (line {reader.line_num})"
            if len(cells) != len(header):
                raise RulebertError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            yield Row(where, cells, header[text], cells[text], cells[sub] if sub is not None else None)

    return header, rows()


def jsonl_rows(handle: IO[bytes], name: str, text_columns: Sequence[str]) -> Iterator[Row]:
    for where, record in json_objects(handle, name):
        key = pick_column(list(record), text_columns, where, "text")
        body = record[key]
        if not isinstance(body, str):
            raise RulebertError(f"{where}, key '{key}': expected a string, got {type(body).__name__}")
        subreddit = record.get("subreddit")
        yield Row(where, record, key, body, subreddit if isinstance(subreddit, str) else None)


def checked_rows(rows: Iterator[Row]) -> Iterator[Row]:
    for row in rows:
        if is_blank(row.body):  # a NUL was refused by the reader (a CSV byte or a JSON escape)
            raise RulebertError(f"{row.where}, column '{row.column}': empty comment")
        yield row


def comment_rows(handle: IO[bytes], fmt: str, name: str) -> tuple[list[str] | None, Iterator[Row]]:
    """(CSV header or None, checked rows) of an opened comments file (:func:`open_input`): what both
    ``rulebert score`` engines read."""
    header, rows = csv_rows(handle, name, TEXT_COLUMNS) if fmt == "csv" else (None, None)
    rows = rows if rows is not None else jsonl_rows(handle, name, TEXT_COLUMNS)
    return header, checked_rows(rows)


def read_examples(path: str | os.PathLike) -> Examples:
    """A CSV/JSONL of ``text`` (or ``body``/``comment``) and ``label`` (or ``rule_violation``, or ``removed``:
    1 = breaks the rule, 0 = keeps it; ``true``/``false`` and ``removed``/``kept`` also read)."""
    examples = Examples()
    with open_input(str(path)) as (handle, fmt, name):
        if fmt == "csv":
            header, rows = csv_rows(handle, name, EXAMPLE_TEXT_COLUMNS)
            label_at = header.index(pick_column(header, EXAMPLE_LABEL_COLUMNS, name, "label"))
            pairs = ((row, row.record[label_at], header[label_at]) for row in rows)
        else:

            def jsonl_pairs() -> Iterator[tuple[Row, Any, str]]:
                for row in jsonl_rows(handle, name, EXAMPLE_TEXT_COLUMNS):
                    key = pick_column(list(row.record), EXAMPLE_LABEL_COLUMNS, row.where, "label")
                    yield row, row.record[key], key

            pairs = jsonl_pairs()
        for row, label, column in pairs:
            if is_blank(row.body):
                raise RulebertError(f"{row.where}, column '{row.column}': empty example text")
            value = str(label).strip().lower()
            if value not in POSITIVE_LABELS + NEGATIVE_LABELS:
                raise RulebertError(f"{row.where}, column '{column}': label {label!r} is not 0 or 1")
            target = examples.positive if value in POSITIVE_LABELS else examples.negative
            target.append(row.body)
    if not examples.positive and not examples.negative:
        raise RulebertError(f"{path}: no example rows")
    return examples
