"""Every source preset in conf/sources against its real data, with exact counts.

Each preset is read and tagged the way `run_clean` does it (staging_area -> read_source ->
resolve_aliases -> tag_events -> mark_duplicates; tag_users/tag_items/tag_reviews for the tables a
preset feeds from files of their own), once per module, persisted, and summarised with one groupBy. The
expected numbers come from an independent oracle per source, written with pandas or the csv module
straight from the raw file (no ecominsight code), and are also pinned as literals below, checked
against the numbers stated in each data folder's SOURCE.md where it states them.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import re
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight import data_quality, schema
from ecominsight.io import read_source, staging_area
from ecominsight.presets import Preset, TableSource, load_preset
from ecominsight.schema import EVENT_TYPES
from ecominsight.stages.clean import tag_arguments
from ecominsight.transforms import clean
from tests.raw_records import records_of

REPO = Path(__file__).resolve().parent.parent
UTC = dt.timezone.utc
CLEAN = None  # the reason of an accepted row

# ---------------------------------------------------------------------------------------------
# The expected numbers, pinned. Each is also recomputed by the oracle of its source (below), and
# the test fails if oracle, literal or Spark disagree.
# ---------------------------------------------------------------------------------------------

EXPECTED = {
    "online_retail_ii_sample": {
        "input": 66_718,
        "clean": 64_824,
        "quarantined": {"missing_user_id": 787, "non_product_stock_code": 443, "duplicate": 664},
        "clean_events": {"purchase": 63_239, "return": 1_585},
        "users": 493,  # of the 500 customers, 7 have only non-product lines (M, ADJUST, BANK CHARGES, TEST001)
    },
    "online_retail_ii": {
        "input": 525_461 + 541_909,
        "clean": 794_223,
        # missing_user_id counts the overlap's guest rows twice (once per file); the accepted overlap
        # rows are kept once, their second copies are among the duplicates (11,667 + 14,738).
        "quarantined": {"missing_user_id": 240_913, "non_product_stock_code": 5_823, "bad_debt_adjustment": 6,
                        "duplicate": 26_405},
        "clean_events": {"purchase": 776_637, "return": 17_586},
        "users": 5_876,  # SOURCE.md's 5,942 customers less 66 with only non-product lines
    },
    "taobao_userbehavior": {
        "input": 84_475 + 1,  # complete rows + the truncated last line
        "clean": 84_440,
        "quarantined": {"malformed_row": 1, "outside_window": 35},
        "clean_events": {"view": 75_837, "cart": 4_497, "fav": 2_356, "purchase": 1_750},
        "users": 815,
    },
    "rees46_multicategory": {
        "input": 17_434 + 1,  # complete rows + the truncated last line
        "clean": 17_429,
        "quarantined": {"malformed_row": 1, "duplicate": 5},
        "clean_events": {"view": 17_051, "cart": 164, "purchase": 214},
        "users": 4_504,
    },
    "flat_labelled": {
        "input": 518,
        "clean": 513,
        "quarantined": {"missing_user_id": 2, "bad_label": 1, "duplicate": 2},
        "clean_events": {"search": 513},
        "users": 200,
    },
    "jdata2017": {
        "input": 3 * 29_999,
        "clean": 29_474,
        # Browse (1) and click (6) both map to view: repeated clicks on one product in one second (they differ
        # only in model_id) and a click in the same second as its browse are one canonical event.
        "quarantined": {"duplicate": 60_523},
        "clean_events": {"view": 26_943, "cart": 1_539, "remove_cart": 583, "fav": 210, "purchase": 199},
        "users": 3_009,  # of SOURCE.md's 1,030 + 929 + 1,171 action users per file, some active in two
        "side": {"users": {"input": 29_999, "clean": 29_999, "quarantined": {}},
                 "items": {"input": 24_187, "clean": 24_187, "quarantined": {}}},
        "users_table": 32_123,  # 29,999 listed + 2,124 active users the user list lacks
        "users_without_events": 29_114,  # listed users with no accepted action in the three heads
        "items_table": 26_757,  # 24,187 listed products + 2,570 action skus the product list lacks
    },
    "uci_online_retail_head30k": {
        "input": 30_000,
        "clean": 19_451,
        "quarantined": {"missing_user_id": 10_000, "duplicate": 430, "non_product_stock_code": 119},
        "clean_events": {"purchase": 19_009, "return": 442},
        "users": 754,  # SOURCE.md's 755 customers less one with only non-product lines
    },
    "uci_online_retail_random5k": {
        "input": 5_000,
        "clean": 3_198,
        "quarantined": {"missing_user_id": 1_782, "non_product_stock_code": 20},
        "clean_events": {"purchase": 3_198},
        "users": 1_037,  # SOURCE.md's 1,039 customers less two with only non-product lines
    },
    "tafeng_grocery": {
        "input": 817_741,
        "clean": 817_741,  # SOURCE.md: no checks failed, and no line repeats another
        "quarantined": {},
        "clean_events": {"purchase": 817_741},
        "users": 32_266,
    },
    "cdnow": {
        "input": 69_659,
        "clean": 69_404,
        # Lines repeating customer, day, CDs and dollars: double records or two equal orders on one day,
        # which the data cannot tell apart; the canonical rule keeps one (the basket, customer x day, stays).
        "quarantined": {"duplicate": 255},
        "clean_events": {"purchase": 69_404},
        "users": 23_570,
    },
    "amazon_fashion_5core": {
        "input": 3_176,
        "clean": 2_976,
        "quarantined": {"unverified_review": 97, "duplicate": 103},
        "clean_events": {"purchase": 2_976},
        "users": 395,  # of SOURCE.md's 406 reviewers, 11 have only unverified reviews
        # SOURCE.md's 89 copies of a review across size/colour variants, and one more: texts that differ in
        # punctuation only ("very nice...quick shipment..." / "...shipment") are equal once cleaned.
        "side": {"reviews": {"input": 3_176, "clean": 3_086, "quarantined": {"duplicate": 90}}},
        "ratings": {5.0: 2_121, 4.0: 448, 3.0: 322, 2.0: 84, 1.0: 111},
    },
}


# ---------------------------------------------------------------------------------------------
# The Spark side: exactly what run_clean does, summarised with one groupBy.
# ---------------------------------------------------------------------------------------------

@dataclass
class SparkRun:
    preset: Preset
    n_input: int
    by_reason: Counter  # reason (None = clean) -> rows
    clean_events: Counter  # canonical event type -> clean rows
    tagged: DataFrame  # persisted; without the bulky `raw` column unless asked for
    columns: list[str]  # the raw columns as read

    @property
    def n_clean(self) -> int:
        return self.by_reason.get(CLEAN, 0)

    @property
    def quarantined(self) -> dict[str, int]:
        return {reason: n for reason, n in self.by_reason.items() if reason is not CLEAN}


def _stage(request):
    """A staging area (unpacked archives) that lives as long as the requesting fixture."""
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    return stack.enter_context(staging_area())


def _persist(frame: DataFrame, request) -> DataFrame:
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    request.addfinalizer(frame.unpersist)
    return frame


def _run_preset(spark, name: str, request, *, keep_raw: bool = False) -> SparkRun:
    preset = load_preset(name)
    stage = _stage(request)
    raw = clean.resolve_aliases(read_source(spark, preset, stage(preset.resolved_paths())), aliases=preset.aliases)
    tagged = clean.mark_duplicates(clean.tag_events(raw, **tag_arguments(preset, "test-run")))
    tagged = _persist(tagged if keep_raw else tagged.drop("raw"), request)
    by_reason: Counter = Counter()
    clean_events: Counter = Counter()
    for row in tagged.groupBy("reason", "event_type").count().collect():
        by_reason[row["reason"]] += row["count"]
        if row["reason"] is CLEAN:
            clean_events[row["event_type"]] += row["count"]
    return SparkRun(preset, raw.count(), by_reason, clean_events, tagged, raw.columns)


def _run_side_table(spark, preset: Preset, table: str, request) -> tuple[int, Counter, DataFrame]:
    """A preset's users/items file (or its reviews), tagged as run_clean does: (input rows, rows
    per reason, the persisted tagged frame)."""
    stage = _stage(request)
    if table == "reviews":
        raw = read_source(spark, preset, stage(preset.resolved_paths()))
        tagged = clean.tag_reviews(raw, **tag_arguments(preset, "test-run", "reviews"))
    else:
        side = preset.user_source if table == "users" else preset.item_source
        raw = read_source(spark, side, stage(side.resolved_paths()))
        tagger = clean.tag_users if table == "users" else clean.tag_items
        tagged = tagger(raw, **tag_arguments(preset, "test-run", table))
    tagged = _persist(tagged, request)
    by_reason = Counter({row["reason"]: row["count"] for row in tagged.groupBy("reason").count().collect()})
    return raw.count(), by_reason, tagged


def _utc_text(frame: DataFrame, condition) -> list[str]:
    """`ts` of the matching rows as UTC wall-clock text (the session time zone is UTC)."""
    return sorted(r[0] for r in frame.filter(condition).select(F.date_format("ts", "yyyy-MM-dd HH:mm:ss")).collect())


def _check_counts(run: SparkRun, oracle: dict, name: str) -> None:
    expected = EXPECTED[name]
    # The oracle reproduces the pinned numbers ...
    assert oracle["input"] == expected["input"]
    assert oracle["quarantined"] == expected["quarantined"]
    assert oracle["clean"] == expected["clean"]
    assert oracle["clean_events"] == expected["clean_events"]
    assert oracle["users"] == expected["users"]
    # ... and so does Spark.
    assert run.n_input == expected["input"]
    assert run.quarantined == expected["quarantined"]
    assert run.n_clean == expected["clean"]
    assert dict(run.clean_events) == expected["clean_events"]
    # Accounting identity: no row lost, none invented, against the raw files' records counted without Spark.
    assert run.n_input == run.n_clean + sum(run.quarantined.values()) == records_of(run.preset)


def _check_users(run: SparkRun, oracle: dict, name: str) -> None:
    users = clean.derive_users(run.tagged, gender_values=run.preset.gender_values, age_values=run.preset.age_values)
    stats = users.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("ids")).first()
    assert stats["rows"] == stats["ids"] == oracle["users"] == EXPECTED[name]["users"]
    accepted_ids = run.tagged.filter(F.col("reason").isNull()).select("user_id").distinct()
    assert users.select("user_id").exceptAll(accepted_ids).count() == 0


def _check_event_types(run: SparkRun) -> None:
    assert set(run.clean_events) <= set(EVENT_TYPES)
    assert run.tagged.filter(F.col("reason").isNull() & F.col("event_type").isNull()).count() == 0


# ---------------------------------------------------------------------------------------------
# Oracles: independent re-implementations of the cleaning rules, in pandas or plain Python.
# ---------------------------------------------------------------------------------------------

def _summary(frame: pd.DataFrame, event_col: str = "event", user_col: str = "user") -> dict:
    """frame has one row per input row with `reason` (None = clean), the event type and the user."""
    reasons = frame["reason"].fillna("<clean>").value_counts().to_dict()
    n_clean = reasons.pop("<clean>", 0)
    accepted = frame[frame["reason"].isna()]
    return {
        "input": len(frame),
        "clean": n_clean,
        "quarantined": {k: int(v) for k, v in reasons.items()},
        "clean_events": {k: int(v) for k, v in accepted[event_col].value_counts().to_dict().items()},
        "users": int(accepted[user_col].nunique()),
    }


def _first_reason(frame: pd.DataFrame, checks: list[tuple[str, pd.Series]]) -> pd.Series:
    """The first failing check per row, in the documented order; None where all pass."""
    reason = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for code, failed in checks:
        reason = reason.where(reason.notna() | ~failed.fillna(False).astype(bool), code)
    return reason


def _mark_duplicates(frame: pd.DataFrame, key: list[str]) -> pd.Series:
    """`reason`, with every repeat of an accepted row's key (first copy kept) set to duplicate."""
    accepted = frame["reason"].isna()
    repeat = frame[accepted].duplicated(subset=key, keep="first")
    reason = frame["reason"].copy()
    reason.loc[repeat[repeat].index] = "duplicate"
    return reason


# Online Retail II -----------------------------------------------------------------------------

RETAIL_FILES = ("online_retail_II_2009-2010.parquet", "online_retail_2010-2011.parquet")
OLDER_NAMES = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
# SOURCE.md's non-product stock codes, plus ADJUST2, TEST002 and CRUK (commission), which the data also hold.
NON_PRODUCT = {"POST", "DOT", "M", "BANK CHARGES", "AMAZONFEE", "D", "S", "C2", "PADS", "ADJUST", "TEST001", "B",
               "ADJUST2", "TEST002", "CRUK"}


def _parse_first(texts: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """Each value parsed with the first of the strptime `formats` that fits it; NaT when none does."""
    parsed = pd.Series(pd.NaT, index=texts.index, dtype="datetime64[ns]")
    for fmt in formats:
        parsed = parsed.fillna(pd.to_datetime(texts, format=fmt, errors="coerce"))
    return parsed


def retail_oracle(frame: pd.DataFrame, date_formats: tuple[str, ...] = ("%Y-%m-%d %H:%M:%S",)) -> tuple[dict, pd.DataFrame]:
    """The cleaning rules for Online Retail II, in pandas; returns the summary and the tagged frame."""
    frame = frame.reset_index(drop=True)
    customer = frame["Customer ID"]
    assert (customer.dropna() % 1 == 0).all(), "customer ids are whole numbers stored as floats"
    out = pd.DataFrame({
        "user": customer.map(lambda v: None if pd.isna(v) else str(int(v))),
        "event": frame["Invoice"].str.startswith("C").map({True: "return", False: "purchase"}),
        "ts": _parse_first(frame["InvoiceDate"], date_formats).dt.tz_localize("Europe/London")
        .dt.tz_convert("UTC"),
        "item": frame["StockCode"].str.strip(),
        "price": frame["Price"].astype(float),
        "quantity": frame["Quantity"].astype(float).abs(),
        "invoice": frame["Invoice"].str.strip(),
    })
    out["reason"] = _first_reason(out, [
        ("bad_debt_adjustment", frame["Invoice"].str.startswith("A")),
        ("non_product_stock_code", frame["StockCode"].str.upper().isin(NON_PRODUCT)),
        ("missing_user_id", out["user"].isna()),
        ("bad_timestamp", out["ts"].isna()),
    ])
    out["reason"] = _mark_duplicates(out, ["user", "ts", "event", "item", "price", "quantity", "invoice"])
    return _summary(out), out


def _read_retail_files(folder: Path) -> list[pd.DataFrame]:
    return [pd.read_parquet(folder / name).rename(columns=OLDER_NAMES) for name in RETAIL_FILES]


# Taobao UserBehavior ----------------------------------------------------------------------------

TAOBAO_TYPES = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"}
BEIJING = dt.timezone(dt.timedelta(hours=8))
TAOBAO_WINDOW = (dt.datetime(2017, 11, 25, tzinfo=BEIJING), dt.datetime(2017, 12, 4, tzinfo=BEIJING))


def taobao_oracle(path: Path) -> tuple[dict, list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        lines = list(csv.reader(handle))
    rows = []
    for fields in lines:
        if len(fields) != 5:
            rows.append({"reason": "malformed_row", "user": None, "event": None, "key": None})
            continue
        user, item, _category, behaviour, stamp = (f.strip() for f in fields)
        ts = dt.datetime.fromtimestamp(int(stamp), tz=UTC)
        event = TAOBAO_TYPES.get(behaviour.lower())
        reason = None
        if not user:
            reason = "missing_user_id"
        elif event is None:
            reason = "unknown_event_type"
        elif not TAOBAO_WINDOW[0] <= ts < TAOBAO_WINDOW[1]:
            reason = "outside_window"
        rows.append({"reason": reason, "user": user, "event": event, "key": (user, ts, event, item)})
    frame = pd.DataFrame(rows)
    frame["reason"] = _mark_duplicates(frame, ["key"])
    return _summary(frame), lines


# REES46 --------------------------------------------------------------------------------------------

REES46_TYPES = {"view": "view", "cart": "cart", "purchase": "purchase", "remove_from_cart": "remove_cart"}


def rees46_oracle(path: Path) -> tuple[dict, list[dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        lines = list(reader)
    rows = []
    for fields in lines:
        if len(fields) != len(header):
            rows.append({"reason": "malformed_row", "user": None, "event": None, "key": None})
            continue
        rec = dict(zip(header, (f.strip() for f in fields)))
        ts = dt.datetime.strptime(rec["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        event = REES46_TYPES.get(rec["event_type"].lower())
        price = float(rec["price"]) if rec["price"] else None
        reason = None
        if not rec["user_id"]:
            reason = "missing_user_id"
        elif event is None:
            reason = "unknown_event_type"
        key = (rec["user_id"], ts, event, rec["product_id"] or None, price, rec["user_session"] or None)
        rows.append({"reason": reason, "user": rec["user_id"], "event": event, "key": key})
    frame = pd.DataFrame(rows)
    frame["reason"] = _mark_duplicates(frame, ["key"])
    return _summary(frame), lines


# Flat labelled --------------------------------------------------------------------------------------

FLAT_SAMPLE = REPO / "tests" / "data" / "flat_labelled_sample.csv"
FLAT_GENDERS = {"m": "M", "male": "M", "男": "M", "f": "F", "female": "F", "女": "F"}


def clean_query(text: str) -> str | None:
    """Tags and entities out, then everything but letters/marks/digits/whitespace; whitespace collapsed."""
    text = re.sub(r"<[^>]*>", " ", text)
    text = re.sub(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);", " ", text)
    text = "".join(c if c.isspace() or unicodedata.category(c)[0] in "LMN" else " " for c in text)
    text = " ".join(text.split())
    return text or None


def flat_oracle(path: Path) -> tuple[dict, pd.DataFrame]:
    with path.open(encoding="utf-8", newline="") as handle:
        records = list(csv.DictReader(handle))
    frame = pd.DataFrame(records)
    frame["user"] = frame["user_id"].str.strip().replace("", None)
    frame["event"] = "search"
    frame["clean_query"] = frame["query"].map(clean_query)
    label = frame["purchased"].str.strip().str.lower().map({"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0})
    frame["label"] = label
    frame["reason"] = _first_reason(frame, [("missing_user_id", frame["user"].isna()), ("bad_label", label.isna())])
    frame["reason"] = _mark_duplicates(frame, ["user", "clean_query"])
    return _summary(frame), frame


# ---------------------------------------------------------------------------------------------
# online_retail_ii_sample: the bundled file, always available.
# ---------------------------------------------------------------------------------------------

SAMPLE = "online_retail_ii_sample"


@pytest.fixture(scope="module")
def sample_run(spark, request) -> SparkRun:
    return _run_preset(spark, SAMPLE, request)


@pytest.fixture(scope="module")
def sample_oracle() -> tuple[dict, pd.DataFrame]:
    preset = load_preset(SAMPLE)
    return retail_oracle(pd.read_parquet(preset.resolved_paths()[0]))


def test_sample_counts(sample_run, sample_oracle):
    summary, _ = sample_oracle
    _check_counts(sample_run, summary, SAMPLE)
    # ecominsight/data/README.md: 66,718 rows of 500 customers plus 30 guest invoices.
    frame = pd.read_parquet(sample_run.preset.resolved_paths()[0])
    assert len(frame) == 66_718 and frame["Customer ID"].nunique() == 500
    assert frame.loc[frame["Customer ID"].isna(), "Invoice"].nunique() == 30


def test_sample_users_and_ids(sample_run, sample_oracle):
    _check_users(sample_run, sample_oracle[0], SAMPLE)
    _check_event_types(sample_run)
    ids = sample_run.tagged.filter(F.col("reason").isNull()).agg(
        F.sum(F.when(~F.col("user_id").rlike(r"^[1-9]\d*$"), 1).otherwise(0)).alias("bad_users"),
        F.sum(F.when(F.col("session_id").contains(".") | F.col("item_id").endswith(".0"), 1).otherwise(0)).alias("bad_ids"),
    ).first()
    assert ids["bad_users"] == 0 and ids["bad_ids"] == 0
    assert sample_run.tagged.filter(F.col("user_id") == "14911").limit(1).count() == 1


def test_sample_timestamps_are_utc(sample_run):
    tagged = sample_run.tagged
    # British Summer Time: 08:58 in London is 07:58 UTC.
    assert _utc_text(tagged, (F.col("session_id") == "558640") & (F.col("item_id") == "21094")) == ["2011-07-01 07:58:00"]
    # Winter: London wall-clock is UTC.
    assert _utc_text(tagged, (F.col("session_id") == "493685") & (F.col("item_id") == "22060")) == ["2010-01-05 12:43:00"]


# ---------------------------------------------------------------------------------------------
# online_retail_ii: the complete data, two overlapping files with different column names.
# ---------------------------------------------------------------------------------------------

RETAIL = "online_retail_ii"


@pytest.fixture(scope="module")
def retail_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, RETAIL, request)


@pytest.fixture(scope="module")
def retail_frames(shared_data) -> list[pd.DataFrame]:
    return _read_retail_files(shared_data / "online_retail_ii_full")


@pytest.fixture(scope="module")
def retail_oracle_result(retail_frames) -> tuple[dict, pd.DataFrame]:
    return retail_oracle(pd.concat(retail_frames, ignore_index=True))


def test_retail_source_facts(retail_frames):
    """The raw files are what SOURCE.md says: sizes, overlap, combined totals, A invoices."""
    first, second = retail_frames
    assert (len(first), len(second)) == (525_461, 541_909)
    overlap = first[first["InvoiceDate"] >= "2010-12-01"]
    assert len(overlap) == 22_523 and overlap["Invoice"].nunique() == 1_088
    assert second["InvoiceDate"].min() >= "2010-12-01"
    combined = pd.concat([first[first["InvoiceDate"] < "2010-12-01"], second])
    assert len(combined) == 1_044_847
    assert combined["Invoice"].nunique() == 53_628 and combined["Customer ID"].nunique() == 5_942
    bad_debt = combined[combined["Invoice"].str.startswith("A")]
    assert len(bad_debt) == 6 and set(bad_debt["StockCode"]) == {"B"}


def test_retail_counts(retail_run, retail_oracle_result):
    _check_counts(retail_run, retail_oracle_result[0], RETAIL)


def test_retail_overlap_not_double_counted(retail_run, retail_frames):
    """Reading both files must clean to what SOURCE.md's de-overlapped combination cleans to:
    each overlap row that is accepted is kept once; its second copy is a `duplicate`."""
    first, second = retail_frames
    deoverlapped, _ = retail_oracle(pd.concat([first[first["InvoiceDate"] < "2010-12-01"], second], ignore_index=True))
    overlap, _ = retail_oracle(first[first["InvoiceDate"] >= "2010-12-01"])
    # The overlap is a full copy: once aliased, the 22,523 rows add no clean row ...
    assert retail_run.n_clean == deoverlapped["clean"]
    assert dict(retail_run.clean_events) == deoverlapped["clean_events"]
    # ... each accepted overlap row shows up once more as a duplicate (rows rejected for another reason
    # are rejected in both copies and keep that reason) ...
    extra_overlap_duplicates = overlap["clean"] + overlap["quarantined"].get("duplicate", 0)
    assert retail_run.quarantined["duplicate"] == deoverlapped["quarantined"]["duplicate"] + extra_overlap_duplicates
    for reason in ("missing_user_id", "non_product_stock_code", "bad_debt_adjustment"):
        assert retail_run.quarantined.get(reason, 0) == (
            deoverlapped["quarantined"].get(reason, 0) + overlap["quarantined"].get(reason, 0))
    # ... and the users are SOURCE.md's 5,942 identified customers, less those with only non-product lines.
    assert deoverlapped["users"] == EXPECTED[RETAIL]["users"] <= 5_942


def test_retail_reasons_are_the_documented_rows(retail_run, retail_frames):
    """Guest orders -> missing_user_id, A invoices -> bad_debt_adjustment, POST etc. -> non_product_stock_code."""
    tagged = retail_run.tagged
    stats = tagged.agg(
        F.sum(F.when(F.col("session_id").startswith("A") & (F.col("reason") != "bad_debt_adjustment"), 1).otherwise(0)),
        F.sum(F.when(F.col("reason").isNull() & F.upper("item_id").isin("POST", "DOT", "M", "BANK CHARGES"), 1).otherwise(0)),
        F.sum(F.when((F.col("reason") == "missing_user_id") & F.col("user_id").isNotNull(), 1).otherwise(0)),
    ).first()
    assert list(stats) == [0, 0, 0]
    # Guest rows that are neither A invoices nor non-product lines: all missing_user_id (the overlap counted twice).
    guests = sum(len(f[f["Customer ID"].isna() & ~f["Invoice"].str.startswith("A")
                       & ~f["StockCode"].str.upper().isin(NON_PRODUCT)]) for f in retail_frames)
    assert retail_run.quarantined["missing_user_id"] == guests


def test_retail_users_ids_and_timestamps(retail_run, retail_oracle_result):
    _check_users(retail_run, retail_oracle_result[0], RETAIL)
    _check_event_types(retail_run)
    tagged = retail_run.tagged
    # Every id read from the float column (13085.0) is normalised to digits, quarantined rows included.
    assert tagged.filter(F.col("user_id").isNotNull() & ~F.col("user_id").rlike(r"^[1-9]\d*$")).count() == 0
    # 2010-06-15 08:15 in London (BST) is 07:15 UTC; in winter London wall-clock is UTC.
    assert _utc_text(tagged, (F.col("session_id") == "512312") & (F.col("item_id") == "22469")) == ["2010-06-15 07:15:00"]
    # The first row of the 2009-2010 file: 489434, 85048, 2009-12-01 07:45:00, customer 13085.0.
    first = (F.col("session_id") == "489434") & (F.col("item_id") == "85048")
    assert _utc_text(tagged, first) == ["2009-12-01 07:45:00"]
    assert [r["user_id"] for r in tagged.filter(first).select("user_id").collect()] == ["13085"]
    # 2011 rows come from the file with the older column names (CustomerID, InvoiceNo): aliased, then normalised.
    assert _utc_text(tagged, (F.col("session_id") == "581587") & (F.col("item_id") == "22613")
                     & (F.col("user_id") == "12680")) == ["2011-12-09 12:50:00"]


# ---------------------------------------------------------------------------------------------
# taobao_userbehavior
# ---------------------------------------------------------------------------------------------

TAOBAO = "taobao_userbehavior"


@pytest.fixture(scope="module")
def taobao_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, TAOBAO, request)


@pytest.fixture(scope="module")
def taobao_oracle_result(shared_data) -> tuple[dict, list[list[str]]]:
    return taobao_oracle(shared_data / "taobao_userbehavior_head" / "UserBehavior_head.csv")


def test_taobao_source_facts(taobao_oracle_result):
    _, lines = taobao_oracle_result
    complete = [f for f in lines if len(f) == 5]
    assert len(complete) == 84_475 and lines[-1] == ["100370", "1968385", "1875258", "pv"]
    assert Counter(f[3] for f in complete) == {"pv": 75_872, "cart": 4_497, "fav": 2_356, "buy": 1_750}
    assert len({f[0] for f in complete}) == 815


def test_taobao_counts(taobao_run, taobao_oracle_result):
    summary, lines = taobao_oracle_result
    _check_counts(taobao_run, summary, TAOBAO)
    # Clean event counts are SOURCE.md's raw counts less the quarantined rows of each type.
    complete = [f for f in lines if len(f) == 5]
    stray = Counter(TAOBAO_TYPES[f[3]] for f in complete
                    if not TAOBAO_WINDOW[0] <= dt.datetime.fromtimestamp(int(f[4]), tz=UTC) < TAOBAO_WINDOW[1])
    raw_counts = {"view": 75_872, "cart": 4_497, "fav": 2_356, "purchase": 1_750}
    assert sum(stray.values()) == 35
    assert dict(taobao_run.clean_events) == {k: v - stray[k] for k, v in raw_counts.items()}


def test_taobao_users_and_timestamps(taobao_run, taobao_oracle_result):
    _check_users(taobao_run, taobao_oracle_result[0], TAOBAO)
    _check_event_types(taobao_run)
    tagged = taobao_run.tagged
    # First line: 1,2268318,2520377,pv,1511544070 -> 2017-11-24 17:21:10 UTC (2017-11-25 01:21:10 Beijing).
    assert _utc_text(tagged, (F.col("user_id") == "1") & (F.col("item_id") == "2268318")) == ["2017-11-24 17:21:10"]
    assert dt.datetime.fromtimestamp(1511544070, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") == "2017-11-24 17:21:10"
    # The window is Beijing days: nothing clean before 2017-11-24 16:00 UTC or from 2017-12-03 16:00 UTC.
    span = tagged.filter(F.col("reason").isNull()).agg(F.date_format(F.min("ts"), "yyyy-MM-dd HH:mm:ss"),
                                                        F.date_format(F.max("ts"), "yyyy-MM-dd HH:mm:ss")).first()
    assert span[0] >= "2017-11-24 16:00:00" and span[1] < "2017-12-03 16:00:00"
    # The truncated last line is quarantined with its (partial) values.
    malformed = tagged.filter(F.col("reason") == "malformed_row").select("user_id", "item_id").collect()
    assert [tuple(r) for r in malformed] == [("100370", "1968385")]


# ---------------------------------------------------------------------------------------------
# rees46_multicategory
# ---------------------------------------------------------------------------------------------

REES46 = "rees46_multicategory"


@pytest.fixture(scope="module")
def rees46_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, REES46, request)


@pytest.fixture(scope="module")
def rees46_oracle_result(shared_data) -> tuple[dict, list[list[str]]]:
    return rees46_oracle(shared_data / "rees46_multicategory_oct2019_head" / "2019-Oct_head.csv")


def test_rees46_source_facts(rees46_oracle_result):
    _, lines = rees46_oracle_result
    complete = [f for f in lines if len(f) == 9]
    assert len(complete) == 17_434 and len(lines) == 17_435 and len(lines[-1]) == 8
    # SOURCE.md's type and user counts include the truncated last line (a view by a cut-off user id).
    assert Counter(f[1] for f in lines) == {"view": 17_056, "purchase": 214, "cart": 165}
    assert len({f[7] for f in lines}) == 4_505 and lines[-1][7] not in {f[7] for f in complete}


def test_rees46_counts(rees46_run, rees46_oracle_result):
    _check_counts(rees46_run, rees46_oracle_result[0], REES46)


def test_rees46_users_and_timestamps(rees46_run, rees46_oracle_result):
    _check_users(rees46_run, rees46_oracle_result[0], REES46)
    _check_event_types(rees46_run)
    tagged = rees46_run.tagged
    # `2019-10-01 00:00:00 UTC` is already UTC.
    assert _utc_text(tagged, (F.col("user_id") == "541312140") & (F.col("item_id") == "44600062")) == [
        "2019-10-01 00:00:00", "2019-10-01 00:00:15"]
    span = tagged.filter(F.col("reason").isNull()).agg(F.date_format(F.min("ts"), "HH:mm:ss"),
                                                        F.date_format(F.max("ts"), "HH:mm:ss")).first()
    assert tuple(span) == ("00:00:00", "02:50:00")
    # An empty category_code falls back to the numeric category id.
    row = tagged.filter((F.col("user_id") == "541312140") & (F.col("item_id") == "44600062")).select("category").first()
    assert row["category"] == "2103807459595387724"


# ---------------------------------------------------------------------------------------------
# flat_labelled: the generated sample in tests/data (see make_flat_sample.py for its dirty rows).
# ---------------------------------------------------------------------------------------------

FLAT = "flat_labelled"


@pytest.fixture(scope="module")
def flat_run(spark, request) -> SparkRun:
    return _run_preset(spark, FLAT, request, keep_raw=True)


@pytest.fixture(scope="module")
def flat_oracle_result() -> tuple[dict, pd.DataFrame]:
    return flat_oracle(FLAT_SAMPLE)


def test_flat_counts(flat_run, flat_oracle_result):
    _check_counts(flat_run, flat_oracle_result[0], FLAT)
    assert flat_run.preset.resolved_paths() == [str(FLAT_SAMPLE)]
    # The tables run_clean writes hold the same rows; the quarantine keeps each original line.
    assert clean.accepted_events(flat_run.tagged).count() == EXPECTED[FLAT]["clean"]
    quarantine = [(r["reason"], r["raw"]) for r in clean.quarantined_rows(flat_run.tagged).collect()]
    assert len(quarantine) == sum(EXPECTED[FLAT]["quarantined"].values())
    # `raw` is the original row as JSON (null fields left out).
    bad_label = [raw for reason, raw in quarantine if reason == "bad_label"]
    assert len(bad_label) == 1 and '"purchased":"maybe"' in bad_label[0] and '"user_id":"100201"' in bad_label[0]
    assert [raw.count('"user_id"') for reason, raw in quarantine if reason == "missing_user_id"] == [0, 0]


def test_flat_query_text_survives_cleaning(flat_run, flat_oracle_result):
    accepted = flat_run.tagged.filter(F.col("reason").isNull())
    queries = {(r["user_id"], r["query"]) for r in accepted.select("user_id", "query").collect()}
    _, frame = flat_oracle_result
    expected = {(u, q) for u, q, reason in zip(frame["user"], frame["clean_query"], frame["reason"]) if reason is None}
    assert queries == expected
    assert ("100003", "促销 笔记本电脑 鼠标") in queries
    assert ("100005", "笔记本电脑 轻薄") in queries
    assert sum("笔记本电脑" in q for _, q in queries) >= 2
    assert not any(ch in q for _, q in queries for ch in "<>&;!")
    # The snapshot's fixed export time, in UTC.
    assert _utc_text(accepted.select("ts").distinct(), F.lit(True)) == ["2024-06-30 00:00:00"]


def test_flat_users_and_labels(flat_run, flat_oracle_result):
    _check_users(flat_run, flat_oracle_result[0], FLAT)
    _, frame = flat_oracle_result
    accepted = frame[frame["reason"].isna()]
    users = {r["user_id"]: r for r in clean.derive_users(flat_run.tagged, gender_values=flat_run.preset.gender_values).collect()}
    expected_users = accepted.groupby("user").agg(age=("age", "first"), gender=("gender", "first"))
    assert set(users) == set(expected_users.index)
    for user_id, row in expected_users.iterrows():
        assert users[user_id]["age"] == int(row["age"])
        assert users[user_id]["gender"] == FLAT_GENDERS[row["gender"].strip().lower()]
    genders = Counter(u["gender"] for u in users.values())
    assert set(genders) == {"M", "F"}
    raw_gender = dict(zip(accepted["user"], accepted["gender"]))
    assert {users[u]["gender"] for u, g in raw_gender.items() if g == "男"} == {"M"}
    assert {users[u]["gender"] for u, g in raw_gender.items() if g == "女"} == {"F"}

    labels = {r["user_id"]: r["label"] for r in clean.derive_labels(flat_run.tagged).collect()}
    expected_labels = accepted.groupby("user")["label"].max().astype(int).to_dict()
    assert labels == expected_labels and len(labels) == EXPECTED[FLAT]["users"]
    # The user whose only row has the label "maybe" is quarantined, not labelled.
    assert "100201" not in labels
    assert set(labels.values()) == {0, 1}


def test_flat_generator_is_reproducible(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_flat_sample", REPO / "tests" / "data" / "make_flat_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUTPUT", tmp_path / "flat.csv")
    module.main()
    assert (tmp_path / "flat.csv").read_bytes() == FLAT_SAMPLE.read_bytes()


# ---------------------------------------------------------------------------------------------
# Oracles of the sources added with "Every real source, bad rows accounted for".
# ---------------------------------------------------------------------------------------------

# JData 2017 -----------------------------------------------------------------------------------

JDATA_ACTIONS = ("JData_Action_201602.csv", "JData_Action_201603.csv", "JData_Action_201604.csv")
JDATA_TYPES = {"1": "view", "2": "cart", "3": "remove_cart", "4": "purchase", "5": "fav", "6": "view"}
JDATA_AGES = {"16-25岁": 20, "26-35岁": 30, "36-45岁": 40, "46-55岁": 50, "56岁以上": 60}
JDATA_SEXES = {"0": "M", "1": "F", "2": "U"}


def _float_id(text: str) -> str | None:
    """`266079.0` -> `266079`, empty -> None."""
    text = text.strip()
    return None if not text else str(int(float(text))) if re.fullmatch(r"\d+(\.0+)?", text) else text


def jdata_oracle(folder: Path) -> dict:
    """Actions with csv + datetime, the GBK user list and the product list; no ecominsight code."""
    rows = []
    for name in JDATA_ACTIONS:
        with (folder / name).open(encoding="utf-8", newline="") as handle:
            for rec in csv.DictReader(handle):
                user = _float_id(rec["user_id"])
                ts = dt.datetime.strptime(rec["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING).astimezone(UTC)
                event = JDATA_TYPES.get(rec["type"].strip())
                reason = "missing_user_id" if user is None else "unknown_event_type" if event is None else None
                rows.append({"reason": reason, "user": user, "event": event, "item": rec["sku_id"].strip(),
                             "key": (user, ts, event, rec["sku_id"].strip())})
    frame = pd.DataFrame(rows)
    frame["reason"] = _mark_duplicates(frame, ["key"])
    summary = _summary(frame)
    with (folder / "JData_User.csv").open(encoding="gbk", newline="") as handle:
        listed = list(csv.DictReader(handle))
    with (folder / "JData_Product.csv").open(encoding="utf-8", newline="") as handle:
        products = list(csv.DictReader(handle))
    accepted = frame[frame["reason"].isna()]
    active = set(accepted["user"])
    listed_ids = {u["user_id"] for u in listed}
    summary["side"] = {
        "users": {"input": len(listed), "clean": len(listed_ids), "quarantined": {}},
        "items": {"input": len(products), "clean": len({p["sku_id"] for p in products}), "quarantined": {}},
    }
    summary["listed_users"] = {u["user_id"]: (JDATA_AGES.get(u["age"]), JDATA_SEXES[u["sex"]], u["user_reg_tm"]) for u in listed}
    summary["listed_levels"] = {u["user_id"]: u["user_lv_cd"].strip() for u in listed}
    summary["users_table"] = len(listed_ids | active)
    summary["users_without_events"] = len(listed_ids - active)
    summary["items_table"] = len({p["sku_id"] for p in products} | set(accepted["item"]))
    summary["listed_active_users"] = len(listed_ids & active)
    return summary


# UCI Online Retail CSV samples --------------------------------------------------------------------

UCI_RENAMES = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}


def read_uci(path: Path, sep: str) -> pd.DataFrame:
    """pandas' own CSV parser (RFC 4180 quoting); `NA` and empty ids become NaN."""
    return pd.read_csv(path, sep=sep, dtype={"InvoiceNo": str, "StockCode": str, "Description": str,
                                              "InvoiceDate": str}).rename(columns=UCI_RENAMES)


# Ta-Feng ------------------------------------------------------------------------------------------

TAFENG_AGES = {"<25": 22, "25-29": 27, "30-34": 32, "35-39": 37, "40-44": 42, "45-49": 47, "50-54": 52,
               "55-59": 57, "60-64": 62, ">65": 67}


def tafeng_oracle(archive: Path) -> tuple[dict, pd.DataFrame]:
    with zipfile.ZipFile(archive) as bundle:
        (member,) = bundle.namelist()
        with bundle.open(member) as handle:
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    frame["user"] = frame["CUSTOMER_ID"].str.strip().replace("", None)
    frame["event"] = "purchase"
    day = pd.to_datetime(frame["TRANSACTION_DT"], format="%m/%d/%Y", errors="coerce")
    amount = pd.to_numeric(frame["AMOUNT"], errors="coerce")
    unit_price = pd.to_numeric(frame["SALES_PRICE"], errors="coerce") / amount
    frame["reason"] = _first_reason(frame, [("missing_user_id", frame["user"].isna()), ("bad_timestamp", day.isna())])
    frame["key_day"], frame["key_price"], frame["key_amount"] = day, unit_price, amount
    frame["reason"] = _mark_duplicates(frame, ["user", "key_day", "PRODUCT_ID", "key_price", "key_amount"])
    return _summary(frame), frame


# CDNOW --------------------------------------------------------------------------------------------

def cdnow_oracle(path: Path) -> tuple[dict, list[tuple[int, list[str]]]]:
    """str.split() on every line after the header; (line number, fields) kept for the line checks."""
    with path.open(encoding="utf-8", newline=None) as handle:
        lines = [(number, line.split()) for number, line in enumerate(handle, start=1)][1:]
    rows = []
    for number, fields in lines:
        if len(fields) != 4:
            rows.append({"reason": "malformed_row", "user": None, "event": None, "key": None, "line": number})
            continue
        user, day, cds, value = fields
        key = (user, day, float(value) / float(cds), float(cds))
        rows.append({"reason": None, "user": user, "event": "purchase", "key": key, "line": number})
    frame = pd.DataFrame(rows)
    frame["reason"] = _mark_duplicates(frame, ["key"])
    return _summary(frame), frame


# Amazon Fashion 5-core ----------------------------------------------------------------------------

def amazon_oracle(path: Path) -> tuple[dict, dict]:
    """Events (verified reviews as purchases) and reviews, with json + pandas."""
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    frame = pd.DataFrame(records)
    frame["user"], frame["event"] = frame["reviewerID"], "purchase"
    frame["reason"] = _first_reason(frame, [("unverified_review", frame["verified"] != True)])  # noqa: E712
    frame["reason"] = _mark_duplicates(frame, ["user", "unixReviewTime", "asin"])
    events = _summary(frame)

    reviews = pd.DataFrame({
        "user": frame["reviewerID"], "item": frame["asin"], "ts": frame["unixReviewTime"], "rating": frame["overall"],
        "text": [clean_query(" ".join(t for t in (s, r) if isinstance(t, str)))
                 for s, r in zip(frame["summary"], frame["reviewText"])],
    })
    bad_rating = reviews["rating"].notna() & ~reviews["rating"].between(1, 5)
    empty = reviews["text"].isna() & reviews["rating"].isna()
    reviews["reason"] = _first_reason(reviews, [("bad_rating", bad_rating), ("empty_review", empty)])
    # A copy with a rating is kept before one without (a stable sort keeps the file order otherwise).
    ordered = reviews.sort_values("rating", na_position="last", kind="stable")
    ordered["reason"] = _mark_duplicates(ordered, ["user", "item", "ts", "text"])
    reviews["reason"] = ordered["reason"].reindex(reviews.index)
    accepted = reviews[reviews["reason"].isna()]
    review_summary = {
        "input": len(reviews),
        "clean": len(accepted),
        "quarantined": {k: int(v) for k, v in reviews["reason"].dropna().value_counts().items()},
        "ratings": {float(k): int(v) for k, v in accepted["rating"].value_counts().items()},
        "null_ratings": int(accepted["rating"].isna().sum()),
    }
    return events, review_summary


def _check_side(by_reason: Counter, n_input: int, expected: dict, source: Preset | TableSource) -> None:
    """`source`: the preset or side table whose raw files were read."""
    assert n_input == expected["input"]
    assert by_reason.get(CLEAN, 0) == expected["clean"]
    assert {r: n for r, n in by_reason.items() if r is not CLEAN} == expected["quarantined"]
    assert n_input == sum(by_reason.values()) == records_of(source)


# ---------------------------------------------------------------------------------------------
# jdata2017: actions (events), the GBK user list (users) and the product list (items).
# ---------------------------------------------------------------------------------------------

JDATA = "jdata2017"


@pytest.fixture(scope="module")
def jdata_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, JDATA, request)


@pytest.fixture(scope="module")
def jdata_side(spark, jdata_run, request) -> dict[str, tuple[int, Counter, DataFrame]]:
    return {table: _run_side_table(spark, jdata_run.preset, table, request) for table in ("users", "items")}


@pytest.fixture(scope="module")
def jdata_oracle_result(shared_data) -> dict:
    return jdata_oracle(shared_data / "jdata2017_heads")


def test_jdata_source_facts(shared_data):
    folder = shared_data / "jdata2017_heads"
    for name, orders, users in zip(JDATA_ACTIONS, (38, 126, 36), (1_030, 929, 1_171)):
        frame = pd.read_csv(folder / name, dtype=str)
        assert len(frame) == 29_999 and (frame["type"] == "4").sum() == orders and frame["user_id"].nunique() == users
    listed = pd.read_csv(folder / "JData_User.csv", dtype=str, encoding="gbk")
    assert len(listed) == 29_999 and listed["user_id"].astype(int).agg(["min", "max"]).tolist() == [200_001, 229_999]
    assert set(listed["age"]) == {*JDATA_AGES, "-1"} and set(listed["sex"]) == set(JDATA_SEXES)
    assert len(pd.read_csv(folder / "JData_Product.csv", dtype=str)) == 24_187


def test_jdata_counts(jdata_run, jdata_oracle_result):
    _check_counts(jdata_run, jdata_oracle_result, JDATA)
    # SOURCE.md's 38 + 126 + 36 orders; one repeats another in the same second.
    assert jdata_run.clean_events["purchase"] == 38 + 126 + 36 - 1


def test_jdata_users_and_items_from_their_own_files(jdata_run, jdata_side, jdata_oracle_result):
    _check_users(jdata_run, jdata_oracle_result, JDATA)
    _check_event_types(jdata_run)
    expected, oracle = EXPECTED[JDATA], jdata_oracle_result
    sources = {"users": jdata_run.preset.user_source, "items": jdata_run.preset.item_source}
    for table, source in sources.items():
        n_input, by_reason, _ = jdata_side[table]
        assert oracle["side"][table] == expected["side"][table]
        _check_side(by_reason, n_input, expected["side"][table], source)
    listed_users = clean.accepted_rows(jdata_side["users"][2], schema.USERS)
    users = clean.combine_users(listed_users, clean.derive_users(jdata_run.tagged))
    items = clean.combine_items(clean.accepted_rows(jdata_side["items"][2], schema.ITEMS), clean.derive_items(jdata_run.tagged))
    events = clean.accepted_events(jdata_run.tagged)
    assert users.count() == users.select("user_id").distinct().count() == oracle["users_table"] == expected["users_table"]
    assert items.count() == items.select("item_id").distinct().count() == oracle["items_table"] == expected["items_table"]
    without = data_quality.users_without_events(users, events)
    assert without == oracle["users_without_events"] == expected["users_without_events"]
    assert expected["users_table"] - without == expected["users"]
    # Every listed user's attributes, decoded from GBK: bucket -> age, sex code -> gender, registration day (Beijing).
    got = {r["user_id"]: (r["age"], r["gender"], r["signup_ts"]) for r in listed_users.collect()}
    want = {uid: (age, sex, dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=BEIJING).astimezone(UTC)
                  .replace(tzinfo=None)) for uid, (age, sex, day) in oracle["listed_users"].items()}
    assert got == want
    assert got["200001"] == (60, "U", dt.datetime(2016, 1, 25, 16))  # 56岁以上, sex 2, registered 2016-01-26
    # user_lv_cd, the membership level, is the preset's categorical `user_level` attribute.
    levels = {r["user_id"]: dict(r["attributes"]) for r in listed_users.collect()}
    assert levels == {uid: {"user_level": level} for uid, level in oracle["listed_levels"].items()}
    assert set(oracle["listed_levels"].values()) == {"1", "2", "3", "4", "5"}
    # A listed user with events keeps the list's attributes in the combined table.
    active_listed = users.join(events.select("user_id").distinct(), "user_id").join(listed_users.select("user_id"), "user_id")
    assert active_listed.count() == oracle["listed_active_users"]


def test_jdata_ids_and_timestamps(jdata_run):
    tagged = jdata_run.tagged
    # First action: 266079.0,138778,2016-01-31 23:59:02,,1 (browse), Beijing time -> 15:59:02 UTC.
    first = (F.col("user_id") == "266079") & (F.col("item_id") == "138778") & (F.col("reason").isNull())
    assert _utc_text(tagged, first & (F.col("event_type") == "view"))[0] == "2016-01-31 15:59:02"
    assert tagged.filter(F.col("user_id").contains(".")).count() == 0
    categories = {r[0] for r in tagged.filter(F.col("reason").isNull()).select("category").distinct().collect()}
    assert categories == {"4", "5", "6", "7", "8", "9", "10", "11"}


# ---------------------------------------------------------------------------------------------
# UCI Online Retail CSV samples: a pandas export and an R export with mixed date styles.
# ---------------------------------------------------------------------------------------------

UCI_HEAD, UCI_RANDOM = "uci_online_retail_head30k", "uci_online_retail_random5k"
UCI_RANDOM_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%y %H:%M")


@pytest.fixture(scope="module")
def uci_head_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, UCI_HEAD, request)


@pytest.fixture(scope="module")
def uci_random_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, UCI_RANDOM, request, keep_raw=True)


@pytest.fixture(scope="module")
def uci_frames(shared_data) -> dict[str, pd.DataFrame]:
    folder = shared_data / "uci_online_retail"
    return {UCI_HEAD: read_uci(folder / "online_retail_head30k.csv", ","),
            UCI_RANDOM: read_uci(folder / "online_retail_random5k.csv", ";")}


def test_uci_source_facts(uci_frames):
    head, sample = uci_frames[UCI_HEAD], uci_frames[UCI_RANDOM]
    assert len(head) == 30_000 and head["Invoice"].nunique() == 1_406 and head["Customer ID"].nunique() == 755
    assert head["Invoice"].str.startswith("C").sum() == 494 and round(head["Customer ID"].isna().mean(), 3) == 0.335
    assert (head["InvoiceDate"].min(), head["InvoiceDate"].max()) == ("2010-12-01 08:26:00", "2010-12-14 13:10:00")
    assert len(sample) == 5_000 and sample["Customer ID"].nunique() == 1_039
    assert round(sample["Customer ID"].isna().mean(), 3) == 0.358 and sample["X"].agg(["min", "max"]).tolist() == [39, 99_976]
    styles = Counter("4-digit" if re.fullmatch(r"\d+/\d+/\d{4} \d+:\d\d", d) else "2-digit" for d in sample["InvoiceDate"])
    assert styles == {"4-digit": 2_445, "2-digit": 2_555}


@pytest.mark.parametrize("name, formats", [(UCI_HEAD, ("%Y-%m-%d %H:%M:%S",)), (UCI_RANDOM, UCI_RANDOM_FORMATS)])
def test_uci_counts(name, formats, uci_head_run, uci_random_run, uci_frames):
    run = uci_head_run if name == UCI_HEAD else uci_random_run
    summary, tagged = retail_oracle(uci_frames[name], formats)
    assert tagged["ts"].notna().all()
    _check_counts(run, summary, name)
    _check_users(run, summary, name)
    _check_event_types(run)


def test_uci_random_sample_dates_and_quotes(uci_random_run):
    tagged = uci_random_run.tagged
    # Both date styles, month first; London winter time is UTC.
    assert _utc_text(tagged, F.col("raw").contains('"X":"95163"')) == ["2011-02-20 11:39:00"]  # 2/20/11 11:39
    assert _utc_text(tagged, F.col("raw").contains('"X":"11306"')) == ["2010-12-06 10:08:00"]  # 12/06/2010 10:08
    span = tagged.filter(F.col("reason").isNull()).agg(F.date_format(F.min("ts"), "yyyy-MM-dd"),
                                                        F.date_format(F.max("ts"), "yyyy-MM-dd")).first()
    assert tuple(span) == ("2010-12-01", "2011-02-23")
    # RFC 4180 quoting: "LETTER ""E"" BLING KEY RING" is one field holding two quote characters.
    raw = [r["raw"] for r in tagged.filter(F.col("raw").contains('"X":"42054"')).collect()]
    assert len(raw) == 1 and json.loads(raw[0])["Description"] == 'LETTER "E" BLING KEY RING'


# ---------------------------------------------------------------------------------------------
# tafeng_grocery: the complete data set, a zipped CSV with a BOM.
# ---------------------------------------------------------------------------------------------

TAFENG = "tafeng_grocery"


@pytest.fixture(scope="module")
def tafeng_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, TAFENG, request)


@pytest.fixture(scope="module")
def tafeng_oracle_result(shared_data) -> tuple[dict, pd.DataFrame]:
    return tafeng_oracle(shared_data / "tafeng_grocery" / "ta_feng.csv.zip")


def test_tafeng_source_facts(tafeng_oracle_result, shared_data):
    _, frame = tafeng_oracle_result
    assert len(frame) == 817_741 and frame["CUSTOMER_ID"].nunique() == 32_266 and frame["PRODUCT_ID"].nunique() == 23_812
    assert len(frame[["CUSTOMER_ID", "TRANSACTION_DT"]].drop_duplicates()) == 119_578
    assert (frame["AGE_GROUP"] == "").sum() == 22_362 and set(frame["AGE_GROUP"]) == {*TAFENG_AGES, ""}
    assert (frame["key_day"].min(), frame["key_day"].max()) == (pd.Timestamp("2000-11-01"), pd.Timestamp("2001-02-28"))
    with zipfile.ZipFile(shared_data / "tafeng_grocery" / "ta_feng.csv.zip") as bundle:
        head = bundle.open("ta_feng_all_months_merged.csv").read(40)
    assert head.startswith('\ufeff"TRANSACTION_DT","CUSTOMER_ID"'.encode()) and bundle.namelist() == ["ta_feng_all_months_merged.csv"]


def test_tafeng_counts(tafeng_run, tafeng_oracle_result):
    _check_counts(tafeng_run, tafeng_oracle_result[0], TAFENG)
    # The byte order mark is not part of the first column's name.
    assert tafeng_run.columns[:2] == ["TRANSACTION_DT", "CUSTOMER_ID"]


def test_tafeng_users_baskets_and_prices(tafeng_run, tafeng_oracle_result):
    summary, frame = tafeng_oracle_result
    _check_users(tafeng_run, summary, TAFENG)
    _check_event_types(tafeng_run)
    users = clean.derive_users(tafeng_run.tagged, age_values=tafeng_run.preset.age_values)
    got = {r["user_id"]: (r["age"], r["region"]) for r in users.collect()}
    firsts = frame.drop_duplicates("CUSTOMER_ID")  # SOURCE.md: every customer has one age group and one area
    want = {c: (TAFENG_AGES.get(a), None if p == "Unknown" else p)
            for c, a, p in zip(firsts["CUSTOMER_ID"], firsts["AGE_GROUP"], firsts["PIN_CODE"])}
    assert got == want and got["01104905"] == (47, "115")  # the first line: 45-49, area 115
    stats = tafeng_run.tagged.filter(F.col("reason").isNull()).agg(
        F.countDistinct("session_id").alias("baskets"), F.sum(F.col("price") * F.col("quantity")).alias("sales"),
        F.min("ts").alias("first"), F.max("ts").alias("last"),
    ).first()
    assert stats["baskets"] == 119_578
    assert stats["sales"] == pytest.approx(pd.to_numeric(frame["SALES_PRICE"]).sum(), rel=1e-9)
    # Day-resolution dates stay on their calendar day.
    assert (stats["first"], stats["last"]) == (dt.datetime(2000, 11, 1), dt.datetime(2001, 2, 28))


# ---------------------------------------------------------------------------------------------
# cdnow: whitespace-aligned text, read line by line (so the quarantine knows each row's line).
# ---------------------------------------------------------------------------------------------

CDNOW = "cdnow"


@pytest.fixture(scope="module")
def cdnow_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, CDNOW, request)


@pytest.fixture(scope="module")
def cdnow_oracle_result(shared_data) -> tuple[dict, pd.DataFrame]:
    return cdnow_oracle(shared_data / "cdnow_cd_purchases" / "CDNOW_master.txt")


def test_cdnow_source_facts(cdnow_oracle_result, shared_data):
    _, frame = cdnow_oracle_result
    keys = pd.DataFrame(frame["key"].tolist(), columns=["user", "day", "price", "cds"])
    assert len(frame) == 69_659 and keys["user"].nunique() == 23_570
    assert (keys["day"].min(), keys["day"].max()) == ("19970101", "19980630") and (keys["price"] == 0).sum() == 80
    raw = (shared_data / "cdnow_cd_purchases" / "CDNOW_master.txt").read_bytes()
    assert raw.startswith(b" customer_id  date") and raw.count(b"\r\n") == 69_660 and raw.count(b"\n") == 69_660


def test_cdnow_counts(cdnow_run, cdnow_oracle_result):
    _check_counts(cdnow_run, cdnow_oracle_result[0], CDNOW)
    _check_users(cdnow_run, cdnow_oracle_result[0], CDNOW)
    _check_event_types(cdnow_run)


def test_cdnow_lines_and_values(cdnow_run, cdnow_oracle_result):
    _, frame = cdnow_oracle_result
    tagged = cdnow_run.tagged
    # Each row knows its physical line: every data line once, and the duplicates are the oracle's repeats.
    lines = tagged.agg(F.min("source_line"), F.max("source_line"), F.countDistinct("source_line")).first()
    assert tuple(lines) == (2, 69_660, 69_659)
    duplicates = {r[0] for r in tagged.filter(F.col("reason") == "duplicate").select("source_line").collect()}
    assert duplicates == set(frame.loc[frame["reason"] == "duplicate", "line"])
    # Line 5: " 00003 19970102  2   20.76" -> 2 CDs at 10.38, on that calendar day, basket customer x day.
    row = tagged.filter(F.col("source_line") == 5).select("user_id", "price", "quantity", "session_id", "ts").first()
    assert (row["user_id"], row["quantity"], row["session_id"], row["ts"]) == ("00003", 2.0, "00003-19970102", dt.datetime(1997, 1, 2))
    assert row["price"] == pytest.approx(10.38)


# ---------------------------------------------------------------------------------------------
# amazon_fashion_5core: JSON lines -> reviews, and verified reviews as purchase events.
# ---------------------------------------------------------------------------------------------

AMAZON = "amazon_fashion_5core"


@pytest.fixture(scope="module")
def amazon_run(spark, shared_data, request) -> SparkRun:
    return _run_preset(spark, AMAZON, request)


@pytest.fixture(scope="module")
def amazon_reviews(spark, amazon_run, request) -> tuple[int, Counter, DataFrame]:
    return _run_side_table(spark, amazon_run.preset, "reviews", request)


@pytest.fixture(scope="module")
def amazon_oracle_result(shared_data) -> tuple[dict, dict]:
    return amazon_oracle(shared_data / "amazon_fashion_5core" / "AMAZON_FASHION_5.json")


def test_amazon_source_facts(shared_data):
    frame = pd.read_json(shared_data / "amazon_fashion_5core" / "AMAZON_FASHION_5.json", lines=True)
    assert len(frame) == 3_176 and frame["reviewerID"].nunique() == 406 and frame["asin"].nunique() == 31
    assert frame["overall"].value_counts().to_dict() == {5.0: 2_157, 4.0: 471, 3.0: 337, 1.0: 117, 2.0: 93}
    assert frame.duplicated(["reviewerID", "asin", "reviewText", "unixReviewTime"]).sum() == 89
    assert frame["overall"].isna().sum() == 1 and frame["reviewText"].isna().sum() == 16
    assert (~frame["verified"]).sum() == 97 and frame.groupby("reviewerID")["verified"].any().sum() == 395


def test_amazon_counts(amazon_run, amazon_oracle_result):
    _check_counts(amazon_run, amazon_oracle_result[0], AMAZON)
    _check_users(amazon_run, amazon_oracle_result[0], AMAZON)
    _check_event_types(amazon_run)


def test_amazon_reviews(amazon_reviews, amazon_oracle_result):
    n_input, by_reason, tagged = amazon_reviews
    _, oracle = amazon_oracle_result
    expected = EXPECTED[AMAZON]["side"]["reviews"]
    assert {k: oracle[k] for k in expected} == expected
    _check_side(by_reason, n_input, expected, load_preset(AMAZON))  # reviews come from the preset's own files
    reviews = clean.accepted_rows(tagged, schema.REVIEWS)
    assert reviews.schema.fieldNames() == schema.REVIEWS.fieldNames()
    ratings = {r["rating"]: r["count"] for r in reviews.groupBy("rating").count().collect()}
    assert ratings == oracle["ratings"] == EXPECTED[AMAZON]["ratings"] and oracle["null_ratings"] == 0
    # The one review without a rating is a copy of a rated one for another variant: the rated copy stays.
    unrated = tagged.filter(F.col("rating").isNull()).select("reason", "user_id", "item_id", "ts", "text").collect()
    assert [r["reason"] for r in unrated] == ["duplicate"]
    twin = reviews.filter((F.col("user_id") == unrated[0]["user_id"]) & (F.col("item_id") == unrated[0]["item_id"])
                          & (F.col("ts") == unrated[0]["ts"]) & (F.col("text") == unrated[0]["text"]))
    assert [r["rating"] for r in twin.collect()] == [5.0]
    # Text is the headline and the body, cleaned: letters and digits survive, punctuation does not.
    first = reviews.filter((F.col("user_id") == "ALJ66O1Y6SLHA") & (F.col("item_id") == "B000K2PJ4K")).select("text").first()
    assert first["text"] == "Five Stars Great product and price"


@pytest.mark.parametrize("change, message", [
    ({"format": "text"}, "format text needs delimiter_regex"),
    ({"delimiter_regex": r"\s+"}, "delimiter_regex needs format text"),
    ({"format": "text", "delimiter_regex": r"\s+", "encoding": "GBK"}, "format text reads UTF-8 only"),
    ({"escape": "\\\\"}, "escape: '\\\\\\\\' must be a single character"),
    ({"timestamp": {"column": "t", "format": []}}, "timestamp.format: must not be empty"),
    ({"timestamp": {"column": ["t", "u"]}}, "timestamp.column: expected a string, got ['t', 'u']"),
    ({"age_values": {"16-25": "young"}}, "age_values: invalid literal"),
    ({"reviews": {"user_id": "u", "text": "x"}}, "reviews needs user_id and item_id"),
    ({"reviews": {"user_id": "u", "item_id": "i", "stars": "s"}}, "reviews.stars is not a canonical field"),
    ({"user_source": {"format": "csv", "paths": ["u.csv"]}}, "user_source: missing key 'fields'"),
    ({"user_source": {"format": "csv", "paths": ["u.csv"], "fields": {"age": "a"}}}, "user_source.fields.user_id is required"),
    ({"item_source": {"format": "csv", "paths": ["i.csv"], "fields": {"item_id": "i"}, "age_values": {}}},
     "unknown preset key 'item_source.age_values'"),
    ({"item_source": {"format": "csv", "paths": ["i.csv"], "fields": {"item_id": "i", "user_id": "u"}}},
     "item_source.fields.user_id is not a canonical field"),
    ({"user_attributes": {"Tier": {"column": "t", "kind": "categorical"}}},
     "user_attributes.Tier: an attribute name must be lower-case letters, digits and _, starting with a letter"),
    ({"user_attributes": {"region": {"column": "t", "kind": "categorical"}}},
     "user_attributes.region: 'region' is a canonical field name"),
    ({"user_attributes": {"spend": {"column": "t", "kind": "numeric"}}}, "user_attributes.spend: 'spend' is a canonical field name"),
    ({"user_attributes": {"tier": {"column": "t", "kind": "ordinal"}}},
     "user_attributes.tier.kind: 'ordinal' is not one of categorical, numeric"),
    ({"user_attributes": {"tier": {"kind": "numeric"}}}, "user_attributes.tier: missing key 'column'"),
    ({"user_attributes": {"tier": "t"}}, "user_attributes.tier: expected a mapping, got str 't'"),
    ({"user_attributes": {"tier": {"column": "t", "kind": "numeric"}},
      "user_source": {"format": "csv", "paths": ["u.csv"], "fields": {"user_id": "id"},
                      "user_attributes": {"tier": {"column": "t", "kind": "categorical"}}}},
     "user_attributes.tier is numeric but user_source.user_attributes.tier is categorical"),
    ({"item_source": {"format": "csv", "paths": ["i.csv"], "fields": {"item_id": "i"},
                      "user_attributes": {"tier": {"column": "t", "kind": "categorical"}}}},
     "unknown preset key 'item_source.user_attributes'"),
    ({"personal": ["tier"]}, "personal[0]: 'tier' is not one of age, gender, region or a user_attributes name (none mapped)"),
])
def test_preset_errors_name_the_key(change, message):
    from ecominsight.config import ConfigError
    from ecominsight.presets import parse_preset

    base = {"name": "p", "format": "csv", "paths": ["x.csv"], "timestamp": {"column": "t"},
            "events": {"user_id": "u", "event_type": "e"}}
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        parse_preset({**base, **change}, where="conf/sources/p.yaml")
    assert str(raised.value).startswith("conf/sources/p.yaml: ") and "\n" not in str(raised.value)


def test_side_sources_and_format_lists_parse():
    from ecominsight.presets import parse_preset

    preset = parse_preset({
        "name": "p", "format": "csv", "paths": ["x.csv"], "events": {"user_id": "u", "event_type": "e"},
        "timestamp": {"column": "t", "format": ["M/d/yyyy H:mm", "M/d/yy H:mm"]},
        "user_source": {"format": "csv", "paths": ["u.csv"], "encoding": "GBK", "fields": {"user_id": "id"},
                        "timestamp": {"column": "reg", "format": "yyyy-MM-dd"}, "age_values": {"56岁以上": 60}},
    }, base_dir="/base")
    assert preset.timestamp.format == ("M/d/yyyy H:mm", "M/d/yy H:mm")
    side = preset.user_source
    assert (side.name, side.encoding, side.age_values, side.timestamp.format) == ("p.users", "GBK", {"56岁以上": 60}, "yyyy-MM-dd")
    assert side.resolved_paths() == ["/base/u.csv"] and preset.item_source is None and preset.reviews == {}
