"""Binary-classification metrics, computed the same way for every model.

Threshold-dependent metrics (accuracy, F1) use a threshold chosen on validation only. ROC-AUC and
average precision carry percentile-bootstrap 95% intervals (resampling users of the split).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.integrate import trapezoid
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

BOOTSTRAP_RESAMPLES = 500
CALIBRATION_BINS = 10
CURVE_POINTS = 200  # at most this many points of each stored ROC / PR curve


def best_f1_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """The probability threshold that maximises F1 (chosen on validation, applied to test)."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=float)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    # The last precision/recall pair has no threshold (it is the "predict nothing" end point).
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.nan_to_num(2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]))
    return float(thresholds[int(np.argmax(f1))])


def _counts_at_thresholds(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, true positives) at each distinct score, highest first: the arithmetic of
    sklearn's `confusion_matrix_at_thresholds` for 0/1 labels and no weights, without its input checks."""
    order = np.argsort(p, kind="stable")[::-1]
    scores = p[order]
    thresholds = np.concatenate([np.nonzero(np.diff(scores))[0], [y.size - 1]])
    tps = np.cumsum(y[order].astype(np.float64), dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    return fps, tps


def fast_roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """`sklearn.metrics.roc_auc_score` for a 0/1 integer label array with both classes and a float
    score array, bit for bit (the same sort, cumulative sums, intermediate-point dropping and
    trapezoid), without the per-call input validation that makes sklearn's ~100x slower on a
    bootstrap's thousands of small resamples. Callers validate once (tests/test_metrics.py checks
    the equality)."""
    fps, tps = _counts_at_thresholds(labels, probabilities)
    if fps.shape[0] > 2:
        keep = np.where(np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]]))[0]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.concatenate([[0.0], fps]), np.concatenate([[0.0], tps])
    return float(trapezoid(tps / tps[-1], fps / fps[-1]))


def fast_average_precision(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """`sklearn.metrics.average_precision_score`, bit for bit, under the same conditions as `fast_roc_auc`."""
    fps, tps = _counts_at_thresholds(labels, probabilities)
    ps = tps + fps
    precision = np.where(ps != 0, np.divide(tps, ps), 0.0)
    recall = tps / tps[-1]
    precision = np.concatenate((np.flip(precision), [1.0]))
    recall = np.concatenate((np.flip(recall), [0.0]))
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def bootstrap_interval(labels: np.ndarray, probabilities: np.ndarray, metric, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of `metric(labels, probabilities)` over user resamples."""
    if labels.size == 0 or labels.min() == labels.max():
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        chosen = rng.integers(0, labels.size, labels.size)
        y = labels[chosen]
        if y.min() != y.max():
            values.append(metric(y, probabilities[chosen]))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def reliability_curve(labels: np.ndarray, probabilities: np.ndarray, *, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width probability bins: mean predicted probability vs observed positive rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    curve = []
    for b in range(bins):
        members = which == b
        if members.any():
            curve.append({"bin": [float(edges[b]), float(edges[b + 1])], "n": int(members.sum()),
                          "mean_predicted": float(probabilities[members].mean()),
                          "observed_rate": float(labels[members].mean())})
    return curve


def _thin(*series: np.ndarray, limit: int = CURVE_POINTS) -> list[list[float]]:
    """At most `limit` points, evenly spaced along the curve, the first and last always kept."""
    n = len(series[0])
    keep = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else np.zeros(0, dtype=int)
    return [[round(float(v), 6) for v in s[keep]] for s in series]


def curves(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """ROC (fpr, tpr) and precision-recall (recall, precision) points, for plotting; {} with one class."""
    if labels.size == 0 or labels.min() == labels.max():
        return {}
    fpr, tpr, _ = roc_curve(labels, probabilities)
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    fpr, tpr = _thin(fpr, tpr)
    recall, precision = _thin(recall, precision)
    return {"roc_curve": {"fpr": fpr, "tpr": tpr}, "pr_curve": {"recall": recall, "precision": precision}}


def decile_lift(labels: np.ndarray, probabilities: np.ndarray) -> list[dict]:
    """Users ranked by probability, cut into 10 deciles (1 = highest): positive rate and lift."""
    if labels.size < 10 or labels.sum() == 0:
        return []
    order = np.argsort(-probabilities, kind="stable")
    overall = labels.mean()
    result, captured = [], 0
    for decile, members in enumerate(np.array_split(order, 10), start=1):
        rate = labels[members].mean()
        captured += labels[members].sum()
        result.append({"decile": decile, "n": int(members.size), "positive_rate": float(rate),
                       "lift": float(rate / overall), "cumulative_gain": float(captured / labels.sum())})
    return result


def binary_metrics(labels: Sequence[int], probabilities: Sequence[float], *, threshold: float,
                   detailed: bool = False) -> dict[str, Any]:
    """Accuracy and F1 at `threshold`, ROC-AUC and average precision (None where undefined).

    `detailed` adds bootstrap intervals, Brier score, the reliability curve, decile lift and the
    ROC and precision-recall curve points."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    both_classes = y.size > 0 and y.min() != y.max()
    predicted = p >= threshold
    result: dict[str, Any] = {
        "n": int(y.size),
        "positive_rate": float(y.mean()) if y.size else None,
        "all_negative_accuracy": float(1 - y.mean()) if y.size else None,
        # The accuracy of always answering the commoner class: what `accuracy` has to beat.
        "majority_class_accuracy": float(max(y.mean(), 1 - y.mean())) if y.size else None,
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, predicted)) if y.size else None,
        "f1": float(f1_score(y, predicted, zero_division=0)) if y.size else None,
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
        "avg_precision": float(average_precision_score(y, p)) if both_classes else None,
    }
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite: {value}")
    if detailed and y.size:
        result.update({
            "roc_auc_ci": bootstrap_interval(y, p, fast_roc_auc),
            "avg_precision_ci": bootstrap_interval(y, p, fast_average_precision, seed=1),
            "brier": float(brier_score_loss(y, p)),
            "reliability": reliability_curve(y, p),
            "decile_lift": decile_lift(y, p),
            **curves(y, p),
        })
    return result


def evaluate_splits(valid: tuple[Sequence[int], Sequence[float]], test: tuple[Sequence[int], Sequence[float]]) -> dict:
    """Valid and test metrics with the F1-optimal threshold chosen on valid only."""
    threshold = best_f1_threshold(*valid)
    return {"valid": binary_metrics(*valid, threshold=threshold, detailed=True),
            "test": binary_metrics(*test, threshold=threshold, detailed=True)}
