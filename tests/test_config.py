"""Configuration is validated before any Spark work: unknown keys, bad types and ranges fail early."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import logging
import sys
from pathlib import Path

import pytest

from ecominsight.config import ConfigError, load_config, parse_horizon, parse_overrides
from ecominsight.presets import load_preset


def test_env_overlay_and_overrides_merge_in_order():
    assert load_config("local").fuse.horizon == "90d"  # base.yaml
    config = load_config("local", ["fuse.horizon=30d", "train.transformer.epochs=1", "spark.conf.a.b=c"])
    assert config.fuse.horizon == "30d"
    assert config.train.transformer.epochs == 1
    assert config.spark.master == "local[*]"  # from local.yaml
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "8"  # base.yaml survives the overlay
    assert config.fuse.cutoff == "2011-09-10"


def test_config_is_frozen():
    config = load_config("local")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fuse.horizon = "1d"


def test_spark_conf_overrides_keep_their_dotted_keys():
    config = load_config("local", ["spark.conf.spark.sql.shuffle.partitions=4", "spark.conf.spark.hadoop.fs.s3a.secret.key=x"])
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "4"
    assert config.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "x"


def test_override_values_are_parsed_as_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=true", "d=[x, y]", "e=0.5"]) == {"a": {"b": 3, "c": True}, "d": ["x", "y"], "e": 0.5}


@pytest.mark.parametrize("override, message", [
    ("fuse.horizon_dayz=3", "unknown config key 'fuse.horizon_dayz'; allowed keys at fuse: cutoff,"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("fuse.label_mode=magic", "fuse.label_mode: 'magic' is not one of window, given"),
    ("fuse.cutoff=yesterday", "fuse.cutoff: 'yesterday' is not an ISO date"),
    ("train.transformer.use_gpu=maybe", "train.transformer.use_gpu: expected true or false"),
    ("fuse.valid_fraction=0.9", "must each lie in (0, 1) and sum to less than 1"),
    ("noequals", "is not of the form key.path=value"),
    ("run_id=../../etc", "run_id: '../../etc' must be letters, digits"),
    ("warehouse.schema=x;DROP", "warehouse.schema: 'x;DROP' must be letters, digits and underscores"),
    ("warehouse.catalog=main`.x", "warehouse.catalog: 'main`.x' must be letters, digits and underscores"),
    ("fuse.review_max_words=0", "fuse.review_max_words: must be positive"),
    ("train.transformer.max_train_users=0", "train.transformer.max_train_users: must be a positive integer or null"),
    ("train.transformer.max_train_users=1.5", "train.transformer.max_train_users: expected an integer"),
])
def test_bad_config_is_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", [override])
    assert message in str(err.value)


def test_unknown_env_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown env 'staging'.*cluster, databricks, local"):
        load_config("staging")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown source preset 'nope'; available presets: .*taobao_userbehavior"):
        load_preset("nope")


def test_every_shipped_env_and_preset_validates():
    for env in ("local", "cluster", "databricks"):
        assert load_config(env).env == env
    for name in ("online_retail_ii_sample", "online_retail_ii", "taobao_userbehavior", "rees46_multicategory", "flat_labelled"):
        assert load_preset(name).name == name


def test_sub_day_cutoff_and_an_hours_horizon():
    from ecominsight.config import parse_cutoff

    config = load_config("local", ["fuse.cutoff=2019-10-01T02:32:00", "fuse.horizon=1h", "fuse.population=active"])
    assert (parse_horizon(config.fuse.horizon), config.fuse.population) == (dt.timedelta(hours=1), "active")
    assert parse_cutoff(config.fuse.cutoff) == dt.datetime(2019, 10, 1, 2, 32, tzinfo=dt.timezone.utc)
    # An offset is honoured (Beijing midnight + 2 min = 16:02 UTC the day before); a day means midnight UTC.
    beijing = load_config("local", ["fuse.cutoff=2016-03-01T00:02:00+08:00", "fuse.horizon=1h"])
    assert parse_cutoff(beijing.fuse.cutoff) == dt.datetime(2016, 2, 29, 16, 2, tzinfo=dt.timezone.utc)
    assert parse_cutoff(load_config("local").fuse.cutoff) == dt.date(2011, 9, 10)


@pytest.mark.parametrize("overrides, message", [
    (["fuse.cutoff=2019-10-01T25:00"], "fuse.cutoff: '2019-10-01T25:00' is not an ISO date (YYYY-MM-DD) or date-time"),
    (["fuse.population=everyone"], "fuse.population: 'everyone' is not one of purchasers, any_event, active"),
])
def test_bad_horizon_or_cutoff_is_rejected_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("value, expected", [
    ("90d", dt.timedelta(days=90)), ("1d", dt.timedelta(days=1)), ("273d", dt.timedelta(days=273)),
    ("1h", dt.timedelta(hours=1)), ("36h", dt.timedelta(hours=36)), ("24h", dt.timedelta(days=1)),
])
def test_horizon_is_a_positive_count_of_days_or_hours(value, expected):
    assert parse_horizon(value) == expected
    assert load_config("local", [f"fuse.horizon={value}"]).fuse.horizon == value


@pytest.mark.parametrize("value", ["0d", "0h", "90", "1w", "-1h", "1.5d", "d", "90 d", "90D", "1h30m", "", "null",
                                   "[90d]", "1000000000d"])
def test_bad_horizon_is_rejected_showing_the_accepted_form(value):
    with pytest.raises(ConfigError) as err:
        load_config("local", [f"fuse.horizon={value}"])
    message = str(err.value)
    assert message.startswith("fuse.horizon: ")
    if value not in ("", "null", "[90d]"):  # not strings at all: the type check answers first
        assert "<positive integer><unit>, unit d (days) or h (hours), e.g. 90d or 1h" in message


@pytest.mark.parametrize("old_key", ["fuse.horizon_days=30", "fuse.horizon_hours=1"])
def test_the_old_horizon_keys_are_unknown(old_key):
    # The allowed keys the error lists point to the new one.
    with pytest.raises(ConfigError, match=r"unknown config key 'fuse\.horizon_(days|hours)'; allowed keys at fuse: "
                                          r"cutoff, day_max_items, horizon, label_mode"):
        load_config("local", [old_key])


NEEDS_MLFLOW = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed (the mlflow extra): a tracking URI is refused first")
SERVER = "tracking.mlflow_uri=http://127.0.0.1:5000"


@pytest.mark.parametrize("overrides, message", [
    (["tracking.mlflow_uri=http://me:pa55word@127.0.0.1:5000"], "tracking.mlflow_uri: the URI carries a password"),
    (["tracking.mlflow_uri=http://[::1"], "tracking.mlflow_uri: 'http://[::1' is not a URI"),
    (["tracking.champion_alias=latest"], "tracking.champion_alias: 'latest' is not an MLflow alias"),
    (["tracking.champion_alias=v3"], "tracking.champion_alias: 'v3' is not an MLflow alias"),
    (["tracking.champion_alias=best one"], "tracking.champion_alias: 'best one' is not an MLflow alias"),
    (["tracking.registered_model_prefix=a/b"], "tracking.registered_model_prefix: 'a/b' must be letters, digits"),
    (["tracking.experiment=' '"], "tracking.experiment: must not be empty"),
    (["tracking.models=x"], "unknown config key 'tracking.models'; allowed keys at tracking: champion_alias, experiment,"),
    (["score.model=best"], "score.model: 'best' is not one of champion, lr, gbt, transformer, hybrid, nor a registered "
                           "model models:/<name>@<alias> or models:/<name>/<version>"),
    (["score.model=models:/shop_lr@champion"], "score.model=models:/shop_lr@champion: a registered model needs "
                                               "tracking.mlflow_uri"),
    (["score.model=models:/shop_lr"], "score.model: 'models:/shop_lr' is not a registered model URI"),
    (["score.model=models:/shop_lr@latest"], "score.model: 'latest' is not an MLflow alias"),
    pytest.param(["tracking.registry_uri=databricks-uc"], "tracking.registry_uri is set, but mlflow", marks=pytest.mark.skipif(
        importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")),
    pytest.param(["tracking.registry_uri=databricks-uc"], "tracking.registry_uri: set tracking.mlflow_uri too",
                 marks=NEEDS_MLFLOW),
    pytest.param(["tracking.mlflow_uri=databricks", "tracking.experiment=/Shared/ecominsight"],
                 "tracking.registered_model_prefix: 'ecominsight_': Unity Catalog (databricks-uc) names models "
                 "<catalog>.<schema>.<model>", marks=NEEDS_MLFLOW),
    pytest.param([SERVER, "tracking.registry_uri=databricks-uc", "tracking.registered_model_prefix=main.x"],
                 "tracking.registered_model_prefix: 'main.x': Unity Catalog", marks=NEEDS_MLFLOW),
    pytest.param(["tracking.mlflow_uri=databricks://scope:prefix", "tracking.registered_model_prefix=main.ml."],
                 "tracking.experiment: 'ecominsight': a Databricks experiment is a workspace path", marks=NEEDS_MLFLOW),
    pytest.param([SERVER, "score.model=models:/shop_lr/2", "score.model_version=v1"],
                 "score.model_version=v1: score.model=models:/shop_lr/2 names the version already", marks=NEEDS_MLFLOW),
])
def test_bad_tracking_settings_are_rejected_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", overrides)
    assert message in str(err.value)


@NEEDS_MLFLOW
def test_tracking_is_off_by_default_and_takes_a_server_or_databricks_with_unity_catalog():
    from ecominsight.tracking import uses_unity_catalog

    assert load_config("local").tracking.mlflow_uri is None
    server = load_config("local", [SERVER, "score.model=models:/ecominsight_gbt/3"])
    assert server.score.model == "models:/ecominsight_gbt/3" and not uses_unity_catalog(server.tracking)
    databricks = load_config("databricks", [
        "tracking.mlflow_uri=databricks", "tracking.experiment=/Shared/ecominsight",
        "tracking.registered_model_prefix=main.ecominsight.", "score.model=models:/main.ecominsight.transformer@champion"])
    assert uses_unity_catalog(databricks.tracking) and databricks.tracking.registry_uri is None
    # The workspace registry (not Unity Catalog) takes any name.
    legacy = load_config("databricks", ["tracking.mlflow_uri=databricks", "tracking.registry_uri=databricks",
                                        "tracking.experiment=/Shared/ecominsight"])
    assert not uses_unity_catalog(legacy.tracking)


def test_a_tracking_uri_without_mlflow_fails_before_spark_naming_the_extra(monkeypatch, caplog):
    from ecominsight.cli import main

    # How Python marks a package that cannot be imported: find_spec answers None, import raises.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"tracking.mlflow_uri is set, but mlflow is not installed: "
                                          r"pip install 'ecominsight\[mlflow\]'"):
        load_config("local", [SERVER])
    assert load_config("local").tracking.mlflow_uri is None  # tracking off: no mlflow needed
    # The command line stops at its config check, before a lake lock or a Spark session.
    with caplog.at_level(logging.ERROR):
        assert main("train", ["--set", SERVER, "--set", "lake=/nonexistent/never-created"]) == 2
    assert "configuration error: tracking.mlflow_uri is set, but mlflow is not installed" in caplog.text
    assert not Path("/nonexistent/never-created").exists()


def test_the_warehouse_catalog_and_schema_and_the_old_name_of_the_schema(caplog):
    assert (load_config("local").warehouse.catalog, load_config("local").warehouse.schema) == (None, "ecominsight")
    warehouse = load_config("local", ["warehouse.catalog=main", "warehouse.schema=growth"]).warehouse
    assert (warehouse.catalog, warehouse.schema) == ("main", "growth")
    with caplog.at_level(logging.WARNING, logger="ecominsight.config"):
        assert load_config("local", ["warehouse.database=legacy"]).warehouse.schema == "legacy"
    assert "warehouse.database is deprecated: it is now warehouse.schema" in caplog.text
    with pytest.raises(ConfigError, match="give only warehouse.schema"):
        load_config("local", ["warehouse.database=a", "warehouse.schema=b"])
