"""Fusing: point-in-time features and labels, most-recent-first truncation, stable user splits."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from ecominsight import schema
from ecominsight.transforms import fuse

CUTOFF = dt.date(2020, 3, 1)


def events_frame(spark, rows):
    """rows: (user_id, ts, event_type, item_id, price, quantity, query, session_id)"""
    full = [(*row, "unit", row[1].date()) for row in rows]
    return spark.createDataFrame(full, "user_id string, ts timestamp, event_type string, item_id string, price double, "
                                       "quantity double, query string, session_id string, source string, dt date")\
        .withColumn("category", F.lit(None).cast("string")).withColumn("brand", F.lit(None).cast("string"))\
        .select(*schema.EVENTS.fieldNames())


@pytest.fixture()
def tables(spark):
    events = events_frame(spark, [
        ("a", dt.datetime(2020, 1, 1, 9), "view", "i1", None, None, None, None),
        ("a", dt.datetime(2020, 1, 1, 10), "purchase", "i1", 10.0, 2.0, None, "o1"),
        ("a", dt.datetime(2020, 2, 20, 10), "purchase", "i2", 5.0, 1.0, None, "o2"),
        ("a", dt.datetime(2020, 3, 1, 0), "purchase", "i2", 5.0, 1.0, None, "o3"),   # at the cutoff: label only
        ("b", dt.datetime(2020, 2, 1), "search", None, None, None, "笔记本电脑", None),
        ("b", dt.datetime(2020, 2, 29, 23, 59), "cart", "i1", 10.0, 1.0, None, None),
        ("c", dt.datetime(2020, 2, 10), "purchase", "i1", 10.0, 1.0, None, "o4"),
        ("c", dt.datetime(2020, 6, 1), "purchase", "i1", 10.0, 1.0, None, "o5"),     # after the horizon
        ("d", dt.datetime(2020, 3, 5), "purchase", "i1", 10.0, 1.0, None, "o6"),     # new user after cutoff
    ])
    users = spark.createDataFrame([("a", 30, "F", "Leeds", None, {}), ("b", None, "U", None, None, {})], schema.USERS)
    items = spark.createDataFrame([("i1", "Red Mug", None, None, 10.0, None), ("i2", "Blue Pot", None, None, 5.0, None)],
                                  schema.ITEMS)
    return events, users, items


def test_features_use_only_events_strictly_before_as_of(tables):
    events, _, _ = tables
    got = {r["user_id"]: r for r in fuse.user_numeric_features(events, as_of=CUTOFF).collect()}
    assert set(got) == {"a", "b", "c"}  # d has nothing before the cutoff
    a = got["a"]
    assert (a["n_events"], a["n_purchase"], a["n_view"], a["n_baskets"]) == (3.0, 2.0, 1.0, 2.0)
    assert a["spend"] == pytest.approx(25.0)
    assert a["recency_days"] == pytest.approx(9 + 14 / 24)  # 2020-02-20 10:00 -> 2020-03-01 00:00
    assert a["mean_basket_gap_days"] == pytest.approx(50.0)  # two baskets, 50 days apart
    b = got["b"]
    assert (b["n_search"], b["n_cart"], b["n_purchase"]) == (1.0, 1.0, 0.0)
    assert b["purchase_recency_days"] == fuse.NEVER_PURCHASED_DAYS


def test_label_counts_purchases_in_the_horizon_only(tables):
    events, _, _ = tables
    labels = fuse.point_in_time_labels(events, cutoff=CUTOFF, horizon=dt.timedelta(days=30))
    assertDataFrameEqual(labels, labels.sparkSession.createDataFrame([("a", 1), ("d", 1)], "user_id string, label int"))


def test_fused_rows_join_text_features_and_labels(tables):
    events, users, items = tables
    labels = fuse.point_in_time_labels(events, cutoff=CUTOFF, horizon=dt.timedelta(days=30))
    fused = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=10, population="any_event",
                                     labels=labels)
    rows = {r["user_id"]: r for r in fused.collect()}
    assert set(rows) == {"a", "b", "c"}  # d has no history before the cutoff and is not in users
    assert {u: r["label"] for u, r in rows.items()} == {"a": 1, "b": 0, "c": 0}
    assert rows["a"]["text"] == ("age 30 | gender F | region Leeds [SEP] 01-01 view Red Mug ; "
                                 "01-01 purchase Red Mug x2 10.00 ; 02-20 purchase Blue Pot 5.00")
    assert rows["b"]["text"] == "02-01 search 笔记本电脑 ; 02-29 cart Red Mug 10.00"
    assert all(r["as_of"] == CUTOFF for r in rows.values())

    purchasers = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=10, population="purchasers",
                                          labels=labels)
    assert sorted(r["user_id"] for r in purchasers.collect()) == ["a", "c"]


def test_text_keeps_the_most_recent_events_in_time_order(tables):
    events, users, items = tables
    text = fuse.user_behaviour_text(events, items, as_of=None, max_events=2)
    a = text.filter("user_id = 'a'").first()
    assert a["behaviour"] == "02-20 purchase Blue Pot 5.00 ; 03-01 purchase Blue Pot 5.00"
    assert a["n_events_in_text"] == 2


def test_reviews_join_the_text_in_time_order_before_the_cutoff_only(tables, spark):
    events, users, items = tables
    reviews = spark.createDataFrame([
        ("a", "i1", dt.datetime(2020, 1, 5), 4.0, "lovely mug but the handle is small and it chips", "unit"),
        ("b", "i1", dt.datetime(2020, 2, 2), None, "好用", "unit"),
        ("a", "i2", dt.datetime(2020, 3, 2), 1.0, "written after the cutoff", "unit"),
    ], schema.REVIEWS)
    fused = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=3, reviews=reviews,
                                     review_max_words=4)
    rows = {r["user_id"]: r for r in fused.collect()}
    # The review sits between the January purchase and the February one; the window of the three most
    # recent entries counts it as an event of the text.
    assert rows["a"]["text"] == ("age 30 | gender F | region Leeds [SEP] 01-01 purchase Red Mug x2 10.00 ; "
                                 "01-05 review 4 stars lovely mug but the ; 02-20 purchase Blue Pot 5.00")
    assert rows["b"]["text"] == "02-01 search 笔记本电脑 ; 02-02 review 好用 ; 02-29 cart Red Mug 10.00"
    assert "after the cutoff" not in " ".join(r["text"] for r in rows.values())


def test_scoring_table_has_everyone_and_no_label(tables):
    events, users, items = tables
    current = fuse.fuse_user_sequences(events, users, items, as_of=dt.date(2020, 7, 1), max_events=5, labels=None)
    assert sorted(r["user_id"] for r in current.collect()) == ["a", "b", "c", "d"]
    assert current.filter(F.col("label").isNotNull()).count() == 0


def test_split_is_stable_deterministic_and_near_the_fractions(spark):
    users = spark.range(20_000).select(F.col("id").cast("string").alias("user_id"))
    first = fuse.assign_split(users, seed=17, valid_fraction=0.15, test_fraction=0.15)
    again = fuse.assign_split(users.orderBy(F.rand(3)).repartition(7), seed=17, valid_fraction=0.15, test_fraction=0.15)
    assertDataFrameEqual(first, again)
    shares = {r["split"]: r["count"] / 20_000 for r in first.groupBy("split").count().collect()}
    assert shares["train"] == pytest.approx(0.70, abs=0.02)
    assert shares["valid"] == pytest.approx(0.15, abs=0.01) and shares["test"] == pytest.approx(0.15, abs=0.01)
    other_seed = fuse.assign_split(users, seed=18, valid_fraction=0.15, test_fraction=0.15)
    moved = first.join(other_seed.withColumnRenamed("split", "s2"), "user_id").filter("split != s2").count()
    assert moved > 5_000  # the seed really reshuffles users


def test_leak_check_flags_features_that_saw_the_cutoff(tables):
    events, users, items = tables
    fused = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=10, population="any_event")
    assert fuse.leaked_rows(fused).count() == 0
    # Pretend the filter had let the cutoff's own event through: the check must see it.
    tampered = fused.withColumn("last_event_ts", F.when(F.col("user_id") == "a", F.lit(dt.datetime(2020, 3, 1)))
                                .otherwise(F.col("last_event_ts")))
    assert [r["user_id"] for r in fuse.leaked_rows(tampered).collect()] == ["a"]


def test_one_event_list_serves_every_as_of_day(tables, spark):
    events, _, items = tables
    reviews = spark.createDataFrame([
        ("a", "i1", dt.datetime(2020, 1, 5), 4.0, "lovely mug", "unit"),
        ("a", "i2", dt.datetime(2020, 3, 2), 1.0, "written after the cutoff", "unit"),
    ], schema.REVIEWS)
    lists = fuse.user_event_lists(events, items, reviews=reviews, review_max_words=4)
    # The cutoff, a day before every event (no text at all) and a day after the data end.
    for as_of in (CUTOFF, dt.date(2019, 1, 1), dt.date(2020, 7, 1)):
        # Cutting the shared list as of the day = building the list from that day's history only.
        history = fuse.user_event_lists(fuse.events_before(events, as_of=as_of), items,
                                        reviews=fuse.events_before(reviews, as_of=as_of), review_max_words=4)
        assertDataFrameEqual(fuse.behaviour_text(lists, as_of=as_of, max_events=2),
                             fuse.behaviour_text(history, as_of=None, max_events=2))
    before_cutoff = {r["user_id"]: r["behaviour"] for r in fuse.behaviour_text(lists, as_of=CUTOFF, max_events=5).collect()}
    assert set(before_cutoff) == {"a", "b", "c"} and "after the cutoff" not in before_cutoff["a"]


def test_day_lines_fold_a_day_and_kind_into_one_line_with_summed_quantities(tables, spark):
    events, users, items = tables
    more = events_frame(spark, [
        ("e", dt.datetime(2020, 2, 1, 9), "purchase", "i1", 10.0, 2.0, None, "o7"),
        ("e", dt.datetime(2020, 2, 1, 9), "purchase", "i2", 5.0, 1.0, None, "o7"),
        ("e", dt.datetime(2020, 2, 1, 9, 5), "purchase", "i1", 10.0, 3.0, None, "o8"),  # a second basket that day
        ("e", dt.datetime(2020, 2, 1, 11), "view", "i3", None, None, None, None),
        ("e", dt.datetime(2020, 2, 1, 12), "view", "i3", None, None, None, None),
        ("e", dt.datetime(2020, 2, 2, 8), "view", "i4", None, None, None, None),
    ])
    catalogue = items.unionByName(spark.createDataFrame([("i3", "Green Jug", None, None, 2.0, None),
                                                         ("i4", "Tin", None, None, 1.0, None)], schema.ITEMS))
    got = {r["user_id"]: r for r in fuse.user_behaviour_text(events.unionByName(more), catalogue, as_of=CUTOFF,
                                                             max_events=10, encoding="days", day_max_items=1).collect()}
    assert got["e"]["behaviour"] == ("02-01 purchase: Red Mug x5 (+1 more) ; 02-01 view: Green Jug x2 ; "
                                     "02-02 view: Tin")
    assert got["e"]["n_events_in_text"] == 6
    # The event before the cutoff only; the same day's view and purchase are two lines.
    assert got["a"]["behaviour"] == "01-01 view: Red Mug ; 01-01 purchase: Red Mug x2 ; 02-20 purchase: Blue Pot"
    newest = fuse.user_behaviour_text(events.unionByName(more), catalogue, as_of=CUTOFF, max_events=2, encoding="days")
    e = newest.filter("user_id = 'e'").first()
    assert e["behaviour"] == "02-01 view: Green Jug x2 ; 02-02 view: Tin" and e["n_events_in_text"] == 3


def test_day_lines_serve_every_as_of_day_and_carry_reviews(tables, spark):
    events, _, items = tables
    reviews = spark.createDataFrame([
        ("a", "i1", dt.datetime(2020, 1, 1, 12), 4.0, "lovely mug but the handle is small", "unit"),
        ("a", "i2", dt.datetime(2020, 3, 2), 1.0, "written after the cutoff", "unit"),
    ], schema.REVIEWS)
    lists = fuse.user_event_lists(events, items, reviews=reviews, review_max_words=3, encoding="days")
    for as_of in (CUTOFF, dt.date(2019, 1, 1), dt.date(2020, 7, 1)):
        history = fuse.user_event_lists(fuse.events_before(events, as_of=as_of), items, encoding="days",
                                        reviews=fuse.events_before(reviews, as_of=as_of), review_max_words=3)
        assertDataFrameEqual(fuse.behaviour_text(lists, as_of=as_of, max_events=2, encoding="days"),
                             fuse.behaviour_text(history, as_of=None, max_events=2, encoding="days"))
    a = fuse.behaviour_text(lists, as_of=CUTOFF, max_events=10, encoding="days").filter("user_id = 'a'").first()
    assert a["behaviour"] == ("01-01 view: Red Mug ; 01-01 purchase: Red Mug x2 ; 01-01 review: 4 stars lovely mug but ; "
                              "02-20 purchase: Blue Pot")
    with pytest.raises(ValueError, match="text encoding 'weeks'"):
        fuse.behaviour_text(lists, as_of=CUTOFF, max_events=10, encoding="weeks")


# A sub-day cutoff (samples that span hours): 2019-10-01 02:32:00 UTC, a one-hour label window.
INSTANT = dt.datetime(2019, 10, 1, 2, 32, tzinfo=dt.timezone.utc)


@pytest.fixture()
def hourly_tables(spark):
    events = events_frame(spark, [
        ("a", dt.datetime(2019, 10, 1, 0, 5), "view", "i1", None, None, None, "s1"),
        ("a", dt.datetime(2019, 10, 1, 2, 31, 59), "cart", "i1", 10.0, 1.0, None, "s1"),
        ("a", dt.datetime(2019, 10, 1, 2, 32), "purchase", "i1", 10.0, 1.0, None, "s1"),    # at the cutoff: label only
        ("b", dt.datetime(2019, 10, 1, 2, 10), "view", "i2", None, None, None, "s2"),
        ("b", dt.datetime(2019, 10, 1, 3, 32), "purchase", "i2", 5.0, 1.0, None, "s2"),     # at the window's end: outside
        ("c", dt.datetime(2019, 10, 1, 2, 20), "purchase", "i2", 5.0, 1.0, None, "s3"),
        ("c", dt.datetime(2019, 10, 1, 3, 31, 59), "purchase", "i2", 5.0, 1.0, None, "s4"),  # last second inside
        ("n", dt.datetime(2019, 10, 1, 2, 32, 1), "purchase", "i1", 10.0, 1.0, None, "s5"),  # first seen after the cutoff
    ])
    # As for sources without a users file, the users table lists every user of the events, "n" included.
    users = spark.createDataFrame([(u, None, "U", None, None, {}) for u in ("a", "b", "c", "n")], schema.USERS)
    items = spark.createDataFrame([("i1", "Red Mug", None, None, 10.0, None), ("i2", "Blue Pot", None, None, 5.0, None)],
                                  schema.ITEMS)
    return events, users, items


def test_sub_day_cutoff_splits_features_labels_and_text_at_the_instant(hourly_tables):
    events, users, items = hourly_tables
    labels = fuse.point_in_time_labels(events, cutoff=INSTANT, horizon=dt.timedelta(hours=1))
    assert sorted((r["user_id"], r["label"]) for r in labels.collect()) == [("a", 1), ("c", 1), ("n", 1)]
    fused = fuse.fuse_user_sequences(events, users, items, as_of=INSTANT, max_events=10, population="active", labels=labels)
    rows = {r["user_id"]: r for r in fused.collect()}
    assert set(rows) == {"a", "b", "c"}  # "active": "n" is in the users table but has nothing before the cutoff
    assert {u: r["label"] for u, r in rows.items()} == {"a": 1, "b": 0, "c": 1}
    a = rows["a"]
    assert (a["n_events"], a["n_cart"], a["n_purchase"]) == (2.0, 1.0, 0.0)  # the 02:32:00 purchase is not a feature
    assert a["recency_days"] == pytest.approx(1 / 86400)  # 02:31:59 -> 02:32:00
    assert a["text"] == "10-01 view Red Mug ; 10-01 cart Red Mug 10.00"
    assert a["last_event_ts"] == dt.datetime(2019, 10, 1, 2, 31, 59)  # the session's zone is UTC
    assert all(r["as_of"] == dt.date(2019, 10, 1) and r["as_of_ts"] == dt.datetime(2019, 10, 1, 2, 32) for r in rows.values())
    assert fuse.leaked_rows(fused).count() == 0
    everyone = fuse.fuse_user_sequences(events, users, items, as_of=INSTANT, max_events=10, population="any_event")
    assert sorted(r["user_id"] for r in everyone.collect()) == ["a", "b", "c", "n"]
    # The same instant written in another zone is the same cutoff.
    beijing = INSTANT.astimezone(dt.timezone(dt.timedelta(hours=8)))
    assertDataFrameEqual(fuse.point_in_time_labels(events, cutoff=beijing, horizon=dt.timedelta(hours=1)), labels)


def test_a_day_cutoff_keeps_its_midnight_instant(tables):
    events, users, items = tables
    fused = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=10)
    assert {(r["as_of"], r["as_of_ts"]) for r in fused.collect()} == {(CUTOFF, dt.datetime(2020, 3, 1))}
    with pytest.raises(ValueError, match="horizon must be positive"):
        fuse.point_in_time_labels(events, cutoff=CUTOFF, horizon=dt.timedelta(0))


@pytest.mark.parametrize("horizon, cutoff", [
    # A whole-day horizon on the day after the data's last day is a day; an hours horizon an instant.
    ("90d", dt.date(2020, 3, 3)), ("1d", dt.date(2020, 5, 31)), ("48h", dt.date(2020, 5, 30)),
    ("1h", dt.datetime(2020, 5, 31, 23, tzinfo=dt.timezone.utc)),
    ("36h", dt.datetime(2020, 5, 30, 12, tzinfo=dt.timezone.utc)),
])
def test_default_cutoff_is_the_data_end_minus_the_horizon(horizon, cutoff):
    from ecominsight.config import FuseConfig
    from ecominsight.stages.fuse import default_cutoff

    got = default_cutoff(dt.date(2020, 6, 1), FuseConfig(horizon=horizon))
    assert (got, type(got)) == (cutoff, type(cutoff))


def test_leak_check_compares_with_the_cutoff_instant_not_its_day(hourly_tables):
    events, users, items = hourly_tables
    fused = fuse.fuse_user_sequences(events, users, items, as_of=INSTANT, max_events=10, population="active")
    # One second after the cutoff, on the cutoff's own day: a check against the day would miss it.
    for leaked_at, caught in ((dt.datetime(2019, 10, 1, 2, 32, 1), ["a"]), (dt.datetime(2019, 10, 1, 2, 32), ["a"]),
                              (dt.datetime(2019, 10, 1, 2, 31, 59, 999999), [])):
        tampered = fused.withColumn("last_event_ts", F.when(F.col("user_id") == "a", F.lit(leaked_at))
                                    .otherwise(F.col("last_event_ts")))
        assert [r["user_id"] for r in fuse.leaked_rows(tampered).collect()] == caught, leaked_at


def test_item_attributes_fill_the_events_category_and_brand_in_features_and_text(spark):
    """A source whose events carry no category or brand but whose item catalogue does (a preset's
    `item_source`): the category counts and the text see the catalogue's values; an event's own wins."""
    events = events_frame(spark, [
        ("a", dt.datetime(2020, 1, 1), "purchase", "i1", 1.0, 1.0, None, "o1"),
        ("a", dt.datetime(2020, 1, 2), "purchase", "i2", 1.0, 1.0, None, "o2"),
        ("a", dt.datetime(2020, 1, 3), "view", "i3", None, None, None, None),
    ]).withColumn("category", F.when(F.col("item_id") == "i3", F.lit("own category")))
    users = spark.createDataFrame([], schema.USERS)
    items = spark.createDataFrame([("i1", None, "mugs", "acme", 1.0, None), ("i2", None, "pots", None, 1.0, None),
                                   ("i3", None, "mugs", None, 1.0, None)], schema.ITEMS)
    (row,) = fuse.fuse_user_sequences(events, users, items, as_of=CUTOFF, max_events=10).collect()
    assert row["n_distinct_categories"] == 3.0  # mugs, pots and the event's own category of i3
    assert row["text"] == "01-01 purchase mugs 1.00 ; 01-02 purchase pots 1.00 ; 01-03 view own category"
    (filled,) = fuse.with_item_attributes(events, items).filter("item_id = 'i1'").collect()
    assert (filled["category"], filled["brand"]) == ("mugs", "acme")


def test_events_after_the_cutoff_change_no_fused_feature_text_or_label(tables, spark):
    """Leakage, for every column at once: events appended at and after the cutoff (new items, other
    event types, a review, a new user) leave every fused row as it was; events after the label
    window leave the labels as they were too. User attributes are static properties without a time:
    they ride along in the text and the attribute maps, the same whatever the events."""
    events, _, items = tables
    users = spark.createDataFrame([("a", 30, "F", "Leeds", None, {"tier": "gold", "household": "3"}),
                                   ("b", None, "U", None, None, {"tier": "silver"})], schema.USERS)
    horizon = dt.timedelta(days=30)
    later = events_frame(spark, [
        ("a", dt.datetime(2020, 3, 1), "view", "i9", 99.0, 1.0, None, None),           # at the cutoff instant
        ("a", dt.datetime(2020, 3, 2), "purchase", "i1", 50.0, 3.0, None, "late-1"),
        ("b", dt.datetime(2020, 3, 10), "search", None, None, None, "leaked query", None),
        ("b", dt.datetime(2020, 3, 30, 23), "purchase", "i2", 5.0, 1.0, None, "late-2"),  # inside the label window
        ("c", dt.datetime(2020, 5, 1), "return", "i1", 10.0, 1.0, None, "late-3"),
        ("e", dt.datetime(2020, 3, 3), "purchase", "i1", 10.0, 1.0, None, "late-4"),    # a user first seen after it
    ])
    reviews = spark.createDataFrame([("a", "i1", dt.datetime(2020, 1, 5), 4.0, "lovely mug", "unit")], schema.REVIEWS)
    later_reviews = reviews.unionByName(spark.createDataFrame(
        [("a", "i1", dt.datetime(2020, 3, 1, 12), 1.0, "leaked review", "unit")], schema.REVIEWS))
    extended = events.unionByName(later)

    def fused(history, written, labelled_by=None):
        labels = None if labelled_by is None else fuse.point_in_time_labels(labelled_by, cutoff=CUTOFF, horizon=horizon)
        return fuse.fuse_user_sequences(history, users, items, as_of=CUTOFF, max_events=10, population="any_event",
                                        labels=labels, reviews=written,
                                        attribute_kinds={"tier": "categorical", "household": "numeric"})

    # Features and text: any event at or after the cutoff is invisible.
    assertDataFrameEqual(fused(extended, later_reviews), fused(events, reviews))
    # Labels too, for events after the label window; inside it they are the label (b buys: 0 -> 1).
    after_window = extended.filter(F.col("ts") >= F.lit(dt.datetime(2020, 3, 31)))
    assertDataFrameEqual(fused(events.unionByName(after_window), reviews, events.unionByName(after_window)),
                         fused(events, reviews, events))
    labels = {r["user_id"]: r["label"] for r in fused(extended, later_reviews, extended).collect()}
    assert labels["b"] == 1 and "e" not in labels
