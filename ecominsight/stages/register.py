"""register: every lake table of `warehouse.zones` -> an external Parquet table `<database>.<zone>_<table>`
in the session's metastore over the table's current version (as its manifest names it), so that a
warehouse (Spark SQL, Databricks SQL, Hive) queries it. Re-run after each write: the pipeline's
stages publish new versions, and `register` moves the tables to them."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from urllib.parse import unquote

from pyspark.sql import SparkSession
from pyspark.sql import types as T

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


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _partition_spec(part: str) -> str:
    """`score_date=2024-01-01` (a partition folder, values escaped as Spark escapes them) ->
    `score_date = '2024-01-01'` for a PARTITION clause."""
    pairs = [segment.split("=", 1) for segment in part.split("/")]
    return ", ".join(f"`{column}` = {_sql_string(unquote(value))}" for column, value in pairs)


def table_ddl(database: str, table: Table, locations: dict[str, str], *, schema: T.StructType | None = None,
              root: str | None = None) -> list[str]:
    """The statements that (re)create `table` as an external Parquet table over its current version.

    `locations`: Lake.current_locations. Unpartitioned: LOCATION is the current version folder.
    Partitioned: a table over the table's `root` with the columns of `schema`, each partition's
    LOCATION set to its folder in the version that holds it (ALTER TABLE ... ADD PARTITION ...
    LOCATION), so the catalog, not a directory listing, says which files are current.
    Dropped and re-created on each run (external: the data stays), so a registered table never lags
    behind the lake's manifest; the lake stays the source of truth."""
    name = qualified_name(database, table)
    statements = [f"DROP TABLE IF EXISTS {name}"]
    if not table.partition_by:
        return [*statements, f"CREATE TABLE {name} USING parquet LOCATION {_sql_string(locations[''])}"]
    if schema is None or root is None:
        raise ValueError(f"{table} is partitioned: its schema and root are needed")
    columns = ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in schema.fields)
    partition_by = ", ".join(f"`{column}`" for column in table.partition_by)
    statements.append(f"CREATE TABLE {name} ({columns}) USING parquet PARTITIONED BY ({partition_by}) "
                      f"LOCATION {_sql_string(root)}")
    if locations:
        added = " ".join(f"PARTITION ({_partition_spec(part)}) LOCATION {_sql_string(location)}"
                         for part, location in sorted(locations.items()))
        statements.append(f"ALTER TABLE {name} ADD IF NOT EXISTS {added}")
    return statements


def duckdb_view(database: str, table: Table, files: list[str]) -> str:
    """A DuckDB view over the table's current files (Lake.current_files): partition columns come
    from the `key=value` folders in their paths. Named like the registered table."""
    listed = ", ".join(_sql_string(file) for file in files)
    return (f"CREATE OR REPLACE VIEW {database}.{table.warehouse_name} AS SELECT * FROM "
            f"read_parquet([{listed}], hive_partitioning = true)")


def run_register(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> RegisterResult:
    """The lake's tables of `warehouse.zones` (by default the pseudonymised outputs: scores, insights)
    -> external tables in `warehouse.database` over each table's current version;
    reports/<run_id>/register.json (with a DuckDB view per table over the same files)."""
    database = config.warehouse.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    registered: dict[str, dict[str, Any]] = {}
    for zone in config.warehouse.zones:
        for table in lake.tables(zone):
            locations = lake.current_locations(table)
            for statement in table_ddl(database, table, locations, schema=lake.schema(table),
                                       root=lake.table_uri(table)):
                spark.sql(statement)
            partitions = [c.name for c in spark.catalog.listColumns(f"{database}.{table.warehouse_name}") if c.isPartition]
            files = [file.path if file.is_local else file.uri.replace("s3a://", "s3://", 1)
                     for file in lake.current_files(table)]
            registered[table.warehouse_name] = {
                "location": locations[""] if "" in locations else lake.table_uri(table), "version": lake.version(table),
                "partitioned_by": partitions, "partitions": len(locations) if partitions else None,
                "duckdb": duckdb_view(database, table, files)}
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
