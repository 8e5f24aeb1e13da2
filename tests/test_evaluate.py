import math

import numpy as np
from sklearn.metrics import roc_auc_score

from rulebert.domain.metrics import classification_metrics, column_averaged_auc


def test_column_averaged_auc_is_mean_of_per_rule_aucs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.3 + rng.random(200)
    rules = np.where(np.arange(200) % 3 == 0, "a", "b")
    mean, per_rule = column_averaged_auc(labels, scores, rules)
    expected = {r: roc_auc_score(labels[rules == r], scores[rules == r]) for r in ("a", "b")}
    assert per_rule == expected
    assert math.isclose(mean, (expected["a"] + expected["b"]) / 2)
    assert not math.isclose(mean, roc_auc_score(labels, scores + (rules == "a")))  # not the pooled AUC


def test_rule_with_one_class_is_left_out():
    mean, per_rule = column_averaged_auc([1, 1, 0, 1], [0.9, 0.8, 0.1, 0.7], ["a", "a", "b", "b"])
    assert list(per_rule) == ["b"] and mean == 1.0
    mean, per_rule = column_averaged_auc([1, 1], [0.2, 0.3], ["a", "a"])
    assert math.isnan(mean) and per_rule == {}


def test_classification_metrics_threshold():
    metrics = classification_metrics([0, 1, 1, 0], [0.2, 0.6, 0.4, 0.7], ["r"] * 4)
    assert metrics["accuracy"] == 0.5 and metrics["rows"] == 4
    assert metrics["roc_auc"] == metrics["col_auc"] == 0.5
