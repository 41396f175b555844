"""MLflow tracking against a real `mlflow server` on loopback (SQLite backend store, a local artifact
store it serves): the train stage logs one run per model and registers each as a version tagged with
the lake's model and version, the champion's under the alias; score with
`score.model=models:/<name>@champion` writes the probabilities that the lake's own pointer gives.

Skips, saying what is missing, where mlflow or what its server needs (requirements-dev.txt) is not
installed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import windowed_preset
from tests.s3_server import _free_port

# The client (the mlflow extra), and what the server needs beyond it: SQLAlchemy and alembic for its
# SQLite store, Flask for its REST handlers.
SERVER_MODULES = ("mlflow", "sqlalchemy", "alembic", "flask")
MISSING = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (the mlflow extra and "
                                                      "requirements-dev.txt bring them)")

START_TIMEOUT_S = 120
PREFIX = "shop_"
EXPERIMENT = "ecominsight-test"
RUN_ID = "tracked"
# No usage reports from the client or the server of a test.
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (SQLite store and artifacts in a tmp folder) in a process group of
    its own, stopped with its workers at the end; its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    # The job executor (GenAI jobs) stays off: no huey consumer processes, nothing in /dev/shm.
    env = {**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    log_path = root / "server.log"
    with open(log_path, "wb") as server_log:
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not answer {uri}/health:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in QUIET.items():
                patch.setenv(name, value)
            yield uri
    finally:
        _stop_group(server)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and its uvicorn workers), SIGKILL if it lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass


def _overrides(lake_root: Path, tiny_encoder: str, uri: str) -> list[str]:
    return [f"lake={lake_root}", f"train.transformer.pretrained={tiny_encoder}", "train.transformer.epochs=2",
            "train.transformer.num_processes=1", "train.transformer.max_length=64", "fuse.max_events=16",
            "insights.explain.max_users=0", f"tracking.mlflow_uri={uri}", f"tracking.experiment={EXPERIMENT}",
            f"tracking.registered_model_prefix={PREFIX}"]


@pytest.fixture(scope="module")
def tracked(spark, tiny_encoder, mlflow_server, tmp_path_factory):
    """clean, fuse and train (two epochs of the tiny encoder) with tracking on: (config, lake, train result)."""
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.stages import run_stage

    lake_root = tmp_path_factory.mktemp("tracked-lake")
    # The sample's last months: what is tracked does not depend on how much history there is.
    preset = windowed_preset(tmp_path_factory.mktemp("tracked-preset"))
    config = load_config("local", [*_overrides(lake_root, tiny_encoder, mlflow_server), f"source.preset={preset}"])
    lake = Lake(config.lake_path)
    for stage in ("clean", "fuse"):
        run_stage(stage, spark, config, lake, RUN_ID)
    return config, lake, run_stage("train", spark, config, lake, RUN_ID)["train"]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_json(uri: str, run_id: str, path: str):
    from mlflow.artifacts import download_artifacts

    return json.loads(Path(download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)).read_text())


def test_train_logs_one_run_per_model_with_params_metrics_and_artifacts(tracked, mlflow_server):
    from ecominsight.io import read_json
    from ecominsight.tracking import TAG_CHAMPION, TAG_LAKE, TAG_MODEL, TAG_RUN_ID, TAG_VERSION

    config, lake, train = tracked
    client = _client(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {run.data.tags[TAG_MODEL]: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(train.metrics) == ["gbt", "hybrid", "lr", "transformer"]
    assert len(client.search_runs([experiment.experiment_id])) == 4  # one run per model, no other
    for name, run in runs.items():
        run_id = run.info.run_id
        assert run.info.status == "FINISHED" and run.info.run_name == f"{name} {train.version}"
        assert {key: run.data.tags[key] for key in (TAG_VERSION, TAG_RUN_ID, TAG_LAKE, TAG_CHAMPION)} == {
            TAG_VERSION: train.version, TAG_RUN_ID: RUN_ID, TAG_LAKE: str(lake.root),
            TAG_CHAMPION: str(name == train.champion["model"]).lower()}
        for split in ("valid", "test"):
            assert run.data.metrics[f"{split}/roc_auc"] == pytest.approx(train.metrics[name][split]["roc_auc"])
            assert run.data.metrics[f"{split}/f1"] == pytest.approx(train.metrics[name][split]["f1"])
            low, high = train.metrics[name][split]["roc_auc_ci"]
            assert (run.data.metrics[f"{split}/roc_auc_ci_low"], run.data.metrics[f"{split}/roc_auc_ci_high"]) == \
                pytest.approx((low, high))
        assert run.data.params["fuse.horizon"] == config.fuse.horizon and run.data.params["train.champion"] == "auto"
        assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.json", "lineage.json", "train.json", "model"}
        model_dir = lake.model_dir(name, train.version)
        assert _artifact_json(mlflow_server, run_id, "metrics.json") == read_json(model_dir / "metrics.json")
        assert _artifact_json(mlflow_server, run_id, "lineage.json") == read_json(model_dir / "lineage.json")
        assert _artifact_json(mlflow_server, run_id, "train.json") == read_json(lake.report_dir(RUN_ID) / "train.json")
        # The registered source holds no weights: the MLmodel (scoring signature) and where the lake keeps them.
        assert {Path(a.path).name for a in client.list_artifacts(run_id, "model")} == {"MLmodel", "lake_model.json"}
        assert _artifact_json(mlflow_server, run_id, "model/lake_model.json") == {
            "lake": str(lake.root), "model": name, "version": train.version, "model_dir": str(model_dir)}

    assert runs["lr"].data.params["train.logistic_regression.reg_param"] == "0.01"
    assert runs["gbt"].data.params["train.gradient_boosted_trees.max_depth"] == "3"
    assert runs["transformer"].data.params["train.transformer.epochs"] == "2"
    assert json.loads(runs["hybrid"].data.params["stacker.components"]) == train.metrics["hybrid"]["stacker"]["components"]
    assert runs["hybrid"].data.params[f"component_versions.lr"] == train.version
    assert runs["lr"].data.metrics["coefficients/intercept"] == pytest.approx(
        train.metrics["lr"]["coefficients"]["intercept"])
    # The transformer's history, one step per epoch.
    history = train.metrics["transformer"]["history"]
    for key in ("train_loss", "valid_selection_score", "seconds"):
        steps = client.get_metric_history(runs["transformer"].info.run_id, f"epoch/{key}")
        assert [(m.step, m.value) for m in sorted(steps, key=lambda m: m.step)] == \
            [(entry["epoch"], pytest.approx(entry[key])) for entry in history]
    assert [entry["epoch"] for entry in history] == [1, 2]


def test_each_model_is_a_registered_version_mapped_to_the_lake_and_the_champion_has_the_alias(tracked, mlflow_server):
    from mlflow.models import Model

    from ecominsight.models import registry
    from ecominsight.tracking import TAG_MODEL, TAG_VERSION

    config, lake, train = tracked
    client = _client(mlflow_server)
    runs = {run.data.tags[TAG_MODEL]: run.info.run_id
            for run in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])}
    for name in train.metrics:
        (version,) = client.search_model_versions(f"name='{PREFIX}{name}'")
        assert version.version == "1" and version.run_id == runs[name]
        assert (version.tags[TAG_MODEL], version.tags[TAG_VERSION]) == (name, train.version)
        assert version.source == f"runs:/{runs[name]}/model"
    champion = train.champion["model"]
    aliased = client.get_model_version_by_alias(f"{PREFIX}{champion}", "champion")
    assert (aliased.tags[TAG_MODEL], aliased.tags[TAG_VERSION]) == registry.resolve_champion(lake) == \
        (champion, train.version)
    assert sum(bool(client.get_registered_model(f"{PREFIX}{name}").aliases) for name in train.metrics) == 1
    from mlflow.artifacts import download_artifacts

    reference = Model.load(download_artifacts(run_id=runs[champion], artifact_path="model/MLmodel",
                                              tracking_uri=mlflow_server))
    assert reference.signature.outputs.input_names() == ["probability"]
    assert reference.signature.inputs.input_names()[0] == "text"


def _probabilities(spark, lake, day: str) -> dict[str, float]:
    from pyspark.sql import functions as F

    from ecominsight.catalog import USER_SCORES

    rows = lake.read(spark, USER_SCORES).filter(F.col("score_date") == F.lit(day)).select("user_id", "probability").collect()
    return {row["user_id"]: row["probability"] for row in rows}


def test_score_through_the_registry_alias_writes_what_the_lake_pointer_gives(tracked, spark, tiny_encoder, mlflow_server):
    from ecominsight.config import ScoreConfig, load_config
    from ecominsight.errors import TrackingError
    from ecominsight.stages import run_stage
    from ecominsight.stages.score import scoring_model

    config, lake, train = tracked
    by_pointer = run_stage("score", spark, config, lake, "score-pointer")["score"]
    expected = _probabilities(spark, lake, by_pointer.score_date)
    champion = train.champion["model"]
    aliased_config = load_config("local", [*_overrides(lake.root, tiny_encoder, mlflow_server),
                                           f"source.preset={config.source.preset}",
                                           f"score.model=models:/{PREFIX}{champion}@champion"])
    by_alias = run_stage("score", spark, aliased_config, lake, "score-alias")["score"]
    assert (by_alias.model_name, by_alias.model_version) == (by_pointer.model_name, by_pointer.model_version) == \
        (champion, train.version)
    got = _probabilities(spark, lake, by_alias.score_date)
    assert len(got) == by_pointer.users_scored > 0
    assert got == pytest.approx(expected, abs=1e-6)

    # A version number names a lake model as well; a version registered by other means is refused.
    assert scoring_model(lake, ScoreConfig(model=f"models:/{PREFIX}transformer/1"), config.tracking) == \
        ("transformer", train.version)
    client = _client(mlflow_server)
    client.create_registered_model("not_ours")
    source = client.get_model_version(f"{PREFIX}lr", "1")
    client.create_model_version("not_ours", source.source, run_id=source.run_id)
    with pytest.raises(TrackingError, match="not registered by ecominsight's train stage"):
        scoring_model(lake, ScoreConfig(model="models:/not_ours/1"), config.tracking)
    with pytest.raises(TrackingError, match="score.model=models:/not_ours@champion"):
        scoring_model(lake, ScoreConfig(model="models:/not_ours@champion"), config.tracking)


def test_a_train_whose_tracking_fails_publishes_nothing(tracked, spark, tiny_encoder, mlflow_server):
    from ecominsight.config import load_config
    from ecominsight.errors import TrackingError
    from ecominsight.io import LATEST
    from ecominsight.models import registry
    from ecominsight.stages import run_stage

    config, lake, train = tracked
    client = _client(mlflow_server)
    client.delete_experiment(client.create_experiment("deleted"))
    broken = load_config("local", [*_overrides(lake.root, tiny_encoder, mlflow_server), f"source.preset={config.source.preset}",
                                    "tracking.experiment=deleted"])
    # The transformer resumes from its checkpoints: this retrains the baselines only.
    with pytest.raises(TrackingError, match="tracking.experiment 'deleted' is deleted in MLflow"):
        run_stage("train", spark, broken, lake, "untracked")
    assert registry.resolve_champion(lake) == (train.champion["model"], train.version)
    for name in train.metrics:
        assert lake.model_pointer(name, LATEST).read_text().strip() == train.version
        assert len(client.search_model_versions(f"name='{PREFIX}{name}'")) == 1
    assert not (lake.report_dir("untracked") / "train.json").exists()


def test_a_new_champion_takes_the_alias_off_the_previous_one(tracked, mlflow_server):
    from ecominsight.io import read_json
    from ecominsight.tracking import TAG_MODEL, log_training

    config, lake, train = tracked
    report = read_json(lake.report_dir(RUN_ID) / "train.json")
    previous = train.champion["model"]
    successor = "lr" if previous != "lr" else "gbt"
    # The same models logged again (each gets version 2), this time with another champion.
    registered = log_training(config.tracking, report={**report, "champion": {**report["champion"], "model": successor}},
                              lineages={name: read_json(lake.model_dir(name, train.version) / "lineage.json")
                                        for name in train.metrics}, lake_root=str(lake.root))
    assert {name: r.version for name, r in registered.items()} == {name: "2" for name in train.metrics}
    client = _client(mlflow_server)
    holders = {name: client.get_registered_model(f"{PREFIX}{name}").aliases for name in train.metrics}
    assert holders == {name: {"champion": "2"} if name == successor else {} for name in train.metrics}
    assert client.get_model_version_by_alias(f"{PREFIX}{successor}", "champion").tags[TAG_MODEL] == successor
