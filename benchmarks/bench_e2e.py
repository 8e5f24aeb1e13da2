"""End-to-end speed as a user meets it: ``rulebert train`` and ``rulebert predict``, each one whole command.

Each command runs as a subprocess and its wall time is taken from start to exit (interpreter start, imports,
model loading and file writing included), against the competition notebook's pipeline measured in the same
run (``bench_speed.notebook_train`` / ``notebook_predict``: template strings padded to 512 tokens, HF
``Trainer`` defaults, batch 8):

1. ``rulebert train --train T --output-dir M --no-progress`` on the first ``--train-rows`` (600) rows of
   train.csv, default recipe (5 epochs, int8 ONNX export). Training rows/s = rows the trainer trained on
   (``metrics.json`` ``train_rows``: comments and example cells, deduplicated, validation held out) x epochs
   / the command's wall time.
2. ``rulebert predict --model-dir M --test T --output S --no-progress`` on all 2,029 rows of train.csv
   (labels dropped): backend auto (the int8 ONNX file on a CPU), then ``--backend torch``. Rows/s = rows /
   wall (median of ``--repeats``).
3. The notebook's steady-state rows/s on a few steps / rows (its start-up and model loading left out, which
   flatters the notebook); "x notebook" = the notebook's time for the same rows, extrapolated from those
   rows/s, / rulebert's whole-command wall time.
4. A profile of one ``predict`` in a fresh interpreter, phase by phase (interpreter start, imports and which
   heavy modules they loaded, model dir verification, ONNX session, CSV read, tokenising, forward,
   calibration, CSV write, exit), the forward-only (steady-state) rows/s beside the end-to-end one, and the
   slowest imports of the real command (``python -X importtime``).

Before each timed step it waits (up to ``--wait`` s) for the 1-minute load average to drop under
``--max-load``, and reports the load each step ran at. Markdown on stdout; ``--json PATH`` saves all numbers.

    python benchmarks/bench_e2e.py [--train-rows 600] [--device cpu|cuda] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The environment the rulebert commands run in: taken before bench_speed (imported later for the notebook
# pipeline) sets anything, so that they run exactly as a user's shell would start them.
BASE_ENV = dict(os.environ)
BENCH_DIR = Path(__file__).resolve().parent
PREDICT_TARGET, TRAIN_TARGET = 20.0, 15.0
HEAVY_MODULES = ("torch", "transformers", "sklearn", "scipy", "matplotlib", "pandas", "onnxruntime")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_quiet(max_load: float, poll: float, limit: float) -> dict[str, float]:
    """Wait until the 1-minute load average is under ``max_load`` (at most ``limit`` s); say what it was."""
    start = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - start
        if load < max_load or waited >= limit:
            return {"load_1min": round(load, 2), "waited_s": round(waited, 1), "quiet": load < max_load}
        log(f"  load {load:.2f} >= {max_load}: waiting ({waited:.0f}/{limit:.0f} s)")
        time.sleep(min(poll, max(limit - waited, 0.1)))


def rulebert_command() -> list[str]:
    script = Path(sys.executable).with_name("rulebert")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rulebert.cli"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(
    command: list[str], env: dict[str, str], log_path: Path, cpu: list[float] | None = None
) -> float:
    """Wall seconds of ``command`` from start to exit; its output goes to ``log_path``. ``cpu`` gets the
    command's CPU seconds (user + system): CPU / wall says how many cores it had, on average."""
    with open(log_path, "w", encoding="utf-8") as out:
        before = children_cpu()
        start = time.perf_counter()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
        seconds = time.perf_counter() - start
    if cpu is not None:
        cpu.append(children_cpu() - before)
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return seconds


def make_inputs(data_dir: Path, work: Path, train_rows: int, test_rows: int) -> tuple[Path, Path]:
    """train.csv's first ``train_rows`` rows (with labels) and first ``test_rows`` rows (without)."""
    import pandas as pd

    frame = pd.read_csv(data_dir / "train.csv", dtype=str, keep_default_na=False)
    train = frame.head(train_rows)
    if train["rule"].nunique() < 2:
        raise SystemExit(f"the first {train_rows} rows of train.csv hold one rule: use more")
    train_path, test_path = work / "train.csv", work / "test.csv"
    train.to_csv(train_path, index=False)
    frame.head(test_rows).drop(columns=["rule_violation"]).to_csv(test_path, index=False)
    return train_path, test_path


# --------------------------------------------------------------------------------------------- profile

# Runs in a fresh interpreter: the real predict_file (what `rulebert predict` calls), its parts timed by
# wrapping them (argv: model_dir test output backend heavy-modules). Parts run one after another, never
# nested, so their seconds add up; "other" is predict_file's time outside them.
PROFILE_CODE = r"""
import time
T_FIRST = time.time()
import json, sys
model_dir, test_path, out_path, backend, heavy = sys.argv[1:6]
heavy = heavy.split(",")
phases = {}

def mark(name, start):
    phases[name] = time.perf_counter() - start

t = time.perf_counter()
import rulebert.cli
for where in ("rulebert.cli", "rulebert.cli.commands"):  # what `rulebert predict` does first
    quiet = getattr(sys.modules.get(where), "_quiet_libraries", None)
    if quiet is not None:
        quiet()
        break
mark("import rulebert.cli", t)
t = time.perf_counter()
import rulebert.pipeline as pipeline
import rulebert.inference.predict as P
import rulebert.domain.examples as E
import rulebert.backend.onnx_backend as O
mark("import rulebert.pipeline (what cmd_predict imports)", t)
imported_after_import = [m for m in heavy if m in sys.modules]
parts, calls, captured = {}, {}, {}

def wrap(owner, name, label, label_of=None):
    original = getattr(owner, name)
    def timed(*args, **kwargs):
        calls[label] = calls.get(label, 0) + 1
        key = label_of(calls[label], args) if label_of else label
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            parts[key] = parts.get(key, 0.0) + time.perf_counter() - start
    setattr(owner, name, timed)

def forward_label(n, args):
    if n == 1:  # the first forward of predict_file is the comments' (one chunk of <= 4096 rows)
        captured["runtime"], captured["features"] = args[0], args[1]
        return "cross-encoder forward: the comments"
    return "cross-encoder forward: the rules' example cells (blend)"

wrap(pipeline, "read_csv", "read CSV")
wrap(pipeline, "pooled_examples", "pool each rule's example cells")
wrap(pipeline, "write_csv_atomic", "write CSV")
for name in ("verify_model_dir", "find_onnx", "OnnxBackend", "load_model_dir", "TorchBackend"):
    wrap(P, name, "scorer: " + name)
wrap(P.Scorer, "encode", "tokenise (Scorer.encode)")
wrap(O.OnnxBackend, "predict", "forward", forward_label)
import rulebert.backend.torch_backend as TB
wrap(TB.TorchBackend, "predict", "forward", forward_label)
wrap(O.OnnxEmbedder, "embed_texts", "sentence embedder (embedder/embedder.int8.onnx)")
wrap(E, "tfidf_scorer", "example model fit: TF-IDF members")
wrap(E.ExampleModel, "fit", "example model fit")
wrap(E.ExampleModel, "score", "example model score")
t = time.perf_counter()
submission = pipeline.predict_file(model_dir, test_path, out_path, backend=backend, progress=False)
total = time.perf_counter() - t
T_WRITTEN = time.time()
tfidf_s = parts.get("example model fit: TF-IDF members", 0.0)
parts["example model fit"] = parts.get("example model fit", 0.0) - tfidf_s  # the rest of the fit
scorer_load = {k: parts.pop(k) for k in list(parts) if k.startswith("scorer: ")}
phases["read CSV"] = parts.pop("read CSV", 0.0)
phases["scorer load (hashes, ONNX sessions)"] = sum(scorer_load.values())
phases.update(parts)
phases["other inside predict_file (grouping, calibration, ...)"] = (
    total - sum(parts.values()) - phases["read CSV"] - phases["scorer load (hashes, ONNX sessions)"])
t = time.perf_counter()
captured["runtime"].predict(captured["features"])
steady = time.perf_counter() - t
record = json.loads((P.Path(model_dir) / "rulebert.json").read_text())
names = list(record.get("weights_sha256") or {}) + list(record.get("files_sha256") or {})
hashed_mb = sum((P.Path(model_dir) / n).stat().st_size for n in names) / 1e6
print(json.dumps({
    "t_first": T_FIRST, "t_written": T_WRITTEN, "t_done": time.time(),
    "phases": phases, "scorer_inner": {k[8:]: v for k, v in scorer_load.items()},
    "steady_forward_s": steady, "steady_rows": len(captured["features"]), "rows": len(submission),
    "backend": getattr(captured["runtime"], "name", "torch"),
    "tokens": sum(len(f["input_ids"]) for f in captured["features"]), "hashed_mb": hashed_mb,
    "heavy_after_import": imported_after_import,
    "heavy_at_end": [m for m in heavy if m in sys.modules],
}))
"""


def profile_predict(
    model_dir: Path, test: Path, work: Path, env: dict[str, str], args: Any
) -> dict[str, Any]:
    """predict's phases in a fresh interpreter (see PROFILE_CODE); start and exit from this side's clock."""
    load = wait_for_quiet(args.max_load, args.poll, args.wait)
    command = [sys.executable, "-c", PROFILE_CODE, str(model_dir), str(test), str(work / "profile.csv")]
    command += ["auto", ",".join(HEAVY_MODULES)]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    ended = time.time()
    if done.returncode != 0:  # reported in the table: the timed commands' numbers are not lost
        log(f"profile failed:\n{done.stderr[-3000:]}")
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    phases = {"interpreter start (to the first line)": out["t_first"] - launched, **out["phases"]}
    phases["exit (interpreter and runtime teardown)"] = ended - out["t_done"]
    inner = out["scorer_inner"]
    out["phases"], out["load"] = phases, load
    # launch to exit, less the steady-state repeat of the forward (run after the CSV was written)
    out["wall_s"] = (out["t_written"] - launched) + (ended - out["t_done"])
    out["scorer_parts"] = {
        "verify_model_dir (SHA-256 of weights, config, tokenizer, calibration)": inner.get(
            "verify_model_dir", 0.0
        ),
        "find_onnx (SHA-256 of the ONNX file)": inner.get("find_onnx", 0.0),
        "ONNX Runtime session + tokenizer": inner.get("OnnxBackend", 0.0),
        "torch model load": inner.get("load_model_dir", 0.0) + inner.get("TorchBackend", 0.0),
    }
    return out


def import_offenders(args: list[str], env: dict[str, str], top: int = 10) -> list[dict[str, Any]]:
    """The slowest top-level imports of a real command (``python -X importtime``), cumulative ms."""
    command = [sys.executable, "-X", "importtime", "-m", "rulebert.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)", line)
        if match and len(match.group(3)) <= 1:  # top level: imported by the program, not by a package
            rows.append({"module": match.group(4), "cumulative_ms": int(match.group(2)) / 1000})
    total = sum(r["cumulative_ms"] for r in rows)
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return [{"module": "(all imports)", "cumulative_ms": total}, *rows[:top]]


def matmul_peaks(device: str, env: dict[str, str]) -> dict[str, float]:
    """GFLOP/s of a 2048^2 matmul in fp32 and bf16 (``bench_speed.matmul_peak``, physical-core threads), in a
    fresh process: what the machine gives right now. Taken before and after, it tells runs on a quiet machine
    from runs on a contended one (the 1-minute load does not see other tenants of the same cores)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_speed, torch;"
        "from rulebert.backend.device import physical_cores; torch.set_num_threads(physical_cores());"
        "print(json.dumps({d: bench_speed.matmul_peak(sys.argv[2], d, 5) for d in ('float32', 'bfloat16')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(BENCH_DIR), device], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return {k: round(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


# --------------------------------------------------------------------------------------------- notebook


def notebook_rates(
    data_dir: Path, model_dir: Path, device: str, steps: int, rows: int, repeats: int, args: Any
) -> dict[str, Any]:
    """The notebook pipeline's steady-state train and predict rows/s (median of ``repeats``), in-process."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_speed
    import torch
    from transformers.utils import logging

    from rulebert.backend.device import physical_cores
    from rulebert.domain import data as D

    logging.set_verbosity_error()
    torch.set_num_threads(physical_cores())
    frame = D.read_csv(data_dir / "train.csv", labelled=True)
    train, predict, loads = [], [], []
    for repeat in range(repeats):
        loads.append(wait_for_quiet(args.max_load, args.poll, args.wait))
        train.append(bench_speed.notebook_train(frame, steps, device, "default"))
        predict.append(bench_speed.notebook_predict(model_dir, frame.head(rows), device)[0])
        log(f"notebook repeat {repeat + 1}: train {train[-1]:.2f} rows/s, predict {predict[-1]:.2f} rows/s")
    return {
        "train_rows_per_s": statistics.median(train),
        "predict_rows_per_s": statistics.median(predict),
        "train_runs": train,
        "predict_runs": predict,
        "train_rows": steps * bench_speed.NOTEBOOK_BATCH,
        "predict_rows": rows,
        "threads": torch.get_num_threads(),
        "load": loads,
        "cpu": bench_speed.cpu_name(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=600, help="first rows of train.csv trained on")
    parser.add_argument("--test-rows", type=int, default=2029, help="rows predicted (train.csv, no labels)")
    parser.add_argument("--epochs", type=float, default=None, help="default: rulebert's default (5)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each predict command (median)")
    parser.add_argument("--notebook-steps", type=int, default=6, help="notebook training steps (batch 8)")
    parser.add_argument("--notebook-rows", type=int, default=64, help="rows the notebook predicts")
    parser.add_argument("--notebook-repeats", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-min load under this")
    parser.add_argument("--wait", type=float, default=600, help="longest wait for that, seconds")
    parser.add_argument("--poll", type=float, default=20)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with train.csv")
    parser.add_argument("--keep", type=Path, help="copy the trained model dir here")
    parser.add_argument(
        "--model-dir", type=Path, help="skip training: measure predict with a copy of this trained model dir"
    )
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 rows, 1 epoch, no waiting")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_rows, args.test_rows, args.epochs, args.repeats = 24, 32, 1, 1
        args.notebook_steps, args.notebook_rows, args.notebook_repeats, args.wait = 3, 8, 1, 0
    return args


def predict_runs(
    label: str, command: list[str], out: Path, args: Any, env: dict[str, str], work: Path
) -> dict[str, Any]:
    """``--repeats`` timed runs of one predict command (median wall)."""
    import pandas as pd

    walls, loads, cpu = [], [], []
    for repeat in range(args.repeats):
        loads.append(wait_for_quiet(args.max_load, args.poll, args.wait))
        walls.append(run_timed(command, env, work / "predict.log", cpu))
        log(f"predict {label} run {repeat + 1}: {walls[-1]:.2f} s (load {loads[-1]['load_1min']})")
    said = re.search(r"predict backend: (\S+)", (work / "predict.log").read_text(encoding="utf-8"))
    scores = pd.read_csv(out)["rule_violation"].to_numpy()
    wall = statistics.median(walls)
    return {
        "backend": said.group(1) if said else "?",
        "wall_s": wall,
        "walls": walls,
        "cpu_s": cpu,
        "cores_used": [c / w for c, w in zip(cpu, walls, strict=True)],
        "rows": len(scores),
        "rows_per_s": len(scores) / wall,
        "load": loads,
        "scores": scores,
    }


def train_step(rulebert: list[str], train_csv: Path, model_dir: Path, args: Any, env: dict[str, str]) -> dict:
    command = [*rulebert, "train", "--train", str(train_csv), "--output-dir", str(model_dir)]
    command += ["--no-progress", *(["--epochs", f"{args.epochs:g}"] if args.epochs else [])]
    load = wait_for_quiet(args.max_load, args.poll, args.wait)
    log(f"train: {' '.join(command[1:])} (load {load['load_1min']})")
    cpu: list[float] = []
    wall = run_timed(command, env, model_dir.parent / "train.log", cpu)
    metrics = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    record = json.loads((model_dir / "rulebert.json").read_text(encoding="utf-8"))
    epochs = float(record["config"]["epochs"])
    onnx = metrics.get("onnx_int8") or {}
    train = {
        "command": "rulebert train --train T.csv --output-dir M --no-progress"
        + (f" --epochs {args.epochs:g}" if args.epochs else ""),
        "wall_s": wall,
        "train_rows": metrics["train_rows"],
        "validation_rows": metrics.get("validation_rows"),
        "epochs": epochs,
        "epochs_logged": len(metrics.get("epochs") or []),
        "rows_per_s": metrics["train_rows"] * epochs / wall,
        "training_wall_seconds": metrics.get("wall_seconds"),
        "hf_train_samples_per_second": metrics.get("train_samples_per_second"),
        "bf16": metrics.get("bf16"),
        "onnx_int8_written": (model_dir / "model.int8.onnx").is_file(),
        "onnx_int8": onnx,
        "load": load,
        "cpu_s": cpu[0],
        "cores_used": cpu[0] / wall,
    }
    log(f"  {wall:.1f} s, {train['rows_per_s']:.2f} rows/s, int8 written: {train['onnx_int8_written']}")
    return train


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(BASE_ENV)
    if args.device == "cpu":  # rulebert takes a GPU when it sees one: hide it
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np

    from rulebert.backend.device import gpu_present
    from rulebert.domain.data import default_data_dir

    device = args.device or ("cuda" if gpu_present() else "cpu")
    data_dir = args.data_dir or default_data_dir()
    rulebert = rulebert_command()
    report: dict[str, Any] = {
        "device": device,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "train_csv_rows": args.train_rows,
        "test_rows": args.test_rows,
        "quick": args.quick,
        "model_dir_given": str(args.model_dir) if args.model_dir else None,
    }
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        train_csv, test_csv = make_inputs(data_dir, work, args.train_rows, args.test_rows)
        model_dir = work / "model"

        report["matmul_peak_gflops_before"] = matmul_peaks(device, env)
        log(f"matmul peak GFLOP/s before: {report['matmul_peak_gflops_before']}")

        # 1. train (or a given model dir, copied without ONNX files the training did not check)
        if args.model_dir:
            shutil.copytree(args.model_dir, model_dir)
            report["train"] = None
        else:
            report["train"] = train_step(rulebert, train_csv, model_dir, args, env)
            if args.keep:
                shutil.copytree(model_dir, args.keep, dirs_exist_ok=True)
        trained_int8 = (model_dir / "model.int8.onnx").is_file()

        # 2. predict: the default (auto: the int8 ONNX file on a CPU, when training kept one), then torch
        predict = [*rulebert, "predict", "--model-dir", str(model_dir), "--test", str(test_csv)]
        predict += ["--output", str(work / "submission.csv"), "--no-progress"]
        shown = "rulebert predict --model-dir M --test T.csv --output S.csv --no-progress"
        runs = {"auto": predict_runs("auto", predict, work / "submission.csv", args, env, work)}
        runs["auto"]["command"] = shown
        runs["torch"] = predict_runs(
            "torch", [*predict, "--backend", "torch"], work / "submission.csv", args, env, work
        )
        runs["torch"]["command"] = shown + " --backend torch"
        profiles = {}
        if not trained_int8 and device == "cpu":
            # Training did not keep model.int8.onnx (its fidelity check failed, or --no-export): measure the
            # int8 path anyway, with the file written by `rulebert export --int8` (unchecked), said so.
            log("model.int8.onnx not kept by training: `rulebert export --int8` for the ONNX rows")
            if not args.quick:
                profiles["auto as trained"] = profile_predict(model_dir, test_csv, work, env, args)
            export = [*rulebert, "export", "--model-dir", str(model_dir), "--int8"]
            report["export_int8_wall_s"] = run_timed(export, env, work / "export.log")
            runs["onnx-int8 (exported)"] = predict_runs(
                "onnx-int8 (exported)", predict, work / "submission.csv", args, env, work
            )
            runs["onnx-int8 (exported)"]["command"] = shown + "  (after `rulebert export --int8`)"
        onnx_key = "onnx-int8 (exported)" if "onnx-int8 (exported)" in runs else "auto"
        profiles["onnx-int8" if onnx_key != "auto" else "auto"] = profile_predict(
            model_dir, test_csv, work, env, args
        )
        for profile in profiles.values():
            if "error" in profile:
                continue
            profile["import_offenders"] = import_offenders(
                ["predict", "--model-dir", str(model_dir), "--test", str(test_csv)]
                + ["--output", str(work / "importtime.csv"), "--no-progress"]
                + (["--backend", "torch"] if profile["backend"] == "torch" else []),
                env,
            )
        torch_scores = runs["torch"]["scores"]
        for entry in runs.values():
            scores = entry.pop("scores")
            entry["max_abs_diff_vs_torch"] = float(np.abs(scores - torch_scores).max())
            entry["pearson_vs_torch"] = float(np.corrcoef(scores, torch_scores)[0, 1])
        report["predict"], report["profiles"] = runs, profiles

        # 3. the notebook's pipeline, in this process
        report["notebook"] = notebook_rates(
            data_dir, model_dir, device, args.notebook_steps, args.notebook_rows, args.notebook_repeats, args
        )
        report["matmul_peak_gflops_after"] = matmul_peaks(device, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    notebook = report["notebook"]
    train = report["train"]
    if train:
        rows_trained = train["train_rows"] * train["epochs"]
        train["notebook_s_extrapolated"] = rows_trained / notebook["train_rows_per_s"]
        train["x_notebook"] = train["notebook_s_extrapolated"] / train["wall_s"]
    for entry in report["predict"].values():
        entry["notebook_s_extrapolated"] = entry["rows"] / notebook["predict_rows_per_s"]
        entry["x_notebook"] = entry["notebook_s_extrapolated"] / entry["wall_s"]
    for profile in report["profiles"].values():
        if "error" in profile:
            continue
        profile["steady_rows_per_s"] = profile["steady_rows"] / profile["steady_forward_s"]
        profile["steady_x_notebook"] = profile["steady_rows_per_s"] / notebook["predict_rows_per_s"]
        profile["e2e_rows_per_s"] = profile["rows"] / profile["wall_s"]
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def markdown(report: dict[str, Any]) -> str:
    notebook, train = report["notebook"], report["train"]
    mode = " (--quick: a smoke run, not a measurement)" if report["quick"] else ""
    lines = [
        f"{notebook['cpu']} ({report['device']}, {report['cpus']} CPUs, torch {notebook['torch']}, "
        f"Python {report['python']}){mode}. Whole commands as subprocesses, start-up included; "
        f"notebook: steady-state rows/s on {notebook['train_rows']} train rows / {notebook['predict_rows']} "
        f"predict rows (median of {len(notebook['train_runs'])}, {notebook['threads']} threads, load "
        + "/".join(str(load["load_1min"]) for load in notebook["load"])
        + "), its time for rulebert's rows extrapolated from those rows/s. Matmul 2048^2 GFLOP/s before / "
        f"after the run: {report['matmul_peak_gflops_before']} / {report['matmul_peak_gflops_after']}.",
        "",
        "| step | command | rows | wall s | rows/s | notebook rows/s | notebook s (extrap.) | x notebook | "
        "target | load before (1 min); cores used (CPU s / wall) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def target(x: float, goal: float) -> str:
        return f"{goal:.0f}x {'met' if x >= goal else 'NOT met'}"

    if train:
        lines.append(
            f"| train ({train['train_rows']} rows x {train['epochs']:g} epochs; int8 ONNX "
            f"{'kept' if train['onnx_int8_written'] else 'NOT kept'}) | `{train['command']}` | "
            f"{train['train_rows'] * train['epochs']:g} | {train['wall_s']:.1f} | "
            f"{train['rows_per_s']:.2f} | "
            f"{notebook['train_rows_per_s']:.2f} | {train['notebook_s_extrapolated']:.0f} | "
            f"{train['x_notebook']:.1f}x | {target(train['x_notebook'], TRAIN_TARGET)} | "
            f"{train['load']['load_1min']}; {train['cores_used']:.2f} |"
        )
    else:
        lines.append(f"| train | (skipped: --model-dir {report['model_dir_given']}) | | | | | | | | |")
    for label, entry in report["predict"].items():
        loads = "/".join(str(load["load_1min"]) for load in entry["load"])
        loads += "; " + "/".join(f"{c:.2f}" for c in entry["cores_used"])
        lines.append(
            f"| predict {label} -> {entry['backend']} (median of {len(entry['walls'])}) | "
            f"`{entry['command']}` | {entry['rows']} | {entry['wall_s']:.2f} | {entry['rows_per_s']:.1f} | "
            f"{notebook['predict_rows_per_s']:.2f} | {entry['notebook_s_extrapolated']:.0f} | "
            f"{entry['x_notebook']:.1f}x | {target(entry['x_notebook'], PREDICT_TARGET)} | {loads} |"
        )
    lines.append("")
    if train:
        check = train["onnx_int8"]
        lines.append(
            f"Training's own `wall_seconds` (metrics.json: reading the CSV to fitted, before saving and "
            f"export): {train['training_wall_seconds']} s; HF train_samples_per_second "
            f"{train['hf_train_samples_per_second']}; validation rows {train['validation_rows']}; "
            f"bf16 {train['bf16']}. int8 check: {json.dumps(check)}."
        )
    if "export_int8_wall_s" in report:
        lines.append(
            f"`rulebert export --int8` (not part of the train row): {report['export_int8_wall_s']:.1f} s."
        )
    lines.append(
        "Agreement with `--backend torch`: "
        + "; ".join(
            f"{label} max |diff| {e['max_abs_diff_vs_torch']:.4f}, Pearson {e['pearson_vs_torch']:.5f}"
            for label, e in report["predict"].items()
            if label != "torch"
        )
        + "."
    )
    for label, profile in report["profiles"].items():
        lines += profile_markdown(label, profile)
    return "\n".join(lines)


def profile_markdown(label: str, profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return ["", f"Profile of `rulebert predict` ({label}) failed: {profile['error']}"]
    wall = profile["wall_s"]
    lines = [
        "",
        f"Profile of one `rulebert predict` ({label}: backend {profile['backend']}, {profile['rows']} rows, "
        f"{profile['tokens']} tokens) in a fresh interpreter, load {profile['load']['load_1min']}:",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in profile["phases"].items():
        lines.append(f"| {name} | {seconds:.3f} | {100 * seconds / wall:.0f}% |")
        if name.startswith("scorer load"):
            for part, part_s in profile["scorer_parts"].items():
                share = 100 * part_s / wall
                if part_s:
                    lines.append(f"| &nbsp;&nbsp;of which {part} | {part_s:.3f} | {share:.0f}% |")
    lines += [
        f"| **total (launch to exit)** | {wall:.3f} | 100% |",
        "",
        f"Hashed at load: {profile['hashed_mb']:.0f} MB of weights/config/tokenizer/calibration (+ the ONNX "
        f"file when it scores). Heavy modules loaded by `import rulebert.cli, rulebert.inference.predict`: "
        f"{', '.join(profile['heavy_after_import']) or 'none'}; by the end: "
        f"{', '.join(profile['heavy_at_end']) or 'none'} (checked: {', '.join(HEAVY_MODULES)}). "
        f"Cross-encoder forward on the comments only, second run (steady state): "
        f"{profile['steady_rows_per_s']:.1f} rows/s "
        f"({profile['steady_x_notebook']:.1f}x notebook) vs end-to-end "
        f"{profile['e2e_rows_per_s']:.1f} rows/s in this profile.",
        "",
        "Slowest top-level imports of that `rulebert predict` (`python -X importtime`, cumulative ms): "
        + ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}" for r in profile["import_offenders"])
        + ".",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
