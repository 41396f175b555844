"""Scoring helpers: deciles from day-wide cut points, and who an incremental run must rescore."""

from __future__ import annotations

import datetime as dt

from pyspark.testing import assertDataFrameEqual

from ecominsight.models.scoring import carried_scores, users_to_rescore, with_score_decile

T0, T1 = dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)


def test_deciles_count_from_the_top(spark):
    scored = spark.createDataFrame([(f"u{i}", i / 100) for i in range(100)], "user_id string, probability double")
    cut_points = scored.approxQuantile("probability", [i / 10 for i in range(1, 10)], 0.0)
    deciles = {r["user_id"]: r["score_decile"] for r in with_score_decile(scored, cut_points=cut_points).collect()}
    assert deciles["u99"] == 1 and deciles["u0"] == 10
    assert sorted({d: list(deciles.values()).count(d) for d in set(deciles.values())}.values()) == [10] * 10


def test_incremental_rescoring_picks_new_moved_and_other_model_users(spark):
    current = spark.createDataFrame([
        ("same", T0, "t"), ("moved", T1, "t"), ("new", T0, "t"), ("other_model", T0, "t"), ("no_events", None, "t"),
    ], "user_id string, last_event_ts timestamp, text string")
    previous = spark.createDataFrame([
        ("same", T0, "v1", 0.1), ("moved", T0, "v1", 0.2), ("other_model", T0, "v0", 0.3), ("gone", T0, "v1", 0.4),
    ], "user_id string, last_event_ts timestamp, model_version string, probability double")
    rescore = users_to_rescore(current, previous, model_version="v1")
    assert sorted(r["user_id"] for r in rescore.collect()) == ["moved", "new", "no_events", "other_model"]
    assert rescore.columns == current.columns
    carried = carried_scores(current, previous, rescore)
    assertDataFrameEqual(carried, previous.filter("user_id = 'same'"))
