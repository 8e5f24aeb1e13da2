"""Training and prediction speed: the competition notebook's pipeline against rulebert's, side by side.

One process, one checkpoint, the same rows and threads for every path:

- notebook: every row the template string padded to 512 tokens, HF ``Trainer`` with default arguments,
  batch 8 (train and predict);
- rulebert: its real code paths: ``train.fit_rows`` (tokenise once, length-grouped batches, dynamic padding,
  bf16 where the TrainConfig's ``auto`` allows) and ``predict.Scorer`` with the torch backend and with the
  ONNX Runtime backends (``rulebert export``, fp32 and int8).

Prints rows/s (median of ``--repeats``), the ratio to the notebook, the useful GFLOP/s (matmul FLOPs of the
encoder on the rows' real, unpadded tokens) and its share of the matmul peak measured in the same run
(2048x2048 ``torch.matmul`` in fp32 and bf16), and the ROC AUC of every prediction path on the same
labelled rows (a fast path must stay within 0.005 of fp32). Markdown table on stdout; ``--json PATH``
saves all numbers.

    python benchmarks/bench_speed.py [--device cpu|cuda] [--rows 256] [--threads N] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

AUC_TOLERANCE = 0.005
NOTEBOOK_MAX_LENGTH = 512
NOTEBOOK_BATCH = 8


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def matmul_peak(device: str, dtype_name: str, repeats: int, n: int = 2048) -> float:
    """GFLOP/s of an n x n matmul (median of repeats, after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 10 if device == "cuda" else 2
    torch.matmul(a, b)
    times = []
    for _ in range(max(repeats, 3)):
        seconds, _ = timed(lambda: [torch.matmul(a, b) for _ in range(inner)], device)
        times.append(seconds / inner)
    return 2 * n**3 / statistics.median(times) / 1e9


def encoder_flops(config: Any, lengths: list[int], training: bool) -> float:
    """Matmul FLOPs of the encoder on rows of these (unpadded) lengths.

    Per token and layer: 2 x (4 H^2 attention projections + 2 H I feed-forward) for the weights, plus
    4 H n for the attention scores and their weighted sum over a row of n tokens. Training: x3
    (forward, and backward for activations and weights).
    """
    layers, hidden = config.num_hidden_layers, config.hidden_size
    weights = 4 * hidden * hidden + 2 * hidden * config.intermediate_size
    n = np.asarray(lengths, dtype=np.float64)
    forward = layers * (2 * weights * n.sum() + 4 * hidden * (n**2).sum())
    return float(forward * (3 if training else 1))


def median_rate(rates: list[float]) -> float:
    return float(statistics.median(rates))


# --------------------------------------------------------------------------------------------- notebook


def notebook_encode(tokenizer: Any, frame: Any, max_length: int = NOTEBOOK_MAX_LENGTH) -> Any:
    """The notebook's input: one template string per row, padded to 512 tokens."""
    from rulebert.domain.text import TEMPLATE

    texts = [
        TEMPLATE.format(subreddit=s, rule=r) + b
        for r, s, b in zip(frame["rule"], frame["subreddit"], frame["body"], strict=True)
    ]
    return tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)


class _Rows:
    """A map-style dataset over a tokenizer output (what the notebook handed the Trainer)."""

    def __init__(self, encoded: Any, labels: Any = None) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encoded.items()}
        if self.labels is not None:
            item["labels"] = int(self.labels[i])
        return item


def notebook_args(work: str, device: str, **kwargs: Any) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=work,
        per_device_train_batch_size=NOTEBOOK_BATCH,
        per_device_eval_batch_size=NOTEBOOK_BATCH,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        **kwargs,
    )


class StepTimer:
    """A Trainer callback that notes when each optimisation step ends (after a device sync).

    The rate it gives leaves out the first step (optimizer set-up, allocator warm-up) and the last (it may
    be a partial batch, and the epoch-end checkpoint follows it): steady-state rows/s, the same way for both
    pipelines. A short benchmark would otherwise be dominated by those one-off costs.
    """

    def __init__(self, device: str) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                sync(timer.device)
                timer.ends.append(time.perf_counter())

        self.device, self.ends, self.callback = device, [], _Callback()

    def rows_per_second(self, batch_size: int) -> float:
        if len(self.ends) < 3:
            raise SystemExit("need at least 3 training steps per pipeline (more rows or --notebook-steps)")
        return (len(self.ends) - 2) * batch_size / (self.ends[-2] - self.ends[0])


def notebook_train(frame: Any, steps: int, device: str, checkpoint: str) -> float:
    """Steady-state training rows/s of the notebook's pipeline over ``steps`` steps (see StepTimer)."""
    from transformers import Trainer

    from rulebert.model.backbones import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint)
    rows = frame.head(steps * NOTEBOOK_BATCH)
    dataset = _Rows(notebook_encode(tokenizer, rows), rows["rule_violation"].to_numpy())
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(
            model=model, args=notebook_args(work, device, max_steps=steps), train_dataset=dataset
        )
        timer = StepTimer(device)
        trainer.add_callback(timer.callback)
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: keep stdout for the table
            trainer.train()
    return timer.rows_per_second(NOTEBOOK_BATCH)


def notebook_predict(model_dir: Path, frame: Any, device: str) -> tuple[float, np.ndarray]:
    """Prediction rows/s of the notebook's pipeline (Trainer.predict on rows padded to 512)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(model=model, args=notebook_args(work, device))

        def run() -> Any:
            return trainer.predict(_Rows(notebook_encode(tokenizer, frame))).predictions

        seconds, logits = timed(run, device)
    probabilities = torch.softmax(torch.as_tensor(logits).float(), dim=-1)[:, 1].numpy()
    return len(frame) / seconds, probabilities


# --------------------------------------------------------------------------------------------- rulebert


def rulebert_train(rows: Any, checkpoint: str, device: str) -> tuple[float, Any]:
    """Steady-state training rows/s of ``train.fit_rows`` over one epoch of ``rows`` (see StepTimer)."""
    from unittest import mock

    from rulebert.core.config import TrainConfig
    from rulebert.training import train

    timer = StepTimer(device)

    class TimedTrainer(train.RulebertTrainer):  # rulebert's own trainer, plus the step timer
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(timer.callback)

    config = TrainConfig(model=checkpoint, epochs=1, val_fraction=0)
    with tempfile.TemporaryDirectory() as work, mock.patch.object(train, "RulebertTrainer", TimedTrainer):
        with contextlib.redirect_stdout(sys.stderr):
            fit = train.fit_rows(config, rows, rows.iloc[0:0], work, progress=False)
    return timer.rows_per_second(config.batch_size), fit


def save_for_prediction(fit: Any, folder: Path, checkpoint: str) -> Path:
    from rulebert.core.config import TrainConfig
    from rulebert.model.model_dir import save_model_dir

    config = TrainConfig(model=checkpoint, epochs=1, val_fraction=0)
    model = fit.model.to("cpu").float()
    save_model_dir(folder, model, fit.tokenizer, config=config, base_model="default", data={}, metrics={})
    return folder


def scorer_predict(scorer: Any, frame: Any, device: str) -> tuple[float, np.ndarray]:
    bodies, rules, subs = (frame[c].tolist() for c in ("body", "rule", "subreddit"))
    seconds, out = timed(lambda: scorer.score(bodies, rules, subs), device)
    return len(frame) / seconds, np.asarray(out)


def make_scorer(model_dir: Path, backend: str, device: str, threads: int) -> Any:
    from rulebert.inference.predict import Scorer

    scorer = Scorer(model_dir, device=device, backend=backend, threads=threads)
    scorer.calibrator = None  # raw scores: every path is compared on the same quantity
    return scorer


# --------------------------------------------------------------------------------------------- main


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(text.split("flags", 1)[1].split("\n", 1)[0].split()) if "flags" in text else set()
    return sorted(f for f in flags if f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--rows", type=int, default=256, help="rows trained on and rows predicted")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--notebook-steps", type=int, default=6, help="notebook training steps (batch 8)")
    parser.add_argument("--notebook-rows", type=int, default=64, help="rows the notebook predicts")
    parser.add_argument("--model", default="default", help="checkpoint both pipelines train from")
    parser.add_argument(
        "--model-dir", type=Path, help="a trained model dir for the prediction/AUC part (copied, not changed)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with train.csv")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.notebook_steps, args.notebook_rows = 48, 1, 3, 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":  # rulebert's trainer and scorer take a GPU when they see one: hide it
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    from transformers.utils import logging

    from rulebert.backend.device import physical_cores
    from rulebert.backend.export import export_onnx
    from rulebert.domain import data as D

    logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    if args.model_dir and not (args.model_dir / "rulebert.json").is_file():
        raise SystemExit(f"{args.model_dir}: not a rulebert model dir")
    data_dir = args.data_dir or D.default_data_dir()
    frame = D.read_csv(data_dir / "train.csv", labelled=True)
    train_frame = frame.iloc[: args.rows].reset_index(drop=True)
    test_frame = frame.iloc[args.rows : 2 * args.rows].reset_index(drop=True)
    train_rows = D.body_rows(train_frame)
    labels = test_frame["rule_violation"].to_numpy()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    log(f"device {device}, {threads} threads, {args.rows} rows, {args.repeats} repeats")
    peak = {dt: matmul_peak(device, dt, args.repeats) for dt in ("float32", "bfloat16")}
    log(f"matmul peak GFLOP/s: {peak}")

    train_rates: dict[str, list[float]] = {"notebook": [], "rulebert": []}
    fit = None
    for repeat in range(args.repeats):  # interleaved, so load changes hit both paths alike
        train_rates["notebook"].append(notebook_train(train_frame, args.notebook_steps, device, args.model))
        rate, fit = rulebert_train(train_rows, args.model, device)
        train_rates["rulebert"].append(rate)
        log(
            f"train repeat {repeat + 1}: "
            + ", ".join(f"{k} {v[-1]:.2f} rows/s" for k, v in train_rates.items())
        )
    bf16_training = bool(fit.trainer.args.bf16)
    from rulebert.backend.device import inference_bf16

    bf16_predict = inference_bf16(device)

    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    try:
        model_dir = work / "model"
        if args.model_dir:
            shutil.copytree(args.model_dir, model_dir, ignore=shutil.ignore_patterns("*.onnx", "onnx.json"))
        else:
            save_for_prediction(fit, model_dir, args.model)
        del fit
        backends = ["torch"]
        if device == "cpu":  # ONNX Runtime runs here on the CPU only
            export_onnx(model_dir)
            export_onnx(model_dir, int8=True)
            backends += ["onnx", "onnx-int8"]
        notebook_frame = test_frame.head(args.notebook_rows)
        predict_rates: dict[str, list[float]] = {"notebook": [], **{b: [] for b in backends}}
        outputs: dict[str, np.ndarray] = {}
        scorers = {}
        for backend in backends:
            if backend == "onnx":  # int8 is preferred when both exist: hide it for the fp32 scorer
                os.rename(model_dir / "model.int8.onnx", work / "int8.onnx")
            scorers[backend] = make_scorer(
                model_dir, "torch" if backend == "torch" else "onnx", device, threads
            )
            if backend == "onnx":
                os.rename(work / "int8.onnx", model_dir / "model.int8.onnx")
            assert scorers[backend].backend == backend, scorers[backend].backend
            scorer_predict(scorers[backend], test_frame.head(8), device)  # warm-up
        for repeat in range(args.repeats):
            rate, outputs["notebook"] = notebook_predict(model_dir, notebook_frame, device)
            predict_rates["notebook"].append(rate)
            for backend, scorer in scorers.items():
                rate, outputs[backend] = scorer_predict(scorer, test_frame, device)
                predict_rates[backend].append(rate)
            log(
                f"predict repeat {repeat + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f} rows/s" for k, v in predict_rates.items())
            )
        config = scorers["torch"].model.config
        rulebert_lengths = [len(f["input_ids"]) for f in scorers["torch"].encode(*_columns(test_frame))]
        train_lengths = [len(f["input_ids"]) for f in scorers["torch"].encode(*_columns(train_frame))]
        tokenizer = scorers["torch"].tokenizer
        notebook_lengths = [sum(m) for m in notebook_encode(tokenizer, test_frame)["attention_mask"]]
        notebook_train_lengths = [sum(m) for m in notebook_encode(tokenizer, train_frame)["attention_mask"]]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def per_row(lengths: list[int], training: bool) -> float:
        return encoder_flops(config, lengths, training) / len(lengths)

    results = []
    base_train, base_predict = median_rate(train_rates["notebook"]), median_rate(predict_rates["notebook"])
    fp32_auc = auc(labels, outputs["torch"])
    rows_spec = [
        (
            "notebook (pad 512, Trainer, batch 8)",
            "notebook",
            "notebook",
            notebook_train_lengths,
            notebook_lengths,
        ),
        (
            # predict_features autocasts to bf16 on a CUDA device that supports it, never on a CPU
            f"rulebert torch ({'bf16' if bf16_training else 'fp32'} train,"
            f" {'bf16' if bf16_predict else 'fp32'} predict)",
            "rulebert",
            "torch",
            train_lengths,
            rulebert_lengths,
        ),
    ]
    rows_spec += [
        (f"rulebert {b} (predict only)", None, b, train_lengths, rulebert_lengths) for b in backends[1:]
    ]
    for label, train_key, predict_key, t_lengths, p_lengths in rows_spec:
        entry: dict[str, Any] = {"path": label}
        if train_key:
            rate = median_rate(train_rates[train_key])
            gflops = rate * per_row(t_lengths, True) / 1e9
            entry.update(train_rows_per_s=rate, train_x=rate / base_train, train_gflops=gflops)
        rate = median_rate(predict_rates[predict_key])
        gflops = rate * per_row(p_lengths, False) / 1e9
        scores = outputs[predict_key]
        entry.update(
            predict_rows_per_s=rate,
            predict_x=rate / base_predict,
            predict_gflops=gflops,
            predict_fp32_peak=gflops / peak["float32"],
            predict_bf16_peak=gflops / peak["bfloat16"],
        )
        if predict_key != "notebook":  # the notebook's template input on fewer rows: its AUC compares nothing
            entry["auc"] = auc(labels, scores)
            entry["auc_delta_vs_fp32"] = entry["auc"] - fp32_auc
            entry["max_abs_diff_vs_fp32"] = float(np.abs(scores - outputs["torch"]).max())
        results.append(entry)

    report = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": threads,
        "rows": args.rows,
        "repeats": args.repeats,
        "notebook_train_rows": args.notebook_steps * NOTEBOOK_BATCH,
        "notebook_predict_rows": len(notebook_frame),
        "matmul_peak_gflops": peak,
        "mean_tokens_rulebert": float(np.mean(rulebert_lengths)),
        "mean_tokens_notebook_unpadded": float(np.mean(notebook_lengths)),
        "torch": torch.__version__,
        "raw": {"train": train_rates, "predict": predict_rates},
        "results": results,
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    bad = [r for r in results if abs(r.get("auc_delta_vs_fp32", 0.0)) > AUC_TOLERANCE]
    for r in bad:
        print(f"AUC of {r['path']} differs from fp32 by more than {AUC_TOLERANCE}", file=sys.stderr)
    return 1 if bad else 0


def _columns(frame: Any) -> tuple[list[str], list[str], list[str]]:
    return frame["body"].tolist(), frame["rule"].tolist(), frame["subreddit"].tolist()


def markdown(report: dict[str, Any]) -> str:
    peak = report["matmul_peak_gflops"]
    lines = [
        f"{report['device_name']} ({report['device']}, {report['threads']} threads, "
        f"torch {report['torch']}); "
        f"{report['rows']} rows of train.csv, median of {report['repeats']}; matmul 2048^2 peak "
        f"{peak['float32']:.0f} GFLOP/s fp32, {peak['bfloat16']:.0f} bf16.",
        "",
        "| path | train rows/s | x notebook | train GFLOP/s | predict rows/s | x notebook | "
        "predict GFLOP/s (% fp32 / bf16 peak) | AUC (delta vs fp32) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        train = (
            f"{r['train_rows_per_s']:.2f} | {r['train_x']:.1f}x | {r['train_gflops']:.0f}"
            if "train_rows_per_s" in r
            else "- | - | -"
        )
        delta = f"{r['auc']:.4f} ({r['auc_delta_vs_fp32']:+.4f})" if "auc" in r else "-"
        lines.append(
            f"| {r['path']} | {train} | {r['predict_rows_per_s']:.1f} | {r['predict_x']:.1f}x | "
            f"{r['predict_gflops']:.0f} ({100 * r['predict_fp32_peak']:.0f}% / "
            f"{100 * r['predict_bf16_peak']:.0f}%) | {delta} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
