#!/usr/bin/env bash
# Launch an ecominsight stage (or the whole pipeline) through spark-submit.
#
#   ./submit.sh [--master URL] [--env local|cluster|databricks] <clean|fuse|train|score|insights|pipeline> [--set key=value ...]
#
# Local by default (--master local[*], --env local). On first use it creates .venv with the pinned
# dependencies and the package itself, so that a fresh clone needs nothing else.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ECOMINSIGHT_VENV:-$here/.venv}"
master="local[*]"
env_name="${ECOMINSIGHT_ENV:-local}"
stage=""
passthrough=()

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) master="$2"; shift 2 ;;
    --master=*) master="${1#*=}"; shift ;;
    --env) env_name="$2"; shift 2 ;;
    --env=*) env_name="${1#*=}"; shift ;;
    --set) passthrough+=(--set "$2"); shift 2 ;;
    --set=*) passthrough+=(--set "${1#*=}"); shift ;;
    -h|--help) usage; exit 0 ;;
    clean|fuse|train|score|insights|pipeline) stage="$1"; shift ;;
    *) echo "submit.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$stage" ]]; then
  echo "submit.sh: name a stage: clean, fuse, train, score, insights or pipeline" >&2; usage >&2; exit 2
fi

"$here/.ci/bootstrap" "$venv" runtime

export PYSPARK_PYTHON="$venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$venv/bin/python"
export HF_HUB_OFFLINE=1
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"

exec "$venv/bin/spark-submit" \
  --master "$master" \
  --name "ecominsight-$stage" \
  --conf spark.ui.showConsoleProgress=false \
  --conf spark.log.level=WARN \
  --driver-java-options "-Dderby.system.home=${TMPDIR:-/tmp}" \
  "$here/jobs/$stage.py" --env "$env_name" "${passthrough[@]}"
