"""The hybrid (a stacker over the single models' probabilities) and the choice of the champion.

The stacker is logistic regression over the logits of the components' probabilities. The components
were fitted on the train split, so their validation probabilities are out-of-sample; the stacker is
fitted on the validation split. Its own validation figure, the one it is ranked by, comes from
out-of-fold predictions of a seeded stratified k-fold inside validation, so that it is judged, like
the components, on users it was not fitted on. The final stacker is then refitted on all of
validation. The test split plays no part in fitting or choosing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ecominsight.errors import EcominsightError

log = logging.getLogger(__name__)

HYBRID_MODEL = "hybrid"
STACKER_FILE = "stacker.json"
AUTO = "auto"
STACKER_FOLDS = 5
STACKER_C = 1.0  # inverse L2 strength: three inputs, hundreds of users, a light touch is enough
# Probabilities are clipped before the logit, so that a component's 0 or 1 stays finite.
LOGIT_EPSILON = 1e-6


class ChampionError(EcominsightError):
    """The champion cannot be chosen (a forced model that was not trained, or no model with a valid ROC-AUC)."""


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=float), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(p / (1 - p))


@dataclasses.dataclass(frozen=True)
class Stacker:
    """sigmoid(intercept + Σ coefficient_i · logit(p_i)) over the named components, in order."""

    components: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        """Input: (n, len(components)) component probabilities. Output: the hybrid's n probabilities."""
        z = self.intercept + logit(probabilities) @ np.asarray(self.coefficients)
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return {"components": list(self.components), "coefficients": list(self.coefficients),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "Stacker":
        return cls(components=tuple(payload["components"]), coefficients=tuple(float(c) for c in payload["coefficients"]),
                   intercept=float(payload["intercept"]))


def _fit(features: np.ndarray, labels: np.ndarray, components: Sequence[str]) -> Stacker:
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=STACKER_C, max_iter=1000).fit(logit(features), labels)
    return Stacker(components=tuple(components), coefficients=tuple(float(c) for c in fitted.coef_[0]),
                   intercept=float(fitted.intercept_[0]))


def fit_stacker(components: Sequence[str], valid_probabilities: np.ndarray, valid_labels: np.ndarray, *,
                seed: int, folds: int = STACKER_FOLDS) -> tuple[Stacker, np.ndarray]:
    """Input: the components' validation probabilities (n, k) and labels. Output: the stacker fitted on
    all of validation, and out-of-fold validation probabilities (each user scored by a stacker that
    did not see it) to rank the hybrid by."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(valid_labels, dtype=int)
    features = np.asarray(valid_probabilities, dtype=float)
    if labels.min() == labels.max():
        raise ChampionError("the validation split holds one class only; the stacker cannot be fitted")
    # Fewer folds when the rarer class is scarce: each fold must still see both classes.
    n_folds = int(min(folds, np.bincount(labels).min()))
    out_of_fold = np.zeros(labels.size)
    if n_folds >= 2:
        for fit_rows, held_rows in StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(features, labels):
            out_of_fold[held_rows] = _fit(features[fit_rows], labels[fit_rows], components).predict(features[held_rows])
    else:
        # One user of a class: no fold split is possible; the in-sample fit is reported (and said so).
        log.warning("stacker: %d validation user(s) of the rarer class; its validation figure is in-sample",
                    np.bincount(labels).min())
        out_of_fold = _fit(features, labels, components).predict(features)
    return _fit(features, labels, components), out_of_fold


# On equal validation ROC-AUC the cheaper model ranks first (to train and to score).
COST_ORDER = ("lr", "gbt", "transformer", HYBRID_MODEL)


def rank_models(valid_roc_auc: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Models by validation ROC-AUC, best first (a model without one last; ties: the cheaper first)."""
    def key(item: tuple[str, float | None]) -> tuple:
        name, auc = item
        cost = COST_ORDER.index(name) if name in COST_ORDER else len(COST_ORDER)
        return auc is None, -(auc or 0.0), cost, name

    ordered = sorted(valid_roc_auc.items(), key=key)
    return [{"rank": i, "model": name, "valid_roc_auc": auc} for i, (name, auc) in enumerate(ordered, start=1)]


def choose_champion(valid_roc_auc: Mapping[str, float | None], *, forced: str = AUTO,
                    fallback: str = "transformer") -> dict[str, Any]:
    """The champion and why: `{"model", "reason", "ranking"}`. `forced` (`train.champion`) names a model
    to use whatever its rank; `auto` takes the best validation ROC-AUC, or `fallback` when no model has
    one (a validation split of one class)."""
    ranking = rank_models(valid_roc_auc)
    if forced != AUTO:
        if forced not in valid_roc_auc:
            raise ChampionError(f"train.champion={forced!r} names no model of this run (trained: "
                                f"{', '.join(sorted(valid_roc_auc))})")
        rank = next(r["rank"] for r in ranking if r["model"] == forced)
        return {"model": forced, "reason": f"forced by train.champion={forced} (rank {rank} of {len(ranking)} "
                                           "on validation ROC-AUC)", "ranking": ranking}
    best = ranking[0]
    if best["valid_roc_auc"] is None:
        if fallback not in valid_roc_auc:
            raise ChampionError("no model has a validation ROC-AUC (the validation split holds one class); "
                                "set train.champion to a model name")
        return {"model": fallback, "reason": "no model has a validation ROC-AUC (one class in the validation split): "
                                             f"the default {fallback}", "ranking": ranking}
    runner_up = ranking[1] if len(ranking) > 1 else None
    margin = (f", {best['valid_roc_auc'] - runner_up['valid_roc_auc']:+.4f} over {runner_up['model']}"
              if runner_up and runner_up["valid_roc_auc"] is not None else "")
    return {"model": best["model"], "reason": f"highest validation ROC-AUC ({best['valid_roc_auc']:.4f}{margin})",
            "ranking": ranking}


def paired_bootstrap_difference(labels: Sequence[int], first: Sequence[float], second: Sequence[float], *,
                                resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ROC-AUC(first) - ROC-AUC(second) on the same users, with a percentile 95% interval from
    resampling users (both models on each resample, so the interval reflects the pairing)."""
    from sklearn.metrics import roc_auc_score

    from ecominsight.models.metrics import fast_roc_auc

    y = np.asarray(labels, dtype=int)
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if y.size == 0 or y.min() == y.max():
        return {"delta": None, "ci": None}
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(resamples):
        chosen = rng.integers(0, y.size, y.size)
        if y[chosen].min() != y[chosen].max():
            # roc_auc_score's arithmetic without its per-call checks (metrics.fast_roc_auc)
            deltas.append(fast_roc_auc(y[chosen], a[chosen]) - fast_roc_auc(y[chosen], b[chosen]))
    delta = float(roc_auc_score(y, a) - roc_auc_score(y, b))
    return {"delta": delta, "ci": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))],
            "resamples": resamples}
