"""Insights: scored users -> profiles, segments, marketing actions and item recommendations.

Pure DataFrame -> DataFrame transforms with keyword parameters: no I/O, no actions.

Quantile scores (RFM quintiles, price terciles) are cut at `percentile_approx`
boundaries rather than with a global `ntile` window: a window without a partition moves every user
onto one task, and `ntile` gives equal values different scores. With boundaries, equal values share
a score, so a score can be skipped when many users tie (for example everyone with one basket).
"""

from __future__ import annotations

import functools
import operator
from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ecominsight.config import ActionRule, PropensityBand, RFMClassRule
from ecominsight.schema import EVENT_TYPES
from ecominsight.transforms.fuse import extra_attributes

# percentile_approx's default: exact on small tables, else each boundary within 1/10,000 of its rank.
QUANTILE_ACCURACY = 10_000
PRICE_BANDS = ("low", "mid", "high")
INTEREST_TYPE = "array<struct<name:string,kind:string,affinity:double>>"
ACTIVITY_COLUMNS = ("n_events", *(f"n_{kind}" for kind in EVENT_TYPES))
RFM_SCORES = ("recency_score", "frequency_score", "monetary_score")
PROFILE_COLUMNS = (
    "user_id", "age", "gender", "region", "attributes", "as_of",
    "recency_days", "frequency", "monetary", *RFM_SCORES, "rfm_class",
    *ACTIVITY_COLUMNS, "cart_abandoned", "top_categories", "top_brands",
    "median_purchase_price", "price_band",
    "propensity", "propensity_decile", "propensity_band", "segment", "model_name", "model_version",
    "score_date",
)


def _boundaries(values: Column, buckets: int) -> Column:
    """The `buckets - 1` inner quantile boundaries of `values` (nulls ignored)."""
    return F.percentile_approx(values, [i / buckets for i in range(1, buckets)], QUANTILE_ACCURACY)


def _count_below(value: Column, boundaries: Column) -> Column:
    """How many boundaries lie strictly below `value`; null when either is null."""
    return F.when(value.isNotNull() & boundaries.isNotNull(), F.size(F.filter(boundaries, lambda b: b < value)))


def _all(conditions: list[Column]) -> Column:
    return functools.reduce(operator.and_, conditions, F.lit(True))


def _top_interests(touched: DataFrame, *, name: Column, kind: Column, top_k: int, alias: str) -> DataFrame:
    """The `top_k` names a user's events touch most, each with its share of all the user's events.

    Input: events with user_id. Output: user_id, `alias` (array of name, kind, affinity; most
    touched first, ties by name)."""
    totals = touched.groupBy("user_id").agg(F.count(F.lit(1)).alias("_events"))
    counts = touched.where(name.isNotNull()).groupBy("user_id", name.alias("name"), kind.alias("kind")) \
        .agg(F.count(F.lit(1)).alias("_n"))
    order = Window.partitionBy("user_id").orderBy(F.desc("_n"), "name", "kind")
    ranked = counts.join(totals, "user_id").withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= top_k)
    entry = F.struct("_rank", "name", "kind", (F.col("_n") / F.col("_events")).alias("affinity"))
    return ranked.groupBy("user_id").agg(F.sort_array(F.collect_list(entry)).alias("_ranked")).select(
        "user_id",
        F.transform("_ranked", lambda e: F.struct(e["name"].alias("name"), e["kind"].alias("kind"),
                                                  e["affinity"].alias("affinity"))).alias(alias),
    )


def _price_band(boundaries_below: Column) -> Column:
    # A CASE rather than element_at(array(...), i): Spark 4.3 returns the array's last element, not
    # null, for a null index (and the SQL form fails with an internal NullPointerException).
    return _first_match([(boundaries_below == i, F.lit(band)) for i, band in enumerate(PRICE_BANDS)],
                        F.lit(None).cast("string"))


def _rfm_class_condition(rule: RFMClassRule) -> Column:
    conditions = []
    if rule.has_purchased is not None:
        conditions.append(F.col("frequency") > 0 if rule.has_purchased else F.coalesce(F.col("frequency"), F.lit(0)) == 0)
    for score in RFM_SCORES:
        low, high = getattr(rule, f"min_{score}"), getattr(rule, f"max_{score}")
        if low is not None:
            conditions.append(F.col(score) >= low)
        if high is not None:
            conditions.append(F.col(score) <= high)
    return _all(conditions)


def rfm_class_definition(rule: RFMClassRule) -> str:
    """A rule as text, e.g. `recency_score >= 4, frequency_score <= 1`."""
    parts = [] if rule.has_purchased is None else [f"has_purchased = {str(rule.has_purchased).lower()}"]
    for score in RFM_SCORES:
        low, high = getattr(rule, f"min_{score}"), getattr(rule, f"max_{score}")
        parts += [f"{score} >= {low}"] * (low is not None) + [f"{score} <= {high}"] * (high is not None)
    return ", ".join(parts) or "everyone"


def _first_match(choices: Sequence[tuple[Column, Column]], default: Column) -> Column:
    """The value of the first (condition, value) whose condition holds; `default` if none does."""
    if not choices:
        return default
    (condition, value), *rest = choices
    chain = F.when(condition, value)
    for condition, value in rest:
        chain = chain.when(condition, value)
    return chain.otherwise(default)


def user_profiles(
    events: DataFrame,
    users: DataFrame,
    items: DataFrame,
    current: DataFrame,
    scores: DataFrame,
    *,
    top_k: int,
    price_bands: Sequence[float] | None,
    propensity_bands: Sequence[PropensityBand],
    rfm_classes: Sequence[RFMClassRule],
    default_rfm_class: str,
) -> DataFrame:
    """One row per scored user: attributes, RFM with quintile scores and class, activity counts,
    cart abandonment, top categories and brands, price band, propensity decile, band and segment.

    Input: canonical events, users and items; `current` = features/current_sequences (RFM and
    counts as of its `as_of`); `scores` = one score_date of scores/user_scores (its `score_decile`
    becomes `propensity_decile`). Output: PROFILE_COLUMNS.
    Categories: the event's or else the item's category; an event of an item without one counts
    its title instead (kind `title`), so title-only sources such as Online Retail still get interests.
    Quintiles are over the users who bought; those who never did have no RFM scores. Deciles are the
    score stage's, over all users scored that day, 1 = highest propensity. Price bands: `price_bands` = [low_max, mid_max], or
    None for the terciles of the users' median purchase prices.
    """
    # One notion of decile: the score table's day-wide `score_decile`, not a second cut here.
    scored = scores.select("user_id", F.col("probability").alias("propensity"),
                           F.col("score_decile").cast("int").alias("propensity_decile"), "model_name", "model_version",
                           "score_date")
    has_purchased = F.coalesce(F.col("n_purchase"), F.lit(0.0)) > 0
    features = current.select(
        "user_id", "as_of",
        *[F.col(name).cast("long").alias(name) for name in ACTIVITY_COLUMNS],
        F.when(has_purchased, F.col("purchase_recency_days")).alias("recency_days"),
        F.col("n_baskets").cast("long").alias("frequency"),
        F.col("spend").alias("monetary"),
    )
    is_purchase = F.col("event_type") == "purchase"
    behaviour = events.groupBy("user_id").agg(
        F.max(F.when(F.col("event_type") == "cart", F.col("ts"))).alias("_last_cart"),
        F.max(F.when(is_purchase, F.col("ts"))).alias("_last_purchase"),
        F.percentile_approx(F.when(is_purchase, F.col("price")), 0.5, QUANTILE_ACCURACY).alias("median_purchase_price"),
    ).select(
        "user_id", "median_purchase_price",
        # A cart with no purchase after it: the newest cart event is newer than the newest purchase.
        (F.col("_last_cart").isNotNull()
         & (F.col("_last_purchase").isNull() | (F.col("_last_cart") > F.col("_last_purchase")))).alias("cart_abandoned"),
    )
    touched = events.join(
        items.select("item_id", "title", F.col("category").alias("_item_category"), F.col("brand").alias("_item_brand")),
        "item_id", "left",
    )
    category = F.coalesce(F.col("category"), F.col("_item_category"))
    categories = _top_interests(
        touched, name=F.coalesce(category, F.col("title")),
        kind=F.when(category.isNotNull(), F.lit("category")).otherwise(F.lit("title")), top_k=top_k, alias="top_categories",
    )
    brands = _top_interests(touched, name=F.coalesce(F.col("brand"), F.col("_item_brand")), kind=F.lit("brand"),
                            top_k=top_k, alias="top_brands")
    profiles = (
        scored.join(users.select("user_id", "age", "gender", "region", extra_attributes(users).alias("attributes")), "user_id", "left")
        .join(features, "user_id", "left")
        .join(behaviour, "user_id", "left")
        .join(categories, "user_id", "left")
        .join(brands, "user_id", "left")
        .fillna(False, subset=["cart_abandoned"])
        .withColumn("top_categories", F.coalesce("top_categories", F.array().cast(INTEREST_TYPE)))
        .withColumn("top_brands", F.coalesce("top_brands", F.array().cast(INTEREST_TYPE)))
    )

    bought = F.col("frequency") > 0
    bounds = profiles.agg(
        # Recency is negated so that, as for the others, a higher value earns a higher score.
        _boundaries(F.when(bought, -F.col("recency_days")), 5).alias("_recency_bounds"),
        _boundaries(F.when(bought, F.col("frequency")), 5).alias("_frequency_bounds"),
        _boundaries(F.when(bought, F.col("monetary")), 5).alias("_monetary_bounds"),
        _boundaries(F.col("median_purchase_price"), 3).alias("_price_bounds"),
    )
    price_bounds = F.col("_price_bounds") if price_bands is None else F.array(*[F.lit(float(b)) for b in price_bands])
    scored_profiles = profiles.crossJoin(F.broadcast(bounds)).select(
        "*",
        (1 + _count_below(F.when(bought, -F.col("recency_days")), F.col("_recency_bounds"))).alias("recency_score"),
        (1 + _count_below(F.when(bought, F.col("frequency")), F.col("_frequency_bounds"))).alias("frequency_score"),
        (1 + _count_below(F.when(bought, F.col("monetary")), F.col("_monetary_bounds"))).alias("monetary_score"),
        _price_band(_count_below(F.col("median_purchase_price"), price_bounds)).alias("price_band"),
    )
    rfm_class = _first_match([(_rfm_class_condition(rule), F.lit(rule.name)) for rule in rfm_classes],
                             F.lit(default_rfm_class))
    band = _first_match([(F.col("propensity_decile").between(b.min_decile, b.max_decile), F.lit(b.name))
                         for b in propensity_bands], F.lit(None).cast("string"))
    return (
        scored_profiles.withColumn("rfm_class", rfm_class)
        .withColumn("propensity_band", band)
        .withColumn("segment", F.concat_ws("_", "propensity_band", "rfm_class"))
        .select(*PROFILE_COLUMNS)
    )


SEGMENT_DEFINITION_COLUMNS = "segment string, propensity_band string, min_decile int, max_decile int, " \
                             "rfm_class string, rfm_definition string"


def segments(
    profiles: DataFrame,
    *,
    propensity_bands: Sequence[PropensityBand],
    rfm_classes: Sequence[RFMClassRule],
    default_rfm_class: str,
) -> DataFrame:
    """Every segment (propensity band x RFM class) with its definition and size, empty ones too.

    Input: user_profiles' output. Output: segment, propensity_band, min_decile, max_decile,
    rfm_class, rfm_definition, users, share_of_users, avg_propensity, avg_monetary."""
    classes = [(rule.name, rfm_class_definition(rule)) for rule in rfm_classes]
    classes.append((default_rfm_class, "no class above matched"))
    catalog = profiles.sparkSession.createDataFrame(
        [(f"{band.name}_{name}", band.name, band.min_decile, band.max_decile, name, definition)
         for band in propensity_bands for name, definition in classes],
        SEGMENT_DEFINITION_COLUMNS,
    )
    sizes = profiles.groupBy("segment").agg(
        F.count(F.lit(1)).alias("users"), F.avg("propensity").alias("avg_propensity"), F.avg("monetary").alias("avg_monetary"),
    )
    total = profiles.agg(F.count(F.lit(1)).alias("_total"))
    return (
        catalog.join(sizes, "segment", "left")
        .fillna(0, subset=["users"])
        .crossJoin(F.broadcast(total))
        .withColumn("share_of_users", F.when(F.col("_total") > 0, F.col("users") / F.col("_total")).otherwise(F.lit(0.0)))
        .select(*catalog.columns, "users", "share_of_users", "avg_propensity", "avg_monetary")
    )


def _text(value: Column) -> Column:
    return F.coalesce(value.cast("string"), F.lit("null"))


def _action_checks(rule: ActionRule) -> list[tuple[Column, Column]]:
    """(condition, text naming the value that met it) for every condition the rule gives."""
    checks: list[tuple[Column, Column]] = []

    def bound(column: str, low: float | None, high: float | None, shown: Column) -> None:
        if low is not None:
            checks.append((F.col(column) >= low, F.concat(F.lit(f"{column} "), _text(shown), F.lit(f" >= {low:g}"))))
        if high is not None:
            checks.append((F.col(column) <= high, F.concat(F.lit(f"{column} "), _text(shown), F.lit(f" <= {high:g}"))))

    bound("propensity_decile", rule.min_decile, rule.max_decile, F.col("propensity_decile"))
    if rule.cart_abandoned is not None:
        checks.append((F.col("cart_abandoned") == rule.cart_abandoned,
                       F.concat(F.lit("cart_abandoned "), F.lower(_text(F.col("cart_abandoned"))))))
    bound("recency_days", rule.min_recency_days, rule.max_recency_days, F.round("recency_days", 1))
    bound("frequency_score", rule.min_frequency_score, rule.max_frequency_score, F.col("frequency_score"))
    bound("monetary_score", rule.min_monetary_score, rule.max_monetary_score, F.col("monetary_score"))
    if rule.rfm_classes is not None:
        checks.append((F.col("rfm_class").isin(*rule.rfm_classes),
                       F.concat(F.lit("rfm_class "), F.col("rfm_class"), F.lit(f" in [{', '.join(rule.rfm_classes)}]"))))
    return checks


def marketing_actions(profiles: DataFrame, *, rules: Sequence[ActionRule], default_action: str) -> DataFrame:
    """One row per user: the action of the first rule whose every condition holds, else `default_action`.

    Input: user_profiles' output. Output: user_id, action, rule (null when none matched), reason
    (`<rule>: <condition with the user's value>, ...`), propensity, propensity_decile, segment, score_date.
    A condition on a missing value (recency of a user who never bought) does not hold."""
    matches = []
    for rule in rules:
        checks = _action_checks(rule)
        condition = _all([condition for condition, _ in checks])
        reason = F.concat(F.lit(f"{rule.name}: "), F.concat_ws(", ", *[text for _, text in checks]))
        matches.append((condition, F.struct(F.lit(rule.action).alias("action"), F.lit(rule.name).alias("rule"),
                                            reason.alias("reason"))))
    default = F.struct(F.lit(default_action).alias("action"), F.lit(None).cast("string").alias("rule"),
                       F.lit("no rule matched").alias("reason"))
    return profiles.withColumn("_chosen", _first_match(matches, default)).select(
        "user_id", "_chosen.action", "_chosen.rule", "_chosen.reason",
        "propensity", "propensity_decile", "segment", "score_date",
    )


def daily_purchases(events: DataFrame) -> DataFrame:
    """Purchase events -> one row per (user, day): `user_id`, `dt`, `orders` (distinct baskets; the
    day where a source has no sessions), `units`, `spend`. The outcome fact that a warehouse joins
    to past scores (conversion by decile) without reading the raw events."""
    purchases = events.filter(F.col("event_type") == "purchase")
    quantity = F.coalesce(F.col("quantity"), F.lit(1.0))
    return purchases.groupBy("user_id", "dt").agg(
        F.countDistinct(F.coalesce(F.col("session_id"), F.col("dt").cast("string"))).alias("orders"),
        F.sum(quantity).alias("units"),
        F.sum(F.coalesce(F.col("price"), F.lit(0.0)) * quantity).alias("spend"),
    )


def _most_recent_items(purchases: DataFrame, *, group: list[str], limit: int) -> DataFrame:
    """The `limit` most recently bought distinct items per group: group columns + item_id."""
    latest = purchases.groupBy(*group, "item_id").agg(F.max("ts").alias("_last"))
    order = Window.partitionBy(*group).orderBy(F.desc("_last"), "item_id")
    return latest.withColumn("_n", F.row_number().over(order)).where(F.col("_n") <= limit).select(*group, "item_id")


def recommendations(
    events: DataFrame,
    items: DataFrame,
    scored_users: DataFrame,
    *,
    top_k: int,
    co_occurrence_within: str,
    min_co_occurrence: int,
    max_items_per_group: int,
    neighbours_per_item: int,
) -> DataFrame:
    """Top-k items per scored user from item co-occurrence in purchases, excluding what they bought.

    Two items co-occur once per user (`co_occurrence_within="user"`) or basket (`"basket"`: the
    session, else the day) that bought both. Pairs seen fewer than `min_co_occurrence` times are
    dropped; only each item's `neighbours_per_item` strongest partners and each group's
    `max_items_per_group` most recent items enter, which bounds the pairs a heavy buyer creates.
    A candidate's score is the sum of its co-occurrence counts with the user's most recent
    `max_items_per_group` purchases. Users who bought nothing get no rows.

    Input: canonical events and items; scored_users with user_id. Output: user_id, rank (1 = best),
    item_id, title, score (ties by item_id)."""
    purchases = events.where((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
    if co_occurrence_within == "basket":
        purchases = purchases.withColumn("_group", F.concat_ws("|", "user_id", F.coalesce("session_id", F.col("dt").cast("string"))))
    else:
        purchases = purchases.withColumn("_group", F.col("user_id"))
    in_groups = _most_recent_items(purchases, group=["_group"], limit=max_items_per_group)
    pairs = (
        in_groups.alias("a").join(in_groups.alias("b"), "_group")
        .where(F.col("a.item_id") != F.col("b.item_id"))
        .groupBy(F.col("a.item_id").alias("item_id"), F.col("b.item_id").alias("candidate"))
        .agg(F.count(F.lit(1)).alias("co_occurrence"))
        .where(F.col("co_occurrence") >= min_co_occurrence)
    )
    strongest = Window.partitionBy("item_id").orderBy(F.desc("co_occurrence"), "candidate")
    neighbours = pairs.withColumn("_n", F.row_number().over(strongest)).where(F.col("_n") <= neighbours_per_item)
    users = scored_users.select("user_id")
    anchors = _most_recent_items(purchases.join(users, "user_id", "left_semi"), group=["user_id"], limit=max_items_per_group)
    already_bought = purchases.select("user_id", F.col("item_id").alias("candidate")).distinct()
    candidates = (
        anchors.join(neighbours, "item_id")
        .groupBy("user_id", "candidate").agg(F.sum("co_occurrence").cast("long").alias("score"))
        .join(already_bought, ["user_id", "candidate"], "left_anti")
    )
    best = Window.partitionBy("user_id").orderBy(F.desc("score"), "candidate")
    return (
        candidates.withColumn("rank", F.row_number().over(best)).where(F.col("rank") <= top_k)
        .join(items.select(F.col("item_id").alias("candidate"), "title"), "candidate", "left")
        .select("user_id", F.col("rank").cast("int").alias("rank"), F.col("candidate").alias("item_id"), "title", "score")
    )


ALL_SEGMENTS = "all"
SEARCH_COLUMNS = (
    "segment", "query", "searches", "users", "searches_with_view", "searches_with_purchase", "conversion_rate",
    "outcome", "zero_conversion", "rank", "zero_conversion_rank",
)


def search_insights(events: DataFrame, profiles: DataFrame, *, top_queries: int, conversion_window_days: float) -> DataFrame:
    """The most searched queries and the zero-conversion ones, per segment and over everyone.

    A search is *followed by* a view (a purchase) when the same user views (buys) at or after the
    search's time: in the same session when the search has a `session_id`, else within
    `conversion_window_days`. Per query: `outcome` = `converted` (some search was followed by a
    purchase), `viewed_no_purchase` (followed by views, never by a purchase: the zero-conversion
    queries) or `no_follow_up` (neither). Queries are compared lower-cased and trimmed.

    Input: canonical events; user_profiles' output (user_id, segment). Output: SEARCH_COLUMNS, one row
    per (segment, query) among the segment's `top_queries` most searched queries or its
    `top_queries` most searched zero-conversion ones; segment `all` covers every profiled user.
    Searches of users without a profile are left out."""
    query = F.lower(F.trim(F.col("query")))
    searches = events.where((F.col("event_type") == "search") & query.isNotNull() & (query != "")) \
        .select("user_id", "ts", "session_id", query.alias("query"))
    follow_ups = events.where(F.col("event_type").isin("view", "purchase")).select(
        F.col("user_id").alias("_f_user"), F.col("ts").alias("_f_ts"), F.col("session_id").alias("_f_session"),
        F.col("event_type").alias("_f_type"),
    )
    window_end = F.col("ts") + F.make_dt_interval(secs=F.lit(float(conversion_window_days) * 86_400.0))
    follows = (
        (F.col("_f_user") == F.col("user_id")) & (F.col("_f_ts") >= F.col("ts"))
        & F.when(F.col("session_id").isNotNull(), F.col("_f_session") == F.col("session_id"))
        .otherwise(F.col("_f_ts") < window_end)
    )
    # Clean removed duplicate events, so (user, time, session, query) names one search.
    per_search = searches.join(follow_ups, follows, "left").groupBy("user_id", "ts", "session_id", "query").agg(
        F.max((F.col("_f_type") == "view").cast("int")).alias("_viewed"),
        F.max((F.col("_f_type") == "purchase").cast("int")).alias("_bought"),
    ).join(profiles.select("user_id", "segment"), "user_id")
    everyone = per_search.withColumn("segment", F.lit(ALL_SEGMENTS))
    counts = per_search.unionByName(everyone).groupBy("segment", "query").agg(
        F.count(F.lit(1)).alias("searches"),
        F.countDistinct("user_id").alias("users"),
        F.sum(F.coalesce("_viewed", F.lit(0))).cast("long").alias("searches_with_view"),
        F.sum(F.coalesce("_bought", F.lit(0))).cast("long").alias("searches_with_purchase"),
    )
    outcome = (F.when(F.col("searches_with_purchase") > 0, F.lit("converted"))
               .when(F.col("searches_with_view") > 0, F.lit("viewed_no_purchase")).otherwise(F.lit("no_follow_up")))
    counts = counts.withColumn("conversion_rate", F.col("searches_with_purchase") / F.col("searches")) \
        .withColumn("outcome", outcome).withColumn("zero_conversion", F.col("outcome") == "viewed_no_purchase")
    by_searches = Window.partitionBy("segment").orderBy(F.desc("searches"), "query")
    zero_first = Window.partitionBy("segment", "zero_conversion").orderBy(F.desc("searches"), "query")
    ranked = counts.withColumn("rank", F.row_number().over(by_searches)).withColumn(
        "zero_conversion_rank", F.when(F.col("zero_conversion"), F.row_number().over(zero_first)))
    return ranked.where((F.col("rank") <= top_queries) | (F.col("zero_conversion_rank") <= top_queries)) \
        .select(*SEARCH_COLUMNS)
