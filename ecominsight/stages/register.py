"""register: every lake table of `warehouse.zones` -> an external Parquet table `<database>.<zone>_<table>`
in the session's metastore, partitions recovered, so that a warehouse (Spark SQL, Databricks SQL, Hive)
queries it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pyspark.sql import SparkSession

from ecominsight.catalog import Table
from ecominsight.config import Config
from ecominsight.errors import LakeError
from ecominsight.io import Lake
from ecominsight.stages.base import StageResult

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegisterResult(StageResult):
    database: str
    catalog: str  # the session's catalog implementation: hive, in-memory, ...
    tables: dict[str, dict[str, Any]]  # metastore name -> location and partition columns


def qualified_name(database: str, table: Table) -> str:
    """`database`.`<zone>_<table>`, quoted for Spark SQL."""
    return f"`{database}`.`{table.warehouse_name}`"


def table_ddl(database: str, table: Table, location: str) -> list[str]:
    """The statements that (re)create `table` as an external Parquet table at `location`.

    Dropped and re-created on each run (external: the data stays), so a registered schema never lags
    behind the lake's; the lake stays the source of truth."""
    name = qualified_name(database, table)
    return [f"DROP TABLE IF EXISTS {name}", f"CREATE TABLE {name} USING parquet LOCATION '{location}'"]


def run_register(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> RegisterResult:
    """The lake's tables of `warehouse.zones` (by default the pseudonymised outputs: scores, insights)
    -> external tables in `warehouse.database`; reports/<run_id>/register.json."""
    database = config.warehouse.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    registered: dict[str, dict[str, Any]] = {}
    for zone in config.warehouse.zones:
        for table in lake.tables(zone):
            location = lake.table_uri(table)
            for statement in table_ddl(database, table, location):
                spark.sql(statement)
            partitions = [c.name for c in spark.catalog.listColumns(table.warehouse_name, database) if c.isPartition]
            if partitions:
                # The metastore tracks partitions of a partitioned table itself; add the ones on disk.
                spark.sql(f"ALTER TABLE {qualified_name(database, table)} RECOVER PARTITIONS")
            registered[table.warehouse_name] = {"location": location, "partitioned_by": partitions}
    if not registered:
        raise LakeError(f"the lake at {lake.root} holds no tables to register; run the pipeline first")
    catalog = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    if catalog != "hive":
        log.warning("register: the session's catalog is %r, so the tables live only as long as this session; "
                    "set warehouse.embedded_metastore or run where a metastore is configured", catalog)
    result = RegisterResult(database=database, catalog=catalog, tables=registered)
    result.write(lake, run_id, "register")
    log.info("register: %d tables in %s (%s catalog): %s", len(registered), database, catalog, ", ".join(registered))
    return result
