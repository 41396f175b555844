"""The whole pipeline on the bundled Online Retail II sample, with a tiny encoder to keep it quick."""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from pyspark.sql import functions as F

from ecominsight import privacy
from ecominsight.config import load_config, parse_horizon
from ecominsight.io import read_json
from ecominsight.stages import run_score
from ecominsight.transforms import fuse
from ecominsight.catalog import (
    CLEAN_EVENTS, CURRENT_SEQUENCES, EXPLANATIONS, MARKETING_ACTIONS, PURCHASES, RECOMMENDATIONS, SEARCH_INSIGHTS, SEGMENTS,
    USER_PROFILES, USER_SCORES, USER_SEQUENCES,
)
from tests.raw_records import count_records


def test_clean_accounts_for_every_input_row(pipeline_run):
    _, _, lake, summary = pipeline_run
    report = summary["clean"]
    assert [Path(path).name for path in report.inputs] == ["online_retail_ii_sample.parquet"]
    raw_rows = count_records(report.inputs, fmt="parquet")  # from the file's footer, not from Spark
    assert raw_rows == 66_718  # the bundled sample's row count
    assert report.input_rows == report.clean_rows + report.quarantined_rows == raw_rows
    assert report.quarantined_by_reason["missing_user_id"] > 0  # the sample's guest invoices
    assert read_json(lake.report_dir("e2e") / "clean.json") == report.to_dict()


def test_training_table_obeys_label_and_split_invariants(pipeline_run):
    spark, config, lake, _ = pipeline_run
    training = lake.read(spark, USER_SEQUENCES)
    assert training.count() == training.select("user_id").distinct().count()
    assert {r["split"] for r in training.select("split").distinct().collect()} == {"train", "valid", "test"}
    assert {r["label"] for r in training.select("label").distinct().collect()} == {0, 1}
    # Recompute the label independently from the clean events: a purchase in [cutoff, cutoff + horizon).
    events = lake.read(spark, CLEAN_EVENTS)
    cutoff = dt.datetime.fromisoformat(config.fuse.cutoff)
    end = cutoff + parse_horizon(config.fuse.horizon)
    buyers = {r["user_id"] for r in events.filter((F.col("event_type") == "purchase") & (F.col("ts") >= cutoff)
                                                  & (F.col("ts") < end)).select("user_id").distinct().collect()}
    earlier_buyers = {r["user_id"] for r in events.filter((F.col("event_type") == "purchase") & (F.col("ts") < cutoff))
                      .select("user_id").distinct().collect()}
    rows = training.select("user_id", "label", "recency_days").collect()
    assert {r["user_id"] for r in rows} == earlier_buyers  # population: purchasers before the cutoff
    assert all(r["label"] == int(r["user_id"] in buyers) for r in rows)
    assert all(r["recency_days"] > 0 for r in rows)  # nothing at or after the cutoff leaked in


def test_metrics_are_real_numbers_for_every_model(pipeline_run):
    _, _, lake, summary = pipeline_run
    train = summary["train"]
    for model in ("lr", "gbt", "transformer", "hybrid"):
        metrics = read_json(Path(train.model_dirs[model]) / "metrics.json")
        for split in ("valid", "test"):
            for key in ("accuracy", "f1", "roc_auc", "avg_precision"):
                value = metrics[split][key]
                assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (model, split, key)
            low, high = metrics[split]["roc_auc_ci"]
            assert low <= metrics[split]["roc_auc"] <= high
            assert len(metrics[split]["decile_lift"]) == 10 and metrics[split]["decile_lift"][-1]["cumulative_gain"] == 1.0
            assert 0.0 <= metrics[split]["brier"] <= 1.0
        lineage = read_json(Path(train.model_dirs[model]) / "lineage.json")
        assert lineage["data_fingerprint"] and lineage["config"]["fuse"]["cutoff"] == "2011-09-10"
        assert lineage["champion"] == train.champion
    # The baselines must beat chance on this label (reference LR AUC on the complete data: 0.81).
    assert train.metrics["lr"]["test"]["roc_auc"] > 0.65 and train.metrics["gbt"]["test"]["roc_auc"] > 0.65
    assert set(read_json(Path(train.model_dirs["gbt"]) / "metrics.json")["feature_importances"]) >= {"recency_days"}
    transformer_dir = Path(train.model_dirs["transformer"])
    assert (transformer_dir / "model.safetensors").is_file() and (transformer_dir / "head.safetensors").is_file()
    assert not list(transformer_dir.glob("*.bin")) and not list(transformer_dir.glob("*.pt"))


def test_each_fit_records_its_cost_beside_its_metrics(pipeline_run):
    """Wall seconds and start time of every model's fit, in metrics.json and the train report alike.
    With local-mode training (the default) the transformer trains while LR and then GBT fit, and each
    says so (`cost.concurrent`); the hybrid's stacker comes after all three."""
    _, config, _, summary = pipeline_run
    assert config.train.concurrent_baselines and config.train.transformer.local_mode
    train, windows = summary["train"], {}
    for model in ("lr", "gbt", "transformer", "hybrid"):
        cost = train.metrics[model]["cost"]
        assert read_json(Path(train.model_dirs[model]) / "metrics.json")["cost"] == cost
        assert cost["fit_seconds"] > 0
        assert cost["concurrent"] is (model != "hybrid")
        windows[model] = (cost["fit_started_at"], cost["fit_started_at"] + cost["fit_seconds"])
    assert windows["lr"][1] <= windows["gbt"][0] + 0.01  # the baselines one after the other
    assert windows["transformer"][0] < windows["lr"][1]  # the transformer beside them
    assert max(windows[model][1] for model in ("lr", "gbt", "transformer")) <= windows["hybrid"][0] + 0.01


def test_the_champion_is_the_best_model_on_validation_and_scores_the_users(pipeline_run):
    spark, _, lake, summary = pipeline_run
    train = summary["train"]
    valid = {name: train.metrics[name]["valid"]["roc_auc"] for name in ("lr", "gbt", "transformer", "hybrid")}
    champion = train.champion
    assert champion["model"] == max(valid, key=valid.get) and champion["reason"].startswith("highest validation ROC-AUC")
    assert [(r["model"], r["valid_roc_auc"]) for r in champion["ranking"]] == sorted(valid.items(), key=lambda i: -i[1])
    versus = champion["champion_vs_best_baseline"]
    assert versus["baseline"] in ("lr", "gbt") and versus["ci"][0] <= versus["delta"] <= versus["ci"][1]
    assert read_json(lake.report_dir("e2e") / "train.json")["champion"] == champion
    pointer = read_json(lake.champion_pointer())
    assert (pointer["model"], pointer["version"]) == (champion["model"], train.version)
    # The hybrid's stacker weighs the three single models of the same run.
    stacker = read_json(Path(train.model_dirs["hybrid"]) / "stacker.json")
    assert stacker["components"] == ["lr", "gbt", "transformer"] and set(stacker["component_versions"].values()) == {train.version}
    scores = lake.read(spark, USER_SCORES).filter(F.col("score_date") == summary["score"].score_date)
    assert {(r["model_name"], r["model_version"]) for r in scores.select("model_name", "model_version").distinct().collect()} \
        == {(champion["model"], train.version)}
    assert (summary["score"].model_name, summary["insights"].scored_with["model_name"]) == (champion["model"],) * 2
    assert f"scored with {champion['model']}" in (lake.report_dir("e2e") / "report.html").read_text()


def test_scores_cover_every_user_once_and_are_readable_by_duckdb(pipeline_run):
    spark, _, lake, summary = pipeline_run
    current = lake.read(spark, CURRENT_SEQUENCES)
    events = lake.read(spark, CLEAN_EVENTS)
    assert current.count() == events.select("user_id").distinct().count()
    files = [file.path for file in lake.current_files(USER_SCORES)]
    (result,) = duckdb.sql(
        f"SELECT count(*) AS n, count(DISTINCT user_id) AS users, min(probability) AS lo, max(probability) AS hi, "
        f"count(DISTINCT model_version) AS versions, min(score_date) AS day, count(baseline_probability) AS baselines "
        f"FROM read_parquet({files}, hive_partitioning = 1)"
    ).fetchall()
    n, users, lo, hi, versions, day, baselines = result
    assert n == users == current.count() == summary["score"].users_scored
    assert 0.0 <= lo <= hi <= 1.0 and versions == 1 and baselines == n
    assert str(day) == summary["score"].score_date == "2011-12-10"
    assert lake.read(spark, USER_SCORES).filter(F.col("model_version") == summary["train"].version).count() == n
    # A SQL engine reads the day's partition where the manifest says it is.
    location = lake.current_locations(USER_SCORES)[f"score_date={summary['score'].score_date}"]
    via_sql = spark.sql(f"SELECT count(DISTINCT user_id) AS users FROM parquet.`{location}`").first()["users"]
    assert via_sql == n


def test_rescoring_a_day_replaces_only_that_day(pipeline_run):
    spark, config, lake, summary = pipeline_run
    other_day = load_config("local", [f"lake={lake.root}", "score.score_date=2011-12-11"])
    run_score(spark, other_day, lake, "e2e-rescore-1")
    run_score(spark, other_day, lake, "e2e-rescore-2")
    scores = lake.read(spark, USER_SCORES)
    per_day = {str(r["score_date"]): r["count"] for r in scores.groupBy("score_date").count().collect()}
    n = summary["score"].users_scored
    assert per_day == {"2011-12-10": n, "2011-12-11": n}
    assert len(fuse.NUMERIC_FEATURES) == 20


def test_incremental_rescore_of_an_unchanged_day_reuses_every_row(pipeline_run):
    spark, config, lake, summary = pipeline_run
    day = summary["score"].score_date
    before = sorted(lake.read(spark, USER_SCORES).filter(F.col("score_date") == day).collect())
    incremental = load_config("local", [f"lake={lake.root}", "score.mode=incremental", f"score.score_date={day}"])
    result = run_score(spark, incremental, lake, "e2e-incremental")
    assert result.users_rescored == 0 and result.users_scored == len(before)
    after = sorted(lake.read(spark, USER_SCORES).filter(F.col("score_date") == day).collect())
    assert after == before  # idempotent: the same inputs give the same rows
    deciles = {r["score_decile"] for r in after}
    assert deciles == set(range(1, 11))


def test_insight_tables_cover_every_scored_user_once(pipeline_run):
    spark, config, lake, summary = pipeline_run
    report, n = summary["insights"], summary["score"].users_scored
    assert report.score_date == summary["score"].score_date
    tables = {table.name: lake.read(spark, table) for table in (USER_PROFILES, SEGMENTS, MARKETING_ACTIONS, RECOMMENDATIONS)}
    profiles, segments, actions, recommended = tables.values()
    assert profiles.count() == profiles.select("user_id").distinct().count() == n == report.rows["user_profiles"]
    assert {r["propensity_decile"] for r in profiles.select("propensity_decile").distinct().collect()} == set(range(1, 11))
    # Online Retail has titles but no categories: interests are titles.
    assert {r["kind"] for r in profiles.select(F.explode("top_categories.kind").alias("kind")).distinct().collect()} == {"title"}
    assert segments.agg(F.sum("users")).first()[0] == n
    assert report.segment_sizes == {r["segment"]: r["users"] for r in segments.collect()}
    assert actions.count() == actions.select("user_id").distinct().count() == n == sum(report.action_counts.values())
    assert actions.filter(F.col("reason").isNull()).count() == 0
    per_user = recommended.groupBy("user_id").count()
    assert 0 < per_user.agg(F.max("count")).first()[0] <= config.insights.recommendations.top_k
    assert recommended.join(profiles, "user_id", "left_anti").count() == 0
    bought = privacy.pseudonymise(lake.read(spark, CLEAN_EVENTS), privacy.resolve_key(lake.key_file())) \
        .filter(F.col("event_type") == "purchase")
    assert recommended.join(bought, ["user_id", "item_id"], "left_semi").count() == 0
    files = [file.path for file in lake.current_files(USER_PROFILES)]
    ((with_interests,),) = duckdb.sql(f"SELECT count(*) FROM read_parquet({files}) WHERE len(top_categories) > 0").fetchall()
    assert with_interests == n
    assert read_json(lake.report_dir("e2e") / "insights.json") == report.to_dict()


def _day_rows(spark, lake, day: str) -> tuple[list, list]:
    """The day's score rows as Spark reads them and as DuckDB reads the current files the manifest
    names (a file of a failed write would show up in either)."""
    via_spark = sorted(tuple(r) for r in lake.read(spark, USER_SCORES).filter(F.col("score_date") == day)
                       .select("user_id", "probability", "model_version", "score_decile").collect())
    files = [file.path for file in lake.current_files(USER_SCORES)]
    via_duckdb = sorted(duckdb.sql(
        f"SELECT user_id, probability, model_version, score_decile FROM read_parquet({files}, "
        f"hive_partitioning = 1) WHERE score_date = DATE '{day}'").fetchall())
    return via_spark, via_duckdb


def _version_folders(lake, table) -> set[str]:
    return {name for name in (lake.root / table.zone / table.name).list() if name.startswith("v-")}


def test_a_scoring_run_whose_model_fails_leaves_the_previous_partition_readable(pipeline_run):
    spark, _, lake, summary = pipeline_run
    day, version = summary["score"].score_date, summary["train"].version
    before = _day_rows(spark, lake, day)
    assert before[0] == before[1] and len(before[0]) == summary["score"].users_scored
    # A new model version whose weights are damaged: the Python workers fail when they load it.
    broken = lake.model_dir("transformer", "vbroken")
    shutil.copytree(lake.model_dir("transformer", version).path, broken.path)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    config = load_config("local", [f"lake={lake.root}", "score.model=transformer", "score.model_version=vbroken",
                                   f"score.score_date={day}"])
    with pytest.raises(Exception, match="(?i)safetensors|header|incomplete|deserializ"):
        run_score(spark, config, lake, "e2e-broken-model")
    assert _day_rows(spark, lake, day) == before


def test_a_write_that_fails_halfway_leaves_the_previous_partition_readable(pipeline_run):
    """The failure happens inside Lake.write's Spark job, half way through the new rows and after the
    job has set up its output (the new version folder and its _temporary exist). Without adaptive
    execution the job's first stage runs after that setup; with it, before."""
    spark, _, lake, summary = pipeline_run
    day = summary["score"].score_date
    before, versions = _day_rows(spark, lake, day), _version_folders(lake, USER_SCORES)
    table = Path(lake.table_path(USER_SCORES))
    rows = lake.read(spark, USER_SCORES).filter(F.col("score_date") == day)
    fail_on = sorted(r["user_id"] for r in rows.select("user_id").collect())[len(before[0]) // 2]

    @F.pandas_udf("double")
    def fail_on_user(user_id: pd.Series, probability: pd.Series) -> pd.Series:
        if (user_id == fail_on).any():
            staging = sorted(p.parent.name for p in table.glob("v-*/_temporary") if p.parent.name not in versions)
            raise RuntimeError(f"injected failure at user {fail_on} while writing into {staging}")
        return probability

    replacement = rows.orderBy("user_id").withColumn("probability", fail_on_user("user_id", "probability"))
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        with pytest.raises(Exception, match=rf"injected failure at user {fail_on} while writing into \['v-"):
            lake.write(replacement, USER_SCORES)
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
    assert _day_rows(spark, lake, day) == before
    # The failed write's version folder is gone: nothing half-written is left, even unpublished.
    assert _version_folders(lake, USER_SCORES) == versions


# Every output table with user ids (insights/segments has none).
OUTPUT_TABLES = [USER_SCORES, EXPLANATIONS, USER_PROFILES, MARKETING_ACTIONS, RECOMMENDATIONS, PURCHASES]


def test_user_ids_in_every_output_are_keyed_pseudonyms(pipeline_run):
    spark, _, lake, _ = pipeline_run
    raw_ids = {r["user_id"] for r in lake.read(spark, CLEAN_EVENTS).select("user_id").distinct().collect()}
    key = privacy.resolve_key(lake.key_file())  # no ECOMINSIGHT_PSEUDONYM_KEY here: the lake's own key file
    expected = {privacy.pseudonym(u, key) for u in raw_ids}
    for table in OUTPUT_TABLES:
        ids = {r["user_id"] for r in lake.read(spark, table).select("user_id").distinct().collect()}
        assert ids and ids <= expected and not ids & raw_ids, table
    assert not lake.exists(SEARCH_INSIGHTS)  # Online Retail has no searches
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (lake.report_dir("e2e") / "report.html").read_text())
    assert not {u for u in raw_ids if re.search(rf"\b{re.escape(u)}\b", page)}


def test_profiles_use_the_score_deciles_and_top_users_are_explained(pipeline_run):
    spark, config, lake, summary = pipeline_run
    scores = lake.read(spark, USER_SCORES).filter(F.col("score_date") == summary["score"].score_date)
    profiles = lake.read(spark, USER_PROFILES)
    joined = profiles.join(scores, "user_id")
    assert joined.count() == profiles.count() and joined.filter(F.col("propensity_decile") != F.col("score_decile")).count() == 0
    explanations = lake.read(spark, EXPLANATIONS).filter(
        F.col("score_date") == summary["score"].score_date)
    rows = explanations.collect()
    top = scores.filter(F.col("score_decile") == 1).count()
    assert len(rows) == summary["score"].users_explained == min(top, config.insights.explain.max_users) > 0
    assert {r["score_decile"] for r in rows} == {1}
    explains_the_score = summary["score"].model_name == "transformer"
    for row in rows:
        # The transformer is explained; its probability is the score only where it is the scoring model.
        if explains_the_score:
            assert row["explained_probability"] == pytest.approx(row["probability"], abs=1e-4)
        assert 0.0 <= row["explained_probability"] <= 1.0
        assert len(row["events"]) <= config.insights.explain.top_events and row["events_occluded"] >= len(row["events"])
        contributions = [e["contribution"] for e in row["events"]]
        assert contributions == sorted(contributions, reverse=True) and all(c > 0 for c in contributions)
    assert any(row["events"] for row in rows)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]


def test_report_renders_in_headless_chromium_without_errors(pipeline_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium): the browser check of report.html needs it")
    _, _, lake, _ = pipeline_run
    page = Path((lake.report_dir("e2e") / "report.html").path).as_uri()

    def chromium(*flags):
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *flags, page],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    dumped = chromium("--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    # Console messages (script errors, refused loads under the page's Content-Security-Policy) are logged as CONSOLE.
    assert [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line] == []
    body = re.search(r"<body([^>]*)>", dumped.stdout).group(1)
    status = dict(re.findall(r'([a-z-]+)="([^"]*)"', body))
    assert status["data-status"] == "ok" and int(status["data-plots"]) == int(status["data-plots-decoded"]) >= 9
    for section in ("data-quality", "label-balance", "models", "segments", "categories", "actions"):
        assert f'<section id="{section}">' in dumped.stdout
    for title in ("ROC curve (test)", "Precision-recall curve (test)", "Calibration (reliability, test)", "Decile lift (test)",
                  "Cumulative gain (test)"):
        assert f'alt="{title}"' in dumped.stdout
    shot = tmp_path / "report.png"
    captured = chromium("--window-size=1200,4000", f"--screenshot={shot}")
    assert captured.returncode == 0 and shot.stat().st_size > 20_000
