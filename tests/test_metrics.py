"""Metrics: threshold chosen on validation, the standard definitions, undefined cases made explicit."""

from __future__ import annotations

import pytest

from ecominsight.models.metrics import best_f1_threshold, binary_metrics, evaluate_splits


def test_best_f1_threshold_separates_a_separable_set():
    labels = [0, 0, 0, 1, 1]
    probabilities = [0.1, 0.2, 0.3, 0.7, 0.9]
    threshold = best_f1_threshold(labels, probabilities)
    assert 0.3 < threshold <= 0.7
    metrics = binary_metrics(labels, probabilities, threshold=threshold)
    assert metrics["f1"] == metrics["accuracy"] == metrics["roc_auc"] == metrics["avg_precision"] == 1.0


def test_metrics_match_hand_computed_values():
    labels = [1, 0, 1, 0]
    probabilities = [0.8, 0.6, 0.4, 0.2]
    metrics = binary_metrics(labels, probabilities, threshold=0.5)
    assert metrics["accuracy"] == 0.5  # predicted 1,1,0,0
    assert metrics["f1"] == 0.5  # precision 1/2, recall 1/2
    assert metrics["roc_auc"] == 0.75  # 3 of 4 positive/negative pairs ordered right
    assert metrics["avg_precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert metrics["positive_rate"] == 0.5 and metrics["n"] == 4


def test_single_class_split_reports_none_instead_of_a_fake_number():
    metrics = binary_metrics([0, 0, 0], [0.1, 0.5, 0.9], threshold=0.5)
    assert metrics["roc_auc"] is None and metrics["avg_precision"] is None
    assert best_f1_threshold([1, 1], [0.2, 0.3]) == 0.5


def test_test_metrics_use_the_validation_threshold():
    result = evaluate_splits(([0, 1], [0.2, 0.4]), ([0, 1], [0.3, 0.35]))
    assert result["valid"]["threshold"] == result["test"]["threshold"] == 0.4
    assert result["test"]["accuracy"] == 0.5  # 0.35 < 0.4: the test positive is missed


@pytest.mark.parametrize("scores", ["continuous", "rounded", "skewed", "few_levels"])
def test_fast_bootstrap_metrics_equal_sklearns_bit_for_bit(scores):
    """The bootstrap's AUC and average precision are sklearn's numbers exactly (ties included), so
    the intervals in metrics.json do not move by a bit."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from ecominsight.models.metrics import fast_average_precision, fast_roc_auc

    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(400):
        size = int(rng.integers(2, 200))
        y = rng.integers(0, 2, size)
        if y.min() == y.max():
            continue
        p = {"continuous": rng.random(size), "rounded": np.round(rng.random(size), 1), "skewed": rng.random(size) ** 8,
             "few_levels": rng.integers(0, 4, size) / 3.0}[scores]
        assert fast_roc_auc(y, p) == roc_auc_score(y, p)
        assert fast_average_precision(y, p) == average_precision_score(y, p)
        checked += 1
    assert checked > 300
