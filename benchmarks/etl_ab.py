"""A/B of ecominsight's Spark clean + fuse: one run of whichever `ecominsight` PYTHONPATH selects, or a
comparison of the lakes two such runs left behind.

    # a run (old, then new, interleaved on the same input, keeping each lake for the comparison)
    PYTHONPATH=/work/main .venv/bin/python benchmarks/etl_ab.py run --events 300000 --lake /tmp/ab/old-1 --label old
    PYTHONPATH=. .venv/bin/python benchmarks/etl_ab.py run --events 300000 --lake /tmp/ab/new-1 --label new
    # the outputs must be identical: counts per table and per quarantine reason, order-independent hashes
    PYTHONPATH=. .venv/bin/python benchmarks/etl_ab.py compare /tmp/ab/old-1 /tmp/ab/new-1

The input is benchmarks/etl.py's (`ecominsight generate`, seed 7, 0.1 % bad rows, Parquet, cached in
benchmarks/.cache). Timings of side-by-side runs on a shared machine are only comparable as ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import etl  # benchmarks/etl.py: benchmarks/ is the script's own folder, first on sys.path

# Lake tables the comparison hashes: every table clean and fuse write.
TABLES = (("clean", "events"), ("clean", "users"), ("clean", "items"), ("clean", "labels"), ("clean", "reviews"),
          ("quarantine", "events"), ("quarantine", "users"), ("quarantine", "items"), ("quarantine", "reviews"),
          ("features", "user_sequences"), ("features", "current_sequences"))
log = logging.getLogger("benchmarks.etl_ab")


def sql_profile(spark) -> list[dict[str, Any]]:
    """Per SQL execution (the stages run by adaptive execution are named after no call site, but
    their execution is): description, wall seconds and the executor seconds of its stages."""
    def get(path: str) -> Any:
        return etl.spark_rest(spark, path) or []

    stage_s = {s["stageId"]: s["executorRunTime"] / 1000 for s in get("stages?status=complete")}
    job_stages = {j["jobId"]: j["stageIds"] for j in get("jobs")}
    rows = []
    for execution in get("sql?details=false&length=10000"):
        jobs = [*execution.get("successJobIds", []), *execution.get("failedJobIds", [])]
        rows.append({"execution": execution["id"], "description": execution["description"][:90],
                     "wall_s": round(execution["duration"] / 1000, 2),
                     "executor_s": round(sum(stage_s.get(s, 0) for j in jobs for s in job_stages.get(j, [])), 2)})
    return rows


def run(events: int, lake: Path, label: str, output: Path | None) -> dict[str, Any]:
    """Clean + fuse of the cached synthetic input into `lake` (kept for `compare`)."""
    import ecominsight

    data = etl.synthetic_input(events)
    load_before = os.getloadavg()[0]
    with etl.benchmark_session() as spark:
        result = etl.run_spark(spark, str(data / "preset.yaml"), lake_dir=lake, overrides=["fuse.cutoff=null"])
        result["sql_profile"] = sql_profile(spark)
    result = {"label": label, "ecominsight": str(Path(ecominsight.__file__).parent), "events": events,
              "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)], **result}
    if output is not None:
        runs = json.loads(output.read_text()) if output.exists() else []
        output.write_text(json.dumps([*runs, result], indent=1))
    return result


def fingerprint(spark, lake: Path) -> dict[str, Any]:
    """Per table: rows, and an order-independent hash (sum and xor of a 64-bit hash of every column of
    each row); quarantine rows also per reason; the JSON reports of clean and fuse."""
    from pyspark.sql import functions as F

    from ecominsight.catalog import table as catalog_table
    from ecominsight.io import Lake

    store = Lake(str(lake))
    out: dict[str, Any] = {}
    for zone, table in TABLES:
        # Through the lake's manifest: a table's folder holds versions (v-<time>-<id>/), which a plain
        # Parquet read of the folder cannot take apart.
        entry_table = catalog_table(zone, table)  # with its partitioning
        if not store.exists(entry_table):
            out[f"{zone}/{table}"] = None
            continue
        files = store.current_files(entry_table)
        if not files:
            out[f"{zone}/{table}"] = {"rows": 0}
            continue
        frame = store.read(spark, entry_table)
        # Doubles are compared with a tolerance (`double_differences`): a sum's last bits follow the order of its rows.
        columns = sorted(c for c, kind in frame.dtypes if zone != "features" or kind != "double")
        kinds = dict(frame.dtypes)
        # Spark refuses to hash a map (equal maps may hash apart): its entries, sorted, stand for it.
        row_hash = F.xxhash64(*[F.array_sort(F.map_entries(F.col(f"`{c}`"))) if kinds[c].startswith("map<") else F.col(f"`{c}`")
                                for c in columns])
        row = frame.agg(F.count(F.lit(1)).alias("rows"), F.sum(row_hash.cast("decimal(38,0)")).alias("sum"),
                        F.bit_xor(row_hash).alias("xor")).first()
        entry = {"columns": columns, "rows": row["rows"], "sum": str(row["sum"]), "xor": row["xor"]}
        if zone == "quarantine":
            entry["by_reason"] = {r["reason"]: r["count"] for r in frame.groupBy("reason").count().collect()}
        if zone == "clean" and table == "events":
            entry["files"] = len(files)
        out[f"{zone}/{table}"] = entry
    reports = lake / "reports" / "bench"
    for name in ("clean.json", "data_quality.json", "fuse.json"):
        out[name] = json.loads((reports / name).read_text()) if (reports / name).exists() else None
    return out


def double_differences(spark, old: Path, new: Path, table: str) -> dict[str, Any]:
    """Per double column of a features table: users whose values differ by more than 1e-9 relative,
    and the largest relative difference."""
    from pyspark.sql import functions as F

    from ecominsight.catalog import table as catalog_table
    from ecominsight.io import Lake

    a, b = (Lake(str(lake)).read(spark, catalog_table("features", table)) for lake in (old, new))
    joined = a.alias("a").join(b.alias("b"), "user_id", "full")
    out = {}
    for name in [c for c, kind in a.dtypes if kind == "double"]:
        left, right = F.col(f"a.{name}"), F.col(f"b.{name}")
        relative = F.abs(left - right) / F.greatest(F.abs(left), F.abs(right), F.lit(1e-300))
        row = joined.agg(F.sum((relative > 1e-9).cast("int")).alias("over"), F.max(relative).alias("max"),
                         F.sum((left.isNull() != right.isNull()).cast("int")).alias("nulls")).first()
        out[name] = {"users_over_1e-9": row["over"], "max_relative": row["max"], "null_mismatch": row["nulls"]}
    return out


def compare(old: Path, new: Path) -> bool:
    """True when the two lakes hold the same rows; prints the differences otherwise."""
    from ecominsight.session import spark_session

    with spark_session("etl-ab-compare", "local[2]", {"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}) as spark:
        a, b = fingerprint(spark, old), fingerprint(spark, new)
        doubles = {table: double_differences(spark, old, new, table) for table in ("user_sequences", "current_sequences")}
    same = True
    for key in a:
        left, right = a[key], b[key]
        if key == "clean/events" and left and right:
            # How many files a partitioned write makes is layout, not content.
            print(f"{key}: files {left.pop('files')} (old) vs {right.pop('files')} (new)")
        if key == "clean.json" and left and right:
            left, right = {**left, "inputs": None}, {**right, "inputs": None}
        if left != right:
            same = False
            print(f"DIFFERENT {key}:\n  old {json.dumps(left, default=str)[:2000]}\n  new {json.dumps(right, default=str)[:2000]}")
        else:
            print(f"same {key}: {json.dumps({k: v for k, v in (left or {}).items() if k in ('rows', 'by_reason')})}")
    for table, columns in doubles.items():
        for name, diff in columns.items():
            if diff["users_over_1e-9"] or diff["null_mismatch"]:
                same = False
                print(f"DIFFERENT features/{table}.{name}: {diff}")
            elif diff["max_relative"]:
                print(f"features/{table}.{name}: equal within 1e-9 relative (largest {diff['max_relative']:.1e})")
    print("IDENTICAL (doubles within 1e-9 relative)" if same else "OUTPUTS DIFFER")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--events", type=int, default=300_000)
    one.add_argument("--lake", type=Path, required=True)
    one.add_argument("--label", default="run")
    one.add_argument("--output", type=Path, default=None, help="a JSON list to append the run's figures to")
    both = sub.add_parser("compare")
    both.add_argument("old", type=Path)
    both.add_argument("new", type=Path)
    args = parser.parse_args()
    from ecominsight.logs import setup_logging

    setup_logging(logging.WARNING)
    if args.command == "run":
        result = run(args.events, args.lake, args.label, args.output)
        print(json.dumps({k: v for k, v in result.items() if k not in ("spark_profile_top", "sql_profile")}, indent=1))
        for row in result["sql_profile"]:
            print(f"  {row['wall_s']:8.1f} s wall {row['executor_s']:8.1f} s executors  {row['description']}")
        for stage in result.get("spark_profile_top", []):
            print(f"  {stage['executor_run_s']:8.1f} s  {stage['stages']:3d} stages {stage['tasks']:4d} tasks  {stage['stage']}")
    else:
        sys.exit(0 if compare(args.old, args.new) else 1)


if __name__ == "__main__":
    main()
