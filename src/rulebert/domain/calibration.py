"""Calibrated probabilities and the decision threshold, fitted on the validation split.

A fine-tuned classifier ranks well but its softmax scores are rarely honest probabilities (a few epochs
of cross-entropy on small data make them over-confident). Two fixes, fitted on held-out validation rows:

- ``platt`` (default): logistic regression on the logit of the raw score, with Platt's smoothed targets
  (so perfectly separated validation data gives a finite slope). It is strictly increasing, so the ranking,
  and hence every ROC AUC, is unchanged; a fit whose slope is not positive is refused.
- ``isotonic``: a non-decreasing step function (sklearn's ``IsotonicRegression``). It can fit any
  monotone distortion but merges neighbouring scores into ties, so AUC may move a little (usually down).

The fitted calibrator is plain JSON (the model dir's ``calibration.json``, read and written by
:mod:`rulebert.model.model_dir`): method plus parameters, and for isotonic the two threshold arrays that
``np.interp``
needs; no pickles. Fit, transform and (de)serialise.

This module is the one home of the calibration maths: :func:`logit`, :func:`platt_fit` (Platt's logistic
fit with smoothed targets) and :func:`auc`; the per-rule examples model (:mod:`rulebert.domain.examples`)
uses them with its own constants, named where it calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rulebert.core.errors import RulebertError
from rulebert.domain.metrics import best_f1_threshold, brier_score, expected_calibration_error

__all__ = [  # the metrics are re-exported: calibration summaries are made of them
    "METHODS",
    "CalibratedValidation",
    "Calibrator",
    "best_f1_threshold",
    "brier_score",
    "calibrate_fit",
    "calibrate_validation",
    "expected_calibration_error",
    "auc",
    "fit_calibrator",
    "logit",
    "platt_fit",
]
METHODS = ("platt", "isotonic")  # or "none" for calibrate_validation: threshold only
LOGIT_EPS = 1e-7  # keeps logit() finite for scores of exactly 0 or 1
PLATT_C = 1e6  # the model dir's calibrator: practically no penalty (hundreds of validation rows)


def logit(scores: Sequence[float] | np.ndarray, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps] so that scores of exactly 0 or 1 stay finite."""
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of scores against both-class labels (see ``metrics.auc_or_none`` where one class may lack)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def platt_fit(
    labels: np.ndarray, x: np.ndarray, *, C: float = PLATT_C, max_iter: int = 1000
) -> tuple[float, float]:
    """(slope, intercept) of a logistic regression of ``labels`` on the 1-D ``x``, with Platt's (1999)
    smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2) instead of 1 and 0, given as each row counted once as
    positive and once as negative with those weights. ``C`` is sklearn's inverse penalty."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    target = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    column = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(
        np.vstack([column, column]),
        np.concatenate([np.ones(len(column)), np.zeros(len(column))]),
        sample_weight=np.concatenate([target, 1 - target]),
    )
    return float(model.coef_[0, 0]), float(model.intercept_[0])


@dataclass
class Calibrator:
    """A fitted map from raw scores to calibrated probabilities."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def transform(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64: float32 could merge close scores into ties)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            z = self.params["slope"] * logit(scores) + self.params["intercept"]
            return 1.0 / (1.0 + np.exp(-z))
        if self.method == "isotonic":
            return np.interp(scores, self.params["x"], self.params["y"])  # clips outside the fitted range
        raise RulebertError(f"unknown calibration method {self.method!r} (expected one of {METHODS})")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibrator:
        """A calibrator from its JSON form, checked: a NaN or non-positive Platt slope, or isotonic arrays
        that are empty, unsorted or outside [0, 1], would score garbage, so each is a ``ValueError``."""
        if not isinstance(payload, dict):
            raise ValueError(f"not a calibrator: a JSON {type(payload).__name__}, not an object")
        payload = dict(payload)
        method = payload.pop("method", None)
        if method == "platt" and {"slope", "intercept"} <= set(payload):
            slope, intercept = _finite(payload["slope"], "slope"), _finite(payload["intercept"], "intercept")
            if not slope > 0:
                raise ValueError(f"Platt slope {slope} is not positive")
            return cls(method, {"slope": slope, "intercept": intercept})
        if method == "isotonic" and {"x", "y"} <= set(payload):
            x = [_finite(v, "x") for v in _as_list(payload["x"], "x")]
            y = [_finite(v, "y") for v in _as_list(payload["y"], "y")]
            if not x or len(x) != len(y):
                raise ValueError(f"isotonic x and y must be non-empty and of one length ({len(x)}, {len(y)})")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic x and y must be non-decreasing")
            if min(y) < 0 or max(y) > 1:
                raise ValueError("isotonic y must lie in [0, 1]")
            return cls(method, {"x": x, "y": y})
        raise ValueError(f"not a calibrator: method {method!r} with keys {sorted(payload)}")


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    return value


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def fit_calibrator(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, method: str = "platt"
) -> Calibrator:
    """Fit ``method`` on (label, raw score) pairs. Raises ``ValueError`` when it cannot be fitted."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (expected one of {METHODS})")
    if len(labels) != len(scores) or len(np.unique(labels)) != 2:
        raise ValueError("calibration needs rows of both classes")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(
            scores, labels
        )
        return Calibrator("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})

    slope, intercept = platt_fit(labels, logit(scores))  # on the logit, C large: practically no penalty
    if not slope > 0:
        raise ValueError(f"Platt slope {slope:.3g} is not positive (scores rank no better than chance)")
    return Calibrator("platt", {"slope": slope, "intercept": intercept})


def _cross_fitted(labels: np.ndarray, scores: np.ndarray, method: str, folds: int = 5) -> np.ndarray | None:
    """Calibrated scores where each row's calibrator never saw that row (honest 'after' numbers)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.bincount(labels, minlength=2).min()))
    if folds < 2:
        return None
    out = np.empty(len(scores))
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=0).split(scores, labels):
        try:
            out[held_rows] = fit_calibrator(labels[fit_rows], scores[fit_rows], method).transform(
                scores[held_rows]
            )
        except ValueError:
            return None
    return out


def calibrate_validation(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, method: str = "platt"
) -> tuple[Calibrator | None, dict[str, Any]]:
    """Fit a calibrator and the F1 threshold on validation rows; return it with a summary for metrics.json.

    ``summary["threshold"]`` maximises F1 on the scores the Scorer will return (calibrated when fitted).

    The summary holds Brier score and ECE before and after. "after" is in-sample (the calibrator was fitted
    on these rows); "after_cv" refits it 5-fold so that no row is scored by a calibrator that saw it.
    Without both classes (or with a useless model) nothing is fitted and the summary says why.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    summary: dict[str, Any] = {
        "method": method,
        "rows": int(len(labels)),
        "brier_before": brier_score(labels, scores),
        "ece_before": expected_calibration_error(labels, scores),
    }
    try:
        if method == "none":
            raise ValueError("calibration switched off")
        calibrator = fit_calibrator(labels, scores, method)
    except ValueError as err:
        calibrator = None
        summary |= {"fitted": False, "reason": str(err)}
    if labels.sum() > 0:  # the threshold is on the scale the Scorer will answer in
        threshold, f1 = best_f1_threshold(labels, calibrator.transform(scores) if calibrator else scores)
        summary |= {"threshold": threshold, "f1_at_threshold": f1}
    if calibrator is None:
        return None, summary
    calibrated = calibrator.transform(scores)
    summary |= {
        "fitted": True,
        "brier_after": brier_score(labels, calibrated),
        "ece_after": expected_calibration_error(labels, calibrated),
    }
    cross = _cross_fitted(labels, scores, method)
    if cross is not None:
        summary |= {
            "brier_after_cv": brier_score(labels, cross),
            "ece_after_cv": expected_calibration_error(labels, cross),
        }
    return calibrator, summary


@dataclass
class CalibratedValidation:
    """What training keeps from the validation rows: the calibrator and the rows' scores for the report."""

    labels: np.ndarray
    scores: np.ndarray
    rules: np.ndarray
    calibrator: Calibrator | None

    @property
    def calibrated(self) -> np.ndarray | None:
        return None if self.calibrator is None else self.calibrator.transform(self.scores)

    @property
    def calibrator_json(self) -> dict[str, Any]:
        """Its JSON form (``{}`` when nothing was fitted), for the model dir."""
        return self.calibrator.to_dict() if self.calibrator else {}


def calibrate_fit(
    metrics: dict[str, Any],
    labels: np.ndarray,
    scores: np.ndarray,
    rules: np.ndarray,
    method: str = "platt",
) -> CalibratedValidation:
    """Fit on validation rows and record ``threshold`` and ``calibration`` in ``metrics`` (in place)."""
    labels = np.asarray(labels).astype(int)
    calibrator = None
    if len(labels):
        calibrator, summary = calibrate_validation(labels, scores, method)
        metrics["calibration"] = summary
        if "threshold" in summary:
            metrics["threshold"] = summary["threshold"]
    return CalibratedValidation(labels, np.asarray(scores, dtype=np.float64), np.asarray(rules), calibrator)
