"""The asset bundle (databricks.yml + resources/*.yml), checked as far as it can be offline.

The test resolves what the Databricks CLI would for each target (the included resource files, the
variables: defaults, then the target's values, then what the deployer gives with --var), then checks
every job against the typed models of the `databricks-bundles` package (unknown fields and wrong
types are rejected there), the production-mode rules the CLI enforces and this project's own (a
service principal runs prod, no variable prod needs is left empty, a failure address, a GPU for the
train task only, one run at a time, a timeout and retries on every task, the pseudonym key from a
secret scope and no literal secret), and each task's parameters through the CLI's own parser and
config validation, and every entry point it names installed and answering `--help`.
"""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecominsight.cli import _parser
from ecominsight.config import load_config
from ecominsight.redaction import SECRET_NAME
from ecominsight.stages.register import check_table_location, is_volume_uri

REPO = Path(__file__).resolve().parent.parent
STAGE_ORDER = ["clean", "fuse", "train", "score", "insights", "register"]
CLASSIC, SERVERLESS = "ecominsight_daily", "ecominsight_daily_serverless"
# What a deployer passes for prod (`--var` or BUNDLE_VAR_*): the variables without a value there.
PROD_GIVEN = {"catalog": "main", "lake": "s3://acme-lake/ecominsight",
              "serverless_lake": "/Volumes/main/ecominsight/lake/ecominsight", "failure_email": "oncall@example.com",
              "service_principal": "6a2b1f0e-2c4d-4b7e-9f1a-3d5c7e9b1a20"}
# dev gives every variable but the lake: a bucket of the deployer's own.
DEV_GIVEN = {"lake": "s3://acme-lake-dev/ecominsight"}
GIVEN = {"dev": DEV_GIVEN, "prod": PROD_GIVEN}
CURRENT_USER = "someone@example.com"
VARIABLE = re.compile(r"\$\{var\.(\w+)\}")
SECRET_REFERENCE = re.compile(r"\{\{secrets/([^/{}]+)/([^/{}]+)\}\}")


def load_bundle() -> dict[str, Any]:
    """databricks.yml with the files its `include` globs name merged in, as the CLI merges them: each
    file adds resources; a resource defined twice is an error."""
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    bundle["resources"] = {}
    for pattern in bundle.get("include", []):
        for path in sorted(REPO.glob(pattern)):
            part = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert set(part) == {"resources"}, f"{path.name} holds more than resources: {set(part)}"
            for kind, items in part["resources"].items():
                known = bundle["resources"].setdefault(kind, {})
                assert not set(items) & set(known), f"{path.name} redefines {set(items) & set(known)}"
                known.update(items)
    return bundle


BUNDLE = load_bundle()
RAW_JOBS = BUNDLE["resources"]["jobs"]


def variable_values(target: str, given: dict[str, str] | None = None) -> dict[str, Any]:
    """Each variable's value in `target`: its default, the target's value, then what the deployer gives."""
    values = {name: spec["default"] for name, spec in BUNDLE["variables"].items() if "default" in spec}
    values.update(BUNDLE["targets"][target].get("variables") or {})
    values.update(given or {})
    return values


def substitute(node: Any, target: str, values: dict[str, Any]) -> Any:
    """`node` with `${var.*}`, `${bundle.*}` and the current user filled in. A string that is one whole
    reference takes the value with its type (`num_workers: ${var.gpu_workers}` stays a number)."""
    if isinstance(node, dict):
        return {key: substitute(value, target, values) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(item, target, values) for item in node]
    if not isinstance(node, str):
        return node
    whole = VARIABLE.fullmatch(node)
    if whole and whole.group(1) in values:
        return substitute(values[whole.group(1)], target, values)
    text = VARIABLE.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), node)
    return (text.replace("${bundle.name}", BUNDLE["bundle"]["name"]).replace("${bundle.target}", target)
            .replace("${workspace.current_user.userName}", CURRENT_USER))


def resolved(target: str, given: dict[str, str] | None = None) -> dict[str, Any]:
    """The target's run identity, permissions, workspace and jobs with every reference filled in."""
    values = variable_values(target, given)
    settings = BUNDLE["targets"][target]
    return substitute({"jobs": copy.deepcopy(RAW_JOBS), "run_as": settings.get("run_as"),
                       "permissions": settings.get("permissions"), "workspace": settings.get("workspace") or {}},
                      target, values)


def setup_extras() -> dict[str, list[str]]:
    """setup.py's EXTRAS_REQUIRE literal (the wheel's extras), read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["EXTRAS_REQUIRE"]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no EXTRAS_REQUIRE = {...}")


def tasks_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["task_key"]: task for task in job["tasks"]}


def test_bundle_is_split_as_the_template_does():
    raw = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    assert set(raw) == {"bundle", "include", "artifacts", "variables", "targets"}
    assert raw["include"] == ["resources/*.yml"] and raw["bundle"]["name"] == "ecominsight"
    assert sorted(p.name for p in (REPO / "resources").glob("*.yml")) == ["ecominsight_job.yml",
                                                                          "ecominsight_serverless_job.yml"]
    assert set(RAW_JOBS) == {CLASSIC, SERVERLESS}
    assert {name: target["mode"] for name, target in raw["targets"].items()} == {"dev": "development",
                                                                                "prod": "production"}
    assert raw["targets"]["dev"]["default"] is True


def test_every_variable_is_declared():
    declared = set(BUNDLE["variables"])
    assert set(VARIABLE.findall(yaml.safe_dump(BUNDLE))) <= declared
    for target in BUNDLE["targets"].values():
        assert set(target.get("variables") or {}) <= declared


def test_the_wheel_the_tasks_install_is_the_one_the_artifact_builds():
    artifact = BUNDLE["artifacts"]["ecominsight_wheel"]
    assert artifact["type"] == "whl" and artifact["path"] == "."
    wheel_dir = re.search(r"--wheel-dir (\S+)", artifact["build"]).group(1)
    # Paths in an included file are relative to that file: resources/../dist is the artifact's dist.
    for job in RAW_JOBS.values():
        paths = [lib["whl"] for task in job["tasks"] for lib in task.get("libraries", []) if "whl" in lib]
        paths += [dep for env in job.get("environments", []) for dep in env["spec"]["dependencies"] if dep.endswith(".whl")]
        assert paths and {(REPO / "resources" / p).parent.resolve() for p in paths} == {(REPO / wheel_dir).resolve()}


@pytest.mark.parametrize("target", ["dev", "prod"])
@pytest.mark.parametrize("job_name", [CLASSIC, SERVERLESS])
def test_job_matches_the_bundle_schema(target, job_name):
    from databricks.bundles.jobs import Job

    job = resolved(target, GIVEN[target])["jobs"][job_name]
    assert not VARIABLE.search(yaml.safe_dump(job)), "a variable is left without a value"
    typed = Job.from_dict(job)  # raises on an unknown field or a value of the wrong type
    assert typed.as_dict()["max_concurrent_runs"] == 1


def test_the_schema_check_rejects_an_unknown_field():
    from databricks.bundles.jobs import Job

    job = resolved("dev", DEV_GIVEN)["jobs"][CLASSIC]
    with pytest.raises(ValueError, match="Unexpected field"):
        Job.from_dict({**job, "shedule": job["schedule"]})


def test_prod_satisfies_production_mode():
    prod = BUNDLE["targets"]["prod"]
    assert prod["mode"] == "production"
    settings = resolved("prod", PROD_GIVEN)
    # The CLI refuses production mode without an explicit root_path in the target itself.
    root = settings["workspace"]["root_path"]
    assert root.startswith("/Workspace/") and not root.startswith(("/Workspace/Users/", "~"))
    assert "${" not in root
    # A service principal runs the jobs and manages them, not the person who deployed.
    assert settings["run_as"] == {"service_principal_name": PROD_GIVEN["service_principal"]}
    assert {"service_principal_name": PROD_GIVEN["service_principal"], "level": "CAN_MANAGE"} in settings["permissions"]
    assert "run_as" not in BUNDLE["targets"]["dev"]


def test_dev_needs_only_the_lake():
    assert set(BUNDLE["variables"]) - set(variable_values("dev")) == set(DEV_GIVEN)


def test_prod_leaves_no_variable_it_needs_empty():
    # Without the deployer's values, exactly these have none, so the CLI refuses to deploy prod.
    values = variable_values("prod")
    assert set(BUNDLE["variables"]) - set(values) == set(PROD_GIVEN)
    for name in PROD_GIVEN:
        assert "default" not in BUNDLE["variables"][name], f"{name} must not have a default"
    # With them, every variable prod uses has a non-empty value.
    used = set(VARIABLE.findall(yaml.safe_dump([RAW_JOBS, BUNDLE["targets"]["prod"]])))
    given = variable_values("prod", PROD_GIVEN)
    assert {name for name in used if given[name] in ("", None)} == set()


@pytest.mark.parametrize("job_name", [CLASSIC, SERVERLESS])
def test_failures_are_mailed(job_name):
    for target, expected in (("dev", CURRENT_USER), ("prod", PROD_GIVEN["failure_email"])):
        job = resolved(target, GIVEN[target])["jobs"][job_name]
        assert job["email_notifications"]["on_failure"] == [expected]


def test_at_most_one_job_runs_on_schedule():
    for target in BUNDLE["targets"]:
        jobs = resolved(target, GIVEN[target])["jobs"].values()
        assert [job["schedule"]["pause_status"] for job in jobs].count("UNPAUSED") <= 1
        assert all(job["max_concurrent_runs"] == 1 and job["queue"] == {"enabled": True} for job in jobs)


@pytest.mark.parametrize("job_name", [CLASSIC, SERVERLESS])
def test_every_task_has_a_timeout_and_retries(job_name):
    job = RAW_JOBS[job_name]
    for task in job["tasks"]:
        assert task["timeout_seconds"] > 0 and task["max_retries"] >= 1, task["task_key"]
        assert task["min_retry_interval_millis"] >= 60_000 and isinstance(task["retry_on_timeout"], bool)
    # The job's own limit never cuts a task short of its own and still ends within a day.
    assert sum(task["timeout_seconds"] for task in job["tasks"]) <= job["timeout_seconds"] <= 86_400


def test_classic_job_gives_a_gpu_to_the_train_task_only():
    job = resolved("prod", PROD_GIVEN)["jobs"][CLASSIC]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}

    def has_gpu(cluster: dict[str, Any]) -> bool:
        return ("gpu" in cluster["spark_version"] or cluster["node_type_id"] == variable_values("prod")["gpu_node_type"]
                or any("resource.gpu" in key for key in cluster.get("spark_conf", {})))

    on_gpu = {key for key, task in tasks_of(job).items() if has_gpu(clusters[task["job_cluster_key"]])}
    assert on_gpu == {"train"}
    train_cluster = clusters[tasks_of(job)["train"]["job_cluster_key"]]
    assert train_cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    # Every cluster runs Databricks Runtime ML: score and train use its torch and transformers.
    assert all("-ml-" in cluster["spark_version"] for cluster in clusters.values())


def test_serverless_job_has_environments_and_no_clusters():
    job = resolved("prod", PROD_GIVEN)["jobs"][SERVERLESS]
    assert "job_clusters" not in job
    environments = {env["environment_key"]: env["spec"] for env in job["environments"]}
    for task in job["tasks"]:
        assert not {"job_cluster_key", "new_cluster", "existing_cluster_id", "compute"} & set(task), task["task_key"]
        assert task["environment_key"] in environments
    extras = setup_extras()
    assert environments["core"]["dependencies"] == ["../dist/*.whl"]
    assert environments["model"]["dependencies"] == ["../dist/*.whl", *extras["torch"], *extras["minilm"]]
    assert {key for key, task in tasks_of(job).items() if task["environment_key"] == "model"} == {"train", "score"}
    assert all(spec["environment_version"] for spec in environments.values())


def test_classic_model_tasks_add_the_extras_but_keep_the_runtime_torch():
    extras = setup_extras()
    model = [r for r in extras["torch"] if not r.startswith("torch")]
    expected = {"train": model + extras["minilm"], "score": model}
    for stage, task in tasks_of(RAW_JOBS[CLASSIC]).items():
        assert [lib["pypi"]["package"] for lib in task["libraries"] if "pypi" in lib] == expected.get(stage, [])
        assert {"whl": "../dist/*.whl"} in task["libraries"]


def _secret_named_settings(node: Any) -> list[tuple[str, Any]]:
    """(name, value) of every secret-named entry of an environment-variable or Spark-conf mapping."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("spark_env_vars", "spark_conf"):
                found += [(name, setting) for name, setting in value.items() if SECRET_NAME.search(name)]
            else:
                found += _secret_named_settings(value)
    elif isinstance(node, list):
        for item in node:
            found += _secret_named_settings(item)
    return found


def test_pseudonym_key_comes_from_the_secret_scope_and_no_secret_is_literal():
    job = resolved("prod", PROD_GIVEN)["jobs"][CLASSIC]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    values = variable_values("prod")
    reference = f"{{{{secrets/{values['secret_scope']}/{values['pseudonym_key_secret']}}}}}"
    for stage in ("score", "insights"):  # the stages that pseudonymise
        env = clusters[tasks_of(job)[stage]["job_cluster_key"]]["spark_env_vars"]
        assert env["ECOMINSIGHT_PSEUDONYM_KEY"] == reference
    for target in BUNDLE["targets"]:
        settings = _secret_named_settings(resolved(target, GIVEN[target])["jobs"])
        assert settings, "the check must see the pseudonym key"
        assert all(isinstance(value, str) and SECRET_REFERENCE.fullmatch(value) for _, value in settings), settings
        overrides = [value.split("=", 1)[0] for job in RAW_JOBS.values() for task in job["tasks"]
                     for flag, value in zip(task["python_wheel_task"]["parameters"],
                                            task["python_wheel_task"]["parameters"][1:]) if flag == "--set"]
        assert not [key for key in overrides if SECRET_NAME.search(key)]


@pytest.mark.parametrize("job_name", [CLASSIC, SERVERLESS])
def test_tasks_run_the_stages_in_order(job_name):
    tasks = tasks_of(RAW_JOBS[job_name])
    assert list(tasks) == STAGE_ORDER
    for previous, stage in zip(STAGE_ORDER, STAGE_ORDER[1:]):
        assert tasks[stage]["depends_on"] == [{"task_key": previous}]
    for stage, task in tasks.items():
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "ecominsight" and wheel_task["entry_point"] == f"ecominsight-{stage}"


def _with_job_parameters(job: dict[str, Any], parameters: list[str]) -> list[str]:
    """The task's parameters with `{{job.parameters.*}}` replaced by the job parameters' defaults."""
    defaults = {p["name"]: p["default"] for p in job["parameters"]}
    return [re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: defaults[m.group(1)], p) for p in parameters]


@pytest.mark.parametrize("job_name,stage", [(job, stage) for job in (CLASSIC, SERVERLESS) for stage in STAGE_ORDER])
def test_each_task_passes_valid_config(job_name, stage):
    job = resolved("prod", PROD_GIVEN)["jobs"][job_name]
    parameters = _with_job_parameters(job, tasks_of(job)[stage]["python_wheel_task"]["parameters"])
    args = _parser(stage).parse_args(parameters)  # what ecominsight-<stage> does with its argv
    assert args.env == "databricks"
    config = load_config(args.env, args.overrides)  # raises ConfigError on a bad key or value
    # Serverless Python has no credentials for an external location: its lake is a volume, the classic one not.
    assert config.lake == PROD_GIVEN["serverless_lake" if job_name == SERVERLESS else "lake"]
    assert is_volume_uri(config.lake_path) == (job_name == SERVERLESS)
    if stage == "register":
        # The job's last task: the tables follow every run's new versions, in the bundle's catalog and schema,
        # as external tables over the lake or, over a volume lake (which may hold no table), managed copies.
        assert tasks_of(job)["register"]["depends_on"] == [{"task_key": "insights"}]
        assert (config.warehouse.catalog, config.warehouse.schema) == (PROD_GIVEN["catalog"], variable_values("prod")["schema"])
        assert config.warehouse.tables == ("managed" if job_name == SERVERLESS else "external")
        check_table_location(config.lake_path, config.warehouse.catalog, config.warehouse.tables)
    if stage == "train":
        transformer = config.train.transformer
        assert (transformer.use_gpu, transformer.local_mode) == ((True, False) if job_name == CLASSIC else (False, True))


def test_every_entry_point_is_installed_and_answers_help():
    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("ecominsight")}
    scripts = Path(sys.executable).parent
    for stage in STAGE_ORDER:
        name = f"ecominsight-{stage}"
        assert name in installed, f"{name} is not installed: re-run .ci/bootstrap .venv dev after changing setup.py"
        result = subprocess.run([str(scripts / name), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"usage: {name}" in result.stdout and "--set" in result.stdout
