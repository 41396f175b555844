"""Logistic-regression baseline on the numeric features, in Spark MLlib so that it scales out.

P(y=1|x) = 1 / (1 + exp(-(w·x + b))) on log1p-compressed, standardised counts.
"""

from __future__ import annotations

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight.transforms.fuse import NUMERIC_FEATURES


def logistic_regression_pipeline(*, features: tuple[str, ...] = NUMERIC_FEATURES, reg_param: float,
                                 elastic_net_param: float, max_iter: int) -> Pipeline:
    """An unfitted MLlib pipeline: log1p -> assemble -> standardise -> logistic regression."""
    # Counts and spend are heavy-tailed: log1p keeps a few whales from owning the coefficients.
    compressed = ", ".join(f"log1p(greatest(`{name}`, 0D)) AS `_log_{name}`" for name in features)
    return Pipeline(stages=[
        SQLTransformer(statement=f"SELECT *, {compressed} FROM __THIS__"),
        VectorAssembler(inputCols=[f"_log_{name}" for name in features], outputCol="_features_raw"),
        StandardScaler(inputCol="_features_raw", outputCol="_features", withMean=True, withStd=True),
        LogisticRegression(featuresCol="_features", labelCol="label", probabilityCol="_probability",
                           rawPredictionCol="_raw_prediction", predictionCol="_prediction",
                           regParam=reg_param, elasticNetParam=elastic_net_param, maxIter=max_iter),
    ])


def with_baseline_probability(model: PipelineModel, users: DataFrame, *, output_col: str = "baseline_probability") -> DataFrame:
    """Add the fitted model's positive-class probability to every row; no other column changes."""
    scored = model.transform(users)
    return scored.withColumn(output_col, vector_to_array(F.col("_probability"))[1]).select(*users.columns, output_col)


def coefficients(model: PipelineModel, *, features: tuple[str, ...] = NUMERIC_FEATURES) -> dict[str, float]:
    """Standardised-feature coefficients and the intercept, for the metrics file."""
    fitted = model.stages[-1]
    named = {name: float(w) for name, w in zip(features, fitted.coefficients.toArray())}
    named["intercept"] = float(fitted.intercept)
    return named
