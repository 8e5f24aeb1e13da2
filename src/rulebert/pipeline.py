"""The competition flow in one call: train on train.csv + test.csv's examples, predict test.csv.

``rulebert run`` reads top to bottom here: :func:`rulebert.training.train.train_model` (rows -> Trainer ->
model dir with calibration and report.html), :func:`predict_file` (Scorer -> submission.csv, also
``rulebert predict``), then a short report.md that points at the model dir's report.html (drawn once, by
training).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import write_csv_atomic
from rulebert.domain.data import BODY, EXAMPLE_COLUMNS, ROW_ID, RULE, SUBREDDIT, read_csv
from rulebert.domain.examples import RuleExamples
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import REPORT_FILE as MODEL_REPORT_FILE
from rulebert.model.report import write_markdown_report

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
SUBMISSION_FILE = "submission.csv"
REPORT_FILE = "report.md"
SUBMISSION_COLUMNS = ("row_id", "rule_violation")


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
    # Imported here: training loads torch and transformers (4.5 s of imports), which `rulebert predict`
    # (predict_file, int8 ONNX) never uses.
    from rulebert.training.train import train_model

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


def pooled_examples(frame: pd.DataFrame) -> dict[str, RuleExamples]:
    """Each rule's example cells pooled over every row of a competition-layout file (majority label for a
    text given with both, ties dropped): a rule's row carries four cells, too few to learn from, while the
    file carries hundreds. Empty when the file has no example columns."""
    if not any(c in frame.columns for c in EXAMPLE_COLUMNS):
        return {}
    from rulebert.domain.rules import rules_from_competition

    return {
        rule.text: RuleExamples.of(rule.positive_examples, rule.negative_examples)
        for rule in rules_from_competition(frame)
    }


def check_submission(submission: pd.DataFrame, sample_path: str | os.PathLike) -> None:
    """Same columns and the same row_ids as the competition's sample submission."""
    sample_path = Path(sample_path)
    try:
        sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise RulebertError(f"{sample_path}: unreadable sample submission ({err})") from None
    if list(sample.columns) != list(submission.columns):
        raise RulebertError(
            f"{sample_path}: submission columns {list(submission.columns)} differ from {list(sample.columns)}"
        )
    ours, theirs = submission["row_id"].astype(str), sample["row_id"].astype(str).str.strip()
    if set(ours) != set(theirs) or len(ours) != len(theirs):
        missing = sorted(set(theirs) - set(ours))[:3]
        extra = sorted(set(ours) - set(theirs))[:3]
        raise RulebertError(
            f"{sample_path}: row_ids differ from the submission (missing {missing}, unexpected {extra})"
        )


def predict_file(
    model_dir: str | os.PathLike,
    test_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    sample_path: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "auto",
    chunk_rows: int = 4096,
) -> pd.DataFrame:
    """Write ``row_id,rule_violation`` for every row of ``test_path`` (same order), atomically.

    Rows are tokenised and scored ``chunk_rows`` at a time: the token lists of a whole 50k-row file as
    Python ints would take several hundred MB. Says on stderr which backend scored (see :class:`Scorer`).
    """
    from tqdm.auto import tqdm

    test = read_csv(test_path, labelled=False, need_row_id=True)
    scorer = Scorer(model_dir, backend=backend)
    logger.info("predict backend: %s", scorer.backend)
    columns = [test[c].tolist() for c in (BODY, RULE, SUBREDDIT)]
    pooled = pooled_examples(test)
    positives = [pooled[rule].positive for rule in columns[1]] if pooled else None
    negatives = [pooled[rule].negative for rule in columns[1]] if pooled else None
    parts = []
    with tqdm(total=len(test), desc="predict", unit="row", disable=not progress) as bar:
        for start in range(0, len(test), chunk_rows):
            window = slice(start, start + chunk_rows)
            parts.append(
                scorer.score(
                    *(c[window] for c in columns),
                    positive_examples=positives[window] if positives else None,
                    negative_examples=negatives[window] if negatives else None,
                )
            )
            bar.update(len(parts[-1]))
    probabilities = np.concatenate(parts)
    submission = pd.DataFrame({"row_id": test[ROW_ID].to_numpy(), "rule_violation": probabilities})
    if sample_path is not None and Path(sample_path).is_file():
        check_submission(submission, sample_path)
    write_csv_atomic(submission, output_path)
    return submission
