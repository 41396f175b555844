"""Score users with the fine-tuned classifier inside Spark, through `predict_batch_udf`."""

from __future__ import annotations

from typing import Mapping

from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from ecominsight import storage
from ecominsight.io import read_json
from ecominsight.models.champion import LOGIT_EPSILON, Stacker
from ecominsight.models import META_FILE


def transformer_probability_udf(model_dir: str, *, n_numeric: int, batch_size: int, torch_threads: int = 1,
                                precision: str = "fp32"):
    """A pandas UDF: (text, numeric feature array) -> positive-class probability. The model is
    loaded once per Python worker (predict_batch_udf caches what `make_predict_fn` returns)."""

    def make_predict_fn():
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        from ecominsight import storage
        from ecominsight.models.inference import load_scorer

        # A local copy while it loads (the lake may be an object store); the scorer keeps the model
        # in memory. One thread per Python worker: Spark already runs one worker per core.
        with storage.resolve(model_dir).local_copy() as local:
            return load_scorer(local, precision=precision, threads=torch_threads)

    return predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=batch_size,
                             input_tensor_shapes=[None, [n_numeric]])


def transformer_probability(text: Column, model_dir: str, *, batch_size: int, torch_threads: int = 1,
                            precision: str = "fp32") -> Column:
    """Column expression: the classifier's purchase probability from the text column and the
    numeric feature columns the model was trained with (named in its classifier.json).

    `precision` is one of inference.PRECISIONS; for `onnx` the model is exported here, on the
    driver, once per model version, so that the Python workers only load it."""
    if precision != "fp32":
        # Only another precision needs the inference module on the driver (it imports torch: seconds).
        from ecominsight.models.inference import check_precision, export_onnx

        check_precision(precision)
        if precision == "onnx":
            export_onnx(model_dir)
    names = read_json(storage.resolve(model_dir) / META_FILE)["numeric"]["names"]
    # A model without numeric features still takes a (one-wide, ignored) array: the UDF's shape is fixed.
    numeric = F.array(*[F.col(name).cast("double") for name in names]) if names else F.array(F.lit(0.0))
    return transformer_probability_udf(model_dir, n_numeric=max(len(names), 1), batch_size=batch_size,
                                       torch_threads=torch_threads, precision=precision)(text, numeric)


# Tasks per core for the model. Measured (BENCHMARKS.md, scoring): one task per core with Spark's
# default Arrow batches came within 3% of the plain loop; two tasks per core with 128-row Arrow
# batches cost 14% (the second wave of hash-sized tasks ends unevenly).
SCORE_TASKS_PER_CORE = 1
# The cut points between score deciles, as quantiles of the day's probabilities.
DECILE_QUANTILES = tuple(i / 10 for i in range(1, 10))


def prepare_for_scoring(users: DataFrame, *, tasks: int) -> DataFrame:
    """Input: users to score (`user_id`, `text`, ...). Output: the same rows in `tasks` partitions
    hashed on user_id, each sorted by text length.

    A small features table reads as one partition (and AQE coalesces small shuffles to one): the
    model would then run in one Python worker while the other cores idle. Hashing on user_id keeps
    the batches, and so the scores, the same from run to run; similar lengths side by side make each
    predict batch pad to a near-equal length."""
    return users.repartition(tasks, "user_id").sortWithinPartitions(F.length("text"), "user_id")


def decile_cut_points(day: DataFrame) -> list[float]:
    """The 9 ascending probability cut points of a day's scores (approximate quantiles, 1e-4 error)."""
    return day.approxQuantile("probability", list(DECILE_QUANTILES), 1e-4)


def with_score_decile(scored: DataFrame, *, cut_points: list[float]) -> DataFrame:
    """Add `score_decile` (1 = the highest tenth of `probability`) from 9 ascending cut points,
    computed once over the whole day so that every partition buckets the same way."""
    above = sum((F.col("probability") > F.lit(c)).cast("int") for c in cut_points) if cut_points else F.lit(0)
    return scored.withColumn("score_decile", (F.lit(10) - above).cast("int"))


def users_to_rescore(current: DataFrame, previous: DataFrame, *, model_name: str, model_version: str) -> DataFrame:
    """Rows of `current` that need a new score: new users, users with events newer than the ones
    their previous score saw, and everyone whose previous score came from another model (another
    name, such as a new champion, or another version; a row without a name counts as another)."""
    seen = previous.select("user_id", F.col("last_event_ts").alias("_scored_ts"),
                           F.col("model_name").alias("_scored_name"), F.col("model_version").alias("_scored_by"))
    joined = current.join(seen, "user_id", "left")
    same_model = F.col("_scored_name").eqNullSafe(F.lit(model_name)) & F.col("_scored_by").eqNullSafe(F.lit(model_version))
    stale = F.col("_scored_ts").isNull() | (F.col("last_event_ts") > F.col("_scored_ts")) | ~same_model
    return joined.filter(stale | F.col("last_event_ts").isNull()).drop("_scored_ts", "_scored_name", "_scored_by")


def stacked_probability(stacker: Stacker, probabilities: Mapping[str, Column]) -> Column:
    """Column expression of `stacker.predict`: sigmoid(intercept + Σ w · logit(p)), each component's
    probability clipped as in training (ecominsight/models/champion.py)."""
    z = F.lit(stacker.intercept)
    for name, weight in zip(stacker.components, stacker.coefficients):
        p = F.least(F.greatest(probabilities[name].cast("double"), F.lit(LOGIT_EPSILON)), F.lit(1 - LOGIT_EPSILON))
        z = z + F.lit(weight) * F.log(p / (F.lit(1.0) - p))
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-z))


def carried_scores(current: DataFrame, previous: DataFrame, rescored_users: DataFrame) -> DataFrame:
    """Previous score rows of current users who need no new score (their history has not moved)."""
    keep = current.select("user_id").join(rescored_users.select("user_id"), "user_id", "left_anti")
    return previous.join(keep, "user_id", "left_semi")
