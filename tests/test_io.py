"""Reading raw sources: archive staging, byte order marks, non-UTF-8 CSV, and line-numbered text."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from ecominsight.io import LakeError, read_source, staging_area
from ecominsight.presets import parse_preset
from ecominsight.transforms.clean import CORRUPT, SOURCE_LINE


def _preset(**keys):
    base = {"name": "io-test", "format": "csv", "paths": ["unused"], "timestamp": {"column": "t"},
            "events": {"user_id": "u", "event_type": "e"}}
    return parse_preset({**base, **keys})


def test_staging_unpacks_zip_members_safely_and_cleans_up(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("deep/folder/data.csv", "a,b\n1,2\n")
        bundle.writestr("../../escape.csv", "x\n")  # a hostile member path must not leave the staging folder
        bundle.writestr("__MACOSX/deep/._data.csv", "resource fork")
        bundle.writestr("empty-dir/", "")
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b\n")
    with staging_area(tmp_path / "stage") as stage:
        staged = stage([str(archive), str(plain)])
        assert [Path(p).name for p in staged] == ["data.csv", "escape.csv", "plain.csv"]
        assert staged[2] == str(plain)  # not an archive: passed as it is
        for path in staged[:2]:
            assert Path(path).resolve().is_relative_to((tmp_path / "stage").resolve())
        assert Path(staged[0]).read_text() == "a,b\n1,2\n"
    assert not Path(staged[0]).exists() and list((tmp_path / "stage").iterdir()) == []
    assert not (tmp_path.parent / "escape.csv").exists()


def test_staging_expands_a_glob_of_archives_and_refuses_broken_ones(tmp_path):
    for name in ("a", "b"):
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as bundle:
            bundle.writestr(f"{name}.csv", "x\n")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with zipfile.ZipFile(tmp_path / "hollow.zip", "w"):
        pass
    with staging_area() as stage:
        assert sorted(Path(p).name for p in stage([str(tmp_path / "[ab].zip")])) == ["a.csv", "b.csv"]
        with pytest.raises(LakeError, match="cannot unpack .*broken.zip"):
            stage([str(tmp_path / "broken.zip")])
        with pytest.raises(LakeError, match="hollow.zip holds no files"):
            stage([str(tmp_path / "hollow.zip")])


def test_read_source_refuses_an_unstaged_archive(spark, tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as bundle:
        bundle.writestr("a.csv", "u,e,t\n")
    with pytest.raises(LakeError, match="archive, which Spark cannot read: unpack it with io.staging_area"):
        read_source(spark, _preset(), [str(tmp_path / "a.zip")])


def test_byte_order_mark_and_gbk(spark, tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes('\ufeff"u","e","t"\r\n"1","pv","2020-01-01"\r\n'.encode("utf-8"))
    frame = read_source(spark, _preset(), [str(bom)])
    assert frame.columns[:3] == ["u", "e", "t"] and [tuple(r)[:3] for r in frame.collect()] == [("1", "pv", "2020-01-01")]
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("u,e,t\n1,浏览,56岁以上\n".encode("gbk"))
    row = read_source(spark, _preset(encoding="GBK"), [str(gbk)]).first()
    assert (row["e"], row["t"]) == ("浏览", "56岁以上")


def test_an_empty_headed_csv_is_refused_with_a_message(spark, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(LakeError, match="no header line .* declare `columns`"):
        read_source(spark, _preset(), [str(tmp_path / "empty.csv")])
    # With declared columns an empty file is zero rows.
    assert read_source(spark, _preset(columns=["u", "e", "t"]), [str(tmp_path / "empty.csv")]).count() == 0


def test_delimited_text_numbers_every_line_across_files_and_splits(spark, tmp_path):
    lines = {name: [" id  when   n"] + [f" {name}{i:03d}  2020010{i % 9 + 1}   {i}" for i in range(1, 121)]
             for name in ("a", "b")}
    lines["a"][50] = "   "  # a blank line: a row of its own, malformed
    lines["b"][7] = " b007 20200101"  # too few fields
    for name, content in lines.items():
        (tmp_path / f"{name}.txt").write_bytes(("\r\n".join(content) + "\r\n").encode())
    preset = _preset(format="text", delimiter_regex=r"\s+", columns=["id", "when", "n"])
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    # Tiny splits: each file is read in many byte ranges, in several tasks.
    spark.conf.set("spark.sql.files.maxPartitionBytes", "300")
    try:
        paths = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
        splits = spark.read.text(paths).select("_metadata.file_path", "_metadata.file_block_start").distinct().count()
        frame = read_source(spark, preset, paths)
        rows = frame.select("id", "when", "n", CORRUPT, SOURCE_LINE, F.regexp_extract("_source_file", r"(\w)\.txt$", 1).alias("f")).collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert splits >= 2 * 8  # each file in 9 or more byte ranges
    got = {(r["f"], r[SOURCE_LINE]): r for r in rows}
    # Every physical line but the two headers, each once, numbered as in the file (1-based, header = 1).
    assert len(rows) == len(got) == 240 and set(got) == {(f, n) for f in "ab" for n in range(2, 122)}
    for (name, number), row in got.items():
        fields = lines[name][number - 1].split()
        if len(fields) == 3:
            assert (row["id"], row["when"], row["n"], row[CORRUPT]) == (*fields, None)
        else:
            assert row[CORRUPT] == lines[name][number - 1]
    assert {k for k, r in got.items() if r[CORRUPT] is not None} == {("a", 51), ("b", 8)}
