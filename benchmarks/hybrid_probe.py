"""Candidate hybrids probed on the validation split of a quality run's work lake (no Spark; test never read).

    .venv/bin/python benchmarks/hybrid_probe.py --datasets online_retail_ii tafeng

Issue 18 asks for a hybrid that adds what the count features miss. Before one is built into the
train stage, this probe asks the data cheaply, with scikit-learn on the fused table that
benchmarks/quality.py left in benchmarks/.work/<data set>/lake (the same users, label and split):
- `counts_lr`, `counts_trees`: logistic regression and histogram gradient-boosted trees on the 20
  fused numeric features (signed log1p) — the view of the LR and GBT baselines (scikit-learn's
  trees, not MLlib's, so their figures differ a little from the train stage's);
- `words_lr`: TF-IDF of the behaviour text (the part after [SEP]) + LR — what a cheap text model finds
  in the items, queries and categories the user touched (words and codes of 4+ digits);
- `counts_words_trees`: the trees with the words model's out-of-fold train logit (5 folds) as one more
  feature, and its validation logit from a words model fitted on all of train;
- `rhythm_lr`, `rhythm_trees`: the counts plus time-window features from clean/events before the
  cutoff: purchase days in the last 7, 14, 30, 60 and 180 days and 90-180 days back, the median,
  spread and last of the gaps between purchase days, and days since the last purchase over the mean gap.
Each figure is a validation ROC-AUC, and each candidate's paired bootstrap difference (95% interval)
against the better counts model. Results: benchmarks/results/hybrid_probe.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from ecominsight.catalog import CLEAN_EVENTS, USER_SEQUENCES
from ecominsight.io import Lake
from ecominsight.logs import setup_logging
from ecominsight.models.champion import logit, paired_bootstrap_difference
from ecominsight.schema import ATTRIBUTE_SEPARATOR, NUMERIC_FEATURES

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results" / "hybrid_probe.json"
SEED = 0
log = logging.getLogger("benchmarks.hybrid_probe")


def signed_log(values: pd.DataFrame) -> np.ndarray:
    array = values.to_numpy(dtype=float)
    return np.sign(array) * np.log1p(np.abs(array))


def rhythm_features(events: pd.DataFrame, cutoffs: pd.Series) -> pd.DataFrame:
    """Input: user_id, ts, event_type (every event) and each user's cutoff. Output: one row per user
    with a purchase before the cutoff: purchase-day counts per window and the gaps between purchase days."""
    purchases = events[events["event_type"] == "purchase"].merge(cutoffs.rename("cutoff"), left_on="user_id",
                                                                  right_index=True)
    purchases = purchases[purchases["ts"] < purchases["cutoff"]]
    days = purchases.assign(day=purchases["ts"].dt.floor("D")).drop_duplicates(["user_id", "day"])
    days = days.assign(age=(days["cutoff"] - days["day"]).dt.days).sort_values(["user_id", "day"])
    days["gap"] = days.groupby("user_id")["day"].diff().dt.days
    by_user = days.groupby("user_id")
    windows = {f"purchase_days_{n}d": by_user["age"].agg(lambda age, n=n: int((age < n).sum())) for n in (7, 14, 30, 60, 180)}
    windows["purchase_days_90_180d"] = by_user["age"].agg(lambda age: int(((age >= 90) & (age < 180)).sum()))
    gaps = {"gap_median_days": by_user["gap"].median(), "gap_std_days": by_user["gap"].std(),
            "gap_last_days": by_user["gap"].last()}
    # No gap yet (one purchase day) reads -1, apart from every real gap.
    return pd.DataFrame({**windows, **gaps}).fillna(-1.0)


def trees() -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200, random_state=SEED)


def linear() -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=5000)


def probe(lake: Lake) -> dict:
    fused = lake.read_arrow(USER_SEQUENCES, columns=["user_id", "split", "label", "text", "as_of_ts",
                                                     *NUMERIC_FEATURES]).to_pandas()
    fused = fused[fused["split"].isin(["train", "valid"])].reset_index(drop=True)  # the test split stays sealed
    events = lake.read_arrow(CLEAN_EVENTS, columns=["user_id", "ts", "event_type"]).to_pandas()
    cutoffs = fused.set_index("user_id")["as_of_ts"]
    rhythm = rhythm_features(events, cutoffs)
    fused = fused.merge(rhythm, left_on="user_id", right_index=True, how="left")
    fused[list(rhythm.columns)] = fused[list(rhythm.columns)].fillna(-1.0)
    fused["overdue_ratio"] = fused["purchase_recency_days"] / np.maximum(fused["mean_basket_gap_days"], 1.0)
    train, valid = fused[fused["split"] == "train"], fused[fused["split"] == "valid"]
    y_train, y_valid = train["label"].to_numpy(), valid["label"].to_numpy()

    counts = list(NUMERIC_FEATURES)
    rich = [*counts, *rhythm.columns, "overdue_ratio"]
    behaviour = lambda frame: frame["text"].str.split(ATTRIBUTE_SEPARATOR, regex=False).str[-1]
    # Words, and codes of 4+ digits (Ta-Feng's categories are numbers); not the MM-dd dates, prices or quantities.
    words = TfidfVectorizer(min_df=3, sublinear_tf=True, token_pattern=r"(?u)\b(?:[^\W\d]\w+|\d{4,})\b")
    words_train, words_valid = words.fit_transform(behaviour(train)), words.transform(behaviour(valid))
    words_model = lambda: LogisticRegression(C=0.3, max_iter=5000)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    words_oof = cross_val_predict(words_model(), words_train, y_train, cv=folds, method="predict_proba")[:, 1]
    words_valid_p = words_model().fit(words_train, y_train).predict_proba(words_valid)[:, 1]

    def fitted(make: Callable, x_train, x_valid) -> np.ndarray:
        return make().fit(x_train, y_train).predict_proba(x_valid)[:, 1]

    valid_p = {
        "counts_lr": fitted(linear, signed_log(train[counts]), signed_log(valid[counts])),
        "counts_trees": fitted(trees, signed_log(train[counts]), signed_log(valid[counts])),
        "words_lr": words_valid_p,
        "counts_words_trees": fitted(trees, np.c_[signed_log(train[counts]), logit(words_oof)],
                                     np.c_[signed_log(valid[counts]), logit(words_valid_p)]),
        "rhythm_lr": fitted(linear, signed_log(train[rich]), signed_log(valid[rich])),
        "rhythm_trees": fitted(trees, signed_log(train[rich]), signed_log(valid[rich])),
    }
    auc = {name: float(roc_auc_score(y_valid, p)) for name, p in valid_p.items()}
    reference = max(("counts_lr", "counts_trees"), key=auc.get)
    return {
        "valid_roc_auc": auc,
        "reference": reference,
        "vs_reference": {name: paired_bootstrap_difference(y_valid, p, valid_p[reference], seed=SEED)
                         for name, p in valid_p.items() if name != reference},
        "_meta": {"n_train": int(len(train)), "n_valid": int(len(valid)), "valid_positive_rate": float(y_valid.mean()),
                  "words_vocabulary": len(words.vocabulary_), "rhythm_features": [*rhythm.columns, "overdue_ratio"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", required=True, help="quality.py data sets whose work lake exists")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    setup_logging()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.datasets:
        started = time.perf_counter()
        results[name] = probe(Lake(str(WORK / name / "lake")))
        results[name]["_meta"].update(seconds=round(time.perf_counter() - started, 1),
                                      load_average_1m_at_end=os.getloadavg()[0])
        log.info("%s: validation ROC-AUC %s", name, {k: round(v, 4) for k, v in results[name]["valid_roc_auc"].items()})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
