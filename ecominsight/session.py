"""The one place that makes (or finds) the SparkSession."""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Settings every stage relies on: UTC so that `ts` means the same everywhere, dynamic partition
# overwrite so that a re-run replaces exactly the partitions it recomputes, and Arrow for pandas UDFs.
REQUIRED_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def get_spark(app_name: str = "ecominsight", master: str | None = None,
              conf: Mapping[str, str] | None = None) -> tuple[SparkSession, bool]:
    """Return `(session, created)`: the active session if there is one (Databricks, a notebook,
    spark-submit's), else a new one. Only the caller that created a session may stop it."""
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in REQUIRED_SQL_CONF.items():
            active.conf.set(key, value)
        log.info("using the active SparkSession (master %s)", active.sparkContext.master)
        return active, False
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run the interpreter that has our dependencies, not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    # Python workers must never reach for the model hub: everything is loaded from local paths.
    builder = builder.config("spark.executorEnv.HF_HUB_OFFLINE", "1")
    for key, value in {**(conf or {}), **REQUIRED_SQL_CONF}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("started SparkSession %s on %s", app_name, spark.sparkContext.master)
    return spark, True
