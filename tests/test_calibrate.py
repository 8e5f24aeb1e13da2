import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from rulebert.core.errors import RulebertError
from rulebert.domain.calibration import Calibrator, calibrate_validation, fit_calibrator, logit
from rulebert.domain.metrics import best_f1_threshold, brier_score, expected_calibration_error
from rulebert.model.model_dir import CALIBRATION_FILE, load_calibrator, save_calibrator


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities p, and over-confident, shifted scores sigmoid(3 logit(p) + 1)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.03, 0.97, n)
    labels = (rng.uniform(size=n) < p).astype(int)
    scores = 1 / (1 + np.exp(-(3 * logit(p) + 1)))
    return labels, scores


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_round_trips_through_json(method, tmp_path):
    labels, scores = miscalibrated(400, seed=0)
    calibrator = fit_calibrator(labels, scores, method)
    save_calibrator(calibrator, tmp_path)
    payload = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert payload["method"] == method
    loaded = load_calibrator(tmp_path)
    probe = np.linspace(0, 1, 101)
    assert np.array_equal(loaded.transform(probe), calibrator.transform(probe))


def test_platt_recovers_the_distortion():
    labels, scores = miscalibrated(20000, seed=1)
    params = fit_calibrator(labels, scores).params
    # scores = sigmoid(3 z + 1) with z the true logit, so the inverse is z = logit/3 - 1/3
    assert params["slope"] == pytest.approx(1 / 3, abs=0.03)
    assert params["intercept"] == pytest.approx(-1 / 3, abs=0.06)


def test_platt_keeps_the_ranking():
    labels, scores = miscalibrated(500, seed=2)
    calibrated = fit_calibrator(labels, scores).transform(scores)
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(calibrated, kind="stable"))
    assert len(np.unique(calibrated)) == len(np.unique(scores))  # no ties created
    assert roc_auc_score(labels, calibrated) == roc_auc_score(labels, scores)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_improves_brier_and_ece_on_held_out_rows(method):
    labels, scores = miscalibrated(4000, seed=3)
    fit_rows, held = slice(0, 2000), slice(2000, None)
    calibrator = fit_calibrator(labels[fit_rows], scores[fit_rows], method)
    after = calibrator.transform(scores[held])
    assert brier_score(labels[held], after) < brier_score(labels[held], scores[held]) - 0.01
    assert (
        expected_calibration_error(labels[held], after)
        < expected_calibration_error(labels[held], scores[held]) / 2
    )


def test_isotonic_is_monotone_and_clipped():
    labels, scores = miscalibrated(300, seed=4)
    calibrator = fit_calibrator(labels, scores, "isotonic")
    probe = np.linspace(-0.5, 1.5, 401)
    out = calibrator.transform(probe)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1


def test_threshold_maximises_f1_like_brute_force():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.3 * labels + rng.normal(0.35, 0.2, 300), 0, 1), 2)  # ties on purpose
    threshold, f1 = best_f1_threshold(labels, scores)
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1 == pytest.approx(brute)
    assert f1_score(labels, scores >= threshold) == pytest.approx(brute)
    assert not np.any(scores == threshold) or threshold == scores.min()  # it sits between two scores


def test_threshold_needs_a_positive():
    with pytest.raises(ValueError):
        best_f1_threshold([0, 0, 0], [0.1, 0.5, 0.9])


def test_validation_summary():
    labels, scores = miscalibrated(600, seed=6)
    calibrator, summary = calibrate_validation(labels, scores)
    assert summary["fitted"] and calibrator is not None
    assert summary["brier_after"] < summary["brier_before"] and summary["ece_after"] < summary["ece_before"]
    assert summary["brier_after_cv"] < summary["brier_before"]
    calibrated = calibrator.transform(scores)
    assert summary["f1_at_threshold"] == pytest.approx(f1_score(labels, calibrated >= summary["threshold"]))


def test_one_class_is_skipped_gracefully():
    calibrator, summary = calibrate_validation([0, 0, 0, 0], [0.2, 0.4, 0.6, 0.1])
    assert calibrator is None and summary["fitted"] is False and "threshold" not in summary
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator([1, 1], [0.3, 0.6])


def test_a_reversed_ranking_is_refused_not_flipped():
    labels, scores = miscalibrated(400, seed=7)
    with pytest.raises(ValueError, match="slope"):
        fit_calibrator(labels, 1 - scores)
    calibrator, summary = calibrate_validation(labels, 1 - scores)
    assert calibrator is None and not summary["fitted"] and "threshold" in summary  # on raw scores


def test_none_method_gives_threshold_only():
    labels, scores = miscalibrated(200, seed=8)
    calibrator, summary = calibrate_validation(labels, scores, "none")
    assert calibrator is None and summary["threshold"] == best_f1_threshold(labels, scores)[0]


def test_bad_calibration_file(tmp_path):
    assert load_calibrator(tmp_path) is None
    (tmp_path / CALIBRATION_FILE).write_text('{"method": "platt", "slope": 1.0}')
    with pytest.raises(RulebertError, match="calibration.json: unreadable"):
        load_calibrator(tmp_path)
    with pytest.raises(ValueError):
        Calibrator.from_dict({"method": "magic"})
