"""The decisions the stage runners make, tested without running a stage: how a preset becomes the
clean transforms' arguments, the row accounting, the training spec and its checkpoint key, the
scoring layout, the decile cut points, the warehouse DDL, and the lake paths of the catalog."""

from __future__ import annotations

import dataclasses

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import catalog
from ecominsight.catalog import CLEAN_EVENTS, QUARANTINE, USER_SCORES, USER_SEQUENCES, Table
from ecominsight.config import TrainConfig, TransformerConfig
from ecominsight.errors import AccountingError, LakeError
from ecominsight.io import LATEST, Lake
from ecominsight.models.registry import stable_hash
from ecominsight.models.scoring import decile_cut_points, prepare_for_scoring, with_score_decile
from ecominsight.presets import load_preset
from ecominsight.schema import NUMERIC_FEATURES
from ecominsight.stages import STAGES, run_stage
from ecominsight.stages.clean import check_accounting, table_counts, tag_arguments
from ecominsight.stages.register import table_ddl
from ecominsight.stages.train import baseline_pipelines, cjk_characters, transformer_spec


def test_tag_arguments_pass_the_presets_typed_parts_whole():
    preset = load_preset("jdata2017")  # events, a users file with a signup time, an items file
    events = tag_arguments(preset, "r1")
    assert events["timestamp"] is preset.timestamp and events["window"] is preset.window
    assert events["reject_rules"] == preset.reject and events["field_map"] == preset.events
    assert (events["source"], events["run_id"]) == (preset.name, "r1")
    users = tag_arguments(preset, "r1", "users")
    assert users["signup"] is preset.user_source.timestamp and users["age_values"] == preset.user_source.age_values
    assert tag_arguments(preset, "r1", "items") == {"source": preset.name, "run_id": "r1",
                                                     "field_map": preset.item_source.fields}


def test_accounting_holds_or_names_the_table_that_lost_rows():
    profiles = {"events": {"clean_rows": 7, "quarantined_rows": 3, "input_rows": 10,
                           "rows_by_reason": {"<clean>": 7, "duplicate": 2, "bad_timestamp": 1}},
                "users": {"clean_rows": 4, "quarantined_rows": 0, "input_rows": 4, "rows_by_reason": {"<clean>": 4}}}
    check_accounting({"events": 10, "users": 4}, profiles)
    with pytest.raises(AccountingError, match="users: input rows 5 != clean 4 \\+ quarantined 0"):
        check_accounting({"events": 10, "users": 5}, profiles)
    assert table_counts(profiles)["events"] == {"input_rows": 10, "clean_rows": 7, "quarantined_rows": 3,
                                                 "quarantined_by_reason": {"duplicate": 2, "bad_timestamp": 1}}


def test_training_spec_comes_from_the_settings_and_keeps_the_old_checkpoint_key():
    settings = TransformerConfig()
    spec = transformer_spec(settings, data_path="/lake/features/user_sequences", output_dir="/lake/models/t/v1",
                            extra_tokens=["手", "机"])
    assert spec.numeric_features == NUMERIC_FEATURES and spec.extra_tokens == ("手", "机")
    assert (spec.freeze_layers, spec.max_train_users, spec.checkpoint_dir) == (0, None, None)
    # The key a run had when the spec was a dict: only a true re-run finds its checkpoints again.
    before = {"data_path": spec.data_path, "output_dir": None, "pretrained": "minilm", "extra_tokens": ["手", "机"],
              "max_length": 128, "epochs": 2, "batch_size": 16, "learning_rate": 5e-5, "head_learning_rate": 1e-3,
              "weight_decay": 0.01, "warmup_ratio": 0.1, "seed": 42, "positive_class_weight": None,
              "numeric_features": list(NUMERIC_FEATURES), "world": 2}
    assert spec.checkpoint_key(world=2) == stable_hash(before)
    capped = dataclasses.replace(spec, max_train_users=500, output_dir="/elsewhere", checkpoint_dir="/c")
    assert capped.checkpoint_key(world=2) == stable_hash({**before, "max_train_users": 500})
    assert spec.checkpoint_key(world=1) != spec.checkpoint_key(world=2)
    text_only = transformer_spec(dataclasses.replace(settings, numeric_features=False), data_path="d", output_dir="o",
                                 extra_tokens=[])
    assert text_only.numeric_features == ()


def test_baselines_are_built_from_their_settings(spark):  # MLlib estimators need a live session
    pipelines = baseline_pipelines(TrainConfig())
    assert list(pipelines) == ["lr", "gbt"]
    assert pipelines["gbt"].getStages()[-1].getMaxDepth() == TrainConfig().gradient_boosted_trees.max_depth


def test_a_gbt_fit_on_the_fit_order_does_not_depend_on_how_its_rows_were_written(spark):
    """The same users in two row orders (as two runs' shuffles may write them): GBT with subsampling
    fits differently on the orders as written, identically on `in_fit_order` of each."""
    import math
    import random

    from ecominsight.models import baseline

    rng = random.Random(11)
    rows = []
    for i in range(600):
        x1, x2 = rng.uniform(0, 10), rng.uniform(0, 10)
        rows.append((f"u{i:04d}", x1, x2, int(rng.random() < 1 / (1 + math.exp((x2 - x1) / 3)))))
    reordered = rows[:]
    random.Random(12).shuffle(reordered)
    schema = "user_id string, x1 double, x2 double, label int"
    written = [spark.createDataFrame(r, schema).repartition(3).sortWithinPartitions("x1") for r in (rows, reordered)]
    gbt = baseline.gradient_boosted_trees_pipeline(features=baseline.FeatureSpec(numeric=("x1", "x2")), max_depth=3,
                                                   max_iter=10, step_size=0.1, subsampling_rate=0.8,
                                                   min_instances_per_node=5, seed=0)
    probe = spark.createDataFrame(rows, schema)

    def probabilities(train) -> list[float]:
        scored = baseline.with_probability(gbt.fit(train), probe, output_col="p")
        return [r["p"] for r in scored.orderBy("user_id").collect()]

    as_written = [probabilities(frame) for frame in written]
    assert as_written[0] != as_written[1]  # the premise: row order moves the fit
    in_order = [probabilities(baseline.in_fit_order(frame, partitions=4)) for frame in written]
    assert in_order[0] == pytest.approx(in_order[1], abs=1e-12)


def test_cjk_characters_are_mined_once_each(spark):
    texts = spark.createDataFrame([("买 手机 phone",), ("手机壳 case",), ("no cjk",)], "text string")
    assert sorted(r["c"] for r in cjk_characters(texts).collect()) == sorted("买手机壳")


def test_scoring_layout_and_deciles(spark):
    users = spark.createDataFrame([(f"u{i}", "x" * (i % 7)) for i in range(40)], "user_id string, text string")
    laid_out = prepare_for_scoring(users, tasks=3)
    assert laid_out.rdd.getNumPartitions() == 3
    for part in laid_out.rdd.glom().collect():
        lengths = [len(r["text"]) for r in part]
        assert lengths == sorted(lengths)  # similar lengths side by side: each batch pads little
    day = spark.createDataFrame([(f"u{i}", i / 100) for i in range(100)], "user_id string, probability double")
    cuts = decile_cut_points(day)
    assert len(cuts) == 9 and cuts == sorted(cuts)
    deciles = with_score_decile(day, cut_points=cuts).groupBy("score_decile").count()
    assert {r["score_decile"]: r["count"] for r in deciles.collect()} == {d: 10 for d in range(1, 11)}
    assert with_score_decile(day, cut_points=cuts).filter(F.col("user_id") == "u99").first()["score_decile"] == 1


def test_warehouse_ddl_points_the_external_table_at_the_current_version():
    profiles = catalog.table("insights", "user_profiles")
    schema = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("score_date", T.DateType())])
    assert table_ddl("`shop`.`insights_user_profiles`", profiles, {"": "file:///lake/insights/user_profiles/v-1"},
                     schema=schema, root="file:///lake/insights/user_profiles") == [
        "CREATE TABLE IF NOT EXISTS `shop`.`insights_user_profiles` (`user_id` string, `score_date` date) USING parquet "
        "LOCATION 'file:///lake/insights/user_profiles/v-1'",
        "ALTER TABLE `shop`.`insights_user_profiles` SET LOCATION 'file:///lake/insights/user_profiles/v-1'",
    ]
    root = "s3a://b/lake/scores/user_scores"
    locations = {"score_date=2024-01-01": f"{root}/v-1/score_date=2024-01-01",
                 "score_date=2024-01-02": f"{root}/v-2/score_date=2024-01-02"}
    assert table_ddl("`shop`.`scores_user_scores`", USER_SCORES, locations, schema=schema, root=root) == [
        "CREATE TABLE IF NOT EXISTS `shop`.`scores_user_scores` (`user_id` string, `score_date` date) USING parquet "
        f"PARTITIONED BY (`score_date`) LOCATION '{root}'",
        "ALTER TABLE `shop`.`scores_user_scores` ADD IF NOT EXISTS "
        f"PARTITION (`score_date` = '2024-01-01') LOCATION '{root}/v-1/score_date=2024-01-01' "
        f"PARTITION (`score_date` = '2024-01-02') LOCATION '{root}/v-2/score_date=2024-01-02'",
    ]


def test_the_catalog_names_each_table_once_with_its_writer():
    assert len({(t.zone, t.name) for t in catalog.TABLES}) == len(catalog.TABLES)
    assert (CLEAN_EVENTS.written_by, QUARANTINE["events"].written_by, USER_SEQUENCES.written_by) == ("clean", "clean", "fuse")
    assert USER_SCORES.partition_by == ("score_date",) and QUARANTINE["users"].partition_by == ("source",)
    assert catalog.table("scores", "user_scores") is USER_SCORES
    assert catalog.table("insights", "from_an_older_version") == Table("insights", "from_an_older_version")
    with pytest.raises(ValueError, match="not a table zone"):
        Table("models", "lr")


def test_the_lake_owns_every_path_under_its_root(tmp_path):
    lake = Lake(tmp_path)
    paths = [lake.table_path(USER_SCORES), lake.model_dir("lr", "v1"), lake.model_pointer("lr"),
             lake.checkpoint_dir("transformer", "k"), lake.report_dir("run"), lake.key_file(), lake.staging_dir()]
    assert all(str(p).startswith(str(tmp_path)) for p in paths)
    assert lake.model_pointer("lr").name == LATEST and lake.model_pointer("lr").parent == lake.model_root("lr")
    assert lake.table_uri(USER_SCORES) == (tmp_path / "scores" / "user_scores").as_uri()


@pytest.mark.parametrize("root", ["s3a://bucket/lake", "abfss://c@account.dfs.core.windows.net/lake", "gs://b/lake",
                                  "hdfs://namenode:8020/lake", "dbfs:/mnt/lake", "/Volumes/main/shop/lake"])
def test_a_lake_uri_keeps_its_scheme_in_every_path_and_in_the_config(root, monkeypatch):
    from ecominsight.config import load_config
    from ecominsight.session import conf_for_lake

    assert load_config("local", [f"lake={root}"]).lake_path == root
    conf = conf_for_lake(root, {"spark.sql.shuffle.partitions": "3", "spark.hadoop.fs.s3a.committer.name": "directory"})
    assert conf["spark.sql.shuffle.partitions"] == "3"
    if root.startswith("s3a://"):
        # The store's settings join the user's, and the user's win.
        assert conf["spark.hadoop.fs.s3a.committer.name"] == "directory"
        assert conf["spark.sql.sources.commitProtocolClass"].endswith("PathOutputCommitProtocol")
    elif not root.startswith(("abfss://", "gs://")):
        assert "spark.sql.sources.commitProtocolClass" not in conf
    try:
        lake = Lake(root)
    except LakeError as missing:  # gcsfs / adlfs / libhdfs not installed here: the error says what to install
        assert "pip install" in str(missing) or "libhdfs" in str(missing), missing
        return
    assert lake.table_path(USER_SCORES) == f"{root}/scores/user_scores"
    assert lake.model_dir("lr", "v1").uri == f"{root}/models/lr/v1"
    assert str(lake.report_dir("r1")) == f"{root}/reports/r1"


def test_a_relative_or_file_uri_lake_is_made_absolute(tmp_path, monkeypatch):
    from ecominsight.config import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("local", ["lake=lake"]).lake_path == str(tmp_path / "lake")
    assert load_config("local", [f"lake=file://{tmp_path}/x/../lake"]).lake_path == f"file://{tmp_path}/lake"
    assert Lake("file://" + str(tmp_path / "lake")).table_uri(USER_SCORES) == (tmp_path / "lake" / "scores" / "user_scores").as_uri()


def test_the_dispatcher_knows_every_stage_and_refuses_others():
    assert STAGES == ("clean", "fuse", "train", "score", "insights", "pipeline", "register")
    from ecominsight.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        run_stage("nope", None, None, None, "r")
