"""Privacy: keyed pseudonyms (HMAC-SHA256), where the key comes from, personal columns dropped."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from ecominsight import privacy
from ecominsight.config import ConfigError
from ecominsight.io import Lake
from ecominsight.presets import load_preset, parse_preset

KEY = b"k" * 32


def test_same_key_same_pseudonym_other_key_other_pseudonym():
    assert privacy.pseudonym("12345", KEY) == privacy.pseudonym("12345", KEY)
    assert privacy.pseudonym("12345", KEY) != privacy.pseudonym("12345", b"j" * 32)
    assert privacy.pseudonym("12345", KEY) != privacy.pseudonym("12346", KEY)
    assert privacy.pseudonym("用户1", KEY) == hmac.new(KEY, "用户1".encode(), hashlib.sha256).hexdigest()


def test_spark_pseudonyms_equal_the_reference_and_keep_nulls_and_columns(spark):
    frame = spark.createDataFrame([("12345", 1), ("用户1", 2), (None, 3)], "user_id string, n int")
    out = privacy.pseudonymise(frame, KEY)
    assert out.columns == ["user_id", "n"]
    assert sorted(out.collect(), key=lambda r: r["n"]) == [
        (privacy.pseudonym("12345", KEY), 1), (privacy.pseudonym("用户1", KEY), 2), (None, 3)]
    # The key never appears in the query plan (Spark shows plans in its UI and logs).
    assert KEY.decode() not in out._jdf.queryExecution().toString()


def test_key_from_the_environment_else_a_private_key_file_per_lake(tmp_path, monkeypatch, caplog):
    lake, other_lake = Lake(tmp_path), Lake(tmp_path / "other-lake")
    monkeypatch.setenv(privacy.KEY_ENV, "a-long-enough-secret-key")
    assert privacy.resolve_key(lake.key_file()) == b"a-long-enough-secret-key"
    assert not lake.key_file().exists()
    monkeypatch.setenv(privacy.KEY_ENV, "short")
    with pytest.raises(privacy.PrivacyError, match="shorter than 16 bytes"):
        privacy.resolve_key(lake.key_file())

    monkeypatch.delenv(privacy.KEY_ENV)
    with caplog.at_level("WARNING"):
        first = privacy.resolve_key(lake.key_file())
    path = Path(lake.key_file().path)
    assert path.is_relative_to(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert privacy.KEY_ENV in caplog.text and first.decode() not in caplog.text  # warned, key never logged
    assert privacy.resolve_key(lake.key_file()) == first  # stable across runs on the lake
    assert privacy.resolve_key(other_lake.key_file()) != first
    os.chmod(path, 0o644)
    with pytest.raises(privacy.PrivacyError, match="readable by other users"):
        privacy.resolve_key(lake.key_file())


def test_personal_columns_are_dropped_and_declared_in_the_preset(spark):
    frame = spark.createDataFrame([("x", 30, "F", "Leeds")], "user_id string, age int, gender string, region string")
    assert privacy.drop_personal(frame, ("region", "age")).columns == ["user_id", "gender"]
    assert privacy.drop_personal(frame, ()).columns == frame.columns
    preset = load_preset("flat_labelled")
    assert preset.personal == ()
    raw = {"name": "p", "format": "csv", "paths": ["x.csv"], "events": {"user_id": "u", "event_type": "t"},
           "timestamp": {"column": "ts"}}
    assert parse_preset({**raw, "personal": ["region"]}).personal == ("region",)
    with pytest.raises(ConfigError, match=r"personal\[0\]: 'email' is not one of age, gender, region"):
        parse_preset({**raw, "personal": ["email"]})
