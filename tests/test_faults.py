"""Faults injected for real: a driver SIGKILLed in the middle of writing a lake table, a second run
on a lake that is in use, and a lake path that cannot be written. Each test says what it injected
and what it checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def write_version(lake_root: str, zone: str, version: str, seconds_per_partition: str = "0", spark=None) -> None:
    """Write the probe rows to <zone>/probe as the stages write (a new version folder, then the
    manifest): `features` whole, `scores` partitioned by day. Superseded versions go at once (a grace
    period of 0). Without `spark` (in a child process) it starts its own session."""
    from ecominsight.session import spark_session

    # Without adaptive execution Spark sets up the write job (and its staging folder) before it
    # runs the slow stage ahead of Lake.write's shuffle, so the kill lands inside the write.
    session = nullcontext(spark) if spark is not None else spark_session(
        "fault-probe", "local[2]", {"spark.ui.enabled": "false", "spark.sql.adaptive.enabled": "false"})
    with session as spark:
        rows = probe_rows(spark, version, float(seconds_per_partition))
        Lake(lake_root, retain_versions_minutes=0).write(rows, probe_table(zone))


def _writer_process(lake_root: Path, zone: str, version: str, seconds_per_partition: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_faults import write_version as w; w(*sys.argv[1:])",
         str(lake_root), zone, version, str(seconds_per_partition)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
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


def test_a_python_worker_killed_during_scoring_is_retried_and_every_user_scored_once(pipeline_run, tmp_path):
    """Injected: SIGKILL to the first Python worker that pyspark forks for the scoring UDF, while it
    loads the model. Checked: Spark retries the task, the job completes, and the day's partition
    holds every current user exactly once."""
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
            if _descends_from(pid, child.pid):  # not another run's worker
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
