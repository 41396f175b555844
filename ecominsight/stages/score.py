"""score: features/current_sequences + models -> scores/user_scores/score_date=<day>/ (every user, once)
and scores/explanations/score_date=<day>/ (the top decile's most telling events)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import privacy
from ecominsight.catalog import CURRENT_SEQUENCES, EXPLANATIONS, USER_SCORES
from ecominsight.config import Config, ExplainConfig, ScoreConfig, TrackingConfig
from ecominsight.errors import LakeError
from ecominsight.io import Lake, read_json
from ecominsight.session import default_parallelism
from ecominsight.stages.base import StageResult
from ecominsight.stages.train import GBT_MODEL, LR_MODEL, TRANSFORMER_MODEL
from ecominsight.storage import StoragePath
from ecominsight.tracking import is_models_uri, registered_lake_model

log = logging.getLogger(__name__)

# `probability` is the scoring model's (the champion by default), named by `model_name` and
# `model_version`; the LR baseline's probability rides along, as before champions existed.
SCORE_COLUMNS = ("user_id", "probability", "model_name", "model_version", "baseline_probability",
                 "baseline_model_version", "last_event_ts")


@dataclasses.dataclass(frozen=True)
class ScoreResult(StageResult):
    model_name: str
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
        return [f"  scores:  {self.path}  (score_date={self.score_date}: {self.users_scored} users)"]


def _latest_scores(spark: SparkSession, lake: Lake, *, on_or_before: dt.date) -> DataFrame | None:
    """The newest complete score partition up to `on_or_before`, or None."""
    if not lake.exists(USER_SCORES):
        return None
    scores = lake.read(spark, USER_SCORES)
    if "model_name" not in scores.columns:
        # Written before champions: no name, so every such row is rescored once.
        scores = scores.withColumn("model_name", F.lit(None).cast("string"))
    latest = scores.filter(F.col("score_date") <= F.lit(on_or_before)).agg(F.max("score_date")).first()[0]
    return None if latest is None else scores.filter(F.col("score_date") == F.lit(latest)).select(*SCORE_COLUMNS)


def _scores_of(spark: SparkSession, lake: Lake, table, day: dt.date) -> DataFrame:
    return lake.read(spark, table).filter(F.col("score_date") == F.lit(day))


def scoring_model(lake: Lake, settings: ScoreConfig, tracking: TrackingConfig) -> tuple[str, str]:
    """(model name, version) that scores the users: `score.model=champion` takes models/CHAMPION (a lake
    trained before champions: the transformer's LATEST); `score.model_version` other than `latest`
    picks a version of that model; `models:/<name>@<alias>` the lake model that registered version
    names, asked of `tracking`'s registry."""
    from ecominsight.models import registry

    name = settings.model
    if is_models_uri(name):
        name, version = registered_lake_model(tracking, settings.model, lake_root=str(lake.root))
        return name, registry.resolve_version(lake, name, version)
    if name == "champion":
        champion = registry.resolve_champion(lake)
        if champion is None:
            log.warning("score: no models/CHAMPION on this lake (trained before champions); scoring with the transformer")
            name = TRANSFORMER_MODEL
        else:
            name = champion[0]
            if settings.model_version == "latest":
                return champion
    return name, registry.resolve_version(lake, name, settings.model_version)


def _same_run_or_latest(lake: Lake, name: str, version: str) -> str:
    from ecominsight.models import registry

    return registry.resolve_version(lake, name, version if lake.model_dir(name, version).exists() else "latest")


def run_score(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> ScoreResult:
    """Every current user scored by the scoring model (the champion by default; the LR baseline beside
    it) for one day.

    `score.mode=full` rescores everyone; `incremental` rescores only users with events newer than
    their last score (or a new model: another name or version) and carries the other rows forward
    into the day's partition."""
    from ecominsight.models import champion as champions
    from ecominsight.models.scoring import (
        SCORE_TASKS_PER_CORE, carried_scores, decile_cut_points, prepare_for_scoring, users_to_rescore, with_score_decile,
    )

    settings = config.score
    name, version = scoring_model(lake, settings, config.tracking)
    # The baseline of the same training run where it exists, else the newest one.
    lr_version = _same_run_or_latest(lake, LR_MODEL, version)
    transformer_dir = lake.model_dir(TRANSFORMER_MODEL, _same_run_or_latest(lake, TRANSFORMER_MODEL, version))
    # Pseudonyms from the start: incremental mode then compares them with the stored ones.
    current = privacy.pseudonymise(lake.read(spark, CURRENT_SEQUENCES), privacy.resolve_key(lake.key_file()))
    as_of = current.agg(F.max("as_of")).first()[0]
    score_date = dt.date.fromisoformat(settings.score_date) if settings.score_date else as_of

    previous = _latest_scores(spark, lake, on_or_before=score_date) if settings.mode == "incremental" else None
    if previous is not None:
        # Cut the lineage: the day's partition may be the one this run overwrites.
        previous = previous.localCheckpoint(eager=True)
        to_score = users_to_rescore(current, previous, model_name=name, model_version=version)
        carried = carried_scores(current, previous, to_score)
    else:
        to_score, carried = current, None

    to_score = prepare_for_scoring(to_score, tasks=SCORE_TASKS_PER_CORE * default_parallelism(spark))
    components = _component_versions(lake, name, version)
    with_components = _with_component_probabilities(to_score, lake, components, settings)
    probability = (_stacked(lake, version) if name == champions.HYBRID_MODEL
                   else F.col(_probability_column(name)))
    scored = with_components.select(
        "user_id",
        probability.alias("probability"),
        F.lit(name).alias("model_name"),
        F.lit(version).alias("model_version"),
        F.col(_probability_column(LR_MODEL)).alias("baseline_probability"),
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
        model_name=name, model_version=version, baseline_model_version=lr_version, score_date=score_date.isoformat(),
        mode=settings.mode, precision=settings.precision, users_scored=n_scored,
        users_rescored=n_rescored if n_rescored is not None else n_scored, path=path,
        users_explained=_explain_top_decile(spark, config.insights.explain, config.score.torch_threads, lake,
                                            current, score_date, transformer_dir))
    result.write(lake, run_id, "score")
    log.info("score: %d users in %s (%s rescored, %s mode) with model %s %s", n_scored, score_date,
             result.users_rescored, settings.mode, name, version)
    return result


def _probability_column(name: str) -> str:
    return f"_{name}_probability"


def _component_versions(lake: Lake, name: str, version: str) -> dict[str, str]:
    """The single models whose probabilities this scoring needs, with their versions: the hybrid's
    components as its stacker.json records them, else the model itself; LR always (it rides along)."""
    from ecominsight.models import champion

    if name == champion.HYBRID_MODEL:
        needed = dict(read_json(lake.model_dir(name, version) / champion.STACKER_FILE)["component_versions"])
    else:
        needed = {name: version}
    needed.setdefault(LR_MODEL, _same_run_or_latest(lake, LR_MODEL, version))
    return needed


def _with_component_probabilities(users: DataFrame, lake: Lake, components: dict[str, str],
                                  settings: ScoreConfig) -> DataFrame:
    """`users` plus `_<name>_probability` for each component (MLlib pipelines and the transformer's UDF)."""
    from pyspark.ml import PipelineModel

    from ecominsight.models import baseline
    from ecominsight.models.scoring import transformer_probability

    for name, version in sorted(components.items()):
        model_dir = lake.model_dir(name, version)
        if name in (LR_MODEL, GBT_MODEL):
            users = baseline.with_probability(PipelineModel.load(str(model_dir / "spark_model")), users,
                                              output_col=_probability_column(name))
        elif name == TRANSFORMER_MODEL:
            users = users.withColumn(_probability_column(name), transformer_probability(
                F.col("text"), str(model_dir), batch_size=settings.batch_size, torch_threads=settings.torch_threads,
                precision=settings.precision))
        else:
            raise LakeError(f"model {name!r} cannot be scored as a component")
    return users


def _stacked(lake: Lake, version: str) -> Column:
    """The hybrid's probability as a column over its components' probability columns."""
    from ecominsight.models import champion
    from ecominsight.models.scoring import stacked_probability

    stacker = champion.Stacker.from_dict(read_json(lake.model_dir(champion.HYBRID_MODEL, version) / champion.STACKER_FILE))
    return stacked_probability(stacker, {name: F.col(_probability_column(name)) for name in stacker.components})


def _explain_top_decile(spark: SparkSession, settings: ExplainConfig, torch_threads: int, lake: Lake, current: DataFrame,
                        score_date: dt.date, model_dir: StoragePath) -> int:
    """The day's decile-1 users, highest probability first (`insights.explain.max_users`) ->
    scores/explanations/score_date=<day>/ (occlusion, ecominsight/models/attribution.py). Returns the rows."""
    from ecominsight.models import attribution
    from ecominsight.models import META_FILE

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
    # A day whose top decile is empty (probabilities tied at the top, as a baseline champion can give
    # on few features) writes no partition: it reads as no explanations (the manifest keeps the schema).
    written = lake.read(spark, EXPLANATIONS)
    return written.filter(F.col("score_date") == F.lit(score_date)).count()
