"""Score a moderator's file of comments against a rule (or a RULES.jsonl of rules): CSV or JSONL in, the
format the output's extension names out (``-``: the input's).

Rows are streamed in chunks (2,048 by default): a 50k-row file never has more than one chunk's tokens and
tensors in memory. Every input column/key is kept and a ``probability`` column is added (replaced when it
is already there); with ``--rules``, one ``probability_<id>`` column per rule. A file output is written
atomically; ``-`` means stdin / stdout.

CSV goes through the ``csv`` module rather than pandas: cells stay the exact strings they were (no
``NaN``, no ``1.0`` for ``1``) and a bad byte or row is reported with its line number. One exception, by
default: a CSV cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return; comments are written by strangers) is written with a leading ``'``, as OWASP
recommends against CSV injection; ``raw_csv=True`` (``rulebert score --raw-csv``) writes cells as they are.
JSONL output is never changed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import atomic_write

CHUNK_ROWS = 2048
TEXT_COLUMNS = ("body", "comment")
EXAMPLE_TEXT_COLUMNS = ("text", "body", "comment")
EXAMPLE_LABEL_COLUMNS = ("label", "rule_violation", "removed")
"""``removed``: a moderator's decision log (``body, removed``) is a rule's examples as it stands."""
POSITIVE_LABELS = ("1", "true", "1.0", "removed", "remove")
NEGATIVE_LABELS = ("0", "false", "0.0", "kept", "keep")
PROBABILITY = "probability"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet cell a formula (OWASP)
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Examples:
    """Comments known to break (positive) or keep (negative) the rule."""

    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


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


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[tuple[io.BufferedReader, str, str]]:
    """(binary handle, format, name for messages); ``-`` is stdin, whose format is sniffed."""
    if path == "-":
        handle = sys.stdin.buffer
        yield handle, _sniff(handle.peek(256)[:256]), "<stdin>"
        return
    file = Path(path)
    if not file.is_file():
        raise RulebertError(f"{file}: file not found")
    with open(file, "rb") as handle:
        fmt = _FORMATS.get(file.suffix.lower()) or _sniff(handle.peek(256)[:256])
        yield handle, fmt, str(file)


def _decoded_lines(handle: IO[bytes], name: str) -> Iterator[str]:
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


def _pick(columns: Sequence[str], wanted: Sequence[str], name: str, what: str) -> str:
    for column in wanted:
        if column in columns:
            return column
    found = ", ".join(map(str, columns)) or "none"
    names = " or ".join(f"'{c}'" for c in wanted)
    raise RulebertError(f"{name}: no {what} column {names} (found: {found})")


def _csv_rows(handle: IO[bytes], name: str, text_columns: Sequence[str]) -> tuple[list[str], Iterator[Row]]:
    reader = csv.reader(_decoded_lines(handle, name))
    try:
        header = next(reader)
    except StopIteration:
        raise RulebertError(f"{name}: file is empty") from None
    except csv.Error as err:
        raise RulebertError(f"{name}: line {reader.line_num}: not a readable CSV ({err})") from None
    text = header.index(_pick(header, text_columns, name, "text"))
    sub = header.index("subreddit") if "subreddit" in header else None

    def rows() -> Iterator[Row]:
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise RulebertError(f"{name}: line {reader.line_num}: not a readable CSV ({err})") from None
            if not cells:  # a blank line
                continue
            number += 1
            where = f"{name}: row {number} (line {reader.line_num})"
            if len(cells) != len(header):
                raise RulebertError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            yield Row(where, cells, header[text], cells[text], cells[sub] if sub is not None else None)

    return header, rows()


def _jsonl_rows(handle: IO[bytes], name: str, text_columns: Sequence[str]) -> Iterator[Row]:
    for number, line in enumerate(_decoded_lines(handle, name), start=1):
        if not line.strip():
            continue
        where = f"{name}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RulebertError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise RulebertError(f"{where}: expected a JSON object, got {type(record).__name__}")
        key = _pick(list(record), text_columns, where, "text")
        body = record[key]
        if not isinstance(body, str):
            raise RulebertError(f"{where}, key '{key}': expected a string, got {type(body).__name__}")
        subreddit = record.get("subreddit")
        yield Row(where, record, key, body, subreddit if isinstance(subreddit, str) else None)


def _checked(rows: Iterator[Row]) -> Iterator[Row]:
    for row in rows:
        if not row.body.strip():
            raise RulebertError(f"{row.where}, column '{row.column}': empty comment")
        yield row


def read_examples(path: str | os.PathLike) -> Examples:
    """A CSV/JSONL of ``text`` (or ``body``/``comment``) and ``label`` (or ``rule_violation``, or ``removed``:
    1 = breaks the rule, 0 = keeps it; ``true``/``false`` and ``removed``/``kept`` also read)."""
    examples = Examples()
    with _open_binary(str(path)) as (handle, fmt, name):
        if fmt == "csv":
            header, rows = _csv_rows(handle, name, EXAMPLE_TEXT_COLUMNS)
            label_at = header.index(_pick(header, EXAMPLE_LABEL_COLUMNS, name, "label"))
            pairs = ((row, row.record[label_at], header[label_at]) for row in rows)
        else:

            def jsonl_pairs() -> Iterator[tuple[Row, Any, str]]:
                for row in _jsonl_rows(handle, name, EXAMPLE_TEXT_COLUMNS):
                    key = _pick(list(row.record), EXAMPLE_LABEL_COLUMNS, row.where, "label")
                    yield row, row.record[key], key

            pairs = jsonl_pairs()
        for row, label, column in pairs:
            if not row.body.strip():
                raise RulebertError(f"{row.where}, column '{row.column}': empty example text")
            value = str(label).strip().lower()
            if value not in POSITIVE_LABELS + NEGATIVE_LABELS:
                raise RulebertError(f"{row.where}, column '{column}': label {label!r} is not 0 or 1")
            target = examples.positive if value in POSITIVE_LABELS else examples.negative
            target.append(row.body)
    if not examples.positive and not examples.negative:
        raise RulebertError(f"{path}: no example rows")
    return examples


def defuse_formulas(cells: Sequence[str]) -> list[str]:
    """CSV cells that a spreadsheet would run as formulas, with a leading ``'``; other cells unchanged."""
    return [f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell for cell in cells]


class _CsvRows:
    """``csv.writer`` with ``\\n`` line ends that also quotes a cell holding a bare ``\\r``.

    The csv module quotes only the characters of its line terminator: a cell ``a\\rb`` went out unquoted
    and a reader saw two rows (the second one starting with whatever the comment put after the CR, a
    formula say). Such a row is written with every cell quoted; it reads back as the same cells.
    """

    def __init__(self, out: IO[str]) -> None:
        self.plain = csv.writer(out, lineterminator="\n")
        self.quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, cells: Sequence[str]) -> None:
        (self.quoted if any("\r" in cell for cell in cells) else self.plain).writerow(cells)


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
    else:
        with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
            yield handle


def output_format(output_path: str | os.PathLike, input_format: str) -> str:
    """The output's format, from its extension (``-``: the input's). Anything else is refused: a
    ``.json`` or ``.txt`` output would otherwise get rows its readers do not expect."""
    if str(output_path) == "-":
        return input_format
    suffix = Path(output_path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    shown = repr(suffix) if suffix else "no extension"
    raise RulebertError(f"{output_path}: output format unknown ({shown}); name the output .csv or .jsonl")


@dataclass
class ScoredRule:
    """One rule to score every row against, and the column its probabilities go to."""

    column: str
    text: str
    examples: Examples = field(default_factory=Examples)


def _cell(value: Any) -> str:
    """A JSON value as a CSV cell: strings as they are, null empty, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class _Output:
    """Rows out in the output's format, whatever the input's, with the probability columns added (a column
    already there is replaced in place)."""

    def __init__(self, out: IO[str], fmt: str, header: list[str] | None, columns: list[str], raw_csv: bool):
        self.out, self.fmt, self.header, self.columns = out, fmt, header, columns
        self.csv = _CsvRows(out) if fmt == "csv" else None
        self.cells_out = list if raw_csv else defuse_formulas
        if header is not None and self.csv is not None:
            self._start_csv(header)

    def _start_csv(self, header: list[str]) -> None:
        self.header = header
        self.out_header = header + [c for c in self.columns if c not in header]
        self.csv.writerow(self.cells_out(self.out_header))

    def write(self, row: Row, input_header: list[str] | None, values: dict[str, float]) -> None:
        record = dict(zip(input_header, row.record, strict=True)) if input_header is not None else row.record
        if self.csv is None:
            self.out.write(json.dumps({**record, **values}, ensure_ascii=False) + "\n")
            return
        if self.header is None:  # JSONL into CSV: the first row's keys are the columns
            self._start_csv(list(record))
        extra = [key for key in record if key not in self.header]
        if extra:
            raise RulebertError(
                f"{row.where}: key {extra[0]!r} is not among the first row's keys; CSV needs one set of "
                "columns (write .jsonl instead)"
            )
        cells = {**{k: _cell(v) for k, v in record.items()}, **{k: f"{v:.6f}" for k, v in values.items()}}
        self.csv.writerow(self.cells_out([cells.get(column, "") for column in self.out_header]))


def score_stream(
    scorer: Any,
    rule: str | Sequence[ScoredRule],
    input_path: str | os.PathLike,
    output_path: str | os.PathLike = "-",
    *,
    examples: Examples | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    raw_csv: bool = False,
) -> int:
    """Score every row of ``input_path`` against ``rule`` (its text, with ``examples``; or several
    :class:`ScoredRule`, one column each) with a loaded ``Scorer``; return the row count.

    The output's format follows its extension (:func:`output_format`). CSV cells that would run as
    spreadsheet formulas get a leading ``'`` unless ``raw_csv``.
    """
    from tqdm.auto import tqdm

    if isinstance(rule, str):
        if not rule.strip():
            raise RulebertError("--rule: empty rule text")
        rule = [ScoredRule(PROBABILITY, rule, examples or Examples())]
    scored = list(rule)
    count = 0
    with _open_binary(str(input_path)) as (handle, fmt, name):
        out_fmt = output_format(output_path, fmt)
        header, rows = _csv_rows(handle, name, TEXT_COLUMNS) if fmt == "csv" else (None, None)
        rows = rows if rows is not None else _jsonl_rows(handle, name, TEXT_COLUMNS)
        with (
            _open_output(str(output_path)) as out,
            tqdm(desc="score", unit="row", file=sys.stderr, disable=not progress) as bar,
        ):
            writer = _Output(out, out_fmt, header, [r.column for r in scored], raw_csv)
            for chunk in _chunks(_checked(rows), chunk_rows):
                n = len(chunk)
                has_subreddit = any(r.subreddit is not None for r in chunk)
                subreddits = [r.subreddit or "" for r in chunk] if has_subreddit else None
                columns = {
                    target.column: scorer.score(
                        [r.body for r in chunk],
                        [target.text] * n,
                        subreddits,
                        positive_examples=[target.examples.positive] * n,
                        negative_examples=[target.examples.negative] * n,
                    )
                    for target in scored
                }
                for i, row in enumerate(chunk):
                    writer.write(row, header, {c: round(float(p[i]), 6) for c, p in columns.items()})
                count += n
                bar.update(n)
    if count == 0:
        print(f"rulebert: warning: {name}: no data rows", file=sys.stderr)
    return count


def rules_to_score(path: str | os.PathLike) -> list[ScoredRule]:
    """RULES.jsonl as one ``probability_<id>`` column per rule, each with its examples."""
    from rulebert.domain.rules import read_rules_jsonl

    return [
        ScoredRule(
            f"{PROBABILITY}_{r.id}", r.text, Examples(list(r.positive_examples), list(r.negative_examples))
        )
        for r in read_rules_jsonl(path)
    ]


def score_file(
    model_dir: str | os.PathLike,
    rule: str | None,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike = "-",
    *,
    examples_path: str | os.PathLike | None = None,
    rules_path: str | os.PathLike | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    raw_csv: bool = False,
) -> int:
    """Load ``model_dir`` once and stream ``input_path`` through it (see :func:`score_stream`): against
    ``rule`` (with the examples of ``examples_path``), or every rule of ``rules_path`` (RULES.jsonl)."""
    from rulebert.inference.predict import Scorer

    if (rule is None) == (rules_path is None):
        raise RulebertError("give either --rule or --rules")
    if rules_path is not None and examples_path is not None:
        raise RulebertError("--examples goes with --rule; with --rules each rule carries its examples")
    if str(input_path) != "-" and not Path(input_path).is_file():  # fail before the model loads
        raise RulebertError(f"{input_path}: file not found")
    if str(output_path) != "-":
        output_format(output_path, "csv")
    if rules_path is not None:
        target: str | list[ScoredRule] = rules_to_score(rules_path)
    else:
        target = rule
    examples = read_examples(examples_path) if examples_path is not None else None
    scorer = Scorer(model_dir)
    return score_stream(
        scorer,
        target,
        input_path,
        output_path,
        examples=examples,
        chunk_rows=chunk_rows,
        progress=progress,
        raw_csv=raw_csv,
    )
