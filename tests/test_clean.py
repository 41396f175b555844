"""Cleaning rules on small inline DataFrames: text, ids, timestamps, event types, quarantine, dedup."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from ecominsight.transforms import clean

RAW_COLUMNS = ["uid", "when", "what", "item", "cost", "q"]
RAW_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS + ["_source_file"]])
FIELD_MAP = {"user_id": "uid", "event_type": "what", "item_id": "item", "price": "cost", "query": "q"}


def raw_frame(spark, rows):
    return spark.createDataFrame([(*row, "file:///in.csv") for row in rows], RAW_SCHEMA)


def tag(raw, **overrides):
    kwargs = dict(source="unit", run_id="r1", field_map=FIELD_MAP, event_type_map={"pv": "view", "buy": "purchase"},
                  ts_column="when", ts_unit="string", ts_format="yyyy-MM-dd HH:mm:ss", ts_zone="UTC")
    kwargs.update(overrides)
    return clean.mark_duplicates(clean.tag_events(raw, **kwargs))


def test_clean_text_strips_html_and_symbols_but_keeps_cjk_letters_and_digits(spark):
    frame = spark.createDataFrame(
        [("<b>促销</b>笔记本电脑 &amp; 鼠标!!",), ("Café <script>x()</script> №5 iPhone-15",), ("  ",), ("@@##",), (None,)],
        "text string",
    )
    got = [row[0] for row in frame.select(clean.clean_text(F.col("text"))).collect()]
    assert got == ["促销 笔记本电脑 鼠标", "Café x 5 iPhone 15", None, None, None]


def test_normalize_id_handles_float_renderings_and_null_tokens(spark):
    frame = spark.createDataFrame([("266079.0",), (" 42 ",), ("NaN",), ("",), ("a1.0",), ("17850.00",), (None,)], "v string")
    got = [row[0] for row in frame.select(clean.normalize_id(F.col("v"))).collect()]
    assert got == ["266079", "42", None, None, "a1.0", "17850", None]


@pytest.mark.parametrize("unit, value, fmt, zone, expected", [
    ("s", "1511544070", "", "UTC", dt.datetime(2017, 11, 24, 17, 21, 10)),
    ("ms", "1511544070500", "", "UTC", dt.datetime(2017, 11, 24, 17, 21, 10, 500000)),
    ("string", "2011-06-01 10:00:00", "yyyy-MM-dd HH:mm:ss", "Europe/London", dt.datetime(2011, 6, 1, 9, 0)),
    ("string", "2011-01-01 10:00:00", "yyyy-MM-dd HH:mm:ss", "Europe/London", dt.datetime(2011, 1, 1, 10, 0)),
    ("string", "2019-10-01 00:00:00 UTC", "yyyy-MM-dd HH:mm:ss 'UTC'", "UTC", dt.datetime(2019, 10, 1)),
    ("string", "not a time", "yyyy-MM-dd HH:mm:ss", "UTC", None),
    ("s", "12x", "", "UTC", None),
])
def test_parse_timestamp_returns_utc_or_null(spark, unit, value, fmt, zone, expected):
    frame = spark.createDataFrame([(value,)], "v string")
    got = frame.select(clean.parse_timestamp(F.col("v"), unit=unit, fmt=fmt, zone=zone).alias("ts")).first()["ts"]
    assert got == expected


def test_every_row_is_accepted_or_quarantined_with_the_first_failing_reason(spark):
    raw = raw_frame(spark, [
        ("1", "2020-01-01 10:00:00", "pv", "i1", "9.5", "<i>phone</i>"),      # ok
        ("1", "2020-01-01 10:00:00", "pv", "i1", "9.5", "<i>phone</i>"),      # exact duplicate
        ("", "2020-01-01 10:00:00", "pv", "i1", "1", None),                  # no user
        ("2", "yesterday", "pv", "i1", "1", None),                           # bad time
        ("2", "2020-01-01 11:00:00", "teleport", "i1", "1", None),           # unknown type
        ("2", "2020-01-01 12:00:00", "BUY", "i2", "cheap", None),            # bad number
        ("3.0", "2020-01-02 00:00:00", "purchase", "i2", "", None),          # ok: canonical type, empty price
        ("4", "2020-01-02 00:00:00", "pv", "blocked", "1", None),            # preset rule
    ])
    tagged = tag(raw, reject_rules=[("blocked_item", "item = 'blocked'")])
    reasons = sorted((row["reason"] or "") for row in tagged.collect())
    assert reasons == ["", "", "bad_number", "bad_timestamp", "blocked_item", "duplicate", "missing_user_id",
                       "unknown_event_type"]
    assert tagged.count() == raw.count()

    events = clean.accepted_events(tagged)
    expected = spark.createDataFrame([
        ("1", dt.datetime(2020, 1, 1, 10), "view", "i1", 9.5, "phone", dt.date(2020, 1, 1)),
        ("3", dt.datetime(2020, 1, 2), "purchase", "i2", None, None, dt.date(2020, 1, 2)),
    ], "user_id string, ts timestamp, event_type string, item_id string, price double, query string, dt date")
    assertDataFrameEqual(events.select(*expected.columns), expected)

    quarantine = clean.quarantined_rows(tagged).filter(F.col("reason") == "unknown_event_type").first()
    assert '"what":"teleport"' in quarantine["raw"]
    assert quarantine["source_file"] == "file:///in.csv" and quarantine["run_id"] == "r1" and quarantine["source"] == "unit"


def test_malformed_csv_record_is_quarantined_with_its_raw_line(spark):
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS + ["_corrupt_record", "_source_file"]])
    raw = spark.createDataFrame([
        ("1", "2020-01-01 10:00:00", "pv", "i1", "1", None, None, "f"),
        ("1", "2020-01-01 10:00:00", "pv", None, None, None, "1,2020-01-01 10:00:00,pv", "f"),
    ], schema)
    tagged = tag(raw)
    rows = {row["reason"]: row["raw"] for row in tagged.collect()}
    assert rows == {None: rows[None], "malformed_row": "1,2020-01-01 10:00:00,pv"}


def test_window_quarantines_events_outside_it_in_the_declared_zone(spark):
    raw = raw_frame(spark, [
        ("1", "2017-11-24 16:30:00", "pv", "i", "1", None),  # 00:30 on Nov 25 in Beijing: inside
        ("1", "2017-11-24 15:30:00", "pv", "i", "1", None),  # 23:30 on Nov 24 in Beijing: outside
    ])
    tagged = tag(raw, window=("2017-11-25 00:00:00", "2017-12-04 00:00:00", "Asia/Shanghai"))
    assert sorted((r["reason"] or "") for r in tagged.collect()) == ["", "outside_window"]


def test_derived_users_items_and_labels(spark):
    schema = T.StructType([T.StructField(c, T.StringType()) for c in ["uid", "when", "age", "sex", "label", "item", "title"]])
    raw = spark.createDataFrame([
        ("u1", "2020-01-01 00:00:00", "31", "女", "0", "a", "Red <b>Mug</b>"),
        ("u1", "2020-02-01 00:00:00", "32", None, "1", "a", "Red Mug XL"),
        ("u2", "2020-01-05 00:00:00", "200", "x", "no", "b", None),
        ("u3", "2020-01-05 00:00:00", "40", "M", "maybe", "b", None),
    ], schema)
    tagged = clean.mark_duplicates(clean.tag_events(
        raw, source="unit", run_id="r", field_map={"user_id": "uid", "event_type": "expr:'search'", "item_id": "item",
                                                   "title": "title"},
        user_field_map={"age": "age", "gender": "sex"}, label_column="label",
        ts_column="when", ts_unit="string", ts_format="yyyy-MM-dd HH:mm:ss", ts_zone="UTC",
    ))
    users = clean.derive_users(tagged, gender_values={"女": "F", "男": "M"})
    assertDataFrameEqual(users.select("user_id", "age", "gender", "signup_ts"), spark.createDataFrame([
        ("u1", 32, "F", dt.datetime(2020, 1, 1)), ("u2", None, "U", dt.datetime(2020, 1, 5)),
    ], "user_id string, age int, gender string, signup_ts timestamp"))
    assertDataFrameEqual(clean.derive_labels(tagged), spark.createDataFrame([("u1", 1), ("u2", 0)], "user_id string, label int"))
    items = {r["item_id"]: r["title"] for r in clean.derive_items(tagged).collect()}
    assert items == {"a": "Red Mug XL", "b": None}
    assert [r["reason"] for r in tagged.filter("reason is not null").collect()] == ["bad_label"]


def test_resolve_aliases_coalesces_renamed_columns(spark):
    frame = spark.createDataFrame([("A1", None), (None, "B2")], "Invoice string, InvoiceNo string")
    out = clean.resolve_aliases(frame, aliases={"Invoice": ["InvoiceNo"]})
    assert out.columns == ["Invoice"] and [r[0] for r in out.collect()] == ["A1", "B2"]
