"""Clean + fuse at scale: ecominsight on Spark local[2] vs the same work in plain pandas and in DuckDB SQL.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/etl.py --sizes 1000000 10000000

For each size, synthetic events (`ecominsight generate`, default profile, seed 7, 0.1 % planted bad
rows, Parquet) are generated once into --cache (benchmarks/.cache, gitignored), then on that input:
(a) `stages.run_clean` + `stages.run_fuse` on a fresh temporary lake in one local[2] session (session
start not counted), with peak RSS of the JVM (driver; executors live in it in local mode) and of the
Python workers sampled from /proc; (b) the same clean + fuse in plain pandas and (c) in DuckDB SQL
(2 threads), each in a subprocess whose own peak RSS comes from wait4, so that a pandas OOM is
reported as such. The `real` section times ecominsight on the complete Online Retail II and Ta-Feng
sets. Spark's stage timings (REST API of the UI) are summarised under `spark_profile`.
Results go to benchmarks/results/etl.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterator

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "etl.json"
CACHE = ROOT / "benchmarks" / ".cache"
CORES = 2
MASTER = f"local[{CORES}]"
SEED, BAD_FRACTION = 7, 0.001
MAX_EVENTS = 64
EVENT_TYPES = ("view", "search", "cart", "remove_cart", "fav", "purchase", "return")
REAL_PRESETS = ("online_retail_ii", "tafeng_grocery")
log = logging.getLogger("benchmarks.etl")


# ---------------------------------------------------------------------------------------------
# Memory sampling from /proc (psutil is not a dependency)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """All descendants of `pid` (from each process's parent id in /proc/<pid>/stat)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    parent_of[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parent_of.items() if parent == current]
        found += kids
        frontier += kids
    return found


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as comm:
            return comm.read().startswith("python")
    except OSError:
        return False


class PeakSampler:
    """Peak RSS of the JVM and of the sum of its Python worker processes, sampled every `every` s."""

    def __init__(self, jvm_pid: int, every: float = 0.25):
        self.jvm_pid, self.every = jvm_pid, every
        self.peak_jvm = self.peak_workers = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_jvm = max(self.peak_jvm, _rss_mb(self.jvm_pid))
            # Only Python processes: a short-lived fork of the JVM (Hadoop's shell calls) shows the JVM's own RSS.
            self.peak_workers = max(self.peak_workers, sum(_rss_mb(p) for p in _children(self.jvm_pid) if _is_python(p)))
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# (a) ecominsight on Spark


def benchmark_session(extra_conf: dict[str, str] | None = None) -> ContextManager[SparkSession]:
    """conf/local.yaml's Spark settings on MASTER, then `extra_conf`, for a `with` block."""
    from ecominsight.config import load_config
    from ecominsight.session import spark_session

    config = load_config("local", [f"spark.master={MASTER}"])
    # The UI's REST API gives the stage timings of the profile.
    return spark_session("ecominsight-etl-benchmark", MASTER,
                         {**config.spark.conf, "spark.ui.enabled": "true", **(extra_conf or {})})


def spark_rest(spark, path: str) -> Any:
    """GET `path` of the running application from the Spark UI's REST API (None without a UI)."""
    url = spark.sparkContext.uiWebUrl
    if not url:
        return None
    app = spark.sparkContext.applicationId
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/{path}", timeout=30) as reply:
        return json.load(reply)


def _stage_profile(spark, since_stage: int) -> list[dict[str, Any]]:
    """Executor run time since `since_stage` per job description (run_spark labels each table's write
    `write <zone>/<table>`), else per stage name (an action's call site), from the UI's REST API."""
    stages = spark_rest(spark, "stages?status=complete") or []
    totals: dict[str, dict[str, Any]] = {}
    for stage in stages:
        if stage["stageId"] < since_stage:
            continue
        key = (stage.get("description") or stage["name"]).split("\n")[0][:80]
        entry = totals.setdefault(key, {"stage": key, "executor_run_s": 0.0, "stages": 0, "tasks": 0,
                                        "shuffle_write_mb": 0.0, "input_mb": 0.0})
        entry["executor_run_s"] += stage["executorRunTime"] / 1000
        entry["stages"] += 1
        entry["tasks"] += stage["numTasks"]
        entry["shuffle_write_mb"] += stage["shuffleWriteBytes"] / 2**20
        entry["input_mb"] += stage["inputBytes"] / 2**20
    ranked = sorted(totals.values(), key=lambda e: -e["executor_run_s"])
    for entry in ranked:
        for name in ("executor_run_s", "shuffle_write_mb", "input_mb"):
            entry[name] = round(entry[name], 2)
    return ranked


def _next_stage_id(spark) -> int:
    """The id the application's next stage will get, from the same REST API as the profile."""
    return max((stage["stageId"] for stage in spark_rest(spark, "stages") or []), default=-1) + 1


class _Deadline:
    """Cancels every Spark job after `seconds` (and keeps cancelling until the run gives up)."""

    def __init__(self, spark, seconds: float | None):
        self.spark, self.seconds, self.expired = spark, seconds, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.seconds is None or self._stop.wait(self.seconds):
            return
        self.expired = True
        while not self._stop.is_set():
            self.spark.sparkContext.cancelAllJobs()
            self._stop.wait(2)

    def __enter__(self) -> "_Deadline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# The profile's largest entries kept in the results: clean's and fuse's writes and actions fit.
PROFILE_ENTRIES = 16
# Settings every Spark run of this benchmark uses (see run_spark).
SPARK_OVERRIDES = ("fuse.text_encoding=events",)


@contextlib.contextmanager
def _writes_labelled(spark) -> Iterator[None]:
    """Inside: every `Lake.write` labels its Spark jobs `write <zone>/<table>` (the job description, which
    adaptive execution's stages inherit), so that the profile gives time per table. Done here, around the
    library, because the library stays free of the SparkContext (tests/test_no_jvm.py: Spark Connect has none)."""
    from ecominsight.io import Lake

    context, unlabelled = spark.sparkContext, Lake.write

    def labelled(lake: Lake, df, table) -> str:
        previous = context.getLocalProperty("spark.job.description")
        context.setJobDescription(f"write {table}")
        try:
            return unlabelled(lake, df, table)
        finally:
            context.setLocalProperty("spark.job.description", previous)

    Lake.write = labelled
    try:
        yield
    finally:
        Lake.write = unlabelled


def run_spark(spark, preset: str, *, lake_dir: Path, overrides: list[str] = (), timeout_s: float | None = None) -> dict[str, Any]:
    """ecominsight clean + fuse of `preset` into a fresh lake: seconds, counts, peak memory, profile.
    A run past `timeout_s` is cancelled and reported as not finished (its time as a lower bound)."""
    from ecominsight import stages
    from ecominsight.config import load_config
    from ecominsight.io import Lake

    # The events text encoding, whatever the default: the pandas and DuckDB references re-implement
    # that one, so only with it do the three engines do the same work (like-for-like timings).
    config = load_config("local", [f"source.preset={preset}", f"lake={lake_dir}", f"spark.master={MASTER}",
                                   *SPARK_OVERRIDES, *overrides])
    lake = Lake(config.lake_path)
    first_stage = _next_stage_id(spark)
    jvm_pid = spark.sparkContext._gateway.proc.pid
    started = cleaned = time.perf_counter()
    try:
        with PeakSampler(jvm_pid) as sampler, _Deadline(spark, timeout_s) as deadline, _writes_labelled(spark):
            clean = stages.run_clean(spark, config, lake, "bench").to_dict()
            cleaned = time.perf_counter()
            fused = stages.run_fuse(spark, config, lake, "bench").to_dict()
            done = time.perf_counter()
    except Exception as err:  # noqa: BLE001 - a cancelled or failed run fails inside Spark with any of several errors
        # A failed run is a result too (the baselines' figures of the same size must not be lost with it).
        why = f"not finished within {timeout_s} s (cancelled)" if deadline.expired else _spark_failure(err)
        log.warning("spark run of %s failed: %s", preset, why)
        return {"spark_s": None, "spark_failure": why,
                "spark_clean_s": round(cleaned - started, 2) if cleaned > started else None,
                "peak_driver_rss_mb": round(sampler.peak_jvm), "peak_python_workers_rss_mb": round(sampler.peak_workers),
                "spark_profile_top": _stage_profile(spark, first_stage)[:PROFILE_ENTRIES]}
    return {"spark_s": round(done - started, 2), "spark_clean_s": round(cleaned - started, 2),
            "spark_fuse_s": round(done - cleaned, 2), "input_rows": clean["input_rows"], "clean_rows": clean["clean_rows"],
            "quarantined_by_reason": clean["quarantined_by_reason"], "current_users": fused["current_users"],
            "training_users_by_split": fused["training_users_by_split"],
            "peak_driver_rss_mb": round(sampler.peak_jvm), "peak_python_workers_rss_mb": round(sampler.peak_workers),
            "spark_profile_top": _stage_profile(spark, first_stage)[:PROFILE_ENTRIES]}


def _spark_failure(err: Exception) -> str:
    """The line of a Spark failure that names its cause (a JVM out-of-memory error where there is one)."""
    text = str(err)
    for line in text.splitlines():
        if "OutOfMemoryError" in line:
            return line.strip()[:300]
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


# ---------------------------------------------------------------------------------------------
# (b) plain pandas, as the seed article does it


def pandas_clean_fuse(data: Path, out: Path) -> dict[str, Any]:
    """Read, parse times, quarantine bad rows (missing user, bad time, unknown type, bad number),
    drop duplicates, then per user the last-64-event text and the numeric features, twice: as of
    the cutoff (data end - 90 days, with the label) and as of the data end. Parquet out."""
    import numpy as np
    import pandas as pd

    events = pd.read_parquet(data / "events")
    users = pd.read_parquet(data / "users")
    items = pd.read_parquet(data / "items")
    n_input = len(events)
    events["user_id"] = events["user_id"].astype("Int64").astype("string")
    events["ts"] = pd.to_datetime(events["event_time"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    reason = pd.Series(pd.NA, index=events.index, dtype="string")
    reason = reason.mask(reason.isna() & events["ts"].isna(), "bad_timestamp")
    reason = reason.mask(events["user_id"].isna(), "missing_user_id")
    reason = reason.mask(reason.isna() & ~events["event_type"].isin(EVENT_TYPES), "unknown_event_type")
    key = ["user_id", "ts", "event_type", "item_id", "price", "quantity", "session_id"]
    duplicate = reason.isna() & events.duplicated(subset=key, keep="first")
    reason = reason.mask(duplicate, "duplicate")
    events["reason"] = reason
    quarantine = events[events["reason"].notna()]
    quarantine.to_parquet(out / "quarantine.parquet")
    clean = events[events["reason"].isna()].drop(columns=["reason", "event_time"])
    clean["dt"] = clean["ts"].dt.normalize()
    clean.to_parquet(out / "clean_events.parquet")
    assert len(clean) + len(quarantine) == n_input

    items = items.rename(columns={"category": "item_category"})
    data_end = clean["dt"].max() + pd.Timedelta(days=1)
    cutoff = data_end - pd.Timedelta(days=90)

    def fuse(as_of: pd.Timestamp) -> pd.DataFrame:
        history = clean[clean["ts"] < as_of]
        purchase = history["event_type"] == "purchase"
        days_before = (as_of - history["ts"]).dt.days
        amount = (history["price"].fillna(0) * history["quantity"].fillna(1)).where(purchase, 0.0)
        frame = history.assign(amount=amount, amount_365=amount.where(days_before < 365, 0.0),
                               basket=history["session_id"].where(purchase),
                               basket_90=history["session_id"].where(purchase & (days_before < 90)),
                               basket_365=history["session_id"].where(purchase & (days_before < 365)),
                               purchase_ts=history["ts"].where(purchase))
        grouped = frame.groupby("user_id")
        features = grouped.agg(n_events=("ts", "size"), n_baskets=("basket", "nunique"), n_baskets_90d=("basket_90", "nunique"),
                               n_baskets_365d=("basket_365", "nunique"), n_active_days=("dt", "nunique"),
                               n_distinct_items=("item_id", "nunique"), n_distinct_categories=("category", "nunique"),
                               spend=("amount", "sum"), spend_365d=("amount_365", "sum"), last_ts=("ts", "max"),
                               first_ts=("ts", "min"), last_purchase=("purchase_ts", "max"), first_purchase=("purchase_ts", "min"))
        counts = pd.crosstab(frame["user_id"], frame["event_type"]).reindex(columns=list(EVENT_TYPES), fill_value=0)
        features = features.join(counts.add_prefix("n_"))
        day = pd.Timedelta(days=1)
        features["recency_days"] = (as_of - features["last_ts"]) / day
        features["purchase_recency_days"] = ((as_of - features["last_purchase"]) / day).fillna(3650.0)
        features["tenure_days"] = (as_of - features["first_ts"]) / day
        span = (features["last_purchase"] - features["first_purchase"]) / day
        features["mean_basket_gap_days"] = np.where(features["n_baskets"] > 1, span / (features["n_baskets"] - 1),
                                                     features["tenure_days"])
        # The text: each event as a phrase, time-ordered, the most recent 64 per user.
        titled = history.merge(items[["item_id", "item_category"]], on="item_id", how="left")
        what = titled["category"].fillna(titled["item_category"]).astype("string").fillna(titled["item_id"].astype("string"))
        quantity = ("x" + titled["quantity"].astype("Int64").astype("string")).where(titled["quantity"].notna() & (titled["quantity"] != 1), "")
        price = titled["price"].map("{:.2f}".format).where(titled["price"].notna(), "")
        titled["phrase"] = (titled["ts"].dt.strftime("%m-%d") + " " + titled["event_type"] + " " + what + " " + quantity + " " + price).str.strip()
        recent = titled.sort_values(["user_id", "ts"], kind="stable").groupby("user_id").tail(MAX_EVENTS)
        text = recent.groupby("user_id")["phrase"].agg(" ; ".join)
        attributes = users.assign(user_id=users["user_id"].astype("string")).set_index("user_id")
        attribute_text = ("age " + attributes["age"].astype("Int64").astype("string")).fillna("") + " | gender " + \
            attributes["gender"].fillna("U") + " | region " + attributes["region"].fillna("")
        fused = features.join(text.rename("behaviour")).join(attribute_text.rename("attributes"))
        fused["text"] = fused["attributes"].fillna("") + " [SEP] " + fused["behaviour"]
        return fused.drop(columns=["last_ts", "first_ts", "last_purchase", "first_purchase", "attributes", "behaviour"])

    training = fuse(cutoff)
    buyers = clean.loc[(clean["event_type"] == "purchase") & (clean["ts"] >= cutoff) & (clean["ts"] < data_end), "user_id"].unique()
    training = training[training["n_purchase"] > 0]
    training["label"] = training.index.isin(buyers).astype(int)
    training.to_parquet(out / "user_sequences.parquet")
    current = fuse(data_end)
    current.to_parquet(out / "current_sequences.parquet")
    return {"input_rows": n_input, "clean_rows": len(clean), "quarantined_rows": len(quarantine),
            "current_users": len(current), "training_users": len(training)}


# ---------------------------------------------------------------------------------------------
# (c) DuckDB SQL

DUCKDB_SQL = """
CREATE TABLE tagged AS
SELECT *, CASE
    WHEN user_id IS NULL THEN 'missing_user_id'
    WHEN ts IS NULL THEN 'bad_timestamp'
    WHEN event_type NOT IN {types} THEN 'unknown_event_type'
    WHEN row_number() OVER (PARTITION BY user_id IS NULL OR ts IS NULL OR event_type NOT IN {types},
                            user_id, ts, event_type, item_id, price, quantity, session_id) > 1 THEN 'duplicate'
  END AS reason
FROM (SELECT CAST(user_id AS VARCHAR) AS user_id, try_strptime(event_time, '%Y-%m-%d %H:%M:%S') AS ts, event_type,
             CAST(item_id AS VARCHAR) AS item_id, CAST(category AS VARCHAR) AS category, price, quantity,
             CAST(session_id AS VARCHAR) AS session_id, event_time
      FROM read_parquet('{data}/events/*.parquet'));
COPY (SELECT * FROM tagged WHERE reason IS NOT NULL) TO '{out}/quarantine.parquet' (FORMAT parquet);
CREATE TABLE clean AS SELECT * EXCLUDE (reason, event_time), CAST(ts AS DATE) AS dt FROM tagged WHERE reason IS NULL;
COPY clean TO '{out}/clean_events.parquet' (FORMAT parquet);
CREATE TABLE items AS SELECT CAST(item_id AS VARCHAR) AS item_id, CAST(category AS VARCHAR) AS item_category
  FROM read_parquet('{data}/items/*.parquet');
CREATE TABLE users AS SELECT CAST(user_id AS VARCHAR) AS user_id, age, gender, region FROM read_parquet('{data}/users/*.parquet');
CREATE TABLE bounds AS SELECT CAST(max(dt) + 1 AS TIMESTAMP) AS data_end, CAST(max(dt) + 1 - 90 AS TIMESTAMP) AS cutoff FROM clean;
"""

DUCKDB_FUSE = """
COPY (
WITH history AS (SELECT * FROM clean WHERE ts < {as_of}),
features AS (
  SELECT user_id, count(*) AS n_events,
         {type_counts},
         count(DISTINCT CASE WHEN event_type = 'purchase' THEN session_id END) AS n_baskets,
         count(DISTINCT CASE WHEN event_type = 'purchase' AND date_diff('day', ts, {as_of}) < 90 THEN session_id END) AS n_baskets_90d,
         count(DISTINCT CASE WHEN event_type = 'purchase' AND date_diff('day', ts, {as_of}) < 365 THEN session_id END) AS n_baskets_365d,
         count(DISTINCT dt) AS n_active_days, count(DISTINCT item_id) AS n_distinct_items,
         count(DISTINCT category) AS n_distinct_categories,
         coalesce(sum(CASE WHEN event_type = 'purchase' THEN coalesce(price, 0) * coalesce(quantity, 1) END), 0) AS spend,
         coalesce(sum(CASE WHEN event_type = 'purchase' AND date_diff('day', ts, {as_of}) < 365
                      THEN coalesce(price, 0) * coalesce(quantity, 1) END), 0) AS spend_365d,
         epoch({as_of}) - epoch(max(ts)) AS recency_s, epoch({as_of}) - epoch(min(ts)) AS tenure_s,
         epoch({as_of}) - epoch(max(CASE WHEN event_type = 'purchase' THEN ts END)) AS purchase_recency_s,
         epoch(max(CASE WHEN event_type = 'purchase' THEN ts END)) - epoch(min(CASE WHEN event_type = 'purchase' THEN ts END)) AS span_s
  FROM history GROUP BY user_id),
phrases AS (
  SELECT h.user_id, h.ts,
         concat_ws(' ', strftime(h.ts, '%m-%d'), h.event_type, coalesce(h.category, i.item_category, h.item_id),
                   CASE WHEN h.quantity IS NOT NULL AND h.quantity <> 1 THEN 'x' || CAST(CAST(h.quantity AS BIGINT) AS VARCHAR) END,
                   CASE WHEN h.price IS NOT NULL THEN printf('%.2f', h.price) END) AS phrase,
         row_number() OVER (PARTITION BY h.user_id ORDER BY h.ts DESC, h.item_id DESC) AS newest
  FROM history h LEFT JOIN items i USING (item_id)),
texts AS (SELECT user_id, string_agg(phrase, ' ; ' ORDER BY ts, newest DESC) AS behaviour FROM phrases
          WHERE newest <= {max_events} GROUP BY user_id)
SELECT f.*, recency_s / 86400.0 AS recency_days, coalesce(purchase_recency_s / 86400.0, 3650.0) AS purchase_recency_days,
       tenure_s / 86400.0 AS tenure_days,
       CASE WHEN n_baskets > 1 THEN span_s / 86400.0 / (n_baskets - 1) ELSE tenure_s / 86400.0 END AS mean_basket_gap_days,
       concat_ws(' [SEP] ', concat_ws(' | ', 'age ' || u.age, 'gender ' || u.gender, 'region ' || u.region), t.behaviour) AS text
       {label}
FROM features f LEFT JOIN texts t USING (user_id) LEFT JOIN users u USING (user_id) {where}
) TO '{out}' (FORMAT parquet)
"""


def duckdb_clean_fuse(data: Path, out: Path) -> dict[str, Any]:
    """The same clean + fuse as pandas_clean_fuse, in DuckDB SQL with 2 threads."""
    import duckdb

    con = duckdb.connect(str(out / "work.duckdb"))
    con.execute(f"SET threads = {CORES}")
    con.execute(f"SET temp_directory = '{out / 'spill'}'")
    types = "(" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + ")"
    for statement in DUCKDB_SQL.format(types=types, data=data, out=out).split(";\n"):
        if statement.strip():
            con.execute(statement)
    type_counts = ", ".join(f"count(*) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in EVENT_TYPES)
    buyers = ("(SELECT DISTINCT user_id FROM clean, bounds WHERE event_type = 'purchase' AND ts >= bounds.cutoff "
              "AND ts < bounds.data_end)")
    con.execute(DUCKDB_FUSE.format(as_of="(SELECT cutoff FROM bounds)", type_counts=type_counts, max_events=MAX_EVENTS,
                                   label=f", CAST(user_id IN {buyers} AS INTEGER) AS label", where="WHERE n_purchase > 0",
                                   out=out / "user_sequences.parquet"))
    con.execute(DUCKDB_FUSE.format(as_of="(SELECT data_end FROM bounds)", type_counts=type_counts, max_events=MAX_EVENTS,
                                   label="", where="", out=out / "current_sequences.parquet"))
    counts = con.execute("SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM tagged").fetchone()
    current = con.execute(f"SELECT count(*) FROM read_parquet('{out}/current_sequences.parquet')").fetchone()[0]
    training = con.execute(f"SELECT count(*) FROM read_parquet('{out}/user_sequences.parquet')").fetchone()[0]
    return {"input_rows": counts[0], "clean_rows": counts[1], "quarantined_rows": counts[0] - counts[1],
            "current_users": current, "training_users": training}


BASELINES = {"pandas": pandas_clean_fuse, "duckdb": duckdb_clean_fuse}


def run_baseline(name: str, data: Path, *, timeout_s: int) -> dict[str, Any]:
    """Run one baseline in a subprocess: its seconds, counts and own peak RSS (wait4), or how it died."""
    with tempfile.TemporaryDirectory(prefix=f"etl-{name}-", dir=CACHE) as out:
        report = Path(out) / "report.json"
        command = [sys.executable, __file__, "--baseline", name, "--data", str(data), "--out", out]
        started = time.perf_counter()
        child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)})
        timer = threading.Timer(timeout_s, child.kill)
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        result: dict[str, Any] = {f"{name}_peak_rss_mb": round(usage.ru_maxrss / 1024)}
        if child.returncode == 0 and report.exists():
            outcome = json.loads(report.read_text())
            result.update({f"{name}_s": outcome["seconds"], f"{name}_counts": outcome["counts"]})
        else:
            killed = child.returncode == -signal.SIGKILL
            why = ("killed after the timeout" if seconds >= timeout_s else "killed (out of memory)") if killed \
                else f"exit code {child.returncode}"
            result.update({f"{name}_s": None, f"{name}_failure": why})
        return result


def _baseline_main(name: str, data: Path, out: Path) -> None:
    started = time.perf_counter()
    counts = BASELINES[name](data, out)
    (out / "report.json").write_text(json.dumps({"seconds": round(time.perf_counter() - started, 2), "counts": counts}))


# ---------------------------------------------------------------------------------------------


def synthetic_input(events: int) -> Path:
    """Generated once per size into the cache (reused while its manifest matches)."""
    from ecominsight.generator import generate, load_profile

    out = CACHE / f"synthetic-{events}-seed{SEED}"
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("events") == events:
        return out
    started = time.perf_counter()
    generate(load_profile(), n_events=events, seed=SEED, out=out, fmt="parquet", bad_fraction=BAD_FRACTION)
    log.info("generated %d events in %.1f s", events, time.perf_counter() - started)
    return out


def bench_size(spark, events: int, *, baselines: tuple[str, ...], timeout_s: int, spark_timeout_s: int | None) -> dict[str, Any]:
    data = synthetic_input(events)
    manifest = json.loads((data / "manifest.json").read_text())
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {"events": events, "planted_bad_rows": manifest["planted_bad_rows"], "users": manifest["users"],
                              "items": manifest["items"]}
    for name in baselines:
        result.update(run_baseline(name, data, timeout_s=timeout_s))
    with tempfile.TemporaryDirectory(prefix="etl-lake-", dir=CACHE) as lake_dir:
        result.update(run_spark(spark, str(data / "preset.yaml"), lake_dir=Path(lake_dir), overrides=["fuse.cutoff=null"],
                                timeout_s=spark_timeout_s))
    result["spark_events_per_s_per_core"] = round(events / result["spark_s"] / CORES) if result["spark_s"] else None
    for name in baselines:
        if result.get(f"{name}_s"):
            result[f"spark_over_{name}"] = None if not result["spark_s"] else round(result["spark_s"] / result[f"{name}_s"], 2)
    result["load_average_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    return result


def bench_real(spark, *, timeout_s: int | None) -> dict[str, Any]:
    from ecominsight.config import ConfigError
    from ecominsight.io import LakeError
    from ecominsight.presets import load_preset

    real = {}
    for preset in REAL_PRESETS:
        paths = load_preset(preset).resolved_paths()
        if not all(Path(p).exists() for p in paths):
            log.warning("skipping %s: %s not found", preset, paths)
            real[preset] = {"skipped": f"input not found: {paths}"}
            continue
        load_before = os.getloadavg()[0]
        try:
            with tempfile.TemporaryDirectory(prefix="etl-lake-", dir=CACHE) as lake_dir:
                result = run_spark(spark, preset, lake_dir=Path(lake_dir), overrides=["fuse.cutoff=null"], timeout_s=timeout_s)
        except (ConfigError, LakeError) as err:
            real[preset] = {"skipped": str(err)}
            continue
        result["load_average_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        if result["spark_s"]:
            result["spark_events_per_s_per_core"] = round(result["input_rows"] / result["spark_s"] / CORES)
        real[preset] = result
    return real


def render(results: dict[str, Any], *, profile_size: str | None = None) -> str:
    """The BENCHMARKS.md table of an etl.json, then the Spark profile of size `profile_size`."""
    def cell(value: Any, suffix: str = "") -> str:
        return "—" if value is None else f"{value:,}{suffix}" if isinstance(value, (int, float)) else str(value)

    lines = ["| input | events | Spark clean+fuse s (clean / fuse) | events/s/core | pandas s | DuckDB s | Spark / DuckDB "
             "| peak RSS: JVM driver / JVM children (see notes) / pandas / DuckDB (MB) | load avg (start, end) |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"synthetic {int(n):,}", r) for n, r in results.get("sizes", {}).items()]
    rows += [(name, r) for name, r in results.get("real", {}).items() if "skipped" not in r]
    for name, r in rows:
        spark = cell(r.get("spark_s")) if r.get("spark_s") else r.get("spark_failure", "—")
        split = f" ({cell(r.get('spark_clean_s'))} / {cell(r.get('spark_fuse_s'))})" if r.get("spark_s") else ""
        pandas = cell(r.get("pandas_s")) if "pandas_s" in r and r["pandas_s"] else r.get("pandas_failure", "—")
        memory = " / ".join(cell(r.get(k)) for k in ("peak_driver_rss_mb", "peak_python_workers_rss_mb" if "peak_python_workers_rss_mb" in r else "peak_jvm_children_rss_mb",
                                                         "pandas_peak_rss_mb", "duckdb_peak_rss_mb"))
        lines.append(f"| {name} | {cell(r.get('events', r.get('input_rows')))} | {spark}{split} "
                     f"| {cell(r.get('spark_events_per_s_per_core'))} | {pandas} | {cell(r.get('duckdb_s'))} "
                     f"| {cell(r.get('spark_over_duckdb'), '×')} | {memory} | {cell(r.get('load_average_1min'))} |")
    r = results.get("sizes", {}).get(profile_size or "", {})
    if r.get("spark_s") and r.get("spark_profile_top"):
        lines += ["", f"Spark's profile at {int(profile_size):,} events (its {len(r['spark_profile_top'])} largest entries; "
                      f"executor seconds over {results.get('machine', {}).get('cores', '?')} cores, "
                      f"clean+fuse took {r['spark_s']} s wall):", "",
                  "| job description or call site | executor s | share of those listed | stages | tasks | input MB | shuffle write MB |",
                  "|---|---|---|---|---|---|---|"]
        total = sum(entry["executor_run_s"] for entry in r["spark_profile_top"])
        for entry in r["spark_profile_top"]:
            label = entry["stage"].split("<br/>")[0].replace("|", "/")
            lines.append(f"| {label} | {cell(entry['executor_run_s'])} "
                         f"| {entry['executor_run_s'] / total:.0%} | {entry['stages']} | {entry['tasks']} "
                         f"| {cell(entry['input_mb'])} | {cell(entry['shuffle_write_mb'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--no-real", action="store_true", help="skip the complete real sets")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a baseline may run")
    parser.add_argument("--spark-timeout", type=int, default=None, help="seconds a Spark clean+fuse may run (default: no limit)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="Spark setting over conf/local.yaml's (e.g. spark.driver.memory=8g), recorded per size")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true", help="print the BENCHMARKS.md table of --output")
    parser.add_argument("--render-profile", default="10000000", metavar="SIZE",
                        help="with --render-only: the size whose Spark profile follows the table")
    parser.add_argument("--merge", action="store_true", help="add to the figures already in --output")
    parser.add_argument("--baseline", choices=list(BASELINES), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        _baseline_main(args.baseline, args.data, args.out)
        return
    if args.render_only:
        print(render(json.loads(args.output.read_text(encoding="utf-8")), profile_size=args.render_profile))
        return
    from ecominsight.logs import setup_logging

    setup_logging()
    for noisy in ("ecominsight", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    CACHE.mkdir(parents=True, exist_ok=True)
    extra_conf = dict(pair.split("=", 1) for pair in args.spark_conf)
    with benchmark_session(extra_conf) as spark:
        command = "benchmarks/etl.py " + " ".join(sys.argv[1:])
        results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "master": MASTER}, "commands": [command], "sizes": {}}
        if args.merge and args.output.exists():
            # Add to an earlier run's figures (each entry keeps its own load average and timings).
            earlier = json.loads(args.output.read_text(encoding="utf-8"))
            results = {**earlier, "commands": [*earlier.get("commands", [earlier.get("machine", {}).get("command")]), command]}
            results["machine"].pop("command", None)
        for events in args.sizes:
            log.info("size %d", events)
            results["sizes"][str(events)] = bench_size(spark, events, baselines=tuple(args.baselines), timeout_s=args.timeout,
                                                    spark_timeout_s=args.spark_timeout)
            if extra_conf:
                results["sizes"][str(events)]["spark_conf"] = extra_conf
            _write(args.output, results)  # after each step, so a long run leaves what it measured
        if not args.no_real:
            results["real"] = bench_real(spark, timeout_s=args.spark_timeout)
            _write(args.output, results)


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
