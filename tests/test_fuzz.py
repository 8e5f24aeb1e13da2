"""Property-based tests: whatever a CSV holds, reading it ends in a valid frame or in a one-line
:class:`RulebertError`, never another exception; ``rulebert predict`` ends with exit 0 or 2 and never leaves a
partial output or a temp file."""

from __future__ import annotations

import contextlib
import csv
import io
import random
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rulebert.core.errors import RulebertError
from rulebert.domain import data as D


def fast(examples: int) -> settings:
    """Few enough examples to keep the suite quick; no deadline (2 shared cores); nothing stored in the tree;
    a failure prints the blob that reproduces it."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Cells: ordinary words, whitespace, and text that breaks naive parsers or printers.
ODD = [
    "", " ", "\t", "\u3000", '"', '""', ",", "a,b", 'say "hi"', "line\nbreak", "cr\rlf\r\n", "\u2028sep",
    "e\u0301\u0301\u0301", "\u202eRTL override", "\u05e9\u05dc\u05d5\u05dd", "\U0001f600\U0001f44d\U0001f3fd",
    "\ufeffbom", "\x1b[31m", "=cmd|' /C calc'!A0", "NaN", "null", "None", "-", "1e308", "0", "1",
]  # fmt: skip
cells = st.one_of(
    st.sampled_from(ODD),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
    st.text("abc xyz", min_size=1, max_size=10),
)
labels = st.sampled_from(["0", "1", "0", "1", " 1 ", "0.0", "1.0", "", "2", "yes", "nan", "-1"])
row_ids = st.one_of(st.sampled_from(["1", "2", "3", " 1", "", " ", "7\n8"]), st.integers(0, 10**6).map(str))
# Header names: the real ones, some spelled with spaces around them (" body" and "body" are duplicates once
# stripped), and other columns, one with a line break in its name.
EXTRA = ["notes", "score", "Unnamed: 0", "rule_violations", "Body", "two\nlines", " body", "rule "]
column_sets = st.lists(st.sampled_from(list(D.ALL_COLUMNS) + EXTRA), unique=True, max_size=11).flatmap(
    st.permutations
)


@st.composite
def csv_files(
    draw: st.DrawFn, always: tuple[str, ...] = (), clean: bool = False
) -> tuple[list[str], list[list[str]], bytes]:
    """(header, rows, file bytes) written by Python's csv writer with random quoting and line endings;
    the header has the ``always`` columns and a random set of others, in a random order. ``clean``: unique
    row_ids and non-blank comments and rules (so that most files are valid until damaged)."""
    drawn = [c for c in draw(column_sets) if not (clean and c.strip() in always)]
    if clean and set(drawn) & set(D.EXAMPLE_COLUMNS):
        drawn = [c for c in drawn if c not in D.EXAMPLE_COLUMNS] + list(D.EXAMPLE_COLUMNS)
    columns = draw(st.permutations(list(always) + [c for c in drawn if c not in always]))
    rows = []
    for index in range(draw(st.integers(int(clean), 6))):
        strategy = {D.ROW_ID: row_ids, D.LABEL: labels}
        if clean:
            text = cells.filter(str.strip)
            strategy = {**strategy, D.ROW_ID: st.just(f"{index} x"), D.BODY: text, D.RULE: text}
        row = [draw(strategy.get(c, cells)) for c in columns]
        # now and then a field too many or too few
        ragged = 0 if clean else draw(st.sampled_from([0] * 18 + [1, -1]))
        if ragged == 1:
            row.append(draw(cells))
        elif ragged == -1 and len(row) >= 3:
            row.pop()
        rows.append(row)
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=quoting, lineterminator=ending)
    writer.writerow(columns)
    writer.writerows(rows)
    prefix = draw(st.sampled_from(["", "\ufeff", "\n"]))
    return columns, rows, (prefix + buffer.getvalue()).encode("utf-8")


def expected_problem(
    columns: list[str], rows: list[list[str]], labelled: bool | None, need_row_id: bool
) -> bool:
    """An oracle, written independently of read_csv: should this file be rejected?"""
    if any(len(r) != len(columns) for r in rows):
        return True
    names = [c.strip() for c in columns]
    if len(set(names)) != len(names):
        return True
    columns = names
    required = {D.BODY, D.RULE} | ({D.LABEL} if labelled else set()) | ({D.ROW_ID} if need_row_id else set())
    if set(D.EXAMPLE_COLUMNS) & set(columns):
        required |= set(D.EXAMPLE_COLUMNS)
    if not required <= set(columns) or not columns or not rows:
        return True
    cell = {c: [r[columns.index(c)] for r in rows] for c in columns}
    if any(not v.strip() for c in (D.BODY, D.RULE) for v in cell[c]):
        return True
    if D.ROW_ID in cell:
        ids = [v.strip() for v in cell[D.ROW_ID]]
        if "" in ids or len(set(ids)) != len(ids):
            return True
    if D.LABEL in cell and labelled is not False:
        return any(v.strip() not in ("0", "1", "0.0", "1.0") for v in cell[D.LABEL])
    return False


def check_frame(frame: pd.DataFrame, labelled: bool | None) -> None:
    """The invariants read_csv documents for the frames it returns."""
    assert len(frame) > 0
    assert {D.ROW_ID, D.BODY, D.RULE, D.SUBREDDIT} <= set(frame.columns)
    assert frame.columns.is_unique
    for column in (D.ROW_ID, D.BODY, D.RULE, D.SUBREDDIT):
        assert all(isinstance(v, str) for v in frame[column])
    assert all(v.strip() for v in frame[D.BODY]) and all(v.strip() for v in frame[D.RULE])
    ids = frame[D.ROW_ID]
    assert ids.is_unique and all(v and v == v.strip() for v in ids)
    if labelled:
        assert D.LABEL in frame.columns
    if labelled is False:
        assert D.LABEL not in frame.columns
    if D.LABEL in frame.columns:
        assert set(frame[D.LABEL].tolist()) <= {0, 1}


def read_outcome(path: Path, **kwargs) -> pd.DataFrame | RulebertError:
    """read_csv's frame, or its RulebertError (checked to be one line); any other exception fails the test."""
    try:
        frame = D.read_csv(path, **kwargs)
    except RulebertError as err:
        assert len(str(err).splitlines()) == 1 and str(err).startswith(str(path)), repr(str(err))
        return err
    check_frame(frame, kwargs.get("labelled"))
    return frame


@fast(250)
@given(generated=csv_files(), labelled=st.sampled_from([True, False, None]), need_row_id=st.booleans())
def test_read_csv_accepts_exactly_the_valid_files(tmp_path_factory, generated, labelled, need_row_id):
    columns, rows, raw = generated
    path = tmp_path_factory.mktemp("fuzz") / "in.csv"
    path.write_bytes(raw)
    outcome = read_outcome(path, labelled=labelled, need_row_id=need_row_id)
    assert isinstance(outcome, RulebertError) == expected_problem(columns, rows, labelled, need_row_id), (
        outcome
    )
    if isinstance(outcome, pd.DataFrame):  # every cell comes back exactly as written
        columns = [c.strip() for c in columns]
        assert outcome[D.BODY].tolist() == [r[columns.index(D.BODY)] for r in rows]
        assert outcome[D.RULE].tolist() == [r[columns.index(D.RULE)] for r in rows]
        if D.ROW_ID not in columns:
            assert outcome[D.ROW_ID].tolist() == [str(i) for i in range(len(rows))]
        if D.SUBREDDIT not in columns:
            assert set(outcome[D.SUBREDDIT]) == {""}
        rows_out, stats = D.labelled_rows(outcome.assign(**{D.LABEL: 1}), outcome)
        assert stats.rows_out == len(rows_out) <= stats.rows_in
        assert set(rows_out[D.LABEL]) <= {0, 1} and all(t.strip() for t in rows_out[D.TEXT])
        keys = list(zip(rows_out[D.TEXT].map(D.normalize_text), rows_out[D.RULE], strict=True))
        assert len(set(keys)) == len(keys)  # de-duplicated


def _mutate(raw: bytes, rng: random.Random, edits: int) -> bytes:
    data = bytearray(raw)
    pieces = [b'"', b",", b"\n", b"\r", b"\x00", b"\xff", b"\xed\xa0\x80", b"\xc3", b'""', b"\xe2\x80\xa8"]
    for _ in range(edits):
        where = rng.randint(0, len(data))
        choice = rng.randint(0, 3)
        if choice == 0:
            data[where:where] = rng.choice(pieces)
        elif choice == 1:
            del data[where : where + rng.randint(1, 4)]
        elif choice == 2:
            data[where:where] = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 3)))
        else:
            data = data[:where]  # truncated, as a half-copied file is
    return bytes(data)


@fast(200)
@given(generated=csv_files(), seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4))
def test_read_csv_on_damaged_files_never_raises_anything_else(tmp_path_factory, generated, seed, edits):
    path = tmp_path_factory.mktemp("fuzz") / "damaged.csv"
    path.write_bytes(_mutate(generated[2], random.Random(seed), edits))
    for labelled in (True, False, None):
        read_outcome(path, labelled=labelled, need_row_id=True)


@fast(100)
@given(raw=st.binary(max_size=300))
@example(raw=b"")
@example(raw=b"   \n\r\n\t")
@example(raw=b"\xef\xbb\xbf")
@example(raw=b"body,rule\n")
@example(raw=b'body,rule\n"unclosed,quote\n')
@example(raw=b"body,rule\na,b,c\n")  # one field too many: once silently became the index
@example(raw=b"body,rule, body\na,b,c\n")  # duplicate column after stripping
@example(raw=b'row_id,body,rule\n"1\n2",,r\n')  # a row_id with a newline in an error message
def test_read_csv_on_random_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "random.csv"
    path.write_bytes(raw)
    read_outcome(path, labelled=None)


def test_read_csv_specific_faults(tmp_path):
    """The cases above that once went wrong, with the messages they now give."""
    cases = {
        b"body,rule\na,b,c\n": r"line 2: 3 fields, the header has 2",
        b"body,rule, body\na,b,c\n": r"line 1: duplicate column 'body'",
        b'row_id,body,rule\n"1\n2",,r\n': r"row 1 \(row_id=1\\n2\), column 'body': empty or NaN",
        b'body,rule\n"a,b\n': r"line 2: not a readable CSV",
        b"": r"file is empty",
    }
    for index, (raw, message) in enumerate(cases.items()):
        path = tmp_path / f"case{index}.csv"
        path.write_bytes(raw)
        with pytest.raises(RulebertError, match=message) as err:
            D.read_csv(path)
        assert "\n" not in str(err.value)


def test_read_csv_one_megabyte_cells(tmp_path):
    big = "word " * 200_000 + "\u00e9\U0001f600"
    path = tmp_path / "big.csv"
    frame = pd.DataFrame({"body": [big, "short"], "rule": ["r", big], "rule_violation": [1, 0]})
    frame.to_csv(path, index=False)
    frame = D.read_csv(path, labelled=True)
    assert frame[D.BODY].tolist() == [big, "short"] and frame[D.RULE].iloc[1] == big


# ---- the predict command, in-process ----


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """An untrained but complete model dir: enough to exercise reading, scoring and writing."""
    from rulebert.core.config import TrainConfig
    from rulebert.model.backbones import load_checkpoint
    from rulebert.model.model_dir import save_model_dir

    config = TrainConfig(model=str(tiny_checkpoint), max_length=32)
    model, tokenizer = load_checkpoint(config.model)
    folder = tmp_path_factory.mktemp("fuzz-model") / "model"
    save_model_dir(folder, model, tokenizer, config=config, base_model=config.model, data={}, metrics={})
    return folder


@fast(40)
@given(
    generated=csv_files(always=(D.ROW_ID, D.BODY, D.RULE), clean=True),
    seed=st.integers(0, 2**32 - 1),
    edits=st.sampled_from([0, 0, 1, 2]),
)
def test_predict_command_exits_0_or_2_and_leaves_no_partial_output(
    model_dir, tmp_path_factory, generated, seed, edits
):
    from rulebert.cli import main

    work = tmp_path_factory.mktemp("predict")
    test_csv, out_dir = work / "test.csv", work / "out"
    out_dir.mkdir()
    test_csv.write_bytes(_mutate(generated[2], random.Random(seed), edits))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["predict", "--model-dir", str(model_dir), "--test", str(test_csv),
                     "--output", str(out_dir / "submission.csv"), "--no-progress"])  # fmt: skip
    assert code in (0, 2)
    if code == 0:
        assert [p.name for p in out_dir.iterdir()] == ["submission.csv"]
        submission = pd.read_csv(out_dir / "submission.csv", dtype={"row_id": str}, keep_default_na=False)
        expected = D.read_csv(test_csv, labelled=False, need_row_id=True)
        assert submission["row_id"].tolist() == expected[D.ROW_ID].tolist()
        assert submission["rule_violation"].between(0, 1).all()
    else:
        assert list(out_dir.iterdir()) == []  # no output file, no temp file
        assert "Traceback" not in stderr.getvalue()
        errors = [line for line in stderr.getvalue().splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("rulebert: error: "), stderr.getvalue()
