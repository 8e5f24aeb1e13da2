"""Fine-tune a checkpoint on labelled (text, rule) rows with the Hugging Face ``Trainer``.

The whole path, in order (see :func:`train_model`):
read CSVs -> labelled rows (bodies + example cells, de-duplicated) -> split grouped by text ->
checkpoint with a fresh binary head -> tokenise once, unpadded -> Trainer (length-grouped batches, dynamic
padding, evaluation + checkpoint each epoch, the last or best epoch kept) -> model dir with ``rulebert.json``.

The Trainer is what makes this scale: the same code runs on a laptop CPU, one GPU with bf16, or many GPUs
and nodes under ``torchrun`` / ``accelerate launch``, and it can resume from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from rulebert.backend.batching import violation_probability
from rulebert.backend.device import training_bf16
from rulebert.backend.torch_backend import predict_features
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import write_json_atomic
from rulebert.domain import data as D
from rulebert.domain.calibration import CalibratedValidation, calibrate_fit
from rulebert.domain.metrics import classification_metrics, learning_failure
from rulebert.domain.text import encode_frame
from rulebert.model.backbones import embedder_checkpoint, load_checkpoint, resolve_checkpoint
from rulebert.model.model_dir import (
    CALIBRATION_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    check_output_dir,
    read_record,
    save_model_dir,
)
from rulebert.model.report import write_model_report, write_predictions_csv
from rulebert.training.checkpoints import (
    SaveEveryStepsCallback,
    claim_checkpoints,
    clear_checkpoints,
    complete_checkpoints,
    resume_checkpoint,
    written_by_rulebert,
)
from rulebert.training.rows import prepare_rows, rows_digest, select_training_rules
from rulebert.training.trainer import RowDataset, RulebertTrainer

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """A fine-tuned model in memory, with what :func:`fit_rows` measured."""

    model: Any
    tokenizer: Any
    trainer: Trainer
    metrics: dict[str, Any]
    val_rows: pd.DataFrame
    """The validation rows, in the order the trainer evaluated them (sorted by length)."""
    val_features: list[dict[str, list[int]]]
    """``val_rows`` tokenised, in the same order."""


def fit_rows(
    config: TrainConfig,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    work_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    fresh_head: bool = True,
    callbacks: list[Any] | None = None,
) -> FitResult:
    """Fine-tune ``config.model`` on labelled rows (``data.TEXT``, ``RULE``, ``SUBREDDIT``, ``LABEL``).

    Evaluates on ``val_rows`` each epoch (if any) and keeps the last epoch, or with ``keep="best"`` the
    best by column-averaged AUC.
    Trainer checkpoints go to ``work_dir/checkpoints``. Nothing else is written. ``fresh_head=False`` keeps
    the checkpoint's classification head (adapting a trained rulebert model); ``callbacks`` go to the Trainer.
    """
    started = time.perf_counter()
    work_dir = Path(work_dir)
    set_seed(config.seed)  # before the head is created, so its initial weights are reproducible
    model, tokenizer = load_checkpoint(config.model, fresh_head=fresh_head)
    # Evaluation reads rows in order: sort them by length so its batches need little padding.
    val_rows = val_rows.iloc[np.argsort(val_rows[D.TEXT].str.len().to_numpy(), kind="stable")]
    train_set = RowDataset(encode_frame(tokenizer, train_rows, config), train_rows[D.LABEL].to_numpy())
    val_set = RowDataset(encode_frame(tokenizer, val_rows, config), val_rows[D.LABEL].to_numpy())
    val_rules = val_rows[D.RULE].to_numpy()
    has_val = len(val_set) > 0

    def compute_metrics(prediction: Any) -> dict[str, float]:
        probabilities = violation_probability(prediction.predictions)
        metrics = classification_metrics(prediction.label_ids, probabilities, val_rules)
        # The loss as the mean over the rows, in place of the Trainer's (a mean of batch means, which under
        # torchrun counts the rows repeated to pad the last batch, whose predictions it does drop).
        logits, labels = np.asarray(prediction.predictions, dtype=np.float64), prediction.label_ids
        losses = np.logaddexp(logits[:, 0], logits[:, 1]) - logits[np.arange(len(labels)), labels]
        return {**{k: v for k, v in metrics.items() if isinstance(v, float)}, "loss": float(losses.mean())}

    on_gpu = torch.cuda.is_available()
    use_bf16 = training_bf16(config.bf16)
    # Told use_cpu, transformers runs bf16 autocast on a CPU, and under torchrun / accelerate launch without
    # CUDA forms a gloo process group: without it each process would train alone, all of them as rank 0.
    use_cpu = not on_gpu and (use_bf16 or int(os.environ.get("WORLD_SIZE", "1")) > 1)
    args = TrainingArguments(
        output_dir=str(work_dir / CHECKPOINT_DIR),
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(64, config.batch_size),
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16,
        use_cpu=use_cpu,
        train_sampling_strategy="group_by_length",  # similar lengths share a batch: less padding
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=has_val and config.keep == "best",
        metric_for_best_model="col_auc" if has_val and config.keep == "best" else None,
        greater_is_better=True,
        # The training loss every 5% of the steps (a share, so short and long runs log alike): a run whose
        # loss sits at ln 2 shows it in the first minutes, not only in the epoch's evaluation.
        logging_strategy="steps",
        logging_steps=0.05,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
    )
    if args.distributed_state is not None:  # (the process group is up: TrainingArguments started it)
        # Under torchrun every process is past train_model's checks of the output dir before rank 0 writes
        # into it: the Trainer makes the checkpoints folder, and rank 0 claims it below.
        args.distributed_state.wait_for_everyone()
    trainer = RulebertTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set if has_val else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu else None),
        compute_metrics=compute_metrics if has_val else None,
        callbacks=[
            *(callbacks or []),
            *([SaveEveryStepsCallback(config.save_steps)] if config.save_steps else []),
        ],
        checkpoint_record={
            "config": config.to_dict(),
            "data": {"train_rows": rows_digest(train_rows), "val_rows": rows_digest(val_rows)},
            "world_size": args.world_size,  # other process counts batch (and so resume) differently
        },
    )
    checkpoint = None
    # Under torchrun only rank 0 changes the checkpoints folder; the others look for a checkpoint to resume
    # once it is done.
    with args.main_process_first(local=False, desc="claiming the checkpoints folder"):
        if trainer.is_world_process_zero():  # fresh: no stale checkpoints to mix in (only rulebert's go)
            claim_checkpoints(args.output_dir, fresh=not resume)
        if resume:  # the newest checkpoint marked complete; half-written ones are deleted
            checkpoint = resume_checkpoint(
                args.output_dir, trainer.checkpoint_record, cleanup=trainer.is_world_process_zero()
            )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started

    epochs = [
        {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
        for entry in trainer.state.log_history
        if "eval_loss" in entry
    ]

    def col_auc(entry: dict[str, Any]) -> float:
        return float(np.nan_to_num(entry.get("col_auc", np.nan), nan=-1.0))

    kept = None if not epochs else max(epochs, key=col_auc) if config.keep == "best" else epochs[-1]
    log = trainer.state.log_history
    metrics = {
        "validation": kept,
        "epochs": epochs,
        "train_rows": len(train_set),
        "validation_rows": len(val_set),
        "wall_seconds": round(train_seconds, 1),
        "train_samples_per_second": next(
            (e["train_samples_per_second"] for e in log if "train_samples_per_second" in e), None
        ),
        "device": "cuda" if on_gpu else "cpu",
        "bf16": use_bf16,  # what --bf16 auto resolved to on this machine
        "world_size": trainer.args.world_size,  # processes trained together (torchrun / accelerate launch)
    }
    # Drop accelerate's autocast wrapper: from here on the model scores as a Scorer would (predict_features
    # applies bf16 itself where the device calls for it).
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return FitResult(model, tokenizer, trainer, metrics, val_rows, val_set.features)


def fit_selected(
    config: TrainConfig,
    rows: pd.DataFrame,
    work_dir: str | os.PathLike,
    *,
    target_rules: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """The one path from labelled rows to a fitted model, shared by :func:`train_model` and evaluation:
    select the rows to train on (``train_rules="target"``: only ``target_rules``' rows, when given;
    :func:`train_model` selected them in :func:`prepare_rows` already), hold a validation split out (grouped
    by text), fine-tune (:func:`fit_rows`)."""
    if target_rules is not None:
        rows = select_training_rules(rows, target_rules, config)
    train_rows, val_rows = D.grouped_split(rows, config.val_fraction, config.seed)
    return fit_rows(config, train_rows, val_rows, work_dir, resume=resume, progress=progress)


def _calibrate_validation(fit: FitResult, method: str) -> CalibratedValidation:
    """Score the validation rows with the kept model; fit the calibrator and threshold on them."""
    val, features = fit.val_rows, fit.val_features
    scores = predict_features(fit.model, fit.tokenizer, features, progress=False) if features else np.zeros(0)
    return calibrate_fit(fit.metrics, val[D.LABEL].to_numpy(), scores, val[D.RULE].to_numpy(), method)


def _write_validation_report(calibrated: CalibratedValidation, model_dir: Path) -> None:
    """``validation_predictions.csv`` and ``report.html`` into a saved model dir.

    The model is already saved and is the point of training, so a report that fails to draw is a warning,
    not an error (and leaves no partial report behind).
    """

    write_predictions_csv(
        model_dir / PREDICTIONS_FILE,
        calibrated.labels,
        calibrated.scores,
        calibrated.rules,
        calibrated.calibrated,
    )
    try:
        write_model_report(model_dir)
    except Exception as err:  # any plotting failure: the model itself is fine
        logger.warning("%s: report.html not written (%s)", model_dir, err)


def export_embedder_or_warn(model_dir: Path, base_model: str) -> None:
    """The base checkpoint's sentence embedder into the model dir, for rules scored with their examples.
    A failure is a warning: the model is saved, and examples are then learnt from TF-IDF alone."""

    from rulebert.backend.export import export_embedder

    try:
        export_embedder(model_dir, base_model)
    except Exception as err:  # an exporter or quantiser problem must not lose a trained model
        logger.warning("%s: embedder not exported (%s)", model_dir, err)


def train_model(
    config: TrainConfig,
    train_path: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    *,
    decisions_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    keep_checkpoints: bool = False,
    progress: bool = True,
    calibration: str = "platt",
    export_embedder: bool = True,
    export_int8: bool = True,
) -> TrainResult:
    """Train on ``train_path`` (+ the example columns of ``test_path``, + the moderators' decisions of the
    ``decisions_path`` folder); save the model to ``output_dir``.

    With validation rows, ``calibration`` ("platt", "isotonic" or "none") is fitted on them and saved as
    ``calibration.json``; metrics.json gets the F1-best ``threshold``; report.html is written beside.
    """
    started = time.perf_counter()
    output_dir, checkpoint_dir = Path(output_dir), Path(output_dir) / CHECKPOINT_DIR
    if output_dir.exists() and not output_dir.is_dir():
        raise RulebertError(f"{output_dir}: exists and is not a directory")
    if not written_by_rulebert(checkpoint_dir):  # even with --overwrite: rulebert would write into it
        raise RulebertError(
            f"{checkpoint_dir}: not rulebert's checkpoints, and rulebert keeps its training checkpoints "
            "there; move it away or choose another --output-dir"
        )
    has_run = checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir())  # rulebert's (checked above)
    foreign = output_dir.is_dir() and any(output_dir.iterdir()) and not has_run
    if foreign and not overwrite and read_record(output_dir) is None:  # only --overwrite writes into it
        raise RulebertError(
            f"{output_dir}: not empty and holds no rulebert model or run; choose a new or empty "
            "--output-dir, or pass --overwrite to save the model into it (its other files are kept)"
        )
    rows, fingerprint = prepare_rows(config, train_path, test_path, decisions_path)
    if not overwrite and not resume:
        check_output_dir(output_dir, config, fingerprint)
        if read_record(output_dir) is None and complete_checkpoints(output_dir / CHECKPOINT_DIR):
            raise RulebertError(
                f"{output_dir}: holds checkpoints of an unfinished run; pass --resume to continue it "
                "or --overwrite to start over"
            )
    base_model = resolve_checkpoint(config.model)
    if export_embedder:
        embedder_checkpoint(config, base_model)  # a missing --embedder fails now, not after training
    fit = fit_selected(config, rows, output_dir, resume=resume, progress=progress)
    fit.metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    if fit.trainer.is_world_process_zero():
        save_fit(
            fit,
            output_dir,
            config=config,
            base_model=base_model,
            data=fingerprint,
            calibration=calibration,
            export_embedder=export_embedder,
            export_int8=export_int8,
        )
        if not keep_checkpoints:
            clear_checkpoints(checkpoint_dir)
    fit.trainer.accelerator.wait_for_everyone()  # under torchrun all processes return once the model is saved
    return TrainResult(output_dir=output_dir, metrics=fit.metrics)


def save_fit(
    fit: FitResult,
    output_dir: Path,
    *,
    config: TrainConfig,
    base_model: str,
    data: dict[str, Any],
    calibration: str = "platt",
    export_embedder: bool = True,
    export_int8: bool = True,
    inherited: tuple[Any, dict[str, Any]] | None = None,
) -> None:
    """Everything after fine-tuning, shared by :func:`train_model` and :mod:`rulebert.training.adapt`:
    calibrate on
    the validation rows, save the model dir, write its validation report, add the sentence embedder.

    ``inherited``: (calibration.json payload or None, metrics entries) of the model this one was adapted
    from, used when there are no validation rows to calibrate on.
    """
    metrics = fit.metrics
    calibrated = _calibrate_validation(fit, calibration)  # adds metrics threshold, calibration
    losses = [e["loss"] for e in fit.trainer.state.log_history if "loss" in e]
    failure = learning_failure(metrics.get("validation"), losses, calibrated.scores)
    metrics["train_loss"] = losses[-1] if losses else None
    metrics["learned"] = failure is None  # False: the CLI exits with EXIT_NOT_LEARNED (the dir is kept)
    if failure is not None:
        metrics["not_learned"] = failure
    calibration_file = calibrated.calibrator_json
    if inherited is not None and calibrated.calibrator is None:
        calibration_file = inherited[0]
        metrics.update(inherited[1])
    save_model_dir(
        output_dir,
        fit.trainer.model,
        fit.tokenizer,
        config=config,
        base_model=base_model,
        data=data,
        metrics=metrics,
        extra_files={CALIBRATION_FILE: calibration_file} if calibration_file else None,
    )
    if len(calibrated.labels) or inherited is None:  # an adapted model without validation rows: no report
        _write_validation_report(calibrated, output_dir)
    if export_embedder:
        export_embedder_or_warn(output_dir, embedder_checkpoint(config, base_model))
    if export_int8:
        metrics["onnx_int8"] = _export_int8(fit, calibrated, output_dir)
        write_json_atomic(output_dir / METRICS_FILE, metrics)  # metrics.json is not hashed: safe to add to


def _export_int8(fit: FitResult, calibrated: CalibratedValidation, model_dir: Path) -> dict[str, Any]:
    """``model.int8.onnx``, kept only if it ranks the validation rows as the torch model does (see
    :func:`rulebert.backend.export.export_int8_checked`); without validation rows, up to 512 training rows
    (the
    check is of the int8 copy's fidelity, not of generalisation). A failure is a warning: scoring then
    runs the torch model."""

    from rulebert.backend.export import export_int8_checked

    features, labels, rules, scores = fit.val_features, calibrated.labels, calibrated.rules, calibrated.scores
    if not features:
        train_set = fit.trainer.train_dataset
        features, labels = train_set.features[:512], train_set.labels[:512]
        rules = np.zeros(len(features))  # one column: the check needs the ranking, not the rule split
        scores = predict_features(fit.model, fit.tokenizer, features, progress=False)
    try:
        check = export_int8_checked(model_dir, features, scores, labels, rules)
    except Exception as err:  # an exporter or quantiser problem must not lose a trained model
        check = {"written": False, "reason": " ".join(str(err).split())[:300]}
    if not check["written"]:
        logger.warning(
            "%s: model.int8.onnx not exported (%s); scoring uses torch", model_dir, check["reason"]
        )
    return check
