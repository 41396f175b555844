"""A real Spark standalone cluster on loopback (a master and two 1-core workers) runs the whole pipeline,
submitted by ./submit.sh with the packaged environment; training runs as barrier tasks on the executors.

The first run builds build/cluster-env and the env archive (a few minutes); later runs reuse them.

The packed environment is large (torch's CUDA build from PyPI: a ~3.6 GB archive, ~6.3 GB unpacked), and
on one machine every copy Spark makes of it lands on the same disk: the driver's copy and its unpacked
tree (client mode unpacks --archives on the driver too) and each executor's. All of Spark's scratch
(spark.local.dir, SPARK_LOCAL_DIRS, the worker dirs) lives under the test's own folders, so the
fixtures remove it however the processes ended; a run that would not fit on the disk skips first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pyspark
import pytest

from ecominsight.io import read_json, table_dataset
from tests.conftest import REPO, windowed_preset

SPARK_HOME = Path(pyspark.__file__).resolve().parent
# What would let the driver or the executors use this checkout or this venv instead of the package.
LEAKY_ENV = ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "ECOMINSIGHT_CONF_DIR", "SPARK_HOME")


# Secrets as users hold them: the pseudonym key and a token in the environment, a credential in Spark conf.
PSEUDONYM_SECRET, TOKEN_SECRET, CONF_SECRET = "pseudonym-key-7c1e9b44d2a0", "dapi-4b2f0e9d7c6a", "s3-secret-93ad5e17b8"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    return {**env, "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _remove_scratch(*folders: Path) -> None:
    """Spark's scratch and the unpacked environments (gigabytes each); the logs stay for a post-mortem."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _run_in_own_group(command: list[str], *, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for a command that starts JVMs and Python workers: on timeout the whole process
    group is killed, so that no driver outlives the test and slows the rest of the suite."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{command[:4]} ran past {timeout} s and was killed:\n{stdout[-4000:]}\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _master_state(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=5) as response:
        return json.load(response)


def _stop(process: subprocess.Popen) -> None:
    """Stop a daemon and everything it started (its process group): TERM, then KILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """`spark://127.0.0.1:<port>` with two registered workers; stopped (process groups) at the end."""
    root = tmp_path_factory.mktemp("standalone")
    # Executors inherit the workers' SPARK_LOCAL_DIRS: fetched files and shuffle data stay in `root`.
    env = _clean_env(SPARK_HOME=str(SPARK_HOME), SPARK_DAEMON_MEMORY="512m", SPARK_LOG_DIR=str(root / "logs"),
                     SPARK_LOCAL_DIRS=str(root / "local"))
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, webui = _free_port(), _free_port()
    daemons: list[subprocess.Popen] = []
    work_dirs = [root / f"worker{i}" for i in range(2)]

    def start(name: str, *args: str) -> None:
        log = open(root / f"{name}.log", "w")
        daemons.append(subprocess.Popen([spark_class, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=root))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(webui))
        for i, work_dir in enumerate(work_dirs):
            work_dir.mkdir()
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--cores", "1",
                  "--memory", "2g", "--host", "127.0.0.1", "--webui-port", str(_free_port()), "--work-dir", str(work_dir))
        deadline = time.monotonic() + 120
        while True:
            dead = [p.args[1] for p in daemons if p.poll() is not None]
            assert not dead, f"{dead} exited; logs in {root}"
            try:
                state = _master_state(webui)
                if state.get("aliveworkers") == 2 and len(state["workers"]) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"two workers did not register within 120 s; logs in {root}"
            time.sleep(1)
        yield {"url": f"spark://127.0.0.1:{port}", "webui": webui, "root": root, "work_dirs": work_dirs}
    finally:
        for process in reversed(daemons):
            _stop(process)
        _remove_scratch(root / "local", *root.glob("worker*/app-*/*/env"), *root.glob("worker*/app-*/*/*.tar.gz"))


@pytest.fixture(scope="module")
def cluster_run(standalone_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_run")
    lake, events = root / "lake", root / "events"
    events.mkdir()
    started = time.monotonic()
    package = _run_in_own_group([str(REPO / "submit.sh"), "--master", standalone_cluster["url"], "--package"],
                                env=_clean_env(), timeout=1200)
    assert package.returncode == 0, package.stderr[-3000:]
    packaged = time.monotonic()
    # Copies of the archive: the driver's and two executors'; unpacked trees: the driver's and two.
    archive = REPO / "build" / "dist" / "ecominsight-env.tar.gz"
    needed = 3 * archive.stat().st_size + 3 * _tree_bytes(REPO / "build" / "cluster-env") + (2 << 30)
    if _free_bytes(root) < needed:
        pytest.skip(f"the cluster run needs about {needed >> 30} GiB free under {root} for the copies of the "
                    f"{archive.stat().st_size >> 20} MiB environment archive; {_free_bytes(root) >> 30} GiB are")
    driver_scratch = root / "local"
    try:
        result = _run_in_own_group(
            [str(REPO / "submit.sh"), "--master", standalone_cluster["url"], "--env", "cluster", "pipeline",
             "--set", f"lake={lake}", "--set", "run_id=cluster-test",
             # The sample's last months: ~150 days of clean/events partitions instead of ~600, for
             # executors that each have one core.
             "--set", f"source.preset={windowed_preset(root)}",
             "--set", "train.transformer.epochs=1", "--set", "train.transformer.max_length=32",
             "--set", "train.gradient_boosted_trees.max_iter=20", "--set", "fuse.max_events=16",
             # conf/cluster.yaml's 200 shuffle partitions are for real data; 2 executor cores need few.
             "--set", 'spark.conf={spark.sql.shuffle.partitions: "4"}',
             "--conf", "spark.executor.memory=1g", "--conf", "spark.eventLog.enabled=true",
             "--conf", f"spark.eventLog.dir=file://{events}", "--conf", "spark.eventLog.rolling.enabled=false",
             "--conf", "spark.eventLog.compress=false", "--conf", f"spark.local.dir={driver_scratch}",
             # Both executors share this host: each fetches the archive itself instead of via a shared cache copy.
             "--conf", "spark.files.useFetchCache=false",
             # A credential in Spark conf, as users pass one (the run never talks to S3).
             "--set", f"spark.conf.spark.hadoop.fs.s3a.secret.key={CONF_SECRET}"],
            # A hang guard, with room for a loaded machine: 12 min of Spark at load 11 ran past 900 s.
            cwd=root, timeout=1500, env=_clean_env(ECOMINSIGHT_PSEUDONYM_KEY=PSEUDONYM_SECRET, DATABRICKS_TOKEN=TOKEN_SECRET))
    finally:
        _remove_scratch(driver_scratch)
    timings = {"package_s": round(packaged - started, 1), "pipeline_s": round(time.monotonic() - packaged, 1)}
    print(f"cluster test timings: {timings}")
    (root / "submit.stdout").write_text(result.stdout, encoding="utf-8")
    (root / "submit.stderr").write_text(result.stderr, encoding="utf-8")
    assert result.returncode == 0, (f"see {root}/submit.std*", result.stdout[-4000:], result.stderr[-2000:])
    return {"lake": lake, "events": events, "stdout": result.stdout, "package_stderr": package.stderr,
            "run_root": root, **standalone_cluster}


def _event_log(events: Path) -> list[dict]:
    (log,) = [p for p in events.iterdir() if p.name.startswith("app-")]  # one plain JSON-lines file
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.timeout(2700)
def test_pipeline_runs_on_a_standalone_cluster_with_the_packaged_env(cluster_run):
    lake, stdout = cluster_run["lake"], cluster_run["stdout"]
    assert "ecominsight run cluster-test finished" in stdout
    assert f"started SparkSession ecominsight on {cluster_run['url']}" in stdout
    for zone, tables in {"clean": ["events", "users", "items"], "features": ["user_sequences", "current_sequences"],
                         "insights": ["user_profiles", "segments", "marketing_actions", "recommendations"]}.items():
        for table in tables:
            assert table_dataset(str(lake / zone / table)).count_rows(), f"{zone}/{table} is empty"
    for model in ("lr", "gbt", "transformer"):
        assert (lake / "models" / model / "LATEST").is_file()
    current_users = table_dataset(str(lake / "features" / "current_sequences")).count_rows()
    scores = table_dataset(str(lake / "scores" / "user_scores"))
    assert scores.count_rows() == current_users > 0
    assert len(set(scores.to_table(columns=["user_id"]).column("user_id").to_pylist())) == current_users
    reports = lake / "reports" / "cluster-test"
    for report in ("clean.json", "train.json", "insights.json"):
        assert (reports / report).is_file(), report
    # The executors ran the code that submit.sh shipped, not this checkout: the worker work dirs hold it.
    for work_dir in cluster_run["work_dirs"]:
        assert list(work_dir.glob("app-*/*/env/lib/python3.11/site-packages/ecominsight/stages/__init__.py")), work_dir


def test_training_ran_as_barrier_tasks_on_two_executors(cluster_run):
    lake = cluster_run["lake"]
    version = (lake / "models" / "transformer" / "LATEST").read_text().strip()
    metrics = read_json(lake / "models" / "transformer" / version / "metrics.json")
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 1
    # Each rank ran in its own executor's working directory, with the env unpacked there.
    work_root = str(cluster_run["root"])
    ranks = sorted(metrics["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["cwd"] for r in ranks}) == 2
    for placement in ranks:
        assert placement["cwd"].startswith(work_root) and "/app-" in placement["cwd"], placement
        assert placement["python"] == f"{placement['cwd']}/env/bin/python", placement
    # Spark's own record: a barrier stage whose tasks succeeded on two distinct executors, not the driver.
    log = _event_log(cluster_run["events"])
    barrier_stages = {e["Stage Info"]["Stage ID"] for e in log if e["Event"] == "SparkListenerStageSubmitted"
                      and any(rdd.get("Barrier") for rdd in e["Stage Info"]["RDD Info"])}
    assert barrier_stages, "no barrier stage ran"
    executors = {e["Task Info"]["Executor ID"] for e in log if e["Event"] == "SparkListenerTaskEnd"
                 and e["Stage ID"] in barrier_stages and e["Task End Reason"]["Reason"] == "Success"}
    assert len(executors) == 2 and "driver" not in executors, executors


def test_no_secret_reaches_any_log_or_report_of_a_full_run(cluster_run):
    """Injected: the pseudonym key and a Databricks token in the environment and an S3 secret in Spark
    conf of the whole pipeline on the cluster. Checked: none of them appears in any file the run left
    outside the data (driver output, event log, master/worker logs, executor stdout/stderr, the lake's
    reports), while the key did pseudonymise the scores."""
    from ecominsight.privacy import pseudonym

    lake = cluster_run["lake"]
    logs = [cluster_run["run_root"] / "submit.stdout", cluster_run["run_root"] / "submit.stderr",
            *cluster_run["events"].iterdir(), *cluster_run["root"].glob("*.log"),
            *cluster_run["root"].glob("logs/*"), *(lake / "reports").rglob("*.*")]
    for work_dir in cluster_run["work_dirs"]:
        logs += [p for p in work_dir.glob("app-*/*/std*") if p.is_file()]
    assert len([p for p in logs if p.name in ("stdout", "stderr")]) >= 4  # both executors' outputs were read
    for path in logs:
        text = path.read_bytes()
        for secret in (PSEUDONYM_SECRET, TOKEN_SECRET, CONF_SECRET):
            assert secret.encode() not in text, f"{secret} leaked into {path}"
    assert '"spark.hadoop.fs.s3a.secret.key": "***"' in cluster_run["stdout"]  # logged, masked
    # The key from the environment is the one that made the pseudonyms (not a key file of the lake).
    assert not (lake / "_secrets").exists()
    raw_ids = table_dataset(str(lake / "features" / "current_sequences")).to_table(columns=["user_id"])
    scored = set(table_dataset(str(lake / "scores" / "user_scores")).to_table(columns=["user_id"])
                 .column("user_id").to_pylist())
    key = PSEUDONYM_SECRET.encode()
    assert {pseudonym(str(user), key) for user in raw_ids.column("user_id").to_pylist()} == scored
