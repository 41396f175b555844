"""Contracts shared across layers: the canonical tables, the raw-read and quarantine columns, the
quarantine reason codes, and the shape of a fused user row (its numeric features and text separators).

The I/O layer and the models depend on these names; the transforms that produce them import them from here."""

from __future__ import annotations

from pyspark.sql import types as T

USER_ATTRIBUTES = ("age", "gender", "region")
# Extra user attributes a preset maps (`user_attributes`): a categorical one is a label, a numeric one a number.
ATTRIBUTE_KINDS = ("categorical", "numeric")
CATEGORICAL, NUMERIC = ATTRIBUTE_KINDS
# The kinds of the canonical attributes, as the fused tables and the baselines treat them.
CANONICAL_ATTRIBUTE_KINDS = {"age": NUMERIC, "gender": CATEGORICAL, "region": CATEGORICAL}
EVENT_TYPES = ("view", "search", "cart", "remove_cart", "fav", "purchase", "return")

EVENTS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("event_type", T.StringType(), False),
    T.StructField("item_id", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("brand", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("quantity", T.DoubleType(), True),
    T.StructField("query", T.StringType(), True),
    T.StructField("session_id", T.StringType(), True),
    T.StructField("source", T.StringType(), False),
    T.StructField("dt", T.DateType(), False),
])

USERS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("age", T.IntegerType(), True),
    T.StructField("gender", T.StringType(), False),
    T.StructField("region", T.StringType(), True),
    T.StructField("signup_ts", T.TimestampType(), True),
    # The preset's extra attributes (`user_attributes`), name -> value: one column whatever the preset, so
    # that the table's contract stays fixed. Numbers are written as numbers (`3`, `2.5`); unknown ones are absent.
    T.StructField("attributes", T.MapType(T.StringType(), T.StringType()), True),
])

ITEMS = T.StructType([
    T.StructField("item_id", T.StringType(), False),
    T.StructField("title", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("brand", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("description", T.StringType(), True),
])

# One row per accepted review; `rating` is null where the source gave none, `text` is cleaned like
# every other text field (letters, marks and digits only).
REVIEWS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("rating", T.DoubleType(), True),
    T.StructField("text", T.StringType(), True),
    T.StructField("source", T.StringType(), False),
])

LABELS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("label", T.IntegerType(), False),
])

QUARANTINE = T.StructType([
    T.StructField("raw", T.StringType(), True),
    T.StructField("reason", T.StringType(), False),
    T.StructField("source_file", T.StringType(), True),
    T.StructField("run_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    # 1-based physical line in `source_file`; only sources read line by line (`delimiter_regex`) know it.
    T.StructField("source_line", T.LongType(), True),
])

# Reason codes, in the order the checks run: a row carries the first one it fails.
REASON_MALFORMED = "malformed_row"  # wrong column count or unparseable record
REASON_BAD_ENCODING = "invalid_encoding"  # bytes not valid in the declared encoding (decoded as U+FFFD)
REASON_MISSING_USER = "missing_user_id"
REASON_MALFORMED_ID = "malformed_id"  # a user/item id with quotes, brackets, markup or control characters
REASON_MISSING_ITEM = "missing_item_id"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_UNKNOWN_EVENT = "unknown_event_type"
REASON_BAD_NUMBER = "bad_number"
REASON_OUTSIDE_WINDOW = "outside_window"
REASON_BAD_LABEL = "bad_label"
REASON_BAD_RATING = "bad_rating"  # a rating that is given but is not a number in [1, 5]
REASON_EMPTY_REVIEW = "empty_review"  # neither text nor rating
REASON_DUPLICATE = "duplicate"

# Columns the raw reader adds to every source row (io.read_source), carried into the quarantine.
SOURCE_FILE = "_source_file"
SOURCE_LINE = "_source_line"  # 1-based physical line; only sources read line by line know it
CORRUPT = "_corrupt_record"  # the raw text of a record the reader could not split into columns
META_COLUMNS = (SOURCE_FILE, SOURCE_LINE, CORRUPT)

# A fused user row (features/*_sequences): the numeric features every model may use, the splits,
# and how the text is put together (attributes, then events newest last, or NO_HISTORY).
AGGREGATE_FEATURES = (
    "n_events", "n_view", "n_search", "n_cart", "n_remove_cart", "n_fav", "n_purchase", "n_return",
    "n_baskets", "n_baskets_90d", "n_baskets_365d", "n_active_days", "n_distinct_items",
    "n_distinct_categories", "spend", "spend_365d",
)
TIME_FEATURES = ("recency_days", "purchase_recency_days", "tenure_days", "mean_basket_gap_days")
NUMERIC_FEATURES = AGGREGATE_FEATURES + TIME_FEATURES
# The user's static attributes in a fused row, for the baselines: age and the numeric extras as numbers,
# gender (unless U), region and the categorical extras as labels; an unknown attribute is absent.
NUMERIC_ATTRIBUTES = "numeric_attributes"  # map<string, double>
CATEGORICAL_ATTRIBUTES = "categorical_attributes"  # map<string, string>
SPLITS = ("train", "valid", "test")
SEQUENCE_SEPARATOR = " ; "
ATTRIBUTE_SEPARATOR = " [SEP] "  # between the attributes and the behaviour events
NO_HISTORY = "no history"


def sql_string(text: str) -> str:
    """`text` as a Spark SQL string literal ('…', backslashes and quotes escaped), for statements that
    splice in names and values the data or the config gave (partition values, attribute levels)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
