"""The stages, one module each: a runner reads its lake zone, calls pure transforms, writes the next
zone and returns a typed result. `run_stage` dispatches by name; `pipeline` runs them in order."""

from __future__ import annotations

from typing import Callable

from pyspark.sql import SparkSession

from ecominsight.config import Config
from ecominsight.errors import ConfigError
from ecominsight.io import Lake
from ecominsight.stages.base import StageResult
from ecominsight.stages.clean import run_clean
from ecominsight.stages.fuse import run_fuse
from ecominsight.stages.insights import run_insights
from ecominsight.stages.register import run_register
from ecominsight.stages.score import run_score
from ecominsight.stages.train import run_train

Runner = Callable[[SparkSession, Config, Lake, str], StageResult]

# In pipeline order. `register` is not part of `pipeline`: a warehouse is optional, and registering is
# cheap to run after it.
PIPELINE: dict[str, Runner] = {"clean": run_clean, "fuse": run_fuse, "train": run_train, "score": run_score,
                               "insights": run_insights}
RUNNERS: dict[str, Runner] = {**PIPELINE, "register": run_register}
STAGES = (*PIPELINE, "pipeline", "register")

__all__ = ["STAGES", "StageResult", "run_clean", "run_fuse", "run_insights", "run_register", "run_score", "run_stage",
           "run_train"]


def run_stage(stage: str, spark: SparkSession, config: Config, lake: Lake, run_id: str) -> dict[str, StageResult]:
    """Run one stage, or every stage of the pipeline in order for `pipeline`: stage name -> its result."""
    if stage == "pipeline":
        return {name: runner(spark, config, lake, run_id) for name, runner in PIPELINE.items()}
    if stage not in RUNNERS:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return {stage: RUNNERS[stage](spark, config, lake, run_id)}
