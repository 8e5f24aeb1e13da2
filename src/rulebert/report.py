"""Human-readable training reports."""

from __future__ import annotations

import os
from typing import Any

from rulebert.config import TrainConfig
from rulebert.files import atomic_write


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
) -> None:
    """A short Markdown report: settings, wall time, validation metrics per epoch."""
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
    lines += ["", "## Validation per epoch", "", epoch_table(metrics.get("epochs", []))]
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
