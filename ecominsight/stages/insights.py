"""insights: clean/{events,users,items} + features/current_sequences + one score_date of scores/user_scores
-> insights/{user_profiles,segments,marketing_actions,recommendations,purchases[,search_insights]}
+ reports/<run_id>/{insights.json,report.html}."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ecominsight import privacy
from ecominsight.catalog import (
    CLEAN_EVENTS, CLEAN_ITEMS, CLEAN_USERS, CURRENT_SEQUENCES, MARKETING_ACTIONS, PURCHASES, RECOMMENDATIONS,
    SEARCH_INSIGHTS, SEGMENTS, USER_PROFILES, USER_SCORES,
)
from ecominsight.config import Config, InsightsConfig
from ecominsight.errors import LakeError
from ecominsight.io import Lake
from ecominsight.presets import load_preset
from ecominsight.stages.base import StageResult, persisted
from ecominsight.transforms import insights

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InsightsResult(StageResult):
    score_date: str  # ISO day of the scores described
    rows: dict[str, int]  # table name -> rows written
    segment_sizes: dict[str, int]
    action_counts: dict[str, int]
    paths: dict[str, str]
    report: str  # report.html
    # the model whose probability `propensity` is, as the day's score rows name it (null before champions)
    scored_with: dict[str, str | None]

    def describe(self, lake: Lake) -> list[str]:
        lines = [f"  insights: {path}  ({self.rows[table]} rows, score_date {self.score_date})"
                 for table, path in self.paths.items()]
        return [*lines, f"  propensity from: {self.scored_with['model_name']} {self.scored_with['model_version']}",
                f"  report:  {self.report}"]


def segment_rules(settings: InsightsConfig) -> dict[str, Any]:
    """The keyword arguments that profiles and segments share: propensity bands and RFM classes."""
    return dict(propensity_bands=settings.propensity_bands, rfm_classes=settings.rfm_classes,
                default_rfm_class=settings.default_rfm_class)


def run_insights(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> InsightsResult:
    """Profiles, segments, actions, recommendations and search insights for one score day. User ids
    are pseudonymised (as in the scores) and the preset's personal columns dropped before anything
    is written."""
    from ecominsight import report

    settings = config.insights
    scores = lake.read(spark, USER_SCORES)
    score_date = dt.date.fromisoformat(settings.score_date) if settings.score_date else scores.agg(F.max("score_date")).first()[0]
    day_scores = scores.filter(F.col("score_date") == F.lit(score_date))
    if "model_name" not in day_scores.columns:
        day_scores = day_scores.withColumn("model_name", F.lit(None).cast("string"))  # scored before champions
    if score_date is None or day_scores.isEmpty():
        raise LakeError(f"scores/user_scores has no rows for score_date {score_date}; run the 'score' stage for that "
                        "day, or leave insights.score_date unset to describe the latest scores")
    key = privacy.resolve_key(lake.key_file())
    personal = load_preset(config.source.preset).personal
    # Pseudonymised once (a Python UDF over every event, read from one folder per day) and reused by every
    # table below: profiles, recommendations, purchases and the search check each scan the events.
    with persisted(privacy.pseudonymise(lake.read(spark, CLEAN_EVENTS), key), StorageLevel.MEMORY_AND_DISK) as events:
        items = lake.read(spark, CLEAN_ITEMS)
        rules = segment_rules(settings)
        profiles = insights.user_profiles(
            events, privacy.pseudonymise(lake.read(spark, CLEAN_USERS), key), items,
            privacy.pseudonymise(lake.read(spark, CURRENT_SEQUENCES), key), day_scores,
            top_k=settings.top_k_interests, price_bands=settings.price_bands, **rules,
        )
        paths = {USER_PROFILES.name: lake.write(privacy.drop_personal(profiles, personal), USER_PROFILES)}
        # The other tables start from the written profiles, so the profile joins run once.
        profiles = lake.read(spark, USER_PROFILES)
        picks = settings.recommendations
        day = F.lit(score_date).cast("date")
        tables = {
            SEGMENTS: insights.segments(profiles, **rules).withColumn("score_date", day),
            MARKETING_ACTIONS: insights.marketing_actions(profiles, rules=settings.actions, default_action=settings.default_action),
            RECOMMENDATIONS: insights.recommendations(
                events, items, profiles, top_k=picks.top_k, co_occurrence_within=picks.co_occurrence_within,
                min_co_occurrence=picks.min_co_occurrence, max_items_per_group=picks.max_items_per_group,
                neighbours_per_item=picks.neighbours_per_item,
            ).withColumn("score_date", day),
            PURCHASES: insights.daily_purchases(events),
        }
        has_searches = not events.where((F.col("event_type") == "search") & F.col("query").isNotNull()).isEmpty()
        if has_searches:
            tables[SEARCH_INSIGHTS] = insights.search_insights(
                events, profiles, top_queries=settings.search.top_queries,
                conversion_window_days=settings.search.conversion_window_days).withColumn("score_date", day)
        else:
            # A source without searches has no search table, and one from an earlier source must not survive.
            lake.drop(SEARCH_INSIGHTS)
        for table, frame in tables.items():
            paths[table.name] = lake.write(privacy.drop_personal(frame, personal), table)
    written = {table.name: lake.read(spark, table) for table in (USER_PROFILES, *tables)}
    scored_with = day_scores.agg(F.first("model_name").alias("model_name"),
                                 F.first("model_version").alias("model_version")).first()
    result = InsightsResult(
        scored_with=scored_with.asDict(),
        score_date=score_date.isoformat(),
        rows={name: frame.count() for name, frame in written.items()},
        segment_sizes=dict(sorted((r["segment"], r["users"]) for r in written[SEGMENTS.name].collect())),
        action_counts=dict(sorted((r["action"], r["count"])
                                  for r in written[MARKETING_ACTIONS.name].groupBy("action").count().collect())),
        paths=paths,
        report=str(report.write_report(spark, lake, run_id, score_date=score_date,
                                       min_group_size=settings.report.min_group_size)),
    )
    result.write(lake, run_id, "insights")
    log.info("insights: %d users profiled for %s, actions %s", result.rows[USER_PROFILES.name], score_date,
             result.action_counts)
    return result
