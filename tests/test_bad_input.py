"""Malformed input never crashes the clean and never loses a row.

Property-based: hypothesis writes files of random garbage lines (wrong column counts, broken quotes,
invalid UTF-8, NUL bytes, a 1 MB field, HTML/script text, blank lines, mixed line endings, zero-byte
files) and runs them through read_source -> tag_events -> mark_duplicates with a CSV preset (and the
line-based text reader). Every run must finish, account for each row (input = clean + quarantined),
keep the canonical contract on accepted rows, and read exactly the rows the files hold: for CSV,
every line that is not blank (Spark skips those, and one header line per file); for text, every line.
Example counts are small because each example is a few Spark jobs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from ecominsight.io import read_source
from ecominsight.presets import TimestampSpec, parse_preset
from ecominsight.schema import EVENT_TYPES
from ecominsight.transforms import clean

COLUMNS = ["uid", "when", "what", "item", "cost"]
FIELD_MAP = {"user_id": "uid", "event_type": "what", "item_id": "item", "price": "cost", "title": "item"}
BIG_FIELD = b"7,2020-01-01 10:00:00,pv," + b"x" * 1_000_000 + b",1"
# Java's String.trim: what Spark's CSV reader counts as a blank line to skip.
JAVA_BLANK = "".join(chr(c) for c in range(33))

valid_line = st.builds(
    lambda user, day, kind, item, price: f"{user},2020-01-{day:02d} 10:00:00,{kind},{item},{price}".encode(),
    st.sampled_from(["1", "2", "", "3.0", "NaN"]), st.integers(1, 28), st.sampled_from(["pv", "buy", "teleport"]),
    st.sampled_from(["i1", "i2", "<b>i3</b>"]), st.sampled_from(["1.5", "", "cheap", "-0"]),
)
garbage_line = st.one_of(
    st.lists(st.text(alphabet="ab1,;\t ", max_size=6), max_size=9).map(lambda f: ",".join(f).encode()),  # column counts
    st.sampled_from([
        b'1,"2020-01-01 10:00:00,pv,i1,1',  # unterminated quote
        b'"1","2020-01-01 10:00:00"x,pv,i1,1', b'1,2020-01-01 10:00:00,pv,"a""b",1', b'"""',
        b"\xff\xfe\xc3\x28,\x80\x81,pv,i1,1",  # invalid UTF-8
        b"1,\x00\x00,pv\x00,i1\x00,1", b"\x00",  # NUL bytes
        b'<script>alert("x")</script>,<b>2020</b>,&amp;,<a href=x>i</a>,1',
        b"", b"   ", b"\t", b",,,,", b",,,,,,,,,,,,,,,,,,,,", BIG_FIELD,
    ]),
    st.binary(max_size=120),
)
line_endings = st.sampled_from([b"\n", b"\r\n", b"\r"])
one_file = st.one_of(
    st.just(b""),  # zero bytes
    st.builds(lambda lines, end, last: end.join(lines) + (end if last else b""),
              st.lists(st.one_of(valid_line, garbage_line), max_size=12), line_endings, st.booleans()),
)


def _preset(kind: str, header: bool):
    reading = {"format": "csv"} if kind == "csv" else {"format": "text", "delimiter_regex": ","}
    return parse_preset({"name": "garbage", "paths": ["unused"], **reading, "header": header, "columns": COLUMNS,
                         "timestamp": {"column": "when"}, "events": FIELD_MAP, "event_types": {"pv": "view", "buy": "purchase"}})


def _expected_rows(data: bytes, *, kind: str, header: bool) -> int:
    lines = data.splitlines()  # CR, LF and CRLF end a line, as in Hadoop's line reader
    if kind == "text":
        return max(len(lines) - header, 0)
    visible = [line for line in lines if line.decode("utf-8", "replace").strip(JAVA_BLANK)]
    return max(len(visible) - header, 0)


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(files=st.lists(one_file, min_size=1, max_size=2), kind=st.sampled_from(["csv", "text"]), header=st.booleans())
@example(files=[b"", b"1,2020-01-01 10:00:00,pv,i1,1\n" + BIG_FIELD + b"\n\xff\x00,\"x\n"], kind="csv", header=False)
@example(files=[b"uid,when\r\n" + b",".join([b"a"] * 30_000) + b"\r\n"], kind="csv", header=True)
def test_garbage_is_accounted_for_and_never_crashes(spark, files, kind, header):
    preset = _preset(kind, header)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, data in enumerate(files):
            path = Path(folder) / f"part-{i}.csv"
            path.write_bytes(data)
            paths.append(str(path))
        raw = read_source(spark, preset, paths)
        tagged = clean.mark_duplicates(clean.tag_events(
            raw, source="garbage", run_id="h", field_map=FIELD_MAP, event_type_map=preset.event_types,
            timestamp=TimestampSpec(column="when", format="yyyy-MM-dd HH:mm:ss"),
        ))
        stats = tagged.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.col("reason").isNull().cast("int")).alias("clean"),
            F.sum(F.col("reason").isNotNull().cast("int")).alias("quarantined"),
            # Accepted rows keep the canonical contract; quarantined rows keep their content.
            F.sum((F.col("reason").isNull() & (F.col("user_id").isNull() | F.col("ts").isNull()
                                               | ~F.coalesce(F.col("event_type").isin(*EVENT_TYPES), F.lit(False)))).cast("int")).alias("broken"),
            F.sum((F.col("reason").isNotNull() & F.col("raw").isNull()).cast("int")).alias("lost"),
        ).first()
        n_input = raw.count()
    assert n_input == sum(_expected_rows(data, kind=kind, header=header) for data in files)
    assert stats["rows"] == n_input == (stats["clean"] or 0) + (stats["quarantined"] or 0)
    assert not stats["broken"] and not stats["lost"]
