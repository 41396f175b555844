"""Faults injected for real: a driver SIGKILLed in the middle of writing a lake table, a second run
on a lake that is in use, and a lake path that cannot be written. Each test says what it injected
and what it checked."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from ecominsight import catalog
from ecominsight.catalog import CURRENT_SEQUENCES, USER_SCORES, Table
from ecominsight.io import MANIFEST, Lake, LakeError

REPO = Path(__file__).resolve().parent.parent
ROWS = 4_000


def probe_rows(spark, version: str, seconds_per_partition: float):
    """`ROWS` rows tagged `version` in 8 partitions, each taking about the given time to compute."""
    from pyspark.sql import functions as F

    @F.udf("string")
    def slow(tag: str) -> str:
        time.sleep(seconds_per_partition / (ROWS / 8))
        return tag

    return spark.range(ROWS, numPartitions=8).select(
        "id", slow(F.lit(version)).alias("version"), (F.col("id") % 2).cast("string").alias("day"))


def probe_table(zone: str) -> Table:
    """<zone>/probe, written as that zone's tables are: `scores` partitioned by day, `features` whole."""
    return Table(zone, "probe", ("day",) if zone == "scores" else ())


def write_version(lake_root: str, zone: str, version: str, seconds_per_partition: str = "0", spark=None,
                  scratch: str | None = None) -> None:
    """Write the probe rows to <zone>/probe as the stages write (a new version folder, then the
    manifest): `features` whole, `scores` partitioned by day. Superseded versions go at once (a grace
    period of 0). Without `spark` (in a child process) it starts its own session, with the lake's
    settings as the command line makes them (the cloud jars and S3A committers for s3a://), Hadoop's
    local buffers under `scratch` when given."""
    from ecominsight.session import conf_for_lake, spark_session

    # Without adaptive execution Spark sets up the write job (and its staging folder) before it
    # runs the slow stage ahead of Lake.write's shuffle, so the kill lands inside the write.
    conf = {"spark.ui.enabled": "false", "spark.sql.adaptive.enabled": "false",
            **({"spark.hadoop.hadoop.tmp.dir": scratch} if scratch else {})}
    session = nullcontext(spark) if spark is not None else spark_session("fault-probe", "local[2]",
                                                                          conf_for_lake(lake_root, conf))
    with session as spark:
        rows = probe_rows(spark, version, float(seconds_per_partition))
        Lake(lake_root, retain_versions_minutes=0).write(rows, probe_table(zone))


def _writer_process(lake_root: Path | str, zone: str, version: str, seconds_per_partition: float,
                    env: dict[str, str] | None = None, scratch: Path | None = None, log=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_faults import write_version as w; w(*sys.argv[1:5], "
         "scratch=(sys.argv[5:] or [None])[0])", str(lake_root), zone, version, str(seconds_per_partition),
         *([str(scratch)] if scratch else [])],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True,
        env={**os.environ, **env} if env else None,
    )


def _versions(spark, lake: Lake, zone: str) -> dict[str, int]:
    table = lake.read(spark, probe_table(zone))
    return {r["version"]: r["count"] for r in table.groupBy("version").count().collect()}


# Where a write puts its files before its job commits: Spark's _temporary folder inside the new version.
IN_FLIGHT = "{zone}/probe/v-*/_temporary"


@pytest.mark.parametrize("zone", ["features", "scores"])
def test_a_driver_killed_mid_write_leaves_the_previous_table_whole(spark, tmp_path, zone):
    """Injected: SIGKILL to the whole process group (driver JVM, Python driver, workers) while the
    second version's files are being written. Checked: readers see version 1 in full (the manifest
    still names it), the unfinished version is removed by the next write, and that re-run gives the
    same table as an uninterrupted run."""
    root = tmp_path / "lake"
    lake = Lake(root)
    write_version(str(root), zone, "v1", spark=spark)
    first = lake.version(probe_table(zone))

    second = _writer_process(root, zone, "v2", 30)
    deadline, in_flight = time.time() + 300, []
    while time.time() < deadline and not in_flight:
        in_flight = list(root.glob(IN_FLIGHT.format(zone=zone)))
        time.sleep(0.5)
    assert in_flight, "the second write never started"
    time.sleep(2)  # some tasks are writing their files now
    os.killpg(second.pid, signal.SIGKILL)
    second.wait(timeout=60)

    assert _versions(spark, lake, zone) == {"v1": ROWS}
    assert lake.version(probe_table(zone)) == first
    unfinished = in_flight[0].parent
    assert unfinished.exists() and unfinished.name != first  # left behind, invisible to readers

    write_version(str(root), zone, "v2", spark=spark)
    assert _versions(spark, lake, zone) == {"v2": ROWS}
    assert sorted(p.name for p in (root / zone / "probe").iterdir()) == sorted([MANIFEST, lake.version(probe_table(zone))])


def content_hash(rows: list[tuple]) -> str:
    """A hash of a table's rows, independent of their order and of how the files split them."""
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()


def arrow_view(lake: Lake, table: Table) -> tuple[str, int, str]:
    """What a pyarrow reader sees now: (the manifest's version, rows, content hash)."""
    version = lake.version(table)
    data = lake.read_arrow(table, columns=["id", "version", "day"]).to_pydict()
    # pyarrow reads a partition column back from its folder names as a number (day=0): compare as text.
    rows = [(i, tag, str(day)) for i, tag, day in zip(data["id"], data["version"], data["day"])]
    return version, len(rows), content_hash(rows)


def read_then_write_s3a(lake_root: str, zone: str, version: str, scratch: str, out: str) -> None:
    """In a child process with the cloud jars: what Spark reads of <zone>/probe, then a complete write
    of `version` (grace period 0, so it removes every unfinished version), then what Spark reads again.
    The results go to `out` as JSON."""
    from ecominsight.session import conf_for_lake, spark_session

    def view(spark) -> dict:
        frame = Lake(lake_root).read(spark, probe_table(zone)).select("id", "version", "day")
        rows = [tuple(row) for row in frame.collect()]
        return {"rows": len(rows), "hash": content_hash(rows)}

    conf = conf_for_lake(lake_root, {"spark.ui.enabled": "false", "spark.hadoop.hadoop.tmp.dir": scratch})
    with spark_session("fault-read-s3a", "local[2]", conf) as spark:
        before = view(spark)
        write_version(lake_root, zone, version, spark=spark)
        Path(out).write_text(json.dumps({"before": before, "after": view(spark)}))


# Seconds after a write's first object appears in the bucket at which its writer is killed: while it
# sets up the job, while the first tasks write, while the last ones write or the job commits.
S3_KILL_DELAYS = (0.5, 7.0, 15.0)


@pytest.mark.parametrize("zone", ["features", "scores"])
def test_writers_killed_mid_write_on_s3a_never_expose_a_partial_table(s3_bucket, cloud_jars, tmp_path, zone):
    """Injected: SIGKILL to a writer's whole process group (JVM, Python driver, workers) writing
    <zone>/probe to s3a:// on the loopback S3 server through the S3A magic committer (`features` whole,
    `scores` by day), at each of S3_KILL_DELAYS after the write's first object appeared in the bucket.
    Checked: a pyarrow reader polling all along, and one after each kill, sees version 1 whole
    (rows and content hash of the first write), never a part; Spark in a child reads the same; the
    next complete write removes every unfinished version (grace period 0) and reads back whole."""
    env = {**s3_bucket.server.env(), "SPARK_LOCAL_IP": "127.0.0.1"}
    lake_root = f"{s3_bucket.uri}/lake"
    lake, table = Lake(lake_root), probe_table(zone)
    client = s3_bucket.server.client()
    prefix = f"lake/{zone}/probe/"

    def keys() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def run(version: str, seconds: float, log: Path) -> subprocess.Popen:
        with log.open("w") as handle:
            return _writer_process(lake_root, zone, version, seconds, env=env, scratch=tmp_path / "hadoop", log=handle)

    started = time.monotonic()
    first = run("v1", 0, tmp_path / "v1.log")
    assert first.wait(timeout=600) == 0, (tmp_path / "v1.log").read_text()[-4000:]
    v1_version = lake.version(table)
    expected = (v1_version, ROWS, content_hash([(i, "v1", str(i % 2)) for i in range(ROWS)]))
    assert arrow_view(lake, table) == expected

    seen: list = []
    stop = threading.Event()

    def poll() -> None:  # a reader that keeps reading while writers come and die
        while not stop.is_set():
            try:
                seen.append(arrow_view(lake, table))
            except Exception as err:  # noqa: BLE001 - any failure to read is a finding, kept and asserted on
                seen.append(repr(err))
            time.sleep(0.3)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    unfinished: set[str] = set()
    try:
        for attempt, delay in enumerate(S3_KILL_DELAYS):
            log = tmp_path / f"killed-{attempt}.log"
            writer = run(f"v2-attempt-{attempt}", 6, log)
            deadline, new = time.time() + 300, []
            while time.time() < deadline and not new and writer.poll() is None:
                new = [key for key in keys()  # this write's first object: under none of the folders before it
                       if key.removeprefix(prefix).split("/", 1)[0] not in {v1_version, MANIFEST, *unfinished}]
                time.sleep(0.2)
            assert new, f"write {attempt} never reached the bucket:\n{log.read_text()[-4000:]}"
            time.sleep(delay)
            assert writer.poll() is None, f"write {attempt} ended before its kill:\n{log.read_text()[-4000:]}"
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait(timeout=60)
            unfinished |= {key.removeprefix(prefix).split("/", 1)[0] for key in keys()} - {v1_version, MANIFEST}
            assert arrow_view(lake, table) == expected, f"after the kill at +{delay} s"
    finally:
        stop.set()
        reader.join(timeout=60)
    kills_done = time.monotonic()
    assert seen and all(view == expected for view in seen), sorted({str(view) for view in seen if view != expected})
    assert len(unfinished) == len(S3_KILL_DELAYS), unfinished  # each killed write left its own folder behind

    out = tmp_path / "spark.json"
    with (tmp_path / "final.log").open("w") as handle:
        final = subprocess.run(
            [sys.executable, "-c", "import sys; from tests.test_faults import read_then_write_s3a as r; r(*sys.argv[1:])",
             lake_root, zone, "v2", str(tmp_path / "hadoop"), str(out)],
            cwd=REPO, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    assert final.returncode == 0, (tmp_path / "final.log").read_text()[-4000:]
    spark_view = json.loads(out.read_text())
    assert spark_view["before"] == {"rows": ROWS, "hash": expected[2]}
    v2 = content_hash([(i, "v2", str(i % 2)) for i in range(ROWS)])
    assert spark_view["after"] == {"rows": ROWS, "hash": v2}
    assert arrow_view(lake, table)[1:] == (ROWS, v2)
    assert sorted({key.removeprefix(prefix).split("/", 1)[0] for key in keys()}) == sorted([MANIFEST, lake.version(table)])
    # What S3 keeps of the killed writes' uploads (multipart uploads never completed): invisible to
    # every reader, billed until a lifecycle rule or `hadoop s3guard uploads -abort` removes them.
    pending = client.list_multipart_uploads(Bucket=s3_bucket.name, Prefix=prefix).get("Uploads", [])
    print(f"\ns3a kill test ({zone}): {len(S3_KILL_DELAYS)} kills and {len(seen)} reads in "
          f"{kills_done - started:.0f} s, then the Spark read + clean write in {time.monotonic() - kills_done:.0f} s; "
          f"{len(pending)} incomplete multipart uploads left by the killed writers")


def test_a_second_run_on_a_lake_in_use_refuses_with_the_holder_named(tmp_path):
    """Injected: another live process holds the lake. Checked: a stage run exits 2 before starting
    Spark, naming the holder; once that holder is dead (SIGKILL), its stale lock is taken over."""
    lake_root = tmp_path / "lake"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ecominsight.io import Lake\n"
         "with Lake(sys.argv[1]).lock('the nightly test run'):\n    print('held', flush=True); time.sleep(600)",
         str(lake_root)], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.time()
        refused = subprocess.run([sys.executable, "-m", "ecominsight", "score", "--set", f"lake={lake_root}"],
                                 capture_output=True, text=True, cwd=REPO, timeout=300)
        assert refused.returncode == 2
        assert "in use by the nightly test run" in refused.stderr and f"pid {holder.pid}" in refused.stderr
        assert "SparkSession" not in refused.stderr and time.time() - started < 60
        with pytest.raises(LakeError, match="in use by the nightly test run"):
            with Lake(lake_root).lock("a second writer"):
                pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    with Lake(lake_root).lock("after the holder died"):
        assert json.loads((lake_root / "_lock").read_text())["holder"] == "after the holder died"
    assert not (lake_root / "_lock").exists()


def test_an_unwritable_lake_path_fails_clearly_without_output(tmp_path):
    """Injected: a lake root below a regular file (not creatable, whoever runs the test). Checked:
    exit 2, one error line naming the path, and nothing written."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the lake's parent folder should be")
    result = subprocess.run([sys.executable, "-m", "ecominsight", "clean", "--set", f"lake={blocker / 'lake'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert f"{blocker / 'lake'}" in result.stderr and "clean failed: cannot use" in result.stderr
    assert "Traceback" not in result.stderr
    assert blocker.read_text().startswith("a file")



@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB tmpfs mounted for the test: the lake's disk fills up during the first table write."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root/CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a long-lived Spark Connect server (tests/test_connect.py) may still hold the handles that
        # Spark's Parquet writer leaks when a write fails, until its next garbage collection.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_a_full_disk_fails_clearly_and_leaves_no_partial_table(full_disk):
    """Injected: a lake on a 512 KiB file system, so Spark's Parquet writer hits ENOSPC. Checked: exit 2,
    an error naming the table, its path and the cause, no Python traceback, and no partial output:
    nothing under the lake that a reader could take for a table, no staging leftovers, no lock."""
    lake_root = full_disk / "lake"
    result = subprocess.run([sys.executable, "-m", "ecominsight", "clean", "--set", f"lake={lake_root}"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"clean failed: cannot write lake table clean/events at {lake_root}/clean/events: No space left on device"
            in result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not list(lake_root.rglob("_lock"))
    tables = [table for zone in ("clean", "quarantine", "features") for table in (lake_root / zone).glob("*")]
    # A table folder that exists is a published table, and its every version folder is a published one.
    assert all((table / MANIFEST).is_file() for table in tables), tables
    lake = Lake(lake_root)
    for table in tables:
        manifest = lake.manifest(catalog.table(table.parent.name, table.name))
        published = {manifest["version"], *manifest.get("partitions", {}).values()}
        assert {p.name for p in table.iterdir() if p.name != MANIFEST} <= published, table


def score_in_child(lake_root: str) -> None:
    """Run in a child process: the score stage (full mode) on a lake, with up to 4 attempts per task."""
    from ecominsight.config import load_config
    from ecominsight.session import spark_session
    from ecominsight.stages import run_score

    with spark_session("fault-score", "local[2,4]", {"spark.ui.enabled": "false"}) as spark:
        print(json.dumps(run_score(spark, load_config("local", [f"lake={lake_root}"]), Lake(lake_root), "fault-score").to_dict()))


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid not in (None, 0, 1):
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _forked_python_workers() -> list[int]:
    """Pids of Python workers that pyspark's daemon forked (their parent runs the daemon too)."""
    def cmdline(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and "pyspark.daemon" in cmdline(entry.name)
            and "pyspark.daemon" in cmdline(str(_parent(int(entry.name))))]


def _loading_torch(pid: int) -> bool:
    """Whether the process has mapped libtorch: a scoring worker, not one that ran only the
    pseudonym UDF (such a worker, killed when idle, is replaced before any task sees it)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_python_worker_killed_during_scoring_is_retried_and_every_user_scored_once(pipeline_run, tmp_path):
    """Injected: SIGKILL to the first Python worker that pyspark forks for the scoring UDF, while it
    loads the model (seen by libtorch among its mappings). Checked: Spark retries the task, the job
    completes, and the day's partition holds every current user exactly once."""
    import shutil

    spark, _, lake, summary = pipeline_run
    copy = Lake(tmp_path / "lake")
    shutil.copytree(lake.root.path, copy.root.path, ignore=shutil.ignore_patterns("checkpoints", "scores"))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_faults import score_in_child as s; s(sys.argv[1])",
         copy.root.path], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and child.poll() is None:
        for pid in _forked_python_workers():
            if _descends_from(pid, child.pid) and _loading_torch(pid):  # not another run's worker
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.05)
    out, err = child.communicate(timeout=600)
    assert killed is not None, "no Python worker was seen to kill"
    assert child.returncode == 0, err[-3000:]
    assert "Lost task" in err or "exited unexpectedly" in err  # the failure happened and was retried
    result = json.loads(out.strip().splitlines()[-1])
    scores = copy.read(spark, USER_SCORES)
    n_current = copy.read(spark, CURRENT_SEQUENCES).count()
    assert result["users_scored"] == scores.count() == scores.select("user_id").distinct().count() == n_current


def test_a_model_version_that_climbs_out_of_the_lake_is_refused(tmp_path):
    """Injected: a model version from config (and a tampered LATEST file) naming `../..`. Checked: a
    clear LakeError before any path outside models/ is touched."""
    from ecominsight.models.registry import LATEST, resolve_version

    lake = Lake(tmp_path / "lake")
    with pytest.raises(LakeError, match="is not a version name"):
        resolve_version(lake, "transformer", "../../../etc")
    lake.model_pointer("transformer", LATEST).write_text("../../outside")
    with pytest.raises(LakeError, match="is not a version name"):
        resolve_version(lake, "transformer", "latest")
