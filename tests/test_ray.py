"""``rulebert score --engine ray``: a folder of CSV/JSONL/Parquet shards scored by Ray actors gives, shard by
shard, what the local engine gives (every input cell kept, the same probabilities), and bad input is a
one-line error that writes nothing.

One local Ray cluster (2 CPUs) serves the whole module; the CLI runs in a subprocess that joins it
(--ray-address) or starts its own.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rulebert.cli import main
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.scoring.local import rules_to_score, score_stream
from rulebert.scoring.ray_engine import score_shards
from tests.serving import COMMENTS, RULE, make_model_dir

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own, not ours


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory):
    return make_model_dir(tiny_checkpoint, tmp_path_factory.mktemp("ray") / "model")


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer(model_dir, device="cpu")


@pytest.fixture(scope="module")
def cluster():
    """A local cluster for the module: score_shards uses a session that is already up (and leaves it up)."""
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


def comments(n, offset=0):
    return [f"{COMMENTS[i % len(COMMENTS)]} {i + offset}" for i in range(n)]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def make_shards(folder: Path) -> Path:
    """2 CSV shards (one with a formula, quotes and an old probability column), 1 JSONL, 1 Parquet."""
    folder.mkdir()
    bodies = comments(8) + ["=1+2 buy now", 'quoted, with a comma\nand a newline "inside"']
    write_csv(
        folder / "a.csv",
        [["id", "body", "subreddit", "note"]]
        + [[f"{i:03d}", b, ["news", ""][i % 2], "NA" if i % 3 else ""] for i, b in enumerate(bodies)],
    )
    write_csv(folder / "b.csv", [["comment", "probability"]] + [[c, "0.5"] for c in comments(5, 100)])
    records = [{"body": c, "n": i, "tags": ["x"], "meta": {"k": i}} for i, c in enumerate(comments(6, 200))]
    records[2]["subreddit"] = "legaladvice"
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    try:
        import pandas as pd

        frame = pd.DataFrame({"body": comments(5, 300), "score": [1, 2, 3, 4, 5], "ratio": [0.5] * 5})
        frame.to_parquet(folder / "d.parquet")
    except ImportError:  # no pyarrow: the test runs on the text shards
        pass
    return folder


def assert_same_but_probability(ray_rows, local_rows, columns):
    """CSV rows (header first) or JSONL records equal but for the probability columns, which are close."""
    if isinstance(ray_rows[0], list):
        header = ray_rows[0]
        assert header == local_rows[0]
        at = [header.index(c) for c in columns]
        strip = [[cell for i, cell in enumerate(row) if i not in at] for row in ray_rows[1:]]
        assert strip == [[cell for i, cell in enumerate(row) if i not in at] for row in local_rows[1:]]
        for i in at:
            got, want = ([float(r[i]) for r in rows[1:]] for rows in (ray_rows, local_rows))
            np.testing.assert_allclose(got, want, atol=1e-5)
        return
    assert [{k: v for k, v in r.items() if k not in columns} for r in ray_rows] == [
        {k: v for k, v in r.items() if k not in columns} for r in local_rows
    ]
    for column in columns:
        np.testing.assert_allclose([r[column] for r in ray_rows], [r[column] for r in local_rows], atol=1e-5)


def test_every_shard_matches_the_local_engine(cluster, model_dir, scorer, tmp_path):
    shards = make_shards(tmp_path / "in")
    names = sorted(p.name for p in shards.iterdir())
    out = tmp_path / "out"
    rows, count = score_shards(model_dir, RULE, shards, out, actors=2, batch_rows=4, progress=False)
    assert (rows, count) == (10 + 5 + 6 + 5 * ("d.parquet" in names), len(names))
    assert sorted(p.name for p in out.iterdir()) == names  # one output per shard, same name, no temp file
    local = tmp_path / "local"
    local.mkdir()
    for name in ("a.csv", "b.csv"):
        score_stream(scorer, RULE, shards / name, local / name, progress=False)
        assert_same_but_probability(read_csv(out / name), read_csv(local / name), ["probability"])
    a = read_csv(out / "a.csv")
    assert a[0] == ["id", "body", "subreddit", "note", "probability", "mode"]
    assert a[9][:2] == ["008", "'=1+2 buy now"]  # the formula neutralised; "008" stays a string
    assert read_csv(out / "b.csv")[0] == [
        "comment",
        "probability",
        "mode",
    ]  # the old column replaced in place
    score_stream(scorer, RULE, shards / "c.jsonl", local / "c.jsonl", progress=False)
    got, want = ([json.loads(x) for x in (f / "c.jsonl").read_text().splitlines()] for f in (out, local))
    assert_same_but_probability(got, want, ["probability"])
    assert got[0]["meta"] == {"k": 0} and got[2]["subreddit"] == "legaladvice"
    if "d.parquet" in names:
        import pyarrow.parquet as pq

        table, source = pq.read_table(out / "d.parquet"), pq.read_table(shards / "d.parquet")
        assert table.column_names == ["body", "score", "ratio", "probability", "mode"]
        assert set(table.column("mode").to_pylist()) == {"zero-shot"}
        assert table.select(source.column_names).equals(source)  # the columns and their types kept
        expected = scorer.score(comments(5, 300), RULE)
        np.testing.assert_allclose(table.column("probability").to_pylist(), expected, atol=1e-5)


def test_rules_file_gives_a_column_per_rule_and_raw_csv_keeps_formulas(cluster, model_dir, scorer, tmp_path):
    rules = tmp_path / "rules.jsonl"
    ads = {"id": "ads", "text": RULE, "positive_examples": ["buy now"], "negative_examples": ["nice day"]}
    rules.write_text(json.dumps(ads) + "\n" + json.dumps({"id": "legal", "text": "No legal advice"}) + "\n")
    shards = tmp_path / "in"
    shards.mkdir()
    write_csv(shards / "s.csv", [["body"], ["=HYPERLINK(x)"], *([c] for c in comments(6))])
    out = tmp_path / "out"
    score_shards(model_dir, None, str(shards / "*.csv"), out, rules_path=rules, actors=1, progress=False,
                 raw_csv=True)  # fmt: skip
    local = tmp_path / "local.csv"
    score_stream(scorer, rules_to_score(rules), shards / "s.csv", local, progress=False, raw_csv=True)
    got = read_csv(out / "s.csv")
    assert got[0] == ["body", "probability_ads", "mode_ads", "probability_legal", "mode_legal"]
    assert got[1][0] == "=HYPERLINK(x)"  # --raw-csv: as it was
    assert_same_but_probability(got, read_csv(local), ["probability_ads", "probability_legal"])


@pytest.mark.parametrize("how", ["joins_the_cluster", "starts_its_own"])
def test_cli_in_a_subprocess(cluster, model_dir, scorer, tmp_path, how):
    shards = tmp_path / "in"
    shards.mkdir()
    write_csv(shards / "one.csv", [["body"], *([c] for c in COMMENTS)])
    (shards / "two.jsonl").write_text(json.dumps({"comment": COMMENTS[0]}) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rulebert.cli", "score", "--engine", "ray", "--actors", "1",
               "--model-dir", str(model_dir), "--rule", RULE, "--input", str(shards), "--output", str(out),
               "--no-progress"]  # fmt: skip
    command += ["--ray-address", cluster] if how == "joins_the_cluster" else []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"wrote 5 rows in 2 shard(s) to {out}\n"  # nothing else: Ray kept quiet
    rows = list(csv.DictReader((out / "one.csv").open()))
    np.testing.assert_allclose(
        [float(r["probability"]) for r in rows], scorer.score(COMMENTS, RULE), atol=1e-5
    )
    assert json.loads((out / "two.jsonl").read_text())["comment"] == COMMENTS[0]


def bad_shards(tmp_path: Path, name: str) -> tuple[str, str, str]:
    """(--input, --output, the message expected) for one kind of bad input."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_csv(folder / "ok.csv", [["body"], ["hello there"]])
    out = str(tmp_path / "out")
    if name == "empty_folder":
        (folder / "ok.csv").unlink()
        return str(folder), out, f"{folder}: no shards matched"
    if name == "glob_matches_nothing":
        return str(folder / "*.parquet"), out, "in/*.parquet: no shards matched"
    if name == "unknown_extension":
        (folder / "notes.txt").write_text("body\nhi\n")
        return str(folder), out, "notes.txt: unknown shard extension ('.txt'); use .csv, .jsonl or .parquet"
    if name == "no_text_column":
        write_csv(folder / "bad.csv", [["id", "text"], ["1", "hello"]])
        return str(folder), out, f"{folder / 'bad.csv'}: no text column 'body' or 'comment' (found: id, text)"
    if name == "empty_comment":
        (folder / "bad.jsonl").write_text('{"body": "hi"}\n{"body": "  "}\n')
        return str(folder), out, f"{folder / 'bad.jsonl'}: line 2, column 'body': empty comment"
    if name == "output_is_a_file":
        Path(out).write_text("")
        return str(folder), out, f"--output {out}: not a folder"
    assert name == "output_is_the_input"
    return str(folder), str(folder), "the output folder holds input shards"


@pytest.mark.parametrize(
    "name",
    ["empty_folder", "glob_matches_nothing", "unknown_extension", "no_text_column", "empty_comment",
     "output_is_a_file", "output_is_the_input"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, name):
    source, out, message = bad_shards(tmp_path, name)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["score", "--engine", "ray", "--model-dir", str(model_dir), "--rule", RULE,
                 "--input", source, "--output", out, "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rulebert: error: ") and err.count("\n") == 1
    assert message in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_parquet_without_a_text_column_names_the_shard(model_dir, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (tmp_path / "in").mkdir()
    pd.DataFrame({"text": ["a"]}).to_parquet(tmp_path / "in" / "x.parquet")
    with pytest.raises(
        RulebertError, match=r"in/x.parquet: no text column 'body' or 'comment' \(found: text\)"
    ):
        score_shards(model_dir, RULE, tmp_path / "in", tmp_path / "out")


def test_without_ray_the_error_says_which_extra(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    code = main(["score", "--engine", "ray", "--model-dir", str(model_dir), "--rule", RULE,
                 "--input", str(tmp_path), "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == "rulebert: error: --engine ray needs `pip install rulebert[ray]`\n"


def test_cluster_flags_need_the_ray_engine(model_dir, tmp_path, capsys):
    code = main(["score", "--model-dir", str(model_dir), "--rule", RULE, "--input", "-", "--actors", "2"])
    assert code == 2 and "--ray-address and --actors go with --engine ray" in capsys.readouterr().err
