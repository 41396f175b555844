"""Re-running a stage on unchanged input rewrites the same rows.

The shared `pipeline_run` (tests/conftest.py) is the first run. Each test copies its lake, re-runs one
stage on the copy (over the copied outputs, as a re-run on the same lake would) with a new run id, and
compares what the stage writes with the first run's, row for row and column for column, floats exactly:
set equality would hide a duplicated row, and a tolerance would hide a stage whose result depends on
the order Spark happens to process rows in (as fuse's spend did: see the last test).

What differs by design, and is left out of a comparison only there: the quarantine's `run_id` (it names
the run), the wall-clock seconds of each training epoch, and the model version (a re-run of train
publishes a new one, compared with the first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import schema
from ecominsight.catalog import (
    CLEAN_EVENTS, CLEAN_ITEMS, CLEAN_LABELS, CLEAN_REVIEWS, CLEAN_USERS, CURRENT_SEQUENCES, EXPLANATIONS, QUARANTINE,
    USER_SCORES, USER_SEQUENCES, Table,
)
from ecominsight.io import LATEST, Lake, read_json
from ecominsight.models import baseline
from ecominsight.stages import run_clean, run_fuse, run_score, run_train
from ecominsight.stages.train import GBT_MODEL, LR_MODEL, TRANSFORMER_MODEL
from ecominsight.transforms import fuse

RERUN_ID = "rerun"
SHOWN_DIFFERENCES = 5
RUN = "_found_in"


def comparable(frame: DataFrame) -> DataFrame:
    """Map columns as their entries sorted by key: Spark's set operations refuse maps, and two equal
    maps give equal sorted entries."""
    return frame.select(*[F.array_sort(F.map_entries(field.name)).alias(field.name)
                          if isinstance(field.dataType, T.MapType) else F.col(field.name) for field in frame.schema.fields])


def assert_same_rows(first: DataFrame, second: DataFrame, what: str) -> None:
    """The same schema and the same multiset of rows (both differences empty), every value compared
    exactly by Spark's own equality (-0.0 equals 0.0, NaN equals NaN; maps entry by entry); a failure
    shows differing rows."""
    assert second.schema == first.schema, f"{what}: the schema changed"
    assert first.take(1), f"{what}: the first run wrote no rows; comparing nothing would prove nothing"
    first, second = comparable(first), comparable(second)
    differences = first.exceptAll(second).withColumn(RUN, F.lit("first run only")).unionByName(
        second.exceptAll(first).withColumn(RUN, F.lit("re-run only")))
    shown = differences.limit(SHOWN_DIFFERENCES).collect()
    assert not shown, f"{what}: rows that differ, {RUN} says whose: {shown}"


def without_timings(metrics: dict) -> dict:
    """A model's metrics.json less what its fit cost (`cost`) and the seconds each training epoch took:
    a re-run cannot repeat those."""
    metrics = {key: value for key, value in metrics.items() if key != "cost"}
    if "history" not in metrics:
        return metrics
    return {**metrics, "history": [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in metrics["history"]]}


@pytest.fixture
def rerun(pipeline_run, tmp_path):
    """(spark, the first run's lake, its stage results, a copy of that lake to re-run on, the config for the copy)."""
    spark, config, lake, summary = pipeline_run
    copy = Lake(tmp_path / "lake")
    shutil.copytree(lake.root.path, copy.root.path, ignore=shutil.ignore_patterns("_staging", "_lock"))
    return spark, lake, summary, copy, dataclasses.replace(config, lake=str(copy.root), run_id=RERUN_ID)


def test_clean_rerun_writes_the_same_clean_and_quarantine_rows(rerun):
    spark, first, summary, again, config = rerun
    result = run_clean(spark, config, again, RERUN_ID)

    assert result.to_dict() == summary["clean"].to_dict()
    tables = [CLEAN_EVENTS, CLEAN_USERS, CLEAN_ITEMS, CLEAN_LABELS, CLEAN_REVIEWS, *QUARANTINE.values()]
    written = [table for table in tables if first.exists(table)]
    assert [table for table in tables if again.exists(table)] == written
    assert {CLEAN_EVENTS, CLEAN_USERS, CLEAN_ITEMS, QUARANTINE["events"]} <= set(written)
    for table in written:
        before, after = first.read(spark, table), again.read(spark, table)
        if "run_id" in before.columns:
            # The quarantine names the run that set each row aside: the one column that differs by design.
            assert {r[0] for r in after.select("run_id").distinct().collect()} == {RERUN_ID}
            before, after = before.drop("run_id"), after.drop("run_id")
        assert_same_rows(before, after, str(table))


def test_fuse_rerun_writes_the_same_feature_rows(rerun):
    spark, first, summary, again, config = rerun
    result = run_fuse(spark, config, again, RERUN_ID)

    assert result.to_dict() == summary["fuse"].to_dict()
    for table in (USER_SEQUENCES, CURRENT_SEQUENCES):
        assert_same_rows(first.read(spark, table), again.read(spark, table), str(table))


def test_train_rerun_fits_the_same_models(rerun):
    """A re-run publishes a new version B beside the first run's A. B's baselines measure as A's and
    give every user A's probability, to the last bit. The transformer trains afresh (the lake's path is
    part of its checkpoint key, so the copy's run finds no checkpoint of its own) and, seeded per epoch
    and rank, measures as A's too; only the wall-clock seconds of each epoch differ."""
    from pyspark.ml import PipelineModel

    spark, first, summary, again, config = rerun
    version_a = summary["train"].version
    version_b = run_train(spark, config, again, RERUN_ID).version

    assert version_b != version_a
    for name in (LR_MODEL, GBT_MODEL, TRANSFORMER_MODEL):
        assert again.model_pointer(name, LATEST).read_text().strip() == version_b
        metrics_a, metrics_b = (without_timings(read_json(again.model_dir(name, v) / "metrics.json"))
                                for v in (version_a, version_b))
        assert metrics_b == metrics_a, name

    features = first.read(spark, USER_SEQUENCES)

    def predictions(name: str, version: str) -> DataFrame:
        model = PipelineModel.load(str(again.model_dir(name, version) / "spark_model"))
        return baseline.with_probability(model, features, output_col="p").select("user_id", "split", "p")

    for name in (LR_MODEL, GBT_MODEL):
        assert_same_rows(predictions(name, version_a), predictions(name, version_b), f"{name} predictions")


def day_of(spark, lake: Lake, table: Table, day: str) -> DataFrame:
    return lake.read(spark, table).filter(F.col("score_date") == F.lit(day).cast("date"))


def test_score_rerun_in_full_mode_writes_the_same_day(rerun):
    """The day's scores and explanations again, to the last bit: the users reach the model in the same
    batches on every run (hashed on user_id, sorted by text length; models/scoring.prepare_for_scoring)."""
    spark, first, summary, again, config = rerun
    config = dataclasses.replace(config, score=dataclasses.replace(config.score, mode="full"))
    result = run_score(spark, config, again, RERUN_ID)

    first_result = summary["score"]
    assert result.score_date == first_result.score_date
    assert {**result.to_dict(), "path": None} == {**first_result.to_dict(), "path": None}
    for table in (USER_SCORES, EXPLANATIONS):
        assert_same_rows(day_of(spark, first, table, result.score_date), day_of(spark, again, table, result.score_date),
                         str(table))


def test_spend_does_not_depend_on_the_order_rows_arrive_in(spark):
    """Spark sums a group in the order its rows arrive, which a re-run does not keep, and the last bits of
    a sum of doubles depend on that order: 0.1 + 0.2 + 0.3 is 0.6000000000000001, 0.3 + 0.2 + 0.1 is 0.6.
    The fuse re-run above once wrote spend 1601.5200000000002 where the first run wrote 1601.52."""
    day = dt.date(2020, 1, 1)
    rows = [("u1", dt.datetime(2020, 1, 1, hour), "purchase", f"i{hour}", None, None, price, 1.0, None, f"o{hour}", "unit", day)
            for hour, price in enumerate((0.1, 0.2, 0.3))]
    spends = {fuse.user_numeric_features(spark.createDataFrame(ordered, schema.EVENTS).coalesce(1), as_of=dt.date(2020, 2, 1))
              .select("spend", "spend_365d").first() for ordered in (rows, rows[::-1])}
    assert len(spends) == 1, spends
