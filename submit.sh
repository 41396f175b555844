#!/usr/bin/env bash
# Launch an ecominsight stage (or the whole pipeline) through spark-submit, locally or on a cluster.
#
#   ./submit.sh [options] <clean|fuse|train|score|insights|pipeline|register> [--set key=value ...]
#
# Options:
#   --master URL           local[*] (default), local[N], spark://HOST:PORT (standalone), yarn, k8s://https://HOST:PORT.
#                          It always wins: under spark-submit the job applies no configured spark.master.
#   --remote URL           sc://HOST:PORT[/;NAME=VALUE...]: run the job through this Spark Connect server instead
#                          (default: $SPARK_REMOTE, unless --master is given). The job runs here, as a client, with
#                          .venv's python directly: no spark-submit, nothing packaged. The server owns the master,
#                          its static settings and its Python workers' environment (ecominsight installed,
#                          HF_HUB_OFFLINE=1); the lake must be storage that both sides see. --conf KEY=VALUE
#                          becomes the session setting --set spark.conf.KEY=VALUE. Not with --master.
#   --deploy-mode MODE     client (default) or cluster. Cluster mode runs the driver on the cluster:
#                          yarn and k8s only (Spark standalone has no cluster mode for Python apps).
#   --env NAME             config overlay conf/NAME.yaml: local, cluster, databricks. Default: $ECOMINSIGHT_ENV
#                          when set, else local for a local master and cluster for any other master or --remote
#   --set KEY=VALUE        config override, repeatable (e.g. --set lake=/shared/lake)
#   --conf KEY=VALUE       extra spark-submit --conf, repeatable (e.g. --conf spark.executor.memory=4g)
#   --secret-env NAME      (non-local masters) an environment variable holding a secret that the job on the
#                          cluster needs, repeatable; its name ends in KEY, TOKEN, SECRET, PASSWORD, PASSWD or
#                          CREDENTIAL(S) (the job masks those in its logs). ECOMINSIGHT_PSEUDONYM_KEY goes
#                          without asking when it is set. See "Secrets" below.
#   --k8s-secret NAME      (k8s) the Kubernetes secret that holds those variables, one key per variable named
#                          like it (default: $ECOMINSIGHT_K8S_SECRET)
#   --dry-run              print the spark-submit command (and the environment it sets) and exit 0;
#                          builds nothing: every path in it is fixed, so it is exactly what a real run runs
#                          (but for the secrets' properties file, whose keys it lists with the values masked)
#   --package              (non-local masters) build the cluster package only, print its paths, exit 0
#   -h, --help             this text
#
# Local masters (local, local[N], local[*]) run with .venv, created on first use by .ci/bootstrap with
# the pinned dependencies and the package itself; nothing is packaged.
#
# Any other master gets a packaged project, built under build/ (ECOMINSIGHT_BUILD_DIR) on first use:
#   build/dist/ecominsight-0.1.0-py3-none-any.whl   pip wheel --no-deps of this checkout
#   build/cluster-env/                             a venv with the pinned dependencies + that wheel (never .venv:
#                                                  its editable install cannot be packed)
#   build/dist/ecominsight-env.tar.gz              that venv packed by venv-pack2 (gzip level 1), shipped
#                                                  as --archives ...#env; executors run ./env/bin/python
#   build/dist/ecominsight-conf.tar                conf/, shipped as --archives ...#ecominsight_conf in
#                                                  cluster mode (the driver reads it via ECOMINSIGHT_CONF_DIR)
# The venv is rebuilt only when constraints.txt, setup.py or the base Python change (a few minutes), the archive
# only when the wheel's contents change too (its RECORD, less METADATA which only carries README.md);
# a second submit of unchanged code reuses both. The archive is a .tar.gz at gzip level 1: Spark unpacks
# .tar.gz with the system tar (keeping the executable bits that ./env/bin/python needs), but a plain
# .tar or a .zip with its own Java reader, which drops them. Level 1 halves the size (2.2 -> 1.0 GB);
# level 0 packs faster but unpacks no faster, and the archive is packed once and unpacked per executor.
# Client mode: the driver runs here with build/cluster-env/bin/python and reads conf/ in place.
# Cluster mode: the driver runs ./env/bin/python on the cluster and reads ./ecominsight_conf.
# Executors and the driver get HF_HUB_OFFLINE=1; the pretrained encoder ships inside the env.
#
# Same-Python constraint: venv-pack does not carry the Python installation. ./env/bin/python is a copy
# of the launcher of the base Python that built build/cluster-env (ECOMINSIGHT_PYTHON, default python3,
# here /root/.pyenv/versions/3.11.7); it loads libpython and the standard library from that path, so
# every cluster node needs that Python 3.11 at that same path. Where
# that does not hold, pack a conda environment with conda-pack instead (it carries the interpreter).
# YARN ships the local archives itself; k8s cluster mode needs spark.kubernetes.file.upload.path and
# spark.kubernetes.container.image (pass them with --conf). The lake must be storage every node sees.
#
# Secrets reach the job through the platform and never appear on the command line (which `ps` shows),
# in the --dry-run output or in the logs:
#   yarn, spark://  the values are written into a mode-0600 properties file under $TMPDIR, removed when
#                   spark-submit exits, and passed by --properties-file with --load-spark-defaults (the
#                   cluster's spark-defaults.conf still applies; the file wins over it, --conf over both):
#                   spark.executorEnv.NAME for the executors and, in yarn cluster mode, spark.yarn.appMasterEnv.NAME
#                   for the driver. spark.redaction.regex is widened so that Spark masks them in its UI,
#                   event log and YARN launch logs. YARN keeps them in the application's staging directory
#                   and launch contexts, readable by the submitting user and the cluster's admins.
#   k8s             spark.kubernetes.driver.secretKeyRef.NAME=SECRET:NAME (cluster mode) and
#                   spark.kubernetes.executor.secretKeyRef.NAME=SECRET:NAME: a reference, the value stays in
#                   Kubernetes (kubectl create secret generic SECRET --from-literal=NAME=...). Without
#                   --k8s-secret, cluster mode refuses to start a driver that would lack them.
#   local[...]      nothing to do: the driver and its Python workers inherit this environment.
#   --remote        nothing to do: the job runs here and resolves the pseudonym key itself. A secret-named
#                   parameter of the URL (;token=...) travels in SPARK_REMOTE, not on the command line, and
#                   the dry run masks it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ECOMINSIGHT_VENV:-$here/.venv}"
build="${ECOMINSIGHT_BUILD_DIR:-$here/build}"
conf_dir="${ECOMINSIGHT_CONF_DIR:-$here/conf}"
base_python="${ECOMINSIGHT_PYTHON:-python3}"
# The packer, pinned: venv-pack2 is the maintained fork of venv-pack (0.2.0, 2018) and packs 3.11 venvs.
venv_pack_pin="venv-pack2==0.9.2"
master="local[*]"
master_given=0
remote=""
deploy_mode="client"
env_name="${ECOMINSIGHT_ENV:-}"
k8s_secret="${ECOMINSIGHT_K8S_SECRET:-}"
secret_names=()
stage=""
dry_run=0
package_only=0
passthrough=()
spark_confs=()

usage() { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "submit.sh: $1" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) master="$2"; master_given=1; shift 2 ;;
    --master=*) master="${1#*=}"; master_given=1; shift ;;
    --remote) remote="$2"; [[ -n "$remote" ]] || die "--remote needs a URL, sc://HOST:PORT"; shift 2 ;;
    --remote=*) remote="${1#*=}"; [[ -n "$remote" ]] || die "--remote needs a URL, sc://HOST:PORT"; shift ;;
    --deploy-mode) deploy_mode="$2"; shift 2 ;;
    --deploy-mode=*) deploy_mode="${1#*=}"; shift ;;
    --env) env_name="$2"; shift 2 ;;
    --env=*) env_name="${1#*=}"; shift ;;
    --set) passthrough+=(--set "$2"); shift 2 ;;
    --set=*) passthrough+=(--set "${1#*=}"); shift ;;
    --conf) spark_confs+=(--conf "$2"); shift 2 ;;
    --conf=*) spark_confs+=(--conf "${1#*=}"); shift ;;
    --secret-env) secret_names+=("$2"); shift 2 ;;
    --secret-env=*) secret_names+=("${1#*=}"); shift ;;
    --k8s-secret) k8s_secret="$2"; shift 2 ;;
    --k8s-secret=*) k8s_secret="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --package) package_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    clean|fuse|train|score|insights|pipeline|register) stage="$1"; shift ;;
    *) echo "submit.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

case "$deploy_mode" in
  client|cluster) ;;
  *) die "--deploy-mode must be client or cluster, not '$deploy_mode'" ;;
esac
if [[ -n "$remote" && $master_given -eq 1 ]]; then
  die "give --master (spark-submit) or --remote (Spark Connect), not both"
fi
# SPARK_REMOTE chooses Spark Connect unless --master is given; a job under spark-submit must not see it
# (the job's session helper would follow it).
[[ -z "$remote" && $master_given -eq 0 ]] && remote="${SPARK_REMOTE:-}"
unset SPARK_REMOTE
if [[ -n "$remote" ]]; then
  [[ "$remote" == sc://* ]] || die "--remote needs a Spark Connect URL, sc://HOST:PORT"
  kind=remote
else
  case "$master" in
    local|local\[*\]) kind=local ;;
    spark://*) kind=standalone ;;
    yarn) kind=yarn ;;
    k8s://*) kind=k8s ;;
    *) die "unsupported master '$master': use local[*], local[N], spark://HOST:PORT, yarn or k8s://https://HOST:PORT" ;;
  esac
fi
if [[ "$deploy_mode" == cluster ]]; then
  [[ "$kind" == remote ]] && die "--deploy-mode cluster needs spark-submit; with --remote the job runs here, as a Spark Connect client"
  [[ "$kind" == local ]] && die "--deploy-mode cluster needs a cluster master (yarn or k8s://...), not '$master'"
  [[ "$kind" == standalone ]] && die "Spark standalone does not support cluster deploy mode for Python applications; use --deploy-mode client with $master, or a yarn or k8s master"
fi
if [[ $package_only -eq 1 ]]; then
  [[ "$kind" == local || "$kind" == remote ]] && die "--package builds the cluster package; give a non-local --master"
elif [[ -z "$stage" ]]; then
  echo "submit.sh: name a stage: clean, fuse, train, score, insights, pipeline or register" >&2; usage >&2; exit 2
fi
# The overlay follows the cluster: conf/local.yaml describes one machine, conf/cluster.yaml a cluster
# (a Spark Connect server is one: training runs there, on the lake both sides see).
if [[ -z "$env_name" ]]; then
  if [[ "$kind" == local ]]; then env_name=local; else env_name=cluster; fi
fi

# The secrets the job on the cluster gets (see "Secrets" above): the names given, then the pseudonym
# key whenever it is set. Each is checked by name only; a value is never put into an argument list.
asked_secrets=${#secret_names[@]}
[[ -n "${ECOMINSIGHT_PSEUDONYM_KEY:-}" ]] && secret_names+=(ECOMINSIGHT_PSEUDONYM_KEY)
forwarded=()
for name in ${secret_names[@]+"${secret_names[@]}"}; do
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--secret-env needs an environment variable name, not '$name'"
  [[ "${name^^}" =~ (KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$ ]] \
    || die "--secret-env $name: a secret's name ends in KEY, TOKEN, SECRET, PASSWORD, PASSWD or CREDENTIAL(S), so that the job masks its value in every log line"
  [[ " ${forwarded[*]-} " == *" $name "* ]] || forwarded+=("$name")
done
secret_confs=()     # references only (k8s): safe on the command line
secret_properties=()  # KEY=NAME pairs whose values go into the mode-0600 properties file (yarn, standalone)
case "$kind" in
  k8s)
    if [[ -z "$k8s_secret" ]]; then
      if [[ ${#forwarded[@]} -gt 0 && ( "$deploy_mode" == cluster || $asked_secrets -gt 0 ) ]]; then
        die "${forwarded[*]} must reach the job on Kubernetes through a secret: give --k8s-secret NAME (or ECOMINSIGHT_K8S_SECRET), a secret holding one key per variable"
      fi
    else
      [[ "$k8s_secret" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "--k8s-secret '$k8s_secret' is not a Kubernetes secret name"
      for name in ${forwarded[@]+"${forwarded[@]}"}; do
        secret_confs+=(--conf "spark.kubernetes.executor.secretKeyRef.$name=$k8s_secret:$name")
        [[ "$deploy_mode" == cluster ]] && secret_confs+=(--conf "spark.kubernetes.driver.secretKeyRef.$name=$k8s_secret:$name")
      done
    fi ;;
  yarn|standalone)
    for name in ${forwarded[@]+"${forwarded[@]}"}; do
      [[ -n "${!name:-}" ]] || die "--secret-env $name: $name is not set in this environment"
      # Spark trims every value it reads from a properties file.
      [[ "${!name}" =~ ^[[:space:]]|[[:space:]]$ ]] && die "$name starts or ends with a blank, which Spark would drop"
      secret_properties+=("spark.executorEnv.$name=$name")
      [[ "$kind" == yarn && "$deploy_mode" == cluster ]] && secret_properties+=("spark.yarn.appMasterEnv.$name=$name")
    done ;;
esac
if [[ ${#secret_properties[@]} -gt 0 ]]; then
  # Spark's default regex misses names like *_KEY: without this the values would show in the UI, the
  # event log and YARN's launch-context log lines. A --conf of the user's still wins (it comes later).
  secret_confs+=(--conf "spark.redaction.regex=(?i)secret|password|passwd|token|credential|access[.]?key|key\$")
fi

sha() { sha256sum | cut -d' ' -f1; }

# build/cluster-env: a plain venv with the project's dependencies and every extra (pyspark included),
# pinned by constraints.txt; rebuilt only when constraints.txt, setup.py (the ranges and extras) or
# the base Python change.
build_env() {
  local env="$build/cluster-env" stamp wanted
  stamp="$env/.ecominsight-deps.sha"
  wanted="$({ cat "$here/constraints.txt" "$here/setup.py"; echo "venv --copies"
              "$base_python" -c 'import sys; print(sys.version, sys.base_prefix)'; } | sha)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    return 0
  fi
  echo "submit.sh: building $env with the pinned dependencies (first build takes a few minutes)" >&2
  rm -rf "$env"
  # --copies: bin/python is a copy, not a link to the base interpreter, so that the archive holds no
  # link pointing outside itself (Spark's Java reader for .tar/.zip refuses those: "would create entry
  # outside"). The copy still loads the base Python's libpython and standard library from their path.
  "$base_python" -m venv --copies "$env"
  # Installs this checkout too (pip resolves the dependencies from its metadata); pack_env replaces
  # it with the freshly built wheel.
  "$env/bin/python" -m pip install --quiet --disable-pip-version-check -c "$here/constraints.txt" "$here[spark,all]"
  echo "$wanted" > "$stamp"
}

# The Spark Connect URL with the values of its secret-named parameters (;token=...) masked.
masked_url() {
  local url="$1" rest part name shown
  shown="${url%%;*}"
  [[ "$url" == *";"* ]] && rest="${url#*;}" || rest=""
  while [[ -n "$rest" ]]; do
    part="${rest%%;*}"
    [[ "$rest" == *";"* ]] && rest="${rest#*;}" || rest=""
    name="${part%%=*}"
    [[ "${name,,}" =~ key|token|secret|password|passwd|credential ]] && part="$name=***"
    shown+=";$part"
  done
  printf '%s' "$shown"
}

# build/dist/ecominsight-*.whl from this checkout; setuptools' own build/lib is cleared first so that a
# module deleted from the source cannot linger in the wheel.
build_wheel() {
  local out="$build/dist"
  mkdir -p "$out"
  rm -rf "$here/build/lib" "$here/build/bdist."* "$out"/ecominsight-*.whl
  "$build/cluster-env/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" "$here" >&2
  wheel="$(ls "$out"/ecominsight-*.whl)"
}

# build/dist/ecominsight-env.tar: the venv plus the wheel, packed by venv-pack2; reused while the
# requirements, the base Python and the wheel's contents are unchanged.
pack_env() {
  local env="$build/cluster-env" key tools="$build/pack-tools"
  key="$({ cat "$env/.ecominsight-deps.sha"
           "$env/bin/python" - "$wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    for line in wheel.read(record).decode().splitlines():
        if not line.split(",")[0].endswith((".dist-info/METADATA", ".dist-info/RECORD")):
            print(line)
PY
         } | sha)"
  if [[ -f "$env_archive" && -f "$env_archive.sha" && "$(cat "$env_archive.sha")" == "$key" ]]; then
    echo "submit.sh: reusing $env_archive (requirements and wheel unchanged)" >&2
    return 0
  fi
  "$env/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
  if [[ ! -f "$tools/.ok" ]]; then
    "$base_python" -m pip install --quiet --disable-pip-version-check --target "$tools" "$venv_pack_pin"
    touch "$tools/.ok"
  fi
  echo "submit.sh: packing $env into $env_archive" >&2
  rm -f "$env_archive" "$env_archive.sha"
  PYTHONPATH="$tools" "$base_python" -m venv_pack --prefix "$env" --output "$env_archive.partial" \
    --format tar.gz --compress-level 1 --force --quiet
  mv "$env_archive.partial" "$env_archive"
  echo "$key" > "$env_archive.sha"
}

pack_conf() {
  tar -cf "$conf_archive.partial" -C "$conf_dir" .
  mv "$conf_archive.partial" "$conf_archive"
}

# The secrets' properties, in Java's properties syntax (a backslash escapes). Only shell builtins touch the
# values, so that none of them is ever an argument of a process.
write_secret_properties() {
  local property name value
  for property in "${secret_properties[@]}"; do
    name="${property##*=}"
    value="${!name}"
    value="${value//\\/\\\\}"; value="${value//$'\n'/\\n}"; value="${value//$'\r'/\\r}"
    printf '%s=%s\n' "${property%=*}" "$value"
  done
}

export HF_HUB_OFFLINE=1
job=("$here/jobs/$stage.py" --env "$env_name" ${passthrough[@]+"${passthrough[@]}"})

if [[ "$kind" == remote ]]; then
  # The job's session helper reads the server from SPARK_REMOTE: a token in the URL stays off `ps`.
  export SPARK_REMOTE="$remote"
  cmd=("$venv/bin/python" "${job[@]}")
  for conf in ${spark_confs[@]+"${spark_confs[@]}"}; do
    [[ "$conf" == --conf ]] || cmd+=(--set "spark.conf.$conf")
  done
  exported=(HF_HUB_OFFLINE SPARK_REMOTE)
  [[ $dry_run -eq 0 ]] && "$here/.ci/bootstrap" "$venv" runtime
elif [[ "$kind" == local ]]; then
  export PYSPARK_PYTHON="$venv/bin/python"
  export PYSPARK_DRIVER_PYTHON="$venv/bin/python"
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
  cmd=("$venv/bin/spark-submit"
    --master "$master"
    --name "ecominsight-$stage"
    --conf spark.ui.showConsoleProgress=false
    --conf spark.log.level=WARN
    --driver-java-options "-Dderby.system.home=${TMPDIR:-/tmp}"
    ${spark_confs[@]+"${spark_confs[@]}"}
    "${job[@]}")
  exported=(PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON SPARK_LOCAL_IP HF_HUB_OFFLINE)
  [[ $dry_run -eq 0 ]] && "$here/.ci/bootstrap" "$venv" runtime
else
  env_archive="$build/dist/ecominsight-env.tar.gz"
  conf_archive="$build/dist/ecominsight-conf.tar"
  env_python=./env/bin/python
  archives="$env_archive#env"
  if [[ "$deploy_mode" == client ]]; then
    driver_python="$build/cluster-env/bin/python"
    export ECOMINSIGHT_CONF_DIR="$conf_dir"
  else
    driver_python="$env_python"
    archives+=",$conf_archive#ecominsight_conf"
  fi
  export PYSPARK_PYTHON="$env_python"
  export PYSPARK_DRIVER_PYTHON="$driver_python"
  cmd=("$build/cluster-env/bin/spark-submit"
    --master "$master"
    --deploy-mode "$deploy_mode"
    --name "ecominsight-$stage"
    --archives "$archives"
    --conf "spark.pyspark.python=$env_python"
    --conf "spark.pyspark.driver.python=$driver_python"
    --conf "spark.executorEnv.PYSPARK_PYTHON=$env_python"
    --conf spark.executorEnv.HF_HUB_OFFLINE=1
    --conf spark.ui.showConsoleProgress=false
    --conf spark.log.level=WARN)
  if [[ "$deploy_mode" == client ]]; then
    cmd+=(--driver-java-options "-Dderby.system.home=${TMPDIR:-/tmp}")
  else
    # The driver runs in a YARN container or a k8s pod: it gets its environment from these confs.
    if [[ "$kind" == yarn ]]; then driver_env=spark.yarn.appMasterEnv; else driver_env=spark.kubernetes.driverEnv; fi
    cmd+=(--conf "$driver_env.ECOMINSIGHT_CONF_DIR=./ecominsight_conf"
      --conf "$driver_env.HF_HUB_OFFLINE=1"
      --conf "$driver_env.PYSPARK_PYTHON=$env_python")
  fi
  if [[ ${#secret_properties[@]} -gt 0 ]]; then
    properties_file="${TMPDIR:-/tmp}/ecominsight-secrets.XXXXXXXX"
    if [[ $dry_run -eq 0 ]]; then
      properties_file="$(mktemp "$properties_file")"  # mode 0600
      trap 'rm -f "$properties_file"' EXIT              # a failed build must not leave it behind
    fi
    cmd+=(--properties-file "$properties_file" --load-spark-defaults)
  fi
  cmd+=(${secret_confs[@]+"${secret_confs[@]}"} ${spark_confs[@]+"${spark_confs[@]}"} "${job[@]}")
  exported=(PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON HF_HUB_OFFLINE)
  [[ "$deploy_mode" == client ]] && exported+=(ECOMINSIGHT_CONF_DIR)
  if [[ $dry_run -eq 0 ]]; then
    mkdir -p "$build"
    (
      # One build at a time: two submits must not write the same venv or archive.
      flock 9
      build_env
      build_wheel
      pack_env
      pack_conf
    ) 9>"$build/.lock"
    if [[ $package_only -eq 1 ]]; then
      printf 'wheel:   %s\nenv:     %s (%s)\nconf:    %s\n' "$(ls "$build"/dist/ecominsight-*.whl)" "$env_archive" \
        "$(du -h "$env_archive" | cut -f1)" "$conf_archive"
      exit 0
    fi
  fi
fi

if [[ $dry_run -eq 1 ]]; then
  [[ "$kind" == remote ]] && echo "# Spark Connect: the job runs with $venv/bin/python directly, no spark-submit"
  for name in "${exported[@]}"; do
    if [[ "$name" == SPARK_REMOTE ]]; then printf 'export %s=%q\n' "$name" "$(masked_url "${!name}")"
    else printf 'export %s=%q\n' "$name" "${!name}"; fi
  done
  for property in ${secret_properties[@]+"${secret_properties[@]}"}; do
    printf '# in the --properties-file (mode 0600): %s=<value of $%s>\n' "${property%=*}" "${property##*=}"
  done
  printf '%q ' "${cmd[@]}" | sed 's/ $/\n/'
  exit 0
fi
if [[ ${#secret_properties[@]} -gt 0 ]]; then
  write_secret_properties > "$properties_file"
  # exec keeps this PID: a watcher in its own session (immune to the terminal's Ctrl-C) removes the
  # file once spark-submit, whatever ends it, has exited.
  setsid bash -c 'tail --pid="$1" -f /dev/null; rm -f "$2"' _ "$$" "$properties_file" </dev/null >/dev/null 2>&1 &
fi
exec "${cmd[@]}"
