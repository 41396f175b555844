"""Experiment tracking and a model registry in MLflow (the `mlflow` extra), off unless
`tracking.mlflow_uri` is set.

train: one MLflow run per trained model (its settings as params; its metrics, the transformer's per
epoch as steps; metrics.json, lineage.json and the run's train.json as artifacts), each registered as
a new version of `<tracking.registered_model_prefix><model>`, and the champion's version given the
alias `tracking.champion_alias` (taken off the other models, so that one carries it, as models/CHAMPION
names one). Runs and versions carry the lake's model name and version as tags
(`ecominsight.model`, `ecominsight.version`): the registry points at the lake, which keeps the only
copy of the weights. A registered version's source is a small `model/` artifact (an MLmodel with the
scoring signature, which Unity Catalog requires, and `lake_model.json`), never the weights.

score: `score.model=models:/<name>@<alias>` (or `models:/<name>/<version>`) reads those tags back and
scores with the lake's model folder.

Only this module imports mlflow, and only when tracking is on; the checks that config.py runs on the
settings need no mlflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import re
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ecominsight.errors import ConfigError, TrackingError

if TYPE_CHECKING:
    from ecominsight.config import TrackingConfig

log = logging.getLogger(__name__)

TAG_MODEL = "ecominsight.model"
TAG_VERSION = "ecominsight.version"
TAG_LAKE = "ecominsight.lake"
TAG_RUN_ID = "ecominsight.run_id"
TAG_CHAMPION = "ecominsight.champion"
TAG_FINGERPRINT = "ecominsight.data_fingerprint"
TAG_CODE_VERSION = "ecominsight.code_version"
MODEL_ARTIFACT = "model"
LAKE_MODEL_FILE = "lake_model.json"
MODELS_SCHEME = "models:/"
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[1-9][0-9]*))")
# MLflow's own alias rule: word characters and '-', but neither `latest` nor `v<digits>` (version names).
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|[vV][0-9]+")
# The config sections whose settings become each model's params; lineage.json keeps the whole config.
COMMON_SECTIONS = ("source", "fuse")
MODEL_SECTIONS = {"lr": ("train", "logistic_regression"), "gbt": ("train", "gradient_boosted_trees"),
                  "transformer": ("train", "transformer")}
# metrics.json keys that are no scalar metric: the transformer's history is logged per epoch, the
# hybrid's stacker as params.
_NOT_METRICS = ("history", "stacker", "component_versions")
# What MLflow accepts in a metric name; anything else (the `=` of a one-hot feature such as
# `coefficients/gender=F`, a level's punctuation) becomes `_`.
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w./\- ]")


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """A lake model as registered: `registered_name` version `version`, logged by the MLflow run `run_id`."""

    model: str
    lake_version: str
    registered_name: str
    version: str
    run_id: str


def mlflow_installed() -> bool:
    """Whether the `mlflow` package (the `mlflow` extra, or a platform's own MLflow) can be imported."""
    return importlib.util.find_spec("mlflow") is not None


def check_uri(value: str, key: str) -> None:
    """A tracking or registry URI: no password inside it, and mlflow installed to use it."""
    try:
        password = urllib.parse.urlsplit(value).password
    except ValueError as err:  # an unclosed [IPv6] bracket
        raise ConfigError(f"{key}: {value!r} is not a URI: {err}") from err
    if password is not None:
        raise ConfigError(f"{key}: the URI carries a password; give the credentials in the environment instead "
                          "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")
    if not mlflow_installed():
        raise ConfigError(f"{key} is set, but mlflow is not installed: pip install 'ecominsight[mlflow]' "
                          f"(or leave {key} unset)")


def check_alias(value: str, key: str) -> None:
    """An alias MLflow accepts: letters, digits, '_' or '-', and not a version name (`latest`, `v3`)."""
    if not _ALIAS.fullmatch(value) or _RESERVED_ALIAS.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not an MLflow alias (letters, digits, '_' or '-'; "
                          "not 'latest' nor v<digits>)")


def is_models_uri(value: str) -> bool:
    """Whether a `score.model` value names a registered model (`models:/...`) rather than a lake model."""
    return value.startswith(MODELS_SCHEME)


def parse_models_uri(value: str, key: str = "score.model") -> tuple[str, str | None, str | None]:
    """(registered name, alias, version number) of `models:/<name>@<alias>` or `models:/<name>/<version>`
    (one of alias and version is None)."""
    match = _MODELS_URI.fullmatch(value)
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not a registered model URI: models:/<name>@<alias> or "
                          "models:/<name>/<version>")
    if match["alias"] is not None:
        check_alias(match["alias"], key)
    return match["name"], match["alias"], match["version"]


def uses_unity_catalog(settings: TrackingConfig) -> bool:
    """Whether models register in Unity Catalog: `databricks-uc` given, or MLflow's default registry for a
    `databricks` tracking URI (MLflow 3 registers there unless told otherwise)."""
    registry = settings.registry_uri or ("databricks-uc" if (settings.mlflow_uri or "").startswith("databricks") else "")
    return registry.startswith("databricks-uc")


def _client(settings: TrackingConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.registry_uri)


@contextlib.contextmanager
def _mlflow_errors(what: str, settings: TrackingConfig) -> Iterator[None]:
    """MLflow's failures (a refusal, or a server out of reach after the client's retries) as TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise TrackingError(f"{what} at {settings.mlflow_uri}: {err.message}") from err


def log_training(settings: TrackingConfig, *, report: Mapping[str, Any], lineages: Mapping[str, Mapping[str, Any]],
                 lake_root: str) -> dict[str, RegisteredVersion]:
    """One MLflow run per trained model, each registered as a new version, and the champion's version
    aliased. Input: the train stage's report (train.json's content: version, each model's metrics,
    model_dirs, champion) and each model's lineage.json. Output: model name -> its registered version."""
    with _mlflow_errors("MLflow tracking", settings):
        client = _client(settings)
        experiment_id = _experiment_id(client, settings.experiment)
        registered = {name: _track_model(client, settings, experiment_id, name, report=report,
                                         lineage=lineages[name], lake_root=lake_root)
                      for name in report["model_dirs"]}
        champion = registered[report["champion"]["model"]]
        # Last: the alias moves only once every version of the run is registered.
        _move_alias(client, settings.champion_alias, champion, [r.registered_name for r in registered.values()])
    log.info("tracking: %s is version %s of %s, alias %r", champion.model, champion.version, champion.registered_name,
             settings.champion_alias)
    return registered


def _move_alias(client, alias: str, champion: RegisteredVersion, registered_names: list[str]) -> None:
    """`alias` on the champion's version, and off every other model of the run: like models/CHAMPION, it
    names one model (MLflow keeps an alias on one version per registered model, not across them)."""
    client.set_registered_model_alias(champion.registered_name, alias, champion.version)
    for name in registered_names:
        if name != champion.registered_name and alias in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, alias)
            log.info("tracking: alias %r removed from %s (no longer the champion)", alias, name)


def registered_lake_model(settings: TrackingConfig, uri: str, *, lake_root: str) -> tuple[str, str]:
    """(lake model name, lake version) of the registered version that `uri` (`models:/<name>@<alias>` or
    `models:/<name>/<version>`) names, read from the tags the train stage gave it."""
    name, alias, number = parse_models_uri(uri)
    with _mlflow_errors(f"score.model={uri}", settings):
        client = _client(settings)
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    model, version = found.tags.get(TAG_MODEL), found.tags.get(TAG_VERSION)
    if not model or not version:
        raise TrackingError(f"score.model={uri} is version {found.version} of {name}, which has no {TAG_MODEL} and "
                            f"{TAG_VERSION} tags: it was not registered by ecominsight's train stage")
    registered_from = found.tags.get(TAG_LAKE)
    if registered_from and registered_from != lake_root:
        log.warning("score: %s was registered from the lake %s; scoring reads %s %s from the lake %s", uri,
                    registered_from, model, version, lake_root)
    log.info("score: %s is version %s of %s: the lake's %s %s", uri, found.version, name, model, version)
    return model, version


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)  # another run created it meanwhile
    if found.lifecycle_stage == "deleted":
        raise TrackingError(f"tracking.experiment {name!r} is deleted in MLflow: restore it or name another")
    return found.experiment_id


def _track_model(client, settings: TrackingConfig, experiment_id: str, name: str, *, report: Mapping[str, Any],
                 lineage: Mapping[str, Any], lake_root: str) -> RegisteredVersion:
    """The model's run (params, metrics, artifacts), then its registered version."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.exceptions import MlflowException

    version, metrics = report["version"], report[name]
    tags = {TAG_MODEL: name, TAG_VERSION: version, TAG_LAKE: lake_root, TAG_RUN_ID: str(lineage["run_id"]),
            TAG_CHAMPION: str(name == report["champion"]["model"]).lower()}
    run = client.create_run(experiment_id, run_name=f"{name} {version}",
                            tags={**tags, TAG_FINGERPRINT: str(lineage["data_fingerprint"]),
                                  TAG_CODE_VERSION: str(lineage["code_version"])})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        logged = [Metric(key, value, now, step) for key, value, step in model_metrics(metrics)]
        params = [Param(key, value) for key, value in model_params(name, lineage, metrics).items()]
        client.log_batch(run_id, metrics=logged, params=params)  # the client splits it into requests MLflow accepts
        client.log_dict(run_id, dict(metrics), "metrics.json")
        client.log_dict(run_id, dict(lineage), "lineage.json")
        client.log_dict(run_id, dict(report), "train.json")
        with tempfile.TemporaryDirectory(prefix="ecominsight-mlflow-") as folder:
            _write_model_reference(Path(folder), run_id=run_id, name=name, version=version, lake_root=lake_root,
                                   model_dir=str(report["model_dirs"][name]))
            client.log_artifacts(run_id, folder, MODEL_ARTIFACT)
    except BaseException:
        with contextlib.suppress(MlflowException):  # the server may be what failed; the first error is the one to show
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    registered_name = settings.registered_model_prefix + name
    _ensure_registered_model(client, registered_name, name)
    model_version = client.create_model_version(
        registered_name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags,
        description=f"ecominsight {name} {version}: the weights are the lake's {report['model_dirs'][name]}")
    log.info("tracking: %s %s -> run %s, version %s of %s", name, version, run_id, model_version.version, registered_name)
    return RegisteredVersion(model=name, lake_version=version, registered_name=registered_name,
                             version=str(model_version.version), run_id=run_id)


def _ensure_registered_model(client, registered_name: str, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(registered_name, description=f"ecominsight's {model} model; each version "
                                                                    "names a model folder of the lake")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _write_model_reference(folder: Path, *, run_id: str, name: str, version: str, lake_root: str, model_dir: str) -> None:
    """`folder` <- MLmodel (the scoring signature, no flavour: the model loads through ecominsight, from
    the lake) and lake_model.json (where the weights are)."""
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    from ecominsight.schema import NUMERIC_FEATURES

    reference = {"lake": lake_root, "model": name, "version": version, "model_dir": model_dir}
    signature = ModelSignature(inputs=Schema([ColSpec("string", "text"), *(ColSpec("double", f) for f in NUMERIC_FEATURES)]),
                               outputs=Schema([ColSpec("double", "probability")]))
    Model(artifact_path=MODEL_ARTIFACT, run_id=run_id, signature=signature,
          metadata={"ecominsight": reference}).save(str(folder / "MLmodel"))
    (folder / LAKE_MODEL_FILE).write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")


def model_params(name: str, lineage: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, str]:
    """The settings that made a model, flattened to dotted keys: the source and fuse sections, the model's
    own train section (the hybrid: its stacker and component versions), and train.champion. Input:
    lineage.json (its config is already redacted) and metrics.json."""
    config = lineage["config"]
    params: dict[str, Any] = {}
    for section in COMMON_SECTIONS:
        params.update(_flatten(config[section], section))
    if name in MODEL_SECTIONS:
        group, section = MODEL_SECTIONS[name]
        params.update(_flatten(config[group][section], f"{group}.{section}"))
    for key in ("stacker", "component_versions"):
        if key in metrics:
            params.update(_flatten(metrics[key], key))
    params["train.champion"] = config["train"]["champion"]
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in params.items()}


def model_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step) for every finite number in metrics.json, nested keys joined by '/'
    (`valid/roc_auc`, `test/roc_auc_ci_low`: MLflow's UI groups by the prefix), at step 0; and the
    transformer's history as `epoch/<key>` at step = epoch."""
    scalars = {key: value for key, value in metrics.items() if key not in _NOT_METRICS}
    found = [(_NOT_IN_METRIC_NAMES.sub("_", key), value, 0) for key, value in _numbers(scalars, "")]
    for entry in metrics.get("history", []):
        found += [(f"epoch/{key}", float(value), int(entry["epoch"])) for key, value in entry.items()
                  if key != "epoch" and _is_number(value)]
    return found


def _numbers(values: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if _is_number(value):
            yield name, float(value)
        elif isinstance(value, Mapping):
            yield from _numbers(value, f"{name}/")
        elif key.endswith("_ci") and isinstance(value, list) and len(value) == 2 and all(map(_is_number, value)):
            yield f"{name}_low", float(value[0])
            yield f"{name}_high", float(value[1])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flatten(values: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}.{key}"))
    return flat
