"""Human-readable training reports: a short Markdown summary and an HTML page with plots.

The HTML report answers "is this model any good?" at a glance (column AUC, F1 at the recommended
threshold, rows, wall time) and then shows why: per-rule ROC curves, score histograms, a reliability
curve before/after calibration, metrics per epoch and the confusion matrix. ``rulebert evaluate`` uses the
same page and the same ROC plot (with the baseline dashed beside the model).

Plots are drawn on matplotlib ``Figure`` objects directly (no pyplot): no backend is switched and no global
figure state is touched, so a host program's matplotlib settings stay as they were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rulebert.core.config import TrainConfig
from rulebert.core.files import atomic_write, write_csv_atomic
from rulebert.domain.metrics import (
    auc_or_none,
    brier_score,
    column_averaged_auc,
    expected_calibration_error,
    reliability_bins,
)
from rulebert.model.model_dir import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    VALIDATION_SCOPE,
    read_metrics,
)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def epoch_table(epochs: list[dict[str, Any]]) -> str:
    """Validation metrics per epoch as a Markdown table."""
    columns = ["epoch", "loss", "accuracy", "f1", "roc_auc", "col_auc"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in epochs:
        lines.append("| " + " | ".join(_fmt(entry.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown_report(
    path: str | os.PathLike,
    config: TrainConfig,
    metrics: dict[str, Any],
    *,
    submission_rows: int | None = None,
    html_report: str | None = None,
) -> None:
    """A short Markdown report: settings, wall time, validation metrics per epoch (and a link to
    ``html_report``, the page with the plots, when given)."""
    lines = [
        "# rulebert training report",
        "",
        f"- model: `{config.model}`, input `{config.input_format}`, max_length {config.max_length}",
        f"- epochs {config.epochs}, lr {config.lr}, batch {config.batch_size}, seed {config.seed}",
        f"- rows: {metrics.get('train_rows')} train, {metrics.get('validation_rows')} validation",
        f"- wall time: {metrics.get('wall_seconds')} s on {metrics.get('device')}"
        f" ({metrics.get('train_samples_per_second')} train rows/s)",
    ]
    if submission_rows is not None:
        lines.append(f"- submission: {submission_rows} rows")
    if html_report is not None:
        lines.append(f"- plots, calibration and per-rule AUC: [{html_report}]({html_report})")
    lines += ["", "## Validation per epoch", "", epoch_table(metrics.get("epochs", []))]
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


# --- HTML report with plots -------------------------------------------------------------------------------

HTML_FILE = REPORT_FILE
__all__ = ["HTML_FILE", "METRICS_FILE", "PREDICTIONS_FILE", "write_html_report", "write_model_report"]
_PLOT_PREFIX = "report_"


def _short(text: str, width: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _figure(size: tuple[float, float] = (6.4, 4.4)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    return fig, fig.subplots()


def _save(fig: Any, path: str | os.PathLike) -> None:
    """The figure as a PNG at ``path``, written atomically."""
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")


def plot_roc(
    path: str | os.PathLike,
    labels: np.ndarray,
    scores: np.ndarray,
    rules: np.ndarray,
    baseline: np.ndarray | None = None,
) -> None:
    """One ROC curve per rule (those with both classes). With ``baseline`` scores, each rule's baseline
    curve is drawn dashed in the rule's colour; without, all rows pooled are drawn dashed in black."""
    from sklearn.metrics import roc_curve

    labels, rules = np.asarray(labels), np.asarray(rules, dtype=object)
    fig, ax = _figure((7, 5) if baseline is not None else (6.4, 4.4))
    for index, rule in enumerate(dict.fromkeys(rules.tolist())):
        mask = rules == rule
        if len(np.unique(labels[mask])) < 2:
            continue
        colour = f"C{index % 10}"
        curves = [(scores, "-", "model: " if baseline is not None else "")]
        if baseline is not None:
            curves.append((baseline, "--", "baseline: "))
        for values, style, kind in curves:
            if values is None:
                continue
            fpr, tpr, _ = roc_curve(labels[mask], values[mask])
            auc = auc_or_none(labels[mask], values[mask])
            label = f"{kind}{_short(rule, 40)} ({auc:.3f}, n={mask.sum()})"
            ax.plot(fpr, tpr, style, color=colour, lw=1.5, label=label)
    if baseline is None and scores is not None and len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, "k--", lw=1, label=f"all rows ({auc_or_none(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC per rule (AUC, rows)")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_histograms(
    path: Path, labels: np.ndarray, scores: np.ndarray, threshold: float | None, what: str = "Scores"
) -> None:
    """Score distribution of violating vs. non-violating rows: the less they overlap, the better."""
    fig, ax = _figure()
    bins = np.linspace(0, 1, 26)
    for value, name, colour in ((0, "no violation", "tab:blue"), (1, "violation", "tab:red")):
        ax.hist(
            scores[labels == value],
            bins=bins,
            alpha=0.55,
            color=colour,
            label=f"{name} (n={np.sum(labels == value)})",
        )
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score", ylabel="rows", title=f"{what} by true label")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_reliability(
    path: Path, labels: np.ndarray, scores: np.ndarray, calibrated: np.ndarray | None, bins: int = 10
) -> None:
    """Mean predicted probability vs. observed frequency per score bin; the diagonal is perfect."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, label="perfectly calibrated")
    curves = [("raw", scores, "tab:orange")]
    if calibrated is not None:
        curves.append(("calibrated", calibrated, "tab:green"))
    for name, values, colour in curves:
        mean_score, observed, counts = reliability_bins(labels, values, bins)
        label = (
            f"{name} (Brier {brier_score(labels, values):.3f}, "
            f"ECE {expected_calibration_error(labels, values, bins):.3f})"
        )
        ax.plot(mean_score, observed, "o-", color=colour, label=label)
        for x, y, n in zip(mean_score, observed, counts, strict=True):
            ax.annotate(str(n), (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points", color=colour)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.02, 1.02),
        xlabel="mean predicted probability (bin)",
        ylabel="fraction that violate",
        title="Reliability (numbers: rows per bin)",
    )
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def plot_epochs(path: Path, epochs: list[dict[str, Any]]) -> None:
    """Validation metrics (left axis) and loss (right axis) per epoch."""
    fig, ax = _figure()
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    for name in ("accuracy", "f1", "roc_auc", "col_auc"):
        ax.plot(x, [e.get(name, np.nan) for e in epochs], "o-", label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel="validation metric", title="Validation per epoch")
    loss_axis = ax.twinx()
    loss_axis.plot(x, [e.get("loss", np.nan) for e in epochs], "s--", color="0.4", label="loss (right)")
    loss_axis.set_ylabel("validation loss")
    lines = ax.get_legend_handles_labels()
    extra = loss_axis.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="best")
    _save(fig, path)


def plot_confusion(path: Path, matrix: np.ndarray, threshold: float) -> None:
    """2x2 counts of (true label, predicted label) at ``threshold``."""
    fig, ax = _figure()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, f"{count}\n{count / max(matrix.sum(), 1):.1%}", ha="center", va="center", color=colour)
    names = ["no violation", "violation"]
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix at threshold {threshold:.3f}",
    )
    _save(fig, path)


def _tile(name: str, value: str, hint: str = "") -> str:
    return (
        f'<div class="tile"><div class="v">{value}</div><div class="n">{name}</div>'
        f'<div class="h">{hint}</div></div>'
    )


def write_html_report(
    output_dir: str | os.PathLike,
    title: str,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    rules: Sequence[str] | np.ndarray,
    *,
    calibrated: Sequence[float] | np.ndarray | None = None,
    epochs: list[dict[str, Any]] | None = None,
    threshold: float | None = None,
    wall_seconds: float | None = None,
    details: dict[str, Any] | None = None,
    kept_epoch: float | None = None,
    note: str | None = None,
) -> Path:
    """Write ``output_dir/report.html`` and its PNGs (``report_*.png``) for (label, score, rule) rows.

    ``scores`` are the raw model scores; ``calibrated`` the same rows after calibration (the reliability
    plot then shows both, and the threshold / confusion matrix use them). ``threshold`` defaults to 0.5.
    ``details`` adds rows (name -> value) to the settings table; ``kept_epoch`` is the epoch whose weights
    were kept (said under the epoch plot); ``note`` is a paragraph under the title. Everything is drawn
    into a temp dir first and moved into place with report.html last, so a failing plot leaves no new or
    half-written report.
    """
    import html
    import shutil
    import tempfile

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    rules = np.asarray(rules, dtype=object)
    final = None if calibrated is None else np.asarray(calibrated, dtype=np.float64)
    decided = final if final is not None else scores
    threshold = 0.5 if threshold is None else float(threshold)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    predicted = (decided >= threshold).astype(int)
    matrix = np.array([[np.sum((labels == t) & (predicted == p)) for p in (0, 1)] for t in (0, 1)])
    true_pos, false_pos, false_neg = matrix[1, 1], matrix[0, 1], matrix[1, 0]
    f1 = 2 * true_pos / max(2 * true_pos + false_pos + false_neg, 1)
    col_auc, per_rule = column_averaged_auc(labels, scores, rules) if len(labels) else (float("nan"), {})
    tiles = [
        _tile("column-averaged AUC", _fmt(col_auc), "the competition metric; 0.5 is chance, 1 perfect"),
        _tile(
            f"F1 at threshold {threshold:.3f}",
            _fmt(float(f1)),
            f"precision/recall balance on {len(labels)} rows",
        ),
        _tile(
            "validation rows",
            str(len(labels)),
            f"{int(labels.sum())} violate, {len(per_rule)} rules with AUC",
        ),
        _tile(
            "wall time",
            "-" if wall_seconds is None else f"{wall_seconds:.0f} s",
            "training, incl. evaluation",
        ),
    ]

    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".report-"))
    sections: list[tuple[str, str, str]] = []  # (heading, png name, caption)
    try:
        if len(labels):
            plots = [
                (
                    "ROC per rule",
                    "roc",
                    lambda p: plot_roc(p, labels, scores, rules),
                    "Each rule's ranking quality; the mean of these AUCs is the competition score.",
                ),
                (
                    "Scores by label",
                    "histogram",
                    lambda p: plot_histograms(
                        p, labels, decided, threshold, "Scores" if final is None else "Calibrated scores"
                    ),
                    "Scores the model answers with" + (" (calibrated)." if final is not None else "."),
                ),
                (
                    "Calibration",
                    "reliability",
                    lambda p: plot_reliability(p, labels, scores, final),
                    "Points on the diagonal mean a score of 0.8 is right 80% of the time.",
                ),
                (
                    "Confusion matrix",
                    "confusion",
                    lambda p: plot_confusion(p, matrix, threshold),
                    "Counts at the recommended threshold.",
                ),
            ]
        else:
            plots = []
        if epochs:
            plots.append(
                (
                    "Metrics per epoch",
                    "epochs",
                    lambda p: plot_epochs(p, epochs),
                    "Validation metrics after each epoch"
                    + (f"; the model keeps epoch {kept_epoch:g}." if kept_epoch is not None else "."),
                )
            )
        for heading, name, draw, caption in plots:
            png = f"{_PLOT_PREFIX}{name}.png"
            draw(staging / png)
            sections.append((heading, png, caption))

        esc = html.escape
        rule_rows = "".join(
            f"<tr><td>{esc(str(rule))}</td><td>{int(np.sum(rules == rule))}</td>"
            f"<td>{int(labels[rules == rule].sum())}</td>"
            f"<td>{_fmt(per_rule.get(rule, float('nan')))}</td></tr>"
            for rule in dict.fromkeys(rules.tolist())
        )
        detail_rows = "".join(
            f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in (details or {}).items()
        )
        figures = "".join(
            f'<section><h2>{esc(h)}</h2><img src="{esc(png)}" alt="{esc(h)}"><p>{esc(c)}</p></section>'
            for h, png, c in sections
        )
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
.tiles {{ display: flex; gap: 1em; flex-wrap: wrap; }}
.tile {{ border: 1px solid #ccc; border-radius: 6px; padding: .7em 1em; min-width: 200px; flex: 1; }}
.tile .v {{ font-size: 2em; font-weight: bold; }} .tile .h {{ color: #666; font-size: .85em; }}
section {{ display: inline-block; vertical-align: top; width: 48%; margin: .5em 1%; }}
section img {{ width: 100%; }} table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; }}
</style></head><body>
<h1>{esc(title)}</h1>
{f"<p>{esc(note)}</p>" if note else ""}
<div class="tiles">{"".join(tiles)}</div>
{"<p><b>No validation rows: nothing to plot.</b></p>" if not len(labels) else ""}
{figures}
<h2>Per rule (validation)</h2>
<table><tr><th>rule</th><th>rows</th><th>violations</th><th>AUC</th></tr>{rule_rows}</table>
{f"<h2>Details</h2><table>{detail_rows}</table>" if detail_rows else ""}
</body></html>
"""
        (staging / HTML_FILE).write_text(page, encoding="utf-8")
        for _, png, _ in sections:
            os.replace(staging / png, output_dir / png)
        os.replace(staging / HTML_FILE, output_dir / HTML_FILE)  # last: the page appears only when whole
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir / HTML_FILE


def write_predictions_csv(
    path: str | os.PathLike,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    rules: Sequence[str] | np.ndarray,
    calibrated: Sequence[float] | np.ndarray | None = None,
) -> Path:
    """``rule,label,score,calibrated`` per validation row (no comment text), atomically."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "rule": np.asarray(rules, dtype=object),
            "label": np.asarray(labels).astype(int),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    frame["calibrated"] = frame["score"] if calibrated is None else np.asarray(calibrated, dtype=np.float64)
    return write_csv_atomic(frame, path)


def write_model_report(model_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """report.html for a trained model dir, from its ``validation_predictions.csv`` and ``metrics.json``."""
    import pandas as pd

    model_dir = Path(model_dir)
    metrics = read_metrics(model_dir)
    path = model_dir / PREDICTIONS_FILE
    frame = (
        pd.read_csv(path, dtype={"rule": str}, keep_default_na=False)
        if path.is_file()
        else pd.DataFrame({"rule": [], "label": [], "score": [], "calibrated": []})
    )
    calibration = metrics.get("calibration") or {}
    details = {
        "model dir": str(model_dir),
        "device": metrics.get("device"),
        "train rows": metrics.get("train_rows"),
        "train rows/s": metrics.get("train_samples_per_second"),
        "calibration": calibration.get("method") if calibration.get("fitted") else calibration.get("reason"),
        **{k: v for k, v in calibration.items() if k.startswith(("brier", "ece"))},
    }
    return write_html_report(
        output_dir if output_dir is not None else model_dir,
        f"rulebert report: {model_dir.name}",
        frame["label"].to_numpy(),
        frame["score"].to_numpy(),
        frame["rule"].to_numpy(),
        calibrated=frame["calibrated"].to_numpy() if calibration.get("fitted") else None,
        epochs=metrics.get("epochs"),
        threshold=metrics.get("threshold"),
        wall_seconds=metrics.get("wall_seconds"),
        details=details,
        kept_epoch=(metrics.get("validation") or {}).get("epoch"),
        note=VALIDATION_SCOPE,
    )
