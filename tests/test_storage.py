"""ecominsight.storage on a local folder and on a real S3-compatible server (moto on loopback), and
Spark writing and reading Parquet on s3a:// through the S3A committers.

The Spark test runs its job (the `__main__` part of this file) in a subprocess: the cloud jars must be
on the JVM's classpath when it starts, and the suite's shared session started without them."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from ecominsight.errors import ConfigError, LakeError
from ecominsight.storage import (CLASSIC_COMMIT, StoragePath, partition_replace_options, resolve, spark_conf_for,
                                 storage_options_from_hadoop)
from tests.s3_server import run_s3a_spark_job



@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> StoragePath:
    """An empty lake root: a local folder, or a prefix in a new bucket on the loopback S3 server."""
    if request.param == "local":
        return resolve(tmp_path / "lake")
    bucket = request.getfixturevalue("s3_bucket")
    return resolve(f"{bucket.uri}/lake")


# --- resolving a lake URI ------------------------------------------------------------------------

def test_plain_paths_and_file_uris_are_local_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = resolve("lake")
    assert relative.is_local and relative.path == str(tmp_path / "lake") and relative.uri == str(tmp_path / "lake")
    file_uri = resolve(f"file://{tmp_path}/lake")
    assert file_uri.is_local and file_uri.path == str(tmp_path / "lake") and file_uri.uri == f"file://{tmp_path}/lake"


def test_databricks_uris_map_to_their_mounts_and_keep_the_spark_uri():
    assert resolve("dbfs:/mnt/lake").path == "/dbfs/mnt/lake"
    assert resolve("dbfs:/mnt/lake").uri == "dbfs:/mnt/lake"
    assert resolve("dbfs:/Volumes/main/shop/lake").path == "/Volumes/main/shop/lake"
    volume = resolve("/Volumes/main/shop/lake")
    assert volume.is_local and volume.uri == "/Volumes/main/shop/lake"


def test_s3a_keeps_its_scheme_for_spark_and_gives_s3fs_the_bucket_path(monkeypatch):
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs not installed (pip install -r requirements-dev.txt)")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    lake = resolve("s3a://shop-bucket/lake")
    assert lake.uri == "s3a://shop-bucket/lake" and lake.path == "shop-bucket/lake"
    assert not lake.is_local and lake.atomic_create
    child = lake / "models" / "v3"
    assert child.uri == "s3a://shop-bucket/lake/models/v3" and child.path == "shop-bucket/lake/models/v3"


def test_an_unknown_scheme_is_a_lake_error_naming_the_schemes_that_work():
    with pytest.raises(LakeError, match=r"'ftp'.*s3a"):
        resolve("ftp://host/lake")


@pytest.mark.parametrize("uri, library", [("gs://bucket/lake", "gcsfs"),
                                          ("abfss://lake@account.dfs.core.windows.net/lake", "adlfs")])
def test_a_store_whose_library_is_missing_says_what_to_install(uri, library):
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed here: resolving {uri} would reach for real credentials")
    with pytest.raises(LakeError, match=f"pip install {library}"):
        resolve(uri)


# --- the operations, on a local folder and on S3 -------------------------------------------------

def test_bytes_and_text_round_trip_and_a_write_replaces_the_file_whole(store):
    report = store / "reports" / "run-1" / "metrics.json"
    assert not report.exists()
    report.write_text('{"auc": 0.8}')
    assert report.exists() and report.read_text() == '{"auc": 0.8}'
    report.write_bytes(b'{"auc": 0.9}')
    assert report.read_bytes() == b'{"auc": 0.9}'
    # No temp file is left beside it: a reader listing the folder sees the report alone.
    assert (store / "reports" / "run-1").list() == ["metrics.json"]


def test_reading_a_missing_file_raises_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        (store / "nothing.json").read_bytes()


def test_list_names_the_children_sorted_and_a_missing_folder_is_empty(store):
    for name in ("b.json", "a.json", "sub/c.json"):
        (store / name).write_text(name)
    assert store.list() == ["a.json", "b.json", "sub"]
    assert (store / "absent").list() == []


def test_remove_takes_a_whole_tree_and_a_single_file_and_tolerates_absence(store):
    (store / "models" / "v1" / "config.json").write_text("{}")
    (store / "models" / "v1" / "weights" / "model.safetensors").write_bytes(b"\0" * 64)
    (store / "models" / "LATEST").write_text("v1")
    (store / "models" / "v1").remove()
    assert not (store / "models" / "v1").exists()
    assert (store / "models").list() == ["LATEST"]
    (store / "models" / "LATEST").remove()
    assert (store / "models").list() == []
    (store / "models" / "v1").remove()  # nothing there: no error


def test_create_if_absent_creates_once_and_keeps_the_first_content(store):
    lock = store / "_lock"
    assert lock.create_if_absent(b'{"holder": "run-1"}') is True
    assert lock.create_if_absent(b'{"holder": "run-2"}') is False
    assert lock.read_bytes() == b'{"holder": "run-1"}'
    assert store.list() == ["_lock"]  # the local temp file used for the link is gone
    lock.remove()
    assert lock.create_if_absent(b'{"holder": "run-2"}') is True


def test_a_model_folder_goes_up_and_comes_back_as_a_local_folder(store, tmp_path):
    saved = tmp_path / "saved"
    (saved / "tokenizer").mkdir(parents=True)
    (saved / "config.json").write_text('{"hidden_size": 64}')
    (saved / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (saved / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    version = store / "models" / "transformer" / "v1"
    version.upload_dir(saved)
    assert version.list() == ["config.json", "model.safetensors", "tokenizer"]
    with version.local_copy() as local:
        copied = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
        kept = local
    assert copied == {p.relative_to(saved).as_posix(): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    # A download is a temp dir that goes away; a local store hands out the folder itself.
    assert kept.exists() == store.is_local


def test_uploading_something_that_is_not_a_folder_is_a_lake_error(store, tmp_path):
    with pytest.raises(LakeError, match="not a folder"):
        (store / "models" / "v1").upload_dir(tmp_path / "absent")


def test_a_missing_remote_folder_cannot_be_copied_down(s3_bucket):
    with pytest.raises(LakeError, match="does not exist"):
        with resolve(f"{s3_bucket.uri}/models/v9").local_copy():
            pass


def test_s3_refuses_the_second_conditional_create_itself(s3_bucket):
    """The refusal comes from the server (HTTP 412 to If-None-Match: *), not from a check beforehand."""
    import botocore.exceptions

    client = s3_bucket.server.client()
    assert resolve(f"{s3_bucket.uri}/lake/_lock").create_if_absent(b"first") is True
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.put_object(Bucket=s3_bucket.name, Key="lake/_lock", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=s3_bucket.name, Key="lake/_lock")["Body"].read() == b"first"


def test_concurrent_local_creates_have_exactly_one_winner(tmp_path):
    lock = resolve(tmp_path / "lake" / "_lock")
    start = threading.Barrier(8)
    results: list[bool] = []

    def contend(index: int) -> None:
        start.wait()
        results.append(lock.create_if_absent(f"holder {index}".encode()))

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert lock.read_text().startswith("holder ")


def test_a_mount_without_hard_links_falls_back_to_an_exclusive_open(tmp_path, monkeypatch):
    """FUSE mounts (/dbfs, /Volumes) refuse link(2); the create is then O_EXCL, still exclusive."""
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    pointer = resolve(tmp_path / "models" / "LATEST")
    assert pointer.create_if_absent(b"v1") is True
    assert pointer.create_if_absent(b"v2") is False
    assert pointer.read_bytes() == b"v1"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["LATEST"]


def test_hadoop_style_s3a_settings_reach_the_store(s3_bucket, monkeypatch):
    """A lake configured the Hadoop way (fs.s3a.* keys, no AWS_* variables) is reachable with them."""
    settings = {"spark.hadoop.fs.s3a.endpoint": s3_bucket.server.endpoint.removeprefix("http://"),
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "fs.s3a.endpoint.region": "us-east-1",
                "spark.hadoop.fs.s3a.access.key": os.environ["AWS_ACCESS_KEY_ID"],
                "spark.hadoop.fs.s3a.secret.key": os.environ["AWS_SECRET_ACCESS_KEY"]}
    options = storage_options_from_hadoop(settings)
    assert options["client_kwargs"] == {"endpoint_url": s3_bucket.server.endpoint, "region_name": "us-east-1"}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(variable)
    lake = resolve(f"{s3_bucket.uri}/lake", storage_options=options)
    (lake / "key.json").write_text("{}")
    assert lake.list() == ["key.json"]


# --- Spark settings ------------------------------------------------------------------------------

def test_spark_conf_for_s3a_binds_the_cloud_committers_and_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    conf = spark_conf_for("s3a://bucket/lake", jars=["/c/hadoop-aws.jar", "/c/bundle.jar"])
    assert conf["spark.sql.sources.commitProtocolClass"] == "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol"
    assert conf["spark.sql.parquet.output.committer.class"].endswith("BindingParquetOutputCommitter")
    assert conf["spark.hadoop.fs.s3a.committer.name"] == "magic"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.jars"] == "/c/hadoop-aws.jar,/c/bundle.jar"
    assert not any("key" in name or "secret" in name for name in conf)  # credentials stay in the environment


def test_spark_conf_for_local_databricks_and_emr_lakes_changes_nothing(tmp_path):
    for uri in (str(tmp_path), f"file://{tmp_path}", "dbfs:/mnt/lake", "/Volumes/main/shop/lake", "s3://emr/lake"):
        assert spark_conf_for(uri) == {}
    assert partition_replace_options(str(tmp_path)) == ("overwrite", {})


def test_a_local_lake_with_the_cloud_jars_keeps_sparks_own_commit_path(tmp_path):
    conf = spark_conf_for(str(tmp_path), jars=["/c/spark-hadoop-cloud.jar"])
    assert conf == {"spark.jars": "/c/spark-hadoop-cloud.jar", **CLASSIC_COMMIT}


def test_an_unknown_s3a_committer_is_a_config_error():
    with pytest.raises(ConfigError, match="magic, directory, partitioned"):
        spark_conf_for("s3a://bucket/lake", committer="staging")


def test_spark_writes_and_reads_parquet_on_s3a_through_the_s3a_committers(s3_bucket, cloud_jars, tmp_path):
    """A local Spark (own JVM, with the cached jars) writes a plain table and a by-day table to the
    loopback S3 server and reads back exactly the rows it wrote; see spark_s3a_job below."""
    result = run_s3a_spark_job("tests.test_storage", s3_bucket, tmp_path)
    print(json.dumps(result, indent=1))
    assert result["plain"]["rows_equal"] and result["plain"]["rewritten_rows_equal"]
    assert result["plain"]["committer"] == "magic"
    assert result["by_day"]["days"] == result["by_day"]["expected_days"]
    assert result["by_day"]["rows_equal"]
    assert result["by_day"]["committer"] == "partitioned"
    # Why partition_replace_options exists: Spark refuses dynamic overwrite through the S3A committers.
    assert "dynamicPartitionOverwrite" in result["dynamic_overwrite_on_s3a"]
    # With the cloud jars a session's local dynamic overwrite is right once CLASSIC_COMMIT is set
    # (result["local_dynamic_overwrite_cloud_protocol"] records what it does without: see spark_conf_for).
    assert result["local_dynamic_overwrite_classic"]["rows_equal"]


def spark_s3a_job(lake_uri: str, scratch: str, out: str) -> None:
    """Write and read back, on `lake_uri` (s3a://), a plain table (twice: the overwrite replaces it)
    and a table partitioned by day (then one day replaced); try Spark's dynamic overwrite there; do a
    dynamic overwrite on a local folder in the same session. Results and timings go to `out` (JSON)."""
    from pyspark.sql import functions as F

    from ecominsight.session import spark_session
    from ecominsight.storage import cached_cloud_jars

    seconds: dict[str, float] = {}
    clock = time.monotonic()
    conf = {**spark_conf_for(lake_uri, jars=cached_cloud_jars()),
            "spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            # The staging committers' local files and Hadoop's temp dir stay in the test's folder.
            "spark.hadoop.hadoop.tmp.dir": f"{scratch}/hadoop-tmp"}
    with spark_session("ecominsight-s3a-test", "local[2]", conf) as spark:
        seconds["session_start"] = time.monotonic() - clock

        def rows(frame) -> list[tuple]:
            return sorted(tuple(row) for row in frame.collect())

        def committer(table: str) -> str:
            return json.loads(resolve(f"{lake_uri}/{table}/_SUCCESS").read_text())["committer"]

        events = (spark.range(60).withColumn("day", F.expr("date_add(date'2026-11-01', cast(id % 3 as int))"))
                  .withColumn("text", F.concat(F.lit("event "), F.col("id").cast("string"))))
        result: dict = {"seconds": seconds}

        clock = time.monotonic()
        events.write.mode("overwrite").parquet(f"{lake_uri}/plain")
        plain_equal = rows(spark.read.parquet(f"{lake_uri}/plain")) == rows(events)
        rewritten = events.where("id >= 30")
        rewritten.write.mode("overwrite").parquet(f"{lake_uri}/plain")
        result["plain"] = {"rows_equal": plain_equal,
                           "rewritten_rows_equal": rows(spark.read.parquet(f"{lake_uri}/plain")) == rows(rewritten),
                           "committer": committer("plain")}
        seconds["plain_write_read_twice"] = time.monotonic() - clock

        clock = time.monotonic()
        mode, options = partition_replace_options(lake_uri)
        events.write.mode(mode).options(**options).partitionBy("day").parquet(f"{lake_uri}/by_day")
        first_day = events.where("day = date'2026-11-01'").withColumn("text", F.upper("text")).where("id < 30")
        first_day.write.mode(mode).options(**options).partitionBy("day").parquet(f"{lake_uri}/by_day")
        expected = first_day.unionByName(events.where("day <> date'2026-11-01'"))
        back = spark.read.parquet(f"{lake_uri}/by_day").select("id", "day", "text")
        result["by_day"] = {"rows_equal": rows(back) == rows(expected.select("id", "day", "text")),
                            "days": {str(r["day"]): r["count"] for r in back.groupBy("day").count().collect()},
                            "expected_days": {str(r["day"]): r["count"] for r in expected.groupBy("day").count().collect()},
                            "committer": committer("by_day")}
        seconds["by_day_write_replace_read"] = time.monotonic() - clock

        try:  # spark_session sets partitionOverwriteMode=dynamic for every session
            events.write.mode("overwrite").partitionBy("day").parquet(f"{lake_uri}/dynamic")
            result["dynamic_overwrite_on_s3a"] = "accepted"
        except Exception as err:  # noqa: BLE001 - the refusal's text is the result
            result["dynamic_overwrite_on_s3a"] = next(
                (line.strip() for line in str(err).splitlines() if "Exception" in line), str(err))[:300]

        clock = time.monotonic()

        def local_dynamic_overwrite(folder: str) -> dict:
            events.write.mode("overwrite").partitionBy("day").parquet(folder)
            first_day.write.mode("overwrite").partitionBy("day").parquet(folder)
            back = spark.read.parquet(folder).select("id", "day", "text")
            return {"rows_equal": rows(back) == rows(expected.select("id", "day", "text")),
                    "days": {str(r["day"]): r["count"] for r in back.groupBy("day").count().collect()}}

        result["local_dynamic_overwrite_cloud_protocol"] = local_dynamic_overwrite(f"{scratch}/by_day_cloud_protocol")
        for key, value in CLASSIC_COMMIT.items():
            spark.conf.set(key, value)
        result["local_dynamic_overwrite_classic"] = local_dynamic_overwrite(f"{scratch}/by_day_classic")
        seconds["local_dynamic_overwrites"] = time.monotonic() - clock
    Path(out).write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    spark_s3a_job(*sys.argv[1:4])
