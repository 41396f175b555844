"""README command 1 (`./submit.sh pipeline`) end to end from a warm .venv, with and without the
first-run settings of issue 19 item 4, interleaved so that both see the same machine.

    .venv/bin/python benchmarks/first_run.py --rounds 2

Each round runs every variant once, in turn, on a fresh lake under --work:
- `current`: the code's defaults;
- `before`: the settings those defaults replaced: the baselines fit before the transformer rather than
  while it trains (`train.concurrent_baselines=false`), and a read of more than 32 folders lists them
  in a Spark job of one task per folder (Spark's default listing threshold; conf/local.yaml raises it).

Per run: the wall time of the command, the load average before and after, when each stage's report was
written (seconds from the start: session start included in the first), each model's fit seconds from
train.json, and the row count of every table in the lake (pyarrow, no Spark). The variants must give
the same tables with the same row counts; `same_rows` says whether they did. Results go to
benchmarks/results/first_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from ecominsight.catalog import TABLE_ZONES
from ecominsight.io import Lake, read_json

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "first_run.json"
STAGES = ("clean", "fuse", "train", "score", "insights")
VARIANTS = {
    "current": [],
    "before": ["train.concurrent_baselines=false", "spark.conf.spark.sql.sources.parallelPartitionDiscovery.threshold=32"],
}


def row_counts(lake: Lake) -> dict[str, int]:
    """Rows of every published table of the lake, by `zone/name`."""
    return {str(table): lake.read_arrow(table).num_rows for zone in TABLE_ZONES for table in lake.tables(zone)}


def one_run(variant: str, lake_dir: Path, log_file: Path) -> dict[str, Any]:
    """Command 1 on a fresh lake with the variant's overrides: its timings and the lake's row counts."""
    shutil.rmtree(lake_dir, ignore_errors=True)
    command = ["./submit.sh", "pipeline", "--set", f"lake={lake_dir}"]
    for setting in VARIANTS[variant]:
        command += ["--set", setting]
    load_before = os.getloadavg()
    started_at, clock = time.time(), time.perf_counter()
    with log_file.open("w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - clock
    lake = Lake(str(lake_dir))
    (reports,) = [path for path in (lake_dir / "reports").iterdir() if path.is_dir()]
    train = read_json(reports / "train.json")
    return {
        "variant": variant,
        "command": " ".join(command),
        "wall_s": round(wall, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "stage_report_written_s": {stage: round((reports / f"{stage}.json").stat().st_mtime - started_at, 1)
                                   for stage in STAGES},
        "fit_s": {name: train[name]["cost"]["fit_seconds"] for name in train["model_dirs"]},
        "champion": train["champion"]["model"],
        "rows": row_counts(lake),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ecominsight-first-run"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for round_no in range(1, args.rounds + 1):
        for variant in VARIANTS:
            run = one_run(variant, args.work / f"{variant}-{round_no}", args.work / f"{variant}-{round_no}.log")
            runs.append({"round": round_no, **run})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "rows"}), flush=True)
    walls = {variant: [run["wall_s"] for run in runs if run["variant"] == variant] for variant in VARIANTS}
    result = {
        "command": f".venv/bin/python benchmarks/first_run.py --rounds {args.rounds}",
        "machine": {"cores": os.cpu_count()},
        "variants": VARIANTS,
        "runs": runs,
        "median_wall_s": {variant: statistics.median(values) for variant, values in walls.items()},
        "current_over_before": round(statistics.median(walls["current"]) / statistics.median(walls["before"]), 3),
        "same_rows": all(run["rows"] == runs[0]["rows"] for run in runs),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_wall_s", "current_over_before", "same_rows")}))


if __name__ == "__main__":
    main()
