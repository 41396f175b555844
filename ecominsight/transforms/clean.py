"""Clean: raw rows (all strings) -> canonical events/users/items/labels + quarantine.

Every function here is a pure DataFrame -> DataFrame transform. The central one,
`tag_events`, gives each raw row either canonical values or a quarantine reason, so that
`input rows = accepted rows + quarantined rows` holds by construction.
"""

from __future__ import annotations

import datetime as dt

from typing import TYPE_CHECKING, Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import schema
from ecominsight.schema import CORRUPT, META_COLUMNS, SOURCE_FILE, SOURCE_LINE

if TYPE_CHECKING:  # the typed preset parts these transforms take (never a whole preset or config)
    from ecominsight.presets import RejectRule, TimestampSpec, UserAttribute, WindowSpec

HTML_TAG = r"<[^>]*>"
HTML_ENTITY = r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);"
# Letters of every script (CJK included), combining marks and digits survive; the rest is noise.
NOT_TEXT = r"[^\p{L}\p{M}\p{N}\s]"
NULL_TOKENS = ("", "nan", "na", "null", "none", "n/a")
# A text that clean_text leaves as it is: words of letters, marks and digits, one space apart.
CLEAN_TEXT = r"^[\p{L}\p{M}\p{N}]+( [\p{L}\p{M}\p{N}]+)*$"
# An id rendered as a float (`266079.0`): the integer part is the id.
FLOAT_ID = r"^(-?\d+)\.0+$"


def clean_text(column: Column) -> Column:
    """Strip HTML tags and entities, drop special characters, keep letters (CJK too) and digits,
    collapse whitespace. Empty results become null."""
    text = F.regexp_replace(column, HTML_TAG, " ")
    text = F.regexp_replace(text, HTML_ENTITY, " ")
    text = F.regexp_replace(text, NOT_TEXT, " ")
    text = F.trim(F.regexp_replace(text, r"\s+", " "))
    # Most values (a category code, a plain product name) are clean already: one match instead of
    # four replacements, with the same result (no markup, no noise, single inner spaces, trimmed).
    return F.when(column.rlike(CLEAN_TEXT), column).when(text != "", text)


def normalize_id(column: Column) -> Column:
    """Trim an id, turn float renderings such as `266079.0` into `266079`, null for empty/NaN."""
    text = F.trim(column.cast("string"))
    # The regex only where a dot makes a float rendering possible: ids are most of a row's values.
    text = F.when(text.contains("."), F.regexp_replace(text, FLOAT_ID, "$1")).otherwise(text)
    return F.when(text.isNotNull() & ~_is_null_token(text), text)


# An id is a short token: quotes, brackets, markup and control characters mean a parsing accident
# (a JSON object read as a string) or an injection attempt, not an identifier.
MALFORMED_ID = r'[\x00-\x1f\x7f"<>{}\[\]]'
MAX_ID_LENGTH = 256


def malformed_id(column: Column) -> Column:
    """Whether a (normalized, non-null) id is not a plausible identifier."""
    return F.coalesce(column.rlike(MALFORMED_ID) | (F.length(column) > MAX_ID_LENGTH), F.lit(False))


def _is_null_token(text: Column) -> Column:
    """Whether a (trimmed) text is one of NULL_TOKENS in any case. Lower-casing (ICU in Spark 4) is
    the costly part, so it runs only on texts short enough to be a token: case mapping never
    shortens a text, so a longer one cannot become one."""
    return (F.length(text) <= max(map(len, NULL_TOKENS))) & F.lower(text).isin(*NULL_TOKENS)


def _is_blank(column: Column) -> Column:
    return column.isNull() | _is_null_token(F.trim(column))


def _raw_ref(spec: str | None) -> Column | None:
    """A preset field spec: a raw column name, or `expr:<Spark SQL over raw column names>`."""
    if spec is None:
        return None
    if spec.startswith("expr:"):
        return F.expr(spec[len("expr:"):])
    return F.col(f"`{spec}`")


def _field(field_map: Mapping[str, str], name: str) -> Column:
    """The raw value of a canonical field as a string; null when the preset does not map it."""
    ref = _raw_ref(field_map.get(name))
    return ref.cast("string") if ref is not None else F.lit(None).cast("string")


def _number(raw_value: Column) -> tuple[Column, Column]:
    """(the value as a finite double, whether it is given but is not a finite number)."""
    parsed = F.trim(raw_value).try_cast("double")
    value = F.when(~F.isnan(parsed) & (F.abs(parsed) < float("inf")), parsed)
    # The parse result first: the blank check only runs where no number came out.
    return value, value.isNull() & ~_is_blank(raw_value)


# Beside a tagged table's `attributes`: the names of the numeric attributes given in the row that are no
# number (nulled, like an unreadable age, and counted in the data-quality report).
UNPARSED_ATTRIBUTES = "attributes_unparsed"
ATTRIBUTES_TYPE = "map<string,string>"


def _number_text(value: Column) -> Column:
    """A finite double as text: whole numbers without a fraction (`3`, not `3.0`), others as Spark writes them."""
    whole = (value == F.floor(value)) & (F.abs(value) < 1e15)
    return F.when(whole, value.cast("long").cast("string")).otherwise(value.cast("string"))


def attribute_values(attributes: Mapping[str, UserAttribute] | None) -> tuple[Column, Column]:
    """The preset's extra user attributes of a raw row -> (`attributes`: name -> value for the values
    present, an empty map when none; the names of the numeric ones given but not a number).

    A categorical value is cleaned like any text field; a numeric one must parse as a finite number,
    else it is left out of the map and its name listed, as an unreadable age becomes null."""
    values, unparsed = {}, []
    for name, spec in sorted((attributes or {}).items()):
        raw_value = _raw_ref(spec.column).cast("string")
        if spec.kind == schema.NUMERIC:
            number, bad = _number(raw_value)
            values[name] = _number_text(number)
            unparsed.append(F.when(bad, F.lit(name)))
        else:
            values[name] = clean_text(raw_value)
    return attribute_map(values), F.filter(F.array(*unparsed).cast("array<string>"), lambda n: n.isNotNull())


def attribute_map(values: Mapping[str, Column]) -> Column:
    """name -> value (string columns) as a map of the non-null values; an empty map when there are none."""
    if not values:
        return F.create_map().cast(ATTRIBUTES_TYPE)
    entries = F.array(*[F.struct(F.lit(name).alias("key"), value.cast("string").alias("value"))
                        for name, value in sorted(values.items())])
    return F.map_from_entries(F.filter(entries, lambda e: e["value"].isNotNull())).cast(ATTRIBUTES_TYPE)


def mapped_columns(*field_maps: Mapping[str, str] | None, extra: Sequence[str | None] = ()) -> list[str]:
    """The raw column names that field maps refer to directly (`expr:` specs are not parsed)."""
    names = [spec for fields in field_maps for spec in (fields or {}).values() if not spec.startswith("expr:")]
    return list(dict.fromkeys([*names, *[name for name in extra if name]]))


def mark_missing_columns(raw: DataFrame, *, columns: Sequence[str]) -> DataFrame:
    """Raw rows whose source lacks columns the preset maps (a wrong delimiter, a renamed or
    repeated header name) -> the same rows, every one marked malformed with its content kept as
    JSON, and the missing columns added as nulls: the file is quarantined, the job goes on."""
    missing = [name for name in columns if name not in raw.columns]
    if not missing:
        return raw
    content = F.to_json(F.struct(*[F.col(f"`{c}`") for c in raw.columns if c not in META_COLUMNS]))
    corrupt = F.coalesce(F.col(CORRUPT), content) if CORRUPT in raw.columns else content
    return raw.withColumn(CORRUPT, corrupt).withColumns({name: F.lit(None).cast("string") for name in missing})


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


# Event times outside this range are data errors (year 9999, negative or zero epochs), not events.
PLAUSIBLE_TIME = ("1970-01-02", "2100-01-01")


def parse_timestamp(column: Column, *, unit: str, fmt: str | Sequence[str], zone: str) -> Column:
    """Raw value -> UTC timestamp, null when unparseable or outside PLAUSIBLE_TIME (never an
    exception). `fmt` may list several patterns (a file with mixed date formats): the first that
    parses wins."""
    if unit in ("s", "ms"):
        number = column.cast("string").try_cast("double")
        # Bounded before the conversion: a huge number must become null, not an overflow error.
        micros = F.when(number.between(-1e12 if unit == "s" else -1e15, 1e12 if unit == "s" else 1e15),
                        (number * (1_000_000 if unit == "s" else 1000)).cast("long"))
        parsed = F.timestamp_micros(micros)
    else:
        text = F.trim(column.cast("string"))
        patterns = [fmt] if isinstance(fmt, str) else list(fmt)
        wall_clock = F.coalesce(*[F.try_to_timestamp(text, F.lit(p)) for p in patterns])
        parsed = wall_clock if zone.upper() == "UTC" else F.to_utc_timestamp(wall_clock, zone)
    start, end = (F.lit(dt.datetime.fromisoformat(bound)).cast("timestamp") for bound in PLAUSIBLE_TIME)
    return F.when((parsed >= start) & (parsed < end), parsed)


def event_time(timestamp: TimestampSpec) -> Column:
    """Column expression: the UTC time `timestamp` describes (its column parsed, or its fixed value)."""
    if timestamp.value is not None:
        return F.to_timestamp(F.lit(timestamp.value))
    return parse_timestamp(F.col(f"`{timestamp.column}`"), unit=timestamp.unit, fmt=timestamp.format, zone=timestamp.zone)


def map_values(column: Column, mapping: Mapping[str, object] | None) -> Column:
    """A raw value (trimmed, lower-cased) -> its canonical value from `mapping`; null when unmapped."""
    key = F.lower(F.trim(column.cast("string")))
    mapped = F.lit(None)
    for raw_value, canonical in (mapping or {}).items():
        mapped = F.when(key == raw_value, F.lit(canonical)).otherwise(mapped)
    return mapped


def parse_age(column: Column, *, age_values: Mapping[str, int] | None = None) -> Column:
    """Age in years: a mapped value (an age bucket -> a representative age) or a plausible number."""
    number = F.trim(column.cast("string")).try_cast("double").cast("int")
    return F.coalesce(map_values(column, age_values).cast("int"), F.when((number > 0) & (number < 120), number))


def parse_gender(column: Column, *, gender_values: Mapping[str, str] | None = None) -> Column:
    """M/F/U from a mapped value or a literal M/F; null when unknown."""
    literal = F.upper(F.trim(column.cast("string")))
    return F.coalesce(map_values(column, gender_values).cast("string"), F.when(literal.isin("M", "F"), literal))


def outside_window(ts: Column, window: WindowSpec) -> Column:
    """Whether a UTC time falls outside the window's [start, end), wall-clock times in its `zone`."""
    start_utc = F.to_utc_timestamp(F.to_timestamp(F.lit(window.start)), window.zone)
    end_utc = F.to_utc_timestamp(F.to_timestamp(F.lit(window.end)), window.zone)
    return (ts < start_utc) | (ts >= end_utc)


def _has_damaged_text(columns: Sequence[str]) -> Column:
    """Whether any of `columns` holds the decoder's replacement character or a NUL byte. The values
    are joined first: each needle is one character, so it lies in the join exactly when it lies in
    a value, and two searches replace two per column."""
    if not columns:
        return F.lit(False)
    values = F.concat_ws("", *[F.col(f"`{c}`").cast("string") for c in columns])
    return values.contains("\ufffd") | values.contains("\x00")


def _provenance(raw: DataFrame) -> list[Column]:
    """`raw` (the original row as JSON, or the raw line of a malformed record), `source_file`,
    `source_line` and the helper flag `_malformed`, for any raw frame as read_source returns it."""
    raw_columns = [c for c in raw.columns if c not in META_COLUMNS]
    original = F.to_json(F.struct(*[F.col(f"`{c}`") for c in raw_columns]))
    has_corrupt = CORRUPT in raw.columns
    if has_corrupt:
        original = F.coalesce(F.col(CORRUPT), original)

    def meta(name: str, kind: str) -> Column:
        return F.col(name) if name in raw.columns else F.lit(None).cast(kind)

    return [
        original.alias("raw"),
        meta(SOURCE_FILE, "string").alias("source_file"),
        meta(SOURCE_LINE, "long").alias("source_line"),
        (F.col(CORRUPT).isNotNull() if has_corrupt else F.lit(False)).alias("_malformed"),
        # The decoder's replacement character (bytes not valid in the declared encoding) or NUL
        # bytes, which no text format carries: binary damage either way. Checked on the values,
        # since to_json escapes a NUL.
        _has_damaged_text([*raw_columns, *([CORRUPT] if has_corrupt else [])]).alias("_bad_encoding"),
    ]


def _with_reason(tagged: DataFrame, reason: Column, *, source: str, run_id: str) -> DataFrame:
    helpers = [c for c in tagged.columns if c.startswith("_")]
    return (
        tagged.withColumn("reason", reason)
        .drop(*helpers)
        .withColumn("source", F.lit(source))
        .withColumn("run_id", F.lit(run_id))
    )


def tag_events(
    raw: DataFrame,
    *,
    source: str,
    run_id: str,
    field_map: Mapping[str, str],
    user_field_map: Mapping[str, str] | None = None,
    user_attributes: Mapping[str, UserAttribute] | None = None,
    label_column: str | None = None,
    event_type_map: Mapping[str, str] | None = None,
    timestamp: TimestampSpec,
    window: WindowSpec | None = None,
    reject_rules: Sequence[RejectRule] = (),
) -> DataFrame:
    """Give every raw row canonical values and, where it fails a check, a quarantine reason.

    Input: raw rows (string columns named as in the source, plus `_source_file` and
    optionally `_corrupt_record`/`_source_line`). Output: one row per input row with the canonical
    event columns, `age_raw`/`gender_raw`/`region_raw`/`label_raw`, `attributes` and
    `attributes_unparsed` (`attribute_values` of `user_attributes`), `raw` (the original row as JSON
    or text), `source_file`, `source_line`, `source`, `run_id` and `reason` (null for accepted rows).
    """
    def field(name: str) -> Column:
        return _field(field_map, name)

    event_type_raw = F.lower(F.trim(field("event_type")))
    # Mapped values first; a raw value that already is canonical passes as it is.
    event_type = F.coalesce(map_values(event_type_raw, event_type_map).cast("string"),
                            F.when(event_type_raw.isin(*schema.EVENT_TYPES), event_type_raw))

    ts = event_time(timestamp)

    price, bad_price = _number(field("price"))
    quantity, bad_quantity = _number(field("quantity"))

    user_fields = user_field_map or {}
    attributes, unparsed = attribute_values(user_attributes)
    tagged = raw.select(
        normalize_id(field("user_id")).alias("user_id"),
        ts.alias("ts"),
        event_type.alias("event_type"),
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
        attributes.alias("attributes"),
        unparsed.alias(UNPARSED_ATTRIBUTES),
        *_provenance(raw),
        (bad_price | bad_quantity).alias("_bad_number"),
        *[F.coalesce(F.expr(rule.when), F.lit(False)).alias(f"_rule_{i}") for i, rule in enumerate(reject_rules)],
    )

    reason = F.when(F.col("_malformed"), F.lit(schema.REASON_MALFORMED))
    reason = reason.when(F.col("_bad_encoding"), F.lit(schema.REASON_BAD_ENCODING))
    for i, rule in enumerate(reject_rules):
        reason = reason.when(F.col(f"_rule_{i}"), F.lit(rule.reason))
    reason = (
        reason.when(F.col("user_id").isNull(), F.lit(schema.REASON_MISSING_USER))
        .when(malformed_id(F.col("user_id")) | malformed_id(F.col("item_id")), F.lit(schema.REASON_MALFORMED_ID))
        .when(F.col("ts").isNull(), F.lit(schema.REASON_BAD_TIMESTAMP))
        .when(F.col("event_type").isNull(), F.lit(schema.REASON_UNKNOWN_EVENT))
        .when(F.col("_bad_number"), F.lit(schema.REASON_BAD_NUMBER))
    )
    if window is not None:
        reason = reason.when(outside_window(F.col("ts"), window), F.lit(schema.REASON_OUTSIDE_WINDOW))
    if label_column:
        reason = reason.when(parse_label(F.col("label_raw")).isNull(), F.lit(schema.REASON_BAD_LABEL))

    return _with_reason(tagged, reason, source=source, run_id=run_id)


def parse_label(column: Column) -> Column:
    """`1/0`, `true/false`, `yes/no` (any case) -> 1/0; anything else -> null."""
    text = F.lower(F.trim(column.cast("string")))
    return (
        F.when(text.isin("1", "1.0", "true", "yes", "y"), F.lit(1))
        .when(text.isin("0", "0.0", "false", "no", "n"), F.lit(0))
    )


DEDUP_KEY = ("user_id", "ts", "event_type", "item_id", "price", "quantity", "query", "session_id")


def mark_duplicates(tagged: DataFrame, *, key: Sequence[str] = DEDUP_KEY, prefer: Sequence[Column] = ()) -> DataFrame:
    """Among accepted rows, mark every repeat of the same `key` (by default: the same canonical
    event) as `duplicate`.

    Input/output: a tagged frame (`tag_events`, `tag_users`, ...). The first copy (by `prefer`, then
    source file, line and raw text) stays; rejected rows are ranked apart so that they never hide an
    accepted one.
    """
    accepted = F.col("reason").isNull()
    first_copy_first = Window.partitionBy(accepted, *key).orderBy(
        *prefer, F.col("source_file").asc_nulls_last(), F.col("source_line").asc_nulls_last(), F.col("raw")
    )
    return (
        tagged.withColumn("_copy", F.row_number().over(first_copy_first))
        .withColumn("reason", F.when(accepted & (F.col("_copy") > 1), F.lit(schema.REASON_DUPLICATE)).otherwise(F.col("reason")))
        .drop("_copy")
    )


def raw_of_rejected_only(tagged: DataFrame) -> DataFrame:
    """Input: a tagged frame (after `mark_duplicates`). Output: the same rows, `raw` kept for the
    rejected rows only (null where `reason` is null).

    Only quarantined rows' original text is ever written (`quarantined_rows`); the JSON of every
    accepted row, needed up to the duplicate ranking's last tie-break, would otherwise be cached and
    re-read with the frame: at 1M events it is most of the cached bytes."""
    return tagged.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("raw")))


def accepted_events(tagged: DataFrame) -> DataFrame:
    """Accepted rows in the canonical `events` schema (see ecominsight.schema.EVENTS)."""
    return tagged.filter(F.col("reason").isNull()).select(
        "user_id", "ts", "event_type", "item_id", "category", "brand", "price", "quantity",
        "query", "session_id", "source", F.to_date("ts").alias("dt"),
    )


def quarantined_rows(tagged: DataFrame) -> DataFrame:
    """Rejected rows of any tagged table with their original content, reason, source file (and
    line where known) and run id (canonical `quarantine` schema)."""
    return tagged.filter(F.col("reason").isNotNull()).select(*schema.QUARANTINE.fieldNames())


def tag_users(
    raw: DataFrame,
    *,
    source: str,
    run_id: str,
    field_map: Mapping[str, str],
    age_values: Mapping[str, int] | None = None,
    gender_values: Mapping[str, str] | None = None,
    signup: TimestampSpec | None = None,
    user_attributes: Mapping[str, UserAttribute] | None = None,
) -> DataFrame:
    """Rows of a user list (a `user_source`) -> canonical user columns and a quarantine reason.

    Input: raw rows as read_source returns them. Output: one row per input row with `user_id`,
    `age`, `gender`, `region`, `signup_ts` (from `signup`; null when absent or unparseable, which
    does not reject the user), `attributes` and `attributes_unparsed` (`attribute_values` of
    `user_attributes`), the provenance columns and `reason`: `malformed_row`,
    `missing_user_id`, or `duplicate` for a repeat of a listed user id (the first copy stays).
    """
    # A signup time is read from its column only: a fixed `value` would date every user alike.
    signup_ts = (parse_timestamp(F.col(f"`{signup.column}`"), unit=signup.unit, fmt=signup.format, zone=signup.zone)
                 if signup is not None and signup.column else F.lit(None).cast("timestamp"))
    attributes, unparsed = attribute_values(user_attributes)
    tagged = raw.select(
        normalize_id(_field(field_map, "user_id")).alias("user_id"),
        parse_age(_field(field_map, "age"), age_values=age_values).alias("age"),
        parse_gender(_field(field_map, "gender"), gender_values=gender_values).alias("gender"),
        clean_text(_field(field_map, "region")).alias("region"),
        signup_ts.alias("signup_ts"),
        attributes.alias("attributes"),
        unparsed.alias(UNPARSED_ATTRIBUTES),
        *_provenance(raw),
    )
    reason = (F.when(F.col("_malformed"), F.lit(schema.REASON_MALFORMED))
              .when(F.col("user_id").isNull(), F.lit(schema.REASON_MISSING_USER)))
    return mark_duplicates(_with_reason(tagged, reason, source=source, run_id=run_id), key=("user_id",))


def tag_items(raw: DataFrame, *, source: str, run_id: str, field_map: Mapping[str, str]) -> DataFrame:
    """Rows of an item list (an `item_source`) -> canonical item columns and a quarantine reason.

    Input: raw rows as read_source returns them. Output: one row per input row with the `items`
    columns, the provenance columns and `reason`: `malformed_row`, `missing_item_id`, `bad_number`
    (a price that is not a number), or `duplicate` for a repeat of a listed item id.
    """
    price, bad_price = _number(_field(field_map, "price"))
    tagged = raw.select(
        normalize_id(_field(field_map, "item_id")).alias("item_id"),
        *[clean_text(_field(field_map, name)).alias(name) for name in ("title", "category", "brand")],
        price.alias("price"),
        clean_text(_field(field_map, "description")).alias("description"),
        *_provenance(raw),
        bad_price.alias("_bad_number"),
    )
    reason = (F.when(F.col("_malformed"), F.lit(schema.REASON_MALFORMED))
              .when(F.col("item_id").isNull(), F.lit(schema.REASON_MISSING_ITEM))
              .when(F.col("_bad_number"), F.lit(schema.REASON_BAD_NUMBER)))
    return mark_duplicates(_with_reason(tagged, reason, source=source, run_id=run_id), key=("item_id",))


REVIEW_KEY = ("user_id", "item_id", "ts", "text")


def tag_reviews(
    raw: DataFrame,
    *,
    source: str,
    run_id: str,
    field_map: Mapping[str, str],
    timestamp: TimestampSpec,
    rating_range: tuple[float, float] = (1.0, 5.0),
) -> DataFrame:
    """Raw rows -> canonical review columns and a quarantine reason, first failing check wins:
    `malformed_row`, `missing_user_id`, `missing_item_id`, `bad_timestamp`, `bad_rating` (given,
    but not a number in `rating_range`), `empty_review` (neither text nor rating), `duplicate`
    (same user, item, time and text; a copy with a rating is kept before one without).

    Input: raw rows as read_source returns them. Output: one row per input row with `user_id`,
    `item_id`, `ts`, `rating` (null when not given), `text` (cleaned), provenance and `reason`.
    """
    rating, bad_rating = _number(_field(field_map, "rating"))
    low, high = rating_range
    ts = event_time(timestamp)
    tagged = raw.select(
        normalize_id(_field(field_map, "user_id")).alias("user_id"),
        normalize_id(_field(field_map, "item_id")).alias("item_id"),
        ts.alias("ts"),
        rating.alias("rating"),
        clean_text(_field(field_map, "text")).alias("text"),
        *_provenance(raw),
        (bad_rating | ~F.coalesce(rating.between(low, high), F.lit(True))).alias("_bad_rating"),
    )
    reason = (
        F.when(F.col("_malformed"), F.lit(schema.REASON_MALFORMED))
        .when(F.col("user_id").isNull(), F.lit(schema.REASON_MISSING_USER))
        .when(F.col("item_id").isNull(), F.lit(schema.REASON_MISSING_ITEM))
        .when(F.col("ts").isNull(), F.lit(schema.REASON_BAD_TIMESTAMP))
        .when(F.col("_bad_rating"), F.lit(schema.REASON_BAD_RATING))
        .when(F.col("text").isNull() & F.col("rating").isNull(), F.lit(schema.REASON_EMPTY_REVIEW))
    )
    tagged = _with_reason(tagged, reason, source=source, run_id=run_id)
    return mark_duplicates(tagged, key=REVIEW_KEY, prefer=(F.col("rating").isNull(),))


def accepted_rows(tagged: DataFrame, contract: T.StructType) -> DataFrame:
    """Accepted rows of a tagged table in its canonical schema (`schema.USERS`, `ITEMS`, `REVIEWS`)."""
    return tagged.filter(F.col("reason").isNull()).select(*contract.fieldNames())


def combine_users(listed: DataFrame, derived: DataFrame) -> DataFrame:
    """Users of a user list and users derived from events -> one row per user (`users` schema).

    Attributes come from the list where it knows them (an unknown gender `U` does not count),
    else from the events, extra `attributes` name by name alike; list users without events stay, so
    that they can be reported and fused.
    """
    def known(frame: DataFrame) -> DataFrame:
        return frame.select("user_id", "age", F.when(F.col("gender") != "U", F.col("gender")).alias("gender"),
                            "region", "signup_ts", F.coalesce("attributes", F.create_map().cast(ATTRIBUTES_TYPE)).alias("attributes"))

    joined = known(listed).alias("l").join(known(derived).alias("d"), "user_id", "full")
    names = ("age", "gender", "region", "signup_ts")
    merged = {name: F.coalesce(F.col(f"l.{name}"), F.col(f"d.{name}")).alias(name) for name in names}
    merged["gender"] = F.coalesce(merged["gender"], F.lit("U")).alias("gender")
    listed_attributes = F.coalesce(F.col("l.attributes"), F.create_map().cast(ATTRIBUTES_TYPE))
    from_events = F.map_filter(F.coalesce(F.col("d.attributes"), F.create_map().cast(ATTRIBUTES_TYPE)),
                               lambda name, _: ~F.array_contains(F.map_keys(listed_attributes), name))
    merged["attributes"] = F.map_concat(listed_attributes, from_events).alias("attributes")
    return joined.select("user_id", *[merged[name] for name in (*names, "attributes")])


def combine_items(listed: DataFrame, derived: DataFrame) -> DataFrame:
    """Items of an item list and items derived from events -> one row per item (`items` schema);
    the list's values first, the events' where the list has none."""
    names = [c for c in schema.ITEMS.fieldNames() if c != "item_id"]
    joined = listed.alias("l").join(derived.alias("d"), "item_id", "full")
    return joined.select("item_id", *[F.coalesce(F.col(f"l.{n}"), F.col(f"d.{n}")).alias(n) for n in names])


def derive_users(tagged: DataFrame, *, gender_values: Mapping[str, str] | None = None,
                 age_values: Mapping[str, int] | None = None, attributes: Sequence[str] = ()) -> DataFrame:
    """One row per accepted user with the latest non-null attributes (canonical `users` schema);
    `attributes` names the extra ones that `tag_events` put in its `attributes` map."""
    accepted = tagged.filter(F.col("reason").isNull())
    extras = {name: f"_attribute_{i}" for i, name in enumerate(sorted(attributes))}
    prepared = accepted.select(
        "user_id", "ts", parse_age(F.col("age_raw"), age_values=age_values).alias("age"),
        parse_gender(F.col("gender_raw"), gender_values=gender_values).alias("gender"),
        clean_text(F.col("region_raw")).alias("region"),
        *[F.col("attributes")[name].alias(column) for name, column in extras.items()],
    )
    latest = {name: F.max_by(name, F.when(F.col(name).isNotNull(), F.col("ts")))
              for name in ("age", "gender", "region", *extras.values())}
    return prepared.groupBy("user_id").agg(
        latest["age"].alias("age"),
        F.coalesce(latest["gender"], F.lit("U")).alias("gender"),
        latest["region"].alias("region"),
        F.min("ts").alias("signup_ts"),
        attribute_map({name: latest[column] for name, column in extras.items()}).alias("attributes"),
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
