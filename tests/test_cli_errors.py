"""Every project error (an `EcominsightError`) leaves the CLI as exit code 2 and one ERROR line naming
the problem, never a traceback: one test per error kind, each error raised by the real code path."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from ecominsight.catalog import USER_SCORES
from ecominsight.cli import main
from ecominsight.io import Lake
from ecominsight.privacy import KEY_ENV
from ecominsight.transforms import clean, fuse

CUTOFF = "2020-03-01"


def assert_one_error_line(caplog: pytest.LogCaptureFixture, *phrases: str) -> None:
    """Exactly one ERROR record, on one line, holding every phrase; no record carries a traceback."""
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0], errors[0]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert all(record.exc_info is None and record.exc_text is None for record in caplog.records)
    assert "Traceback" not in caplog.text


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """A preset over 8 users' views and purchases around CUTOFF; every even user buys again after it."""
    folder = tmp_path_factory.mktemp("tiny_source")
    rows = ["user_id,event_time,event,item,price"]
    for user in range(1, 9):
        rows += [f"u{user},2020-01-{user:02d} 10:00:00,view,i{user},5.0",
                 f"u{user},2020-01-{user:02d} 10:05:00,purchase,i{user},5.0"]
        if user % 2 == 0:
            rows.append(f"u{user},2020-03-{user:02d} 09:00:00,purchase,i1,7.5")
    (folder / "events.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    preset = folder / "preset.yaml"
    preset.write_text(f"name: tiny\nformat: csv\npaths: ['{folder / 'events.csv'}']\nheader: true\n"
                      "timestamp: {column: event_time, format: 'yyyy-MM-dd HH:mm:ss'}\n"
                      "events: {user_id: user_id, event_type: event, item_id: item, price: price}\n", encoding="utf-8")
    return preset


def settings(lake: Path, preset: Path | None = None) -> list[str]:
    source = ["--set", f"source.preset={preset}"] if preset else []
    return ["--set", f"lake={lake}", "--set", f"fuse.cutoff={CUTOFF}", *source]


def test_config_error(caplog):
    assert main("fuse", ["--set", "fuse.horizon=3w"]) == 2
    assert_one_error_line(caplog, "configuration error: fuse.horizon: '3w' is not a duration")


def test_model_path_error(tmp_path, caplog):
    missing = tmp_path / "no-such-model"
    assert main("train", [*settings(tmp_path), "--set", f"train.transformer.pretrained={missing}"]) == 2
    assert_one_error_line(caplog, f"configuration error: pretrained model path '{missing}' does not exist")


def test_lake_error(spark, tmp_path, caplog):
    # An empty lake: fuse finds no clean tables to read.
    assert main("fuse", settings(tmp_path)) == 2
    assert_one_error_line(caplog, "fuse failed: lake table clean/events is missing",
                          "run the 'clean' stage first")


def test_privacy_error(spark, tmp_path, monkeypatch, caplog):
    # insights resolves the pseudonym key as soon as it has found the day's scores: a one-row
    # scores table is the least lake that reaches it.
    scores = spark.createDataFrame([("u1", 0.5, dt.date(2020, 3, 1))], "user_id string, probability double, score_date date")
    Lake(tmp_path).write(scores, USER_SCORES)
    monkeypatch.setenv(KEY_ENV, "too-short")
    assert main("insights", settings(tmp_path)) == 2
    assert_one_error_line(caplog, f"insights failed: {KEY_ENV} is shorter than 16 bytes")


def test_accounting_error(spark, tiny_source, tmp_path, monkeypatch, caplog):
    # Planted: correct code never loses a row, so duplicate marking is made to drop one (u1's view),
    # the fault the row accounting exists to catch.
    mark_duplicates = clean.mark_duplicates

    def losing_a_row(tagged, **kwargs):
        return mark_duplicates(tagged, **kwargs).filter((F.col("user_id") != "u1") | (F.col("event_type") != "view"))

    monkeypatch.setattr(clean, "mark_duplicates", losing_a_row)
    assert main("clean", settings(tmp_path, tiny_source)) == 2
    assert_one_error_line(caplog, "clean failed: events: input rows 20 != clean 19 + quarantined 0")
    assert not (tmp_path / "clean" / "events").exists()  # refused before anything was written


def test_leakage_error(spark, tiny_source, tmp_path, monkeypatch, caplog):
    assert main("clean", settings(tmp_path, tiny_source)) == 0
    caplog.clear()
    # Planted: a leaking feature. Every feature takes its history through `events_before`; made to let
    # a week past the cutoff through, the features of the users who bought again in it (u2, u4, u6)
    # see the future, and the real leak check must stop the run before anything is trained on it.
    events_before = fuse.events_before

    def a_week_too_far(events, *, as_of):
        return events_before(events, as_of=dt.datetime.fromisoformat(CUTOFF) + dt.timedelta(days=7))

    monkeypatch.setattr(fuse, "events_before", a_week_too_far)
    assert main("fuse", settings(tmp_path, tiny_source)) == 2
    assert_one_error_line(caplog, "fuse failed: 3 users' features use events at or after the cutoff 2020-03-01")
