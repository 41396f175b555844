"""train: features/user_sequences -> models/{lr,gbt,transformer}/<version>/ (+ LATEST pointers)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecominsight import redaction
from ecominsight.catalog import USER_SEQUENCES
from ecominsight.config import Config, TrainConfig, TransformerConfig, config_to_dict
from ecominsight.errors import LakeError
from ecominsight.io import Lake, read_json, write_json
from ecominsight.models import transformer
from ecominsight.models.transformer import CJK_RANGES, TrainSpec
from ecominsight.schema import NUMERIC_FEATURES
from ecominsight.stages.base import StageResult

log = logging.getLogger(__name__)

LR_MODEL, GBT_MODEL, TRANSFORMER_MODEL = "lr", "gbt", "transformer"


@dataclasses.dataclass(frozen=True)
class TrainResult(StageResult):
    version: str
    metrics: dict[str, dict[str, Any]]  # model name -> its metrics.json
    model_dirs: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The train.json shape: each model's metrics under its name, beside the version and dirs."""
        return {"version": self.version, **self.metrics, "model_dirs": self.model_dirs}

    def describe(self, lake: Lake) -> list[str]:
        return [f"  metrics: {path}/metrics.json  ({name}: test ROC-AUC {self.metrics[name]['test']['roc_auc']}, "
                f"F1 {self.metrics[name]['test']['f1']})" for name, path in self.model_dirs.items()]


def baseline_pipelines(settings: TrainConfig) -> dict[str, Any]:
    """The unfitted MLlib baselines by model name, from the train settings."""
    from ecominsight.models import baseline

    lr, gbt = settings.logistic_regression, settings.gradient_boosted_trees
    return {
        LR_MODEL: baseline.logistic_regression_pipeline(reg_param=lr.reg_param, elastic_net_param=lr.elastic_net_param,
                                                        max_iter=lr.max_iter),
        GBT_MODEL: baseline.gradient_boosted_trees_pipeline(
            max_depth=gbt.max_depth, max_iter=gbt.max_iter, step_size=gbt.step_size,
            subsampling_rate=gbt.subsampling_rate, min_instances_per_node=gbt.min_instances_per_node, seed=gbt.seed),
    }


def cjk_characters(texts: DataFrame) -> DataFrame:
    """Input: a `text` column. Output: one row per distinct CJK character in it (column `c`)."""
    characters = F.explode(F.split(F.regexp_replace("text", f"[^{CJK_RANGES}]", ""), "")).alias("c")
    return texts.select(characters).filter(F.col("c") != "").distinct()


def transformer_spec(settings: TransformerConfig, *, data_path: str, output_dir: str,
                     extra_tokens: list[str]) -> TrainSpec:
    """The training spec every rank receives, from the transformer settings (no checkpoint folder yet)."""
    return TrainSpec(
        data_path=data_path, output_dir=output_dir, pretrained=settings.pretrained, extra_tokens=tuple(extra_tokens),
        max_length=settings.max_length, epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, head_learning_rate=settings.head_learning_rate,
        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio, seed=settings.seed,
        positive_class_weight=settings.positive_class_weight,
        numeric_features=NUMERIC_FEATURES if settings.numeric_features else (),
        freeze_layers=settings.freeze_layers, max_train_users=settings.max_train_users, use_gpu=settings.use_gpu,
    )


def _labels_and_probabilities(scored: DataFrame, split: str, column: str) -> tuple[list[int], list[float]]:
    rows = scored.filter(F.col("split") == split).select("label", column).orderBy("user_id").collect()
    return [r["label"] for r in rows], [r[column] for r in rows]


def _fit_baseline(name: str, pipeline, data: DataFrame, lake: Lake, version: str, lineage: dict) -> dict[str, Any]:
    """Fit an MLlib baseline on the train split, evaluate on valid/test, save model + metrics."""
    from ecominsight.models import baseline
    from ecominsight.models.metrics import evaluate_splits

    model = pipeline.fit(data.filter(F.col("split") == "train"))
    scored = baseline.with_probability(model, data, output_col="p")
    metrics = evaluate_splits(_labels_and_probabilities(scored, "valid", "p"), _labels_and_probabilities(scored, "test", "p"))
    metrics.update(baseline.explain(model))
    model_dir = lake.model_dir(name, version)
    model.write().overwrite().save(str(model_dir / "spark_model"))
    write_json(model_dir / "metrics.json", metrics)
    write_json(model_dir / "lineage.json", {**lineage, "model": name})
    log.info("train: %s test ROC-AUC %s (95%% CI %s)", name, metrics["test"]["roc_auc"], metrics["test"]["roc_auc_ci"])
    return metrics


def _train_transformer(settings: TransformerConfig, lake: Lake, train_split: DataFrame, lineage: dict) -> dict[str, Any]:
    """Fine-tune the pretrained encoder with TorchDistributor into models/transformer/<version>/."""
    version, fingerprint = lineage["version"], lineage["data_fingerprint"]
    pretrained_path = transformer.resolve_pretrained(settings.pretrained)
    extra_tokens: list[str] = []
    if settings.extend_cjk_vocab:
        characters = [row["c"] for row in cjk_characters(train_split).collect()]
        extra_tokens = transformer.missing_characters(transformer.load_tokenizer(pretrained_path, extra_tokens=[]), characters)
        log.info("train: %d CJK characters in the training text, %d added to the vocabulary", len(characters), len(extra_tokens))
    spec = transformer_spec(settings, data_path=lake.table_path(USER_SEQUENCES),
                            output_dir=str(lake.model_dir(TRANSFORMER_MODEL, version)), extra_tokens=extra_tokens)
    if settings.checkpoint:
        key = spec.checkpoint_key(world=settings.num_processes)
        spec = dataclasses.replace(
            spec, checkpoint_dir=str(lake.checkpoint_dir(TRANSFORMER_MODEL, f"{fingerprint[:12]}-{key[:12]}")))
    transformer.run_distributed_training(spec, num_processes=settings.num_processes, local_mode=settings.local_mode)
    metrics = read_json(lake.model_dir(TRANSFORMER_MODEL, version) / "metrics.json")
    write_json(lake.model_dir(TRANSFORMER_MODEL, version) / "lineage.json",
               {**lineage, "model": TRANSFORMER_MODEL, "pretrained": settings.pretrained,
                "pretrained_path": pretrained_path, "max_length": settings.max_length})
    log.info("train: transformer test ROC-AUC %s (best epoch %s)", metrics["test"]["roc_auc"], metrics["best_epoch"])
    return metrics


def run_train(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> TrainResult:
    """features/user_sequences -> models/<name>/<version>/ for lr, gbt and the transformer, each
    published as LATEST once all are written; reports/<run_id>/train.json."""
    from ecominsight.models import registry

    data = lake.read(spark, USER_SEQUENCES)
    train_split = data.filter(F.col("split") == "train")
    if train_split.select("label").distinct().count() < 2:
        raise LakeError("the training split holds only one class; widen fuse.horizon or move fuse.cutoff")
    fingerprint = registry.data_fingerprint(data)
    version = registry.new_version(fingerprint)
    lineage = {"version": version, "run_id": run_id, "data_fingerprint": fingerprint,
               "data_path": lake.table_path(USER_SEQUENCES), "code_version": registry.code_version(),
               "config": redaction.redact_mapping(config_to_dict(config)), "trained_at": dt.datetime.now(dt.timezone.utc).isoformat()}

    metrics = {name: _fit_baseline(name, pipeline, data, lake, version, lineage)
               for name, pipeline in baseline_pipelines(config.train).items()}
    metrics[TRANSFORMER_MODEL] = _train_transformer(config.train.transformer, lake, train_split, lineage)

    for name in metrics:
        registry.publish(lake, name, version)
    result = TrainResult(version=version, metrics=metrics,
                         model_dirs={name: str(lake.model_dir(name, version)) for name in metrics})
    result.write(lake, run_id, "train")
    return result
