"""fuse: clean/* -> features/user_sequences (labelled, split) + features/current_sequences (everyone, now)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight.catalog import (
    CLEAN_EVENTS, CLEAN_ITEMS, CLEAN_LABELS, CLEAN_REVIEWS, CLEAN_USERS, CURRENT_SEQUENCES, USER_SEQUENCES,
)
from ecominsight.config import Config, FuseConfig, parse_cutoff, parse_horizon
from ecominsight.errors import ConfigError, LakeError, LeakageError
from ecominsight.io import Lake
from ecominsight.presets import load_preset
from ecominsight.stages.base import StageResult, persisted
from ecominsight.transforms import fuse

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FuseResult(StageResult):
    label_mode: str
    cutoff: str  # ISO day or instant
    data_end: str  # ISO day after the newest event
    horizon: str
    training_users_by_split: dict[str, dict[str, int]]
    current_users: int


def latest_event_day(lake: Lake) -> dt.date:
    """The day of the newest clean event; LakeError when there is none. From the `dt` partitions the
    manifest of clean/events lists (each written with at least one row): a Spark job less than
    max(dt) over the table, and the same day."""
    days = []
    for value in lake.partition_values(CLEAN_EVENTS, "dt"):
        try:
            days.append(dt.date.fromisoformat(value))
        except ValueError:  # Spark's folder for a null value, which max(dt) would skip too
            continue
    if not days:
        raise LakeError("clean/events is empty: nothing to fuse (see quarantine/events for why)")
    return max(days)


def default_cutoff(data_end: dt.date, settings: FuseConfig) -> dt.date | dt.datetime:
    """No fuse.cutoff: the data's end minus the horizon (a day for a whole-day horizon, else an instant)."""
    horizon = parse_horizon(settings.horizon)
    if horizon % dt.timedelta(days=1):
        return fuse.as_of_instant(data_end) - horizon
    return data_end - horizon


def run_fuse(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> FuseResult:
    """clean/* -> features/user_sequences + features/current_sequences + reports/<run_id>/fuse.json."""
    events, users, items = (lake.read(spark, table) for table in (CLEAN_EVENTS, CLEAN_USERS, CLEAN_ITEMS))
    settings = config.fuse
    data_end = latest_event_day(lake) + dt.timedelta(days=1)
    # Review text joins the sequence where the source has reviews.
    reviews = lake.read(spark, CLEAN_REVIEWS) if lake.exists(CLEAN_REVIEWS) else None
    # The item catalogue joins the events once for the event lists and both feature sets (three
    # shuffles of every event and item otherwise); on disk, as clean's tagged rows, for the heap's sake.
    # One sorted event list per user serves both texts (as of the cutoff and as of the data end).
    with (persisted(fuse.with_item_attributes(events, items), StorageLevel.DISK_ONLY) as titled,
          persisted(fuse.user_event_lists(titled, None, reviews=reviews, review_max_words=settings.review_max_words,
                                          encoding=settings.text_encoding),
                    StorageLevel.MEMORY_AND_DISK) as event_lists):
        text_sources: dict[str, Any] = dict(max_events=settings.max_events, review_max_words=settings.review_max_words,
                                            reviews=reviews, event_lists=event_lists,
                                            text_encoding=settings.text_encoding, day_max_items=settings.day_max_items,
                                            attribute_kinds=load_preset(config.source.preset).attribute_kinds())
        if settings.label_mode == "given":
            if not lake.exists(CLEAN_LABELS):
                raise ConfigError("fuse.label_mode=given, but the source preset has no label column (clean/labels is missing)")
            labels = lake.read(spark, CLEAN_LABELS)
            cutoff = data_end
            training = fuse.fuse_user_sequences(titled, users, None, as_of=cutoff, population="any_event", labels=labels,
                                                **text_sources)
            training = training.join(labels.select("user_id"), "user_id", "left_semi")
        else:
            cutoff = parse_cutoff(settings.cutoff) if settings.cutoff else default_cutoff(data_end, settings)
            labels = fuse.point_in_time_labels(events, cutoff=cutoff, horizon=parse_horizon(settings.horizon))
            training = fuse.fuse_user_sequences(titled, users, None, as_of=cutoff, population=settings.population,
                                                labels=labels, **text_sources)
        training = fuse.assign_split(training, seed=settings.split_seed, valid_fraction=settings.valid_fraction,
                                     test_fraction=settings.test_fraction)
        current = fuse.fuse_user_sequences(titled, users, None, as_of=data_end, population="any_event", labels=None,
                                           **text_sources)
        lake.write(training, USER_SEQUENCES)
        lake.write(current, CURRENT_SEQUENCES)

    written = lake.read(spark, USER_SEQUENCES)
    leaks = fuse.leaked_rows(written).count()
    if leaks:
        raise LeakageError(f"{leaks} users' features use events at or after the cutoff {cutoff}; refusing to train on them")
    by_split = {row["split"]: {"users": row["users"], "positives": row["positives"]}
                for row in written.groupBy("split").agg(F.count(F.lit(1)).alias("users"),
                                                        F.sum("label").alias("positives")).collect()}
    result = FuseResult(label_mode=settings.label_mode, cutoff=cutoff.isoformat(), data_end=data_end.isoformat(),
                        horizon=settings.horizon, training_users_by_split=by_split,
                        current_users=lake.read(spark, CURRENT_SEQUENCES).count())
    result.write(lake, run_id, "fuse")
    log.info("fuse: cutoff %s, training users by split %s, %d users to score", cutoff, by_split, result.current_users)
    return result
