"""Baselines on the numeric features, in Spark MLlib so that they scale with the cluster.

- `lr`: logistic regression, P(y=1|x) = 1 / (1 + exp(-(w·x + b))), on log1p-compressed,
  standardised features.
- `gbt`: MLlib gradient-boosted trees on the same features. MLlib rather than LightGBM/XGBoost:
  SynapseML's LightGBM needs Maven jars (nothing downloads at run time here) and xgboost.spark
  adds a large wheel for no gain on ~20 dense features; MLlib runs wherever Spark runs.
"""

from __future__ import annotations

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight.schema import NUMERIC_FEATURES

OUTPUT_COLUMNS = {"probabilityCol": "_probability", "rawPredictionCol": "_raw_prediction", "predictionCol": "_prediction"}


def _feature_stages(features: tuple[str, ...]) -> list:
    # Counts and spend are heavy-tailed: log1p keeps a few whales from owning the coefficients.
    compressed = ", ".join(f"log1p(greatest(`{name}`, 0D)) AS `_log_{name}`" for name in features)
    return [
        SQLTransformer(statement=f"SELECT *, {compressed} FROM __THIS__"),
        VectorAssembler(inputCols=[f"_log_{name}" for name in features], outputCol="_features_raw"),
        StandardScaler(inputCol="_features_raw", outputCol="_features", withMean=True, withStd=True),
    ]


def logistic_regression_pipeline(*, features: tuple[str, ...] = NUMERIC_FEATURES, reg_param: float,
                                  elastic_net_param: float, max_iter: int) -> Pipeline:
    """An unfitted MLlib pipeline: log1p -> assemble -> standardise -> logistic regression."""
    return Pipeline(stages=[
        *_feature_stages(features),
        LogisticRegression(featuresCol="_features", labelCol="label", regParam=reg_param,
                           elasticNetParam=elastic_net_param, maxIter=max_iter, **OUTPUT_COLUMNS),
    ])


def gradient_boosted_trees_pipeline(*, features: tuple[str, ...] = NUMERIC_FEATURES, max_depth: int, max_iter: int,
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


def with_probability(model: PipelineModel, users: DataFrame, *, output_col: str = "baseline_probability") -> DataFrame:
    """Add the fitted model's positive-class probability to every row; no other column changes."""
    scored = model.transform(users)
    return scored.withColumn(output_col, vector_to_array(F.col("_probability"))[1]).select(*users.columns, output_col)


def explain(model: PipelineModel, *, features: tuple[str, ...] = NUMERIC_FEATURES) -> dict[str, dict[str, float]]:
    """LR: standardised coefficients and intercept. GBT: feature importances (sum to 1)."""
    fitted = model.stages[-1]
    if hasattr(fitted, "coefficients"):
        named = {name: float(w) for name, w in zip(features, fitted.coefficients.toArray())}
        return {"coefficients": {**named, "intercept": float(fitted.intercept)}}
    importances = fitted.featureImportances.toArray()
    return {"feature_importances": {name: float(w) for name, w in zip(features, importances)}}
