from pathlib import Path

import pandas as pd
import pytest

from rulebert.core.errors import RulebertError
from rulebert.domain import data as D

from .conftest import make_frame


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "f.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_reads_train_and_test(tmp_path):
    train = D.read_csv(write(tmp_path, make_frame(6, 0)), labelled=True)
    assert train[D.LABEL].tolist() == make_frame(6, 0)["rule_violation"].tolist()
    test = D.read_csv(
        write(tmp_path, make_frame(4, 0, labelled=False), "t.csv"), labelled=False, need_row_id=True
    )
    assert D.LABEL not in test.columns and len(test) == 4


def test_optional_columns_get_defaults(tmp_path):
    path = write(tmp_path, pd.DataFrame({"body": ["x", "y"], "rule": ["r", "r"], "rule_violation": [0, 1]}))
    frame = D.read_csv(path, labelled=True)
    assert frame[D.SUBREDDIT].tolist() == ["", ""]
    assert frame[D.ROW_ID].tolist() == ["0", "1"]
    assert D.example_rows(frame).empty


def test_misspelled_column_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, make_frame(3, 0).rename(columns={"body": "bdy"}))
    with pytest.raises(RulebertError, match=r"f\.csv: missing column 'body' \(did you mean 'bdy'\?\)"):
        D.read_csv(path, labelled=True)


def test_missing_label_column(tmp_path):
    path = write(tmp_path, make_frame(3, 0, labelled=False))
    with pytest.raises(RulebertError, match="missing column 'rule_violation'"):
        D.read_csv(path, labelled=True)


def test_partial_example_columns_are_an_error(tmp_path):
    path = write(tmp_path, make_frame(3, 0).drop(columns=["negative_example_2"]))
    with pytest.raises(RulebertError, match="missing column 'negative_example_2'"):
        D.read_csv(path, labelled=True)


@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(RulebertError, match="empty.csv: file is empty"):
        D.read_csv(path)


def test_header_only_file(tmp_path):
    path = write(tmp_path, make_frame(1, 0).iloc[0:0])
    with pytest.raises(RulebertError, match="no data rows"):
        D.read_csv(path, labelled=True)


@pytest.mark.parametrize("value", ["", "   ", None])
def test_empty_or_nan_body_names_row_and_column(tmp_path, value):
    frame = make_frame(5, 0)
    frame.loc[3, "body"] = value
    with pytest.raises(RulebertError, match=r"row 4 \(row_id=1003\), column 'body': empty or NaN"):
        D.read_csv(write(tmp_path, frame), labelled=True)


@pytest.mark.parametrize("value", ["2", "-1", "yes", "0.5", ""])
def test_label_outside_0_1(tmp_path, value):
    frame = make_frame(5, 0).astype({"rule_violation": object})
    frame.loc[2, "rule_violation"] = value
    with pytest.raises(
        RulebertError, match=r"row 3 \(row_id=1002\), column 'rule_violation': label .* is not 0 or 1"
    ):
        D.read_csv(write(tmp_path, frame), labelled=True)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, make_frame(4, 0))
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"the", b"th\xe9", 1) if b"the" in lines[2] else lines[2] + b"\xff"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RulebertError, match=r"f\.csv: line 3: not valid UTF-8"):
        D.read_csv(path, labelled=True)


def test_nul_byte(tmp_path):
    path = write(tmp_path, make_frame(4, 0))
    path.write_bytes(path.read_bytes().replace(b"the", b"t\x00he", 1))
    with pytest.raises(RulebertError, match="NUL byte"):
        D.read_csv(path, labelled=True)


def test_duplicate_row_id(tmp_path):
    frame = make_frame(4, 0)
    frame.loc[3, "row_id"] = frame.loc[1, "row_id"]
    with pytest.raises(RulebertError, match=r"row 4 .*column 'row_id': duplicate row_id '1001'"):
        D.read_csv(write(tmp_path, frame), labelled=True)


def test_missing_file(tmp_path):
    with pytest.raises(RulebertError, match="nope.csv: file not found"):
        D.read_csv(tmp_path / "nope.csv")


def test_example_rows_label_positive_1_negative_0():
    frame = make_frame(3, 0)
    rows = D.example_rows(frame)
    assert len(rows) == 12
    positives = set(frame["positive_example_1"]) | set(frame["positive_example_2"])
    assert set(rows.loc[rows[D.LABEL] == 1, D.TEXT]) == positives
    assert (rows[D.SOURCE] == "example").all()


def test_dedupe_majority_vote_and_ties():
    rows = pd.DataFrame(
        {
            D.TEXT: ["spam", "spam ", "spam", "ok", "tie", "tie", "spam"],
            D.RULE: ["r1", "r1", "r1", "r1", "r1", "r1", "r2"],
            D.SUBREDDIT: "s",
            D.LABEL: [1, 1, 0, 0, 1, 0, 0],
            D.SOURCE: "example",
        }
    )
    out, stats = D.dedupe_rows(rows)
    by_key = {
        (t.strip(), r): (label, votes)
        for t, r, label, votes in out[[D.TEXT, D.RULE, D.LABEL, "votes"]].values
    }
    assert by_key == {("spam", "r1"): (1, 3), ("ok", "r1"): (0, 1), ("spam", "r2"): (0, 1)}
    assert (stats.rows_in, stats.rows_out, stats.conflicting_pairs, stats.tied_pairs_dropped) == (7, 3, 2, 1)


def test_labelled_rows_adds_test_examples():
    train, test = make_frame(6, 0), make_frame(4, 9, labelled=False)
    without, _ = D.labelled_rows(train, dedupe=False)
    with_test, _ = D.labelled_rows(train, test, dedupe=False)
    assert len(without) == 6 * 5 and len(with_test) == 6 * 5 + 4 * 4
    assert set(test["positive_example_1"]) <= set(with_test[D.TEXT])


def test_grouped_split_keeps_each_text_on_one_side():
    rows = pd.DataFrame(
        {
            D.TEXT: [f"text {i % 20}" + (" " if i % 3 else "") for i in range(100)],
            D.RULE: [f"r{i % 2}" for i in range(100)],
            D.SUBREDDIT: "",
            D.LABEL: [i % 2 for i in range(100)],
            D.SOURCE: "example",
        }
    )
    train, val = D.grouped_split(rows, 0.25, seed=0)
    assert len(train) + len(val) == 100 and len(val) > 0
    assert not set(train[D.TEXT].str.strip()) & set(val[D.TEXT].str.strip())
    again_train, _ = D.grouped_split(rows, 0.25, seed=0)
    assert again_train.equals(train)


def test_zero_val_fraction_keeps_everything():
    rows, _ = D.labelled_rows(make_frame(4, 0))
    train, val = D.grouped_split(rows, 0.0, seed=0)
    assert len(train) == len(rows) and val.empty
