"""Metrics: accuracy, F1, ROC AUC and the competition's column-averaged AUC (mean of per-rule AUCs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def column_averaged_auc(
    labels: Sequence[int], scores: Sequence[float], rules: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Mean of the per-rule ROC AUCs (the competition metric) and the per-rule values.

    A rule whose rows hold only one class has no AUC and is left out of the mean; ``nan`` if none has one.
    """
    from sklearn.metrics import roc_auc_score

    labels, scores, rules = (
        np.asarray(labels),
        np.asarray(scores, dtype=float),
        np.asarray(rules, dtype=object),
    )
    per_rule = {}
    for rule in dict.fromkeys(rules.tolist()):  # first-seen order
        mask = rules == rule
        if len(np.unique(labels[mask])) == 2:
            per_rule[rule] = float(roc_auc_score(labels[mask], scores[mask]))
    mean = float(np.mean(list(per_rule.values()))) if per_rule else math.nan
    return mean, per_rule


def classification_metrics(
    labels: Sequence[int], probabilities: Sequence[float], rules: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy and F1 at ``threshold``, ROC AUC over all rows, and column-averaged AUC."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    col_auc, per_rule = column_averaged_auc(labels, probabilities, rules)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else math.nan,
        "col_auc": col_auc,
        "per_rule_auc": per_rule,
        "rows": int(len(labels)),
    }
