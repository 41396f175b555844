"""Insights: RFM quintiles, deciles, segments, first-match marketing actions and co-occurrence recommendations."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from ecominsight import schema
from ecominsight.config import ActionRule, ConfigError, InsightsConfig, RFMClassRule, load_config
from ecominsight.models.scoring import with_score_decile
from ecominsight.transforms import fuse, insights

AS_OF = dt.date(2020, 3, 1)
SCORE_DATE = dt.date(2020, 3, 1)
RULES = InsightsConfig()  # the defaults, which conf/base.yaml repeats (checked below)


def events_frame(spark, rows):
    """rows: (user_id, ts, event_type, item_id, price, session_id); quantity 1, no category/brand on the event."""
    full = [(user, ts, kind, item, price, None if price is None else 1.0, session, "unit", ts.date())
            for user, ts, kind, item, price, session in rows]
    return spark.createDataFrame(full, "user_id string, ts timestamp, event_type string, item_id string, price double, "
                                       "quantity double, session_id string, source string, dt date") \
        .withColumn("category", F.lit(None).cast("string")).withColumn("brand", F.lit(None).cast("string")) \
        .withColumn("query", F.lit(None).cast("string")).select(*schema.EVENTS.fieldNames())


def purchase(user, day, item, price, basket=None):
    return user, dt.datetime.combine(day, dt.time(10)), "purchase", item, price, basket or f"{user}-{day}"


def scores_frame(spark, probabilities):
    """Scores as the score stage writes them: day-wide `score_decile` from the same cut points."""
    scores = spark.createDataFrame([(u, p, "gbt", "v1", SCORE_DATE) for u, p in probabilities.items()],
                                   "user_id string, probability double, model_name string, model_version string, "
                                   "score_date date")
    return with_score_decile(scores, cut_points=scores.approxQuantile("probability", [i / 10 for i in range(1, 10)], 1e-4))


@pytest.fixture(scope="module")
def shop(spark):
    """Five buyers whose R, F and M orders differ, and u6, who only viewed and carted."""
    day = dt.date
    events = events_frame(spark, [
        # u1: five baskets (the last on 02-29), then a cart two hours after the last purchase.
        *[purchase("u1", day(2020, 2, 25 + i), item, 10.0) for i, item in enumerate(["i1", "i1", "i2", "i3", "i2"])],
        ("u1", dt.datetime(2020, 2, 29, 12), "cart", "i9", 40.0, None),
        *[purchase("u2", day(2020, 2, 22 + i), "i3", 100.0) for i in range(4)],
        *[purchase("u3", day(2020, 2, 18 + i), "i1", 20.0) for i in range(3)],
        purchase("u4", day(2019, 5, 31), "i2", 5.0), purchase("u4", day(2019, 6, 1), "i2", 5.0),
        purchase("u5", day(2020, 1, 1), "i3", 1000.0),
        ("u6", dt.datetime(2020, 2, 10), "view", "i1", None, None),
        ("u6", dt.datetime(2020, 2, 11), "cart", "i1", 10.0, None),
    ])
    users = spark.createDataFrame([("u1", 30, "F", "Leeds", None, {}), ("u2", None, "U", None, None, {})], schema.USERS)
    items = spark.createDataFrame([
        ("i1", "red mug", "kitchen", "acme", 10.0, None),
        ("i2", "blue pot", None, None, 5.0, None),       # no category: its title stands in
        ("i3", "tea towel", "kitchen", "zeta", 20.0, None),
        ("i9", "big lamp", "lighting", None, 40.0, None),
    ], schema.ITEMS)
    # Materialised once, as the stage reads it from the lake, so that every test does not re-run fuse.
    current = fuse.fuse_user_sequences(events, users, items, as_of=AS_OF, max_events=5, labels=None).localCheckpoint()
    scores = scores_frame(spark, {"u1": 0.9, "u2": 0.8, "u3": 0.7, "u4": 0.2, "u5": 0.1, "u6": 0.5})
    return events, users, items, current, scores


def profiles_of(shop, *, price_bands=None, top_k=2, rfm_classes=RULES.rfm_classes):
    return insights.user_profiles(*shop, top_k=top_k, price_bands=price_bands, propensity_bands=RULES.propensity_bands,
                                  rfm_classes=rfm_classes, default_rfm_class=RULES.default_rfm_class)


@pytest.fixture(scope="module")
def profile_frame(shop):
    return profiles_of(shop).localCheckpoint()


@pytest.fixture(scope="module")
def profiles(profile_frame):
    return {row["user_id"]: row for row in profile_frame.collect()}


def test_rfm_values_quintile_scores_and_classes(profiles):
    assert set(profiles) == {"u1", "u2", "u3", "u4", "u5", "u6"}  # one row per scored user
    got = {u: (r["frequency"], r["monetary"], r["recency_score"], r["frequency_score"], r["monetary_score"], r["rfm_class"])
           for u, r in profiles.items()}
    # Recency order u1 < u2 < u3 < u5 < u4, frequency 5..1 for u1..u5, spend u4 < u1 < u3 < u2 < u5.
    assert got == {
        "u1": (5, 50.0, 5, 5, 2, "loyal"),
        "u2": (4, 400.0, 4, 4, 4, "champions"),
        "u3": (3, 60.0, 3, 3, 3, "loyal"),
        "u4": (2, 10.0, 1, 2, 1, "dormant"),
        "u5": (1, 1000.0, 2, 1, 5, "dormant"),
        "u6": (0, 0.0, None, None, None, "prospects"),  # never bought: no RFM scores
    }
    assert profiles["u1"]["recency_days"] == pytest.approx(14 / 24)  # 02-29 10:00 -> 03-01 00:00
    assert profiles["u4"]["recency_days"] == pytest.approx(273 + 14 / 24)
    assert profiles["u6"]["recency_days"] is None


def test_attributes_activity_and_cart_abandonment(profiles):
    u1, u6 = profiles["u1"], profiles["u6"]
    assert (u1["age"], u1["gender"], u1["region"], u1["as_of"]) == (30, "F", "Leeds", AS_OF)
    assert profiles["u3"]["age"] is None  # not in the users table
    assert (u1["n_events"], u1["n_purchase"], u1["n_cart"], u1["n_view"]) == (6, 5, 1, 0)
    assert (u6["n_events"], u6["n_view"], u6["n_cart"], u6["n_purchase"]) == (2, 1, 1, 0)
    assert {u: r["cart_abandoned"] for u, r in profiles.items()} == {
        "u1": True, "u2": False, "u3": False, "u4": False, "u5": False, "u6": True}


def test_top_categories_fall_back_to_titles_and_brands_rank_by_share(profiles):
    u1 = profiles["u1"]
    # u1's six events: kitchen x3 (i1 x2, i3), blue pot x2 (no category: its title), lighting x1 (i9).
    assert [(e["name"], e["kind"]) for e in u1["top_categories"]] == [("kitchen", "category"), ("blue pot", "title")]
    assert [e["affinity"] for e in u1["top_categories"]] == pytest.approx([3 / 6, 2 / 6])
    assert [(e["name"], e["kind"], e["affinity"]) for e in u1["top_brands"]] == [("acme", "brand", 2 / 6), ("zeta", "brand", 1 / 6)]
    assert profiles["u4"]["top_brands"] == []  # i2 has no brand: an empty list, not null
    assert [e["name"] for e in profiles["u6"]["top_categories"]] == ["kitchen"]


def test_price_band_from_terciles_or_configured_boundaries(shop, profiles):
    medians = {u: r["median_purchase_price"] for u, r in profiles.items()}
    assert medians == {"u1": 10.0, "u2": 100.0, "u3": 20.0, "u4": 5.0, "u5": 1000.0, "u6": None}
    # Terciles of [5, 10, 20, 100, 1000] are 10 and 100; a boundary value belongs to the band below it.
    assert {u: r["price_band"] for u, r in profiles.items()} == {
        "u1": "low", "u2": "mid", "u3": "mid", "u4": "low", "u5": "high", "u6": None}
    configured = profiles_of(shop, price_bands=[50.0, 500.0]).select("user_id", "price_band")
    assert dict(configured.collect()) == {"u1": "low", "u2": "mid", "u3": "low", "u4": "low", "u5": "high", "u6": None}


def test_propensity_deciles_bands_and_segments(profiles):
    # Six users: the decile boundaries are [.1 .2 .2 .5 .5 .7 .8 .8 .9], so the top user is in decile 2.
    got = {u: (r["propensity"], r["propensity_decile"], r["propensity_band"], r["segment"]) for u, r in profiles.items()}
    assert got == {
        "u1": (0.9, 2, "high", "high_loyal"),
        "u2": (0.8, 4, "medium", "medium_champions"),
        "u3": (0.7, 5, "medium", "medium_loyal"),
        "u6": (0.5, 7, "low", "low_prospects"),
        "u4": (0.2, 9, "low", "low_dormant"),
        "u5": (0.1, 10, "low", "low_dormant"),
    }
    assert {(r["model_name"], r["model_version"], r["score_date"]) for r in profiles.values()} == {("gbt", "v1", SCORE_DATE)}


def test_ten_users_fill_the_ten_deciles_and_users_without_events_are_prospects(spark, shop):
    events, users, items, current, _ = shop
    scores = scores_frame(spark, {f"x{i}": i / 10 for i in range(1, 11)})
    rows = insights.user_profiles(events, users, items, current, scores, top_k=3, price_bands=None,
                                  propensity_bands=RULES.propensity_bands, rfm_classes=RULES.rfm_classes,
                                  default_rfm_class="other").collect()
    assert {r["user_id"]: r["propensity_decile"] for r in rows} == {f"x{i}": 11 - i for i in range(1, 11)}
    assert {(r["rfm_class"], r["n_events"], r["cart_abandoned"], r["price_band"]) for r in rows} == {("prospects", None, False, None)}


def test_segments_list_every_definition_with_sizes_that_sum_to_the_users(spark, shop):
    classes = [RFMClassRule("champions", min_recency_score=4, min_frequency_score=4, min_monetary_score=4),
               RFMClassRule("dormant", max_recency_score=2)]
    profiles = profiles_of(shop, rfm_classes=classes)
    table = insights.segments(profiles, propensity_bands=RULES.propensity_bands, rfm_classes=classes, default_rfm_class="other")
    got = {r["segment"]: (r["propensity_band"], r["min_decile"], r["max_decile"], r["rfm_class"], r["users"])
           for r in table.collect()}
    assert got == {
        "high_champions": ("high", 1, 2, "champions", 0), "high_dormant": ("high", 1, 2, "dormant", 0),
        "high_other": ("high", 1, 2, "other", 1),  # u1
        "medium_champions": ("medium", 3, 6, "champions", 1), "medium_dormant": ("medium", 3, 6, "dormant", 0),
        "medium_other": ("medium", 3, 6, "other", 1),  # u3
        "low_champions": ("low", 7, 10, "champions", 0), "low_dormant": ("low", 7, 10, "dormant", 2),
        "low_other": ("low", 7, 10, "other", 1),  # u6: without a prospects class, a non-buyer is "other"
    }
    low_dormant = table.filter("segment = 'low_dormant'").first()
    assert low_dormant["share_of_users"] == pytest.approx(2 / 6)
    assert low_dormant["avg_propensity"] == pytest.approx(0.15) and low_dormant["avg_monetary"] == pytest.approx(505.0)
    definitions = {r["rfm_class"]: r["rfm_definition"] for r in table.collect()}
    assert definitions == {"champions": "recency_score >= 4, frequency_score >= 4, monetary_score >= 4",
                           "dormant": "recency_score <= 2", "other": "no class above matched"}


def test_default_actions_fire_the_first_matching_rule_with_its_values(profile_frame):
    actions = insights.marketing_actions(profile_frame, rules=RULES.actions, default_action=RULES.default_action)
    got = {r["user_id"]: (r["action"], r["rule"], r["reason"]) for r in actions.collect()}
    assert got == {
        "u1": ("reminder", "abandoned_cart", "abandoned_cart: propensity_decile 2 <= 2, cart_abandoned true"),
        "u5": ("coupon", "big_spender_unlikely_to_buy",
               "big_spender_unlikely_to_buy: propensity_decile 10 >= 7, monetary_score 5 >= 4"),
        "u4": ("win_back", "dormant_customer", "dormant_customer: recency_days 273.6 >= 180"),
        "u2": ("none", None, "no rule matched"),
        "u3": ("none", None, "no rule matched"),
        # low propensity with an abandoned cart, but never bought: no score or recency to meet a rule
        "u6": ("none", None, "no rule matched"),
    }


def test_first_match_wins_and_every_condition_must_hold(spark):
    profiles = spark.createDataFrame(
        [("a", 0.9, 1, True, 200.0, 5, 5, "champions", "high_champions", SCORE_DATE),
         ("b", 0.9, 1, False, 200.0, 1, 5, "at_risk", "high_at_risk", SCORE_DATE),
         ("c", 0.1, 10, False, None, None, None, "prospects", "low_prospects", SCORE_DATE)],
        "user_id string, propensity double, propensity_decile int, cart_abandoned boolean, recency_days double, "
        "frequency_score int, monetary_score int, rfm_class string, segment string, score_date date",
    )
    rules = [
        ActionRule("vip_cart", "call", max_decile=1, cart_abandoned=True, min_frequency_score=5),
        ActionRule("lapsing_regular", "win_back", min_recency_days=100, max_recency_days=365, rfm_classes=["at_risk", "dormant"]),
        ActionRule("anyone_lapsed", "email", min_recency_days=100),
    ]
    actions = insights.marketing_actions(profiles, rules=rules, default_action="nothing")
    expected = spark.createDataFrame([
        ("a", "call", "vip_cart", "vip_cart: propensity_decile 1 <= 1, cart_abandoned true, frequency_score 5 >= 5",
         0.9, 1, "high_champions", SCORE_DATE),
        ("b", "win_back", "lapsing_regular",
         "lapsing_regular: recency_days 200.0 >= 100, recency_days 200.0 <= 365, rfm_class at_risk in [at_risk, dormant]",
         0.9, 1, "high_at_risk", SCORE_DATE),
        ("c", "nothing", None, "no rule matched", 0.1, 10, "low_prospects", SCORE_DATE),
    ], "user_id string, action string, rule string, reason string, propensity double, propensity_decile int, "
       "segment string, score_date date")
    assertDataFrameEqual(actions, expected)


@pytest.fixture(scope="module")
def baskets(spark):
    """a: i1 i2; b: i1 i2 i3; c: i1 i3; d: i2 i4; e: i4 (each user one basket, a bought i2 a day later)."""
    day = dt.date(2020, 1, 1)
    events = events_frame(spark, [
        purchase("a", day, "i1", 1.0), purchase("a", day + dt.timedelta(days=1), "i2", 1.0),
        purchase("b", day, "i1", 1.0), purchase("b", day, "i2", 1.0), purchase("b", day, "i3", 1.0),
        purchase("c", day, "i1", 1.0), purchase("c", day, "i3", 1.0),
        purchase("d", day, "i2", 1.0), purchase("d", day, "i4", 1.0),
        purchase("e", day, "i4", 1.0),
        ("a", dt.datetime(2020, 1, 3), "view", "i4", None, None),  # viewed, not bought: still a candidate
    ])
    items = spark.createDataFrame([(f"i{n}", f"item {n}", None, None, 1.0, None) for n in range(1, 5)], schema.ITEMS)
    return events, items, spark.createDataFrame([(u,) for u in "abcde"], "user_id string")


def recommend(baskets, **overrides):
    settings = dict(top_k=10, co_occurrence_within="user", min_co_occurrence=1, max_items_per_group=50, neighbours_per_item=50)
    settings.update(overrides)
    rows = insights.recommendations(*baskets, **settings).collect()
    return {u: [(r["rank"], r["item_id"], r["score"]) for r in sorted(rows, key=lambda r: r["rank"]) if r["user_id"] == u]
            for u in sorted({r["user_id"] for r in rows})}


def test_recommendations_sum_co_occurrence_and_skip_what_the_user_bought(baskets):
    # Users who bought both: (i1,i2) a b; (i1,i3) b c; (i2,i3) b; (i2,i4) d.
    assert recommend(baskets) == {
        "a": [(1, "i3", 3), (2, "i4", 1)],  # i3: 2 via i1 + 1 via i2
        "b": [(1, "i4", 1)],
        "c": [(1, "i2", 3)],
        "d": [(1, "i1", 2), (2, "i3", 1)],
        "e": [(1, "i2", 1)],
    }
    titled = insights.recommendations(*baskets, top_k=1, co_occurrence_within="user", min_co_occurrence=1,
                                      max_items_per_group=50, neighbours_per_item=50).filter("user_id = 'a'")
    assert [(r["rank"], r["item_id"], r["title"]) for r in titled.collect()] == [(1, "i3", "item 3")]


def test_recommendation_limits_prune_rare_pairs_and_only_scored_users_get_rows(spark, baskets):
    assert recommend(baskets, min_co_occurrence=2) == {"a": [(1, "i3", 2)], "c": [(1, "i2", 2)], "d": [(1, "i1", 2)]}
    assert recommend(baskets, top_k=1)["a"] == [(1, "i3", 3)]
    # With one item per user, only each user's latest purchase pairs up: nothing co-occurs.
    assert recommend(baskets, max_items_per_group=1) == {}
    # One neighbour per item: i1 keeps i2 (tied with i3, first by id), i4 keeps its only partner i2.
    assert recommend(baskets, neighbours_per_item=1)["e"] == [(1, "i2", 1)]
    events, items, _ = baskets
    only_a = spark.createDataFrame([("a",)], "user_id string")
    assert recommend((events, items, only_a)) == {"a": [(1, "i3", 3), (2, "i4", 1)]}


def test_basket_co_occurrence_counts_items_bought_together(baskets):
    # a bought i1 and i2 on different days (two baskets), so the pair (i1, i2) comes from b alone:
    # c (i1, i3) scores i2 with 1 via i1 + 1 via i3, against 2 + 1 when any two purchases of a user count.
    assert recommend(baskets, co_occurrence_within="basket")["c"] == [(1, "i2", 2)]


def test_base_yaml_insights_section_matches_the_defaults():
    assert load_config("local").insights == InsightsConfig()


@pytest.mark.parametrize("override, message", [
    ("insights.top_k_interest=3", "unknown config key 'insights.top_k_interest'; allowed keys at insights:"),
    ("insights.recommendations.top_k=0", "insights.recommendations.top_k: must be positive"),
    ("insights.recommendations.co_occurrence_within=session", "'session' is not one of user, basket"),
    ("insights.score_date=latest", "insights.score_date: 'latest' is not an ISO date"),
    ("insights.price_bands=[10, 5]", "insights.price_bands: expected [low_max, mid_max]"),
    ("insights.propensity_bands=[{name: all, min_decile: 1, max_decile: 9}]",
     "insights.propensity_bands: the bands must cover the deciles 1..10, each exactly once"),
    ("insights.propensity_bands=[{name: top, min_decile: 0, max_decile: 10}]",
     "insights.propensity_bands[0].min_decile: 0 is outside 1..10"),
    ("insights.rfm_classes=[{name: best, min_recency_score: 6}]", "insights.rfm_classes[0].min_recency_score: 6 is outside 1..5"),
    ("insights.rfm_classes=[{min_recency_score: 4}]", "insights.rfm_classes[0]: missing key 'name'"),
    ("insights.rfm_classes=[{name: a, min_recency_scor: 4}]", "unknown config key 'insights.rfm_classes[0].min_recency_scor'"),
    ("insights.default_rfm_class=dormant", "insights.default_rfm_class: 'dormant' is already a class"),
    ("insights.actions=[{name: all, action: email}]", "insights.actions[0] (all): has no condition"),
    ("insights.actions=[{name: x, action: email, max_decile: 2, cart_abandoned: maybe}]",
     "insights.actions[0].cart_abandoned: expected true or false"),
    ("insights.actions=[{name: x, action: email, min_decile: 5, max_decile: 2}]",
     "insights.actions[0]: min_decile 5 is above max_decile 2"),
    ("insights.actions=[{name: x, action: email, rfm_classes: [vips]}]",
     "insights.actions[0].rfm_classes: 'vips' is not an RFM class"),
    ("insights.actions=[{name: x, action: a, max_decile: 1}, {name: x, action: b, max_decile: 2}]",
     "insights.actions[1].name: 'x' is used twice"),
])
def test_bad_insights_config_is_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", [override])
    assert message in str(err.value)


def test_rules_from_yaml_become_typed_objects():
    config = load_config("local", ["insights.actions=[{name: lapsed, action: win_back, min_recency_days: 90, "
                                   "rfm_classes: [dormant]}]", "insights.price_bands=[10, 50]"])
    assert config.insights.actions == [ActionRule("lapsed", "win_back", min_recency_days=90.0, rfm_classes=["dormant"])]
    assert config.insights.price_bands == [10.0, 50.0]


def test_search_insights_rank_queries_and_find_zero_conversion_ones(spark):
    t = dt.datetime(2020, 1, 1, 10)
    minutes, days = dt.timedelta(minutes=1), dt.timedelta(days=1)
    rows = [  # user, ts, event_type, item, session, query
        ("u1", t - minutes, "view", "i1", "s1", None),       # before the search: does not follow it
        ("u1", t, "search", None, "s1", "Mug"),
        ("u1", t + 5 * minutes, "view", "i1", "s1", None),
        ("u1", t + 10 * minutes, "purchase", "i1", "s1", None),  # same session: converted
        ("u2", t, "search", None, None, "lamp"),
        ("u2", t + 2 * minutes, "view", "i2", None, None),   # within a day: viewed, never bought
        ("u2", t + 3 * days, "search", None, None, " lamp"),
        ("u2", t + 5 * days, "view", "i2", None, None),      # two days later: follows no search
        ("u3", t, "search", None, None, "sofa"),
        ("u3", t + 10 * days, "search", None, None, "mug"),
        ("u3", t + 10 * days + minutes, "purchase", "i1", None, None),
        ("u4", t, "search", None, "s9", "desk"),
        ("u4", t + 30 * minutes, "purchase", "i3", "s10", None),  # another session: does not follow it
        ("u5", t, "search", None, None, "chair"),                 # not profiled: left out
    ]
    events = spark.createDataFrame(
        [(u, ts, kind, item, None, None, None, None, query, session, "unit", ts.date()) for u, ts, kind, item, session, query in rows],
        schema.EVENTS)
    profiles = spark.createDataFrame([("u1", "high_x"), ("u2", "low_y"), ("u3", "high_x"), ("u4", "low_y")],
                                     "user_id string, segment string")

    def table(top):
        return {(r["segment"], r["query"]): (r["searches"], r["users"], r["searches_with_view"], r["searches_with_purchase"],
                                             r["outcome"], r["zero_conversion"], r["rank"], r["zero_conversion_rank"])
                for r in insights.search_insights(events, profiles, top_queries=top, conversion_window_days=1.0).collect()}

    assert table(10) == {
        ("all", "lamp"): (2, 1, 1, 0, "viewed_no_purchase", True, 1, 1),
        ("all", "mug"): (2, 2, 1, 2, "converted", False, 2, None),
        ("all", "desk"): (1, 1, 0, 0, "no_follow_up", False, 3, None),
        ("all", "sofa"): (1, 1, 0, 0, "no_follow_up", False, 4, None),
        ("high_x", "mug"): (2, 2, 1, 2, "converted", False, 1, None),
        ("high_x", "sofa"): (1, 1, 0, 0, "no_follow_up", False, 2, None),
        ("low_y", "lamp"): (2, 1, 1, 0, "viewed_no_purchase", True, 1, 1),
        ("low_y", "desk"): (1, 1, 0, 0, "no_follow_up", False, 2, None),
    }
    # One query per segment, plus the segment's top zero-conversion query where that is another one.
    assert set(table(1)) == {("all", "lamp"), ("high_x", "mug"), ("low_y", "lamp")}
    conversion = {r["query"]: r["conversion_rate"] for r in insights.search_insights(
        events, profiles, top_queries=10, conversion_window_days=1.0).where("segment = 'all'").collect()}
    assert conversion == {"lamp": 0.0, "mug": 1.0, "desk": 0.0, "sofa": 0.0}
    # A week-long window lets u2's second view follow the second lamp search too.
    wide = insights.search_insights(events, profiles, top_queries=10, conversion_window_days=7.0)
    assert wide.where("segment = 'all' AND query = 'lamp'").first()["searches_with_view"] == 2
