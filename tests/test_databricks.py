"""databricks.yml, checked as far as it can be offline: the job against the typed models of the
Databricks Asset Bundles Python package (unknown fields and wrong types are rejected there), every
`${var.…}` defined, the task graph in stage order, each task's overrides valid config, and every
entry point it names installed and answering `--help`."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from ecominsight.config import load_config

REPO = Path(__file__).resolve().parent.parent
BUNDLE = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
JOB = BUNDLE["resources"]["jobs"]["ecominsight_daily"]
STAGE_ORDER = ["clean", "fuse", "train", "score", "insights", "register"]
TOP_LEVEL_KEYS = {"bundle", "variables", "artifacts", "resources", "targets", "include", "workspace", "permissions",
                  "sync", "run_as", "presets", "experimental", "scripts"}


def variable_references(node) -> set[str]:
    return set(re.findall(r"\$\{var\.(\w+)\}", yaml.safe_dump(node)))


def test_bundle_top_level_and_targets():
    assert set(BUNDLE) <= TOP_LEVEL_KEYS
    assert BUNDLE["bundle"]["name"] == "ecominsight"
    assert {name: target["mode"] for name, target in BUNDLE["targets"].items()} == {"dev": "development",
                                                                                     "prod": "production"}
    defined = set(BUNDLE["variables"])
    assert variable_references(BUNDLE) <= defined
    for target in BUNDLE["targets"].values():
        assert set(target.get("variables", {})) <= defined
    assert BUNDLE["artifacts"]["ecominsight_wheel"]["type"] == "whl"


def test_job_matches_the_bundle_schema():
    from databricks.bundles.jobs import Job

    job = Job.from_dict(JOB)  # raises on an unknown field or a value of the wrong type
    assert job.as_dict()["name"] == "ecominsight-daily"
    with pytest.raises(ValueError, match="Unexpected field"):
        Job.from_dict({**JOB, "shedule": JOB["schedule"]})


def test_tasks_run_the_stages_in_order_and_train_on_gpus():
    tasks = {task["task_key"]: task for task in JOB["tasks"]}
    assert list(tasks) == STAGE_ORDER
    for previous, stage in zip(STAGE_ORDER, STAGE_ORDER[1:]):
        assert tasks[stage]["depends_on"] == [{"task_key": previous}]
    clusters = {cluster["job_cluster_key"]: cluster["new_cluster"] for cluster in JOB["job_clusters"]}
    assert clusters[tasks["train"]["job_cluster_key"]]["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    assert JOB["schedule"]["quartz_cron_expression"] and JOB["email_notifications"]["on_failure"]
    for stage, task in tasks.items():
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "ecominsight" and wheel_task["entry_point"] == f"ecominsight-{stage}"
        assert task["libraries"] == [{"whl": "./dist/*.whl"}]


def _resolved_overrides(parameters: list[str]) -> list[str]:
    """The task's `--set` values with the bundle variables' and job parameters' defaults filled in."""
    defaults = {name: str(spec.get("default", "")) for name, spec in BUNDLE["variables"].items()}
    job_defaults = {p["name"]: p["default"] for p in JOB["parameters"]}
    resolved = []
    for flag, value in zip(parameters, parameters[1:]):
        if flag == "--set":
            value = re.sub(r"\$\{var\.(\w+)\}", lambda m: defaults[m.group(1)], value)
            resolved.append(re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: job_defaults[m.group(1)], value))
    return resolved


@pytest.mark.parametrize("task", JOB["tasks"], ids=lambda task: task["task_key"])
def test_each_task_passes_valid_config(task):
    parameters = task["python_wheel_task"]["parameters"]
    assert parameters[:2] == ["--env", "databricks"]
    config = load_config("databricks", _resolved_overrides(parameters))  # raises ConfigError on a bad key or value
    assert config.lake == "/Volumes/main/ecominsight/lake" and not config.train.transformer.local_mode


def test_every_entry_point_is_installed_and_answers_help():
    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("ecominsight")}
    scripts = Path(sys.executable).parent
    for stage in STAGE_ORDER:
        name = f"ecominsight-{stage}"
        assert name in installed, f"{name} is not installed: re-run .ci/bootstrap .venv dev after changing setup.py"
        result = subprocess.run([str(scripts / name), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"usage: {name}" in result.stdout and "--set" in result.stdout
