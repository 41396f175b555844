"""Bad input gets a clear error and a nonzero exit, never a bare traceback; submit.sh runs a stage."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from ecominsight.cli import main
from ecominsight.stages import STAGES
from tests.conftest import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecominsight", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["clean", "--set", "fuse.horizon_dayz=3"], "unknown config key 'fuse.horizon_dayz'"),
    (["clean", "--set", "source.preset=nope"], "unknown source preset 'nope'; available presets:"),
    (["train", "--set", "train.transformer.pretrained=/no/such/model"],
     "pretrained model path '/no/such/model' does not exist. Set train.transformer.pretrained to 'minilm'"),
    (["clean", "--env", "staging"], "unknown env 'staging'"),
])
def test_configuration_errors_exit_2_before_spark_starts(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "SparkSession" not in result.stderr  # rejected before any Spark work


def test_missing_input_path_is_named(spark, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    code = main("clean", ["--set", f"lake={tmp_path}", "--set", "source.paths=[/no/such/events.parquet]"])
    assert code == 2
    assert "input path /no/such/events.parquet of source preset 'online_retail_ii_sample' does not exist" in caplog.text


def test_missing_upstream_table_names_the_stage_to_run(spark, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert main("fuse", ["--set", f"lake={tmp_path}"]) == 2
    assert f"lake table clean/events is missing at {tmp_path}/clean/events; run the 'clean' stage first" in caplog.text
    assert main("score", ["--set", f"lake={tmp_path}"]) == 2
    assert "no trained 'transformer' model" in caplog.text


ENV_SECRET, CONF_SECRET = "pseudonym-key-0f9a8b7c6d", "s3-secret-5e4d3c2b1a"


def test_submit_sh_runs_a_stage_through_spark_submit(tmp_path):
    # Secrets as users hold them (environment, a credential in Spark conf) must not reach any log line.
    env = {**os.environ, "ECOMINSIGHT_PSEUDONYM_KEY": ENV_SECRET, "DATABRICKS_TOKEN": "dapi-" + ENV_SECRET}
    result = subprocess.run([str(REPO / "submit.sh"), "clean", "--set", f"lake={tmp_path}", "--set", "run_id=submit-test",
                             "--set", f"spark.conf.spark.hadoop.fs.s3a.secret.key={CONF_SECRET}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stdout + result.stderr
    assert ENV_SECRET not in logs and CONF_SECRET not in logs
    assert '"spark.hadoop.fs.s3a.secret.key": "***"' in logs  # the resolved config is logged, masked
    assert "ecominsight run submit-test finished" in result.stdout
    assert (tmp_path / "clean" / "events").is_dir() and (tmp_path / "reports" / "submit-test" / "clean.json").is_file()
    # spark-submit's PythonRunner merges the driver's stderr into its stdout.
    assert "started SparkSession ecominsight on local[*]" in result.stdout  # submit.sh's default master


def test_submit_sh_rejects_a_missing_stage():
    result = subprocess.run([str(REPO / "submit.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "name a stage" in result.stderr


def test_log_lines_and_logged_config_mask_secrets(caplog):
    from ecominsight.redaction import RedactSecrets, redact_mapping, secret_config_values, secret_values

    assert secret_values({"DATABRICKS_TOKEN": "dapi123456", "HOME": "/root", "API_KEY": "abc"}) == {"dapi123456"}
    config = {"spark": {"conf": {"fs.s3a.secret.key": "very-secret", "spark.app.name": "x"}}, "lake": "lake"}
    assert redact_mapping(config)["spark"]["conf"] == {"fs.s3a.secret.key": "***", "spark.app.name": "x"}
    assert secret_config_values(config) == {"very-secret"}
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "token %s and %s", ("dapi123456", "very-secret"), None)
    RedactSecrets({"dapi123456", "very-secret"}).filter(record)
    assert record.getMessage() == "token *** and ***"


def test_help_lists_every_stage_and_generate_which_is_not_a_stage():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in (*STAGES, "generate"):
        assert f"\n    {command} " in result.stdout, command
    assert "generate" not in STAGES
    generate_help = run_cli("generate", "--help")
    assert generate_help.returncode == 0 and "--fit-from PRESET" in generate_help.stdout


def test_a_stage_entry_point_takes_only_the_stage_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("clean", ["--events", "10"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --events" in capsys.readouterr().err


def test_spark_session_reuses_the_active_session_and_leaves_it_running(spark):
    from ecominsight.session import REQUIRED_SQL_CONF, spark_session

    spark.conf.set("spark.sql.session.timeZone", "Europe/Paris")
    with spark_session("another-name") as session:
        assert session is spark
        assert session.conf.get("spark.sql.session.timeZone") == REQUIRED_SQL_CONF["spark.sql.session.timeZone"]
    assert spark.range(3).count() == 3  # not stopped: the fixture created it, so the fixture stops it


def run_python(*lines: str) -> subprocess.CompletedProcess:
    """The lines as a script in a fresh interpreter: no session, no logging set up before them."""
    result = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_spark_session_stops_the_session_it_created():
    result = run_python("from pyspark.sql import SparkSession",
                        "from ecominsight.session import spark_session",
                        "with spark_session('stop-test', 'local[1]', {'spark.ui.enabled': 'false'}) as spark:",
                        "    assert spark.range(2).count() == 2",
                        "print('active after:', SparkSession.getActiveSession())")
    assert "active after: None" in result.stdout


def test_setup_logging_twice_keeps_one_handler():
    result = run_python("import logging",
                        "from ecominsight.logs import setup_logging",
                        "setup_logging(); setup_logging()",
                        "logging.getLogger('ecominsight.probe').info('hello once')",
                        "print(len(logging.getLogger().handlers))")
    assert result.stdout.strip() == "1"
    assert result.stderr.count("INFO ecominsight.probe: hello once") == 1
