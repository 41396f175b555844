"""The fuse stage alone on a lake that clean (or an `etl_ab.py run`) left, with its Spark profile: the
wall seconds of `stages.run_fuse`, then per SQL execution of a few seconds or more the plan nodes that
report time, rows or spill. For A/B runs of fuse changes without clean's minutes around them.

    # old and new code on copies of one lake, interleaved; the features they write are then compared
    PYTHONPATH=/work/main .venv/bin/python benchmarks/fuse_profile.py --lake /tmp/ab/old-10 \
        --preset benchmarks/.cache/synthetic-10000000-seed7/preset.yaml
    PYTHONPATH=. .venv/bin/python benchmarks/fuse_profile.py --lake /tmp/ab/new-10 --preset ...
    PYTHONPATH=. .venv/bin/python benchmarks/etl_ab.py compare /tmp/ab/old-10 /tmp/ab/new-10

Settings as benchmarks/etl.py runs them (`fuse.cutoff=null`, the events text encoding, its session).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import etl  # benchmarks/etl.py: benchmarks/ is the script's own folder, first on sys.path

SHOWN_METRICS = ("time", "number of output rows", "spill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, required=True, help="a lake with clean/* written")
    parser.add_argument("--preset", required=True, help="the source preset clean read (for its attribute kinds)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override, key=value")
    parser.add_argument("--min-execution-s", type=float, default=3.0, help="show executions at least this long")
    args = parser.parse_args()

    from ecominsight import stages
    from ecominsight.config import load_config
    from ecominsight.io import Lake

    config = load_config("local", [f"source.preset={args.preset}", f"lake={args.lake}", f"spark.master={etl.MASTER}",
                                   *etl.SPARK_OVERRIDES, "fuse.cutoff=null", *args.overrides])
    with etl.benchmark_session() as spark:
        started = time.perf_counter()
        stages.run_fuse(spark, config, Lake(config.lake_path), "fuse-profile")
        print(f"fuse_s {time.perf_counter() - started:.2f}")
        for execution in etl.spark_rest(spark, "sql?details=true&planDescription=false&length=1000") or []:
            if execution["duration"] < args.min_execution_s * 1000:
                continue
            print(f"== execution {execution['id']}: {execution['duration'] / 1000:.1f} s, {execution['description'][:60]}")
            for node in execution["nodes"]:
                shown = [f"{m['name']}={' '.join(m['value'].split())[:80]}" for m in node["metrics"]
                         if any(word in m["name"] for word in SHOWN_METRICS)]
                if shown:
                    print(f"   {node['nodeId']:>4} {node['nodeName'][:40]} | {'; '.join(shown)}")


if __name__ == "__main__":
    main()
