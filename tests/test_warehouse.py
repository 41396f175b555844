"""The warehouse: `register` puts every lake table of a real pipeline run into a Hive metastore that
outlives the session, and moves them in place after a later write (a comment and a property set on
them in between survive); the example queries of docs/warehouse.md give the same answers in Spark SQL
(through that metastore, in a fresh process) and in DuckDB (over the files); a query for one
`score_date` reads only that partition. The DDL for a catalog (Unity Catalog's three-level names) and
the refusal of a lake in a volume are checked as text, and run in Spark's in-memory catalog under
its one catalog name, `spark_catalog`."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ecominsight import catalog
from ecominsight.catalog import USER_SCORES, Table
from ecominsight.config import load_config
from ecominsight.errors import ConfigError, LakeError
from ecominsight.io import Lake, read_json
from ecominsight.stages import run_score
from ecominsight.stages.register import (added_columns, check_table_location, qualified_name, run_register,
                                         schema_ddl, table_ddl)

REGISTERED_ZONES = ("scores", "insights")  # the default warehouse.zones

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "warehouse.md"
PAST_DAY = "2011-11-01"
PRUNED_QUERY = f"SELECT COUNT(*) AS users FROM ecominsight.scores_user_scores WHERE score_date = DATE'{PAST_DAY}'"
# What an analyst sets on registered tables between two runs of register; it must survive the second.
ANNOTATED = {"scores_user_scores": "Daily purchase propensity per user", "insights_user_profiles": "One row per scored user"}


def documented_queries() -> dict[str, str]:
    """`<!-- query: name -->` followed by a ```sql block in docs/warehouse.md -> {name: sql}."""
    return dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S))


def _plain(value):
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, float)):
        return float(value)
    return value


def query_in_fresh_session(metastore: str, queries_file: str, out_file: str) -> None:
    """Run in a new Python process: a new Spark session on the embedded metastore only (no lake
    path given), so the tables must come from the metastore. Writes rows and scan metrics as JSON."""
    from ecominsight.session import spark_session

    # Without adaptive execution the executed plan is final, so the scan's metrics can be read off it.
    with spark_session("warehouse-test", "local[1]", {"spark.sql.adaptive.enabled": "false", "spark.ui.enabled": "false"},
                       embedded_metastore=metastore) as spark:
        queries = json.loads(Path(queries_file).read_text())
        result = {"rows": {name: [[_plain(v) for v in row] for row in spark.sql(sql).collect()] for name, sql in queries.items()}}
        pruned = spark.sql(PRUNED_QUERY)
        result["pruned_rows"] = pruned.collect()[0][0]
        leaves = pruned._jdf.queryExecution().executedPlan().collectLeaves()
        scans = [leaves.apply(i) for i in range(leaves.size())]
        result["scan_partitions_read"] = [scan.metrics().apply("numPartitions").value() for scan in scans
                                          if scan.metrics().contains("numPartitions")]
        result["partitions"] = [r[0] for r in spark.sql("SHOW PARTITIONS ecominsight.scores_user_scores").collect()]
        result["tables"] = sorted(r["tableName"] for r in spark.sql("SHOW TABLES IN ecominsight").collect())
        result["described"] = {name: {r[0]: r[1] for r in spark.sql(f"DESCRIBE TABLE EXTENDED ecominsight.{name}").collect()
                                      if r[0] in ("Comment", "Table Properties")} for name in ANNOTATED}
    Path(out_file).write_text(json.dumps(result))


def annotate_in_fresh_session(metastore: str) -> None:
    """Run in a new Python process: what a data steward does to registered tables (a comment, a property)."""
    from ecominsight.session import spark_session

    with spark_session("warehouse-annotate", "local[1]", {"spark.ui.enabled": "false"}, embedded_metastore=metastore) as spark:
        for name, comment in ANNOTATED.items():
            spark.sql(f"COMMENT ON TABLE ecominsight.{name} IS '{comment}'")
            spark.sql(f"ALTER TABLE ecominsight.{name} SET TBLPROPERTIES ('steward' = 'growth-team')")


def _register(lake: Lake, metastore: Path, run_id: str, *overrides: str) -> None:
    sets = [arg for value in (f"lake={lake.root}", f"run_id={run_id}", f"warehouse.embedded_metastore={metastore}",
                              *overrides) for arg in ("--set", value)]
    register = subprocess.run([sys.executable, "-m", "ecominsight", "register", *sets],
                              capture_output=True, text=True, cwd=REPO, timeout=600)
    assert register.returncode == 0, register.stderr[-3000:]


def _in_fresh_process(function: str, *args: str) -> None:
    run = subprocess.run([sys.executable, "-c", f"import sys; from tests.test_warehouse import {function} as f; f(*sys.argv[1:])",
                          *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def warehouse(pipeline_run, tmp_path_factory):
    spark, _, lake, summary = pipeline_run
    root = tmp_path_factory.mktemp("warehouse")
    copy = Lake(root / "lake")
    shutil.copytree(lake.root.path, copy.root.path, ignore=shutil.ignore_patterns("checkpoints", "_staging"))
    metastore = root / "metastore"
    _register(copy, metastore, "warehouse-first")
    _in_fresh_process("annotate_in_fresh_session", str(metastore))
    # A second, earlier score day, so that the queries have two days and the pruning test a partition
    # to skip; it is a new version of the table, which the other day's partition does not move to.
    # (Its features are as of the data's end: fine for exercising SQL, not for judging a model.)
    run_score(spark, load_config("local", [f"lake={copy.root}", f"score.score_date={PAST_DAY}"]), copy, "warehouse-past")
    # The second register names the catalog: the same tables, as `spark_catalog`.`ecominsight`.`…`.
    _register(copy, metastore, "warehouse", "warehouse.catalog=spark_catalog")
    queries_file, out_file = root / "queries.json", root / "spark_results.json"
    queries_file.write_text(json.dumps(documented_queries()))
    _in_fresh_process("query_in_fresh_session", str(metastore), str(queries_file), str(out_file))
    return copy, read_json(copy.report_dir("warehouse") / "register.json"), json.loads(out_file.read_text()), summary


def duckdb_over_lake(report: dict) -> duckdb.DuckDBPyConnection:
    """DuckDB views named like the registered tables, over the same current Parquet files: the
    statements `register` wrote into register.json."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA ecominsight")
    for entry in report["tables"].values():
        con.execute(entry["duckdb"])
    return con


def test_register_puts_every_lake_table_in_the_metastore(warehouse):
    lake, report, spark_results, _ = warehouse
    expected = {table.warehouse_name for zone in REGISTERED_ZONES for table in lake.tables(zone)}
    assert {"scores_user_scores", "scores_explanations", "insights_user_profiles", "insights_purchases"} <= expected
    # Zones with the source's raw user ids stay out of the warehouse unless asked for.
    assert not {name for name in spark_results["tables"] if name.startswith(("clean_", "features_", "quarantine_"))}
    # Seen from a new process through the metastore alone: the tables outlive the registering session.
    assert set(spark_results["tables"]) == set(report["tables"]) == expected
    assert (report["metastore"], report["catalog"], report["schema"]) == ("hive", "spark_catalog", "ecominsight")
    assert report["tables"]["scores_user_scores"]["name"] == "spark_catalog.ecominsight.scores_user_scores"
    assert report["tables"]["scores_user_scores"]["partitioned_by"] == ["score_date"]
    assert report["tables"]["insights_user_profiles"]["partitioned_by"] == []
    # Each registered table is the lake's current version: an unpartitioned one's LOCATION is the
    # version folder its manifest names; a partitioned one's days sit in several versions here.
    profiles = catalog.table("insights", "user_profiles")
    assert report["tables"]["insights_user_profiles"]["location"] == lake.current_locations(profiles)[""]
    assert report["tables"]["insights_user_profiles"]["location"].endswith(lake.version(profiles))
    scores = lake.manifest(USER_SCORES)
    assert len(set(scores["partitions"].values())) >= 2 and report["tables"]["scores_user_scores"]["partitions"] >= 2


def test_documented_queries_agree_between_spark_sql_and_duckdb(warehouse):
    lake, report, spark_results, summary = warehouse
    queries = documented_queries()
    assert set(queries) == {"top_decile_by_segment", "conversion_by_decile", "daily_score_drift"}
    con = duckdb_over_lake(report)
    for name, sql in queries.items():
        spark_rows = spark_results["rows"][name]
        duck_rows = [[_plain(v) for v in row] for row in con.execute(sql).fetchall()]
        assert spark_rows, f"{name} returned no rows"
        assert len(spark_rows) == len(duck_rows), name
        for spark_row, duck_row in zip(spark_rows, duck_rows):
            # ROUND(…, 4) may differ by one last unit between the engines (decimal vs double averages).
            assert spark_row == pytest.approx(duck_row, abs=1.5e-4), (name, spark_row, duck_row)
    n = summary["score"].users_scored
    drift = spark_results["rows"]["daily_score_drift"]
    assert [row[0] for row in drift] == sorted({PAST_DAY, summary["score"].score_date} | {row[0] for row in drift})
    assert all(row[1] == n for row in drift)
    # The past day has purchases in the 30 days after it, so its conversion is not all zeros.
    past = [row for row in spark_results["rows"]["conversion_by_decile"] if row[0] == PAST_DAY]
    assert len(past) == 10 and sum(row[2] for row in past) == n and max(row[3] for row in past) > 0
    top = spark_results["rows"]["top_decile_by_segment"]
    assert 0 < sum(row[1] for row in top) <= n


def test_a_query_for_one_score_date_reads_only_that_partition(warehouse):
    _, _, spark_results, summary = warehouse
    assert len(spark_results["partitions"]) >= 2 and f"score_date={PAST_DAY}" in spark_results["partitions"]
    assert spark_results["pruned_rows"] == summary["score"].users_scored
    assert spark_results["scan_partitions_read"] == [1]


def test_a_second_register_moves_the_tables_in_place_keeping_comments_and_properties(warehouse):
    """Between the two registers a steward commented the tables and a score run published a new day:
    the second register (no DROP) kept the comment and the property, and the new day is queried."""
    lake, report, spark_results, _ = warehouse
    for name, comment in ANNOTATED.items():
        assert spark_results["described"][name]["Comment"] == comment
        assert "steward=growth-team" in spark_results["described"][name]["Table Properties"]
    assert f"score_date={PAST_DAY}" in spark_results["partitions"]
    assert report["tables"]["scores_user_scores"]["version"] == lake.version(USER_SCORES)


# --- The DDL as text, and register in Spark's in-memory catalog (the suite's session) ---------------

PROBE = Table("scores", "probe", ("day",))
PLAIN = Table("insights", "plain_probe")


def test_names_are_three_level_with_a_catalog_and_quoted():
    assert qualified_name("main", "ecominsight", USER_SCORES) == "`main`.`ecominsight`.`scores_user_scores`"
    assert qualified_name(None, "ecominsight", USER_SCORES) == "`ecominsight`.`scores_user_scores`"
    assert schema_ddl("main", "ecominsight") == "CREATE SCHEMA IF NOT EXISTS `main`.`ecominsight`"
    assert schema_ddl(None, "ecominsight") == "CREATE SCHEMA IF NOT EXISTS `ecominsight`"


def test_the_ddl_creates_or_moves_in_place_and_never_drops_a_table():
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("day", T.DateType())])
    name = qualified_name("main", "ecominsight", PROBE)
    root = "s3://acme-lake/ecominsight/scores/probe/"
    locations = {"day=2024-01-02": root + "v-2/day=2024-01-02", "day=2024-01-03": root + "v-2/day=2024-01-03"}
    first = table_ddl(name, PROBE, locations, schema=schema, root=root, unity_catalog=True)
    assert first == [
        f"CREATE TABLE IF NOT EXISTS {name} (`user_id` string, `day` date) USING parquet PARTITIONED BY (`day`) "
        f"TBLPROPERTIES ('partitionMetadataEnabled' = 'true') LOCATION '{root}'",
        f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION (`day` = '2024-01-02') LOCATION '{root}v-2/day=2024-01-02' "
        f"PARTITION (`day` = '2024-01-03') LOCATION '{root}v-2/day=2024-01-03'"]
    # Registered before with days 01 and 02: 01 is gone from the lake, 02 moves, 03 is new.
    again = table_ddl(name, PROBE, locations, schema=schema, root=root,
                      registered_partitions=frozenset({"day=2024-01-01", "day=2024-01-02"}))
    assert again[1:] == [
        f"ALTER TABLE {name} DROP IF EXISTS PARTITION (`day` = '2024-01-01')",
        f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION (`day` = '2024-01-03') LOCATION '{root}v-2/day=2024-01-03'",
        f"ALTER TABLE {name} PARTITION (`day` = '2024-01-02') SET LOCATION '{root}v-2/day=2024-01-02'"]
    assert "TBLPROPERTIES" not in again[0]  # the partition log is Unity Catalog's
    plain = qualified_name("main", "ecominsight", PLAIN)
    assert table_ddl(plain, PLAIN, {"": "s3://acme-lake/ecominsight/insights/plain_probe/v-9"}, schema=schema, root="") == [
        f"CREATE TABLE IF NOT EXISTS {plain} (`user_id` string, `day` date) USING parquet "
        "LOCATION 's3://acme-lake/ecominsight/insights/plain_probe/v-9'",
        f"ALTER TABLE {plain} SET LOCATION 's3://acme-lake/ecominsight/insights/plain_probe/v-9'"]
    assert not [s for s in first + again if s.startswith(("DROP TABLE", "CREATE OR REPLACE"))]


def test_columns_the_lake_gained_are_added_and_changed_ones_refused():
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("probability", T.DoubleType()),
                           T.StructField("model_name", T.StringType())])
    added = added_columns([("user_id", "string"), ("probability", "double")], schema, PLAIN)
    assert [field.name for field in added.fields] == ["model_name"]
    with pytest.raises(LakeError, match=r"plain_probe no longer matches the lake's \(probability float -> double\); drop it"):
        added_columns([("user_id", "string"), ("probability", "float")], schema, PLAIN)
    with pytest.raises(LakeError, match=r"\(segment string -> removed\)"):
        added_columns([("user_id", "string"), ("segment", "string")], schema, PLAIN)


@pytest.mark.parametrize("lake", ["/Volumes/main/ecominsight/lake", "dbfs:/Volumes/main/ecominsight/lake",
                                  "file:///Volumes/main/ecominsight/lake", "/Volumes/main/ecominsight/lake/"])
def test_a_lake_in_a_volume_is_refused_for_a_catalog(lake):
    with pytest.raises(ConfigError) as err:
        check_table_location(lake, "main")
    message = str(err.value)
    assert "\n" not in message and "is in a Unity Catalog volume, where tables cannot live" in message
    assert "external location (s3://, abfss://, gs://)" in message and "set warehouse.tables=managed" in message
    check_table_location(lake, None)  # the session's catalog decides itself
    check_table_location(lake, "main", "managed")  # copies live in the catalog's own storage


@pytest.mark.parametrize("lake", ["s3://acme-lake/ecominsight", "abfss://lake@acme.dfs.core.windows.net/ecominsight",
                                  "gs://acme-lake/ecominsight", "/data/Volumes/lake", "dbfs:/mnt/lake"])
def test_a_lake_on_an_external_location_is_accepted_for_a_catalog(lake):
    check_table_location(lake, "main")


def test_register_refuses_a_volume_lake_before_any_ddl(spark, tmp_path):
    config = load_config("local", ["lake=/Volumes/main/ecominsight/lake", "warehouse.catalog=spark_catalog",
                                   "warehouse.schema=never_made"])
    with pytest.raises(ConfigError, match="Unity Catalog volume"):
        run_register(spark, config, Lake(tmp_path / "lake"), "refused")
    assert not spark.catalog.databaseExists("spark_catalog.never_made")


def test_register_in_place_in_the_sessions_catalog_keeps_comments_and_follows_new_versions(spark, tmp_path):
    """Spark's in-memory catalog, named as a catalog (`spark_catalog`): register, comment, write new
    versions (a day moves, a column is added), register again: the same tables with their comments,
    over the new data."""
    from pyspark.sql import functions as F

    lake = Lake(tmp_path / "lake", retain_versions_minutes=60)
    config = load_config("local", [f"lake={lake.root}", "warehouse.catalog=spark_catalog", "warehouse.schema=uc_probe",
                                   "warehouse.zones=[scores,insights]"])
    rows = spark.range(20).select(F.col("id").cast("string").alias("user_id"), F.lit("v1").alias("tag"),
                                  F.expr("date_add(date'2024-01-01', cast(id % 2 as int))").alias("day"))
    lake.write(rows, PROBE)
    lake.write(rows.drop("day"), PLAIN)
    first = run_register(spark, config, lake, "uc-1")
    assert first.tables["scores_probe"]["name"] == "spark_catalog.uc_probe.scores_probe"
    for name in ("scores_probe", "insights_plain_probe"):
        spark.sql(f"COMMENT ON TABLE spark_catalog.uc_probe.{name} IS 'kept: {name}'")
        spark.sql(f"ALTER TABLE spark_catalog.uc_probe.{name} SET TBLPROPERTIES ('steward' = 'growth-team')")

    lake.write(rows.where("day = date'2024-01-02'").withColumn("tag", F.lit("v2")), PROBE)
    lake.write(rows.drop("day").withColumn("tag", F.lit("v2")).withColumn("extra", F.lit(1.5)), PLAIN)
    run_register(spark, config, lake, "uc-2")

    by_day = spark.table("spark_catalog.uc_probe.scores_probe").groupBy("day", "tag").count().collect()
    assert {(str(r["day"]), r["tag"]): r["count"] for r in by_day} == {("2024-01-01", "v1"): 10, ("2024-01-02", "v2"): 10}
    plain = spark.table("spark_catalog.uc_probe.insights_plain_probe")
    assert plain.columns == ["user_id", "tag", "extra"]
    assert {(r["tag"], r["extra"]) for r in plain.collect()} == {("v2", 1.5)}
    for name in ("scores_probe", "insights_plain_probe"):
        described = {r[0]: r[1] for r in spark.sql(f"DESCRIBE TABLE EXTENDED spark_catalog.uc_probe.{name}").collect()}
        assert described["Comment"] == f"kept: {name}" and "steward=growth-team" in described["Table Properties"]
    assert "partitionMetadataEnabled=true" in {r[0]: r[1] for r in spark.sql(
        "DESCRIBE TABLE EXTENDED spark_catalog.uc_probe.scores_probe").collect()}["Table Properties"]
    with pytest.raises(LakeError, match=r"spark_catalog.uc_probe.scores_probe is an external table and "
                                        r"warehouse.tables=managed: drop it yourself"):
        run_register(spark, load_config("local", [f"lake={lake.root}", "warehouse.catalog=spark_catalog", "warehouse.schema=uc_probe",
                                                  "warehouse.zones=[scores]", "warehouse.tables=managed"]), lake, "uc-3")
    spark.sql("DROP DATABASE spark_catalog.uc_probe CASCADE")


def test_managed_copies_follow_the_lake_in_place_and_copy_nothing_new_twice(spark, tmp_path):
    """warehouse.tables=managed over a lake in a volume (the serverless job's register): managed tables
    holding the current versions; comments and properties survive a refresh; a register with nothing
    new copies nothing; a refresh replaces every row, even a partition the lake lacks, in a session set
    to dynamic partition overwrite (and leaves that setting as it was)."""
    from pyspark.sql import functions as F

    lake = Lake(tmp_path / "lake", retain_versions_minutes=60)
    config = load_config("local", ["lake=/Volumes/main/ecominsight/lake", "warehouse.catalog=spark_catalog",
                                   "warehouse.schema=copy_probe", "warehouse.zones=[scores,insights]",
                                   "warehouse.tables=managed"])
    # The schema's folder under tmp_path, so the managed tables' files go there (not ./spark-warehouse).
    spark.sql(f"CREATE SCHEMA spark_catalog.copy_probe LOCATION '{(tmp_path / 'copies').as_uri()}'")
    rows = spark.range(20).select(F.col("id").cast("string").alias("user_id"), F.lit("v1").alias("tag"),
                                  F.expr("date_add(date'2024-01-01', cast(id % 2 as int))").alias("day"))
    lake.write(rows, PROBE)
    lake.write(rows.drop("day"), PLAIN)
    first = run_register(spark, config, lake, "copy-1")
    assert {name: (entry["kind"], entry["location"], entry["copied"]) for name, entry in first.tables.items()} == {
        "scores_probe": ("managed", None, True), "insights_plain_probe": ("managed", None, True)}
    for name in ("scores_probe", "insights_plain_probe"):
        described = {r[0]: r[1] for r in spark.sql(f"DESCRIBE TABLE EXTENDED spark_catalog.copy_probe.{name}").collect()}
        assert described["Type"] == "MANAGED" and described["Location"].startswith(f"file:{tmp_path / 'copies'}/")
        spark.sql(f"COMMENT ON TABLE spark_catalog.copy_probe.{name} IS 'kept: {name}'")
    assert sorted(spark.table("spark_catalog.copy_probe.scores_probe").collect()) == sorted(lake.read(spark, PROBE).collect())

    again = run_register(spark, config, lake, "copy-2")
    assert {entry["copied"] for entry in again.tables.values()} == {False}

    # A row of a day the lake never had (an analyst's insert): a copy of the lake has no place for it.
    spark.sql("INSERT INTO spark_catalog.copy_probe.scores_probe VALUES ('stray', 'v0', date'2023-12-31')")
    lake.write(rows.where("day = date'2024-01-02'").withColumn("tag", F.lit("v2")), PROBE)
    lake.write(rows.drop("day").withColumn("tag", F.lit("v2")).withColumn("extra", F.lit(1.5)), PLAIN)
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"  # the session helper's
    third = run_register(spark, config, lake, "copy-3")
    assert {entry["copied"] for entry in third.tables.values()} == {True}
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"

    by_day = spark.table("spark_catalog.copy_probe.scores_probe").groupBy("day", "tag").count().collect()
    assert {(str(r["day"]), r["tag"]): r["count"] for r in by_day} == {("2024-01-01", "v1"): 10, ("2024-01-02", "v2"): 10}
    plain = spark.table("spark_catalog.copy_probe.insights_plain_probe")
    assert plain.columns == ["user_id", "tag", "extra"]
    assert {(r["tag"], r["extra"]) for r in plain.collect()} == {("v2", 1.5)}
    for name in ("scores_probe", "insights_plain_probe"):
        described = {r[0]: r[1] for r in spark.sql(f"DESCRIBE TABLE EXTENDED spark_catalog.copy_probe.{name}").collect()}
        assert described["Comment"] == f"kept: {name}"
        assert f"ecominsight.lake_version={third.tables[name]['version']}" in described["Table Properties"]
    # The same tables as the other kind: refused before anything is written (into the lake, or over a copy).
    with pytest.raises(LakeError, match=r"spark_catalog.copy_probe.scores_probe is a managed table and "
                                        r"warehouse.tables=external: drop it yourself"):
        run_register(spark, load_config("local", [f"lake={lake.root}", "warehouse.catalog=spark_catalog",
                                                  "warehouse.schema=copy_probe", "warehouse.zones=[scores]"]), lake, "copy-4")
    spark.sql("DROP DATABASE spark_catalog.copy_probe CASCADE")
