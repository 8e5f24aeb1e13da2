"""Rows/s of ``rulebert score --engine ray`` (1, 2, ... actors) beside the local engine, on one machine.

    python benchmarks/bench_ray.py --tiny                              # a tiny random model: the overheads
    python benchmarks/bench_ray.py --model-dir runs/model [--rows 4058] [--shards 8] [--actors 1 2]

The bodies (and subreddits) of the competition's train.csv (``../shared/data/jigsaw-agile-community-rules``,
or ``$RULEBERT_DATA``), cycled to ``--rows`` and split into ``--shards`` CSV shards, are scored against one
rule:

- local: one process, ``Scorer`` loaded once, then ``score_stream`` shard after shard (``--engine local``
  run once per shard, without reloading the model);
- ray N: ``score_shards`` with N actors on a local cluster of all this machine's CPUs (each actor gets
  CPUs / N threads). "start" is ``ray.init`` (paid once per run without ``--ray-address``, never when
  joining a running cluster); "score" is the rest: actors starting and loading the model, scoring, and
  writing the output shards.

Every Ray output is checked against the local one (largest probability difference). Markdown table on
stdout; ``--json PATH`` saves the numbers. Timings are wall-clock and one run each: on a shared machine,
run it twice.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.serving

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jigsaw-agile-community-rules"
RULE = (
    "No Advertising: Spam, referral links, unsolicited advertising, and promotional content are not allowed."
)


def make_shards(train_csv: Path, folder: Path, rows: int, shards: int) -> int:
    """``rows`` (body, subreddit) rows of ``train_csv``, cycled, as ``shards`` CSV files; returns rows."""
    with open(train_csv, newline="", encoding="utf-8") as handle:
        source = [(r["body"], r.get("subreddit", "")) for r in csv.DictReader(handle) if r["body"].strip()]
    rows = rows or len(source)
    folder.mkdir(parents=True)
    per = -(-rows // shards)
    for k in range(shards):
        with open(folder / f"part-{k:03d}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "body", "subreddit"])
            for i in range(k * per, min(rows, (k + 1) * per)):
                writer.writerow([i, *source[i % len(source)]])
    return rows


def probabilities(folder: Path) -> dict[str, list[float]]:
    out = {}
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            out[path.name] = [float(r["probability"]) for r in csv.DictReader(handle)]
    return out


def run_local(model_dir: Path, shards: Path, out: Path) -> dict:
    from rulebert.inference.predict import Scorer
    from rulebert.scoring.local import score_stream

    start = time.perf_counter()
    scorer = Scorer(model_dir)
    loaded = time.perf_counter()
    out.mkdir()
    for shard in sorted(shards.glob("*.csv")):
        score_stream(scorer, RULE, shard, out / shard.name, progress=False)
    end = time.perf_counter()
    return {"engine": "local", "start_s": 0.0, "load_s": loaded - start, "score_s": end - start}


def run_ray(model_dir: Path, shards: Path, out: Path, actors: int) -> dict:
    import ray

    from rulebert.scoring.ray_engine import score_shards

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    started = time.perf_counter()
    try:
        score_shards(model_dir, RULE, shards, out, actors=actors, progress=False)
    finally:
        end = time.perf_counter()
        ray.shutdown()
    return {
        "engine": f"ray, {actors} actor{'s' * (actors > 1)}",
        "start_s": started - start,
        "score_s": end - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", type=Path, help="a trained model dir")
    model.add_argument("--tiny", action="store_true", help="a tiny random model (what the tests use)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RULEBERT_DATA", DEFAULT_DATA)))
    parser.add_argument("--rows", type=int, default=0, help="rows in all (default: train.csv's, once)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = args.model_dir
        if args.tiny:
            from tests.serving import build_tiny_checkpoint, make_model_dir

            (folder / "checkpoint").mkdir()
            model_dir = make_model_dir(build_tiny_checkpoint(folder / "checkpoint"), folder / "model")
        rows = make_shards(args.data_dir / "train.csv", folder / "in", args.rows, args.shards)
        results = [run_local(model_dir, folder / "in", folder / "local")]
        expected = probabilities(folder / "local")
        for actors in args.actors:
            out = folder / f"ray-{actors}"
            results.append(run_ray(model_dir, folder / "in", out, actors))
            got = probabilities(out)
            assert got.keys() == expected.keys()
            results[-1]["max_abs_diff"] = max(
                max(abs(a - b) for a, b in zip(got[name], expected[name], strict=True)) for name in got
            )

    name = "tiny (random 2-layer, 32-wide BERT)" if args.tiny else str(model_dir)
    print(f"{rows} rows in {args.shards} shards; model {name}; {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}\n")  # fmt: skip
    print("| engine | cluster start s | score s | rows/s (score) | rows/s (end to end) | max diff vs local |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        r["rows_per_s"] = rows / r["score_s"]
        r["rows_per_s_end_to_end"] = rows / (r["start_s"] + r["score_s"])
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        print(f"| {r['engine']} | {r['start_s']:.1f} | {r['score_s']:.1f} | {r['rows_per_s']:.0f} | "
              f"{r['rows_per_s_end_to_end']:.0f} | {diff} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "shards": args.shards, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
