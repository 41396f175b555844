"""Spark Connect: pyspark's own Connect server on loopback, and the whole pipeline (clean, fuse, train
with TorchDistributor, score with predict_batch_udf, insights, then register) run through it by the
CLI's `--remote`, giving the row counts and metrics of the classic session's run of the same settings on
the same data (`windowed_run`: the bundled sample's last months).

Every Connect client runs in a child process: creating one marks the whole process as Spark Connect
(pyspark sets SPARK_CONNECT_MODE_ENABLED), which would turn the classic `spark` fixture's later
sessions into Connect ones."""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecominsight.catalog import CURRENT_SEQUENCES, USER_SCORES
from ecominsight.io import Lake, read_json
from ecominsight.session import embedded_metastore_conf
from tests.conftest import FAST_PIPELINE, windowed_preset
from tests.s3_server import _free_port
from tests.test_faults import full_disk  # noqa: F401  (a fixture: a 512 KiB tmpfs)

# The first test's setup may run the pipeline twice (classic, for `windowed_run`, and through Connect).
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 180
# The secrets of the connect-mode run: neither may reach a log line or any file in the lake.
PSEUDONYM_SECRET = "connect-pseudonym-key-5b1e0c7d9a"
TOKEN_SECRET = "connect-session-token-8f3a62c4e1"
# Same data, same seeds, same partitioning: differences are float rounding, not model changes. (GBT
# subsamples by row position; it fits on `baseline.in_fit_order`, a layout the rows alone decide, so
# it too is the same fit in both runs.)
METRIC_TOLERANCE = 1e-6
# Not results: where and when a run wrote things, and how long it took.
NOT_COMPARED = {"run_id", "path", "paths", "report", "model_dirs", "version", "model_version",
                "baseline_model_version", "component_versions", "seconds", "ranks", "inputs",
                "cost"}  # each fit's wall time and start: when and how fast, not what


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _log_tail(log_dir: Path) -> str:
    return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(log_dir.glob("*.out")))


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """pyspark's Spark Connect server (sbin/start-connect-server.sh of the pip wheel) on 127.0.0.1 at a
    free port, local[2] like the classic `spark` fixture, its Python workers on this interpreter and
    this checkout, offline. Yields `sc://127.0.0.1:<port>`; stopped by sbin/stop-connect-server.sh."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    start, stop = spark_home / "sbin" / "start-connect-server.sh", spark_home / "sbin" / "stop-connect-server.sh"
    if not start.is_file():
        pytest.skip(f"this pyspark has no {start}: the Spark Connect server ships with pyspark >= 3.4")
    # A wheel may lose the executable bits; the scripts call each other and bin/spark-submit.
    for script in [*spark_home.glob("sbin/*.sh"), *spark_home.glob("bin/*")]:
        if script.is_file() and not script.stat().st_mode & stat.S_IXUSR:
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    root = tmp_path_factory.mktemp("connect_server")
    port = _free_port()
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOG_DIR": str(root / "logs"),
           "SPARK_PID_DIR": str(root / "pids"), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("ECOMINSIGHT_PSEUDONYM_KEY", None)  # the server never needs it: the client resolves the key
    server_conf = {"spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port),
                   "spark.ui.enabled": "false", **embedded_metastore_conf(root / "metastore")}
    command = [str(start), "--master", "local[2]"]
    for key, value in server_conf.items():
        command += ["--conf", f"{key}={value}"]
    started = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"the Spark Connect server did not start: {started.stderr.strip()[-2000:]}")
    pid_files = lambda: list((root / "pids").glob("*.pid"))  # noqa: E731
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(port):
            alive = [f for f in pid_files() if Path(f"/proc/{f.read_text().strip()}").exists()]
            if time.monotonic() > deadline or not alive:
                pytest.skip(f"the Spark Connect server on port {port} did not answer within {SERVER_START_TIMEOUT_S} s "
                            f"(running: {bool(alive)}); its log:\n{_log_tail(root / 'logs')}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        subprocess.run([str(stop)], env=env, cwd=root, capture_output=True, text=True, timeout=120)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecominsight", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=1500)


def run_client(remote: str, *lines: str, conf: dict[str, str] | None = None) -> tuple[dict, str]:
    """The lines in a fresh interpreter with `spark`, a Spark Connect session on `remote` with `conf`
    made by ecominsight's session helper; they set `result`, printed as JSON on the last line.
    Returns that result and the interpreter's log output."""
    script = "\n".join(["import json", "from ecominsight.logs import setup_logging",
                        "from ecominsight.session import spark_session", "setup_logging()",
                        f"with spark_session(conf={conf or {}!r}, remote={remote!r}) as spark:",
                        *(f"    {line}" for line in lines),
                        "print(json.dumps(result))"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def assert_same_results(connect, classic, where: str = "") -> None:
    """Equal, field by field: integers and strings exactly, floats to METRIC_TOLERANCE; NOT_COMPARED
    left out."""
    if isinstance(classic, dict):
        assert set(connect) == set(classic), where
        for key in classic:
            if key not in NOT_COMPARED:
                assert_same_results(connect[key], classic[key], f"{where}.{key}")
    elif isinstance(classic, list):
        assert len(connect) == len(classic), where
        for index, (mine, theirs) in enumerate(zip(connect, classic)):
            assert_same_results(mine, theirs, f"{where}[{index}]")
    elif isinstance(classic, float) and not isinstance(connect, bool):
        assert math.isclose(connect, classic, rel_tol=0, abs_tol=METRIC_TOLERANCE), (where, connect, classic)
    else:
        assert connect == classic, (where, connect, classic)


@pytest.fixture(scope="module")
def connect_run(connect_server, windowed_run, tiny_encoder, tmp_path_factory):
    """The pipeline, then register, then score once more with the transformer (whatever the
    champion, so that predict_batch_udf runs), all through the Connect server by the CLI, with the
    data and settings of the classic `windowed_run` (and its session's shuffle partitions) and two secrets:
    (lake root, run id of the pipeline, CLI output of the three runs)."""
    lake_root = tmp_path_factory.mktemp("connect_lake")
    preset = windowed_preset(tmp_path_factory.mktemp("connect_preset"))
    settings = [f"lake={lake_root}", f"source.preset={preset}", f"train.transformer.pretrained={tiny_encoder}",
                *FAST_PIPELINE, "run_id=connect",
                f"spark.conf.spark.sql.shuffle.partitions={windowed_run[0].conf.get('spark.sql.shuffle.partitions')}",
                f"spark.conf.spark.hadoop.fs.s3a.session.token={TOKEN_SECRET}"]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    secrets = {"ECOMINSIGHT_PSEUDONYM_KEY": PSEUDONYM_SECRET}
    started = time.monotonic()
    pipeline = run_cli("pipeline", "--remote", connect_server, *overrides, env=secrets)
    assert pipeline.returncode == 0, pipeline.stderr[-5000:]
    # SPARK_REMOTE instead of --remote, as a Databricks or CI environment would give it.
    register = run_cli("register", *overrides, env={**secrets, "SPARK_REMOTE": connect_server})
    assert register.returncode == 0, register.stderr[-5000:]
    score = run_cli("score", "--remote", connect_server, *overrides, "--set", "score.model=transformer",
                    "--set", "run_id=connect-transformer", env=secrets)
    assert score.returncode == 0, score.stderr[-5000:]
    print(f"connect-mode pipeline + register + score: {time.monotonic() - started:.0f} s")
    return lake_root, "connect", "".join(run.stdout + run.stderr for run in (pipeline, register, score))


def test_the_pipeline_through_spark_connect_matches_the_classic_session(connect_run, windowed_run):
    lake_root, run_id, logs = connect_run
    _, _, _, classic = windowed_run
    reports = lake_root / "reports" / run_id
    assert "connected to the Spark Connect server at 127.0.0.1:" in logs and "(master local[2])" in logs
    assert "Started local training with 1 processes" in logs  # TorchDistributor, local_mode as configured
    train = read_json(reports / "train.json")
    for model in ("lr", "gbt", "transformer", "hybrid"):
        assert_same_results(train[model], classic["train"].metrics[model], f"train.{model}")
    assert train["champion"]["model"] == classic["train"].champion["model"]
    for stage in ("clean", "fuse", "score", "insights"):
        assert_same_results(read_json(reports / f"{stage}.json"), classic[stage].to_dict(), stage)


def test_predict_batch_udf_through_spark_connect_gives_the_classic_sessions_probabilities(connect_run, windowed_run):
    """The transformer's scores of the Connect run (predict_batch_udf in the server's Python workers)
    against the same model on the same users scored by the library in the classic session. Compared
    as sorted lists: the stored ids are pseudonyms, under the Connect run's key."""
    from pyspark.sql import functions as F

    from ecominsight.models.scoring import transformer_probability

    lake_root, _, _ = connect_run
    spark, config, _, _ = windowed_run
    scored = read_json(lake_root / "reports" / "connect-transformer" / "score.json")
    assert scored["model_name"] == "transformer"
    model_dir = lake_root / "models" / "transformer" / scored["model_version"]
    lake = Lake(lake_root)
    connect = lake.read(spark, USER_SCORES) \
        .filter(F.col("score_date") == F.lit(scored["score_date"]).cast("date")).select("probability").toPandas()
    classic = lake.read(spark, CURRENT_SEQUENCES).select(
        transformer_probability(F.col("text"), str(model_dir), batch_size=config.score.batch_size).alias("probability"),
    ).toPandas()
    assert len(connect) == len(classic) == scored["users_scored"]
    assert_same_results(sorted(connect["probability"]), sorted(classic["probability"]), "probabilities")


def test_register_through_spark_connect_fills_the_servers_metastore(connect_run, connect_server, windowed_run):
    """register ran in its own client session, which it stopped; the server kept running, and a new
    session sees the tables in the server's Hive metastore."""
    lake_root, run_id, _ = connect_run
    registered = read_json(lake_root / "reports" / run_id / "register.json")
    assert registered["metastore"] == "hive" and "scores_user_scores" in registered["tables"]
    seen, _ = run_client(connect_server,
                      "names = [t.name for t in spark.catalog.listTables('ecominsight')]",
                      "users = spark.table('ecominsight.scores_user_scores').count()",
                      "result = {'names': names, 'users': users}")
    assert set(registered["tables"]) <= set(seen["names"])
    assert seen["users"] == windowed_run[3]["score"].users_scored


def test_register_copies_managed_tables_through_spark_connect(connect_run, connect_server):
    """The serverless job's register (warehouse.tables=managed: a lake in a volume may hold no table),
    through Spark Connect: managed copies of every table's current version in the server's metastore;
    a second register with nothing new copies nothing."""
    lake_root, _, _ = connect_run
    settings = [f"lake={lake_root}", "warehouse.schema=ecominsight_copies", "warehouse.tables=managed"]
    seen, _ = run_client(
        connect_server,
        "from ecominsight.catalog import USER_SCORES",
        "from ecominsight.config import load_config",
        "from ecominsight.io import Lake",
        "from ecominsight.stages.register import run_register",
        f"config = load_config('local', {settings!r})",
        "lake = Lake(config.lake_path)",
        "first = run_register(spark, config, lake, 'connect-managed-1').tables",
        "second = run_register(spark, config, lake, 'connect-managed-2').tables",
        "described = spark.sql('DESCRIBE TABLE EXTENDED ecominsight_copies.scores_user_scores').collect()",
        "result = {'first': first, 'second': second, 'type': {r[0]: r[1] for r in described}['Type'],",
        "          'copied_rows': spark.table('ecominsight_copies.scores_user_scores').count(),",
        "          'lake_rows': lake.read(spark, USER_SCORES).count()}")
    assert "scores_user_scores" in seen["first"] and seen["type"] == "MANAGED"
    assert {(entry["kind"], entry["location"], entry["copied"]) for entry in seen["first"].values()} == {("managed", None, True)}
    assert {entry["copied"] for entry in seen["second"].values()} == {False}
    assert seen["copied_rows"] == seen["lake_rows"] > 0


def test_no_secret_reaches_a_log_line_or_a_file_of_the_lake_in_connect_mode(connect_run):
    lake_root, _, logs = connect_run
    assert PSEUDONYM_SECRET not in logs and TOKEN_SECRET not in logs
    assert '"spark.hadoop.fs.s3a.session.token": "***"' in logs  # the logged config masks it
    leaks = [str(path) for path in lake_root.rglob("*") if path.is_file()
             and (PSEUDONYM_SECRET.encode() in path.read_bytes() or TOKEN_SECRET.encode() in path.read_bytes())]
    assert not leaks


def test_the_session_helper_on_spark_connect(connect_server):
    """Session-level settings apply, the server's own are refused and named, the default parallelism
    is measured without a SparkContext, and stopping the client's session leaves the server running."""
    from ecominsight.session import REQUIRED_SQL_CONF

    wanted = {**REQUIRED_SQL_CONF, "spark.sql.shuffle.partitions": "3"}
    first, logs = run_client(connect_server,
                             "from ecominsight.session import default_parallelism",
                             "result = {'parallelism': default_parallelism(spark),",
                             f"          'conf': {{k: spark.conf.get(k) for k in {list(wanted)!r}}}}}",
                             conf={"spark.sql.shuffle.partitions": "3", "spark.driver.memory": "1g",
                                   "spark.master": "local[1]"})
    assert first == {"parallelism": 2, "conf": wanted}  # the server's local[2]
    assert "spark.driver.memory belong to the server and are not applied" in logs
    assert "chose the master; the configured local[1] is not applied" in logs
    second, _ = run_client(connect_server, "result = {'rows': spark.range(5).count()}")
    assert second == {"rows": 5}


def test_a_spark_connect_url_where_no_server_answers_fails_at_once(tmp_path):
    started = time.monotonic()
    result = run_cli("clean", "--remote", f"sc://127.0.0.1:{_free_port()}", "--set", f"lake={tmp_path / 'lake'}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no Spark Connect server answers at 127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # not pyspark's ten minutes of retries
    malformed = run_cli("clean", "--remote", "sc://", "--set", f"lake={tmp_path / 'lake'}")
    assert malformed.returncode == 2 and "the Spark Connect URL is malformed" in malformed.stderr, malformed.stderr[-3000:]


def test_a_full_disk_through_spark_connect_names_the_storage_error(connect_server, full_disk):
    """The server's exception reaches the client as a pyspark.errors type; its cause chain still gives
    `io.storage_failure` the java.io error, as in a classic session (tests/test_faults.py)."""
    lake_root = full_disk / "lake"
    result = run_cli("clean", "--remote", connect_server, "--set", f"lake={lake_root}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"clean failed: cannot write lake table clean/events at {lake_root}/clean/events: No space left on device"
            in result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_submit_sh_remote_runs_a_stage_through_the_server(connect_server, tmp_path):
    """What `./submit.sh --remote` prints in a dry run, run as printed (a real run would first bootstrap
    .venv; this one uses the interpreter of the tests): the stage connects and does its work there."""
    env = {name: value for name, value in os.environ.items() if name not in ("SPARK_REMOTE", "ECOMINSIGHT_ENV")}
    dry = subprocess.run([str(REPO / "submit.sh"), "--dry-run", "--remote", connect_server, "register",
                          "--set", f"lake={tmp_path / 'lake'}"], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**env, "ECOMINSIGHT_VENV": sys.prefix})
    assert dry.returncode == 0, dry.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in dry.stdout.splitlines() if line.startswith("export "))
    assert exports == {"HF_HUB_OFFLINE": "1", "SPARK_REMOTE": connect_server}
    run = subprocess.run(shlex.split(dry.stdout.splitlines()[-1]), capture_output=True, text=True, cwd=tmp_path,
                         timeout=300, env={**env, **exports, "PYTHONPATH": str(REPO)})
    logs = run.stdout + run.stderr
    assert f"connected to the Spark Connect server at {connect_server.removeprefix('sc://')}" in logs, logs[-3000:]
    assert run.returncode == 2 and "holds no tables to register" in logs  # it reached the stage, on an empty lake
