"""Binary-classification metrics, computed the same way for every model."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)


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


def binary_metrics(labels: Sequence[int], probabilities: Sequence[float], *, threshold: float) -> dict[str, float | int | None]:
    """Accuracy and F1 at `threshold`, ROC-AUC and average precision (None where undefined)."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    both_classes = y.size > 0 and y.min() != y.max()
    predicted = p >= threshold
    result: dict[str, float | int | None] = {
        "n": int(y.size),
        "positive_rate": float(y.mean()) if y.size else None,
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, predicted)) if y.size else None,
        "f1": float(f1_score(y, predicted, zero_division=0)) if y.size else None,
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
        "avg_precision": float(average_precision_score(y, p)) if both_classes else None,
    }
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite: {value}")
    return result


def evaluate_splits(valid: tuple[Sequence[int], Sequence[float]], test: tuple[Sequence[int], Sequence[float]]) -> dict:
    """Valid and test metrics with the F1-optimal threshold chosen on valid only."""
    threshold = best_f1_threshold(*valid)
    return {"valid": binary_metrics(*valid, threshold=threshold), "test": binary_metrics(*test, threshold=threshold)}
