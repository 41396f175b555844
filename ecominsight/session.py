"""The one place that makes (or finds) the SparkSession, classic or Spark Connect, and answers what a
stage asks of it. Library code uses only the DataFrame/SparkSession API, never the SparkContext, RDDs
or the JVM gateway, which a Spark Connect session (Databricks serverless and shared clusters,
Databricks Connect, any `sc://` server) does not have."""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from pyspark.errors import PySparkException, PySparkValueError
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ecominsight import storage
from ecominsight.errors import SessionError

log = logging.getLogger(__name__)

# Settings every stage relies on: UTC so that `ts` means the same everywhere and Arrow for pandas
# UDFs. Dynamic partition overwrite stays the default for any overwrite of a partitioned path outside
# the lake (the lake never overwrites: each write is a new version, io.Lake).
REQUIRED_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Rows of the probe that measures the default parallelism: at least one per slice on any cluster.
PARALLELISM_PROBE_ROWS = 1 << 20
# How long a Spark Connect server may take to accept a connection before it counts as absent.
CONNECT_TIMEOUT_S = 10.0


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


def conf_for_lake(lake_uri: str, conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """The session settings for a lake at `lake_uri`: `conf` (the user's `spark.conf`), over the
    settings its store needs where the lake is on an object store (storage.spark_conf_for: the S3A
    committers, endpoint and region, and the cloud jars .ci/fetch-jars cached). The user's settings win."""
    if not storage.is_object_store_uri(lake_uri):
        return dict(conf or {})
    return {**storage.spark_conf_for(lake_uri, jars=storage.cached_cloud_jars()), **(conf or {})}


def launched_by_spark_submit() -> bool:
    """True when spark-submit started this Python driver (locally, in a YARN container or a k8s pod).
    Its JVM is already running and holds the master (its --master, spark-defaults.conf or its own
    local[*] default); spark-submit tells Python where that JVM is in PYSPARK_GATEWAY_PORT, which
    plain `python` never sets (pyspark then starts its own JVM and keeps the port to itself)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def remote_url(remote: str | None = None) -> str | None:
    """The Spark Connect server to use (`sc://host:port`): `remote`, else $SPARK_REMOTE, else None
    (a classic session)."""
    return remote or os.environ.get("SPARK_REMOTE") or None


@contextmanager
def spark_session(app_name: str = "ecominsight", master: str | None = None,
                  conf: Mapping[str, str] | None = None, *,
                  embedded_metastore: str | Path | None = None, remote: str | None = None) -> Iterator[SparkSession]:
    """The active session if there is one (Databricks, a notebook, spark-submit's), else a new one,
    for the `with` block. A session started here is stopped when the block ends; one found active
    is left running for whoever started it. `master` (and a `spark.master` in `conf`) applies only
    when Python starts Spark itself: under spark-submit, its --master always wins.
    `embedded_metastore`: a directory for a local Hive metastore (new classic sessions only).
    `remote` (or $SPARK_REMOTE): a Spark Connect server, `sc://host:port`. The server then owns the
    master, the static settings and the catalog; the session-level settings of `conf` apply, and
    stopping the session ends only this client's session, never the server."""
    spark, created = _active_or_new(app_name, master, conf, embedded_metastore, remote_url(remote))
    try:
        yield spark
    finally:
        if created:
            spark.stop()


def conf_value(spark: SparkSession, key: str) -> str | None:
    """A setting of the session, or None where it is unset or the platform does not expose it
    (Databricks serverless refuses to read many core settings)."""
    try:
        return spark.conf.get(key, None)
    except PySparkException:
        return None


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks the cluster runs at once: `spark.default.parallelism` where set, else the slices
    Spark cuts a range into (its default parallelism for a source), read back with
    `spark_partition_id`: a tiny job that works on classic and Spark Connect sessions alike."""
    configured = conf_value(spark, "spark.default.parallelism")
    if configured:
        return max(1, int(configured))
    slices = spark.range(PARALLELISM_PROBE_ROWS).select(F.spark_partition_id().alias("slice"))
    last = slices.agg(F.max("slice")).first()[0]
    return int(last) + 1


def _active_or_new(app_name: str, master: str | None, conf: Mapping[str, str] | None,
                   embedded_metastore: str | Path | None, remote: str | None) -> tuple[SparkSession, bool]:
    """`(session, created)`: the active session with REQUIRED_SQL_CONF set, or a new one."""
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in REQUIRED_SQL_CONF.items():
            active.conf.set(key, value)
        if embedded_metastore is not None:
            log.warning("warehouse.embedded_metastore is ignored: the active session brings its own catalog (%s)",
                        conf_value(active, "spark.sql.catalogImplementation") or "in-memory")
        log.info("using the active SparkSession (master %s)", conf_value(active, "spark.master") or "unknown")
        return active, False
    if remote:
        return _new_remote(remote, master, conf, embedded_metastore), True
    if embedded_metastore is not None:
        conf = {**embedded_metastore_conf(embedded_metastore), **(conf or {})}
    if launched_by_spark_submit():
        conf, master = _without_master(conf, master, chosen_by="spark-submit"), None
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run the interpreter that has our dependencies, not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    # Python workers must never reach for the model hub: everything is loaded from local paths.
    builder = builder.config("spark.executorEnv.HF_HUB_OFFLINE", "1")
    # Spark's own INFO lines would drown the job's; applied as the SparkContext starts.
    for key, value in {"spark.log.level": "WARN", **(conf or {}), **REQUIRED_SQL_CONF}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.info("started SparkSession %s on %s", app_name, conf_value(spark, "spark.master"))
    return spark, True


def _new_remote(remote: str, master: str | None, conf: Mapping[str, str] | None,
                embedded_metastore: str | Path | None) -> SparkSession:
    """A new Spark Connect session on `remote` with REQUIRED_SQL_CONF and the session-level settings
    of `conf`. The server was started with its master and static settings (memory, UI, warehouse),
    which a client cannot change: the server refuses those, and they are logged as not applied."""
    endpoint = _reachable_endpoint(remote)
    conf = _without_master(conf, master, chosen_by=f"the Spark Connect server at {endpoint}")
    if embedded_metastore is not None:
        log.warning("warehouse.embedded_metastore is ignored: the Spark Connect server brings its own catalog")
    spark = SparkSession.builder.remote(remote).getOrCreate()
    for key, value in REQUIRED_SQL_CONF.items():
        spark.conf.set(key, value)
    refused = []
    for key, value in conf.items():
        try:
            spark.conf.set(key, value)
        except PySparkException:  # CANNOT_MODIFY_CONFIG and the like: the server's own setting
            refused.append(key)
    if refused:
        log.info("Spark Connect: %s belong to the server and are not applied", ", ".join(sorted(refused)))
    log.info("connected to the Spark Connect server at %s (master %s)", endpoint, conf_value(spark, "spark.master") or "unknown")
    return spark


def _reachable_endpoint(remote: str) -> str:
    """`host:port` of the Spark Connect URL `remote` once something accepts connections there.

    Checked first because pyspark's client retries a refused connection for ten minutes (its policy,
    made for clusters that are still starting); a mistyped URL should fail at once. The URL is parsed
    by pyspark's own channel builder; the endpoint (never the URL, which may hold a token) is logged."""
    from pyspark.sql.connect.client import DefaultChannelBuilder

    try:
        endpoint = DefaultChannelBuilder(remote).endpoint
    except PySparkValueError as err:
        # pyspark's message quotes the URL, which may hold a token.
        raise SessionError(f"the Spark Connect URL is malformed ({err.getCondition()}): write it as sc://HOST:PORT, "
                           "optionally followed by /;NAME=VALUE parameters") from None
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise SessionError(f"no Spark Connect server answers at {endpoint} ({err.strerror or err}): start it, "
                           "or correct --remote / SPARK_REMOTE") from None
    return endpoint


def _without_master(conf: Mapping[str, str] | None, master: str | None, *, chosen_by: str) -> dict[str, str]:
    """`conf` less `spark.master`, logging the configured master that `chosen_by` overrides."""
    conf = dict(conf or {})
    ignored = conf.pop("spark.master", None) or master
    if ignored:
        log.info("%s chose the master; the configured %s is not applied", chosen_by, ignored)
    return conf
