"""The warehouse: `register` puts every lake table of a real pipeline run into a Hive metastore that
outlives the session; the example queries of docs/warehouse.md give the same answers in Spark SQL
(through that metastore, in a fresh process) and in DuckDB (over the files); and a query for one
`score_date` reads only that partition."""

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
from ecominsight.catalog import USER_SCORES
from ecominsight.config import load_config
from ecominsight.io import Lake, read_json
from ecominsight.stages import run_score

REGISTERED_ZONES = ("scores", "insights")  # the default warehouse.zones

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "warehouse.md"
PAST_DAY = "2011-11-01"
PRUNED_QUERY = f"SELECT COUNT(*) AS users FROM ecominsight.scores_user_scores WHERE score_date = DATE'{PAST_DAY}'"


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
    Path(out_file).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def warehouse(pipeline_run, tmp_path_factory):
    spark, _, lake, summary = pipeline_run
    root = tmp_path_factory.mktemp("warehouse")
    copy = Lake(root / "lake")
    shutil.copytree(lake.root.path, copy.root.path, ignore=shutil.ignore_patterns("checkpoints", "_staging"))
    # A second, earlier score day, so that the queries have two days and the pruning test a partition
    # to skip; it is a new version of the table, which the other day's partition does not move to.
    # (Its features are as of the data's end: fine for exercising SQL, not for judging a model.)
    run_score(spark, load_config("local", [f"lake={copy.root}", f"score.score_date={PAST_DAY}"]), copy, "warehouse-past")
    register = subprocess.run(
        [sys.executable, "-m", "ecominsight", "register", "--set", f"lake={copy.root}", "--set", "run_id=warehouse",
         "--set", f"warehouse.embedded_metastore={root / 'metastore'}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert register.returncode == 0, register.stderr[-3000:]
    queries_file, out_file = root / "queries.json", root / "spark_results.json"
    queries_file.write_text(json.dumps(documented_queries()))
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_warehouse import query_in_fresh_session as q; q(*sys.argv[1:])",
         str(root / "metastore"), str(queries_file), str(out_file)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
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
    assert report["catalog"] == "hive"
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
