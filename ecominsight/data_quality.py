"""Data-quality figures of a clean run, computed from the tagged frames in one Spark action each.

`table_profile` summarises one tagged table (`clean.tag_events`, `tag_users`, `tag_items`,
`tag_reviews` after `mark_duplicates`): rows per reason, null rates of the accepted rows, the
duplicate rate, the time range and the rows outside a declared window. `clean_report` puts the
profiles of a run together with the users that have no accepted event; stages.run_clean writes it
to reports/<run_id>/data_quality.json.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight import schema
from ecominsight.presets import WindowSpec
from ecominsight.transforms.clean import UNPARSED_ATTRIBUTES, outside_window

# The canonical columns whose null rate each table reports (the rest are constants such as `source`).
PROFILED = {
    "events": ("user_id", "ts", "event_type", "item_id", "category", "brand", "price", "quantity", "query", "session_id"),
    "users": tuple(schema.USERS.fieldNames()),
    "items": tuple(schema.ITEMS.fieldNames()),
    "reviews": ("user_id", "item_id", "ts", "rating", "text"),
}
CLEAN_KEY = "<clean>"  # JSON keys cannot be null: accepted rows are listed under this name


def _utc_text(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


def table_profile(tagged: DataFrame, *, columns: Sequence[str], window: WindowSpec | None = None,
                  attributes: Sequence[str] = ()) -> dict[str, Any]:
    """Input: a tagged table (one row per input row, `reason` null where accepted). Output: a dict
    with `input_rows`, `clean_rows`, `quarantined_rows`, `rows_by_reason`, `null_rates` (of the
    accepted rows, per column in `columns`), `duplicate_rate` (duplicates / input rows) and, when
    the table has `ts`, `time_range` of the accepted rows and, given a `window` (a preset's WindowSpec),
    `window.rows_outside`: rows of any reason whose parsed time falls outside it. Given the names of
    the extra user `attributes` the table maps, `attributes`: per name, the null rate of the accepted
    rows and `unparsed`, the accepted rows whose numeric value was given but is no number (left out
    of the `attributes` map, as an unreadable age is nulled). One Spark action."""
    has_ts = "ts" in tagged.columns
    aggregates = [F.count(F.lit(1)).alias("rows")]
    aggregates += [F.sum(F.col(f"`{c}`").isNull().cast("long")).alias(f"null:{c}") for c in columns]
    for name in attributes:
        aggregates += [F.sum(F.col("attributes")[name].isNull().cast("long")).alias(f"null_attribute:{name}"),
                       F.sum(F.array_contains(UNPARSED_ATTRIBUTES, name).cast("long")).alias(f"unparsed:{name}")]
    if has_ts:
        aggregates += [F.min("ts").alias("ts_min"), F.max("ts").alias("ts_max")]
        if window is not None:
            aggregates.append(F.sum(F.coalesce(outside_window(F.col("ts"), window), F.lit(False)).cast("long")).alias("outside"))
    groups = {row["reason"]: row for row in tagged.groupBy("reason").agg(*aggregates).collect()}

    by_reason = {reason: row["rows"] for reason, row in groups.items()}
    n_input = sum(by_reason.values())
    n_clean = by_reason.get(None, 0)
    accepted = groups.get(None)
    profile: dict[str, Any] = {
        "input_rows": n_input,
        "clean_rows": n_clean,
        "quarantined_rows": n_input - n_clean,
        "rows_by_reason": {CLEAN_KEY if r is None else r: n for r, n in sorted(by_reason.items(), key=lambda kv: kv[0] or "")},
        "null_rates": {c: (accepted[f"null:{c}"] / n_clean if accepted else None) for c in columns},
        "duplicate_rate": by_reason.get(schema.REASON_DUPLICATE, 0) / n_input if n_input else 0.0,
    }
    if attributes:
        profile["attributes"] = {name: {"null_rate": accepted[f"null_attribute:{name}"] / n_clean if accepted else None,
                                        "unparsed": accepted[f"unparsed:{name}"] if accepted else 0}
                                 for name in attributes}
    if has_ts:
        profile["time_range"] = {"min": _utc_text(accepted["ts_min"]) if accepted else None,
                                 "max": _utc_text(accepted["ts_max"]) if accepted else None}
        if window is not None:
            profile["window"] = {"start": window.start, "end": window.end, "zone": window.zone,
                                 "rows_outside": sum(row["outside"] or 0 for row in groups.values())}
    return profile


def users_without_events(users: DataFrame, events: DataFrame) -> int:
    """Users of the users table with no accepted event (listed in a user file, never active). One action."""
    return users.select("user_id").join(events.select("user_id").distinct(), "user_id", "left_anti").count()


def clean_report(
    *,
    run_id: str,
    preset: str,
    profiles: Mapping[str, dict[str, Any]],
    users: DataFrame,
    events: DataFrame,
) -> dict[str, Any]:
    """The data_quality.json payload: the table profiles and the users without events."""
    return {
        "run_id": run_id,
        "preset": preset,
        "tables": dict(profiles),
        "users_without_events": users_without_events(users, events),
    }
