"""The bad-input corpus (tests/data/bad_inputs, rebuilt by make_corpus.py; the 10 MB field is made
here): every file goes through the real clean stage and ends as clean rows + quarantined rows with a
reason + a data-quality report; none crashes the run and none loses a row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from ecominsight.config import load_config
from ecominsight.io import Lake, read_json
from ecominsight.stages import run_clean
from ecominsight.catalog import CLEAN_ITEMS, QUARANTINE
from tests.raw_records import count_records

CORPUS = Path(__file__).resolve().parent / "data" / "bad_inputs"
FIELDS = {"user_id": "user_id", "event_type": "event_type", "item_id": "item_id", "price": "price", "title": "title"}
BIG_TITLE_BYTES = 10 * 1024 * 1024

# file -> (rows read, clean rows, quarantined rows by reason)
EXPECTED_CSV = {
    "truncated.csv": (3, 3, {}),  # the cut quoted field ends at end of file; the row is whole otherwise
    "wrong_encoding.csv": (3, 2, {"invalid_encoding": 1}),
    "invalid_utf8_and_nul.csv": (4, 2, {"invalid_encoding": 2}),
    "numbers_in_strings.csv": (3, 1, {"bad_number": 2}),  # `twelve` and 1e400 (infinite) as prices
    "impossible_times.csv": (6, 2, {"bad_timestamp": 4}),
    "repeated_header.csv": (5, 2, {"duplicate": 2, "bad_timestamp": 1}),  # the header again, then the rows again
    "header_only.csv": (0, 0, {}),
    "zero_bytes.csv": (0, 0, {}),
    "hostile_text.csv": (3, 2, {"malformed_id": 1}),  # an item id carrying `" OR 1=1 --`
    "big_field.csv": (1, 1, {}),
}
EXPECTED_ALONE = {
    "wrong_delimiter.csv": ("csv", 2, 0, {"malformed_row": 2}),  # `;` where the preset says `,`: no mapped column
    "duplicate_column_names.csv": ("csv", 1, 0, {"malformed_row": 1}),  # `price` twice, no `title`
    # deep nesting, a broken object, a top-level array and a bare string are malformed; an object
    # where the user id belongs is a malformed id; a number where a string belongs is fine.
    "events.json": ("json", 7, 2, {"malformed_row": 4, "malformed_id": 1}),
}


def run_clean_on(spark, tmp_path: Path, files: list[Path], fmt: str) -> tuple[Lake, dict]:
    preset = {"name": "bad_corpus", "format": fmt, "paths": [str(f) for f in files], "events": FIELDS,
              "timestamp": {"column": "ts", "format": "yyyy-MM-dd HH:mm:ss"}, **({"header": True} if fmt == "csv" else {})}
    preset_file = tmp_path / "preset.yaml"
    preset_file.write_text(yaml.safe_dump(preset), encoding="utf-8")
    config = load_config("local", [f"lake={tmp_path / 'lake'}", f"source.preset={preset_file}", "run_id=corpus"])
    lake = Lake(config.lake_path)
    return lake, run_clean(spark, config, lake, "corpus")


def outcome_by_file(spark, lake: Lake) -> dict[str, Counter]:
    """file name -> Counter of quarantine reasons, read back from the lake."""
    outcome: dict[str, Counter] = {}
    quarantine = lake.read(spark, QUARANTINE["events"])
    assert quarantine.filter(F.col("raw").isNull() | F.col("source_file").isNull()).count() == 0  # content kept
    for row in quarantine.groupBy("source_file", "reason").count().collect():
        outcome.setdefault(Path(row["source_file"]).name, Counter())[row["reason"]] += row["count"]
    return outcome


def test_damaged_csv_files_are_cleaned_or_quarantined_row_by_row(spark, tmp_path):
    big = tmp_path / "big_field.csv"
    big.write_bytes(b"user_id,ts,event_type,item_id,price,title\nbig-a,2020-03-01 10:00:00,view,i9,1.0,"
                    + b"x" * BIG_TITLE_BYTES + b"\n")
    files = [CORPUS / name for name in EXPECTED_CSV if name != "big_field.csv"] + [big]
    lake, summary = run_clean_on(spark, tmp_path, files, "csv")

    expected_rows = sum(rows for rows, _, _ in EXPECTED_CSV.values())
    expected_clean = sum(clean for _, clean, _ in EXPECTED_CSV.values())
    # Counted from the files themselves: the header-only and zero-byte files hold no record.
    raw_rows = count_records(files, fmt="csv", header=True)
    assert raw_rows == expected_rows
    assert summary.input_rows == summary.clean_rows + summary.quarantined_rows == raw_rows
    assert summary.clean_rows == expected_clean
    quarantined = outcome_by_file(spark, lake)
    for name, (_, _, reasons) in EXPECTED_CSV.items():
        assert quarantined.get(name, Counter()) == Counter(reasons), name

    items = lake.read(spark, CLEAN_ITEMS)
    # Markup and SQL in text survive only as inert words; the 10 MB title is kept whole.
    titles = {r["item_id"]: r["title"] for r in items.select("item_id", "title").collect()}
    assert "alert" in titles["i13"] and "DROP TABLE users" in titles["i14"]
    assert not any(mark in (t or "") for t in titles.values() for mark in "<>'\";")
    assert len(titles["i9"]) == BIG_TITLE_BYTES
    report = read_json(lake.report_dir("corpus") / "data_quality.json")
    assert json.dumps(report)  # written and serialisable
    assert read_json(lake.report_dir("corpus") / "clean.json")["quarantined_rows"] == summary.quarantined_rows


@pytest.mark.parametrize("name", list(EXPECTED_ALONE))
def test_files_of_the_wrong_shape_are_quarantined_whole_or_row_by_row(spark, tmp_path, name):
    fmt, rows, clean_rows, reasons = EXPECTED_ALONE[name]
    lake, summary = run_clean_on(spark, tmp_path, [CORPUS / name], fmt)
    raw_rows = count_records([CORPUS / name], fmt=fmt, header=fmt == "csv")
    assert raw_rows == rows
    assert summary.input_rows == summary.clean_rows + summary.quarantined_rows == raw_rows
    assert summary.clean_rows == clean_rows
    assert summary.quarantined_by_reason == reasons
    assert outcome_by_file(spark, lake)[name] == Counter(reasons)
    assert (lake.report_dir("corpus") / "data_quality.json").exists()
