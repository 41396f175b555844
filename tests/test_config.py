"""Configuration is validated before any Spark work: unknown keys, bad types and ranges fail early."""

from __future__ import annotations

import dataclasses

import pytest

from ecominsight.config import ConfigError, load_config, parse_overrides
from ecominsight.presets import load_preset


def test_env_overlay_and_overrides_merge_in_order():
    config = load_config("local", ["fuse.horizon_days=30", "train.transformer.epochs=1", "spark.conf.a.b=c"])
    assert config.fuse.horizon_days == 30
    assert config.train.transformer.epochs == 1
    assert config.spark.master == "local[*]"  # from local.yaml
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "8"  # base.yaml survives the overlay
    assert config.fuse.cutoff == "2011-09-10"


def test_config_is_frozen():
    config = load_config("local")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fuse.horizon_days = 1


def test_spark_conf_overrides_keep_their_dotted_keys():
    config = load_config("local", ["spark.conf.spark.sql.shuffle.partitions=4", "spark.conf.spark.hadoop.fs.s3a.secret.key=x"])
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "4"
    assert config.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "x"


def test_override_values_are_parsed_as_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=true", "d=[x, y]", "e=0.5"]) == {"a": {"b": 3, "c": True}, "d": ["x", "y"], "e": 0.5}


@pytest.mark.parametrize("override, message", [
    ("fuse.horizon_dayz=3", "unknown config key 'fuse.horizon_dayz'; allowed keys at fuse: cutoff,"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("fuse.horizon_days=soon", "fuse.horizon_days: expected an integer, got 'soon'"),
    ("fuse.horizon_days=-5", "fuse.horizon_days: must be positive"),
    ("fuse.label_mode=magic", "fuse.label_mode: 'magic' is not one of window, given"),
    ("fuse.cutoff=yesterday", "fuse.cutoff: 'yesterday' is not an ISO date"),
    ("train.transformer.use_gpu=maybe", "train.transformer.use_gpu: expected true or false"),
    ("fuse.valid_fraction=0.9", "must each lie in (0, 1) and sum to less than 1"),
    ("noequals", "is not of the form key.path=value"),
    ("run_id=../../etc", "run_id: '../../etc' must be letters, digits"),
    ("warehouse.database=x;DROP", "warehouse.database: 'x;DROP' must be letters, digits and underscores"),
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
    import datetime as dt

    from ecominsight.config import parse_cutoff

    config = load_config("local", ["fuse.cutoff=2019-10-01T02:32:00", "fuse.horizon_hours=1", "fuse.population=active"])
    # horizon_hours replaces base.yaml's horizon_days
    assert (config.fuse.horizon_hours, config.fuse.horizon_days, config.fuse.population) == (1, None, "active")
    assert parse_cutoff(config.fuse.cutoff) == dt.datetime(2019, 10, 1, 2, 32, tzinfo=dt.timezone.utc)
    # An offset is honoured (Beijing midnight + 2 min = 16:02 UTC the day before); a day means midnight UTC.
    beijing = load_config("local", ["fuse.cutoff=2016-03-01T00:02:00+08:00", "fuse.horizon_hours=1"])
    assert parse_cutoff(beijing.fuse.cutoff) == dt.datetime(2016, 2, 29, 16, 2, tzinfo=dt.timezone.utc)
    assert parse_cutoff(load_config("local").fuse.cutoff) == dt.date(2011, 9, 10)


@pytest.mark.parametrize("overrides, message", [
    (["fuse.horizon_hours=2", "fuse.horizon_days=3"], "fuse.horizon_hours: cannot be combined with fuse.horizon_days"),
    (["fuse.horizon_hours=0"], "fuse.horizon_hours: must be a positive integer or null"),
    (["fuse.horizon_days=null"], "fuse.horizon_days / fuse.horizon_hours: give exactly one"),
    (["fuse.cutoff=2019-10-01T25:00"], "fuse.cutoff: '2019-10-01T25:00' is not an ISO date (YYYY-MM-DD) or date-time"),
    (["fuse.population=everyone"], "fuse.population: 'everyone' is not one of purchasers, any_event, active"),
])
def test_bad_horizon_or_cutoff_is_rejected_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", overrides)
    assert message in str(err.value)
