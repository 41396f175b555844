"""Synthetic users/events/items at any size, with distributions fitted to a real sample.

`fit_profile(events, users)` turns canonical clean tables (pandas, as the clean stage writes them)
into a small JSON-able *profile*: the event-type mix, sessions per user and events per session,
the gaps between events inside a session and between sessions, category and item popularity
(Zipf exponents fitted to the rank-frequency counts, catalogue growth by Heaps' law), how often
the next event stays on the same item or category, the price and quantity distributions, and the
users' age/gender/region. `generate(profile, n_events=..., seed=..., out=..., fmt=...)` streams
raw files from it in fixed-size chunks (numpy + pyarrow writers), so memory stays flat in
`n_events` and the same seed gives byte-identical files. `conf/sources/synthetic.yaml` reads them.

ecominsight.synthetic is different: small sets with a *planted* label signal for model tests.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_PROFILE = Path(__file__).parent / "data" / "synthetic_profile.json"
PRESET_NAME = "synthetic"  # conf/sources/synthetic.yaml reads what `generate` writes
PROFILE_VERSION = 1
SESSION_GAP_S = 1800          # a pause of 30 minutes or more starts a new session
QUANTILES = 101               # points of each fitted continuous distribution (0%, 1%, ..., 100%)
MAX_SESSIONS, MAX_SESSION_LENGTH = 50, 200
# Rows per output file: fixed (so a seed gives the same files whatever the size) and small enough
# that Spark reads even 1M events in several parallel tasks.
CHUNK_ROWS = 250_000
BAD_TIMESTAMPS = ("not a time", "2024-13-45 25:61:00", "31/02/2024 10:00", "yesterday")
PLANTED = ("duplicate", "missing_user_id", "bad_timestamp")
FORMATS = ("parquet", "csv")
EVENT_COLUMNS = ("user_id", "event_time", "event_type", "item_id", "category", "price", "quantity", "session_id")


# ---------------------------------------------------------------------------------------------
# Fitting


def _pmf(values: pd.Series, *, cap: int | None = None) -> dict[str, list]:
    """Empirical probability mass of a discrete series (capped at `cap`): {values, probs}."""
    if cap is not None:
        values = values.clip(upper=cap)
    counts = values.value_counts().sort_index()
    return {"values": [v.item() if hasattr(v, "item") else v for v in counts.index],
            "probs": (counts / counts.sum()).round(8).tolist()}


def _quantiles(values: np.ndarray) -> list[float]:
    return np.quantile(values, np.linspace(0, 1, QUANTILES)).round(6).tolist() if len(values) else [1.0] * QUANTILES


def _zipf_exponent(counts: np.ndarray) -> float:
    """Slope of log(count) on log(rank), counts sorted descending: the Zipf exponent (clipped)."""
    counts = np.sort(counts[counts > 0])[::-1].astype(float)
    if len(counts) < 3:
        return 1.0
    ranks = np.arange(1, len(counts) + 1, dtype=float)
    slope = np.polyfit(np.log(ranks), np.log(counts), 1)[0]
    return float(np.clip(-slope, 0.2, 3.0))


def _heaps(ids: pd.Series) -> dict[str, float]:
    """Distinct ids after n events ~ k * n**beta, fitted on prefixes of the time-ordered events."""
    codes = pd.factorize(ids)[0]
    first_seen = np.zeros(len(codes), dtype=bool)
    first_seen[np.unique(codes, return_index=True)[1]] = True
    distinct = np.cumsum(first_seen)
    points = np.unique(np.geomspace(100, len(codes), 20).astype(int)) if len(codes) > 100 else np.array([len(codes)])
    if len(points) < 2:
        return {"k": float(distinct[-1]), "beta": 1.0}
    beta, log_k = np.polyfit(np.log(points), np.log(distinct[points - 1]), 1)
    return {"k": float(np.exp(log_k)), "beta": float(np.clip(beta, 0.1, 1.0))}


def fit_behaviour(events: pd.DataFrame, *, session_gap_s: int = SESSION_GAP_S) -> dict[str, Any]:
    """Canonical events (user_id, ts, event_type, item_id, category) -> the behaviour part of a
    profile: event-type mix, sessions (a pause >= `session_gap_s` starts one), gaps, popularity."""
    frame = events[["user_id", "ts", "event_type", "item_id", "category"]].sort_values(["user_id", "ts"], kind="stable")
    seconds = frame["ts"].astype("datetime64[s]").astype("int64").to_numpy()
    user = pd.factorize(frame["user_id"])[0]
    same_user = np.r_[False, user[1:] == user[:-1]]
    gap = np.r_[0, np.diff(seconds)]
    new_session = ~same_user | (gap >= session_gap_s)
    session = np.cumsum(new_session)
    within = gap[same_user & ~new_session]
    between = gap[same_user & new_session]
    session_lengths = pd.Series(np.bincount(session)[1:])
    sessions_per_user = pd.Series(np.bincount(user, weights=new_session).astype(int))

    item = frame["item_id"].to_numpy(dtype=object)
    category = frame["category"].to_numpy(dtype=object)
    inside = same_user & ~new_session
    same_item = inside & np.r_[False, item[1:] == item[:-1]]
    same_category = inside & ~same_item & np.r_[False, category[1:] == category[:-1]]
    n_inside = max(int(inside.sum()), 1)
    p_same_item = same_item.sum() / n_inside
    p_same_category = same_category.sum() / max(n_inside - same_item.sum(), 1)

    by_time = frame.sort_values("ts", kind="stable")
    types = frame["event_type"].value_counts(normalize=True).sort_index()
    return {
        "event_types": {k: round(float(v), 8) for k, v in types.items()},
        "session_gap_s": session_gap_s,
        "sessions_per_user": _pmf(sessions_per_user, cap=MAX_SESSIONS),
        "session_length": _pmf(session_lengths, cap=MAX_SESSION_LENGTH),
        # Gaps of 0 s (two events in the same second) become 1 s when generating, so that no two
        # events of a user share a time and no planted duplicate happens by accident.
        "gap_within_s": _quantiles(within),
        "gap_between_s": _quantiles(between),
        "categories": {"zipf_exponent": _zipf_exponent(frame["category"].value_counts().to_numpy()),
                       "heaps": _heaps(by_time["category"].fillna(""))},
        "items": {"zipf_exponent": _zipf_exponent(frame["item_id"].value_counts().to_numpy()),
                  "heaps": _heaps(by_time["item_id"].fillna("")),
                  "same_item_prob": round(float(p_same_item), 6),
                  "same_category_prob": round(float(p_same_category), 6)},
    }


def fit_prices(events: pd.DataFrame) -> dict[str, Any]:
    """Canonical events with price and quantity -> price quantiles (one price per item: its
    median) and the purchase quantity distribution."""
    priced = events.dropna(subset=["price", "item_id"])
    priced = priced[priced["price"] > 0]
    per_item = priced.groupby("item_id")["price"].median().to_numpy()
    quantity = events.loc[events["event_type"] == "purchase", "quantity"].dropna()
    quantity = quantity[quantity >= 1].round().astype(int)
    return {"price": _quantiles(per_item),
            "quantity": _pmf(quantity, cap=100) if len(quantity) else {"values": [1], "probs": [1.0]}}


def fit_users(users: pd.DataFrame, *, attributes: tuple[str, ...] = ("age", "gender", "region"),
              top_regions: int = 50) -> dict[str, Any]:
    """Canonical users -> per attribute the share of users with it and its value distribution."""
    fitted = {}
    for name in attributes:
        column = users[name]
        if name == "gender":
            column = column.where(column != "U")
        known = column.dropna()
        if known.empty:
            continue
        if name == "region":
            known = known[known.isin(known.value_counts().index[:top_regions])]
        if name == "age":
            known = known.astype(int)
        fitted[name] = {"known_share": round(len(known) / len(column), 6), **_pmf(known)}
    return fitted


def fit_profile(events: pd.DataFrame, users: pd.DataFrame | None = None, *, source: str = "sample",
                start: str | None = None, span_days: int | None = None) -> dict[str, Any]:
    """Canonical clean tables (pandas) -> a profile dict (JSON-able) that `generate` reads.

    `events` needs user_id, ts, event_type, item_id, category, price, quantity; `users` (optional)
    user_id, age, gender, region. The generated time window defaults to the sample's."""
    ts = pd.to_datetime(events["ts"])
    first, last = ts.min().normalize(), ts.max().normalize()
    profile = {"version": PROFILE_VERSION, "sources": {"behaviour": source, "prices": source, "users": source},
               "time": {"start": start or first.strftime("%Y-%m-%d"),
                        "span_days": span_days or max(int((last - first).days) + 1, 1)},
               **fit_behaviour(events), **fit_prices(events),
               "users": fit_users(users) if users is not None else {}}
    return profile


def combine_profiles(behaviour: dict[str, Any], *, prices: dict[str, Any] | None = None,
                     users: dict[str, Any] | None = None, time: dict[str, Any] | None = None) -> dict[str, Any]:
    """A profile with its behaviour from one fit, prices and user attributes from others: `users`
    maps each attribute to the profile it comes from."""
    out = json.loads(json.dumps(behaviour))
    if prices is not None:
        out["price"], out["quantity"] = prices["price"], prices["quantity"]
        out["sources"]["prices"] = prices["sources"]["prices"]
    if users is not None:
        out["users"] = {name: fitted["users"][name] for name, fitted in users.items() if name in fitted["users"]}
        out["sources"]["users"] = {name: fitted["sources"]["users"] for name, fitted in users.items()}
    if time is not None:
        out["time"] = dict(time)
    return out


def load_profile(path: str | Path | None = None) -> dict[str, Any]:
    """A saved profile (default: the shipped one, fitted from real samples)."""
    profile = json.loads(Path(path or DEFAULT_PROFILE).read_text(encoding="utf-8"))
    if profile.get("version") != PROFILE_VERSION:
        raise ValueError(f"profile {path} has version {profile.get('version')}, expected {PROFILE_VERSION}")
    return profile


def save_profile(profile: dict[str, Any], path: str | Path) -> None:
    """Write `profile` as JSON to `path`, for `load_profile` (or `generate --profile`) to read back."""
    Path(path).write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def clean_tables_of_preset(spark: SparkSession, preset: str, workdir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the clean stage of `preset` in `spark` into a lake under `workdir`; its clean events and
    users as pandas."""
    from ecominsight.catalog import CLEAN_EVENTS, CLEAN_USERS
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.stages import run_stage

    config = load_config("local", [f"source.preset={preset}", f"lake={workdir}"])
    lake = Lake(config.lake_path)
    run_stage("clean", spark, config, lake, f"fit-{preset}")
    columns = ["user_id", "ts", "event_type", "item_id", "category", "price", "quantity"]
    events = lake.read_arrow(CLEAN_EVENTS, columns=columns).to_pandas()
    users = lake.read_arrow(CLEAN_USERS).to_pandas()
    return events, users


def profile_of_preset(spark: SparkSession, preset: str) -> dict[str, Any]:
    """The profile fitted to the clean tables of source preset `preset` (cleaned in `spark`, in a
    temporary lake)."""
    with tempfile.TemporaryDirectory(prefix="ecominsight-fit-") as workdir:
        events, users = clean_tables_of_preset(spark, preset, workdir)
    return fit_profile(events, users, source=preset)


# ---------------------------------------------------------------------------------------------
# Generating


def _draw(rng: np.random.Generator, pmf: dict[str, list], size: int) -> np.ndarray:
    probs = np.asarray(pmf["probs"], dtype=float)
    return np.asarray(pmf["values"])[rng.choice(len(probs), size=size, p=probs / probs.sum())]


def _from_quantiles(quantiles: list[float], u: np.ndarray, *, log_scale: bool = False) -> np.ndarray:
    """Inverse CDF by linear interpolation between the fitted quantiles (in log space if asked)."""
    points = np.asarray(quantiles, dtype=float)
    if log_scale:
        return np.exp(np.interp(u, np.linspace(0, 1, len(points)), np.log(np.maximum(points, 1e-9))))
    return np.interp(u, np.linspace(0, 1, len(points)), points)


def _zipf_rank(u: np.ndarray, size: np.ndarray | int, exponent: float) -> np.ndarray:
    """0-based rank in 1..size drawn from a continuous Zipf (density ~ x**-exponent), by inverse CDF."""
    top = np.asarray(size, dtype=float) + 1.0
    if abs(exponent - 1.0) < 1e-6:
        x = top ** u
    else:
        one = 1.0 - exponent
        x = (1.0 + u * (top ** one - 1.0)) ** (1.0 / one)
    return np.minimum(np.floor(x).astype(np.int64) - 1, np.asarray(size, dtype=np.int64) - 1)


def _unit_hash(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed uniform [0, 1) per id (splitmix64), so an item keeps one price in every chunk."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _Catalogue:
    """Categories and items for a run of `n_events`: sizes by the fitted Heaps' law, category
    popularity Zipf over categories, item popularity Zipf within each category."""

    def __init__(self, profile: dict[str, Any], n_events: int):
        heaps_c, heaps_i = profile["categories"]["heaps"], profile["items"]["heaps"]
        self.n_categories = max(1, int(round(heaps_c["k"] * n_events ** heaps_c["beta"])))
        n_items = max(self.n_categories, int(round(heaps_i["k"] * n_events ** heaps_i["beta"])))
        ranks = np.arange(1, self.n_categories + 1, dtype=float)
        weights = ranks ** -profile["categories"]["zipf_exponent"]
        self.category_probs = weights / weights.sum()
        self.category_cdf = np.cumsum(self.category_probs)
        # Every category holds at least one item; the rest in proportion to its popularity.
        self.items_in = 1 + np.floor(self.category_probs * (n_items - self.n_categories)).astype(np.int64)
        self.offset = np.r_[0, np.cumsum(self.items_in)[:-1]]
        self.n_items = int(self.items_in.sum())
        self.item_exponent = profile["items"]["zipf_exponent"]
        self.price_quantiles = profile["price"]

    def categories(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.category_cdf, u, side="right"), self.n_categories - 1)

    def items(self, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.offset[category] + _zipf_rank(u, self.items_in[category], self.item_exponent)

    def prices(self, item: np.ndarray) -> np.ndarray:
        return np.round(_from_quantiles(self.price_quantiles, _unit_hash(item, 1), log_scale=True), 2)

    def item_category(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_categories), self.items_in)


def _user_events(rng: np.random.Generator, profile: dict[str, Any], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user the number of events, and per event whether it starts a session."""
    sessions = _draw(rng, profile["sessions_per_user"], n_users).astype(np.int64)
    sessions = np.maximum(sessions, 1)
    lengths = np.maximum(_draw(rng, profile["session_length"], int(sessions.sum())).astype(np.int64), 1)
    session_user = np.repeat(np.arange(n_users), sessions)
    per_user = np.bincount(session_user, weights=lengths, minlength=n_users).astype(np.int64)
    starts = np.zeros(int(lengths.sum()), dtype=bool)
    starts[np.r_[0, np.cumsum(lengths)[:-1]]] = True
    return per_user, starts


def _chunk(rng: np.random.Generator, profile: dict[str, Any], catalogue: _Catalogue, *, rows: int,
           first_user: int, first_session: int, window: tuple[int, int]) -> tuple[dict[str, np.ndarray], int]:
    """`rows` events of consecutive new users (the last one cut where the chunk ends)."""
    mean_per_user = float(np.dot(profile["sessions_per_user"]["values"], profile["sessions_per_user"]["probs"]) *
                           np.dot(profile["session_length"]["values"], profile["session_length"]["probs"]))
    per_user, starts = _user_events(rng, profile, int(rows / mean_per_user * 1.2) + 10)
    while per_user.sum() < rows:  # rare: the draw fell short; add users until the chunk is full
        more, more_starts = _user_events(rng, profile, int(rows / mean_per_user * 0.2) + 10)
        per_user, starts = np.r_[per_user, more], np.r_[starts, more_starts]
    n_users = int(np.searchsorted(np.cumsum(per_user), rows) + 1)
    per_user = per_user[:n_users].copy()
    per_user[-1] -= int(per_user.sum() - rows)
    starts = starts[:rows]
    user = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    first_of_user = np.r_[0, np.cumsum(per_user)[:-1]]
    starts[first_of_user] = True

    # Times: a user's first event anywhere in the window, then the fitted gaps (at least 1 s).
    u = rng.random(rows)
    gaps = np.where(starts, _from_quantiles(profile["gap_between_s"], u), _from_quantiles(profile["gap_within_s"], u))
    gaps = np.maximum(np.rint(gaps), 1).astype(np.int64)
    gaps[first_of_user] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first_of_user], per_user)
    t0 = rng.integers(window[0], window[1], size=n_users)
    ts = np.repeat(t0, per_user) + elapsed

    names = sorted(profile["event_types"])
    probs = np.array([profile["event_types"][n] for n in names])
    type_code = rng.choice(len(names), size=rows, p=probs / probs.sum())

    # Items: fresh draws, or the previous event's item, or a new item of the previous category.
    items_fit = profile["items"]
    u_state = rng.random(rows)
    state = np.where(u_state < items_fit["same_item_prob"], 1,
                     np.where(rng.random(rows) < items_fit["same_category_prob"], 2, 0))
    state[starts] = 0
    positions = np.arange(rows)
    category_from = np.maximum.accumulate(np.where(state == 0, positions, 0))
    category = catalogue.categories(rng.random(rows))[category_from]
    fresh_item = catalogue.items(category, rng.random(rows))
    item = fresh_item[np.maximum.accumulate(np.where(state != 1, positions, 0))]

    session = first_session + np.cumsum(starts) - 1
    quantity = np.where(np.asarray(names)[type_code] == "purchase",
                        _draw(rng, profile["quantity"], rows).astype(float), np.nan)
    columns = {"user": first_user + user, "ts": ts, "type_code": type_code, "item": item,
               "category": category, "price": catalogue.prices(item), "quantity": quantity, "session": session}
    return columns, n_users


def _users_table(rng: np.random.Generator, profile: dict[str, Any], ids: np.ndarray) -> pa.Table:
    columns: dict[str, pa.Array] = {"user_id": pa.array(ids)}
    for name in ("age", "gender", "region"):
        fitted = profile["users"].get(name)
        if fitted is None:
            continue
        values = _draw(rng, fitted, len(ids))
        known = rng.random(len(ids)) < fitted["known_share"]
        columns[name] = pa.array(values.tolist(), mask=~known)
    return pa.table(columns)


def _events_table(columns: dict[str, np.ndarray], names: list[str], *, missing_user: np.ndarray,
                  bad_ts: np.ndarray, rng: np.random.Generator) -> pa.Table:
    event_time = pa.array(columns["ts"].astype("datetime64[s]")).cast(pa.string())
    if bad_ts.any():
        replacement = np.asarray(BAD_TIMESTAMPS)[rng.integers(len(BAD_TIMESTAMPS), size=int(bad_ts.sum()))]
        event_time = pc.replace_with_mask(event_time, pa.array(bad_ts), pa.array(replacement.tolist()))
    return pa.table({
        "user_id": pa.array(columns["user"], mask=missing_user),
        "event_time": event_time,
        "event_type": pa.array(names).take(pa.array(columns["type_code"])),
        "item_id": pa.array(columns["item"]),
        "category": pa.array(columns["category"]),
        "price": pa.array(columns["price"]),
        "quantity": pa.array(columns["quantity"], from_pandas=True),
        "session_id": pa.array(columns["session"]),
    })


class _Writer:
    """One file per chunk, `<out>/<table>/part-NNNNN.<fmt>`."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt, self.parts = out, fmt, {}

    def write(self, table_name: str, table: pa.Table) -> None:
        part = self.parts.get(table_name, 0)
        self.parts[table_name] = part + 1
        folder = self.out / table_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{part:05d}.{self.fmt}"
        if self.fmt == "parquet":
            pq.write_table(table, path, compression="snappy")
        else:
            pa_csv.write_csv(table, path)


def _planted_counts(n_events: int, bad_fraction: float) -> dict[str, int]:
    n_bad = int(round(n_events * bad_fraction))
    share = n_bad // len(PLANTED)
    counts = dict.fromkeys(PLANTED, share)
    counts[PLANTED[0]] += n_bad - share * len(PLANTED)
    return counts


def generate(profile: dict[str, Any], *, n_events: int, seed: int, out: str | Path, fmt: str = "parquet",
             bad_fraction: float = 0.001, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Write `n_events` raw event rows (of which `bad_fraction` are planted bad rows: exact
    duplicates, rows without a user id, rows with an unparseable time, a third each) plus the
    users and items they use, to `out/{events,users,items}/part-*.{fmt}`, and `out/manifest.json`.

    Memory is bounded by `chunk_rows`; the same profile, seed and arguments give identical files.
    Returns the manifest: rows per table and the planted bad rows per quarantine reason."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if n_events < 1 or not 0 <= bad_fraction < 0.5:
        raise ValueError("need n_events >= 1 and 0 <= bad_fraction < 0.5")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    planted = _planted_counts(n_events, bad_fraction)
    n_base = n_events - planted["duplicate"]  # duplicates are extra copies of base rows
    catalogue = _Catalogue(profile, n_base)
    names = sorted(profile["event_types"])
    start = int(dt.datetime.fromisoformat(profile["time"]["start"]).replace(tzinfo=dt.timezone.utc).timestamp())
    window = (start, start + int(profile["time"]["span_days"]) * 86400)
    writer = _Writer(out, fmt)

    done = users_done = sessions_done = 0
    planted_done = dict.fromkeys(PLANTED, 0)
    while done < n_base:
        rows = min(chunk_rows, n_base - done)
        columns, n_users = _chunk(rng, profile, catalogue, rows=rows, first_user=users_done,
                                  first_session=sessions_done, window=window)
        # Each reason's rows spread over the chunks in proportion to their size.
        quota = {r: int(round(planted[r] * (done + rows) / n_base)) - planted_done[r] for r in PLANTED}
        chosen = rng.permutation(rows)
        missing_user = np.zeros(rows, dtype=bool)
        bad_ts = np.zeros(rows, dtype=bool)
        missing_user[chosen[:quota["missing_user_id"]]] = True
        bad_ts[chosen[quota["missing_user_id"]:quota["missing_user_id"] + quota["bad_timestamp"]]] = True
        sound = chosen[quota["missing_user_id"] + quota["bad_timestamp"]:]
        table = _events_table(columns, names, missing_user=missing_user, bad_ts=bad_ts, rng=rng)
        if quota["duplicate"]:
            copies = np.sort(sound[:quota["duplicate"]])
            where = np.sort(rng.integers(0, rows + 1, size=quota["duplicate"]))
            table = table.take(pa.array(np.insert(np.arange(rows), where, copies)))
        writer.write("events", table)
        writer.write("users", _users_table(rng, profile, np.arange(users_done, users_done + n_users)))
        for reason in PLANTED:
            planted_done[reason] += quota[reason]
        done += rows
        users_done += n_users
        sessions_done = int(columns["session"][-1]) + 1

    item_ids = np.arange(catalogue.n_items, dtype=np.int64)
    item_category = catalogue.item_category()
    for first in range(0, catalogue.n_items, chunk_rows):
        ids = item_ids[first:first + chunk_rows]
        writer.write("items", pa.table({"item_id": pa.array(ids), "category": pa.array(item_category[ids]),
                                        "price": pa.array(catalogue.prices(ids))}))
    manifest = {"events": n_events, "users": users_done, "items": catalogue.n_items, "categories": catalogue.n_categories,
                "seed": seed, "format": fmt, "bad_fraction": bad_fraction, "planted_bad_rows": planted,
                "profile_sources": profile.get("sources")}
    write_preset(out, fmt)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("generated %d events (%s planted bad rows), %d users, %d items in %s", n_events, planted, users_done,
             catalogue.n_items, out)
    return manifest


def write_preset(out: str | Path, fmt: str) -> Path:
    """The `synthetic` source preset pointed at `out` (absolute paths) and `fmt`: `<out>/preset.yaml`."""
    import yaml

    from ecominsight.config import DEFAULT_CONF_DIR

    out = Path(out).resolve()
    raw = yaml.safe_load((DEFAULT_CONF_DIR / "sources" / f"{PRESET_NAME}.yaml").read_text(encoding="utf-8"))
    raw["format"] = fmt
    raw["paths"] = [str(out / "events" / f"*.{fmt}")]
    for side, table in (("user_source", "users"), ("item_source", "items")):
        raw[side]["format"] = fmt
        raw[side]["paths"] = [str(out / table / f"*.{fmt}")]
    path = out / "preset.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
