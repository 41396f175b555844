"""Clean: raw rows (all strings) -> canonical events/users/items/labels + quarantine.

Every function here is a pure DataFrame -> DataFrame transform. The central one,
`tag_events`, gives each raw row either canonical values or a quarantine reason, so that
`input rows = accepted rows + quarantined rows` holds by construction.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ecominsight import schema

HTML_TAG = r"<[^>]*>"
HTML_ENTITY = r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);"
# Letters of every script (CJK included), combining marks and digits survive; the rest is noise.
NOT_TEXT = r"[^\p{L}\p{M}\p{N}\s]"
NULL_TOKENS = ("", "nan", "na", "null", "none", "n/a")

SOURCE_FILE = "_source_file"
CORRUPT = "_corrupt_record"


def clean_text(column: Column) -> Column:
    """Strip HTML tags and entities, drop special characters, keep letters (CJK too) and digits,
    collapse whitespace. Empty results become null."""
    text = F.regexp_replace(column, HTML_TAG, " ")
    text = F.regexp_replace(text, HTML_ENTITY, " ")
    text = F.regexp_replace(text, NOT_TEXT, " ")
    text = F.trim(F.regexp_replace(text, r"\s+", " "))
    return F.when(text != "", text)


def normalize_id(column: Column) -> Column:
    """Trim an id, turn float renderings such as `266079.0` into `266079`, null for empty/NaN."""
    text = F.trim(column.cast("string"))
    text = F.regexp_replace(text, r"^(-?\d+)\.0+$", "$1")
    return F.when(text.isNotNull() & ~F.lower(text).isin(*NULL_TOKENS), text)


def _is_blank(column: Column) -> Column:
    return column.isNull() | F.lower(F.trim(column)).isin(*NULL_TOKENS)


def _raw_ref(spec: str | None) -> Column | None:
    """A preset field spec: a raw column name, or `expr:<Spark SQL over raw column names>`."""
    if spec is None:
        return None
    if spec.startswith("expr:"):
        return F.expr(spec[len("expr:"):])
    return F.col(f"`{spec}`")


def resolve_aliases(raw: DataFrame, *, aliases: Mapping[str, Sequence[str]] | None = None) -> DataFrame:
    """Resolve column aliases (e.g. `InvoiceNo` in one file, `Invoice` in another) into one column.

    Input: raw rows as read. Output: the same rows, each alias group coalesced into its canonical name.
    """
    out = raw
    for name, others in (aliases or {}).items():
        present = [c for c in (name, *others) if c in out.columns]
        if not present:
            continue
        out = out.withColumn(name, F.coalesce(*[F.col(f"`{c}`").cast("string") for c in present]))
        out = out.drop(*[c for c in others if c in out.columns])
    return out


def parse_timestamp(column: Column, *, unit: str, fmt: str, zone: str) -> Column:
    """Raw value -> UTC timestamp, null when unparseable (never an exception)."""
    if unit == "s":
        seconds = column.cast("string").try_cast("double")
        return F.when(seconds.isNotNull(), F.timestamp_micros((seconds * 1_000_000).cast("long")))
    if unit == "ms":
        millis = column.cast("string").try_cast("double")
        return F.when(millis.isNotNull(), F.timestamp_micros((millis * 1000).cast("long")))
    wall_clock = F.try_to_timestamp(F.trim(column.cast("string")), F.lit(fmt))
    return wall_clock if zone.upper() == "UTC" else F.to_utc_timestamp(wall_clock, zone)


def tag_events(
    raw: DataFrame,
    *,
    source: str,
    run_id: str,
    field_map: Mapping[str, str],
    user_field_map: Mapping[str, str] | None = None,
    label_column: str | None = None,
    event_type_map: Mapping[str, str] | None = None,
    ts_column: str | None = None,
    ts_unit: str = "string",
    ts_format: str = "yyyy-MM-dd HH:mm:ss",
    ts_zone: str = "UTC",
    ts_value: str | None = None,
    window: tuple[str, str, str] | None = None,
    reject_rules: Sequence[tuple[str, str]] = (),
) -> DataFrame:
    """Give every raw row canonical values and, where it fails a check, a quarantine reason.

    Input: raw rows (string columns named as in the source, plus `_source_file` and
    optionally `_corrupt_record`). Output: one row per input row with the canonical event
    columns, `age_raw`/`gender_raw`/`region_raw`/`label_raw`, `raw` (the original row as JSON or
    text), `source_file`, `source`, `run_id` and `reason` (null for accepted rows).
    """
    raw_columns = [c for c in raw.columns if c not in (SOURCE_FILE, CORRUPT)]
    has_corrupt = CORRUPT in raw.columns
    original = F.to_json(F.struct(*[F.col(f"`{c}`") for c in raw_columns]))
    if has_corrupt:
        original = F.coalesce(F.col(CORRUPT), original)

    def field(name: str) -> Column:
        ref = _raw_ref(field_map.get(name))
        return ref.cast("string") if ref is not None else F.lit(None).cast("string")

    event_type_raw = F.lower(F.trim(field("event_type")))
    mapping = dict(event_type_map or {})
    mapped = F.lit(None).cast("string")
    for raw_value, canonical in mapping.items():
        mapped = F.when(event_type_raw == raw_value, F.lit(canonical)).otherwise(mapped)
    # Mapped values first; a raw value that already is canonical passes as it is.
    event_type = F.coalesce(mapped, F.when(event_type_raw.isin(*schema.EVENT_TYPES), event_type_raw))

    if ts_value is not None:
        ts = F.to_timestamp(F.lit(ts_value))
    else:
        ts = parse_timestamp(F.col(f"`{ts_column}`"), unit=ts_unit, fmt=ts_format, zone=ts_zone)

    price_raw, quantity_raw = field("price"), field("quantity")
    price = F.trim(price_raw).try_cast("double")
    quantity = F.trim(quantity_raw).try_cast("double")
    bad_number = (~_is_blank(price_raw) & price.isNull()) | (~_is_blank(quantity_raw) & quantity.isNull())

    user_fields = user_field_map or {}
    tagged = raw.select(
        normalize_id(field("user_id")).alias("user_id"),
        ts.alias("ts"),
        event_type.alias("event_type"),
        event_type_raw.alias("_event_type_raw"),
        normalize_id(field("item_id")).alias("item_id"),
        clean_text(field("category")).alias("category"),
        clean_text(field("brand")).alias("brand"),
        clean_text(field("title")).alias("title"),
        price.alias("price"),
        quantity.alias("quantity"),
        clean_text(field("query")).alias("query"),
        normalize_id(field("session_id")).alias("session_id"),
        *[
            (_raw_ref(user_fields[name]).cast("string") if name in user_fields else F.lit(None).cast("string"))
            .alias(f"{name}_raw")
            for name in schema.USER_ATTRIBUTES
        ],
        (_raw_ref(label_column).cast("string") if label_column else F.lit(None).cast("string")).alias("label_raw"),
        original.alias("raw"),
        F.col(SOURCE_FILE).alias("source_file") if SOURCE_FILE in raw.columns else F.lit(None).cast("string").alias("source_file"),
        (F.col(CORRUPT).isNotNull() if has_corrupt else F.lit(False)).alias("_malformed"),
        bad_number.alias("_bad_number"),
        *[F.coalesce(F.expr(predicate), F.lit(False)).alias(f"_rule_{i}") for i, (_, predicate) in enumerate(reject_rules)],
    )

    reason = F.when(F.col("_malformed"), F.lit(schema.REASON_MALFORMED))
    for i, (code, _) in enumerate(reject_rules):
        reason = reason.when(F.col(f"_rule_{i}"), F.lit(code))
    reason = (
        reason.when(F.col("user_id").isNull(), F.lit(schema.REASON_MISSING_USER))
        .when(F.col("ts").isNull(), F.lit(schema.REASON_BAD_TIMESTAMP))
        .when(F.col("event_type").isNull(), F.lit(schema.REASON_UNKNOWN_EVENT))
        .when(F.col("_bad_number"), F.lit(schema.REASON_BAD_NUMBER))
    )
    if window is not None:
        start, end, zone = window
        start_utc = F.to_utc_timestamp(F.to_timestamp(F.lit(start)), zone)
        end_utc = F.to_utc_timestamp(F.to_timestamp(F.lit(end)), zone)
        reason = reason.when((F.col("ts") < start_utc) | (F.col("ts") >= end_utc), F.lit(schema.REASON_OUTSIDE_WINDOW))
    if label_column:
        reason = reason.when(parse_label(F.col("label_raw")).isNull(), F.lit(schema.REASON_BAD_LABEL))

    helper_columns = ["_malformed", "_bad_number", *[f"_rule_{i}" for i in range(len(reject_rules))]]
    return (
        tagged.withColumn("reason", reason)
        .drop(*helper_columns)
        .withColumn("source", F.lit(source))
        .withColumn("run_id", F.lit(run_id))
    )


def parse_label(column: Column) -> Column:
    """`1/0`, `true/false`, `yes/no` (any case) -> 1/0; anything else -> null."""
    text = F.lower(F.trim(column.cast("string")))
    return (
        F.when(text.isin("1", "1.0", "true", "yes", "y"), F.lit(1))
        .when(text.isin("0", "0.0", "false", "no", "n"), F.lit(0))
    )


DEDUP_KEY = ("user_id", "ts", "event_type", "item_id", "price", "quantity", "query", "session_id")


def mark_duplicates(tagged: DataFrame) -> DataFrame:
    """Among accepted rows, mark every repeat of the same canonical event as `duplicate`.

    Input/output: the `tag_events` shape. The first copy (by source file, then raw text) stays;
    rejected rows are ranked apart so that they never hide an accepted one.
    """
    accepted = F.col("reason").isNull()
    first_copy_first = Window.partitionBy(accepted, *DEDUP_KEY).orderBy(
        F.col("source_file").asc_nulls_last(), F.col("raw")
    )
    return (
        tagged.withColumn("_copy", F.row_number().over(first_copy_first))
        .withColumn("reason", F.when(accepted & (F.col("_copy") > 1), F.lit(schema.REASON_DUPLICATE)).otherwise(F.col("reason")))
        .drop("_copy")
    )


def accepted_events(tagged: DataFrame) -> DataFrame:
    """Accepted rows in the canonical `events` schema (see ecominsight.schema.EVENTS)."""
    return tagged.filter(F.col("reason").isNull()).select(
        "user_id", "ts", "event_type", "item_id", "category", "brand", "price", "quantity",
        "query", "session_id", "source", F.to_date("ts").alias("dt"),
    )


def quarantined_rows(tagged: DataFrame) -> DataFrame:
    """Rejected rows with their original content, reason, source file and run id."""
    return tagged.filter(F.col("reason").isNotNull()).select(*schema.QUARANTINE.fieldNames())


def derive_users(tagged: DataFrame, *, gender_values: Mapping[str, str] | None = None) -> DataFrame:
    """One row per accepted user with the latest non-null attributes (canonical `users` schema)."""
    accepted = tagged.filter(F.col("reason").isNull())
    gender_raw = F.lower(F.trim(F.col("gender_raw")))
    gender = F.lit(None).cast("string")
    for raw_value, canonical in (gender_values or {}).items():
        gender = F.when(gender_raw == raw_value, F.lit(canonical)).otherwise(gender)
    gender = F.coalesce(gender, F.when(F.upper(gender_raw).isin("M", "F"), F.upper(gender_raw)))
    age = F.trim(F.col("age_raw")).try_cast("double").cast("int")
    age = F.when((age > 0) & (age < 120), age)
    prepared = accepted.select(
        "user_id", "ts", age.alias("age"), gender.alias("gender"), clean_text(F.col("region_raw")).alias("region")
    )
    latest = {name: F.max_by(name, F.when(F.col(name).isNotNull(), F.col("ts"))) for name in ("age", "gender", "region")}
    return prepared.groupBy("user_id").agg(
        latest["age"].alias("age"),
        F.coalesce(latest["gender"], F.lit("U")).alias("gender"),
        latest["region"].alias("region"),
        F.min("ts").alias("signup_ts"),
    ).select(*schema.USERS.fieldNames())


def derive_items(tagged: DataFrame) -> DataFrame:
    """One row per item seen in accepted rows, with its latest title/category/brand/price."""
    accepted = tagged.filter(F.col("reason").isNull() & F.col("item_id").isNotNull())

    def latest(name: str) -> Column:
        return F.max_by(name, F.when(F.col(name).isNotNull(), F.col("ts"))).alias(name)

    return accepted.groupBy("item_id").agg(
        latest("title"), latest("category"), latest("brand"), latest("price"),
        F.lit(None).cast("string").alias("description"),
    ).select(*schema.ITEMS.fieldNames())


def derive_labels(tagged: DataFrame) -> DataFrame:
    """For sources that carry a label column: one row per user, positive if any row says so."""
    accepted = tagged.filter(F.col("reason").isNull())
    return accepted.groupBy("user_id").agg(F.max(parse_label(F.col("label_raw"))).cast("int").alias("label"))
