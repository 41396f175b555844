"""The stages: thin glue that reads a lake zone, applies the pure transforms, and writes the next.

Each `run_<stage>(spark, config, lake, run_id)` returns a small summary dict for logs and the CLI.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import data_quality, privacy, schema
from ecominsight.config import Config, FuseConfig, config_to_dict, parse_cutoff, parse_horizon
from ecominsight.errors import AccountingError, ConfigError, LakeError, LeakageError
from ecominsight.io import Lake, read_json, read_source, staging_area, write_json
from ecominsight.presets import Preset, load_preset
from ecominsight.transforms import clean, fuse, insights

log = logging.getLogger(__name__)

STAGES = ("clean", "fuse", "train", "score", "insights", "pipeline", "register")
LR_MODEL, GBT_MODEL, TRANSFORMER_MODEL = "lr", "gbt", "transformer"


def _tag_kwargs(preset: Preset, run_id: str, table: str = "events") -> dict[str, Any]:
    """Keyword arguments of clean.tag_<table> for a preset: its events or reviews (both from the
    preset's rows), its users (`user_source`) or its items (`item_source`)."""
    ts = preset.timestamp
    times = dict(ts_column=ts.column, ts_unit=ts.unit, ts_format=ts.format, ts_zone=ts.zone, ts_value=ts.value)
    if table == "reviews":
        return dict(source=preset.name, run_id=run_id, field_map=preset.reviews, **times)
    if table == "users":
        side, signup = preset.user_source, preset.user_source.timestamp
        signup_times = dict(ts_column=signup.column, ts_unit=signup.unit, ts_format=signup.format,
                            ts_zone=signup.zone) if signup else {}
        return dict(source=preset.name, run_id=run_id, field_map=side.fields, age_values=side.age_values,
                    gender_values=side.gender_values, **signup_times)
    if table == "items":
        return dict(source=preset.name, run_id=run_id, field_map=preset.item_source.fields)
    return dict(
        source=preset.name, run_id=run_id, field_map=preset.events, user_field_map=preset.users,
        label_column=preset.label, event_type_map=preset.event_types, **times,
        window=(preset.window.start, preset.window.end, preset.window.zone) if preset.window else None,
        reject_rules=[(rule.reason, rule.when) for rule in preset.reject],
    )


def _with_mapped_columns(raw: DataFrame, columns: list[str], source: str) -> DataFrame:
    """The raw rows, all quarantined as malformed (with a warning naming the columns) when the
    input lacks columns the preset maps: a wrong delimiter or header must not crash the run."""
    missing = [name for name in columns if name not in raw.columns]
    if missing:
        log.warning("clean: %s input lacks the mapped column(s) %s (columns read: %s); every row goes to quarantine "
                    "as malformed_row: check the delimiter, the header and the preset", source, missing, raw.columns)
    return clean.mark_missing_columns(raw, columns=columns)


def run_clean(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """raw files (through the source preset) -> clean/{events,users,items[,labels,reviews]},
    quarantine/{events[,users,items,reviews]}, reports/<run_id>/{clean,data_quality}.json."""
    preset = load_preset(config.source.preset)
    paths = preset.resolved_paths(config.source.paths)
    log.info("clean: preset %s reading %s", preset.name, paths)
    with staging_area(lake.staging_dir()) as stage, ExitStack() as cached:
        raw = _with_mapped_columns(clean.resolve_aliases(read_source(spark, preset, stage(paths)), aliases=preset.aliases),
                                   clean.mapped_columns(preset.events, preset.users, preset.reviews,
                                                        extra=[preset.timestamp.column, preset.label]), preset.name)
        inputs, tagged = {"events": raw}, {"events": clean.mark_duplicates(clean.tag_events(raw, **_tag_kwargs(preset, run_id)))}
        if preset.reviews:
            inputs["reviews"], tagged["reviews"] = raw, clean.tag_reviews(raw, **_tag_kwargs(preset, run_id, "reviews"))
        for table, side, tag in (("users", preset.user_source, clean.tag_users), ("items", preset.item_source, clean.tag_items)):
            if side is not None:
                inputs[table] = _with_mapped_columns(read_source(spark, side, stage(side.resolved_paths())),
                                                     clean.mapped_columns(side.fields, extra=[side.timestamp and side.timestamp.column]),
                                                     f"{preset.name} {table}")
                tagged[table] = tag(inputs[table], **_tag_kwargs(preset, run_id, table))
        # On disk, not MEMORY_AND_DISK: in-memory cache blocks ran a 4 GB local JVM out of heap at 25M
        # events (10M with 1.6 GB; smaller partitions did not help); disk blocks stream out batch by batch,
        # and the OS page cache still serves the re-reads from memory where there is room.
        tagged = {table: cached.enter_context(_persisted(frame, StorageLevel.DISK_ONLY)) for table, frame in tagged.items()}
        window = _tag_kwargs(preset, run_id)["window"]
        profiles = {table: data_quality.table_profile(frame, columns=data_quality.PROFILED[table],
                                                      window=window if table == "events" else None)
                    for table, frame in tagged.items()}
        n_raw = raw.count()
        for table, profile in profiles.items():
            n_input = n_raw if inputs[table] is raw else inputs[table].count()
            if n_input != profile["clean_rows"] + profile["quarantined_rows"]:
                raise AccountingError(f"{table}: input rows {n_input} != clean {profile['clean_rows']} "
                                      f"+ quarantined {profile['quarantined_rows']}")
        events = tagged["events"]
        users = clean.derive_users(events, gender_values=preset.gender_values, age_values=preset.age_values)
        items = clean.derive_items(events)
        if "users" in tagged:
            users = clean.combine_users(clean.accepted_rows(tagged["users"], schema.USERS), users)
        if "items" in tagged:
            items = clean.combine_items(clean.accepted_rows(tagged["items"], schema.ITEMS), items)
        accepted = clean.accepted_events(events)
        lake.write(accepted, "clean", "events", partition_by=["dt"])
        lake.write(users, "clean", "users")
        lake.write(items, "clean", "items")
        optional = {("clean", "labels"): clean.derive_labels(events) if preset.label else None,
                    ("clean", "reviews"): clean.accepted_rows(tagged["reviews"], schema.REVIEWS) if preset.reviews else None}
        for table in ("events", "users", "items", "reviews"):
            optional[("quarantine", table)] = clean.quarantined_rows(tagged[table]) if table in tagged else None
        for (zone, table), frame in optional.items():
            # A table this preset does not produce must not survive from an earlier run on the same lake.
            if frame is None:
                lake.drop(zone, table)
            else:
                lake.write(frame, zone, table, partition_by=["source"] if zone == "quarantine" else None)
        report = data_quality.clean_report(
            run_id=run_id, preset=preset.name, profiles=profiles,
            users=lake.read(spark, "clean", "users", written_by="clean"),
            # With a schema: an input whose every row was quarantined leaves no event files.
            events=lake.read(spark, "clean", "events", written_by="clean", schema=accepted.schema),
        )
    write_json(lake.report_dir(run_id) / "data_quality.json", report)
    counts = {table: {"input_rows": p["input_rows"], "clean_rows": p["clean_rows"], "quarantined_rows": p["quarantined_rows"],
                      "quarantined_by_reason": {r: n for r, n in p["rows_by_reason"].items() if r != data_quality.CLEAN_KEY}}
              for table, p in profiles.items()}
    summary = {"preset": preset.name, "inputs": paths, **counts["events"], "tables": counts,
               "users_without_events": report["users_without_events"]}
    write_json(lake.report_dir(run_id) / "clean.json", summary)
    log.info("clean: %d input rows = %d clean + %d quarantined %s", summary["input_rows"], summary["clean_rows"],
             summary["quarantined_rows"], summary["quarantined_by_reason"])
    return summary


def _latest_event_day(events: DataFrame) -> dt.date:
    latest = events.agg(F.max("dt")).first()[0]
    if latest is None:
        raise LakeError("clean/events is empty: nothing to fuse (see quarantine/events for why)")
    return latest


def _default_cutoff(data_end: dt.date, settings: FuseConfig) -> dt.date | dt.datetime:
    """No fuse.cutoff: the data's end minus the horizon (a day for a whole-day horizon, else an instant)."""
    horizon = parse_horizon(settings.horizon)
    if horizon % dt.timedelta(days=1):
        return fuse.as_of_instant(data_end) - horizon
    return data_end - horizon


def run_fuse(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """clean/* -> features/user_sequences (labelled, split) + features/current_sequences (everyone, now)."""
    events = lake.read(spark, "clean", "events", written_by="clean")
    users = lake.read(spark, "clean", "users", written_by="clean")
    items = lake.read(spark, "clean", "items", written_by="clean")
    settings = config.fuse
    data_end = _latest_event_day(events) + dt.timedelta(days=1)
    # Review text joins the sequence where the source has reviews.
    reviews = lake.read(spark, "clean", "reviews", written_by="clean") if lake.exists("clean", "reviews") else None
    # One sorted event list per user serves both texts (as of the cutoff and as of the data end).
    with _persisted(fuse.user_event_lists(events, items, reviews=reviews, review_max_words=settings.review_max_words),
                    StorageLevel.MEMORY_AND_DISK) as event_lists:
        text_sources = dict(max_events=settings.max_events, review_max_words=settings.review_max_words,
                            reviews=reviews, event_lists=event_lists)
        if settings.label_mode == "given":
            if not lake.exists("clean", "labels"):
                raise ConfigError("fuse.label_mode=given, but the source preset has no label column (clean/labels is missing)")
            labels = lake.read(spark, "clean", "labels", written_by="clean")
            cutoff = data_end
            training = fuse.fuse_user_sequences(events, users, items, as_of=cutoff, population="any_event", labels=labels,
                                                **text_sources)
            training = training.join(labels.select("user_id"), "user_id", "left_semi")
        else:
            cutoff = parse_cutoff(settings.cutoff) if settings.cutoff else _default_cutoff(data_end, settings)
            labels = fuse.point_in_time_labels(events, cutoff=cutoff, horizon=parse_horizon(settings.horizon))
            training = fuse.fuse_user_sequences(events, users, items, as_of=cutoff, population=settings.population,
                                                labels=labels, **text_sources)
        training = fuse.assign_split(training, seed=settings.split_seed, valid_fraction=settings.valid_fraction,
                                     test_fraction=settings.test_fraction)
        current = fuse.fuse_user_sequences(events, users, items, as_of=data_end, population="any_event", labels=None,
                                           **text_sources)
        lake.write(training, "features", "user_sequences")
        lake.write(current, "features", "current_sequences")

    written = lake.read(spark, "features", "user_sequences", written_by="fuse")
    leaks = fuse.leaked_rows(written).count()
    if leaks:
        raise LeakageError(f"{leaks} users' features use events at or after the cutoff {cutoff}; refusing to train on them")
    by_split = {row["split"]: {"users": row["users"], "positives": row["positives"]}
                for row in written.groupBy("split").agg(F.count(F.lit(1)).alias("users"),
                                                        F.sum("label").alias("positives")).collect()}
    n_current = lake.read(spark, "features", "current_sequences", written_by="fuse").count()
    summary = {"label_mode": settings.label_mode, "cutoff": cutoff.isoformat(), "data_end": data_end.isoformat(),
               "horizon": settings.horizon, "training_users_by_split": by_split, "current_users": n_current}
    write_json(lake.report_dir(run_id) / "fuse.json", summary)
    log.info("fuse: cutoff %s, training users by split %s, %d users to score", cutoff, by_split, n_current)
    return summary


@contextmanager
def _persisted(frame: DataFrame, level: StorageLevel) -> Iterator[DataFrame]:
    """`frame` persisted at `level` for the block, unpersisted after it (also on error)."""
    frame = frame.persist(level)
    try:
        yield frame
    finally:
        frame.unpersist()


def _labels_and_probabilities(scored: DataFrame, split: str, column: str) -> tuple[list[int], list[float]]:
    rows = scored.filter(F.col("split") == split).select("label", column).orderBy("user_id").collect()
    return [r["label"] for r in rows], [r[column] for r in rows]


def _fit_baseline(name: str, pipeline, data: DataFrame, lake: Lake, version: str, lineage: dict) -> dict[str, Any]:
    """Fit an MLlib baseline on the train split, evaluate on valid/test, save model + metrics."""
    from ecominsight.models import baseline
    from ecominsight.models.metrics import evaluate_splits

    model = pipeline.fit(data.filter(F.col("split") == "train"))
    scored = baseline.with_probability(model, data, output_col="p")
    metrics = evaluate_splits(_labels_and_probabilities(scored, "valid", "p"), _labels_and_probabilities(scored, "test", "p"))
    metrics.update(baseline.explain(model))
    model_dir = lake.model_dir(name, version)
    model.write().overwrite().save(str(model_dir / "spark_model"))
    write_json(model_dir / "metrics.json", metrics)
    write_json(model_dir / "lineage.json", {**lineage, "model": name})
    log.info("train: %s test ROC-AUC %s (95%% CI %s)", name, metrics["test"]["roc_auc"], metrics["test"]["roc_auc_ci"])
    return metrics


def run_train(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """features/user_sequences -> models/{lr,gbt,transformer}/<version>/ (+ LATEST pointers)."""
    from ecominsight.models import baseline, registry, transformer

    data = lake.read(spark, "features", "user_sequences", written_by="fuse")
    train_split = data.filter(F.col("split") == "train")
    if train_split.select("label").distinct().count() < 2:
        raise LakeError("the training split holds only one class; widen fuse.horizon or move fuse.cutoff")
    fingerprint = registry.data_fingerprint(data)
    version = registry.new_version(fingerprint)
    lineage = {"version": version, "run_id": run_id, "data_fingerprint": fingerprint,
               "data_path": lake.table_path("features", "user_sequences"), "code_version": registry.code_version(),
               "config": config_to_dict(config), "trained_at": dt.datetime.now(dt.timezone.utc).isoformat()}

    lr, gbt = config.train.logistic_regression, config.train.gradient_boosted_trees
    baselines = {
        LR_MODEL: baseline.logistic_regression_pipeline(reg_param=lr.reg_param, elastic_net_param=lr.elastic_net_param,
                                                        max_iter=lr.max_iter),
        GBT_MODEL: baseline.gradient_boosted_trees_pipeline(
            max_depth=gbt.max_depth, max_iter=gbt.max_iter, step_size=gbt.step_size,
            subsampling_rate=gbt.subsampling_rate, min_instances_per_node=gbt.min_instances_per_node, seed=gbt.seed),
    }
    metrics = {name: _fit_baseline(name, pipeline, data, lake, version, lineage) for name, pipeline in baselines.items()}

    # (b) the pretrained encoder, fine-tuned with TorchDistributor
    settings = config.train.transformer
    pretrained_path = transformer.resolve_pretrained(settings.pretrained)
    extra_tokens: list[str] = []
    if settings.extend_cjk_vocab:
        characters = [row["c"] for row in train_split.select(
            F.explode(F.split(F.regexp_replace("text", f"[^{transformer.CJK_RANGES}]", ""), "")).alias("c")
        ).filter(F.col("c") != "").distinct().collect()]
        extra_tokens = transformer.missing_characters(
            transformer.load_tokenizer(pretrained_path, extra_tokens=[]), characters
        )
        log.info("train: %d CJK characters in the training text, %d added to the vocabulary", len(characters), len(extra_tokens))
    transformer_dir = lake.model_dir(TRANSFORMER_MODEL, version)
    spec = {"data_path": lake.table_path("features", "user_sequences"), "output_dir": str(transformer_dir),
            # The name, not the driver's path: each rank resolves it in its own environment
            # (on a cluster the executors' shipped env lies elsewhere than the driver's).
            "pretrained": settings.pretrained, "extra_tokens": extra_tokens, "max_length": settings.max_length,
            "epochs": settings.epochs, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
            "head_learning_rate": settings.head_learning_rate, "weight_decay": settings.weight_decay,
            "warmup_ratio": settings.warmup_ratio, "seed": settings.seed,
            "positive_class_weight": settings.positive_class_weight,
            "numeric_features": list(fuse.NUMERIC_FEATURES) if settings.numeric_features else []}
    if settings.freeze_layers:
        # Only when set (as max_train_users below): unfrozen runs keep their checkpoint key.
        spec["freeze_layers"] = settings.freeze_layers
    if settings.max_train_users is not None:
        # Only when set: uncapped runs keep the checkpoint key (a hash of the spec) they had before the key existed.
        spec["max_train_users"] = settings.max_train_users
    if settings.checkpoint:
        # Keyed by the data and everything that shapes training, so only a true re-run resumes.
        key = registry.stable_hash({**spec, "output_dir": None, "world": settings.num_processes})
        spec["checkpoint_dir"] = str(lake.root / "checkpoints" / TRANSFORMER_MODEL / f"{fingerprint[:12]}-{key[:12]}")
    transformer.run_distributed_training(spec, num_processes=settings.num_processes,
                                         local_mode=settings.local_mode, use_gpu=settings.use_gpu)
    metrics[TRANSFORMER_MODEL] = transformer_metrics = read_json(transformer_dir / "metrics.json")
    write_json(transformer_dir / "lineage.json", {**lineage, "model": TRANSFORMER_MODEL, "pretrained": settings.pretrained,
                                                  "pretrained_path": pretrained_path, "max_length": settings.max_length})
    log.info("train: transformer test ROC-AUC %s (best epoch %s)", transformer_metrics["test"]["roc_auc"],
             transformer_metrics["best_epoch"])

    for name in metrics:
        registry.publish(lake, name, version)
    summary = {"version": version, **metrics, "model_dirs": {name: str(lake.model_dir(name, version)) for name in metrics}}
    write_json(lake.report_dir(run_id) / "train.json", summary)
    return summary


SCORE_COLUMNS = ("user_id", "probability", "baseline_probability", "model_version", "baseline_model_version",
                 "last_event_ts")


def _latest_scores(spark: SparkSession, lake: Lake, *, on_or_before: dt.date) -> DataFrame | None:
    """The newest complete score partition up to `on_or_before`, or None."""
    if not lake.exists("scores", "user_scores"):
        return None
    scores = lake.read(spark, "scores", "user_scores", written_by="score")
    latest = scores.filter(F.col("score_date") <= F.lit(on_or_before)).agg(F.max("score_date")).first()[0]
    return None if latest is None else scores.filter(F.col("score_date") == F.lit(latest)).select(*SCORE_COLUMNS)


# Tasks per core for the model. Measured (BENCHMARKS.md, scoring): one task per core with Spark's
# default Arrow batches came within 3% of the plain loop; two tasks per core with 128-row Arrow
# batches cost 14% (the second wave of hash-sized tasks ends unevenly).
SCORE_TASKS_PER_CORE = 1


def run_score(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """features/current_sequences + models -> scores/user_scores/score_date=<day>/ (every user, once).

    `score.mode=full` rescores everyone; `incremental` rescores only users with events newer than
    their last score (or a new model) and carries the other rows forward into the day's partition."""
    from pyspark.ml import PipelineModel

    from ecominsight.models import baseline, registry
    from ecominsight.models.scoring import carried_scores, transformer_probability, users_to_rescore, with_score_decile

    settings = config.score
    version = registry.resolve_version(lake, TRANSFORMER_MODEL, settings.model_version)
    lr_version = registry.resolve_version(lake, LR_MODEL, version if lake.model_dir(LR_MODEL, version).is_dir() else "latest")
    model_dir = lake.model_dir(TRANSFORMER_MODEL, version)
    # Pseudonyms from the start: incremental mode then compares them with the stored ones.
    current = privacy.pseudonymise(lake.read(spark, "features", "current_sequences", written_by="fuse"),
                                   privacy.resolve_key(lake.root))
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
    # A small features table reads as one partition (and AQE coalesces small shuffles to one): the
    # model would then run in one Python worker while the other cores idle. Hash on user_id keeps the
    # batches, and so the scores, the same from run to run.
    to_score = to_score.repartition(SCORE_TASKS_PER_CORE * spark.sparkContext.defaultParallelism, "user_id")
    # Similar lengths side by side: each predict batch then pads to a near-equal length.
    to_score = to_score.sortWithinPartitions(F.length("text"), "user_id")
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
    cut_points = day.approxQuantile("probability", [i / 10 for i in range(1, 10)], 1e-4)
    final = with_score_decile(day, cut_points=cut_points).withColumn("score_date", F.lit(score_date).cast("date"))
    path = lake.write(final.select(*SCORE_COLUMNS, "score_decile", "score_date"), "scores", "user_scores",
                      partition_by=["score_date"])
    n_scored = lake.read(spark, "scores", "user_scores", written_by="score").filter(F.col("score_date") == F.lit(score_date)).count()
    summary = {"model_version": version, "baseline_model_version": lr_version, "score_date": score_date.isoformat(),
               "mode": settings.mode, "precision": settings.precision, "users_scored": n_scored,
               "users_rescored": n_rescored if n_rescored is not None else n_scored, "path": path,
               "users_explained": _explain_top_decile(spark, config, lake, current, score_date, model_dir)}
    write_json(lake.report_dir(run_id) / "score.json", summary)
    log.info("score: %d users in %s (%s rescored, %s mode) with model %s", n_scored, score_date,
             summary["users_rescored"], settings.mode, version)
    return summary


def _explain_top_decile(spark: SparkSession, config: Config, lake: Lake, current: DataFrame, score_date: dt.date,
                        model_dir) -> int:
    """The day's decile-1 users, highest probability first (`insights.explain.max_users`) ->
    scores/explanations/score_date=<day>/ (occlusion, ecominsight/models/attribution.py). Returns the rows."""
    from ecominsight.models import attribution
    from ecominsight.models.classifier import META_FILE

    settings = config.insights.explain
    if settings.max_users == 0:
        return 0
    day = lake.read(spark, "scores", "user_scores", written_by="score").filter(
        (F.col("score_date") == F.lit(score_date)) & (F.col("score_decile") == 1))
    top = day.orderBy(F.desc("probability"), "user_id").limit(settings.max_users) \
        .select("user_id", "probability", "score_decile", "model_version")
    # A few users: spread them over the cores, each task loads the model once.
    users = top.join(current, "user_id").repartition(spark.sparkContext.defaultParallelism)
    explained = attribution.explain_users(
        users, str(model_dir), numeric_names=read_json(model_dir / META_FILE)["numeric"]["names"],
        top_events=settings.top_events, batch_size=settings.batch_size, torch_threads=config.score.torch_threads)
    rows = explained.join(top, "user_id").select(
        "user_id", "probability", "explained_probability", "score_decile", "model_version", "events_occluded", "events",
        F.lit(score_date).cast("date").alias("score_date"))
    lake.write(rows, "scores", "explanations", partition_by=["score_date"])
    return lake.read(spark, "scores", "explanations", written_by="score").filter(F.col("score_date") == F.lit(score_date)).count()


def run_insights(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """clean/{events,users,items} + features/current_sequences + one score_date of scores/user_scores
    -> insights/{user_profiles,segments,marketing_actions,recommendations[,search_insights]}
    + reports/<run_id>/{insights.json,report.html}. User ids are pseudonymised (as in the scores) and
    the preset's personal columns dropped before anything is written."""
    from ecominsight import report

    settings = config.insights
    scores = lake.read(spark, "scores", "user_scores", written_by="score")
    score_date = dt.date.fromisoformat(settings.score_date) if settings.score_date else scores.agg(F.max("score_date")).first()[0]
    day_scores = scores.filter(F.col("score_date") == F.lit(score_date))
    if score_date is None or day_scores.isEmpty():
        raise LakeError(f"scores/user_scores has no rows for score_date {score_date}; run the 'score' stage for that "
                        "day, or leave insights.score_date unset to describe the latest scores")
    key = privacy.resolve_key(lake.root)
    personal = load_preset(config.source.preset).personal
    events = privacy.pseudonymise(lake.read(spark, "clean", "events", written_by="clean"), key)
    items = lake.read(spark, "clean", "items", written_by="clean")
    segment_rules = dict(propensity_bands=settings.propensity_bands, rfm_classes=settings.rfm_classes,
                         default_rfm_class=settings.default_rfm_class)
    profiles = insights.user_profiles(
        events, privacy.pseudonymise(lake.read(spark, "clean", "users", written_by="clean"), key), items,
        privacy.pseudonymise(lake.read(spark, "features", "current_sequences", written_by="fuse"), key), day_scores,
        top_k=settings.top_k_interests, price_bands=settings.price_bands, **segment_rules,
    )
    paths = {"user_profiles": lake.write(privacy.drop_personal(profiles, personal), "insights", "user_profiles")}
    # The other tables start from the written profiles, so the profile joins run once.
    profiles = lake.read(spark, "insights", "user_profiles", written_by="insights")
    picks = settings.recommendations
    day = F.lit(score_date).cast("date")
    tables = {
        "segments": insights.segments(profiles, **segment_rules).withColumn("score_date", day),
        "marketing_actions": insights.marketing_actions(profiles, rules=settings.actions, default_action=settings.default_action),
        "recommendations": insights.recommendations(
            events, items, profiles, top_k=picks.top_k, co_occurrence_within=picks.co_occurrence_within,
            min_co_occurrence=picks.min_co_occurrence, max_items_per_group=picks.max_items_per_group,
            neighbours_per_item=picks.neighbours_per_item,
        ).withColumn("score_date", day),
        "purchases": insights.daily_purchases(events),
    }
    has_searches = not events.where((F.col("event_type") == "search") & F.col("query").isNotNull()).isEmpty()
    if has_searches:
        tables["search_insights"] = insights.search_insights(
            events, profiles, top_queries=settings.search.top_queries,
            conversion_window_days=settings.search.conversion_window_days).withColumn("score_date", day)
    else:
        # A source without searches has no search table, and one from an earlier source must not survive.
        lake.drop("insights", "search_insights")
    for table, frame in tables.items():
        paths[table] = lake.write(privacy.drop_personal(frame, personal), "insights", table)
    written = {table: lake.read(spark, "insights", table, written_by="insights") for table in ("user_profiles", *tables)}
    summary = {
        "score_date": score_date.isoformat(),
        "rows": {table: frame.count() for table, frame in written.items()},
        "segment_sizes": dict(sorted((r["segment"], r["users"]) for r in written["segments"].collect())),
        "action_counts": dict(sorted((r["action"], r["count"]) for r in written["marketing_actions"].groupBy("action").count().collect())),
        "paths": paths,
    }
    summary["report"] = str(report.write_report(spark, lake, run_id, score_date=score_date,
                                                min_group_size=settings.report.min_group_size))
    write_json(lake.report_dir(run_id) / "insights.json", summary)
    log.info("insights: %d users profiled for %s, actions %s", summary["rows"]["user_profiles"], score_date,
             summary["action_counts"])
    return summary


def warehouse_table_name(zone: str, table: str) -> str:
    """The metastore name of a lake table: `<zone>_<table>` (clean_events, scores_user_scores, ...)."""
    return f"{zone}_{table}"


def run_register(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """Every table of the `warehouse.zones` (by default the pseudonymised outputs: scores, insights)
    -> an external Parquet table `<database>.<zone>_<table>` in the session's metastore, partitions
    recovered, so that a warehouse (Spark SQL, Databricks SQL, Hive) queries it.

    Tables are dropped and re-created on each run (external: the data stays), so a registered schema
    never lags behind the lake's; the lake stays the source of truth."""
    database = config.warehouse.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    registered: dict[str, dict[str, Any]] = {}
    for zone in config.warehouse.zones:
        for table in lake.tables(zone):
            name = f"`{database}`.`{warehouse_table_name(zone, table)}`"
            location = Path(lake.table_path(zone, table)).resolve().as_uri()
            spark.sql(f"DROP TABLE IF EXISTS {name}")
            spark.sql(f"CREATE TABLE {name} USING parquet LOCATION '{location}'")
            partitions = [c.name for c in spark.catalog.listColumns(warehouse_table_name(zone, table), database)
                          if c.isPartition]
            if partitions:
                # The metastore tracks partitions of a partitioned table itself; add the ones on disk.
                spark.sql(f"ALTER TABLE {name} RECOVER PARTITIONS")
            registered[warehouse_table_name(zone, table)] = {"location": location, "partitioned_by": partitions}
    if not registered:
        raise LakeError(f"the lake at {lake.root} holds no tables to register; run the pipeline first")
    catalog = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    if catalog != "hive":
        log.warning("register: the session's catalog is %r, so the tables live only as long as this session; "
                    "set warehouse.embedded_metastore or run where a metastore is configured", catalog)
    summary = {"database": database, "catalog": catalog, "tables": registered}
    write_json(lake.report_dir(run_id) / "register.json", summary)
    log.info("register: %d tables in %s (%s catalog): %s", len(registered), database, catalog, ", ".join(registered))
    return summary


def run_stage(stage: str, spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """Run one stage, or all of them in order for `pipeline` (which does not `register`: a
    warehouse is optional, and registering is cheap to run after it)."""
    runners = {"clean": run_clean, "fuse": run_fuse, "train": run_train, "score": run_score,
               "insights": run_insights}
    if stage == "pipeline":
        return {name: runner(spark, config, lake, run_id) for name, runner in runners.items()}
    if stage == "register":
        return {stage: run_register(spark, config, lake, run_id)}
    if stage not in runners:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return {stage: runners[stage](spark, config, lake, run_id)}
