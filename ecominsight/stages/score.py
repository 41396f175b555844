"""score: features/current_sequences + models -> scores/user_scores/score_date=<day>/ (every user, once)
and scores/explanations/score_date=<day>/ (the top decile's most telling events)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import privacy
from ecominsight.catalog import CURRENT_SEQUENCES, EXPLANATIONS, USER_SCORES
from ecominsight.config import Config, ExplainConfig
from ecominsight.io import Lake, read_json
from ecominsight.session import default_parallelism
from ecominsight.stages.base import StageResult
from ecominsight.stages.train import LR_MODEL, TRANSFORMER_MODEL

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("user_id", "probability", "baseline_probability", "model_version", "baseline_model_version",
                 "last_event_ts")


@dataclasses.dataclass(frozen=True)
class ScoreResult(StageResult):
    model_version: str
    baseline_model_version: str
    score_date: str  # ISO day
    mode: str
    precision: str
    users_scored: int
    users_rescored: int
    path: str
    users_explained: int

    def describe(self, lake: Lake) -> list[str]:
        return [f"  scores:  {self.path}/score_date={self.score_date}  ({self.users_scored} users)"]


def _latest_scores(spark: SparkSession, lake: Lake, *, on_or_before: dt.date) -> DataFrame | None:
    """The newest complete score partition up to `on_or_before`, or None."""
    if not lake.exists(USER_SCORES):
        return None
    scores = lake.read(spark, USER_SCORES)
    latest = scores.filter(F.col("score_date") <= F.lit(on_or_before)).agg(F.max("score_date")).first()[0]
    return None if latest is None else scores.filter(F.col("score_date") == F.lit(latest)).select(*SCORE_COLUMNS)


def _scores_of(spark: SparkSession, lake: Lake, table, day: dt.date) -> DataFrame:
    return lake.read(spark, table).filter(F.col("score_date") == F.lit(day))


def run_score(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> ScoreResult:
    """Every current user scored by the transformer (and the LR baseline beside it) for one day.

    `score.mode=full` rescores everyone; `incremental` rescores only users with events newer than
    their last score (or a new model) and carries the other rows forward into the day's partition."""
    from pyspark.ml import PipelineModel

    from ecominsight.models import baseline, registry
    from ecominsight.models.scoring import (
        SCORE_TASKS_PER_CORE, carried_scores, decile_cut_points, prepare_for_scoring, transformer_probability,
        users_to_rescore, with_score_decile,
    )

    settings = config.score
    version = registry.resolve_version(lake, TRANSFORMER_MODEL, settings.model_version)
    # The baseline of the same training run where it exists, else the newest one.
    lr_version = registry.resolve_version(lake, LR_MODEL, version if lake.model_dir(LR_MODEL, version).is_dir() else "latest")
    model_dir = lake.model_dir(TRANSFORMER_MODEL, version)
    # Pseudonyms from the start: incremental mode then compares them with the stored ones.
    current = privacy.pseudonymise(lake.read(spark, CURRENT_SEQUENCES), privacy.resolve_key(lake.key_file()))
    as_of = current.agg(F.max("as_of")).first()[0]
    score_date = dt.date.fromisoformat(settings.score_date) if settings.score_date else as_of

    previous = _latest_scores(spark, lake, on_or_before=score_date) if settings.mode == "incremental" else None
    if previous is not None:
        # Cut the lineage: the day's partition may be the one this run overwrites.
        previous = previous.localCheckpoint(eager=True)
        to_score = users_to_rescore(current, previous, model_version=version)
        carried = carried_scores(current, previous, to_score)
    else:
        to_score, carried = current, None

    lr_model = PipelineModel.load(str(lake.model_dir(LR_MODEL, lr_version) / "spark_model"))
    to_score = prepare_for_scoring(to_score, tasks=SCORE_TASKS_PER_CORE * default_parallelism(spark))
    probability = transformer_probability(F.col("text"), str(model_dir), batch_size=settings.batch_size,
                                          torch_threads=settings.torch_threads, precision=settings.precision)
    scored = baseline.with_probability(lr_model, to_score).select(
        "user_id",
        probability.alias("probability"),
        "baseline_probability",
        F.lit(version).alias("model_version"),
        F.lit(lr_version).alias("baseline_model_version"),
        "last_event_ts",
    )
    day = scored if carried is None else scored.unionByName(carried)
    # Materialise once: the model runs a single time, then the deciles and the write reuse it.
    day = day.localCheckpoint(eager=True)
    # Counted from the materialised day, not from `scored`: counting that would run the model again.
    n_rescored = day.count() - carried.count() if carried is not None else None
    final = with_score_decile(day, cut_points=decile_cut_points(day)).withColumn("score_date", F.lit(score_date).cast("date"))
    path = lake.write(final.select(*SCORE_COLUMNS, "score_decile", "score_date"), USER_SCORES)
    n_scored = _scores_of(spark, lake, USER_SCORES, score_date).count()
    result = ScoreResult(
        model_version=version, baseline_model_version=lr_version, score_date=score_date.isoformat(), mode=settings.mode,
        precision=settings.precision, users_scored=n_scored, users_rescored=n_rescored if n_rescored is not None else n_scored,
        path=path, users_explained=_explain_top_decile(spark, config.insights.explain, config.score.torch_threads, lake,
                                                       current, score_date, model_dir))
    result.write(lake, run_id, "score")
    log.info("score: %d users in %s (%s rescored, %s mode) with model %s", n_scored, score_date,
             result.users_rescored, settings.mode, version)
    return result


def _explain_top_decile(spark: SparkSession, settings: ExplainConfig, torch_threads: int, lake: Lake, current: DataFrame,
                        score_date: dt.date, model_dir: Path) -> int:
    """The day's decile-1 users, highest probability first (`insights.explain.max_users`) ->
    scores/explanations/score_date=<day>/ (occlusion, ecominsight/models/attribution.py). Returns the rows."""
    from ecominsight.models import attribution
    from ecominsight.models.classifier import META_FILE

    if settings.max_users == 0:
        return 0
    day = _scores_of(spark, lake, USER_SCORES, score_date).filter(F.col("score_decile") == 1)
    top = day.orderBy(F.desc("probability"), "user_id").limit(settings.max_users) \
        .select("user_id", "probability", "score_decile", "model_version")
    # A few users: spread them over the cores, each task loads the model once.
    users = top.join(current, "user_id").repartition(default_parallelism(spark))
    explained = attribution.explain_users(
        users, str(model_dir), numeric_names=read_json(model_dir / META_FILE)["numeric"]["names"],
        top_events=settings.top_events, batch_size=settings.batch_size, torch_threads=torch_threads)
    rows = explained.join(top, "user_id").select(
        "user_id", "probability", "explained_probability", "score_decile", "model_version", "events_occluded", "events",
        F.lit(score_date).cast("date").alias("score_date"))
    lake.write(rows, EXPLANATIONS)
    return _scores_of(spark, lake, EXPLANATIONS, score_date).count()
