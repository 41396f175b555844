"""The hybrid's stacker and the champion's choice, without Spark: planted probabilities with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ecominsight.models import champion


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two components that each see half of a label's signal, and one that sees noise only."""
    rng = np.random.default_rng(seed)
    first, second = rng.normal(size=n), rng.normal(size=n)
    labels = (first + second + 0.3 * rng.normal(size=n) > 0).astype(int)
    squash = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return np.column_stack([squash(first), squash(second), squash(rng.normal(size=n))]), labels


def test_the_stacker_beats_each_component_out_of_fold_and_ignores_the_noise():
    from sklearn.metrics import roc_auc_score

    features, labels = _planted(600, seed=1)
    stacker, out_of_fold = champion.fit_stacker(("a", "b", "noise"), features, labels, seed=0)
    stacked = roc_auc_score(labels, out_of_fold)
    assert stacked > max(roc_auc_score(labels, features[:, i]) for i in range(3)) + 0.05
    assert abs(stacker.coefficients[2]) < 0.3 * min(stacker.coefficients[:2])
    # Out-of-fold means each user's figure comes from a fit without it: it differs from the in-sample one.
    assert not np.allclose(out_of_fold, stacker.predict(features))
    again = champion.Stacker.from_dict(stacker.to_dict())
    assert np.array_equal(again.predict(features), stacker.predict(features))


def test_the_champion_is_the_best_on_validation_unless_forced():
    aucs = {"lr": 0.79, "gbt": 0.81, "transformer": 0.80, "hybrid": None}
    chosen = champion.choose_champion(aucs)
    assert chosen["model"] == "gbt" and "0.8100" in chosen["reason"] and "+0.0100 over transformer" in chosen["reason"]
    assert [r["model"] for r in chosen["ranking"]] == ["gbt", "transformer", "lr", "hybrid"]
    forced = champion.choose_champion(aucs, forced="lr")
    assert forced["model"] == "lr" and "rank 3 of 4" in forced["reason"]
    with pytest.raises(champion.ChampionError, match="names no model"):
        champion.choose_champion({"lr": 0.7}, forced="hybrid")
    assert champion.choose_champion({"lr": None, "transformer": None})["model"] == "transformer"
    # A tie goes to the cheaper model (a perfect transformer and a stacker that cannot beat it).
    assert champion.choose_champion({"hybrid": 1.0, "transformer": 1.0, "lr": 0.5})["model"] == "transformer"


def test_the_paired_bootstrap_interval_holds_the_difference_and_excludes_zero_for_a_clear_winner():
    features, labels = _planted(800, seed=2)
    strong = features[:, 0] + features[:, 1]
    result = champion.paired_bootstrap_difference(labels, strong, features[:, 0], resamples=300)
    low, high = result["ci"]
    assert 0 < low <= result["delta"] <= high
    assert champion.paired_bootstrap_difference([1, 1], [0.2, 0.3], [0.1, 0.2]) == {"delta": None, "ci": None}
