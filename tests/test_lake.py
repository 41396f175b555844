"""Publication on the lake (ecominsight/io.py, "tables"): each write lands in a new version folder and a
manifest written last names what is current. The same tests run on a local lake and on an s3a://
lake on the loopback S3 server (moto): the protocol is storage + pyarrow there, no Spark; Spark's
own writes are tested on a local lake here and on s3a:// in a child process that has the cloud jars
on its JVM's classpath (see spark_s3a_lake_job below)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import types as T

from ecominsight.catalog import Table
from ecominsight.errors import LakeError
from ecominsight.io import MANIFEST, Lake
from ecominsight.storage import StoragePath
from tests.s3_server import run_s3a_spark_job


PLAIN = Table("features", "probe")
BY_DAY = Table("scores", "probe", ("day",))
SCHEMA = T.StructType([T.StructField("id", T.LongType()), T.StructField("tag", T.StringType())])
DAY_SCHEMA = T.StructType([*SCHEMA.fields, T.StructField("day", T.StringType())])


@pytest.fixture(params=["local", "s3"])
def lake_root(request, tmp_path) -> str:
    """An empty lake root: a local folder, or a prefix in a new bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "lake")
    return f"{request.getfixturevalue('s3_bucket').uri}/lake"


def write_like_spark(lake: Lake, table: Table, rows: list[dict], *, publish: bool = True) -> StoragePath:
    """`rows` written as Spark writes a table version (one Parquet file per partition folder, or one
    file), with pyarrow through the lake's filesystem; then published unless `publish` is False."""
    folder = lake.new_version(table)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = "/".join(f"{column}={row[column]}" for column in table.partition_by)
        groups.setdefault(key, []).append({k: v for k, v in row.items() if k not in table.partition_by})
    for key, members in groups.items():
        target = folder / key / "part-00000.snappy.parquet" if key else folder / "part-00000.snappy.parquet"
        target.fs.makedirs(target.parent.path, exist_ok=True)
        with target.fs.open(target.path, "wb") as handle:
            pq.write_table(pa.Table.from_pylist(members), handle)
    if publish:
        lake.publish(table, folder, DAY_SCHEMA if table.partition_by else SCHEMA)
    return folder


def rows(lake: Lake, table: Table) -> list[tuple]:
    """The table as its readers without Spark see it: sorted tuples (id, tag[, day])."""
    data = lake.read_arrow(table).to_pylist()
    return sorted(tuple(str(row[c]) if c == "day" else row[c] for c in ("id", "tag", *table.partition_by))
                  for row in data)


def version_folders(lake: Lake, table: Table) -> list[str]:
    root = lake.root / table.zone / table.name
    return sorted(name for name in root.list() if name.startswith("v-"))


def test_a_write_lands_in_a_new_version_and_the_manifest_names_it(lake_root):
    lake = Lake(lake_root, retain_versions_minutes=0)
    first = write_like_spark(lake, PLAIN, [{"id": 1, "tag": "a"}, {"id": 2, "tag": "a"}])
    manifest = lake.manifest(PLAIN)
    assert manifest["format"] == 1 and manifest["version"] == first.name and manifest["retired"] == []
    assert first.name.startswith("v-") and len(first.name) == len("v-20260101T000000-0123abcd")
    assert T.StructType.fromJson(manifest["schema"]) == SCHEMA
    assert dt.datetime.fromisoformat(manifest["written_at"]).tzinfo is not None
    assert (lake.root / "features" / "probe").list() == sorted([MANIFEST, first.name])
    assert rows(lake, PLAIN) == [(1, "a"), (2, "a")]

    second = write_like_spark(lake, PLAIN, [{"id": 3, "tag": "b"}])
    assert lake.version(PLAIN) == second.name and rows(lake, PLAIN) == [(3, "b")]
    assert version_folders(lake, PLAIN) == [second.name]  # the first, retired, is past a grace of 0
    assert [file.name for file in lake.current_files(PLAIN)] == ["part-00000.snappy.parquet"]


def test_a_second_write_of_a_partitioned_table_replaces_only_its_days(lake_root):
    lake = Lake(lake_root, retain_versions_minutes=0)
    first = write_like_spark(lake, BY_DAY, [{"id": 1, "tag": "old", "day": "2024-01-01"},
                                            {"id": 2, "tag": "old", "day": "2024-01-02"}])
    second = write_like_spark(lake, BY_DAY, [{"id": 3, "tag": "new", "day": "2024-01-02"},
                                             {"id": 4, "tag": "new", "day": "2024-01-03"}])
    manifest = lake.manifest(BY_DAY)
    assert manifest["partitions"] == {"day=2024-01-01": first.name, "day=2024-01-02": second.name,
                                      "day=2024-01-03": second.name}
    assert manifest["version"] == second.name and manifest["partition_by"] == ["day"]
    assert rows(lake, BY_DAY) == [(1, "old", "2024-01-01"), (3, "new", "2024-01-02"), (4, "new", "2024-01-03")]
    assert version_folders(lake, BY_DAY) == sorted([first.name, second.name])  # the first still holds a day
    locations = lake.current_locations(BY_DAY)
    assert sorted(locations) == ["day=2024-01-01", "day=2024-01-02", "day=2024-01-03"]
    assert locations["day=2024-01-01"].endswith(f"/scores/probe/{first.name}/day=2024-01-01")

    # Once no day points at the first version, it is retired (and removed: grace 0).
    write_like_spark(lake, BY_DAY, [{"id": 5, "tag": "newer", "day": "2024-01-01"}])
    assert first.name not in version_folders(lake, BY_DAY) and len(version_folders(lake, BY_DAY)) == 2


def test_an_unfinished_version_is_invisible_and_removed_by_the_next_write(lake_root):
    lake = Lake(lake_root, retain_versions_minutes=0)
    write_like_spark(lake, BY_DAY, [{"id": 1, "tag": "published", "day": "2024-01-01"}])
    unfinished = write_like_spark(lake, BY_DAY, [{"id": 2, "tag": "killed", "day": "2024-01-01"}], publish=False)
    assert rows(lake, BY_DAY) == [(1, "published", "2024-01-01")]
    assert all(unfinished.name not in file.uri for file in lake.current_files(BY_DAY))

    # A grace period keeps it (a write in progress elsewhere looks the same)...
    Lake(lake_root, retain_versions_minutes=60).publish(
        BY_DAY, write_like_spark(lake, BY_DAY, [{"id": 3, "tag": "next", "day": "2024-01-02"}], publish=False), DAY_SCHEMA)
    assert unfinished.name in version_folders(lake, BY_DAY)
    # ...and past it the next write removes it, as its name says when it was started.
    write_like_spark(lake, BY_DAY, [{"id": 4, "tag": "last", "day": "2024-01-03"}])
    assert unfinished.name not in version_folders(lake, BY_DAY)
    assert rows(lake, BY_DAY) == [(1, "published", "2024-01-01"), (3, "next", "2024-01-02"), (4, "last", "2024-01-03")]


def test_retired_versions_stay_for_the_grace_period_then_go(lake_root):
    patient = Lake(lake_root, retain_versions_minutes=60)
    first = write_like_spark(patient, PLAIN, [{"id": 1, "tag": "a"}])
    second = write_like_spark(patient, PLAIN, [{"id": 2, "tag": "b"}])
    retired = patient.manifest(PLAIN)["retired"]
    assert [entry["version"] for entry in retired] == [first.name]
    assert version_folders(patient, PLAIN) == sorted([first.name, second.name])  # a reader of v1 may still run

    third = write_like_spark(Lake(lake_root, retain_versions_minutes=0), PLAIN, [{"id": 3, "tag": "c"}])
    assert version_folders(patient, PLAIN) == [third.name]
    assert patient.manifest(PLAIN)["retired"] == []


def test_a_missing_table_names_the_stage_and_a_folder_without_manifest_is_no_table(lake_root):
    lake = Lake(lake_root)
    with pytest.raises(LakeError, match=r"scores/probe is missing at .*; run the 'score' stage first"):
        lake.read_arrow(BY_DAY)
    write_like_spark(lake, PLAIN, [{"id": 1, "tag": "a"}], publish=False)
    assert not lake.exists(PLAIN) and lake.tables("features") == []
    with pytest.raises(LakeError, match="run the 'fuse' stage first"):
        lake.current_files(PLAIN)
    write_like_spark(lake, PLAIN, [{"id": 1, "tag": "a"}])
    assert lake.exists(PLAIN) and lake.tables("features") == [PLAIN]


def test_drop_removes_the_manifest_and_every_version(lake_root):
    lake = Lake(lake_root, retain_versions_minutes=60)
    write_like_spark(lake, PLAIN, [{"id": 1, "tag": "a"}])
    write_like_spark(lake, PLAIN, [{"id": 2, "tag": "b"}])
    lake.drop(PLAIN)
    assert not lake.exists(PLAIN) and (lake.root / "features").list() == []
    lake.drop(PLAIN)  # nothing there: no error


def test_the_lock_refuses_a_second_holder_and_is_released(lake_root):
    lake = Lake(lake_root)
    with lake.lock("the first run"):
        with pytest.raises(LakeError, match=f"in use by the first run \\(pid {os.getpid()}"):
            with Lake(lake_root).lock("a second run"):
                pass
        assert json.loads((lake.root / "_lock").read_text())["holder"] == "the first run"
    assert not (lake.root / "_lock").exists()
    with lake.lock("a later run"):
        pass


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(lake_root):
    import socket

    lake = Lake(lake_root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"holder": "a killed run", "pid": int(dead.stdout), "host": socket.gethostname(), "since": time.time()}
    (lake.root / "_lock").write_text(json.dumps(stale))
    with lake.lock("the next run"):
        assert json.loads((lake.root / "_lock").read_text())["holder"] == "the next run"


# --- Spark writing and reading (local lake) ------------------------------------------------------

def test_spark_writes_versions_and_reads_partitions_back_as_columns(spark, tmp_path):
    from pyspark.sql import functions as F

    lake = Lake(tmp_path / "lake", retain_versions_minutes=0)
    events = spark.range(30).select("id", F.lit("v1").alias("tag"),
                                    F.expr("date_add(date'2024-01-01', cast(id % 3 as int))").alias("day"))
    lake.write(events, BY_DAY)
    lake.write(events.where("day = date'2024-01-03'").withColumn("tag", F.lit("v2")), BY_DAY)
    back = lake.read(spark, BY_DAY)
    assert back.columns == ["id", "tag", "day"] and dict(back.dtypes)["day"] == "date"
    assert {(str(r["day"]), r["tag"]): r["count"] for r in back.groupBy("day", "tag").count().collect()} == {
        ("2024-01-01", "v1"): 10, ("2024-01-02", "v1"): 10, ("2024-01-03", "v2"): 10}
    # pyarrow and DuckDB read the same current files.
    import duckdb

    files = [file.path for file in lake.current_files(BY_DAY)]
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT day) FROM read_parquet({files}, hive_partitioning = true) "
                      "WHERE tag = 'v2'").fetchall() == [(10, 1)]
    assert lake.read_arrow(BY_DAY).num_rows == 30

    lake.write(events.limit(0), BY_DAY)  # a run with no rows: every day keeps its data
    assert lake.read(spark, BY_DAY).count() == 30
    lake.drop(BY_DAY)
    lake.write(events.limit(0), BY_DAY)
    empty = lake.read(spark, BY_DAY)
    assert empty.count() == 0 and empty.columns == ["id", "tag", "day"]

    lake.write(events.select("id", "tag"), PLAIN)
    lake.write(events.select("id", "tag").limit(4), PLAIN)
    assert lake.read(spark, PLAIN).count() == 4 and len(version_folders(lake, PLAIN)) == 1


def test_a_failed_spark_write_leaves_no_version_and_the_previous_table(spark, tmp_path):
    from pyspark.sql import functions as F

    @F.udf("string")
    def explode_on_seven(value):
        if value == 7:
            raise ValueError("injected failure in a task")
        return "x"

    lake = Lake(tmp_path / "lake", retain_versions_minutes=0)
    lake.write(spark.range(5).select("id", F.lit("kept").alias("tag")), PLAIN)
    kept = lake.version(PLAIN)
    with pytest.raises(Exception, match="injected failure"):
        lake.write(spark.range(10).select("id", explode_on_seven("id").alias("tag")), PLAIN)
    assert version_folders(lake, PLAIN) == [kept] and lake.read(spark, PLAIN).count() == 5
    with pytest.raises(Exception, match="injected failure"):
        lake.write(spark.range(10).select("id", explode_on_seven("id").alias("tag")), Table("features", "never"))
    assert not (lake.root / "features" / "never").exists()


def test_register_follows_the_current_version_in_the_sessions_catalog(spark, tmp_path):
    """`register` in the suite's session (Spark's in-memory catalog): a partitioned table whose days
    sit in two versions reads as the lake does, with a partition per day at its version's folder; a
    later write moves a day, and registering again moves the table with it."""
    from pyspark.sql import functions as F

    from ecominsight.config import load_config
    from ecominsight.stages.register import run_register

    lake = Lake(tmp_path / "lake", retain_versions_minutes=60)
    config = load_config("local", [f"lake={lake.root}", "warehouse.schema=lake_test", "warehouse.zones=[scores]"])
    events = spark.range(20).select("id", F.lit("v1").alias("tag"),
                                    F.expr("date_add(date'2024-01-01', cast(id % 2 as int))").alias("day"))
    lake.write(events, BY_DAY)
    lake.write(events.where("day = date'2024-01-02'").withColumn("tag", F.lit("v2")), BY_DAY)
    report = run_register(spark, config, lake, "register-1")
    entry = report.tables["scores_probe"]
    assert entry["partitioned_by"] == ["day"] and entry["version"] == lake.version(BY_DAY)

    def registered() -> dict[tuple[str, str], int]:
        rows = spark.table("lake_test.scores_probe").groupBy("day", "tag").count().collect()
        return {(str(r["day"]), r["tag"]): r["count"] for r in rows}

    assert registered() == {("2024-01-01", "v1"): 10, ("2024-01-02", "v2"): 10}
    partitions = spark.sql("SHOW PARTITIONS lake_test.scores_probe").collect()
    assert [r[0] for r in partitions] == ["day=2024-01-01", "day=2024-01-02"]

    lake.write(events.where("day = date'2024-01-01'").withColumn("tag", F.lit("v3")), BY_DAY)
    assert registered() == {("2024-01-01", "v1"): 10, ("2024-01-02", "v2"): 10}  # still the registered version
    run_register(spark, config, lake, "register-2")
    assert registered() == {("2024-01-01", "v3"): 10, ("2024-01-02", "v2"): 10}
    spark.sql("DROP DATABASE lake_test CASCADE")


# --- Spark on s3a:// (a child process with the cloud jars) ---------------------------------------

def test_spark_publishes_and_reads_versions_on_s3a(s3_bucket, cloud_jars, tmp_path):
    """The same protocol with Spark's own writes on the loopback S3 server through the S3A
    committers: a partitioned table written twice, an unpartitioned one twice, read back through the
    manifest; see spark_s3a_lake_job."""
    result = run_s3a_spark_job("tests.test_lake", s3_bucket, tmp_path)
    print(json.dumps(result, indent=1))
    assert result["by_day"] == {"2024-01-01/v1": 10, "2024-01-02/v1": 10, "2024-01-03/v2": 10}
    assert result["plain_rows"] == 4 and result["plain_versions"] == 1
    assert result["by_day_versions"] == 2 and result["committer"] == "magic"
    assert result["arrow_rows"] == 30


def spark_s3a_lake_job(lake_uri: str, scratch: str, out: str) -> None:
    """Lake.write / Lake.read on `lake_uri` (s3a://) in a session configured as the CLI configures
    one (session.conf_for_lake: the S3A committers and the cached jars). Results go to `out` (JSON)."""
    from pyspark.sql import functions as F

    from ecominsight.session import conf_for_lake, spark_session

    conf = conf_for_lake(lake_uri, {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
                                    "spark.ui.showConsoleProgress": "false",
                                    "spark.hadoop.hadoop.tmp.dir": f"{scratch}/hadoop-tmp"})
    with spark_session("ecominsight-s3a-lake-test", "local[2]", conf) as spark:
        lake = Lake(lake_uri, retain_versions_minutes=0)
        events = spark.range(30).select("id", F.lit("v1").alias("tag"),
                                        F.expr("date_add(date'2024-01-01', cast(id % 3 as int))").alias("day"))
        lake.write(events, BY_DAY)
        lake.write(events.where("day = date'2024-01-03'").withColumn("tag", F.lit("v2")), BY_DAY)
        back = lake.read(spark, BY_DAY)
        lake.write(events.select("id", "tag"), PLAIN)
        lake.write(events.select("id", "tag").limit(4), PLAIN)
        success = lake.root / "scores" / "probe" / lake.version(BY_DAY) / "_SUCCESS"
        result = {
            "by_day": {f"{r['day']}/{r['tag']}": r["count"] for r in back.groupBy("day", "tag").count().collect()},
            "plain_rows": lake.read(spark, PLAIN).count(),
            "plain_versions": len(version_folders(lake, PLAIN)),
            "by_day_versions": len(version_folders(lake, BY_DAY)),
            "committer": json.loads(success.read_text())["committer"],
            "arrow_rows": lake.read_arrow(BY_DAY).num_rows,
        }
    Path(out).write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    spark_s3a_lake_job(*sys.argv[1:4])
