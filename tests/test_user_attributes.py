"""Extra user attributes (`user_attributes` in a preset): kept by clean in `users.attributes`, written
into the text and the fused attribute maps by fuse, seen by the baselines, dropped where personal.

A planted set: every user has the same behaviour, and one categorical attribute alone decides the
label; the baselines find it when the preset maps it and cannot when it does not."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from ecominsight import data_quality, privacy, schema
from ecominsight.models import baseline
from ecominsight.presets import parse_preset
from ecominsight.stages.clean import tag_arguments
from ecominsight.transforms import clean, fuse

PLANTED_USERS = 400
RAW_COLUMNS = ("user_id", "event_time", "event", "item", "price", "tier", "household", "label")
PLANTED_PRESET = {
    "name": "planted_tier", "format": "csv", "paths": ["planted.csv"],
    "timestamp": {"column": "event_time", "format": "yyyy-MM-dd HH:mm:ss"},
    "events": {"user_id": "user_id", "event_type": "event", "item_id": "item", "price": "price"},
    "label": "label",
}
ATTRIBUTES = {"tier": {"column": "tier", "kind": "categorical"}, "household": {"column": "household", "kind": "numeric"}}


def planted_rows(users: int = PLANTED_USERS, seed: int = 5) -> list[tuple]:
    """The same two events for every user (a view, then a purchase of the same item at the same
    price and time); `tier` gold buys again (label 1), silver does not; `household` is noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(users):
        tier = rng.choice(("gold", "silver"))
        household = str(rng.randint(1, 5))
        label = "1" if tier == "gold" else "0"
        for event_time, event in (("2020-01-01 10:00:00", "view"), ("2020-01-02 10:00:00", "purchase")):
            rows.append((f"u{i:04d}", event_time, event, "i1", "5.0", tier, household, label))
    return rows


def fused_for(spark, preset_raw: dict):
    """The planted rows through clean (events -> users) and fuse, labelled as given, split."""
    preset = parse_preset(preset_raw)
    raw = spark.createDataFrame(planted_rows(), ", ".join(f"{c} string" for c in RAW_COLUMNS))
    tagged = clean.mark_duplicates(clean.tag_events(raw, **tag_arguments(preset, "test")))
    users = clean.derive_users(tagged, attributes=tuple(preset.user_attributes))
    events = clean.accepted_events(tagged)
    items = clean.derive_items(tagged)
    fused = fuse.fuse_user_sequences(events, users, items, as_of=dt.date(2020, 2, 1), max_events=8,
                                     labels=clean.derive_labels(tagged), attribute_kinds=preset.attribute_kinds())
    return fuse.assign_split(fused, seed=7, valid_fraction=0.15, test_fraction=0.25), users


def held_out_auc(model, fused) -> float:
    scored = baseline.with_probability(model, fused.filter(F.col("split") != "train"), output_col="p") \
        .select("label", "p").toPandas()
    return roc_auc_score(scored["label"], scored["p"])


# --- presets ------------------------------------------------------------------------------------

def test_the_preset_maps_attributes_and_may_tag_them_personal():
    preset = parse_preset({**PLANTED_PRESET, "user_attributes": ATTRIBUTES, "personal": ["tier", "age"],
                           "user_source": {"format": "csv", "paths": ["users.csv"], "fields": {"user_id": "id"},
                                           "user_attributes": {"band": {"column": "b", "kind": "categorical"}}}})
    assert preset.attribute_kinds() == {"band": "categorical", "household": "numeric", "tier": "categorical"}
    assert preset.user_attributes["tier"].column == "tier" and preset.personal == ("tier", "age")


# --- clean --------------------------------------------------------------------------------------

def test_clean_keeps_the_attributes_in_one_map_and_counts_numbers_that_are_not(spark):
    preset = parse_preset({**PLANTED_PRESET, "user_attributes": ATTRIBUTES})
    rows = [("a", "2020-01-01 10:00:00", "view", "i1", "1", " Gold ", "3", "1"),
            ("a", "2020-01-03 10:00:00", "view", "i1", "1", "platinum", "2.50", "1"),   # the latest wins
            ("b", "2020-01-01 10:00:00", "view", "i1", "1", None, "three", "0"),        # no number: left out
            ("c", "2020-01-01 10:00:00", "view", "i1", "1", "", "", "0")]               # nothing given
    raw = spark.createDataFrame(rows, ", ".join(f"{c} string" for c in RAW_COLUMNS))
    tagged = clean.mark_duplicates(clean.tag_events(raw, **tag_arguments(preset, "test")))
    users = {r["user_id"]: r["attributes"] for r in clean.derive_users(tagged, attributes=("household", "tier")).collect()}
    assert users == {"a": {"household": "2.5", "tier": "platinum"}, "b": {}, "c": {}}
    profile = data_quality.table_profile(tagged, columns=data_quality.PROFILED["events"], attributes=("household", "tier"))
    assert profile["attributes"] == {"household": {"null_rate": 0.5, "unparsed": 1}, "tier": {"null_rate": 0.5, "unparsed": 0}}
    assert profile["clean_rows"] == 4  # an unreadable attribute rejects no row

    # A user list's attributes win over the events', name by name; the others stay.
    listed = spark.createDataFrame([("a", None, "U", None, None, {"tier": "bronze"}),
                                    ("d", None, "U", None, None, {"band": "x"})], schema.USERS)
    combined = {r["user_id"]: r["attributes"] for r in clean.combine_users(listed, clean.derive_users(
        tagged, attributes=("household", "tier"))).collect()}
    assert combined == {"a": {"tier": "bronze", "household": "2.5"}, "b": {}, "c": {}, "d": {"band": "x"}}


def test_a_personal_attribute_leaves_the_output_tables(spark):
    frame = spark.createDataFrame([("u1", "Leeds", {"tier": "gold", "household": "3"})],
                                  "user_id string, region string, attributes map<string,string>")
    (row,) = privacy.drop_personal(frame, ("tier", "region")).collect()
    assert row.asDict() == {"user_id": "u1", "attributes": {"household": "3"}}


# --- fuse ---------------------------------------------------------------------------------------

def test_fuse_writes_the_attributes_into_the_text_and_the_attribute_maps(spark):
    users = spark.createDataFrame([
        ("a", 30, "F", "Leeds", None, {"tier": "gold", "household": "3", "band": "b2"}),
        ("b", None, "U", None, None, {}),
    ], schema.USERS)
    events = spark.createDataFrame([("a", dt.datetime(2020, 1, 1), "view", "i1"), ("n", dt.datetime(2020, 1, 1), "view", "i1")],
                                   "user_id string, ts timestamp, event_type string, item_id string") \
        .select("user_id", "ts", "event_type", "item_id", *[F.lit(None).cast(f.dataType).alias(f.name)
                for f in schema.EVENTS.fields if f.name not in ("user_id", "ts", "event_type", "item_id", "dt")],
                F.to_date("ts").alias("dt")).select(*schema.EVENTS.fieldNames())
    items = spark.createDataFrame([("i1", "Red Mug", None, None, 1.0, None)], schema.ITEMS)
    fused = {r["user_id"]: r for r in fuse.fuse_user_sequences(
        events, users, items, as_of=dt.date(2020, 2, 1), max_events=4,
        attribute_kinds={"tier": "categorical", "household": "numeric"}).collect()}
    # After age, gender and region, the extras sorted by name.
    assert fused["a"]["text"] == "age 30 | gender F | region Leeds | band b2 | household 3 | tier gold [SEP] 01-01 view Red Mug"
    assert fused["a"]["numeric_attributes"] == {"age": 30.0, "household": 3.0}
    # A name the preset does not declare counts as categorical.
    assert fused["a"]["categorical_attributes"] == {"gender": "F", "region": "Leeds", "tier": "gold", "band": "b2"}
    assert (fused["b"]["text"], fused["b"]["numeric_attributes"], fused["b"]["categorical_attributes"]) == ("no history", {}, {})
    assert (fused["n"]["numeric_attributes"], fused["n"]["categorical_attributes"]) == ({}, {})  # not in the users table


# --- the baselines ------------------------------------------------------------------------------

def _fit_both(fused, spec):
    lr = baseline.logistic_regression_pipeline(features=spec, reg_param=0.01, elastic_net_param=0.0, max_iter=50)
    gbt = baseline.gradient_boosted_trees_pipeline(features=spec, max_depth=3, max_iter=10, step_size=0.1,
                                                   subsampling_rate=1.0, min_instances_per_node=5, seed=0)
    train = fused.filter(F.col("split") == "train")
    return {"lr": lr.fit(train), "gbt": gbt.fit(train)}


def test_the_baselines_find_a_planted_attribute_only_when_the_preset_maps_it(spark):
    mapped, _ = fused_for(spark, {**PLANTED_PRESET, "user_attributes": ATTRIBUTES})
    mapped = mapped.cache()
    spec = baseline.feature_spec(mapped.filter(F.col("split") == "train"))
    assert spec.numeric_attributes == ("household",)
    assert spec.categorical_attributes == (("tier", ("gold", "silver")),)
    for name, model in _fit_both(mapped, spec).items():
        assert held_out_auc(model, mapped) > 0.9, name
        named = baseline.explain(model, features=spec)
        weights = named.get("coefficients") or named["feature_importances"]
        assert {"household", "household_missing", "tier=gold", "tier=silver"} <= set(weights)  # levels seen in train
        assert abs(weights["tier=gold"]) == max(abs(w) for n, w in weights.items() if n != "intercept"), name

    unmapped, _ = fused_for(spark, PLANTED_PRESET)
    unmapped_spec = baseline.feature_spec(unmapped.filter(F.col("split") == "train"))
    assert unmapped_spec == baseline.FeatureSpec()  # no attributes: the numeric features alone
    for name, model in _fit_both(unmapped, unmapped_spec).items():
        assert held_out_auc(model, unmapped) == pytest.approx(0.5, abs=0.05), name
    mapped.unpersist()


def test_rare_levels_fold_into_other_and_unseen_ones_score(spark):
    fused, _ = fused_for(spark, {**PLANTED_PRESET, "user_attributes": ATTRIBUTES})
    # Ten users get a level of their own: each is rarer than MIN_LEVEL_USERS, so they fold into `other`.
    renamed = fused.withColumn("categorical_attributes", F.when(
        F.col("user_id") < "u0010", F.map_concat(F.map_filter("categorical_attributes", lambda k, _: k != "tier"),
                                                 F.create_map(F.lit("tier"), F.col("user_id"))))
        .otherwise(F.col("categorical_attributes")))
    spec = baseline.feature_spec(renamed.filter(F.col("split") == "train"))
    assert dict(spec.categorical_attributes)["tier"] == ("gold", "silver")
    model = _fit_both(renamed, spec)["lr"]
    assert not any(n.startswith("tier=u0") for n in baseline.feature_names(model, spec))
    unseen = renamed.limit(3).withColumn("categorical_attributes", F.create_map(F.lit("tier"), F.lit("never seen")))
    assert all(0.0 < r["p"] < 1.0 for r in baseline.with_probability(model, unseen, output_col="p").collect())


# --- train -> score, a baseline champion on the new features; an old-format model still scores ---

def test_a_forced_gbt_champion_trains_and_scores_on_the_attributes_and_an_old_model_still_scores(spark, tiny_encoder, tmp_path):
    import csv

    import yaml

    from ecominsight.catalog import CURRENT_SEQUENCES, USER_SCORES, USER_SEQUENCES
    from ecominsight.config import load_config
    from ecominsight.io import Lake, read_json
    from ecominsight.stages import run_stage

    raw = tmp_path / "planted.csv"
    with raw.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([RAW_COLUMNS, *planted_rows()])
    preset = tmp_path / "planted.yaml"
    preset.write_text(yaml.safe_dump({**PLANTED_PRESET, "paths": [str(raw)], "user_attributes": ATTRIBUTES}))
    config = load_config("local", [
        f"lake={tmp_path / 'lake'}", f"source.preset={preset}", "fuse.label_mode=given", "fuse.population=any_event",
        "train.champion=gbt", f"train.transformer.pretrained={tiny_encoder}", "train.transformer.epochs=1",
        "train.transformer.num_processes=1", "train.transformer.max_length=32", "train.transformer.checkpoint=false",
        "insights.explain.max_users=0",
    ])
    lake = Lake(config.lake_path)
    for stage in ("clean", "fuse"):
        run_stage(stage, spark, config, lake, "attrs")
    train = run_stage("train", spark, config, lake, "attrs")["train"]
    assert train.champion["model"] == "gbt"
    assert train.metrics["gbt"]["test"]["roc_auc"] > 0.9 and train.metrics["lr"]["test"]["roc_auc"] > 0.9
    saved = read_json(lake.model_dir("gbt", train.version) / baseline.FEATURES_FILE)
    assert saved["categorical_attributes"]["tier"] == ["gold", "silver"] and "tier=gold" in saved["names"]

    def scored_auc() -> tuple[str, float]:
        score = run_stage("score", spark, config, lake, "attrs")["score"]
        scores = lake.read(spark, USER_SCORES).filter(F.col("score_date") == F.lit(score.score_date))
        key = privacy.resolve_key(lake.key_file())
        # Tier decides the label: the champion's probability must separate the tiers of all users.
        tiers = privacy.pseudonymise(lake.read(spark, CURRENT_SEQUENCES), key).select(
            "user_id", (F.col("categorical_attributes")["tier"] == "gold").cast("int").alias("gold"))
        rows = scores.join(tiers, "user_id").select("gold", "probability", "model_name").toPandas()
        assert len(rows) == PLANTED_USERS and set(rows["model_name"]) == {score.model_name}
        return score.model_name, roc_auc_score(rows["gold"], rows["probability"])

    name, auc = scored_auc()
    assert name == "gbt" and auc > 0.9

    # A GBT saved before attributes existed (the numeric features alone, no features.json) scores as it was trained.
    gbt_dir = lake.model_dir("gbt", train.version)
    old = baseline.gradient_boosted_trees_pipeline(max_depth=2, max_iter=5, step_size=0.1, subsampling_rate=1.0,
                                                   min_instances_per_node=5, seed=0)
    training = lake.read(spark, USER_SEQUENCES).filter(F.col("split") == "train")
    old.fit(training.drop("numeric_attributes", "categorical_attributes")).write().overwrite().save((gbt_dir / "spark_model").uri)
    (gbt_dir / baseline.FEATURES_FILE).remove()
    name, auc = scored_auc()
    assert name == "gbt" and auc == pytest.approx(0.5, abs=0.1)  # behaviour alone: the tiers look alike
