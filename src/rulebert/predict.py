"""Score comments with a trained model dir (:class:`Scorer`) and write a competition submission.

:class:`Scorer` is the one inference entry point: it verifies the model dir, picks a backend
(:mod:`rulebert.backends`: the exported ONNX file on a CPU, else torch), tokenises (rule, comment) rows the
way the model was trained, scores them and applies the model dir's calibration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.backends import BACKENDS, OnnxBackend, TorchBackend, gpu_present
from rulebert.config import TrainConfig
from rulebert.data import BODY, ROW_ID, RULE, SUBREDDIT, read_csv
from rulebert.errors import RulebertError
from rulebert.files import write_csv_atomic
from rulebert.model import find_onnx, load_calibrator, load_model_dir, read_metrics, verify_model_dir
from rulebert.text import encode_rows

SUBMISSION_COLUMNS = ("row_id", "rule_violation")


def open_backend(
    model_dir: Path, backend: str = "auto", device: str | None = None, threads: int | None = None
) -> tuple[TorchBackend | OnnxBackend, dict[str, Any]]:
    """(backend, verified record) for a model dir.

    ``auto`` takes a valid exported ONNX file on a CPU (no device asked for and no GPU visible, or
    ``device="cpu"``); on a GPU the torch model with bf16 is faster. ``onnx`` / ``torch`` force one.
    The ONNX path never imports torch or transformers.
    """
    if backend not in BACKENDS:
        raise RulebertError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    wanted = device or ("cuda" if gpu_present() else "cpu")
    if backend == "onnx" or (backend == "auto" and wanted == "cpu"):
        record = verify_model_dir(model_dir)
        path = find_onnx(model_dir, record)
        if path is not None:
            return OnnxBackend(path, threads=threads), record
        if backend == "onnx":
            raise RulebertError(f"{model_dir}: no usable ONNX file (run `rulebert export --model-dir DIR`)")
    model, tokenizer, _config, record = load_model_dir(model_dir)
    return TorchBackend(model, tokenizer, device), record


class Scorer:
    """A trained model dir, loaded once, that scores (comment, rule) rows.

    >>> scorer = Scorer("runs/model")                       # doctest: +SKIP
    >>> scorer.score(["buy now!"], ["No advertising"])     # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | None = None,
        backend: str = "auto",
        *,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        # ``backend``: "auto" scores with an exported ONNX file (rulebert export) on a CPU, else torch;
        # "onnx" / "torch" force one. ``self.backend`` says which one runs ("torch", "onnx", "onnx-int8").
        self.runtime, self.record = open_backend(self.model_dir, backend, device, threads)
        self.config = TrainConfig.from_dict(self.record["config"])
        self.backend, self.device = self.runtime.name, self.runtime.device
        self.tokenizer = self.runtime.tokenizer
        self.model = getattr(self.runtime, "model", None)  # the torch model, when torch scores
        # calibration.json (fitted on validation at train time) turns raw scores into probabilities; set
        # ``scorer.calibrator = None`` for raw ones. Platt keeps the ranking; isotonic may create ties.
        self.calibrator = load_calibrator(self.model_dir)
        self.metrics = read_metrics(self.model_dir)  # a loaded model dir does not change: read it once

    @property
    def train_config(self) -> TrainConfig:
        return self.config

    @property
    def threshold(self) -> float:
        """The decision threshold the model dir recommends (``metrics.json`` ``threshold``), else 0.5."""
        return float(self.metrics.get("threshold", 0.5))

    def encode(
        self, bodies: Sequence[str], rules: Sequence[str], subreddits: Sequence[str] | None = None
    ) -> list[dict[str, list[int]]]:
        return encode_rows(
            self.tokenizer,
            rules,
            bodies,
            subreddits,
            input_format=self.config.input_format,
            include_subreddit=self.config.include_subreddit,
            max_length=self.config.max_length,
        )

    def score(
        self,
        bodies: Sequence[str],
        rules: Sequence[str],
        subreddits: Sequence[str] | None = None,
        *,
        positive_examples: Sequence[Sequence[str]] | None = None,
        negative_examples: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """P(the comment breaks the rule) for each row, in input order.

        ``positive_examples`` / ``negative_examples`` give, per row, example comments that break / keep the
        rule (as in the competition's example columns). The fine-tuned classifier reads only (rule, comment);
        recipes that also use a rule's examples at scoring time take them from here.
        """
        raw = self.runtime.predict(self.encode(bodies, rules, subreddits), progress=progress)
        return raw if self.calibrator is None else self.calibrator.transform(raw)


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
    print(f"rulebert: predict backend: {scorer.backend}", file=sys.stderr)
    columns = [test[c].tolist() for c in (BODY, RULE, SUBREDDIT)]
    parts = []
    with tqdm(total=len(test), desc="predict", unit="row", disable=not progress) as bar:
        for start in range(0, len(test), chunk_rows):
            parts.append(scorer.score(*(c[start : start + chunk_rows] for c in columns)))
            bar.update(len(parts[-1]))
    probabilities = np.concatenate(parts)
    submission = pd.DataFrame({"row_id": test[ROW_ID].to_numpy(), "rule_violation": probabilities})
    if sample_path is not None and Path(sample_path).is_file():
        check_submission(submission, sample_path)
    write_csv_atomic(submission, output_path)
    return submission
