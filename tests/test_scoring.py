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
        ("other_champion", T0, "t"), ("unnamed", T0, "t"),
    ], "user_id string, last_event_ts timestamp, text string")
    previous = spark.createDataFrame([
        ("same", T0, "gbt", "v1", 0.1), ("moved", T0, "gbt", "v1", 0.2), ("other_model", T0, "gbt", "v0", 0.3),
        ("gone", T0, "gbt", "v1", 0.4),
        # the same training run, but another champion; and a row written before model names existed
        ("other_champion", T0, "transformer", "v1", 0.5), ("unnamed", T0, None, "v1", 0.6),
    ], "user_id string, last_event_ts timestamp, model_name string, model_version string, probability double")
    rescore = users_to_rescore(current, previous, model_name="gbt", model_version="v1")
    assert sorted(r["user_id"] for r in rescore.collect()) == ["moved", "new", "no_events", "other_champion",
                                                              "other_model", "unnamed"]
    assert rescore.columns == current.columns
    carried = carried_scores(current, previous, rescore)
    assertDataFrameEqual(carried, previous.filter("user_id = 'same'"))


def test_the_stacked_column_equals_the_stacker_it_was_fitted_as(spark):
    """The hybrid scores in Spark with the formula it was fitted and evaluated with in numpy."""
    import numpy as np

    from ecominsight.models.champion import Stacker
    from ecominsight.models.scoring import stacked_probability

    stacker = Stacker(components=("lr", "transformer"), coefficients=(0.7, 1.3), intercept=-0.2)
    rows = [(0.1, 0.8), (0.5, 0.5), (0.0, 1.0), (0.93, 0.02)]  # 0 and 1 are clipped alike in both
    frame = spark.createDataFrame(rows, "lr double, transformer double")
    got = [r["p"] for r in frame.select(stacked_probability(
        stacker, {"lr": frame["lr"], "transformer": frame["transformer"]}).alias("p")).collect()]
    assert np.allclose(got, stacker.predict(np.array(rows)), rtol=0, atol=1e-12)
