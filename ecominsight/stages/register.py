"""register: every lake table of `warehouse.zones` -> a table `[<catalog>.]<schema>.<zone>_<table>` in
the session's metastore (Hive metastore, Unity Catalog), so that a warehouse (Spark SQL, Databricks
SQL, Hive) queries it. Re-run after each write: the pipeline's stages publish new versions, and
`register` follows them in place, never with DROP TABLE, so grants and comments stay.

Two kinds (`warehouse.tables`): `external` (the default) creates Parquet tables over the table's current
version, as its manifest names it, and moves them with ALTER TABLE ... SET LOCATION (Spark's session
catalog has no CREATE OR REPLACE for such tables, and a replace would reset comments and properties
anyway); `managed` copies the current version into tables the catalog stores itself (INSERT
OVERWRITE, in the session's default format: Delta on Databricks), for a lake where no table may live,
such as a Unity Catalog volume."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from ecominsight.catalog import Table
from ecominsight.config import Config
from ecominsight.errors import ConfigError, LakeError
from ecominsight.io import Lake
from ecominsight.schema import sql_string
from ecominsight.stages.base import StageResult

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegisterResult(StageResult):
    catalog: str | None  # warehouse.catalog; None: the session's current catalog
    schema: str
    metastore: str  # the session's catalog implementation: hive, in-memory, ...
    tables: dict[str, dict[str, Any]]  # table name -> kind, location, source, version, partitions, DuckDB view


# Unity Catalog keeps table locations out of volumes (a volume's path may hold no table), so a lake
# under one can be read and written but not registered there.
_VOLUME_ROOT = "/Volumes/"


def is_volume_uri(lake_uri: str) -> bool:
    """Whether the lake is in a Unity Catalog volume (`/Volumes/...`, `dbfs:/Volumes/...`, `file:///Volumes/...`)."""
    parts = urlsplit(lake_uri)
    return parts.scheme.lower() in ("", "file", "dbfs") and (parts.path + "/").startswith(_VOLUME_ROOT)


def check_table_location(lake_uri: str, catalog: str | None, tables: str = "external") -> None:
    """Refuse (ConfigError) to register external Unity Catalog tables over a lake in a volume: UC
    refuses a table location there, after part of the tables were made. Managed tables (copies) are
    fine anywhere."""
    if catalog is None or tables == "managed" or not is_volume_uri(lake_uri):
        return
    raise ConfigError(f"warehouse.catalog={catalog}: the lake {lake_uri} is in a Unity Catalog volume, where "
                      "tables cannot live; set warehouse.tables=managed (register copies the tables into the "
                      "catalog) or put the lake on an external location (s3://, abfss://, gs://)")


def qualified_name(catalog: str | None, schema: str, table: Table) -> str:
    """`catalog`.`schema`.`<zone>_<table>` (`schema`.`<zone>_<table>` without a catalog), quoted for Spark SQL."""
    return ".".join(f"`{part}`" for part in (catalog, schema, table.warehouse_name) if part is not None)


def schema_ddl(catalog: str | None, schema: str) -> str:
    """The statement that creates the schema (database) of the registered tables where it is missing."""
    return "CREATE SCHEMA IF NOT EXISTS " + ".".join(f"`{part}`" for part in (catalog, schema) if part is not None)


def _partition_spec(part: str) -> str:
    """`score_date=2024-01-01` (a partition folder, values escaped as Spark escapes them) ->
    `score_date = '2024-01-01'` for a PARTITION clause."""
    pairs = [segment.split("=", 1) for segment in part.split("/")]
    return ", ".join(f"`{column}` = {sql_string(unquote(value))}" for column, value in pairs)


def _columns(schema: T.StructType) -> str:
    return ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in schema.fields)


def added_columns(registered: list[tuple[str, str]], schema: T.StructType, table: Table) -> T.StructType:
    """The lake's columns that the registered table lacks (`registered`: its (name, type) pairs, as
    `spark.catalog.listColumns` gives them), to add in place; LakeError where a registered column was
    removed or changed its type, which no ALTER of an external Parquet table can follow."""
    wanted = {field.name: field.dataType.simpleString() for field in schema.fields}
    changed = [f"{name} {kind} -> {wanted.get(name, 'removed')}" for name, kind in registered if wanted.get(name) != kind]
    if changed:
        raise LakeError(f"the registered table {table.warehouse_name} no longer matches the lake's ({', '.join(changed)}); "
                        "drop it yourself (its grants and comments go with it) and run register again")
    known = {name for name, _ in registered}
    return T.StructType([field for field in schema.fields if field.name not in known])


def table_ddl(name: str, table: Table, locations: dict[str, str], *, schema: T.StructType, root: str,
              registered_partitions: frozenset[str] | None = None, unity_catalog: bool = False) -> list[str]:
    """The statements that create `table` (named `name`) as an external Parquet table over its current
    version, or move the existing one there in place: never a DROP TABLE, so its grants, comments and
    properties stay.

    `locations`: Lake.current_locations. Unpartitioned: LOCATION is the current version folder.
    Partitioned: a table over the table's `root`, each partition's LOCATION its folder in the version
    that holds it, so the catalog, not a directory listing, says which files are current.
    `registered_partitions`: the partitions the table has now (SHOW PARTITIONS; None where it is new):
    those still current move with PARTITION ... SET LOCATION, those gone from the lake are unregistered
    (their files are the lake's to remove). `unity_catalog`: a partitioned table gets UC's partition
    metadata log (`partitionMetadataEnabled`), without which UC lists the folders instead."""
    if not table.partition_by:
        location = sql_string(locations[""])
        return [f"CREATE TABLE IF NOT EXISTS {name} ({_columns(schema)}) USING parquet LOCATION {location}",
                f"ALTER TABLE {name} SET LOCATION {location}"]
    partition_by = ", ".join(f"`{column}`" for column in table.partition_by)
    properties = " TBLPROPERTIES ('partitionMetadataEnabled' = 'true')" if unity_catalog else ""
    statements = [f"CREATE TABLE IF NOT EXISTS {name} ({_columns(schema)}) USING parquet PARTITIONED BY ({partition_by})"
                  f"{properties} LOCATION {sql_string(root)}"]
    registered = registered_partitions or frozenset()
    gone = sorted(registered - set(locations))
    if gone:
        statements.append(f"ALTER TABLE {name} DROP IF EXISTS " + ", ".join(f"PARTITION ({_partition_spec(part)})" for part in gone))
    new = sorted(set(locations) - registered)
    if new:
        statements.append(f"ALTER TABLE {name} ADD IF NOT EXISTS " + " ".join(
            f"PARTITION ({_partition_spec(part)}) LOCATION {sql_string(locations[part])}" for part in new))
    statements += [f"ALTER TABLE {name} PARTITION ({_partition_spec(part)}) SET LOCATION {sql_string(locations[part])}"
                   for part in sorted(set(locations) & registered)]
    return statements


def duckdb_view(schema: str, table: Table, files: list[str]) -> str:
    """A DuckDB view over the table's current files (Lake.current_files): partition columns come
    from the `key=value` folders in their paths. Named like the registered table, without its catalog."""
    listed = ", ".join(sql_string(file) for file in files)
    return (f"CREATE OR REPLACE VIEW {schema}.{table.warehouse_name} AS SELECT * FROM "
            f"read_parquet([{listed}], hive_partitioning = true)")


@dataclasses.dataclass(frozen=True)
class _Published:
    """What one lake table's manifest says now, read once per table and register run."""

    locations: dict[str, str]  # Lake.current_locations
    schema: T.StructType
    version: str

    @classmethod
    def of(cls, lake: Lake, table: Table) -> "_Published":
        return cls(lake.current_locations(table), lake.schema(table), lake.version(table))


def _register_table(spark: SparkSession, name: str, table: Table, lake: Lake, current: _Published, *,
                    exists: bool, unity_catalog: bool) -> None:
    """Create or move one registered table in place (table_ddl), adding the columns the lake gained."""
    locations, schema = current.locations, current.schema
    registered_partitions = None
    if exists:
        columns = [(c.name, c.dataType) for c in spark.catalog.listColumns(name)]
        added = added_columns(columns, schema, table)
        if added.fields:
            # Before the move: the new version's files hold the columns, the old one's read them as null.
            spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({_columns(added)})")
        if table.partition_by:
            registered_partitions = frozenset(row[0] for row in spark.sql(f"SHOW PARTITIONS {name}").collect())
    for statement in table_ddl(name, table, locations, schema=schema, root=lake.table_uri(table),
                               registered_partitions=registered_partitions, unity_catalog=unity_catalog):
        spark.sql(statement)
    log.info("register: %s %s at version %s", "moved" if exists else "created", name, current.version)


# Table properties of a managed copy: what it holds, so that a register with nothing new copies nothing.
LAKE_STATE_PROPERTY = "ecominsight.lake_state"
LAKE_VERSION_PROPERTY = "ecominsight.lake_version"


def lake_state(locations: dict[str, str]) -> str:
    """A short fingerprint of a table's current data (Lake.current_locations: every version folder it
    reads), which changes whenever any partition moves to a new version."""
    return hashlib.sha256(json.dumps(locations, sort_keys=True).encode()).hexdigest()[:16]


def managed_table_ddl(name: str, table: Table, *, schema: T.StructType, table_format: str) -> str:
    """The statement that creates `table` (named `name`) as a managed table of `table_format` (the
    session's default: delta on Databricks, parquet in plain Spark) where it does not exist yet."""
    partitioned = (" PARTITIONED BY (" + ", ".join(f"`{column}`" for column in table.partition_by) + ")"
                   if table.partition_by else "")
    return f"CREATE TABLE IF NOT EXISTS {name} ({_columns(schema)}) USING {table_format}{partitioned}"


@contextlib.contextmanager
def _static_partition_overwrite(spark: SparkSession) -> Iterator[None]:
    """An INSERT OVERWRITE inside replaces the whole table, as a copy of the lake must (a partition the
    lake no longer has goes too), even in a session set to dynamic partition overwrite; the session's
    setting comes back afterwards."""
    key = "spark.sql.sources.partitionOverwriteMode"
    before = spark.conf.get(key, "static")
    if before.lower() != "static":
        spark.conf.set(key, "static")
    try:
        yield
    finally:
        if before.lower() != "static":
            spark.conf.set(key, before)


def _copy_into_managed_table(spark: SparkSession, name: str, table: Table, lake: Lake, current: _Published, *,
                             exists: bool) -> bool:
    """Create the managed table `name` where missing (adding the columns the lake gained where not) and
    replace its rows with the lake table's current version, unless it holds that version already.
    Output: whether rows were copied."""
    schema, state = current.schema, lake_state(current.locations)
    if exists:
        added = added_columns([(c.name, c.dataType) for c in spark.catalog.listColumns(name)], schema, table)
        if added.fields:
            spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({_columns(added)})")
        properties = {row[0]: row[1] for row in spark.sql(f"SHOW TBLPROPERTIES {name}").collect()}
        if properties.get(LAKE_STATE_PROPERTY) == state:
            log.info("register: %s already holds version %s", name, current.version)
            return False
    else:
        table_format = spark.conf.get("spark.sql.sources.default", "parquet")
        spark.sql(managed_table_ddl(name, table, schema=schema, table_format=table_format))
    # insertInto matches by position: the table's column order (partition columns last, as in the lake).
    columns = [c.name for c in spark.catalog.listColumns(name)]
    with _static_partition_overwrite(spark):
        lake.read(spark, table).select(*columns).write.insertInto(name, overwrite=True)
    spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ({sql_string(LAKE_STATE_PROPERTY)} = {sql_string(state)}, "
              f"{sql_string(LAKE_VERSION_PROPERTY)} = {sql_string(current.version)})")
    log.info("register: %s %s with version %s", "refreshed" if exists else "created", name, current.version)
    return True


def check_existing_kind(spark: SparkSession, name: str, kind: str) -> bool:
    """Whether `name` exists; LakeError where it exists as the other kind of table: a copy written into
    an external table would land inside the lake's version folders, and a managed table moved to the
    lake would have its copy removed with it."""
    if not spark.catalog.tableExists(name):
        return False
    found = (spark.catalog.getTable(name.replace("`", "")).tableType or "").upper()
    wanted = "MANAGED" if kind == "managed" else "EXTERNAL"
    if found in ("MANAGED", "EXTERNAL") and found != wanted:
        article = "an" if found == "EXTERNAL" else "a"
        raise LakeError(f"{name.replace('`', '')} is {article} {found.lower()} table and warehouse.tables={kind}: drop it yourself "
                        "(its grants and comments go with it) or register into another warehouse.schema")
    return True


def run_register(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> RegisterResult:
    """The lake's tables of `warehouse.zones` (by default the pseudonymised outputs: scores, insights)
    -> external tables in `warehouse.catalog`.`warehouse.schema` over each table's current version,
    created or moved in place; reports/<run_id>/register.json (with a DuckDB view per table over the
    same files). ConfigError before any DDL for an external Unity Catalog table over a lake in a volume."""
    catalog, schema, kind = config.warehouse.catalog, config.warehouse.schema, config.warehouse.tables
    check_table_location(config.lake_path, catalog, kind)
    tables = [table for zone in config.warehouse.zones for table in lake.tables(zone)]
    if not tables:
        raise LakeError(f"the lake at {lake.root} holds no tables to register; run the pipeline first")
    spark.sql(schema_ddl(catalog, schema))
    registered: dict[str, dict[str, Any]] = {}
    for table in tables:
        name = qualified_name(catalog, schema, table)
        exists = check_existing_kind(spark, name, kind)
        current = _Published.of(lake, table)
        copied = None
        if kind == "managed":
            copied = _copy_into_managed_table(spark, name, table, lake, current, exists=exists)
        else:
            _register_table(spark, name, table, lake, current, exists=exists, unity_catalog=catalog is not None)
        locations = current.locations
        partitions = [c.name for c in spark.catalog.listColumns(name) if c.isPartition]
        files = [file.path if file.is_local else file.uri.replace("s3a://", "s3://", 1)
                 for file in lake.current_files(table)]
        registered[table.warehouse_name] = {
            "name": name.replace("`", ""), "kind": kind,
            # managed: the catalog's own storage holds a copy of this lake table
            "location": None if kind == "managed" else locations[""] if "" in locations else lake.table_uri(table),
            "source": lake.table_uri(table), "version": current.version,
            **({"copied": copied} if copied is not None else {}),
            "partitioned_by": partitions, "partitions": len(locations) if partitions else None,
            "duckdb": duckdb_view(schema, table, files)}
    metastore = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    if metastore != "hive":
        log.warning("register: the session's catalog is %r, so the tables live only as long as this session; "
                    "set warehouse.embedded_metastore or run where a metastore is configured", metastore)
    result = RegisterResult(catalog=catalog, schema=schema, metastore=metastore, tables=registered)
    result.write(lake, run_id, "register")
    log.info("register: %d tables in %s: %s", len(registered), schema_ddl(catalog, schema).rsplit(" ", 1)[-1],
             ", ".join(registered))
    return result
