"""The report page: k-anonymous groups, merged buckets, self-contained HTML."""

from __future__ import annotations

import re

import numpy as np

from ecominsight.models.metrics import evaluate_splits
from ecominsight.report import SUPPRESSED, merge_small_buckets, render, suppress_small


def test_small_groups_are_hidden_and_merged_only_when_the_merge_reaches_k():
    assert suppress_small({"a": 50, "b": 4, "c": 7, "d": 0}, 10) == ({"a": 50, SUPPRESSED: 11}, ["b", "c"])
    assert suppress_small({"a": 50, "b": 4}, 10) == ({"a": 50}, ["b"])  # 4 users alone: not shown at all
    assert suppress_small({"a": 50, "b": 4, "c": 7}, 10, merge=False) == ({"a": 50}, ["b", "c"])


def test_adjacent_buckets_merge_until_each_holds_k_users():
    deciles = [{"n": 6, "positive_rate": r, "cumulative_gain": g} for r, g in
               [(1.0, .3), (.5, .45), (.5, .6), (0.0, .6), (.5, .75), (.5, .9), (0.0, .9), (0.0, .9), (.5, 1.0), (0.0, 1.0)]]
    merged = merge_small_buckets(deciles, 10, weighted=("positive_rate",), keep_last=("cumulative_gain",))
    assert [b["members"] for b in merged] == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert [b["n"] for b in merged] == [12] * 5
    assert [b["positive_rate"] for b in merged] == [.75, .25, .5, 0.0, .25]
    assert [b["cumulative_gain"] for b in merged] == [.45, .6, .9, .9, 1.0]
    # A short tail joins the bucket before it; fewer than k users in all: nothing.
    tail = merge_small_buckets([{"n": 10, "x": 1.0}, {"n": 3, "x": 0.0}], 10, weighted=("x",))
    assert [(b["members"], b["n"], b["x"]) for b in tail] == [([1, 2], 13, 10 / 13)]
    assert merge_small_buckets([{"n": 9, "x": 1.0}], 10, weighted=("x",)) == []


def test_the_page_is_self_contained_and_hides_small_groups():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probabilities = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    metrics = evaluate_splits((labels[:100], probabilities[:100]), (labels[100:], probabilities[100:]))
    data = {
        "run_id": "r1", "score_date": "2020-01-01", "users_scored": 500,
        "data_quality": ("r0", {"tables": {"events": {"input_rows": 10, "clean_rows": 8, "quarantined_rows": 2,
                                                      "rows_by_reason": {"clean": 8, "duplicate": 2}}},
                                "users_without_events": 3}),
        "labels": {("train", 0): 300, ("train", 1): 100, ("test", 0): 60, ("test", 1): 4},
        "models": {"lr": ("v1", metrics), "gbt": ("v1", {"test": {"n": 5, "positive_rate": 0.2}})},
        "segments": {"high_champions": 120, "low_new": 3, "medium_loyal": 0},
        "actions": {"none": 400, "coupon": 95, "win_back": 5},
        "categories": {"kitchen": 40, "rare thing": 2, "odd thing": 9},
        "queries": [{"query": "mug", "users": 12, "searches": 20, "conversion_rate": 0.5, "outcome": "converted"},
                    {"query": "my own name", "users": 1, "searches": 1, "conversion_rate": 0.0, "outcome": "no_follow_up"}],
    }
    page = render(data, min_group_size=10)
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "://" not in without_images and "url(" not in without_images  # nothing to fetch from anywhere
    assert without_images.count('src=""') == page.count("src=") == 9
    assert "default-src 'none'" in page
    for section in ("data-quality", "label-balance", "models", "segments", "categories", "actions", "search"):
        assert f'<section id="{section}">' in page
    assert page.count('<img class="plot"') == 9  # labels, ROC, PR, calibration, lift, gain, segments, categories, actions
    for hidden in ("low_new", "win_back", "rare thing", "my own name", "test / buys"):
        assert hidden not in page
    assert "high_champions" in page and "kitchen" in page and "mug" in page
    assert "fewer than 10" in page and "Users without a clean event: fewer than 10" in page
    assert "gbt: ROC and PR curves hidden" in page
    # Categories overlap (a user has several), so their small ones are never summed into one entry.
    assert "2 categories with fewer than 10 users are not shown." in page
