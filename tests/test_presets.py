"""Every source preset in conf/sources against its real data, with exact counts.

Each preset is read and tagged the way `run_clean` does it (read_source -> resolve_aliases ->
tag_events -> mark_duplicates), once per module, persisted, and summarised with one groupBy. The
expected numbers come from an independent oracle per source, written with pandas or the csv module
straight from the raw file (no ecominsight code), and are also pinned as literals below, checked
against the numbers stated in each data folder's SOURCE.md where it states them.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight.io import read_source
from ecominsight.presets import Preset, load_preset
from ecominsight.schema import EVENT_TYPES
from ecominsight.stages import _tag_kwargs
from ecominsight.transforms import clean

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

    @property
    def n_clean(self) -> int:
        return self.by_reason.get(CLEAN, 0)

    @property
    def quarantined(self) -> dict[str, int]:
        return {reason: n for reason, n in self.by_reason.items() if reason is not CLEAN}


def _run_preset(spark, name: str, request, *, keep_raw: bool = False) -> SparkRun:
    preset = load_preset(name)
    raw = clean.resolve_aliases(read_source(spark, preset, preset.resolved_paths()), aliases=preset.aliases)
    tagged = clean.mark_duplicates(clean.tag_events(raw, **_tag_kwargs(preset, "test-run")))
    tagged = (tagged if keep_raw else tagged.drop("raw")).persist(StorageLevel.MEMORY_AND_DISK)
    request.addfinalizer(tagged.unpersist)
    by_reason: Counter = Counter()
    clean_events: Counter = Counter()
    for row in tagged.groupBy("reason", "event_type").count().collect():
        by_reason[row["reason"]] += row["count"]
        if row["reason"] is CLEAN:
            clean_events[row["event_type"]] += row["count"]
    return SparkRun(preset, raw.count(), by_reason, clean_events, tagged)


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
    # Accounting identity: no row lost, none invented.
    assert run.n_input == run.n_clean + sum(run.quarantined.values())


def _check_users(run: SparkRun, oracle: dict, name: str) -> None:
    users = clean.derive_users(run.tagged, gender_values=run.preset.gender_values)
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


def retail_oracle(frame: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """The cleaning rules for Online Retail II, in pandas; returns the summary and the tagged frame."""
    frame = frame.reset_index(drop=True)
    customer = frame["Customer ID"]
    assert (customer.dropna() % 1 == 0).all(), "customer ids are whole numbers stored as floats"
    out = pd.DataFrame({
        "user": customer.map(lambda v: None if pd.isna(v) else str(int(v))),
        "event": frame["Invoice"].str.startswith("C").map({True: "return", False: "purchase"}),
        "ts": pd.to_datetime(frame["InvoiceDate"], format="%Y-%m-%d %H:%M:%S").dt.tz_localize("Europe/London")
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
