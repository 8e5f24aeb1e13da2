"""Peak memory of ``rulebert predict`` on a large test file (default 50,000 rows; the goal: under 2 GB).

Builds the test file in a temp folder (never in the repo) from the competition's train.csv and test.csv rows,
repeated with fresh row_ids and without labels, then runs the real command under ``/usr/bin/time -v`` and
reads its "Maximum resident set size":

    python benchmarks/bench_memory.py --model-dir runs/model [--rows 50000] [--backend auto|torch|onnx]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

LIMIT_MB = 2048


def make_test_file(data_dir: Path, rows: int, path: Path) -> Path:
    """``rows`` test-style rows (no label) cycled from train.csv + test.csv, row_ids 0..rows-1."""
    sources = [
        pd.read_csv(data_dir / name, dtype=str, keep_default_na=False) for name in ("train.csv", "test.csv")
    ]
    pool = pd.concat(sources, ignore_index=True).drop(columns=["rule_violation"])
    frame = pool.iloc[[i % len(pool) for i in range(rows)]].reset_index(drop=True)
    frame["row_id"] = range(rows)
    frame.to_csv(path, index=False)
    return path


def peak_rss(command: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stderr) of ``command`` run under GNU time."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}):\n{done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return kb / 1024, hours * 3600 + minutes * 60 + seconds, done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    parser.add_argument("--test", type=Path, help="an existing test CSV instead of a generated one")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with train.csv and test.csv")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/time").is_file():
        raise SystemExit("/usr/bin/time (GNU time) is needed: apt-get install time")

    from rulebert.domain.data import default_data_dir

    rulebert = shutil.which("rulebert") or str(Path(sys.executable).with_name("rulebert"))
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        test = args.test or make_test_file(
            args.data_dir or default_data_dir(), args.rows, Path(work) / "test.csv"
        )
        rows = sum(1 for _ in pd.read_csv(test, dtype=str, usecols=["row_id"]).itertuples())
        command = [rulebert, "predict", "--model-dir", str(args.model_dir), "--test", str(test)]
        command += [
            "--output",
            str(Path(work) / "submission.csv"),
            "--backend",
            args.backend,
            "--no-progress",
        ]
        mb, wall, stderr = peak_rss(command)
        backend = re.search(r"predict backend: (\S+)", stderr)
        written = len(pd.read_csv(Path(work) / "submission.csv"))
    report = {
        "rows": rows,
        "backend": backend.group(1) if backend else args.backend,
        "peak_rss_mb": round(mb, 1),
        "wall_seconds": round(wall, 1),
        "rows_per_second": round(rows / wall, 1),
        "rows_written": written,
        "limit_mb": LIMIT_MB,
    }
    print("| rows | backend | peak RSS | wall | rows/s |\n|---:|---|---:|---:|---:|")
    print(f"| {rows:,} | {report['backend']} | {mb:,.0f} MB | {wall:.0f} s | {report['rows_per_second']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ok = mb < LIMIT_MB and written == rows
    if not ok:
        print(f"peak RSS {mb:.0f} MB over {LIMIT_MB} MB or rows missing ({written}/{rows})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
