"""Baselines on the numeric features and the user's attributes, in Spark MLlib so that they scale
with the cluster.

- `lr`: logistic regression, P(y=1|x) = 1 / (1 + exp(-(w·x + b))), on log1p-compressed numeric
  features, numeric attributes with a missing flag and one-hot categorical attributes, standardised.
- `gbt`: MLlib gradient-boosted trees on the same features. MLlib rather than LightGBM/XGBoost:
  SynapseML's LightGBM needs Maven jars (nothing downloads at run time here) and xgboost.spark
  adds a large wheel for no gain on ~20 dense features; MLlib runs wherever Spark runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import OneHotEncoder, SQLTransformer, StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight.schema import CATEGORICAL_ATTRIBUTES, NUMERIC_ATTRIBUTES, NUMERIC_FEATURES, sql_string

OUTPUT_COLUMNS = {"probabilityCol": "_probability", "rawPredictionCol": "_raw_prediction", "predictionCol": "_prediction"}
# A categorical level held by fewer training users than this folds into OTHER_LEVEL: a level of a
# handful of users (an id-like value) would be a feature fitted to those users alone.
MIN_LEVEL_USERS = 20
OTHER_LEVEL, MISSING_LEVEL = "other", "missing"
FEATURES_FILE = "features.json"  # beside a saved baseline: the FeatureSpec it was trained with


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a baseline sees: the fused numeric features (log1p), the numeric attributes (value, and
    a `<name>_missing` flag), and the categorical attributes, each with the levels kept on train
    (the rest fold into `other`, an unknown value is `missing`), one-hot."""

    numeric: tuple[str, ...] = NUMERIC_FEATURES
    numeric_attributes: tuple[str, ...] = ()
    categorical_attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, kept levels), by name

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": list(self.numeric), "numeric_attributes": list(self.numeric_attributes),
                "categorical_attributes": {name: list(levels) for name, levels in self.categorical_attributes}}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "FeatureSpec":
        return cls(numeric=tuple(payload["numeric"]), numeric_attributes=tuple(payload["numeric_attributes"]),
                   categorical_attributes=tuple((name, tuple(levels))
                                                for name, levels in sorted(payload["categorical_attributes"].items())))


def feature_spec(train: DataFrame, *, min_level_users: int = MIN_LEVEL_USERS) -> FeatureSpec:
    """The FeatureSpec for a fused training split: every attribute some training user has, and per
    categorical attribute the levels at least `min_level_users` training users hold. A table fused
    before attributes existed (no attribute columns) gives the numeric features alone. One small
    aggregation per kind, collected (attribute names and levels, not users)."""
    if NUMERIC_ATTRIBUTES not in train.columns or CATEGORICAL_ATTRIBUTES not in train.columns:
        return FeatureSpec()
    numeric = sorted(row["name"] for row in train.select(F.explode(F.map_keys(NUMERIC_ATTRIBUTES)).alias("name"))
                     .distinct().collect())
    levels = train.select(F.explode(CATEGORICAL_ATTRIBUTES).alias("name", "level")) \
        .groupBy("name", "level").agg(F.count(F.lit(1)).alias("users")).collect()
    kept: dict[str, list[str]] = {}
    for row in levels:
        kept.setdefault(row["name"], [])
        if row["users"] >= min_level_users:
            kept[row["name"]].append(row["level"])
    return FeatureSpec(numeric_attributes=tuple(numeric),
                       categorical_attributes=tuple((name, tuple(sorted(kept[name]))) for name in sorted(kept)))


def _feature_stages(spec: FeatureSpec) -> list:
    """SQL (log1p, attribute values and flags, levels folded) -> index -> one-hot -> assemble -> standardise.
    Every fitted piece (the folded levels in the SQL, the indexer's labels) is saved with the model,
    so scoring rebuilds exactly the training features."""
    # Counts and spend are heavy-tailed: log1p keeps a few whales from owning the coefficients.
    columns = [f"log1p(greatest(`{name}`, 0D)) AS `_log_{name}`" for name in spec.numeric]
    inputs = [f"_log_{name}" for name in spec.numeric]
    for name in spec.numeric_attributes:
        value = f"`{NUMERIC_ATTRIBUTES}`[{sql_string(name)}]"
        columns += [f"coalesce({value}, 0D) AS `_num_{name}`", f"CAST({value} IS NULL AS DOUBLE) AS `_missing_{name}`"]
        inputs += [f"_num_{name}", f"_missing_{name}"]
    for name, levels in spec.categorical_attributes:
        value = f"`{CATEGORICAL_ATTRIBUTES}`[{sql_string(name)}]"
        kept = f"{value} IN ({', '.join(map(sql_string, levels))})" if levels else "false"
        columns.append(f"CASE WHEN {value} IS NULL THEN {sql_string(MISSING_LEVEL)} WHEN {kept} THEN {value} "
                       f"ELSE {sql_string(OTHER_LEVEL)} END AS `_level_{name}`")
    stages: list = [SQLTransformer(statement=f"SELECT *, {', '.join(columns)} FROM __THIS__")]
    categorical = [name for name, _ in spec.categorical_attributes]
    if categorical:
        # The indexer's `keep`: a level it has not seen gets the index after its labels, the encoder's
        # last category, which dropLast leaves out: such a user is all zeros, never an error. One slot
        # per label, alphabetical, so that a feature's name does not depend on the counts.
        stages += [
            StringIndexer(inputCols=[f"_level_{n}" for n in categorical], outputCols=[f"_index_{n}" for n in categorical],
                          handleInvalid="keep", stringOrderType="alphabetAsc"),
            OneHotEncoder(inputCols=[f"_index_{n}" for n in categorical], outputCols=[f"_onehot_{n}" for n in categorical],
                          dropLast=True),
        ]
        inputs += [f"_onehot_{n}" for n in categorical]
    return [*stages, VectorAssembler(inputCols=inputs, outputCol="_features_raw"),
            StandardScaler(inputCol="_features_raw", outputCol="_features", withMean=True, withStd=True)]


def logistic_regression_pipeline(*, features: FeatureSpec = FeatureSpec(), reg_param: float,
                                  elastic_net_param: float, max_iter: int) -> Pipeline:
    """An unfitted MLlib pipeline: features (`_feature_stages`) -> logistic regression."""
    return Pipeline(stages=[
        *_feature_stages(features),
        LogisticRegression(featuresCol="_features", labelCol="label", regParam=reg_param,
                           elasticNetParam=elastic_net_param, maxIter=max_iter, **OUTPUT_COLUMNS),
    ])


def gradient_boosted_trees_pipeline(*, features: FeatureSpec = FeatureSpec(), max_depth: int, max_iter: int,
                                    step_size: float, subsampling_rate: float, min_instances_per_node: int,
                                    seed: int) -> Pipeline:
    """An unfitted MLlib pipeline: the same features -> gradient-boosted trees (log loss)."""
    return Pipeline(stages=[
        *_feature_stages(features),
        # GBTClassifier takes its probability/raw-prediction columns through setters only.
        GBTClassifier(featuresCol="_features", labelCol="label", maxDepth=max_depth, maxIter=max_iter,
                      stepSize=step_size, subsamplingRate=subsampling_rate,
                      minInstancesPerNode=min_instances_per_node, seed=seed, predictionCol="_prediction")
        .setProbabilityCol("_probability").setRawPredictionCol("_raw_prediction"),
    ])


def in_fit_order(frame: DataFrame, *, partitions: int, key: str = "user_id") -> DataFrame:
    """`frame` -> the same rows, hash-partitioned by `key` into `partitions` and sorted by `key` within
    each: a layout that the rows alone decide. GBT draws its subsample per partition, row by row, so
    a fit on the order a table happened to be written in (shuffles deliver rows in arrival order)
    changes from run to run; a fit on this layout is the same fit each time."""
    return frame.repartition(partitions, key).sortWithinPartitions(key)


def with_probability(model: PipelineModel, users: DataFrame, *, output_col: str = "baseline_probability") -> DataFrame:
    """Add the fitted model's positive-class probability to every row; no other column changes."""
    scored = model.transform(users)
    return scored.withColumn(output_col, vector_to_array(F.col("_probability"))[1]).select(*users.columns, output_col)


def feature_names(model: PipelineModel, spec: FeatureSpec = FeatureSpec()) -> list[str]:
    """The fitted pipeline's features in vector order: the numeric features, `<name>` and
    `<name>_missing` per numeric attribute, `<name>=<level>` per one-hot level (the indexer's labels;
    the slot of a level unseen in training is dropped)."""
    names = [*spec.numeric]
    for name in spec.numeric_attributes:
        names += [name, f"{name}_missing"]
    indexers = [stage for stage in model.stages if hasattr(stage, "labelsArray")]
    if indexers:
        for (name, _), labels in zip(spec.categorical_attributes, indexers[0].labelsArray):
            names += [f"{name}={label}" for label in labels]
    return names


def explain(model: PipelineModel, *, features: FeatureSpec = FeatureSpec()) -> dict[str, dict[str, float]]:
    """LR: standardised coefficients and intercept. GBT: feature importances (sum to 1). Named by
    `feature_names`; `features` is the FeatureSpec the model was trained with."""
    names = feature_names(model, features)
    fitted = model.stages[-1]
    if hasattr(fitted, "coefficients"):
        named = {name: float(w) for name, w in zip(names, fitted.coefficients.toArray())}
        return {"coefficients": {**named, "intercept": float(fitted.intercept)}}
    importances = fitted.featureImportances.toArray()
    return {"feature_importances": {name: float(w) for name, w in zip(names, importances)}}
