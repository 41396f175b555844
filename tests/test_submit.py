"""submit.sh follows the cluster: --master always wins, --env follows the master, `register` is a
stage, and secrets reach a cluster's driver and executors through the platform without showing on
the command line, in the dry run or in Spark's logs. The dry runs need no cluster; two tests run the
real spark-submit locally."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys

import pytest

from ecominsight.config import load_config
from tests.conftest import REPO

PSEUDONYM_KEY = "pseudonym-key-7d1e5c3b9a8f6e4d"
API_TOKEN = "api-token-2b4d6f8a0c1e3a5c"
SECRET_ENV = {"ECOMINSIGHT_PSEUDONYM_KEY": PSEUDONYM_KEY, "MY_API_TOKEN": API_TOKEN}


def submit(*args: str, env: dict[str, str] | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run ./submit.sh with the venv that runs these tests (so that nothing is installed) and without
    the caller's ECOMINSIGHT_ENV, SPARK_REMOTE or secrets, unless `env` brings them."""
    base = {name: value for name, value in os.environ.items()
            if name not in ("ECOMINSIGHT_ENV", "ECOMINSIGHT_K8S_SECRET", "SPARK_REMOTE", *SECRET_ENV)}
    base.setdefault("ECOMINSIGHT_VENV", sys.prefix)
    return subprocess.run([str(REPO / "submit.sh"), *args], capture_output=True, text=True, cwd=REPO,
                          env={**base, **(env or {})}, timeout=timeout)


def dry_run(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """The spark-submit command a dry run prints (its last line), as arguments."""
    result = submit("--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.splitlines()[-1])


def confs(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--conf"]


def test_the_yarn_dry_run_carries_the_yarn_master_only():
    result = submit("--dry-run", "--master", "yarn", "pipeline")
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.splitlines()[-1])
    assert command.count("--master") == 1 and command[command.index("--master") + 1] == "yarn"
    assert command[-2:] == ["--env", "cluster"]
    assert "local" not in result.stdout
    # ...and the overlay it picks sets no master that could compete with spark-submit's.
    assert load_config("cluster").spark.master is None


@pytest.mark.parametrize("args, env, overlay", [
    (["--master", "yarn"], {}, "cluster"),
    (["--master", "spark://127.0.0.1:7077"], {}, "cluster"),
    (["--master", "k8s://https://127.0.0.1:6443"], {}, "cluster"),
    (["--master", "local[2]"], {}, "local"),
    ([], {}, "local"),
    (["--master", "yarn", "--env", "local"], {}, "local"),           # an explicit --env wins
    (["--master", "yarn"], {"ECOMINSIGHT_ENV": "databricks"}, "databricks"),
    (["--master", "yarn", "--env", "cluster"], {"ECOMINSIGHT_ENV": "local"}, "cluster"),
])
def test_env_follows_the_master_unless_given(args, env, overlay):
    assert dry_run(*args, "clean", env=env)[-2:] == ["--env", overlay]


@pytest.mark.parametrize("master", ["local[1]", "yarn"])
def test_register_is_a_stage(master):
    command = dry_run("--master", master, "register")
    job = command[command.index("--env") - 1]
    assert job == str(REPO / "jobs" / "register.py") and (REPO / "jobs" / "register.py").is_file()
    assert "--name" in command and command[command.index("--name") + 1] == "ecominsight-register"


@pytest.mark.parametrize("master, deploy_mode, properties", [
    ("yarn", "cluster", ["spark.executorEnv.MY_API_TOKEN", "spark.yarn.appMasterEnv.MY_API_TOKEN",
                         "spark.executorEnv.ECOMINSIGHT_PSEUDONYM_KEY", "spark.yarn.appMasterEnv.ECOMINSIGHT_PSEUDONYM_KEY"]),
    ("yarn", "client", ["spark.executorEnv.MY_API_TOKEN", "spark.executorEnv.ECOMINSIGHT_PSEUDONYM_KEY"]),
    ("spark://127.0.0.1:7077", "client", ["spark.executorEnv.MY_API_TOKEN", "spark.executorEnv.ECOMINSIGHT_PSEUDONYM_KEY"]),
])
def test_secrets_go_through_a_properties_file_and_never_show(master, deploy_mode, properties):
    result = submit("--dry-run", "--master", master, "--deploy-mode", deploy_mode, "--secret-env", "MY_API_TOKEN",
                    "pipeline", env=SECRET_ENV)
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert PSEUDONYM_KEY not in shown and API_TOKEN not in shown
    listed = [line.split(": ", 1)[1].split("=", 1)[0] for line in result.stdout.splitlines()
              if line.startswith("# in the --properties-file (mode 0600): ")]
    assert listed == properties
    command = shlex.split(result.stdout.splitlines()[-1])
    assert "--properties-file" in command and "--load-spark-defaults" in command
    assert not set(properties) & {conf.split("=", 1)[0] for conf in confs(command)}  # none on the command line


def test_the_k8s_dry_run_names_the_secret_reference_not_the_value():
    result = submit("--dry-run", "--master", "k8s://https://127.0.0.1:6443", "--deploy-mode", "cluster",
                    "--k8s-secret", "ecominsight-secrets", "--secret-env", "MY_API_TOKEN", "score", env=SECRET_ENV)
    assert result.returncode == 0, result.stderr
    assert PSEUDONYM_KEY not in result.stdout + result.stderr and API_TOKEN not in result.stdout + result.stderr
    command = shlex.split(result.stdout.splitlines()[-1])
    references = [conf for conf in confs(command) if ".secretKeyRef." in conf]
    assert sorted(references) == sorted(
        f"spark.kubernetes.{role}.secretKeyRef.{name}=ecominsight-secrets:{name}"
        for role in ("driver", "executor") for name in ("MY_API_TOKEN", "ECOMINSIGHT_PSEUDONYM_KEY"))
    assert "--properties-file" not in command


@pytest.mark.parametrize("args, env, message", [
    # A k8s driver without the pseudonym key would quietly pseudonymise with another key.
    (["--master", "k8s://https://127.0.0.1:6443", "--deploy-mode", "cluster"], SECRET_ENV,
     "must reach the job on Kubernetes through a secret: give --k8s-secret NAME"),
    (["--master", "yarn", "--secret-env", "MY_API_TOKEN"], {}, "--secret-env MY_API_TOKEN: MY_API_TOKEN is not set"),
    (["--master", "yarn", "--secret-env", "HOME"], {}, "a secret's name ends in KEY, TOKEN, SECRET"),
    (["--master", "yarn"], {"ECOMINSIGHT_PSEUDONYM_KEY": PSEUDONYM_KEY + " "}, "starts or ends with a blank"),
])
def test_secrets_that_cannot_reach_the_job_are_refused(args, env, message):
    result = submit("--dry-run", *args, "clean", env=env)
    assert result.returncode == 2 and message in result.stderr
    assert PSEUDONYM_KEY not in result.stdout + result.stderr


PROBE_EXECUTOR_ENV = """
import hashlib, os, sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
names = sys.argv[1:]
seen = spark.sparkContext.parallelize([0], 1).map(
    lambda _: [hashlib.sha256(os.environ.get(n, "").encode()).hexdigest() for n in names]).collect()[0]
print("EXECUTOR_ENV_SHA256", " ".join(seen))
spark.stop()
"""


def test_the_secret_properties_reach_executors_and_spark_redacts_them(tmp_path):
    """The properties and the redaction regex that the YARN dry run shows, given to the real
    spark-submit: executors get the values, and the event log names the keys with the values masked
    (Spark's default regex would leave a *_KEY in the clear)."""
    result = submit("--dry-run", "--master", "yarn", "--secret-env", "MY_API_TOKEN", "clean", env=SECRET_ENV)
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.splitlines()[-1])
    regex = next(conf for conf in confs(command) if conf.startswith("spark.redaction.regex="))
    properties = [line.split(": ", 1)[1].split("=", 1)[0] for line in result.stdout.splitlines()
                  if line.startswith("# in the --properties-file (mode 0600): ")]
    names = [key.rsplit(".", 1)[1] for key in properties]
    properties_file = tmp_path / "secrets.properties"
    properties_file.write_text("".join(f"{key}={SECRET_ENV[name]}\n" for key, name in zip(properties, names)))
    properties_file.chmod(0o600)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE_EXECUTOR_ENV)
    events = tmp_path / "events"
    events.mkdir()
    # The secrets are not in spark-submit's own environment: only the properties file carries them.
    env = {name: value for name, value in os.environ.items() if name not in SECRET_ENV}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    run = subprocess.run(
        [os.path.join(sys.prefix, "bin", "spark-submit"), "--master", "local[1]", "--properties-file", str(properties_file),
         "--load-spark-defaults", "--conf", regex, "--conf", "spark.eventLog.enabled=true",
         "--conf", f"spark.eventLog.dir={events.as_uri()}", "--conf", "spark.eventLog.compress=false",
         "--conf", "spark.ui.enabled=false", "--conf", "spark.log.level=WARN", str(probe), *names],
        capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = next(line for line in run.stdout.splitlines() if line.startswith("EXECUTOR_ENV_SHA256")).split()[1:]
    assert seen == [hashlib.sha256(SECRET_ENV[name].encode()).hexdigest() for name in names]
    log = "".join(path.read_text() for path in events.rglob("*") if path.is_file())
    assert all(f'"{key}":"*********(redacted)"' in log for key in properties)
    assert PSEUDONYM_KEY not in log + run.stdout + run.stderr and API_TOKEN not in log + run.stdout + run.stderr


def test_spark_submits_master_wins_over_the_configured_one(tmp_path):
    """A real local spark-submit: conf/local.yaml says local[*], --master says local[1], and the session
    runs on local[1]. `register` on an empty lake starts the session and then says there is nothing."""
    assert load_config("local").spark.master == "local[*]"
    result = submit("--master", "local[1]", "--env", "local", "register", "--set", f"lake={tmp_path / 'lake'}",
                    timeout=300)
    logs = result.stdout + result.stderr
    assert "started SparkSession ecominsight on local[1]" in logs, logs[-3000:]
    assert "spark-submit chose the master; the configured local[*] is not applied" in logs
    assert result.returncode == 2 and "holds no tables to register" in logs


CONNECT_TOKEN = "dapi-connect-token-0a1b2c3d4e"


def test_remote_runs_the_job_with_the_venvs_python_and_keeps_the_token_off_the_command_line():
    url = f"sc://workspace.example.com:443/;token={CONNECT_TOKEN};x-databricks-cluster-id=0123-456789-abc"
    result = submit("--dry-run", "--remote", url, "--conf", "spark.sql.shuffle.partitions=8", "score", "--set", "lake=/x")
    assert result.returncode == 0, result.stderr
    assert CONNECT_TOKEN not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "no spark-submit" in lines[0]
    assert "export SPARK_REMOTE=sc://workspace.example.com:443/\\;token=\\*\\*\\*\\;x-databricks-cluster-id=0123-456789-abc" in lines
    command = shlex.split(lines[-1])
    assert command == [os.path.join(sys.prefix, "bin", "python"), str(REPO / "jobs" / "score.py"), "--env", "cluster",
                       "--set", "lake=/x", "--set", "spark.conf.spark.sql.shuffle.partitions=8"]


@pytest.mark.parametrize("args, env, expected", [
    ([], {"SPARK_REMOTE": "sc://127.0.0.1:15002"}, "python"),                   # SPARK_REMOTE is honoured...
    (["--master", "local[2]"], {"SPARK_REMOTE": "sc://127.0.0.1:15002"}, "spark-submit"),  # ...unless --master is given
    ([], {}, "spark-submit"),
])
def test_spark_remote_chooses_spark_connect_unless_a_master_is_given(args, env, expected):
    result = submit("--dry-run", *args, "clean", env=env)
    assert result.returncode == 0, result.stderr
    assert os.path.basename(shlex.split(result.stdout.splitlines()[-1])[0]) == expected
    # A job under spark-submit must not see SPARK_REMOTE: its session helper would follow it.
    assert ("export SPARK_REMOTE=" in result.stdout) == (expected == "python")


@pytest.mark.parametrize("args, message", [
    (["--remote", "sc://127.0.0.1:15002", "--master", "yarn"], "give --master (spark-submit) or --remote (Spark Connect), not both"),
    (["--remote", "http://127.0.0.1:15002"], "--remote needs a Spark Connect URL, sc://HOST:PORT"),
    (["--remote", "sc://127.0.0.1:15002", "--deploy-mode", "cluster"], "--deploy-mode cluster needs spark-submit"),
])
def test_remote_refuses_what_spark_connect_cannot_do(args, message):
    result = submit("--dry-run", *args, "clean")
    assert result.returncode == 2 and message in result.stderr, result.stderr
