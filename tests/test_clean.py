"""Cleaning rules on small inline DataFrames: text, ids, timestamps, event types, quarantine, dedup."""

from __future__ import annotations

import datetime as dt
import zipfile

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from ecominsight import catalog, schema
from ecominsight.config import load_config
from ecominsight.io import Lake, read_json
from ecominsight.presets import RejectRule, TimestampSpec, WindowSpec, load_preset
from ecominsight.stages import run_clean
from ecominsight.transforms import clean
from ecominsight.catalog import CLEAN_EVENTS, CLEAN_REVIEWS, QUARANTINE
from tests.raw_records import records_of

RAW_COLUMNS = ["uid", "when", "what", "item", "cost", "q"]
RAW_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS + ["_source_file"]])
FIELD_MAP = {"user_id": "uid", "event_type": "what", "item_id": "item", "price": "cost", "query": "q"}
WHEN = TimestampSpec(column="when", unit="string", format="yyyy-MM-dd HH:mm:ss", zone="UTC")


def raw_frame(spark, rows):
    return spark.createDataFrame([(*row, "file:///in.csv") for row in rows], RAW_SCHEMA)


def tag(raw, **overrides):
    kwargs = dict(source="unit", run_id="r1", field_map=FIELD_MAP, event_type_map={"pv": "view", "buy": "purchase"},
                  timestamp=WHEN)
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


# Values at the edges of the shortcuts in clean_text, normalize_id and _number (a text taken as it is,
# the float regex only on dotted ids, lower-casing only of short texts): tabs, doubled, leading and
# non-breaking spaces, markup, marks, a dotless float, case-expanding and long null-like texts.
EDGE_TEXTS = ["ab", "a b", "a  b", " a", "a ", "a\tb", "a\u00a0b", "<i>a</i>", "a&amp;b", "e\u0301", "中文 12",
              "266079.0", "-3.00", "1.5", "7.", ".0", "NaN", " N/A ", "NONE", "İ", "nulls", "nan!", "", " ", None]


def test_shortcuts_give_what_the_full_rules_give(spark):
    """The fast paths of the clean rules return exactly what the rules spelled out in full return."""
    frame = spark.createDataFrame([(v,) for v in EDGE_TEXTS], "v string")
    v = F.col("v")
    text = F.regexp_replace(v, clean.HTML_TAG, " ")
    text = F.regexp_replace(F.regexp_replace(text, clean.HTML_ENTITY, " "), clean.NOT_TEXT, " ")
    text = F.trim(F.regexp_replace(text, r"\s+", " "))
    full_text = F.when(text != "", text)
    trimmed = F.regexp_replace(F.trim(v), r"^(-?\d+)\.0+$", "$1")
    full_id = F.when(trimmed.isNotNull() & ~F.lower(trimmed).isin(*clean.NULL_TOKENS), trimmed)
    number = F.trim(v).try_cast("double")
    full_bad_number = ~(v.isNull() | F.lower(F.trim(v)).isin(*clean.NULL_TOKENS)) & F.when(
        ~F.isnan(number) & (F.abs(number) < float("inf")), number).isNull()
    rows = frame.select(v, clean.clean_text(v).alias("text"), full_text.alias("full_text"),
                        clean.normalize_id(v).alias("id"), full_id.alias("full_id"),
                        clean._number(v)[1].alias("bad_number"), full_bad_number.alias("full_bad_number")).collect()
    for row in rows:
        assert (row["text"], row["id"], row["bad_number"]) == (row["full_text"], row["full_id"], row["full_bad_number"]), row["v"]
    assert {row["v"]: row["text"] for row in rows}["a\u00a0b"] == "a b"

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
    tagged = tag(raw, reject_rules=[RejectRule("blocked_item", "item = 'blocked'")])
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


def test_of_repeated_keys_the_first_by_file_then_text_stays_and_each_repeat_keeps_its_text(spark):
    rows = [
        # One event three times (the query differs only in markup that cleaning removes, so the
        # canonical key is the same): with no line numbers, the smallest raw text stays.
        ("5", "2020-01-03 09:00:00", "pv", "i9", "2", "<b>mug</b>", "file:///b.csv"),
        ("5", "2020-01-03 09:00:00", "pv", "i9", "2", "mug", "file:///b.csv"),
        ("5", "2020-01-03 09:00:00", "pv", "i9", "2.0", "mug", "file:///b.csv"),
        # The same key in an earlier file wins over all of them.
        ("5", "2020-01-03 09:00:00", "pv", "i9", "2", "<i>mug</i>", "file:///a.csv"),
        # A price of -0 is the same key as 0; a rejected copy neither stays nor hides one.
        ("6", "2020-01-03 09:00:00", "pv", "i9", "0", None, "file:///a.csv"),
        ("6", "2020-01-03 09:00:00", "pv", "i9", "-0", None, "file:///a.csv"),
        ("6", "2020-01-03 09:00:00", "pv", "i9", "0", None, "file:///a.csv"),
        ("6", "yesterday", "pv", "i9", "0", None, "file:///a.csv"),
        # Unique keys pass untouched.
        ("7", "2020-01-03 09:00:00", "pv", "i9", "2", "mug", "file:///a.csv"),
    ]
    tagged = tag(spark.createDataFrame(rows, RAW_SCHEMA))
    got = sorted((r["user_id"], r["reason"] or "", r["source_file"], r["raw"] if r["reason"] else None)
                 for r in tagged.collect())

    def text(row):
        return "{" + ",".join(f'"{c}":"{v}"' for c, v in zip(RAW_COLUMNS, row) if v is not None) + "}"

    assert got == sorted([
        ("5", "", "file:///a.csv", None),
        *[("5", "duplicate", "file:///b.csv", text(row)) for row in rows[:3]],
        ("6", "", "file:///a.csv", None),
        ("6", "duplicate", "file:///a.csv", text(rows[4])),
        ("6", "duplicate", "file:///a.csv", text(rows[6])),
        ("6", "bad_timestamp", "file:///a.csv", text(rows[7])),
        ("7", "", "file:///a.csv", None),
    ])
    # User 6's -0 copy sorts first by its text ("-0" < "0") and stays: the two "0" copies are its repeats.
    assert clean.accepted_events(tagged).filter("user_id = '6'").first()["price"] == 0.0


def test_window_quarantines_events_outside_it_in_the_declared_zone(spark):
    raw = raw_frame(spark, [
        ("1", "2017-11-24 16:30:00", "pv", "i", "1", None),  # 00:30 on Nov 25 in Beijing: inside
        ("1", "2017-11-24 15:30:00", "pv", "i", "1", None),  # 23:30 on Nov 24 in Beijing: outside
    ])
    tagged = tag(raw, window=WindowSpec("2017-11-25 00:00:00", "2017-12-04 00:00:00", "Asia/Shanghai"))
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
        timestamp=WHEN,
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


def test_parse_timestamp_takes_the_first_pattern_that_parses(spark):
    frame = spark.createDataFrame([("12/06/2010 10:08",), ("2/20/11 11:39",), ("2011-02-20 11:39",)], "v string")
    parsed = clean.parse_timestamp(F.col("v"), unit="string", fmt=("M/d/yyyy H:mm", "M/d/yy H:mm"), zone="UTC")
    assert [r[0] for r in frame.select(parsed).collect()] == [dt.datetime(2010, 12, 6, 10, 8), dt.datetime(2011, 2, 20, 11, 39), None]


def test_age_buckets_and_gender_codes_map_through_the_preset_values(spark):
    frame = spark.createDataFrame([("56岁以上", "2"), ("-1", "0"), ("33", "1"), ("200", "m"), (None, None)], "age string, sex string")
    got = frame.select(clean.parse_age(F.col("age"), age_values={"56岁以上": 60}),
                       clean.parse_gender(F.col("sex"), gender_values={"0": "M", "1": "F", "2": "U"})).collect()
    assert [tuple(r) for r in got] == [(60, "U"), (None, "M"), (33, "F"), (None, "M"), (None, None)]


# A preset with everything a source can declare: zipped events with a window and reviews, a GBK user list
# with age buckets, and an item list. Each file has a dirty row per check; the comments give its fate.
EVENTS_CSV = """uid,when,what,item,cost,stars,note
u1,2020-01-01 10:00:00,pv,i1,1.5,5,good
u1,2020-01-01 10:00:00,pv,i1,1.5,5,good
,2020-01-01 11:00:00,pv,i2,2,4,fine
u2,2020-01-02 09:00:00,buy,i2,,,
u2,1999-01-01 00:00:00,buy,i2,3,3,old
u3,2020-01-03 00:00:00,pv
u2,2020-01-05 00:00:00,teleport,i3,1,9,x
"""
# events:  ok, duplicate, missing_user_id, ok, outside_window, malformed_row, unknown_event_type
# reviews: ok, duplicate, missing_user_id, empty_review, ok, malformed_row, bad_rating
USERS_CSV = "id,age,sex,reg\nu1,26-35岁,0,2019-05-01\nu2,-1,1,not a day\nu9,56岁以上,2,2019-01-01\n,20,0,2019-01-01\nu9,30,1,2019-01-01\n"
# users:   ok, ok (no signup day), ok (no events), missing_user_id, duplicate
ITEMS_CSV = "sku,cat,price\ni1,mugs,3.5\ni1,mugs,3.5\n,x,1\ni4,cups,cheap\n"
# items:   ok, duplicate, missing_item_id, bad_number
PRESET = """
name: everything
format: csv
paths: ["{folder}/events.zip"]
timestamp: {{column: when, format: "yyyy-MM-dd HH:mm:ss"}}
window: {{start: "2020-01-01 00:00:00", end: "2020-02-01 00:00:00"}}
events: {{user_id: uid, event_type: what, item_id: item, price: cost}}
event_types: {{pv: view, buy: purchase}}
reviews: {{user_id: uid, item_id: item, rating: stars, text: note}}
user_source:
  format: csv
  paths: ["{folder}/users.csv"]
  encoding: GBK
  fields: {{user_id: id, age: age, gender: sex}}
  timestamp: {{column: reg, format: "yyyy-MM-dd"}}
  age_values: {{26-35岁: 30, 56岁以上: 60}}
  gender_values: {{0: M, 1: F, 2: U}}
item_source:
  format: csv
  paths: ["{folder}/items.csv"]
  fields: {{item_id: sku, category: cat, price: price}}
"""


def _write_everything(folder) -> str:
    with zipfile.ZipFile(folder / "events.zip", "w") as bundle:
        bundle.writestr("export/events.csv", EVENTS_CSV)
    (folder / "users.csv").write_bytes(USERS_CSV.encode("gbk"))
    (folder / "items.csv").write_text(ITEMS_CSV, encoding="utf-8")
    preset = folder / "everything.yaml"
    preset.write_text(PRESET.format(folder=folder), encoding="utf-8")
    return str(preset)


def test_run_clean_writes_every_table_and_the_data_quality_report(spark, tmp_path):
    preset = _write_everything(tmp_path)
    lake = Lake(tmp_path / "lake")
    config = load_config("local", [f"lake={lake.root}", f"source.preset={preset}"])
    summary = run_clean(spark, config, lake, "dq")

    report = read_json(lake.report_dir("dq") / "data_quality.json")
    events = report["tables"]["events"]
    assert events["rows_by_reason"] == {"<clean>": 2, "duplicate": 1, "malformed_row": 1, "missing_user_id": 1,
                                        "outside_window": 1, "unknown_event_type": 1}
    assert (events["input_rows"], events["clean_rows"], events["quarantined_rows"]) == (7, 2, 5)
    assert events["duplicate_rate"] == pytest.approx(1 / 7)
    assert events["null_rates"]["price"] == 0.5 and events["null_rates"]["user_id"] == 0.0 and events["null_rates"]["query"] == 1.0
    assert events["time_range"] == {"min": "2020-01-01 10:00:00", "max": "2020-01-02 09:00:00"}
    # Only the 1999 row has a parsed time outside the window (the malformed row's time is inside it).
    assert events["window"] == {"start": "2020-01-01 00:00:00", "end": "2020-02-01 00:00:00", "zone": "UTC", "rows_outside": 1}
    assert report["tables"]["users"]["rows_by_reason"] == {"<clean>": 3, "duplicate": 1, "missing_user_id": 1}
    assert report["tables"]["users"]["null_rates"]["signup_ts"] == pytest.approx(1 / 3)
    assert report["tables"]["items"]["rows_by_reason"] == {"<clean>": 1, "bad_number": 1, "duplicate": 1, "missing_item_id": 1}
    assert report["tables"]["reviews"]["rows_by_reason"] == {"<clean>": 2, "bad_rating": 1, "duplicate": 1,
                                                             "empty_review": 1, "malformed_row": 1, "missing_user_id": 1}
    assert report["users_without_events"] == 1  # u9: listed, never active

    # clean.json keeps its keys (the events' figures) and adds every table's.
    assert (summary.input_rows, summary.clean_rows, summary.quarantined_rows) == (7, 2, 5)
    assert summary.quarantined_by_reason == {k: v for k, v in events["rows_by_reason"].items() if k != "<clean>"}
    assert read_json(lake.report_dir("dq") / "clean.json") == summary.to_dict()
    # Each table against its raw file, counted without Spark (the zipped events feed both events and reviews).
    source = load_preset(preset)
    raw_rows = {"events": records_of(source), "reviews": records_of(source), "users": records_of(source.user_source),
                "items": records_of(source.item_source)}
    assert raw_rows == {"events": 7, "reviews": 7, "users": 5, "items": 4}
    assert {t: c["input_rows"] for t, c in summary.tables.items()} == raw_rows
    assert {t: c["clean_rows"] + c["quarantined_rows"] for t, c in summary.tables.items()} == raw_rows

    def table(zone, name):
        return lake.read(spark, catalog.table(zone, name))

    # u2's unreadable signup day falls back to its first event; of u9's two rows, a CSV gives no line
    # numbers, so the copy that stays is the first by raw text: {"id":"u9","age":"30",...}.
    users = {r["user_id"]: (r["age"], r["gender"], r["signup_ts"]) for r in table("clean", "users").collect()}
    assert users == {"u1": (30, "M", dt.datetime(2019, 5, 1)), "u2": (None, "F", dt.datetime(2020, 1, 2, 9)),
                     "u9": (30, "F", dt.datetime(2019, 1, 1))}
    items = {r["item_id"]: (r["category"], r["price"]) for r in table("clean", "items").collect()}
    assert items == {"i1": ("mugs", 3.5), "i2": (None, None)}
    reviews = table("clean", "reviews")
    assert reviews.schema.fieldNames() == schema.REVIEWS.fieldNames()
    assert sorted((r["user_id"], r["rating"], r["text"]) for r in reviews.collect()) == [("u1", 5.0, "good"), ("u2", 3.0, "old")]
    counts = {name: table("quarantine", name).count() for name in ("events", "users", "items", "reviews")}
    assert counts == {"events": 5, "users": 2, "items": 3, "reviews": 5}
    quarantine = table("quarantine", "events")
    assert set(quarantine.columns) == set(schema.QUARANTINE.fieldNames())
    malformed = quarantine.filter(F.col("reason") == "malformed_row").select("raw", "source_file").first()
    assert malformed["raw"] == "u3,2020-01-03 00:00:00,pv" and malformed["source_file"].endswith("/events.csv")
    # The unpacked archive is gone once the stage ends.
    assert lake.staging_dir().files() == []

    # A later run whose preset declares no reviews leaves no stale reviews behind.
    text = (tmp_path / "everything.yaml").read_text(encoding="utf-8")
    (tmp_path / "everything.yaml").write_text(text.replace("reviews: {user_id: uid, item_id: item, rating: stars, text: note}\n", ""),
                                              encoding="utf-8")
    run_clean(spark, config, lake, "dq2")
    assert not lake.exists(CLEAN_REVIEWS) and not lake.exists(QUARANTINE["reviews"]) and lake.exists(CLEAN_EVENTS)
