"""The stages: thin glue that reads a lake zone, applies the pure transforms, and writes the next.

Each `run_<stage>(spark, config, lake, run_id)` returns a small summary dict for logs and the CLI.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import data_quality, schema
from ecominsight.config import Config, ConfigError, config_to_dict
from ecominsight.io import Lake, LakeError, read_json, read_source, staging_area, write_json
from ecominsight.presets import Preset, load_preset
from ecominsight.transforms import clean, fuse, insights

log = logging.getLogger(__name__)

STAGES = ("clean", "fuse", "train", "score", "insights", "pipeline")
LR_MODEL, GBT_MODEL, TRANSFORMER_MODEL = "lr", "gbt", "transformer"


class LeakageError(RuntimeError):
    """A feature was computed from an event at or after the label cutoff."""


class AccountingError(RuntimeError):
    """Input rows != clean rows + quarantined rows: a row went missing, which must never happen."""


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


def run_clean(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """raw files (through the source preset) -> clean/{events,users,items[,labels,reviews]},
    quarantine/{events[,users,items,reviews]}, reports/<run_id>/{clean,data_quality}.json."""
    preset = load_preset(config.source.preset)
    paths = preset.resolved_paths(config.source.paths)
    log.info("clean: preset %s reading %s", preset.name, paths)
    with staging_area(lake.staging_dir()) as stage:
        raw = clean.resolve_aliases(read_source(spark, preset, stage(paths)), aliases=preset.aliases)
        inputs, tagged = {"events": raw}, {"events": clean.mark_duplicates(clean.tag_events(raw, **_tag_kwargs(preset, run_id)))}
        if preset.reviews:
            inputs["reviews"], tagged["reviews"] = raw, clean.tag_reviews(raw, **_tag_kwargs(preset, run_id, "reviews"))
        for table, side, tag in (("users", preset.user_source, clean.tag_users), ("items", preset.item_source, clean.tag_items)):
            if side is not None:
                inputs[table] = read_source(spark, side, stage(side.resolved_paths()))
                tagged[table] = tag(inputs[table], **_tag_kwargs(preset, run_id, table))
        tagged = {table: frame.persist(StorageLevel.MEMORY_AND_DISK) for table, frame in tagged.items()}
        try:
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
            lake.write(clean.accepted_events(events), "clean", "events", partition_by=["dt"])
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
                events=lake.read(spark, "clean", "events", written_by="clean"),
            )
        finally:
            for frame in tagged.values():
                frame.unpersist()
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


def run_fuse(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """clean/* -> features/user_sequences (labelled, split) + features/current_sequences (everyone, now)."""
    events = lake.read(spark, "clean", "events", written_by="clean")
    users = lake.read(spark, "clean", "users", written_by="clean")
    items = lake.read(spark, "clean", "items", written_by="clean")
    settings = config.fuse
    data_end = _latest_event_day(events) + dt.timedelta(days=1)
    # Review text joins the sequence where the source has reviews.
    text_sources = dict(max_events=settings.max_events, review_max_words=settings.review_max_words,
                        reviews=lake.read(spark, "clean", "reviews", written_by="clean") if lake.exists("clean", "reviews") else None)

    if settings.label_mode == "given":
        if not lake.exists("clean", "labels"):
            raise ConfigError("fuse.label_mode=given, but the source preset has no label column (clean/labels is missing)")
        labels = lake.read(spark, "clean", "labels", written_by="clean")
        cutoff = data_end
        training = fuse.fuse_user_sequences(events, users, items, as_of=cutoff, population="any_event", labels=labels,
                                            **text_sources)
        training = training.join(labels.select("user_id"), "user_id", "left_semi")
    else:
        cutoff = (dt.date.fromisoformat(settings.cutoff) if settings.cutoff
                  else data_end - dt.timedelta(days=settings.horizon_days))
        labels = fuse.point_in_time_labels(events, cutoff=cutoff, horizon_days=settings.horizon_days)
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
               "horizon_days": settings.horizon_days, "training_users_by_split": by_split, "current_users": n_current}
    write_json(lake.report_dir(run_id) / "fuse.json", summary)
    log.info("fuse: cutoff %s, training users by split %s, %d users to score", cutoff, by_split, n_current)
    return summary


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
        raise LakeError("the training split holds only one class; widen fuse.horizon_days or move fuse.cutoff")
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
    current = lake.read(spark, "features", "current_sequences", written_by="fuse")
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
    # Similar lengths side by side: each predict batch then pads to a near-equal length.
    to_score = to_score.sortWithinPartitions(F.length("text"))
    scored = baseline.with_probability(lr_model, to_score).select(
        "user_id",
        transformer_probability(F.col("text"), str(model_dir), batch_size=settings.batch_size,
                                torch_threads=settings.torch_threads).alias("probability"),
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
               "mode": settings.mode, "users_scored": n_scored, "users_rescored": n_rescored if n_rescored is not None else n_scored,
               "path": path}
    write_json(lake.report_dir(run_id) / "score.json", summary)
    log.info("score: %d users in %s (%s rescored, %s mode) with model %s", n_scored, score_date,
             summary["users_rescored"], settings.mode, version)
    return summary


INSIGHT_TABLES = ("user_profiles", "segments", "marketing_actions", "recommendations")


def run_insights(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """clean/{events,users,items} + features/current_sequences + one score_date of scores/user_scores
    -> insights/{user_profiles,segments,marketing_actions,recommendations} + reports/<run_id>/insights.json."""
    settings = config.insights
    scores = lake.read(spark, "scores", "user_scores", written_by="score")
    score_date = dt.date.fromisoformat(settings.score_date) if settings.score_date else scores.agg(F.max("score_date")).first()[0]
    day_scores = scores.filter(F.col("score_date") == F.lit(score_date))
    if score_date is None or day_scores.isEmpty():
        raise LakeError(f"scores/user_scores has no rows for score_date {score_date}; run the 'score' stage for that "
                        "day, or leave insights.score_date unset to describe the latest scores")
    events = lake.read(spark, "clean", "events", written_by="clean")
    items = lake.read(spark, "clean", "items", written_by="clean")
    segment_rules = dict(propensity_bands=settings.propensity_bands, rfm_classes=settings.rfm_classes,
                         default_rfm_class=settings.default_rfm_class)
    profiles = insights.user_profiles(
        events, lake.read(spark, "clean", "users", written_by="clean"), items,
        lake.read(spark, "features", "current_sequences", written_by="fuse"), day_scores,
        top_k=settings.top_k_interests, price_bands=settings.price_bands, **segment_rules,
    )
    paths = {"user_profiles": lake.write(profiles, "insights", "user_profiles")}
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
    }
    for table, frame in tables.items():
        paths[table] = lake.write(frame, "insights", table)
    written = {table: lake.read(spark, "insights", table, written_by="insights") for table in INSIGHT_TABLES}
    summary = {
        "score_date": score_date.isoformat(),
        "rows": {table: frame.count() for table, frame in written.items()},
        "segment_sizes": dict(sorted((r["segment"], r["users"]) for r in written["segments"].collect())),
        "action_counts": dict(sorted((r["action"], r["count"]) for r in written["marketing_actions"].groupBy("action").count().collect())),
        "paths": paths,
    }
    write_json(lake.report_dir(run_id) / "insights.json", summary)
    log.info("insights: %d users profiled for %s, actions %s", summary["rows"]["user_profiles"], score_date,
             summary["action_counts"])
    return summary


def run_stage(stage: str, spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, Any]:
    """Run one stage, or all of them in order for `pipeline`."""
    runners = {"clean": run_clean, "fuse": run_fuse, "train": run_train, "score": run_score,
               "insights": run_insights}
    if stage == "pipeline":
        return {name: runner(spark, config, lake, run_id) for name, runner in runners.items()}
    if stage not in runners:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return {stage: runners[stage](spark, config, lake, run_id)}
