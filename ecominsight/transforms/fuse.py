"""Fuse: canonical users/events/items -> one row per user with text, numeric features, label, split.

Pure DataFrame -> DataFrame transforms. Point-in-time discipline: every feature is computed
from events strictly before `as_of`; the label looks only at [as_of, as_of + horizon). `as_of` is a
day (midnight UTC) or an exact instant (a timezone-aware datetime; samples that span only hours need one).
"""

from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight.schema import (
    AGGREGATE_FEATURES, ATTRIBUTE_SEPARATOR, CANONICAL_ATTRIBUTE_KINDS, CATEGORICAL_ATTRIBUTES, NO_HISTORY, NUMERIC,
    NUMERIC_ATTRIBUTES, NUMERIC_FEATURES, SEQUENCE_SEPARATOR,
)

# A user who never bought gets this "days since last purchase": longer than any real history.
NEVER_PURCHASED_DAYS = 3650.0


# An as-of point: a day (its midnight UTC) or an exact, timezone-aware instant.
AsOf = dt.date | dt.datetime


def as_of_instant(as_of: AsOf) -> dt.datetime:
    """The exact UTC instant of an as-of point: midnight UTC of a day, or the datetime itself
    (naive datetimes are read as UTC)."""
    if isinstance(as_of, dt.datetime):
        return as_of.replace(tzinfo=dt.timezone.utc) if as_of.tzinfo is None else as_of.astimezone(dt.timezone.utc)
    return dt.datetime.combine(as_of, dt.time.min, tzinfo=dt.timezone.utc)


def _ts_literal(as_of: AsOf) -> Column:
    # An aware datetime converts to the epoch exactly; a naive one would go through the machine's zone.
    return F.lit(as_of_instant(as_of)).cast("timestamp")


def events_before(events: DataFrame, *, as_of: AsOf) -> DataFrame:
    """Events strictly before `as_of` (midnight UTC of a day, or the exact instant)."""
    return events.filter(F.col("ts") < _ts_literal(as_of))


def _count_distinct(column: Column) -> Column:
    """The number of distinct non-null values, as a set per group. Spark plans several
    countDistinct in one aggregation by expanding every row once per distinct column (7 copies of
    each event here); a per-user set is an ordinary aggregate, and a user's sets are small."""
    return F.size(F.collect_set(column))


# Wide enough for any spend (20 integer digits) and fine enough that rounding a double to it moves
# an amount by at most 5e-19.
_EXACT_SUM = T.DecimalType(38, 18)


def _exact_sum(column: Column) -> Column:
    """The sum of a double column's non-null values, the same whatever the order of the rows; 0.0
    when there are none.

    Spark's `sum` of doubles adds a group's values in the order its rows arrive, which differs from
    run to run, and the last bits depend on it (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1): a re-run on
    unchanged events would write other features, and so another data fingerprint. A decimal sum is
    exact, so any order gives the same total, without sorting each user's values first (which the
    previous version did, in a collect_list per user and feature)."""
    return F.coalesce(F.sum(column.cast(_EXACT_SUM)).cast("double"), F.lit(0.0))


def with_item_attributes(events: DataFrame, items: DataFrame) -> DataFrame:
    """Input: canonical events and items. Output: the events plus the item's `title`, with `category`
    and `brand` taken from the item catalogue wherever the event has none (sources such as a preset's
    `item_source` carry them on the items only). An event's own value wins; the row count is unchanged
    (items are unique by item_id)."""
    catalogue = items.select("item_id", "title", F.col("category").alias("_item_category"),
                             F.col("brand").alias("_item_brand"))
    return (events.join(catalogue, "item_id", "left")
            .withColumn("category", F.coalesce("category", "_item_category"))
            .withColumn("brand", F.coalesce("brand", "_item_brand"))
            .drop("_item_category", "_item_brand"))


def _titled(events: DataFrame, items: DataFrame | None) -> DataFrame:
    """The events with their item attributes: joined here, or already (`items=None`)."""
    return events if items is None else with_item_attributes(events, items)


def user_numeric_features(events: DataFrame, *, as_of: AsOf) -> DataFrame:
    """Per user, behaviour counts, spend, recency and rhythm from events before `as_of`.

    Input: canonical events. Output: user_id + NUMERIC_FEATURES (doubles, no nulls) + last_event_ts
    (the newest event used, kept so that the fuse stage can prove no feature saw the future).
    """
    cutoff = _ts_literal(as_of)
    history = events_before(events, as_of=as_of)
    is_purchase = F.col("event_type") == "purchase"
    # A basket is a purchase session (an invoice, an order); sources without sessions use the day.
    basket = F.when(is_purchase, F.coalesce(F.col("session_id"), F.col("dt").cast("string")))
    amount = F.when(is_purchase, F.coalesce(F.col("price"), F.lit(0.0)) * F.coalesce(F.col("quantity"), F.lit(1.0)))
    days_before = F.datediff(cutoff, F.col("ts"))
    counts = [
        F.count(F.when(F.col("event_type") == kind, 1)).alias(f"n_{kind}")
        for kind in ("view", "search", "cart", "remove_cart", "fav", "purchase", "return")
    ]
    per_user = history.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n_events"),
        *counts,
        _count_distinct(basket).alias("n_baskets"),
        _count_distinct(F.when(days_before < 90, basket)).alias("n_baskets_90d"),
        _count_distinct(F.when(days_before < 365, basket)).alias("n_baskets_365d"),
        _count_distinct(F.col("dt")).alias("n_active_days"),
        _count_distinct(F.col("item_id")).alias("n_distinct_items"),
        _count_distinct(F.col("category")).alias("n_distinct_categories"),
        _exact_sum(amount).alias("spend"),
        _exact_sum(F.when(days_before < 365, amount)).alias("spend_365d"),
        F.max("ts").alias("last_event_ts"),
        (F.unix_timestamp(cutoff) - F.unix_timestamp(F.max("ts"))).alias("_recency_s"),
        (F.unix_timestamp(cutoff) - F.unix_timestamp(F.max(F.when(is_purchase, F.col("ts"))))).alias("_purchase_recency_s"),
        (F.unix_timestamp(cutoff) - F.unix_timestamp(F.min("ts"))).alias("_tenure_s"),
        (F.unix_timestamp(F.max(F.when(is_purchase, F.col("ts")))) - F.unix_timestamp(F.min(F.when(is_purchase, F.col("ts")))))
        .alias("_purchase_span_s"),
    )
    day = 86400.0
    return per_user.select(
        "user_id",
        *[F.col(name).cast("double").alias(name) for name in AGGREGATE_FEATURES],
        (F.col("_recency_s") / day).alias("recency_days"),
        F.coalesce(F.col("_purchase_recency_s") / day, F.lit(NEVER_PURCHASED_DAYS)).alias("purchase_recency_days"),
        (F.col("_tenure_s") / day).alias("tenure_days"),
        # Mean gap between first and last basket; a single basket has no rhythm yet: use the tenure.
        F.when(F.col("n_baskets") > 1, F.col("_purchase_span_s") / day / (F.col("n_baskets") - 1))
        .otherwise(F.col("_tenure_s") / day).alias("mean_basket_gap_days"),
        "last_event_ts",
    ).select("user_id", *NUMERIC_FEATURES, "last_event_ts")


# How each user's behaviour becomes text: `events`, one phrase per event (`event_phrase`); `days`, one
# line per day and event kind with repeated items folded (`day_lines`), several times more history
# in the same token budget.
TEXT_ENCODINGS = ("events", "days")


def _event_item() -> Column:
    """What an event is about, in words: the query, else the item's title, category, brand or id."""
    return F.coalesce(F.col("query"), F.col("title"), F.col("category"), F.col("brand"), F.col("item_id"))


def event_phrase(events_with_items: DataFrame) -> Column:
    """One behaviour event as a short phrase, e.g. `11-30 cart red retrospot cake stand x2 10.95`."""
    what = _event_item()
    quantity = F.when(F.col("quantity").isNotNull() & (F.col("quantity") != 1), F.concat(F.lit("x"), F.col("quantity").cast("long").cast("string")))
    price = F.when(F.col("price").isNotNull(), F.format_number(F.col("price"), 2))
    return F.concat_ws(" ", F.date_format("ts", "MM-dd"), F.col("event_type"), what, quantity, price)


def review_phrase(reviews: DataFrame, *, max_words: int) -> Column:
    """One review as a phrase, e.g. `03-14 review 4 stars fits well but the colour is off`; the
    text is cut to its first `max_words` words so one long review cannot crowd out the behaviour."""
    stars = F.when(F.col("rating").isNotNull(), F.concat(F.col("rating").cast("int").cast("string"), F.lit(" stars")))
    words = F.split(F.trim(F.coalesce(F.col("text"), F.lit(""))), r"\s+")
    cut = F.array_join(F.slice(words, 1, int(max_words)), " ")
    return F.concat_ws(" ", F.date_format("ts", "MM-dd"), F.lit("review"), stars, F.when(cut != "", cut))


def user_event_lists(events: DataFrame, items: DataFrame | None, *, reviews: DataFrame | None = None,
                     review_max_words: int = 40, encoding: str = "events") -> DataFrame:
    """Every event (and review) of each user as one time-ordered list, to cut as of any day.

    Input: canonical events and items (`items=None`: the events already carry the item attributes,
    `with_item_attributes`), and optionally canonical reviews, whose phrases interleave
    with the events by time (a review is an event of the text). Output: user_id, events (an array of
    `ts`, `item_id`, `phrase` structs, sorted; with `encoding="days"` each struct also holds `day`,
    `kind`, `what` and `quantity` for `day_lines`). Built once, it serves the texts of several as-of
    days (`behaviour_text`): one join with the item catalogue and one sort per user instead of one each.
    """
    _check_encoding(encoding)
    titled = _titled(events, items)
    by_day = encoding == "days"

    def entry(item_id: Column, phrase: Column, kind: Column, what: Column, quantity: Column) -> Column:
        fields = [F.col("ts"), item_id.alias("item_id"), phrase.alias("phrase")]
        if by_day:
            fields += [F.to_date("ts").alias("day"), kind.alias("kind"), what.alias("what"), quantity.alias("quantity")]
        return F.struct(*fields).alias("e")

    phrases = titled.select("user_id", entry(F.coalesce(F.col("item_id"), F.lit("")), event_phrase(titled),
                                             F.col("event_type"), _event_item(), F.col("quantity").cast("double")))
    if reviews is not None:
        # In day lines a review is its stars and words (the day and the kind head the line).
        review_words = F.regexp_replace(review_phrase(reviews, max_words=review_max_words), r"^\S+ review ?", "")
        phrases = phrases.unionByName(reviews.select(
            "user_id", entry(F.col("item_id"), review_phrase(reviews, max_words=review_max_words), F.lit("review"),
                             review_words, F.lit(None).cast("double"))))
    return phrases.groupBy("user_id").agg(F.sort_array(F.collect_list("e")).alias("events"))


def _check_encoding(encoding: str) -> None:
    if encoding not in TEXT_ENCODINGS:
        raise ValueError(f"text encoding {encoding!r}: expected one of {', '.join(TEXT_ENCODINGS)}")


def day_lines(events: Column, *, max_lines: int, max_items: int) -> Column:
    """The newest `max_lines` (day, kind) groups of a sorted event array (`user_event_lists` with
    `encoding="days"`) as an array of `line`, `n_events` structs, oldest first. A line reads
    `09-10 purchase: white hanging heart x6, regency cakestand (+8 more)`: the day and kind once, the
    distinct items in order of first appearance with their summed quantity (a missing one counts 1),
    at most `max_items` of them named."""
    keys = F.array_distinct(F.transform(events, lambda e: F.struct(e["day"].alias("day"), e["kind"].alias("kind"))))
    newest = F.slice(keys, F.greatest(F.size(keys) - max_lines + 1, F.lit(1)), F.lit(max_lines))

    def line(key: Column) -> Column:
        members = F.filter(events, lambda e: (e["day"] == key["day"]) & (e["kind"] == key["kind"]))
        names = F.array_distinct(F.transform(members, lambda e: e["what"]))

        def folded(name: Column) -> Column:
            total = F.aggregate(F.filter(members, lambda e: e["what"] == name), F.lit(0.0),
                                lambda acc, e: acc + F.coalesce(e["quantity"], F.lit(1.0)))
            return F.concat_ws(" ", name, F.when(total != 1, F.concat(F.lit("x"), total.cast("long").cast("string"))))

        named = F.array_join(F.transform(F.slice(names, 1, max_items), folded), ", ")
        more = F.when(F.size(names) > max_items, F.format_string("(+%d more)", F.size(names) - max_items))
        head = F.concat(F.date_format(key["day"], "MM-dd"), F.lit(" "), key["kind"], F.lit(":"))
        return F.struct(F.concat_ws(" ", head, named, more).alias("line"), F.size(members).alias("n_events"))

    return F.transform(newest, line)


def behaviour_text(event_lists: DataFrame, *, as_of: AsOf | None, max_events: int, encoding: str = "events",
                   day_max_items: int = 5) -> DataFrame:
    """The behaviour text as of a day or instant from `user_event_lists` (built with the same
    `encoding`), from the events strictly before `as_of` (all with `as_of=None`), in time order:
    `events`, the most recent `max_events` phrases; `days`, the most recent `max_events` day lines
    (`day_lines`, `day_max_items` items named per line).

    Output: user_id, behaviour (string), n_events_in_text; users without such an event have no row.
    """
    _check_encoding(encoding)
    events = F.col("events")
    if as_of is not None:
        cutoff = _ts_literal(as_of)
        # The list is sorted by time: the events before the cutoff are a prefix of it.
        events = F.filter(events, lambda e: e["ts"] < cutoff)
    history = event_lists.select("user_id", events.alias("events")).filter(F.size("events") > 0)
    if encoding == "days":
        lines = day_lines(F.col("events"), max_lines=int(max_events), max_items=int(day_max_items))
        return history.select(
            "user_id",
            F.array_join(F.transform(lines, lambda line: line["line"]), SEQUENCE_SEPARATOR).alias("behaviour"),
            F.aggregate(lines, F.lit(0), lambda total, line: total + line["n_events"]).alias("n_events_in_text"),
        )
    recent = F.expr(f"slice(events, greatest(size(events) - {int(max_events)} + 1, 1), {int(max_events)})")
    return history.select(
        "user_id",
        F.array_join(F.transform(recent, lambda e: e["phrase"]), SEQUENCE_SEPARATOR).alias("behaviour"),
        F.size(recent).alias("n_events_in_text"),
    )


def user_behaviour_text(events: DataFrame, items: DataFrame, *, as_of: AsOf | None, max_events: int,
                        reviews: DataFrame | None = None, review_max_words: int = 40, encoding: str = "events",
                        day_max_items: int = 5) -> DataFrame:
    """The time-ordered behaviour text per user (`behaviour_text` of `user_event_lists`).

    Input: canonical events and items, and optionally canonical reviews, whose phrases interleave
    with the events by time (a review is an event of the text). Output: user_id, behaviour (string),
    n_events_in_text.
    """
    lists = user_event_lists(events, items, reviews=reviews, review_max_words=review_max_words, encoding=encoding)
    return behaviour_text(lists, as_of=as_of, max_events=max_events, encoding=encoding, day_max_items=day_max_items)


def extra_attributes(users: DataFrame) -> Column:
    """The users' extra `attributes` map (an empty one where null, and for a users table written
    before it existed)."""
    if "attributes" in users.columns:
        return F.coalesce(F.col("attributes"), F.create_map().cast("map<string,string>"))
    return F.create_map().cast("map<string,string>")


def attribute_text(users: DataFrame) -> DataFrame:
    """`age 25 | gender F | region Beijing | level 3 | tenure_band long` per user: the canonical
    attributes, then the extra ones (`attributes`) sorted by name; missing attributes left out.
    Output: user_id, attribute_text."""
    known_gender = F.col("gender").isNotNull() & (F.col("gender") != "U")
    parts = [
        F.when(F.col("age").isNotNull(), F.concat(F.lit("age "), F.col("age").cast("string"))),
        F.when(known_gender, F.concat(F.lit("gender "), F.col("gender"))),
        F.when(F.col("region").isNotNull(), F.concat(F.lit("region "), F.col("region"))),
        # map_entries sorted: by name (names are unique), so the order is the same for every user.
        F.transform(F.array_sort(F.map_entries(extra_attributes(users))),
                    lambda e: F.concat(e["key"], F.lit(" "), e["value"])),
    ]
    return users.select("user_id", F.concat_ws(" | ", *parts).alias("attribute_text"))


def attribute_features(users: DataFrame, *, kinds: Mapping[str, str]) -> DataFrame:
    """The users' static attributes for the baselines, split by kind so that each keeps its type.

    Input: canonical users; `kinds`: extra attribute name -> `numeric`|`categorical` (a preset's
    `attribute_kinds()`; a name it does not list counts as categorical). Output: user_id,
    `numeric_attributes` (map<string,double>: age and the numeric extras) and `categorical_attributes`
    (map<string,string>: gender unless U, region and the categorical extras); unknown values are absent."""
    extras = extra_attributes(users)
    numeric_kind = {**kinds, **CANONICAL_ATTRIBUTE_KINDS}
    numeric_names = F.array(*[F.lit(name) for name, kind in sorted(numeric_kind.items()) if kind == NUMERIC])
    canonical = F.map_from_entries(F.filter(F.array(
        F.struct(F.lit("gender").alias("key"), F.when(F.col("gender") != "U", F.col("gender")).alias("value")),
        F.struct(F.lit("region").alias("key"), F.col("region").alias("value")),
    ), lambda e: e["value"].isNotNull()))
    age = F.map_from_entries(F.filter(F.array(F.struct(F.lit("age").alias("key"), F.col("age").cast("double").alias("value"))),
                                      lambda e: e["value"].isNotNull()))
    numeric_extras = F.transform_values(F.map_filter(extras, lambda name, _: F.array_contains(numeric_names, name)),
                                        lambda _, value: value.try_cast("double"))
    categorical_extras = F.map_filter(extras, lambda name, _: ~F.array_contains(numeric_names, name))
    return users.select(
        "user_id",
        F.map_filter(F.map_concat(age, numeric_extras), lambda _, v: v.isNotNull())
        .cast("map<string,double>").alias(NUMERIC_ATTRIBUTES),
        F.map_concat(canonical, categorical_extras).cast("map<string,string>").alias(CATEGORICAL_ATTRIBUTES),
    )


def point_in_time_labels(events: DataFrame, *, cutoff: AsOf, horizon: dt.timedelta) -> DataFrame:
    """Users who purchase in [cutoff, cutoff + horizon): user_id, label = 1.

    Input: canonical events; `cutoff` is a day or an instant, `horizon` a positive timedelta.
    """
    if horizon <= dt.timedelta(0):
        raise ValueError(f"point_in_time_labels: horizon must be positive, got {horizon}")
    start, end = _ts_literal(cutoff), _ts_literal(as_of_instant(cutoff) + horizon)
    buyers = events.filter((F.col("event_type") == "purchase") & (F.col("ts") >= start) & (F.col("ts") < end))
    return buyers.select("user_id").distinct().withColumn("label", F.lit(1))


def assign_split(users: DataFrame, *, seed: int, valid_fraction: float, test_fraction: float) -> DataFrame:
    """Add a stable user-level `split` (train/valid/test) from a seeded hash of user_id."""
    bucket = F.pmod(F.xxhash64(F.col("user_id"), F.lit(seed)), F.lit(10_000)) / 10_000.0
    split = (
        F.when(bucket < test_fraction, F.lit("test"))
        .when(bucket < test_fraction + valid_fraction, F.lit("valid"))
        .otherwise(F.lit("train"))
    )
    return users.withColumn("split", split)


def fuse_user_sequences(
    events: DataFrame,
    users: DataFrame,
    items: DataFrame | None,
    *,
    as_of: AsOf,
    max_events: int,
    population: str = "any_event",
    labels: DataFrame | None = None,
    reviews: DataFrame | None = None,
    review_max_words: int = 40,
    event_lists: DataFrame | None = None,
    attribute_kinds: Mapping[str, str] | None = None,
    text_encoding: str = "events",
    day_max_items: int = 5,
) -> DataFrame:
    """One row per user: `text` (attributes [SEP] behaviour), numeric features, the user's static
    attributes (`numeric_attributes`, `categorical_attributes`: `attribute_features` with
    `attribute_kinds`), `label`, `as_of` (the day, a date) and `as_of_ts` (the exact instant, a
    timestamp: midnight UTC of the day unless `as_of` is a datetime). `items=None`: the events
    already carry the item attributes (`with_item_attributes`, joined once for several calls).

    Features use events strictly before `as_of`. `population`: `any_event` keeps every user with
    an event before `as_of` (plus users known only from the users table); `active` keeps only the
    users with an event before `as_of` (where the users table is derived from all events, it also
    lists users first seen after `as_of`); `purchasers` keeps those with a purchase before it.
    `labels` (user_id, label) joins as given; users without one get 0. `text_encoding` and
    `day_max_items`: how the behaviour becomes text (`behaviour_text`).
    With `labels=None` the label column is null (a scoring table). `reviews` (canonical, optional)
    written before `as_of` join the text beside the events. `event_lists` (`user_event_lists` of
    the same events, items and reviews) spares the join and sort when several as-of days are fused.
    The attributes are static properties of the user, without a time: they come from the users table
    as it is, whatever `as_of` (only the events are cut at it).
    """
    # Category counts see the catalogue's categories too (with_item_attributes).
    features = user_numeric_features(_titled(events, items), as_of=as_of)
    if population == "purchasers":
        base = features.filter(F.col("n_purchase") > 0).select("user_id")
    elif population == "active":
        base = features.select("user_id")
    else:
        base = features.select("user_id").unionByName(users.select("user_id")).distinct()
    if event_lists is None:
        event_lists = user_event_lists(events, items, reviews=reviews, review_max_words=review_max_words,
                                       encoding=text_encoding)
    text = behaviour_text(event_lists, as_of=as_of, max_events=max_events, encoding=text_encoding,
                          day_max_items=day_max_items)
    fused = (
        base.join(features, "user_id", "left")
        .join(text, "user_id", "left")
        .join(attribute_text(users), "user_id", "left")
        .join(attribute_features(users, kinds=attribute_kinds or {}), "user_id", "left")
        .fillna(0.0, subset=list(NUMERIC_FEATURES))
        .fillna(0, subset=["n_events_in_text"])
        # A user known only from events, not from the users table, has no attributes: empty maps.
        .withColumn(NUMERIC_ATTRIBUTES, F.coalesce(NUMERIC_ATTRIBUTES, F.create_map().cast("map<string,double>")))
        .withColumn(CATEGORICAL_ATTRIBUTES, F.coalesce(CATEGORICAL_ATTRIBUTES, F.create_map().cast("map<string,string>")))
    )
    sequence = F.concat_ws(ATTRIBUTE_SEPARATOR, F.when(F.col("attribute_text") != "", F.col("attribute_text")),
                           F.col("behaviour"))
    fused = fused.withColumn("text", F.coalesce(F.when(sequence != "", sequence), F.lit(NO_HISTORY)))
    if labels is None:
        fused = fused.withColumn("label", F.lit(None).cast("int"))
    else:
        fused = fused.join(labels.select("user_id", F.col("label").cast("int")), "user_id", "left").fillna(0, subset=["label"])
    instant = as_of_instant(as_of)
    return fused.withColumn("as_of", F.lit(instant.date()).cast("date")).withColumn("as_of_ts", _ts_literal(instant)).select(
        "user_id", "text", *NUMERIC_FEATURES, NUMERIC_ATTRIBUTES, CATEGORICAL_ATTRIBUTES, "n_events_in_text",
        "last_event_ts", "label", "as_of", "as_of_ts"
    )


def leaked_rows(fused: DataFrame) -> DataFrame:
    """Rows whose features used an event at or after their exact as-of instant (`as_of_ts`, not
    just its day): must always be empty. Input: a `fuse_user_sequences` table."""
    return fused.filter(F.col("last_event_ts") >= F.col("as_of_ts"))
