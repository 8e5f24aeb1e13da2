"""benchmarks/communities.py end to end on 3 real communities with the tiny model: it runs, writes one line
per (system, community, seed, k), and every figure is in range. Its numbers belong in docs/evaluation.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "communities"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("communities_bench", ROOT / "benchmarks" / "communities.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not (DATA / "comments.csv").is_file(), reason="shared/data/communities is not beside the repo"
)
def test_three_communities_run_and_stay_in_range(model_dir: Path, tmp_path: Path) -> None:
    bench = _load_benchmark()
    work = tmp_path / "work"
    argv = ["--model-dir", str(model_dir), "--data", str(DATA), "--work", str(work), "--communities", "3"]
    argv += [
        "--seeds",
        "0",
        "--ks",
        "4,16",
        "--systems",
        "zero-shot,examples,tfidf",
        "--plot",
        str(tmp_path / "k.png"),
    ]
    bench.main(argv)
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert len({row["community"] for row in rows}) == 3
    assert sorted({(row["system"], row["k"]) for row in rows}) == [
        ("examples", 4),
        ("examples", 16),
        ("tfidf", 4),
        ("tfidf", 16),
        ("zero-shot", 0),
    ]
    assert len(rows) == 15
    for row in rows:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0, row
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0, row
        assert row["rows"] >= 200 and row["seconds"] >= 0
    assert {row["mode"] for row in rows if row["system"] == "examples"} == {"examples"}
    summary = json.loads((work / "summary.json").read_text())
    assert {(s["system"], s["k"]) for s in summary} == {(r["system"], r["k"]) for r in rows}
    for s in summary:
        assert s["low"] <= s["auc"] <= s["high"] and s["runs"] == 3
    assert (tmp_path / "k.png").stat().st_size > 1000
    # a second run finds every line done and adds none
    bench.main(argv)
    assert len((work / "results.jsonl").read_text().splitlines()) == 15
    # another model dir's runs sit beside these under a tag; the same model dir tagged gains exactly 0
    bench.main([*argv[:8], "--seeds", "0", "--ks", "4,16", "--systems", "examples", "--tag", "again"])
    import pandas as pd

    results = pd.read_json(work / "results.jsonl", lines=True)
    assert (results["system"] == "examples+again").sum() == 6
    gain = bench.paired_gain(results, "examples+again", "examples")
    assert gain["k"].tolist() == [4, 16] and gain["communities"].tolist() == [3, 3]
    assert gain["gain"].abs().max() == 0 and gain["wins"].sum() == 0


def test_paired_gain_is_the_mean_per_community_difference() -> None:
    import pandas as pd

    bench = _load_benchmark()
    rows = []
    for i, (old, new) in enumerate([(0.6, 0.7), (0.7, 0.7), (0.8, 0.75), (0.5, 0.65)]):
        for seed, wobble in ((0, 0.01), (1, -0.01)):  # seeds average out within a community
            rows.append({"system": "a", "community": f"c{i}", "seed": seed, "k": 32, "auc": old + wobble})
            rows.append({"system": "b", "community": f"c{i}", "seed": seed, "k": 32, "auc": new})
    rows.append({"system": "b", "community": "only-b", "seed": 0, "k": 32, "auc": 0.99})  # unpaired: left out
    gain = bench.paired_gain(pd.DataFrame(rows), "b", "a").iloc[0]
    assert gain["communities"] == 4 and gain["wins"] == 2
    assert abs(gain["gain"] - (0.1 + 0 - 0.05 + 0.15) / 4) < 1e-9
    assert gain["low"] <= gain["gain"] <= gain["high"]


def test_split_is_nested_and_scored_rows_are_fixed() -> None:
    import numpy as np

    bench = _load_benchmark()
    labels = np.array([1] * 150 + [0] * 140)
    community = bench.Community("c", "1. Be nice", [f"comment {i}" for i in range(len(labels))], labels)
    examples, scored = bench.split(community, 0, [8, 32, 128])
    assert set(examples[8]) < set(examples[32]) < set(examples[128])
    assert not set(examples[128]) & set(scored)
    assert (labels[examples[32]] == 1).sum() == 32 and (labels[examples[32]] == 0).sum() == 32
    assert (labels[scored] == 1).sum() == 150 - 128 and (labels[scored] == 0).sum() == 140 - 128
    again, scored_again = bench.split(community, 0, [8, 32, 128])
    assert (scored == scored_again).all() and (examples[8] == again[8]).all()
    assert not (bench.split(community, 1, [8, 32, 128])[1] == scored).all()


def test_folds_train_on_the_other_communities_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--folds 3 on 3 small communities: each fold's model trained on the two others' decisions (its record
    says which), and every community scored once, by the fold that held it out."""
    from tests.test_decisions import write_decisions

    bench = _load_benchmark()
    data = write_decisions(tmp_path / "decisions", per_label=140)
    work = tmp_path / "work"
    train_args = f"--model {tiny_checkpoint} --epochs 3 --lr 1e-3 --batch-size 16 --max-length 48"
    train_args += " --decisions-per-label 20 --val-fraction 0.25 --no-export --no-progress"
    argv = ["--data", str(data), "--work", str(work), "--folds", "3", "--seeds", "0", "--ks", "4"]
    bench.main([*argv, "--systems", "zero-shot,tfidf", "--train-args", train_args])
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    held = {row["community"]: row["fold"] for row in rows}
    assert sorted(held) == ["cars", "cats", "food"] and sorted(held.values()) == [0, 1, 2]
    for community, fold in held.items():
        record = json.loads((work / f"fold{fold}" / "model" / "rulebert.json").read_text())
        trained_on = record["data"]["decisions"]["communities"]
        assert community not in trained_on and len(trained_on) == 2
    assert {(row["system"], row["k"]) for row in rows} == {("zero-shot", 0), ("tfidf", 4)}
