"""The competition flow in one call: train on train.csv + test.csv's examples, predict test.csv.

``rulebert run`` reads top to bottom here: :func:`rulebert.training.train.train_model` (rows -> Trainer ->
model dir
with calibration and report.html), :func:`rulebert.inference.predict.predict_file` (Scorer ->
submission.csv), then a
short report.md that points at the model dir's report.html (drawn once, by training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import predict_file
from rulebert.model.model_dir import REPORT_FILE as MODEL_REPORT_FILE
from rulebert.model.report import write_markdown_report
from rulebert.training.train import train_model

MODEL_SUBDIR = "model"
SUBMISSION_FILE = "submission.csv"
REPORT_FILE = "report.md"


def run_competition(
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    export_int8: bool = True,
) -> dict[str, Any]:
    """Train on DATA/train.csv (+ DATA/test.csv's examples); write OUT/submission.csv and OUT/report.md.

    The model goes to OUT/model, with its report.html. The submission is checked against
    DATA/sample_submission.csv if present.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    train_path, test_path = data_dir / "train.csv", data_dir / "test.csv"
    for path in (train_path, test_path):
        if not path.is_file():
            raise RulebertError(f"{path}: file not found (is --data-dir the competition folder?)")
    result = train_model(
        config,
        train_path,
        output_dir / MODEL_SUBDIR,
        test_path,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        export_int8=export_int8,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 alone scores and writes the outputs
        return {"model_dir": str(result.output_dir), "submission": None, **result.metrics}
    # The model dir now holds a new model: an older run's submission and report no longer describe it, and
    # must not survive if scoring fails below (a stale submission.csv looks like this run's result).
    for stale in (SUBMISSION_FILE, REPORT_FILE):
        (output_dir / stale).unlink(missing_ok=True)
    submission = predict_file(
        result.output_dir,
        test_path,
        output_dir / SUBMISSION_FILE,
        sample_path=data_dir / "sample_submission.csv",
        progress=progress,
    )
    write_markdown_report(
        output_dir / REPORT_FILE,
        config,
        result.metrics,
        submission_rows=len(submission),
        html_report=f"{MODEL_SUBDIR}/{MODEL_REPORT_FILE}",
    )
    return {
        "model_dir": str(result.output_dir),
        "submission": str(output_dir / SUBMISSION_FILE),
        **result.metrics,
    }
