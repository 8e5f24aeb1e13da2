"""Read and validate the competition CSVs; turn them into labelled (text, rule) rows.

The competition files have one comment ``body`` per row with its ``rule`` and ``subreddit``, four example
comments for that rule (two that break it, two that do not) and, in train.csv only, ``rule_violation``.
A model learns most from the examples: they are the only labelled text for rules that train.csv never shows.
So :func:`labelled_rows` turns every example cell into a row of its own (the notebook's "quintupling") and
:func:`dedupe_rows` collapses the many repeats (8,116 example cells hold ~1,000 distinct pairs).
"""

from __future__ import annotations

import csv
import difflib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rulebert.core.errors import RulebertError
from rulebert.core.files import CSV_FIELD_LIMIT, csv_field_limit, sha256_file
from rulebert.domain.text import is_blank

BODY, RULE, SUBREDDIT, LABEL, ROW_ID = "body", "rule", "subreddit", "rule_violation", "row_id"
POSITIVE_COLUMNS = ("positive_example_1", "positive_example_2")
NEGATIVE_COLUMNS = ("negative_example_1", "negative_example_2")
EXAMPLE_COLUMNS = POSITIVE_COLUMNS + NEGATIVE_COLUMNS
ALL_COLUMNS = (ROW_ID, BODY, RULE, SUBREDDIT, *EXAMPLE_COLUMNS, LABEL)

DATA_DIR_ENV = "RULEBERT_DATA"
"""Environment variable naming the competition data folder (train.csv, test.csv, sample_submission.csv)."""

# Columns of a labelled-row frame, the unit that training and evaluation work on.
TEXT, SOURCE = "text", "source"


def default_data_dir() -> Path:
    """The competition data folder: ``$RULEBERT_DATA`` or ``../shared/data/jigsaw-agile-community-rules``."""
    return Path(os.environ.get(DATA_DIR_ENV, "../shared/data/jigsaw-agile-community-rules"))


def normalize_text(text: str) -> str:
    """The key used to decide that two texts are the same comment (whitespace at the ends ignored)."""
    return text.strip()


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        bad = raw[err.start : err.start + 1].hex()
        raise RulebertError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{bad} at offset {err.start})"
        ) from None


def _shown(value: object, limit: int = 60) -> str:
    """A cell or column name as an error message shows it: on one line (newlines escaped), cut short."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _blank(cells: pd.Series) -> np.ndarray:
    """Which cells show nothing (:func:`rulebert.domain.text.is_blank`: ``"\\u200b"`` alone too); a
    non-string (a frame made elsewhere) is not blank, as ``.str.strip()`` had it."""
    return cells.map(lambda cell: isinstance(cell, str) and is_blank(cell)).to_numpy(dtype=bool)


def _where(path: Path, frame: pd.DataFrame, index: int, column: str) -> str:
    """'file: row N (row_id=X), column 'c'' where N counts data rows from 1 (the header is not a row)."""
    row_id = frame[ROW_ID].iloc[index] if ROW_ID in frame.columns else None
    ident = f" (row_id={_shown(row_id)})" if row_id not in (None, "") else ""
    return f"{path}: row {index + 1}{ident}, column '{_shown(column)}'"


def _parse_csv(path: Path, text: str) -> pd.DataFrame:
    """Parse CSV text into a frame of strings, strictly: every row has as many fields as the header.

    The ``csv`` module rather than ``pandas.read_csv``: pandas silently turns a row with one field too many
    into an index (shifting every column) and renames duplicate columns; here both are errors.
    """
    with csv_field_limit(CSV_FIELD_LIMIT):
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: list[str] | None = None
        records: list[list[str]] = []
        line = 1
        try:
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    line = reader.line_num + 1
                    continue  # a blank line
                if header is None:
                    header = [c.strip() or f"Unnamed: {i}" for i, c in enumerate(record)]
                    duplicated = [c for i, c in enumerate(header) if c in header[:i]]
                    if duplicated:
                        raise RulebertError(
                            f"{path}: line {line}: duplicate column '{_shown(duplicated[0])}'"
                        )
                elif len(record) != len(header):
                    found = f"{len(record)} fields, the header has {len(header)}"
                    raise RulebertError(f"{path}: line {line}: {found}")
                else:
                    records.append(record)
                line = reader.line_num + 1
        except csv.Error as err:
            raise RulebertError(f"{path}: line {line}: not a readable CSV: {_shown(err, 200)}") from None
    if header is None:
        raise RulebertError(f"{path}: file is empty")
    return pd.DataFrame(records, columns=header, dtype=str)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV file as a frame of strings, strictly (see :func:`_parse_csv`): the one CSV reader of training
    data (competition files, decision logs), with one-line errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RulebertError(f"{path}: file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise RulebertError(f"{path}: file is empty")
    text = _decode(path, raw)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise RulebertError(f"{path}: line {line}: contains a NUL byte (not a text CSV?)")
    return _parse_csv(path, text)


def missing_column(path: Path, frame: pd.DataFrame, column: str) -> RulebertError:
    """The error for a column ``frame`` (read from ``path``) lacks, with the closest name it has."""
    guess = difflib.get_close_matches(column, frame.columns, n=1)
    found = ", ".join(_shown(c, 40) for c in frame.columns[:20])
    hint = f" (did you mean '{_shown(guess[0])}'?)" if guess else f" (found: {_shown(found, 300)})"
    return RulebertError(f"{path}: missing column '{column}'{hint}")


def where(path: Path, frame: pd.DataFrame, index: int, column: str) -> str:
    """'file: row N, column 'c'' for a frame from :func:`read_table` (N counts data rows from 1)."""
    return _where(path, frame, index, column)


def read_csv(
    path: str | os.PathLike, *, labelled: bool | None = None, need_row_id: bool = False
) -> pd.DataFrame:
    """Read a competition-style CSV and validate it.

    Args:
        path: the file.
        labelled: ``True`` requires ``rule_violation`` (train), ``False`` ignores it (test), ``None`` takes
            it when present.
        need_row_id: require a unique ``row_id`` column (a submission is keyed by it).

    Returns a frame of strings (``rule_violation`` as int when present); ``subreddit`` is ``""`` when absent,
    a missing ``row_id`` is numbered from 0. Raises :class:`RulebertError` naming file, row and column.
    """
    path = Path(path)
    frame = read_table(path)

    required = [BODY, RULE]
    if labelled:
        required.append(LABEL)
    if need_row_id:
        required.append(ROW_ID)
    present_examples = [c for c in EXAMPLE_COLUMNS if c in frame.columns]
    if present_examples:  # some example columns: all four must be there (a misspelling, most likely)
        required.extend(EXAMPLE_COLUMNS)
    for column in required:
        if column not in frame.columns:
            raise missing_column(path, frame, column)
    if frame.empty:
        raise RulebertError(f"{path}: no data rows")

    if ROW_ID not in frame.columns:
        frame.insert(0, ROW_ID, [str(i) for i in range(len(frame))])
    ids = frame[ROW_ID].str.strip()
    for index in np.flatnonzero((ids == "").to_numpy()):
        raise RulebertError(f"{_where(path, frame, int(index), ROW_ID)}: empty")
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        index = int(np.flatnonzero(duplicated)[0])
        where = _where(path, frame, index, ROW_ID)
        raise RulebertError(f"{where}: duplicate row_id '{_shown(ids.iloc[index])}'")
    frame[ROW_ID] = ids
    if SUBREDDIT not in frame.columns:
        frame[SUBREDDIT] = ""

    for column in (BODY, RULE):
        blank = _blank(frame[column])
        if blank.any():
            raise RulebertError(f"{_where(path, frame, int(np.flatnonzero(blank)[0]), column)}: empty or NaN")

    if LABEL in frame.columns and labelled is not False:
        values = frame[LABEL].str.strip()
        valid = values.isin(["0", "1", "0.0", "1.0"]).to_numpy()
        if not valid.all():
            index = int(np.flatnonzero(~valid)[0])
            shown = repr(_shown(values.iloc[index])) if values.iloc[index] else "empty"
            raise RulebertError(f"{_where(path, frame, index, LABEL)}: label {shown} is not 0 or 1")
        frame[LABEL] = values.astype(float).astype(int)
    elif LABEL in frame.columns:
        frame = frame.drop(columns=[LABEL])
    return frame


def file_fingerprint(path: str | os.PathLike) -> dict[str, object]:
    """What a model dir records about a data file: its name, size and SHA-256."""
    path = Path(path)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def body_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The labelled comment bodies of a train-style frame as (text, rule, subreddit, label, source) rows."""
    return pd.DataFrame(
        {
            TEXT: frame[BODY].to_numpy(),
            RULE: frame[RULE].to_numpy(),
            SUBREDDIT: frame[SUBREDDIT].to_numpy(),
            LABEL: frame[LABEL].to_numpy().astype(int),
            SOURCE: "body",
        }
    )


def example_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every non-empty example cell as a labelled row: positive examples -> 1, negative -> 0."""
    parts = []
    for columns, label in ((POSITIVE_COLUMNS, 1), (NEGATIVE_COLUMNS, 0)):
        for column in columns:
            if column not in frame.columns:
                continue
            part = pd.DataFrame(
                {
                    TEXT: frame[column].to_numpy(),
                    RULE: frame[RULE].to_numpy(),
                    SUBREDDIT: frame[SUBREDDIT].to_numpy(),
                    LABEL: label,
                    SOURCE: "example",
                }
            )
            parts.append(part[~_blank(part[TEXT])])
    if not parts:
        return pd.DataFrame(columns=[TEXT, RULE, SUBREDDIT, LABEL, SOURCE])
    return pd.concat(parts, ignore_index=True)


@dataclass
class DedupeStats:
    """What :func:`dedupe_rows` did, recorded in the model dir."""

    rows_in: int
    rows_out: int
    conflicting_pairs: int
    """(text, rule) pairs seen with both labels, resolved by majority vote."""
    tied_pairs_dropped: int
    """Conflicting pairs whose votes tied: no label can be trusted, so they are dropped."""


def dedupe_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, DedupeStats]:
    """Collapse rows with the same (normalised text, rule) into one, labelled by majority vote.

    The first occurrence keeps its text and subreddit; ``votes`` counts the rows merged into it.
    """
    if rows.empty:
        return rows.assign(votes=pd.Series(dtype=int)), DedupeStats(0, 0, 0, 0)
    keyed = rows.assign(_key=rows[TEXT].map(normalize_text))
    grouped = keyed.groupby(["_key", RULE], sort=False)
    first = grouped.first()
    mean = grouped[LABEL].mean()
    votes = grouped[LABEL].size()
    conflicting = (mean > 0) & (mean < 1)
    tied = mean == 0.5
    out = first.assign(**{LABEL: (mean > 0.5).astype(int), "votes": votes})[~tied]
    out = out.reset_index().drop(columns=["_key"])[[TEXT, RULE, SUBREDDIT, LABEL, SOURCE, "votes"]]
    stats = DedupeStats(len(rows), len(out), int(conflicting.sum()), int(tied.sum()))
    return out, stats


def labelled_rows(
    train: pd.DataFrame | None,
    test: pd.DataFrame | None = None,
    *,
    dedupe: bool = True,
    more: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, DedupeStats]:
    """All training rows: train bodies, train examples, (when given) the test file's examples and ``more``
    labelled rows (a decision log's, :func:`rulebert.domain.decisions.decision_rows`)."""
    parts = [] if train is None else [body_rows(train), example_rows(train)]
    if test is not None:
        parts.append(example_rows(test))
    if more is not None:
        parts.append(more)
    rows = pd.concat(parts, ignore_index=True)
    rows[LABEL] = rows[LABEL].astype(int)
    if dedupe:
        return dedupe_rows(rows)
    rows["votes"] = 1
    return rows, DedupeStats(len(rows), len(rows), 0, 0)


def grouped_split(rows: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into train and validation so that no (normalised) text sits on both sides."""
    if val_fraction <= 0:
        return rows.reset_index(drop=True), rows.iloc[0:0].reset_index(drop=True)
    if not 0 < val_fraction < 1:
        raise RulebertError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    from sklearn.model_selection import GroupShuffleSplit

    groups = rows[TEXT].map(normalize_text).to_numpy()
    if len(set(groups)) < 2:
        raise RulebertError("too few distinct texts to hold out a validation split (use --val-fraction 0)")
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_index, val_index = next(splitter.split(rows, groups=groups))
    return rows.iloc[train_index].reset_index(drop=True), rows.iloc[val_index].reset_index(drop=True)
