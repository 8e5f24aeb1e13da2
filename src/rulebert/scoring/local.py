"""Score a moderator's file of comments against a rule (or a RULES.jsonl of rules): CSV or JSONL in, the
format the output's extension names out (``-``: the input's).

Rows are streamed in chunks (2,048 by default): a 50k-row file never has more than one chunk's tokens and
tensors in memory. Every input column/key is kept and a ``probability`` column is added (replaced when it
is already there), with a ``mode`` column beside it (``trained``, ``examples`` or ``zero-shot``: how the
score was made); with ``--rules``, ``probability_<id>`` and ``mode_<id>`` per rule. A file output is
written atomically, its place checked before the model loads; ``-`` means stdin / stdout.

Cells are written as the exact strings they were read (:mod:`rulebert.scoring.readers`). One exception, by
default: a CSV cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return; comments are written by strangers) is written with a leading ``'``, as OWASP
recommends against CSV injection; ``raw_csv=True`` (``rulebert score --raw-csv``) writes cells as they are.
JSONL output is never changed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import atomic_write, check_output_place
from rulebert.domain.examples import ZERO_SHOT
from rulebert.domain.text import is_blank, text_problem
from rulebert.scoring.readers import (  # re-exported: callers read through them
    EXAMPLE_LABEL_COLUMNS as EXAMPLE_LABEL_COLUMNS,
)
from rulebert.scoring.readers import EXAMPLE_TEXT_COLUMNS as EXAMPLE_TEXT_COLUMNS
from rulebert.scoring.readers import TEXT_COLUMNS as TEXT_COLUMNS
from rulebert.scoring.readers import Examples as Examples
from rulebert.scoring.readers import Row as Row
from rulebert.scoring.readers import check_input, comment_rows, open_input
from rulebert.scoring.readers import read_examples as read_examples

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2048
PROBABILITY = "probability"
MODE = "mode"  # beside probability: how each score was made
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet cell a formula (OWASP)


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
    """One rule to score every row against, the column its probabilities go to and the one that says how
    they were made (``trained``, ``examples`` or ``zero-shot``)."""

    column: str
    text: str
    examples: Examples = field(default_factory=Examples)
    mode_column: str = MODE
    name: str = "--rule"  # how messages call it


def _mode(scorer: Any, target: ScoredRule) -> str:
    """How ``scorer`` scores the rule: one mode per rule (it depends on the rule and its examples only)."""
    if not hasattr(scorer, "mode"):  # a stand-in with only ``score``
        return ZERO_SHOT
    return scorer.mode(target.text, target.examples.rule_examples())


def _warn(message: str) -> None:
    # A Python warning, not a log line: ZeroShotWarning is a documented category a caller filters or turns
    # into an error (``warnings.simplefilter("error", ZeroShotWarning)``); the CLI passes its own ``warn``.
    warnings.warn(message, ZeroShotWarning, stacklevel=3)


class ZeroShotWarning(UserWarning):
    """A rule is scored zero-shot: the model never saw it and it has no examples of both labels."""


def _cell(value: Any) -> str:
    """A JSON value as a CSV cell: strings as they are, null empty, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class RowWriter:
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

    def write(self, row: Row, input_header: list[str] | None, values: dict[str, float | str]) -> None:
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
        added = {k: f"{v:.6f}" if isinstance(v, float) else str(v) for k, v in values.items()}
        cells = {**{k: _cell(v) for k, v in record.items()}, **added}
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
    warn: Callable[[str], None] = _warn,
) -> int:
    """Score every row of ``input_path`` against ``rule`` (its text, with ``examples``; or several
    :class:`ScoredRule`, one column each) with a loaded ``Scorer``; return the row count.

    The output's format follows its extension (:func:`output_format`). CSV cells that would run as
    spreadsheet formulas get a leading ``'`` unless ``raw_csv``. Each rule's mode goes in its mode column;
    a rule scored zero-shot is reported through ``warn`` (by default a :class:`ZeroShotWarning`).
    """
    from tqdm.auto import tqdm

    if isinstance(rule, str):
        check_rule_text(rule)
        rule = [ScoredRule(PROBABILITY, rule, examples or Examples())]
    scored = list(rule)
    modes = {target.mode_column: _mode(scorer, target) for target in scored}
    for target in scored:
        if modes[target.mode_column] == ZERO_SHOT:
            warn(
                f"{target.name}: scored zero-shot (the model was not trained on this rule and it has no "
                "examples of both labels): treat its scores with caution; --examples (or examples in "
                "RULES.jsonl) make them better"
            )
    columns_out = [c for target in scored for c in (target.column, target.mode_column)]
    count = 0
    with open_input(str(input_path)) as (handle, fmt, name):
        out_fmt = output_format(output_path, fmt)
        header, rows = comment_rows(handle, fmt, name)
        with (
            _open_output(str(output_path)) as out,
            tqdm(desc="score", unit="row", file=sys.stderr, disable=not progress) as bar,
        ):
            writer = RowWriter(out, out_fmt, header, columns_out, raw_csv)
            for chunk in _chunks(rows, chunk_rows):
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
                    values: dict[str, float | str] = {}
                    for target in scored:
                        values[target.column] = round(float(columns[target.column][i]), 6)
                        values[target.mode_column] = modes[target.mode_column]
                    writer.write(row, header, values)
                count += n
                bar.update(n)
    if count == 0:
        logger.warning("%s: no data rows", name)
    return count


def rules_to_score(path: str | os.PathLike) -> list[ScoredRule]:
    """RULES.jsonl as one ``probability_<id>`` and ``mode_<id>`` column per rule, each with its examples."""
    from rulebert.domain.rules import read_rules_jsonl

    return [
        ScoredRule(
            f"{PROBABILITY}_{r.id}",
            r.text,
            Examples(list(r.positive_examples), list(r.negative_examples)),
            mode_column=f"{MODE}_{r.id}",
            name=f"rule {r.id!r}",
        )
        for r in read_rules_jsonl(path)
    ]


def check_rule_text(rule: str) -> None:
    """``--rule``'s text: not empty, and text (a command-line byte that is not UTF-8 is refused here, not
    as a tokenizer's traceback)."""
    if is_blank(rule):
        raise RulebertError("--rule: empty rule text")
    if (problem := text_problem(rule)) is not None:
        raise RulebertError(f"--rule: {problem}")


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
    warn: Callable[[str], None] = _warn,
) -> int:
    """Load ``model_dir`` once and stream ``input_path`` through it (see :func:`score_stream`): against
    ``rule`` (with the examples of ``examples_path``), or every rule of ``rules_path`` (RULES.jsonl)."""
    from rulebert.inference.predict import Scorer

    if (rule is None) == (rules_path is None):
        raise RulebertError("give either --rule or --rules")
    if rules_path is not None and examples_path is not None:
        raise RulebertError("--examples goes with --rule; with --rules each rule carries its examples")
    if str(input_path) != "-":  # fail before the model loads
        check_input(input_path)
    if str(output_path) != "-":
        output_format(output_path, "csv")
        check_output_place(output_path)
    if rules_path is not None:
        target: str | list[ScoredRule] = rules_to_score(rules_path)
    else:
        check_rule_text(rule)
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
        warn=warn,
    )
