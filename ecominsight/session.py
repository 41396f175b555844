"""The one place that makes (or finds) the SparkSession."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Settings every stage relies on: UTC so that `ts` means the same everywhere, dynamic partition
# overwrite so that a re-run replaces exactly the partitions it recomputes, and Arrow for pandas UDFs.
REQUIRED_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def embedded_metastore_conf(directory: str | Path) -> dict[str, str]:
    """Settings for Hive support with an embedded Derby metastore (and its warehouse) in `directory`:
    a single-machine warehouse whose tables outlive the session."""
    root = Path(directory).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true",
        "spark.sql.warehouse.dir": str(root / "warehouse"),
        # Derby writes derby.log into its system home; keep it beside the metastore, not in the cwd.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={root}",
    }


def launched_by_spark_submit() -> bool:
    """True when spark-submit started this Python driver (locally, in a YARN container or a k8s pod).
    Its JVM is already running and holds the master (its --master, spark-defaults.conf or its own
    local[*] default); spark-submit tells Python where that JVM is in PYSPARK_GATEWAY_PORT, which
    plain `python` never sets (pyspark then starts its own JVM and keeps the port to itself)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@contextmanager
def spark_session(app_name: str = "ecominsight", master: str | None = None,
                  conf: Mapping[str, str] | None = None, *,
                  embedded_metastore: str | Path | None = None) -> Iterator[SparkSession]:
    """The active session if there is one (Databricks, a notebook, spark-submit's), else a new one,
    for the `with` block. A session started here is stopped when the block ends; one found active
    is left running for whoever started it. `master` (and a `spark.master` in `conf`) applies only
    when Python starts Spark itself: under spark-submit, its --master always wins.
    `embedded_metastore`: a directory for a local Hive metastore (new sessions only)."""
    spark, created = _active_or_new(app_name, master, conf, embedded_metastore)
    try:
        yield spark
    finally:
        if created:
            spark.stop()


def _active_or_new(app_name: str, master: str | None, conf: Mapping[str, str] | None,
                   embedded_metastore: str | Path | None) -> tuple[SparkSession, bool]:
    """`(session, created)`: the active session with REQUIRED_SQL_CONF set, or a new one."""
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in REQUIRED_SQL_CONF.items():
            active.conf.set(key, value)
        if embedded_metastore is not None:
            log.warning("warehouse.embedded_metastore is ignored: the active session brings its own catalog (%s)",
                        active.conf.get("spark.sql.catalogImplementation", "in-memory"))
        log.info("using the active SparkSession (master %s)", active.sparkContext.master)
        return active, False
    if embedded_metastore is not None:
        conf = {**embedded_metastore_conf(embedded_metastore), **(conf or {})}
    if launched_by_spark_submit():
        conf = dict(conf or {})
        ignored = conf.pop("spark.master", None) or master
        if ignored:
            log.info("spark-submit chose the master; the configured %s is not applied", ignored)
        master = None
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
