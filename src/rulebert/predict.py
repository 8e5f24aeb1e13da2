"""Score comments with a trained model dir and write a submission.

Rows are tokenised once, sorted by length and cut into batches by a token budget, so a batch of short
comments is not padded to the length of a long one (the notebook padded every row to 512 tokens).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.config import TrainConfig
from rulebert.errors import RulebertError
from rulebert.files import atomic_write

SUBMISSION_COLUMNS = ("row_id", "rule_violation")


def violation_probability(logits: np.ndarray) -> np.ndarray:
    """P(violation) from a classifier's two logits per row: the softmax's second column, computed as
    ``exp(l1 - logaddexp(l0, l1))`` so that large logits neither overflow nor round to NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut so that rows x longest length <= ``max_tokens``."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        size = max(1, min(max_rows, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_bf16(device: str) -> bool:
    """Whether scoring on ``device`` runs under bf16 autocast: on a CUDA GPU with bf16, yes (faster, and
    what training used); on a CPU no, fp32 scores (ONNX int8 is the fast CPU path: ``rulebert export``)."""
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def predict_features(
    model: Any,
    tokenizer: Any,
    features: list[dict[str, list[int]]],
    *,
    max_tokens: int = 16384,
    max_rows: int = 256,
    progress: bool = True,
    device: str | None = None,
) -> np.ndarray:
    """P(violation) for each tokenised row, in input order."""
    import torch
    from tqdm.auto import tqdm

    device = device or pick_device()
    model.to(device).eval()
    probabilities = np.zeros(len(features), dtype=np.float32)
    lengths = [len(f["input_ids"]) for f in features]
    batches = token_budget_batches(lengths, max_tokens, max_rows)
    use_bf16 = inference_bf16(device)
    with (
        torch.inference_mode(),
        tqdm(total=len(features), desc="predict", unit="row", disable=not progress) as bar,
    ):
        for batch in batches:
            padded = tokenizer.pad([features[i] for i in batch], return_tensors="pt")
            padded = {k: v.to(device) for k, v in padded.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(**padded).logits
            probabilities[batch] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
            bar.update(len(batch))
    return probabilities


class Scorer:
    """A trained model dir, loaded once, that scores (comment, rule) rows.

    >>> scorer = Scorer("runs/model")                       # doctest: +SKIP
    >>> scorer.score(["buy now!"], ["No advertising"])     # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    def __init__(
        self, model_dir: str | os.PathLike, device: str | None = None, backend: str = "auto"
    ) -> None:
        from rulebert.export import open_onnx_backend
        from rulebert.model import load_model_dir

        self.model_dir = Path(model_dir)
        # ``backend``: "auto" scores with an exported ONNX file (rulebert export) on a CPU, else torch;
        # "onnx" / "torch" force one. ``self.backend`` says which one runs ("torch", "onnx", "onnx-int8").
        self.onnx = open_onnx_backend(self.model_dir, backend, device)
        if self.onnx is not None:
            self.model, self.device, self.backend = None, "cpu", self.onnx.name
            self.tokenizer, self.config, self.record = self.onnx.tokenizer, self.onnx.config, self.onnx.record
        else:
            self.model, self.tokenizer, self.config, self.record = load_model_dir(model_dir)
            self.device = device or pick_device()
            self.model.to(self.device)
            self.backend = "torch"
        from rulebert.calibrate import load_calibrator

        # calibration.json (fitted on validation at train time) turns raw scores into probabilities; set
        # ``scorer.calibrator = None`` for raw ones. Platt keeps the ranking; isotonic may create ties.
        self.calibrator = load_calibrator(self.model_dir)
        self._metrics = _read_metrics(self.model_dir)  # a loaded model dir does not change: read it once

    @property
    def train_config(self) -> TrainConfig:
        return self.config

    def encode(
        self, bodies: Sequence[str], rules: Sequence[str], subreddits: Sequence[str] | None = None
    ) -> list[dict[str, list[int]]]:
        from rulebert.text import encode_rows

        return encode_rows(
            self.tokenizer,
            rules,
            bodies,
            subreddits,
            input_format=self.config.input_format,
            include_subreddit=self.config.include_subreddit,
            max_length=self.config.max_length,
        )

    @property
    def metrics(self) -> dict[str, Any]:
        """The model dir's ``metrics.json`` (validation metrics, ...); ``{}`` when absent."""
        return self._metrics

    @property
    def threshold(self) -> float:
        """The decision threshold the model dir recommends (``metrics.json`` ``threshold``), else 0.5."""
        return float(self.metrics.get("threshold", 0.5))

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
        features = self.encode(bodies, rules, subreddits)
        if self.onnx is not None:
            raw = self.onnx.predict(features, progress=progress)
        else:
            raw = predict_features(
                self.model, self.tokenizer, features, progress=progress, device=self.device
            )
        return raw if self.calibrator is None else self.calibrator.transform(raw)


def _read_metrics(model_dir: Path) -> dict[str, Any]:
    import json

    from rulebert.model import METRICS_FILE

    path = model_dir / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV via a temp file and a rename: no half-written file on failure."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
    return Path(path)


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
    import sys

    from tqdm.auto import tqdm

    from rulebert.data import BODY, ROW_ID, RULE, SUBREDDIT, read_csv

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
