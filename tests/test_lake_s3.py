"""The whole pipeline on an s3a:// lake: clean → fuse → train → score → insights through the command line
(`python -m ecominsight pipeline`) in a child process, then `register` into an embedded Hive metastore,
all against the loopback S3 server (moto, tests/s3_server.py). TorchDistributor's two gloo ranks and the
predict_batch_udf workers read and write the bucket through s3fs there, Spark through S3A and its
committers. The same pipeline on a local lake (the suite's `windowed_run`, in its session; one rank where
this run trains on two, which moves no row count) must give the same tables with the same row counts;
the bucket must hold nothing outside the lake's documented layout (README, "What runs"; io.Lake).

The child processes exist because the cloud jars must be on the JVM's classpath when it starts (see
tests/test_storage.py). Skips, saying why, without moto or the
jars (.ci/fetch-jars); CI has both."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ecominsight import catalog
from ecominsight.io import Lake
from tests.conftest import windowed_preset

REPO = Path(__file__).resolve().parent.parent
RUN_ID = "s3pipe"
PIPELINE_TIMEOUT_S = 1500
# The fastest settings that run every stage; two gloo ranks, as a cluster would train.
FAST = ("train.transformer.epochs=1", "train.transformer.num_processes=2", "train.transformer.max_length=64",
        "fuse.max_events=16", f"run_id={RUN_ID}")
MODELS = ("lr", "gbt", "transformer", "hybrid")
REPORTS = ("clean.json", "data_quality.json", "fuse.json", "train.json", "score.json", "insights.json",
           "register.json", "report.html")


def overrides(lake: str, preset: Path, encoder: str) -> list[str]:
    return [f"lake={lake}", f"source.preset={preset}", f"train.transformer.pretrained={encoder}", *FAST]


def layout_problems(keys: list[str]) -> list[str]:
    """The object keys (relative to the lake root) that the lake's layout does not name. A table is
    `<zone>/<name>/_manifest.json` and version folders `v-<time>-<hex>/` of Parquet files (partition
    folders inside) and `_SUCCESS`; nothing in flight (`__magic`, `_temporary`), no `_lock`, no `_staging`."""
    tables = "|".join(re.escape(f"{table.zone}/{table.name}") for table in catalog.TABLES)
    allowed = re.compile("|".join([
        rf"(?:{tables})/_manifest\.json",
        rf"(?:{tables})/v-\d{{8}}T\d{{6}}-[0-9a-f]{{8}}/(?:_SUCCESS|(?:[a-z_]+=[^/]+/)*part-[^/]+\.parquet)?",
        r"models/CHAMPION",
        rf"models/(?:{'|'.join(MODELS)})/LATEST",
        # A model version's files; Spark's MLlib folders inside come with S3A's directory markers (`dir/`).
        rf"models/(?:{'|'.join(MODELS)})/v\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}/[^_][^/]*(?:/[^/]+)*/?",
        r"checkpoints/transformer/[0-9a-f-]+/epoch-\d+/[^/]+",
        rf"reports/{RUN_ID}/[a-z_]+\.(?:json|html)",
        r"_secrets/pseudonym\.key",
    ]))
    return [key for key in keys if not allowed.fullmatch(key)]


def row_counts(lake: Lake) -> dict[str, int]:
    """Every published table's rows, read with pyarrow over the lake's filesystem (s3fs on S3)."""
    return {str(table): lake.read_arrow(table).num_rows for zone in catalog.TABLE_ZONES for table in lake.tables(zone)}


def _child(args: list[str], env: dict[str, str], log: Path, timeout: float) -> float:
    """Run `python <args>` from the repository with `env`, its output in `log`; its duration (s)."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"{' '.join(args[:3])} failed ({seconds:.0f} s):\n{log.read_text()[-8000:]}"
    return seconds


@pytest.fixture(scope="module")
def s3_run(s3_server, cloud_jars, tiny_encoder, tmp_path_factory):
    """The pipeline and `register` on s3a://<new bucket>/lake, each in a child process: (lake URI, the
    metastore's row count per registered table, seconds per step). The module's tests see the server's
    AWS_* variables in their environment, so that s3fs reaches the bucket."""
    scratch = tmp_path_factory.mktemp("s3pipe")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    lake_uri = f"s3a://{bucket}/lake"
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1",
           "HF_HUB_OFFLINE": "1"}
    seconds = {"pipeline": _child(["-m", "ecominsight", "pipeline",
                                   *[arg for item in overrides(lake_uri, windowed_preset(scratch), tiny_encoder)
                                     for arg in ("--set", item)]],
                                  env, scratch / "pipeline.log", PIPELINE_TIMEOUT_S)}
    counts_file = scratch / "registered.json"
    seconds["register"] = _child(["-m", "tests.test_lake_s3", lake_uri, str(scratch / "metastore"), str(counts_file)],
                                 env, scratch / "register.log", PIPELINE_TIMEOUT_S)
    print(f"\ns3a pipeline: {seconds['pipeline']:.0f} s, register + metastore counts: {seconds['register']:.0f} s")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        yield lake_uri, json.loads(counts_file.read_text()), seconds


def test_the_s3a_pipeline_gives_the_local_pipelines_tables_and_row_counts(s3_run, windowed_run):
    lake_uri, _, _ = s3_run
    on_s3 = row_counts(Lake(lake_uri))
    print(json.dumps(on_s3, indent=1))
    assert on_s3 == row_counts(windowed_run[2])
    assert {"clean/events", "features/user_sequences", "scores/user_scores", "scores/explanations",
            "insights/user_profiles", "insights/recommendations"} <= set(on_s3)
    assert on_s3["quarantine/events"] > 0  # the window's outside_window rows, with the sample's own


def test_models_pointers_checkpoints_and_reports_are_in_the_bucket(s3_run):
    from ecominsight.io import read_json

    lake = Lake(s3_run[0])
    champion = read_json(lake.champion_pointer())
    for model in MODELS:
        version = lake.model_pointer(model).read_text().strip()
        assert (lake.model_dir(model, version) / "metrics.json").exists(), model
        assert (lake.model_dir(model, version) / "lineage.json").exists(), model
    assert lake.model_pointer(champion["model"]).read_text().strip() == champion["version"]
    transformer = lake.model_dir("transformer", lake.model_pointer("transformer").read_text().strip())
    assert {"model.safetensors", "head.safetensors", "config.json"} <= set(transformer.list())
    # Rank 0 wrote its epoch checkpoint to the bucket through s3fs.
    (key,) = (lake.root / "checkpoints" / "transformer").list()
    assert (lake.root / "checkpoints" / "transformer" / key / "epoch-1").list()
    report_dir = lake.report_dir(RUN_ID)
    assert set(REPORTS) <= set(report_dir.list())
    html = (report_dir / "report.html").read_text()
    assert f"scored with {champion['model']}" in html
    assert read_json(report_dir / "score.json")["users_scored"] == lake.read_arrow(catalog.CURRENT_SEQUENCES).num_rows


def test_the_bucket_holds_only_the_documented_layout(s3_run, s3_server):
    lake_uri, _, _ = s3_run
    bucket = lake_uri.removeprefix("s3a://").split("/", 1)[0]
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert keys and all(key.startswith("lake/") for key in keys), [k for k in keys if not k.startswith("lake/")][:5]
    assert layout_problems([key.removeprefix("lake/") for key in keys]) == []
    # And nothing took the URI for a local path (the bug this lake URI fixed: <cwd>/s3a:/bucket/lake).
    assert not (REPO / "s3a:").exists()


def test_register_points_the_metastore_at_the_buckets_current_versions(s3_run):
    lake_uri, registered, _ = s3_run
    lake = Lake(lake_uri)
    expected = {f"{table.zone}_{table.name}": lake.read_arrow(table).num_rows
                for zone in ("scores", "insights") for table in lake.tables(zone)}
    assert {name: entry["rows"] for name, entry in registered.items()} == expected
    for name, entry in registered.items():
        assert all(location.startswith(f"{lake_uri}/") for location in entry["locations"]), (name, entry)


def register_and_count(lake_uri: str, metastore: str, out: str) -> None:
    """In a child process: `register` (the command line's own code) into an embedded Hive metastore in
    `metastore`, in a session that has the cloud jars; then each registered table's row count as the
    metastore reads it, and its data locations, to `out` (JSON)."""
    from ecominsight import cli
    from ecominsight.session import conf_for_lake, spark_session

    conf = conf_for_lake(lake_uri, {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"})
    with spark_session("ecominsight-register-s3a", "local[2]", conf, embedded_metastore=metastore) as spark:
        # The CLI finds this session active and keeps it open for the counts below.
        status = cli.main(argv=["register", "--set", f"lake={lake_uri}", "--set", f"warehouse.embedded_metastore={metastore}",
                                "--set", f"run_id={RUN_ID}"])
        if status != 0:
            raise SystemExit(status)
        found = {}
        for row in spark.sql("SHOW TABLES IN ecominsight").collect():
            name = f"ecominsight.{row['tableName']}"
            files = spark.table(name).inputFiles()
            found[row["tableName"]] = {"rows": spark.table(name).count(),
                                       "locations": sorted({file.rsplit("/", 1)[0] for file in files})}
    Path(out).write_text(json.dumps(found, indent=1, sort_keys=True))


if __name__ == "__main__":
    register_and_count(*sys.argv[1:4])
