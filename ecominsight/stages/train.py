"""train: features/user_sequences -> models/{lr,gbt,transformer,hybrid}/<version>/ (+ LATEST pointers) and
models/CHAMPION (the model with the best validation ROC-AUC, or the one `train.champion` forces); with
tracking.mlflow_uri set, an MLflow run and registered version per model (ecominsight.tracking)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import redaction
from ecominsight.catalog import USER_SEQUENCES
from ecominsight.config import Config, TrainConfig, TransformerConfig, config_to_dict
from ecominsight.errors import LakeError
from ecominsight.io import Lake, read_json, write_json
from ecominsight.models import transformer
from ecominsight.models.transformer import CJK_RANGES, transformer_spec  # noqa: F401  (tests import it here)
from ecominsight.session import conf_value, default_parallelism
from ecominsight.stages.base import StageResult

if TYPE_CHECKING:
    from ecominsight.models.baseline import FeatureSpec

log = logging.getLogger(__name__)

LR_MODEL, GBT_MODEL, TRANSFORMER_MODEL = "lr", "gbt", "transformer"
# The single baselines the champion is measured against (on test, after the choice).
BASELINES = (LR_MODEL, GBT_MODEL)
STACKER_SEED = 0


@dataclasses.dataclass(frozen=True)
class TrainResult(StageResult):
    version: str
    metrics: dict[str, dict[str, Any]]  # model name -> its metrics.json
    model_dirs: dict[str, str]
    # the chosen model, why, the validation ranking, and its test comparison with the best baseline
    champion: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The train.json shape: each model's metrics under its name, beside the version, dirs and champion."""
        return {"version": self.version, **self.metrics, "model_dirs": self.model_dirs, "champion": self.champion}

    def describe(self, lake: Lake) -> list[str]:
        lines = [f"  metrics: {path}/metrics.json  ({name}: valid ROC-AUC {self.metrics[name]['valid']['roc_auc']}, "
                 f"test ROC-AUC {self.metrics[name]['test']['roc_auc']}, F1 {self.metrics[name]['test']['f1']})"
                 for name, path in self.model_dirs.items()]
        return [*lines, f"  champion: {self.champion['model']} ({self.champion['reason']})"]


def baseline_pipelines(settings: TrainConfig, features: "FeatureSpec | None" = None) -> dict[str, Any]:
    """The unfitted MLlib baselines by model name, from the train settings, over `features` (a
    `baseline.feature_spec` of the training split; the numeric features alone when None)."""
    from ecominsight.models import baseline

    spec = features or baseline.FeatureSpec()
    lr, gbt = settings.logistic_regression, settings.gradient_boosted_trees
    return {
        LR_MODEL: baseline.logistic_regression_pipeline(features=spec, reg_param=lr.reg_param,
                                                        elastic_net_param=lr.elastic_net_param, max_iter=lr.max_iter),
        GBT_MODEL: baseline.gradient_boosted_trees_pipeline(
            features=spec, max_depth=gbt.max_depth, max_iter=gbt.max_iter, step_size=gbt.step_size,
            subsampling_rate=gbt.subsampling_rate, min_instances_per_node=gbt.min_instances_per_node, seed=gbt.seed),
    }


def cjk_characters(texts: DataFrame) -> DataFrame:
    """Input: a `text` column. Output: one row per distinct CJK character in it (column `c`)."""
    characters = F.explode(F.split(F.regexp_replace("text", f"[^{CJK_RANGES}]", ""), "")).alias("c")
    return texts.select(characters).filter(F.col("c") != "").distinct()


# split -> {"user_id": [...], "label": [...], "probability": [...]}, users in user_id order
Predictions = dict[str, dict[str, list]]


def _split_predictions(scored: DataFrame, column: str) -> Predictions:
    """The valid and test users' labels and `column`, each split ordered by user_id (collected: these
    are the two held-out splits, a share of the users)."""
    rows = scored.filter(F.col("split").isin("valid", "test")).select("split", "user_id", "label", column) \
        .orderBy("split", "user_id").collect()
    found: Predictions = {split: {"user_id": [], "label": [], "probability": []} for split in ("valid", "test")}
    for row in rows:
        found[row["split"]]["user_id"].append(row["user_id"])
        found[row["split"]]["label"].append(int(row["label"]))
        found[row["split"]]["probability"].append(float(row[column]))
    return found


def _evaluate(predictions: Predictions) -> dict[str, Any]:
    from ecominsight.models.metrics import evaluate_splits

    return evaluate_splits(*((predictions[s]["label"], predictions[s]["probability"]) for s in ("valid", "test")))


def _with_cost(name: str, lake: Lake, version: str, fit: Callable[[], tuple[dict[str, Any], Predictions]], *,
               concurrent: bool = False) -> tuple[dict[str, Any], Predictions]:
    """Run one model's fit and record what it cost beside its metrics (metrics.json and the returned
    metrics): `cost.fit_seconds` (wall) and `cost.fit_started_at` (unix time, so that a benchmark's CPU
    meter can attribute CPU-seconds to the fit), and `cost.concurrent`: whether it ran beside another
    fit (`train.concurrent_baselines`), whose time then overlaps its own. The hybrid's cost is its
    stacker's alone; its components' costs are theirs."""
    started_at, clock = time.time(), time.perf_counter()
    metrics, predictions = fit()
    cost = {"fit_started_at": started_at, "fit_seconds": round(time.perf_counter() - clock, 3), "concurrent": concurrent}
    metrics_file = lake.model_dir(name, version) / "metrics.json"
    write_json(metrics_file, {**read_json(metrics_file), "cost": cost})
    log.info("train: %s fitted in %.1f s", name, cost["fit_seconds"])
    return {**metrics, "cost": cost}, predictions


def _fit_baseline(name: str, pipeline, features: "FeatureSpec", data: DataFrame, lake: Lake, version: str,
                  lineage: dict) -> tuple[dict[str, Any], Predictions]:
    """Fit an MLlib baseline on the train split, evaluate on valid/test, save model (with the
    FeatureSpec it saw, features.json) + metrics."""
    from ecominsight.models import baseline

    # The session's shuffle width, or its task slots where the platform does not expose the setting.
    partitions = int(conf_value(data.sparkSession, "spark.sql.shuffle.partitions") or default_parallelism(data.sparkSession))
    model = pipeline.fit(baseline.in_fit_order(data.filter(F.col("split") == "train"), partitions=partitions))
    predictions = _split_predictions(baseline.with_probability(model, data, output_col="p"), "p")
    metrics = {**_evaluate(predictions), **baseline.explain(model, features=features)}
    model_dir = lake.model_dir(name, version)
    model.write().overwrite().save((model_dir / "spark_model").uri)
    write_json(model_dir / baseline.FEATURES_FILE, {**features.to_dict(), "names": baseline.feature_names(model, features)})
    write_json(model_dir / "metrics.json", metrics)
    write_json(model_dir / "lineage.json", {**lineage, "model": name})
    log.info("train: %s test ROC-AUC %s (95%% CI %s)", name, metrics["test"]["roc_auc"], metrics["test"]["roc_auc_ci"])
    return metrics, predictions


def _aligned(predictions: dict[str, Predictions], components: tuple[str, ...], split: str) -> tuple[list, list, Any]:
    """user ids, labels and the (n, k) component probabilities of one split, in the first component's
    user order (every model scored the same users)."""
    import numpy as np

    reference = predictions[components[0]][split]
    columns = []
    for name in components:
        by_user = dict(zip(predictions[name][split]["user_id"], predictions[name][split]["probability"]))
        missing = [u for u in reference["user_id"] if u not in by_user]
        if missing:
            raise LakeError(f"model {name} has no {split} probability for {len(missing)} user(s), e.g. {missing[0]!r}")
        columns.append([by_user[u] for u in reference["user_id"]])
    return reference["user_id"], reference["label"], np.column_stack(columns)


def _train_hybrid(predictions: dict[str, Predictions], lake: Lake, lineage: dict,
                  component_versions: dict[str, str]) -> tuple[dict[str, Any], Predictions]:
    """The stacker over the components' probabilities (ecominsight/models/champion.py) ->
    models/hybrid/<version>/ with stacker.json, metrics.json and lineage.json."""
    from ecominsight.models import champion

    components = tuple(component_versions)
    valid_users, valid_labels, valid_features = _aligned(predictions, components, "valid")
    test_users, test_labels, test_features = _aligned(predictions, components, "test")
    stacker, out_of_fold = champion.fit_stacker(components, valid_features, valid_labels, seed=STACKER_SEED)
    hybrid: Predictions = {
        "valid": {"user_id": valid_users, "label": valid_labels, "probability": out_of_fold.tolist()},
        "test": {"user_id": test_users, "label": test_labels, "probability": stacker.predict(test_features).tolist()},
    }
    metrics = {**_evaluate(hybrid), "stacker": stacker.to_dict(), "component_versions": component_versions,
               "valid_is_out_of_fold": True}
    model_dir = lake.model_dir(champion.HYBRID_MODEL, lineage["version"])
    write_json(model_dir / champion.STACKER_FILE, {**stacker.to_dict(), "component_versions": component_versions})
    write_json(model_dir / "metrics.json", metrics)
    write_json(model_dir / "lineage.json", {**lineage, "model": champion.HYBRID_MODEL, "components": component_versions})
    log.info("train: hybrid %s test ROC-AUC %s (valid, out-of-fold: %s)", stacker.to_dict(), metrics["test"]["roc_auc"],
             metrics["valid"]["roc_auc"])
    return metrics, hybrid


def _champion_record(predictions: dict[str, Predictions], metrics: dict[str, dict[str, Any]], forced: str) -> dict[str, Any]:
    """The champion chosen on validation ROC-AUC, then (the choice made) its test ROC-AUC against the
    better single baseline on test, as a paired bootstrap interval of the difference."""
    from ecominsight.models import champion

    record = champion.choose_champion({name: m["valid"]["roc_auc"] for name, m in metrics.items()}, forced=forced)
    best_baseline = max(BASELINES, key=lambda name: metrics[name]["test"]["roc_auc"] or 0.0)
    users, labels, test = _aligned(predictions, (record["model"], best_baseline), "test")
    record["champion_vs_best_baseline"] = {
        "baseline": best_baseline,
        **champion.paired_bootstrap_difference(labels, test[:, 0], test[:, 1]),
    }
    record["test_roc_auc"] = {name: m["test"]["roc_auc"] for name, m in metrics.items()}
    return record


def _train_transformer(settings: TransformerConfig, lake: Lake, train_split: DataFrame,
                       lineage: dict) -> tuple[dict[str, Any], Predictions]:
    """Fine-tune the pretrained encoder with TorchDistributor into models/transformer/<version>/."""
    version, fingerprint = lineage["version"], lineage["data_fingerprint"]
    pretrained_path = transformer.resolve_pretrained(settings.pretrained)
    extra_tokens: list[str] = []
    if settings.extend_cjk_vocab:
        characters = [row["c"] for row in cjk_characters(train_split).collect()]
        # The tokenizer (and with it transformers, seconds to import) only where there are characters to look up.
        extra_tokens = transformer.missing_characters(transformer.load_tokenizer(pretrained_path, extra_tokens=[]),
                                                      characters) if characters else []
        log.info("train: %d CJK characters in the training text, %d added to the vocabulary", len(characters), len(extra_tokens))
    spec = transformer_spec(settings, data_path=lake.table_path(USER_SEQUENCES),
                            output_dir=lake.model_dir(TRANSFORMER_MODEL, version).uri, extra_tokens=extra_tokens)
    if settings.checkpoint:
        key = spec.checkpoint_key(world=settings.num_processes)
        spec = dataclasses.replace(
            spec, checkpoint_dir=lake.checkpoint_dir(TRANSFORMER_MODEL, f"{fingerprint[:12]}-{key[:12]}").uri)
    transformer.run_distributed_training(spec, num_processes=settings.num_processes, local_mode=settings.local_mode)
    metrics = read_json(lake.model_dir(TRANSFORMER_MODEL, version) / "metrics.json")
    write_json(lake.model_dir(TRANSFORMER_MODEL, version) / "lineage.json",
               {**lineage, "model": TRANSFORMER_MODEL, "pretrained": settings.pretrained,
                "pretrained_path": pretrained_path, "max_length": settings.max_length})
    log.info("train: transformer test ROC-AUC %s (best epoch %s)", metrics["test"]["roc_auc"], metrics["best_epoch"])
    return metrics, read_json(lake.model_dir(TRANSFORMER_MODEL, version) / transformer.PREDICTIONS_FILE)


def run_train(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> TrainResult:
    """features/user_sequences -> models/<name>/<version>/ for lr, gbt, the transformer and the hybrid
    stacked over them, each published as LATEST once all are written, then models/CHAMPION;
    reports/<run_id>/train.json."""
    from ecominsight.models import registry

    data = lake.read(spark, USER_SEQUENCES)
    train_split = data.filter(F.col("split") == "train")
    if train_split.select("label").distinct().count() < 2:
        raise LakeError("the training split holds only one class; widen fuse.horizon or move fuse.cutoff")
    fingerprint = registry.data_fingerprint(data)
    version = registry.new_version(fingerprint)
    lineage = {"version": version, "run_id": run_id, "data_fingerprint": fingerprint,
               "data_path": lake.table_path(USER_SEQUENCES), "data_version": lake.version(USER_SEQUENCES),
               "code_version": registry.code_version(),
               "config": redaction.redact_mapping(config_to_dict(config)), "trained_at": dt.datetime.now(dt.timezone.utc).isoformat()}

    from ecominsight.models import champion

    from ecominsight.models import baseline

    features = baseline.feature_spec(train_split)
    log.info("train: baselines see %d numeric features, numeric attributes %s, categorical attributes %s",
             len(features.numeric), list(features.numeric_attributes), dict(features.categorical_attributes))
    # Local-mode training processes run beside Spark's executors, and the baselines' MLlib jobs are mostly
    # scheduling latency on small data: overlapping them hides the baselines' time. Distributed training
    # takes executor slots for its barrier stage, so there the fits stay one after another.
    concurrent = config.train.concurrent_baselines and config.train.transformer.local_mode

    def fit_transformer() -> tuple[dict[str, Any], Predictions]:
        return _with_cost(TRANSFORMER_MODEL, lake, version, lambda: _train_transformer(
            config.train.transformer, lake, train_split, lineage), concurrent=concurrent)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformer") as background:
        transformer_fit = background.submit(fit_transformer) if concurrent else None
        fitted = {}
        for name, pipeline in baseline_pipelines(config.train, features).items():
            fitted[name] = _with_cost(name, lake, version, concurrent=concurrent,
                                      fit=lambda: _fit_baseline(name, pipeline, features, data, lake, version, lineage))
        fitted[TRANSFORMER_MODEL] = transformer_fit.result() if transformer_fit else fit_transformer()
    valid_labels = fitted[LR_MODEL][1]["valid"]["label"]
    if len(set(valid_labels)) == 2:
        components = {name: p for name, (_, p) in fitted.items()}
        fitted[champion.HYBRID_MODEL] = _with_cost(champion.HYBRID_MODEL, lake, version, lambda: _train_hybrid(
            components, lake, lineage, {name: version for name in components}))
    else:
        log.warning("train: the validation split holds one class; no hybrid (its stacker is fitted on validation)")
    metrics = {name: m for name, (m, _) in fitted.items()}
    record = _champion_record({name: p for name, (_, p) in fitted.items()}, metrics, config.train.champion)
    log.info("train: champion %s: %s; ranking %s", record["model"], record["reason"],
             [(r["model"], r["valid_roc_auc"]) for r in record["ranking"]])
    for name in metrics:
        lineage_file = lake.model_dir(name, version) / "lineage.json"
        write_json(lineage_file, {**read_json(lineage_file), "champion": record})
    result = TrainResult(version=version, metrics=metrics, champion=record,
                         model_dirs={name: lake.model_dir(name, version).uri for name in metrics})
    if config.tracking.mlflow_uri:
        # Before anything is published: a run whose tracking fails moves none of the lake's pointers.
        from ecominsight import tracking

        tracking.log_training(config.tracking, report=result.to_dict(), lake_root=str(lake.root), lineages={
            name: read_json(lake.model_dir(name, version) / "lineage.json") for name in metrics})
    for name in metrics:
        registry.publish(lake, name, version)
    registry.publish_champion(lake, record["model"], version, reason=record["reason"])
    result.write(lake, run_id, "train")
    return result
