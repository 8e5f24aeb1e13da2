"""Every score rulebert reports about a set of (label, score, rule) rows, in one place.

The competition metric is the column-averaged ROC AUC: one AUC per rule, then their mean. Beside it:
accuracy/F1 at a threshold, the F1-best threshold, and the calibration measures (Brier score, ECE and the
reliability bins that both ECE and the report's reliability plot are made of). numpy and scikit-learn only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def auc_or_none(labels: np.ndarray, scores: np.ndarray | None) -> float | None:
    """ROC AUC, or None where it does not exist (one class, or no scores)."""
    from sklearn.metrics import roc_auc_score

    if scores is None or len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def column_averaged_auc(
    labels: Sequence[int], scores: Sequence[float], rules: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Mean of the per-rule ROC AUCs (the competition metric) and the per-rule values.

    A rule whose rows hold only one class has no AUC and is left out of the mean; ``nan`` if none has one.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    rules = np.asarray(rules, dtype=object)
    per_rule = {}
    for rule in dict.fromkeys(rules.tolist()):  # first-seen order
        auc = auc_or_none(labels[rules == rule], scores[rules == rule])
        if auc is not None:
            per_rule[rule] = auc
    mean = float(np.mean(list(per_rule.values()))) if per_rule else math.nan
    return mean, per_rule


def classification_metrics(
    labels: Sequence[int], probabilities: Sequence[float], rules: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy and F1 at ``threshold``, ROC AUC over all rows, and column-averaged AUC."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    col_auc, per_rule = column_averaged_auc(labels, probabilities, rules)
    roc_auc = auc_or_none(labels, probabilities)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": math.nan if roc_auc is None else roc_auc,
        "col_auc": col_auc,
        "per_rule_auc": per_rule,
        "rows": int(len(labels)),
    }


def brier_score(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Mean squared error of the probabilities (0 is perfect; 0.25 is always answering 0.5)."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float(np.mean((scores - labels) ** 2)) if len(labels) else math.nan


def reliability_bins(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each non-empty equal-width score bin: (mean score, fraction positive, rows), in bin order."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    which = np.clip((scores * bins).astype(int), 0, bins - 1)
    used = np.unique(which)
    mean_score = np.array([scores[which == b].mean() for b in used])
    observed = np.array([labels[which == b].mean() for b in used])
    counts = np.array([int(np.sum(which == b)) for b in used], dtype=int)
    return mean_score, observed, counts


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """Row-weighted mean |mean score - fraction positive| over ``bins`` equal-width score bins."""
    if not len(labels):
        return math.nan
    mean_score, observed, counts = reliability_bins(labels, scores, bins)
    return float(np.sum(counts * np.abs(mean_score - observed)) / np.sum(counts))


def best_f1_threshold(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score >= threshold``.

    Every distinct score is a candidate cut; the threshold returned is halfway between the cut score and
    the next lower one, so it does not sit exactly on a validation row. O(n log n).
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("F1 needs at least one positive row")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_value = np.r_[s[1:] != s[:-1], True]  # cut only after the last row of a run of ties
    true_pos = np.cumsum(y)[last_of_value]
    predicted = (np.arange(1, len(s) + 1))[last_of_value]
    f1 = 2 * true_pos / (predicted + positives)
    best = int(np.argmax(f1))
    cut = s[last_of_value][best]
    below = s[last_of_value][best + 1] if best + 1 < len(f1) else cut
    return float((cut + below) / 2 if below < cut else cut), float(f1[best])


def paired_bootstrap_drop(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, rules: np.ndarray, rounds: int = 400
) -> float:
    """The 2.5th percentile of the paired bootstrap distribution of (column-averaged AUC of ``scores_a`` -
    that of ``scores_b``): rows resampled with replacement, both scorers on the same resample (seeded: the
    same rows give the same answer); ``inf`` when no resample has both labels. The int8 export's check
    (:mod:`rulebert.backend.export`): b (int8) is not shown to fall below a (torch) when this is small."""
    rng = np.random.default_rng(0)
    drops = []
    for _ in range(rounds):
        pick = rng.integers(0, len(labels), len(labels))
        a = column_averaged_auc(labels[pick], scores_a[pick], rules[pick])[0]
        b = column_averaged_auc(labels[pick], scores_b[pick], rules[pick])[0]
        if not (math.isnan(a) or math.isnan(b)):
            drops.append(a - b)
    return float(np.percentile(drops, 2.5)) if drops else math.inf


CHANCE_AUC = 0.55
"""A validation AUC below this is chance: the model ranks the held-out rows no better than a coin."""
LN2 = math.log(2.0)


def learning_failure(
    validation: dict[str, Any] | None, train_losses: Sequence[float], val_scores: np.ndarray
) -> str | None:
    """Why a training run learned nothing, or None when it learned something: its validation scores are
    one constant, its validation AUC (column-averaged where there are rules, else pooled) is below
    :data:`CHANCE_AUC`, or, without validation rows, its training loss ended at ln 2 (a binary classifier
    that predicts 0.5 for every row)."""
    if len(val_scores) > 1 and float(np.ptp(val_scores)) == 0.0:  # it ranks nothing
        return f"every validation row scores {float(np.mean(val_scores)):.4f} (a collapsed model)"
    if validation:
        value = validation.get("col_auc")
        if value is None or not math.isfinite(value):
            value = validation.get("roc_auc")
        if value is not None and math.isfinite(value) and value < CHANCE_AUC:
            return f"validation AUC {value:.3f} is chance (below {CHANCE_AUC})"
        return None
    # ln 2 itself, not merely no lower: a loss that sits at 0.6931 is the constant 0.5 of a collapse, while a
    # handful of rows (an adaptation of a few examples) gives a noisy loss that can end above it
    tail = [float(x) for x in train_losses[-max(1, len(train_losses) // 4) :]]
    if tail and max(abs(x - LN2) for x in tail) <= 0.005:
        return f"the training loss stayed at ln 2 ({tail[-1]:.4f})"
    return None
