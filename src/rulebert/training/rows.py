"""Labelled rows to train on, from the files a user gives (``--train``, ``--test``, ``--decisions``), and the
data fingerprint a model dir records: the first step of :func:`rulebert.training.train.train_model`."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import pandas as pd

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.domain.decisions import decision_rows, read_decisions


def rows_digest(rows: pd.DataFrame) -> str:
    """A SHA-256 of labelled rows: a checkpoint made from other rows must not be resumed."""
    import hashlib

    hashes = pd.util.hash_pandas_object(rows[[D.TEXT, D.RULE, D.LABEL]], index=False).to_numpy()
    return hashlib.sha256(hashes.tobytes()).hexdigest()


def select_training_rules(rows: pd.DataFrame, target_rules: Any, config: TrainConfig) -> pd.DataFrame:
    """The rows to train on: with ``train_rules="target"`` only those of the rules to be scored."""
    if config.train_rules == "all":
        return rows
    return rows[rows[D.RULE].isin(set(target_rules))].reset_index(drop=True)


def prepare_rows(
    config: TrainConfig,
    train_path: str | os.PathLike | None,
    test_path: str | os.PathLike | None,
    decisions_path: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labelled rows for training (with a test file: only its rules' and the decisions', see
    :func:`select_training_rules`) and the data fingerprint recorded with the model. ``decisions_path``: a
    folder of moderators' decisions (:mod:`rulebert.domain.decisions`), alone or beside ``train_path``."""
    if train_path is None and decisions_path is None:
        raise RulebertError("nothing to train on: give --train (a labelled CSV) or --decisions (a folder)")
    train_frame = D.read_csv(train_path, labelled=True) if train_path is not None else None
    test_frame = D.read_csv(test_path, labelled=False) if test_path and config.use_test_examples else None
    log = read_decisions(decisions_path) if decisions_path is not None else None
    more = decision_rows(log, config.decisions_per_label, config.seed) if log is not None else None
    rows, stats = D.labelled_rows(train_frame, test_frame, dedupe=config.dedupe, more=more)
    if test_frame is not None:
        targets = set(test_frame[D.RULE]) | (set(more[D.RULE]) if more is not None else set())
        rows = select_training_rules(rows, targets, config)
    fingerprint = {
        "train": D.file_fingerprint(train_path) if train_path is not None else None,
        "test": D.file_fingerprint(test_path) if test_frame is not None else None,
        "decisions": {**log.fingerprint, "communities": sorted(set(more[D.SUBREDDIT])), "rows": len(more)}
        if log is not None
        else None,
        "rulebooks": sorted(set(more[D.RULE])) if more is not None else [],
        "rows": len(rows),
        "dedupe": asdict(stats),
        "rules": sorted(rows[D.RULE].unique().tolist()),  # scored in mode "trained" (see predict.Scorer)
    }
    return rows, fingerprint
