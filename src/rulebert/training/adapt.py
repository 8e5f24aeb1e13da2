"""Adaptation: a trained model dir, fine-tuned further on new rules' labelled examples, into a new model dir.

This is the competition recipe as a product operation: ``rulebert run`` wins on rules train.csv never shows
by fine-tuning on the test file's example comments; ``adapt`` does the same for a moderator's rules
(RULES.jsonl, the server's stored rules, or a competition-layout test file), starting from an already
trained model (its weights *and* its classification head) with that model's own settings.

The result is a complete model dir like any other (verifiable, servable, exportable). Its ``rulebert.json``
says which model it was adapted from (name and weight hashes) and on which rules; the adapted rules then
score in mode ``trained``. With few examples there is nothing to hold out: all of them are trained on, and
the source model's calibration and threshold are kept (``metrics.json`` says so).

Nothing half-written: the model dir is assembled in a sibling staging folder and renamed into place.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.domain.rules import StoredRule, check_adaptable, example_frame
from rulebert.model.backbones import embedder_checkpoint
from rulebert.model.model_dir import (
    CALIBRATION_FILE,
    find_embedder,
    lineage_root,
    read_metrics,
    read_onnx_record,
    record_onnx,
    verify_model_dir,
)
from rulebert.training.train import FitResult, export_embedder_or_warn, fit_rows, save_fit

MIN_VALIDATION_ROWS = 40
"""Below this many held-out rows a validation split measures nothing: train on every example instead."""

Progress = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], what is happening)."""


@dataclass
class AdaptResult:
    output_dir: Path
    metrics: dict[str, Any]
    rules: list[StoredRule]


class _ReportProgress(TrainerCallback):
    def __init__(self, report: Progress) -> None:
        self.report = report

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps:
            self.report(
                0.05 + 0.85 * state.global_step / state.max_steps, f"training step {state.global_step}"
            )


def _prepare_output(output_dir: Path, source_dir: Path, overwrite: bool) -> None:
    if output_dir.resolve() == source_dir.resolve():
        raise RulebertError(
            f"{output_dir}: --output-dir must differ from --model-dir (adapting writes a new model)"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise RulebertError(f"{output_dir}: exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise RulebertError(f"{output_dir}: not empty; choose a new --output-dir or pass --overwrite")


def _lineage(
    source_dir: Path, record: dict[str, Any], rules: Sequence[StoredRule], rows: int
) -> dict[str, Any]:
    """The ``data`` entry of the adapted model's rulebert.json."""
    source_data = record.get("data") if isinstance(record.get("data"), dict) else {}
    earlier = [r for r in source_data.get("rules") or [] if isinstance(r, str)]
    return {
        "adapted_from": {
            "model": source_dir.name,
            "weights_sha256": record.get("weights_sha256"),
            "created": record.get("created"),
            "rules": earlier,
            "root": lineage_root(record),
        },
        "adapted_rules": [
            {
                "id": rule.id,
                "text": rule.text,
                "positive_examples": len(rule.positive_examples),
                "negative_examples": len(rule.negative_examples),
            }
            for rule in rules
        ],
        "rows": rows,
        "rules": sorted(set(earlier) | {rule.text for rule in rules}),  # scored in mode "trained"
    }


def _inherited(source_dir: Path) -> tuple[Any, dict[str, Any]]:
    import json

    metrics = read_metrics(source_dir)
    path = source_dir / CALIBRATION_FILE
    calibration = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    kept = {k: metrics[k] for k in ("threshold", "calibration") if k in metrics}
    return calibration, {**kept, "calibration_inherited_from": source_dir.name}


def _add_embedder(source_dir: Path, model_dir: Path, base_model: str) -> None:
    """The sentence embedder is never fine-tuned: copy the source's (its folder, or the top-level file of
    older model dirs with the tokenizer, which adapting keeps), else export one from ``base_model``."""
    source = find_embedder(source_dir)
    if source is not None:
        key = source.relative_to(source_dir).as_posix()
        entry = {k: v for k, v in read_onnx_record(source_dir)[key].items() if k != "sha256"}
        if source.parent == source_dir:
            shutil.copyfile(source, model_dir / key)
        else:
            shutil.copytree(source.parent, model_dir / source.parent.name, dirs_exist_ok=True)
        record_onnx(model_dir, model_dir / key, entry)
    else:
        export_embedder_or_warn(model_dir, base_model)


def adapt_model(
    model_dir: str | os.PathLike,
    rules: Sequence[StoredRule],
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_progress: Progress | None = None,
    export_int8: bool = True,
) -> AdaptResult:
    """Fine-tune the model in ``model_dir`` on ``rules``' examples; write the adapted one to
    ``output_dir``."""
    source_dir, output_dir = Path(model_dir), Path(output_dir)
    report = on_progress or (lambda fraction, message: None)
    check_adaptable(rules)
    _prepare_output(output_dir, source_dir, overwrite)
    record = verify_model_dir(source_dir)  # a tampered or unfinished source is refused before any work
    config = TrainConfig.from_dict(record["config"])
    rows = example_frame(rules)
    held_out = config.val_fraction if len(rows) * config.val_fraction >= MIN_VALIDATION_ROWS else 0.0
    config = dataclasses.replace(config, val_fraction=held_out)
    train_rows, val_rows = D.grouped_split(rows, held_out, config.seed)
    report(0.02, f"fine-tuning on {len(train_rows)} examples of {len(rules)} rules")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".adapting-{output_dir.name}-"))
    try:
        fit: FitResult = fit_rows(
            dataclasses.replace(config, model=str(source_dir)),
            train_rows,
            val_rows,
            staging,
            progress=progress,
            fresh_head=False,
            callbacks=[_ReportProgress(report)],
        )
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        report(0.92, "saving the adapted model")
        base_model = str(record.get("base_model") or config.model)
        fit.metrics["adapted"] = {"from": source_dir.name, "rules": [r.id for r in rules], "rows": len(rows)}
        save_fit(
            fit,
            staging,
            config=config,
            base_model=base_model,
            data=_lineage(source_dir, record, rules, len(rows)),
            export_embedder=False,
            export_int8=export_int8,
            inherited=_inherited(source_dir),
        )
        _add_embedder(source_dir, staging, embedder_checkpoint(config, base_model))
        verify_model_dir(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(1.0, "done")
    return AdaptResult(output_dir, fit.metrics, list(rules))
