"""All reading and writing: raw sources through a preset, lake tables, and JSON artifacts."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import glob
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import catalog, storage
from ecominsight.catalog import Table
from ecominsight.errors import LakeError
from ecominsight.presets import Preset, TableSource
from ecominsight.schema import CORRUPT, SOURCE_FILE, SOURCE_LINE
from ecominsight.session import default_parallelism
from ecominsight.storage import StoragePath

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.dataset

log = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("dbfs:")


def check_inputs_exist(paths: list[str], *, preset: str) -> None:
    """Fail early, naming the path, when a local input path or glob matches nothing."""
    for path in paths:
        if _is_local(path) and not glob.glob(path):
            raise LakeError(
                f"input path {path} of source preset {preset!r} does not exist; "
                "check the path or pass other inputs with --set source.paths='[...]'"
            )


# The charsets Spark 4 decodes without `spark.sql.legacy.javaCharsets` (CSVOptions refuses the rest).
SPARK_CHARSETS = {"ISO88591", "USASCII", "UTF16", "UTF16BE", "UTF16LE", "UTF32", "UTF8"}
BOM = "\ufeff"
# The CSV parser (univocity) keeps a fixed-size array of fields per line and fails the whole job on a
# line with more; Spark's default of 20,480 lets one garbage line of commas stop a run. Past this
# bound a line still fails the job (the array costs 8 bytes a field per reading task).
MAX_CSV_COLUMNS = 1_000_000
ARCHIVE_SUFFIX = ".zip"


def read_source(spark: SparkSession, preset: Preset | TableSource, paths: list[str]) -> DataFrame:
    """Read raw rows as the preset (or one of its side sources) describes. Output: string columns
    named as in the source, `_source_file`, for text formats `_corrupt_record` (the raw line of a
    malformed record), and for `text` also `_source_line` (the 1-based line in its file).
    Archives must be unpacked first (`staging_area`)."""
    check_inputs_exist(paths, preset=preset.name)
    archives = [p for p in paths if _is_local(p) and p.lower().endswith(ARCHIVE_SUFFIX)]
    if archives:
        raise LakeError(f"{archives[0]} is an archive, which Spark cannot read: unpack it with io.staging_area first")
    if preset.format == "csv":
        frame = _read_csv(spark, preset, paths)
    elif preset.format == "text":
        return _read_delimited_text(spark, preset, paths)
    elif preset.format == "parquet":
        frame = spark.read.option("mergeSchema", True).parquet(*paths)
        frame = frame.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in frame.columns])
    else:  # json lines
        frame = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT) \
            .option("primitivesAsString", True).json(paths)
        frame = frame.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in frame.columns])
    return frame.withColumn(SOURCE_FILE, F.input_file_name())


def _read_csv(spark: SparkSession, source: Preset | TableSource, paths: list[str]) -> DataFrame:
    if source.encoding.upper().replace("-", "").replace("_", "") not in SPARK_CHARSETS:
        # Spark 4 accepts other Java charsets (GBK, Big5, Shift_JIS, ...) only behind this flag.
        spark.conf.set("spark.sql.legacy.javaCharsets", "true")
    reader = (
        spark.read.option("sep", source.delimiter)
        .option("header", source.header)
        .option("encoding", source.encoding)
        .option("escape", source.escape)
        .option("maxColumns", MAX_CSV_COLUMNS)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
    )
    if source.columns:
        names = list(source.columns)
    else:
        # A UTF-8 byte order mark must not become part of the first column's name.
        names = [c.lstrip(BOM) for c in reader.option("inferSchema", False).csv(paths).columns]
        if not names:
            raise LakeError(f"no header line in {paths} of {source.name!r}: the input is empty; "
                            "declare `columns` in the preset to read empty inputs as zero rows")
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())])
    return reader.schema(schema).csv(paths)


def _read_delimited_text(spark: SparkSession, source: Preset | TableSource, paths: list[str]) -> DataFrame:
    """Lines split on `delimiter_regex` (for formats such as whitespace-aligned columns that no
    single-character CSV delimiter describes). Every physical line is one row, blank lines too;
    a line with another number of fields is malformed and keeps its text in `_corrupt_record`."""
    if not source.columns:
        raise LakeError(f"{source.name!r} is format text: declare its `columns`")
    lines = spark.read.text(paths).select(
        "value",
        F.input_file_name().alias(SOURCE_FILE),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_pos"),
    )
    # Spark numbers no lines. A file is read in byte-range splits, each in order and each within one
    # task, so a line's number is the lines of the file's earlier splits plus its place in its split.
    splits = lines.groupBy(SOURCE_FILE, "_block").agg(F.count(F.lit(1)).alias("_n"), F.min("_pos").alias("_first"))
    earlier = Window.partitionBy(SOURCE_FILE).orderBy("_block").rowsBetween(Window.unboundedPreceding, -1)
    splits = splits.withColumn("_before", F.coalesce(F.sum("_n").over(earlier), F.lit(0)))
    numbered = lines.join(F.broadcast(splits.drop("_n")), [SOURCE_FILE, "_block"]).withColumn(
        SOURCE_LINE, F.col("_before") + F.col("_pos") - F.col("_first") + 1
    )
    if source.header:
        numbered = numbered.filter(F.col(SOURCE_LINE) > 1)
    # Surrounding whitespace is padding, not an empty first or last field.
    fields = F.split(F.regexp_replace("value", r"^\s+|\s+$", ""), source.delimiter_regex)
    malformed = F.size(fields) != len(source.columns)
    return numbered.select(
        *[F.get(fields, i).alias(name) for i, name in enumerate(source.columns)],
        F.when(malformed, F.col("value")).alias(CORRUPT),
        SOURCE_FILE,
        SOURCE_LINE,
    )


@contextlib.contextmanager
def staging_area(workdir: StoragePath | str | Path | None = None) -> Iterator[Callable[[list[str]], list[str]]]:
    """A scratch folder for one run's unpacked archives (under `workdir`, else the system temp).

    Yields `stage(paths) -> paths`: each local `.zip` (or glob matching zips) is replaced by the
    files it holds, extracted into the folder; other paths pass as they are. The folder is removed
    on exit, so whatever reads the staged files (Spark is lazy) must run inside the `with`.
    With `workdir` on a remote store (the lake's `_staging` on S3, HDFS, ...) the archives are
    unpacked on this machine and each file is uploaded to a folder of its own under `workdir`, so
    that a cluster's executors read them there; that folder goes too."""
    target = None if workdir is None else _storage_path(workdir)
    remote = target is not None and not target.is_local
    local_parent = None if target is None or remote else Path(target.path)
    if local_parent is not None:
        local_parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="staging-", dir=local_parent))
    shared = target / root.name if remote else None

    def stage(paths: list[str]) -> list[str]:
        staged = [unpacked for path in paths for unpacked in _unpack(path, root)]
        if shared is None:
            return staged
        uploaded = []
        for path in staged:
            local = Path(path)
            if not local.is_relative_to(root):
                uploaded.append(path)
                continue
            remote_file = shared / local.relative_to(root).as_posix()
            remote_file.write_bytes(local.read_bytes())
            uploaded.append(remote_file.uri)
        return uploaded

    try:
        yield stage
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if shared is not None:
            shared.remove()
        log.info("removed the staging folder %s", shared or root)


def _unpack(path: str, root: Path) -> list[str]:
    if not _is_local(path):
        return [path]
    matches = sorted(glob.glob(path))
    if not any(m.lower().endswith(ARCHIVE_SUFFIX) for m in matches):
        return [path]
    return [out for m in matches for out in (_extract(Path(m), root) if m.lower().endswith(ARCHIVE_SUFFIX) else [m])]


def _extract(archive: Path, root: Path) -> list[str]:
    """Every file of `archive` into its own folder below `root`, named by the member's base name
    only: member paths are never trusted (`../x` or `/etc/x` cannot write outside the folder)."""
    target = Path(tempfile.mkdtemp(prefix=f"{archive.name}-", dir=root))
    extracted: list[str] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = PurePosixPath(member.filename.replace("\\", "/")).name
                if member.is_dir() or not name or name.startswith(".") or "__MACOSX" in member.filename:
                    continue
                dest = target / name
                if dest.exists():
                    dest = target / f"{len(extracted)}-{name}"
                with bundle.open(member) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                extracted.append(str(dest))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as err:
        raise LakeError(f"cannot unpack {archive}: {err}") from err
    if not extracted:
        raise LakeError(f"the archive {archive} holds no files")
    log.info("unpacked %s into %s (%d files)", archive, target, len(extracted))
    return extracted


# A model's pointer to its newest complete version.
LATEST = "LATEST"
# The lake's pointer to the model (name and version) that scores the users.
CHAMPION = "CHAMPION"
# A table's folders: one per written version, and the manifest naming the current one(s).
MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 1
VERSION_PREFIX = "v-"
VERSION_TIME_FORMAT = "%Y%m%dT%H%M%S"
_VERSION_NAME = re.compile(r"v-(\d{8}T\d{6})-[0-9a-f]{8}")


# storage.retain_versions_minutes' default (ecominsight/config.py): the grace period of old versions.
DEFAULT_RETAIN_MINUTES = 60.0
# Tasks per core of a partitioned write: a few, so that days of unequal size even out across cores.
WRITE_TASKS_PER_CORE = 2


class Lake:
    """Every path under the lake root (README.md, "Layout"): tables of the catalog, model
    versions and their pointers, checkpoints, reports, the pseudonym key, staging and the lock;
    and the table I/O on them. Nothing outside the I/O layer builds a lake path.

    `root` is a lake URI as the user gives it (a plain path, file://, s3a://, abfss://, gs://,
    hdfs://, dbfs:/, /Volumes/...; storage.resolve). Tables are handed to Spark as URIs in the lake's
    scheme; every other artifact is a StoragePath, read and written through storage.py."""

    def __init__(self, root: str | os.PathLike[str] | StoragePath, *,
                 retain_versions_minutes: float = DEFAULT_RETAIN_MINUTES):
        self.root: StoragePath = root if isinstance(root, StoragePath) else storage.resolve(root)
        # How long a superseded (or unfinished) table version outlives the write that replaced it.
        self.retain_seconds = 60.0 * retain_versions_minutes

    # ---- paths ----------------------------------------------------------------------------------

    def table_path(self, table: Table) -> str:
        """The table's root folder as a URI in the lake's scheme."""
        return self._table_root(table).uri

    def table_uri(self, table: Table) -> str:
        """The table's location as a URI, for a metastore or another engine (`file:///...` for a local lake)."""
        return _absolute_uri(self._table_root(table))

    def _table_root(self, table: Table) -> StoragePath:
        return self.root / table.zone / table.name

    def model_root(self, name: str) -> StoragePath:
        """`models/<name>/`: the versions of one model and its pointers."""
        return self.root / "models" / name

    def model_dir(self, name: str, version: str) -> StoragePath:
        return self.model_root(name) / version

    def model_pointer(self, name: str, pointer: str = LATEST) -> StoragePath:
        """`models/<name>/<pointer>`: a small file naming the version the pointer designates."""
        return self.model_root(name) / pointer

    def champion_pointer(self) -> StoragePath:
        """`models/CHAMPION`: the model name and version the train stage chose to score users with."""
        return self.root / "models" / CHAMPION

    def checkpoint_dir(self, name: str, key: str) -> StoragePath:
        """`checkpoints/<name>/<key>/`: one training run's per-epoch checkpoints (`key` names the run)."""
        return self.root / "checkpoints" / name / key

    def report_dir(self, run_id: str) -> StoragePath:
        return self.root / "reports" / run_id

    def run_reports(self, filename: str) -> list[StoragePath]:
        """`reports/<run_id>/<filename>` of every run that wrote one, oldest first."""
        reports = self.root / "reports"
        found = [reports / run / filename for run in reports.list()]
        found = [report for report in found if report.exists()]
        return sorted(found, key=lambda report: report.modified())

    def key_file(self) -> StoragePath:
        """The lake's own pseudonym key (used when no key comes from the environment)."""
        return self.root / "_secrets" / "pseudonym.key"

    def staging_dir(self) -> StoragePath:
        """Where a run unpacks archives it reads (a folder per run inside, removed when it ends)."""
        return self.root / "_staging"

    def _lock_path(self) -> StoragePath:
        return self.root / "_lock"

    # ---- tables ---------------------------------------------------------------------------------
    #
    # Publication (docs/reliability.md): every write lands in a new folder <zone>/<table>/v-<UTC
    # time>-<8 hex>/, then <zone>/<table>/_manifest.json, written last in one atomic replace (a
    # rename on POSIX and HDFS, one PUT on object stores), names the current version (per partition
    # for partitioned tables). Readers follow the manifest only, so they see the old table or the new
    # one, never a part, on any store; nothing is ever renamed into place. Versions the manifest no
    # longer names are retired and removed by a later write once `retain_versions_minutes` old.

    def write(self, df: DataFrame, table: Table) -> str:
        """Publish `df` as the table's new version (see above); returns the table's root URI.
        Partitioned tables replace exactly the partitions `df` holds; the others keep theirs."""
        folder = self.new_version(table)
        try:
            if table.partition_by:
                # Hashed on the partition columns, each value lands in one task: one file per partition
                # instead of one per (task, value). The task count is explicit: left to adaptive execution,
                # a shuffle of a few hundred MB is coalesced into fewer tasks than there are cores.
                tasks = WRITE_TASKS_PER_CORE * default_parallelism(df.sparkSession)
                writer = df.repartition(tasks, *table.partition_by).write.partitionBy(*table.partition_by)
            else:
                writer = df.write
            # A fresh folder: a plain write, committed by the session's committer (the S3A committers
            # on s3a://); no overwrite, so no dynamic partition overwrite, which those refuse.
            # "error" (= errorifexists), the spelling Spark Connect's client also accepts.
            writer.mode("error").parquet(folder.uri)
        except Exception as err:
            # No partial output: the unfinished version goes, and so does the folder of a table that was
            # never published (a first write that failed).
            self._discard(table, folder)
            cause = storage_failure(err)
            if cause is None:
                raise
            raise LakeError(f"cannot write lake table {table} at {self.table_path(table)}: {cause}") from err
        self.publish(table, folder, df.schema)
        return self.table_path(table)

    def new_version(self, table: Table) -> StoragePath:
        """A new, empty version folder of `table` for one write (not written to yet)."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime(VERSION_TIME_FORMAT)
        return self._table_root(table) / f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"

    def publish(self, table: Table, folder: StoragePath, schema: T.StructType) -> dict[str, Any]:
        """Make the written version `folder` (from `new_version`) current: the manifest, written last and
        whole; then remove retired and unfinished versions older than the grace period. For a
        partitioned table only the partitions found in `folder` move to it. Returns the manifest."""
        root = self._table_root(table)
        previous = self.manifest(table) or {}
        now = dt.datetime.now(dt.timezone.utc)
        version = folder.name
        partition_by = list(table.partition_by)
        manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "table": str(table), "version": version,
                                    "partition_by": partition_by, "schema": _read_order(schema, partition_by).jsonValue(),
                                    "written_at": now.isoformat(timespec="seconds")}
        if partition_by:
            written = _partition_folders(folder, partition_by)
            manifest["partitions"] = dict(sorted({**previous.get("partitions", {}),
                                                  **{part: version for part in written}}.items()))
        live = _referenced(manifest)
        retired = [entry for entry in previous.get("retired", []) if entry["version"] not in live]
        retired += [{"version": old, "since": manifest["written_at"]}
                    for old in sorted(_referenced(previous) - live - {entry["version"] for entry in retired})]
        if version not in live:  # a partitioned write of no rows: its folder holds no partition
            retired.append({"version": version, "since": manifest["written_at"]})
        expired = [entry["version"] for entry in retired if self._older_than_grace(_parse_time(entry["since"]), now)]
        manifest["retired"] = [entry for entry in retired if entry["version"] not in expired]
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        log.info("published %s version %s%s", table, version,
                 f" ({len(written)} partitions)" if partition_by else "")
        kept = live | {entry["version"] for entry in manifest["retired"]}
        unfinished = [name for name in root.list() if name.startswith(VERSION_PREFIX) and name not in kept
                      and name not in expired and self._older_than_grace(_version_time(name), now)]
        for name in [*expired, *unfinished]:
            (root / name).remove()
            log.info("removed %s version %s (%s)", table, name, "retired" if name in expired else "unfinished")
        return manifest

    def manifest(self, table: Table) -> dict[str, Any] | None:
        """The table's manifest (what is current), or None where the table was never published."""
        try:
            return json.loads((self._table_root(table) / MANIFEST).read_text())
        except FileNotFoundError:
            return None

    def version(self, table: Table) -> str:
        """The version the table's last write published (LakeError naming the stage if none)."""
        return self._published(table)["version"]

    def current_files(self, table: Table) -> list[StoragePath]:
        """The Parquet files of the table's current version(s): for readers other than Spark (pyarrow,
        DuckDB's read_parquet([...], hive_partitioning = true): partitions are in their paths)."""
        return _current_files(self._table_root(table), self._published(table))

    def current_locations(self, table: Table) -> dict[str, str]:
        """Where the current data is, as URIs another engine opens (file:///... for a local lake):
        {"": the version folder} for an unpartitioned table, {"day=2024-01-01": that partition's
        folder in its version, ...} for a partitioned one (what `register` gives the metastore)."""
        manifest, root = self._published(table), self._table_root(table)
        if not manifest["partition_by"]:
            return {"": _absolute_uri(root / manifest["version"])}
        return {part: _absolute_uri(root / version / part) for part, version in sorted(manifest["partitions"].items())}

    def schema(self, table: Table) -> T.StructType:
        """The table's schema as Spark reads it (partition columns last), from its manifest."""
        return T.StructType.fromJson(self._published(table)["schema"])

    def read(self, spark: SparkSession, table: Table) -> DataFrame:
        """Read a lake table's current version, or say which stage must run first. Partitioned tables
        read each version's partitions under their version folder (`basePath`), so the partition
        columns stay columns; a table written from no rows reads as empty, with its schema."""
        manifest = self._published(table)
        root = self._table_root(table)
        schema = T.StructType.fromJson(manifest["schema"])
        if not manifest["partition_by"]:
            return spark.read.schema(schema).parquet((root / manifest["version"]).uri)
        by_version: dict[str, list[str]] = {}
        for part, version in sorted(manifest["partitions"].items()):
            by_version.setdefault(version, []).append((root / version / part).uri)
        frames = [spark.read.schema(schema).option("basePath", (root / version).uri).parquet(*parts)
                  for version, parts in sorted(by_version.items())]
        if not frames:
            return spark.createDataFrame([], schema)
        return functools.reduce(lambda left, right: left.unionByName(right), frames)

    def partition_values(self, table: Table, column: str) -> list[str]:
        """The values of a partition column that the table's current version holds, as the folder
        names spell them ("2024-01-01" of "dt=2024-01-01"), read from the manifest: no data is read."""
        prefix = f"{column}="
        return sorted({part_name[len(prefix):] for part in self._published(table).get("partitions", {})
                       for part_name in part.split("/") if part_name.startswith(prefix)})

    def read_arrow(self, table: Table, *, columns: list[str] | None = None) -> "pyarrow.Table":
        """A lake table's current version read without Spark (pyarrow over the lake's filesystem)."""
        return _arrow_dataset(self._table_root(table), self._published(table)).to_table(columns=columns)

    def exists(self, table: Table) -> bool:
        """True once a write of the table was published (its manifest exists)."""
        return (self._table_root(table) / MANIFEST).exists()

    def tables(self, zone: str) -> list[Table]:
        """The published tables of a zone (folders with a manifest), sorted by name; partitioned as
        their manifests say (a table the catalog does not name keeps its partitioning too)."""
        found = []
        for name in (self.root / zone).list():
            if name.startswith(("_", ".")):
                continue
            manifest = self.manifest(catalog.table(zone, name))
            if manifest is not None:
                found.append(Table(zone, name, tuple(manifest.get("partition_by", ()))))
        return found

    def drop(self, table: Table) -> None:
        """Remove a table if it exists (a table a run does not produce must not outlive it): the
        manifest first, so that readers never see a table with folders missing, then its folders."""
        root = self._table_root(table)
        if not root.exists():
            return
        (root / MANIFEST).remove()
        root.remove()
        log.info("removed %s from %s", table, root)

    def _published(self, table: Table) -> dict[str, Any]:
        manifest = self.manifest(table)
        if manifest is None:
            raise LakeError(f"lake table {table} is missing at {self.table_path(table)}; run the {table.written_by!r} "
                            f"stage first (a table is published only once its {MANIFEST} is written)")
        if manifest.get("format") != MANIFEST_FORMAT:
            raise LakeError(f"{self.table_path(table)}/{MANIFEST} has format {manifest.get('format')!r}; this "
                            f"version of ecominsight reads format {MANIFEST_FORMAT}")
        return manifest

    def _discard(self, table: Table, folder: StoragePath) -> None:
        """Remove what a failed write left: its version folder, and the table's folder if it was never
        published. Best effort: a folder left behind is invisible and a later write removes it."""
        for leftover in (folder, None if self.exists(table) else self._table_root(table)):
            if leftover is None:
                continue
            try:
                leftover.remove()
            except OSError as err:
                log.warning("could not remove %s after a failed write: %s", leftover, err)

    def _older_than_grace(self, since: dt.datetime | None, now: dt.datetime) -> bool:
        return since is not None and (now - since).total_seconds() >= self.retain_seconds

    # ---- the write lock -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """Hold the lake's write lock for the duration: a second run on the same lake refuses to
        start (LakeError naming the holder) instead of mixing its writes with the first's.

        The lock is `<lake>/_lock`, created only if absent (storage.StoragePath.create_if_absent): the
        store itself decides between two runs that start at once (a local hard link or O_EXCL; S3
        `If-None-Match: *`, GCS generation 0, Azure If-None-Match). On HDFS (libhdfs) that is a check
        then a write: one writer at a time is then the operator's rule (docs/reliability.md). A lock
        left by a process that no longer runs on this host is taken over."""
        path = self._lock_path()
        mine = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            if path.create_if_absent(json.dumps(mine).encode("utf-8")):
                break
            other = _read_lock(path)
            if other is None:
                continue  # removed by its holder since: try again
            if _holder_alive(other):
                raise LakeError(
                    f"the lake {self.root} is in use by {other.get('holder')} (pid {other.get('pid')} on "
                    f"{other.get('host')}, since {time.ctime(other.get('since', 0))}); wait for it to finish, "
                    f"or remove {path} if that run is known to be dead")
            log.warning("taking over the lake lock %s from a run that is gone: %s", path, other)
            path.remove()
        else:
            raise LakeError(f"could not take the lake lock {path}: another run keeps taking it")
        try:
            yield
        finally:
            if _read_lock(path) == mine:
                path.remove()


def _read_order(schema: T.StructType, partition_by: list[str]) -> T.StructType:
    """`schema` as Spark reads the table back: partition columns last, in partitioning order."""
    by_name = {field.name: field for field in schema.fields}
    return T.StructType([f for f in schema.fields if f.name not in partition_by] + [by_name[c] for c in partition_by])


def _partition_folders(folder: StoragePath, partition_by: list[str]) -> list[str]:
    """The partition folders Spark wrote under `folder` ("day=2024-01-01", "a=1/b=2"), sorted."""
    found = [""]
    for column in partition_by:
        found = [f"{prefix}{name}/" for prefix in found for name in (folder / prefix).list()
                 if name.startswith(f"{column}=")]
    return sorted(part.rstrip("/") for part in found if part)


def _referenced(manifest: dict[str, Any]) -> set[str]:
    """The versions a manifest's readers open ({} for no manifest)."""
    if not manifest:
        return set()
    if manifest.get("partition_by"):
        return set(manifest.get("partitions", {}).values())
    return {manifest["version"]}


def _current_files(root: StoragePath, manifest: dict[str, Any]) -> list[StoragePath]:
    if manifest["partition_by"]:
        folders = [root / version / part for part, version in sorted(manifest["partitions"].items())]
    else:
        folders = [root / manifest["version"]]
    return [file for folder in folders for file in folder.files() if file.name.endswith(".parquet")]


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _version_time(name: str) -> dt.datetime | None:
    """When a version folder was started, from its name (None for a name not made by new_version)."""
    match = _VERSION_NAME.fullmatch(name)
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), VERSION_TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


def _read_lock(path: StoragePath) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished since


def _holder_alive(lock: dict[str, Any]) -> bool:
    """True unless the lock's process is known to be gone (same host, no such pid)."""
    if lock.get("host") != socket.gethostname():
        return True  # another machine: cannot tell, so never steal it
    try:
        os.kill(int(lock.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def storage_failure(err: BaseException) -> str | None:
    """The storage error behind a failed Spark job (disk full, permission denied, ...): the message of
    the deepest java.io / java.nio.file exception in the server's cause chain, or None if there is none.

    Read from the JVM stack trace as text, the same way for every session: Spark Connect's exceptions
    carry the server's (`getStackTrace()`, one "Caused by: class: message" line per cause), classic
    pyspark's captured exceptions keep the JVM's in `_stackTrace` (no public accessor there), and
    py4j's Py4JJavaError prints it as its message."""
    if isinstance(err, OSError):
        return f"{err.strerror or err} ({err.filename})" if err.filename else str(err)
    trace = _server_stack_trace(err)
    found = None
    for line in trace.splitlines():
        # Only the cause chain: the trace's first line(s) and unindented "Caused by:" lines; indented
        # ones belong to suppressed exceptions.
        match = _STORAGE_EXCEPTION_LINE.match(line)
        if match:
            found = match.group("message") or match.group("name")
    return found


# "java.io.IOException: No space left on device", as a trace's head (after py4j's ": ") or a cause.
_STORAGE_EXCEPTION_LINE = re.compile(
    r"^(?:Caused by: |: )?(?P<name>(?:java\.io|java\.nio\.file)\.[\w$.]+)(?:: (?P<message>.*?))?\s*$")


def _server_stack_trace(err: BaseException) -> str:
    """The JVM stack trace behind a pyspark error as text ('' when there is none)."""
    get_stack_trace = getattr(err, "getStackTrace", None)
    trace = get_stack_trace() if callable(get_stack_trace) else None
    if trace is None:
        trace = getattr(err, "_stackTrace", None)
    if trace is None and type(err).__module__.startswith("py4j"):
        trace = str(err)
    return trace or ""


def table_dataset(table_uri: str) -> "pyarrow.dataset.Dataset":
    """The current version of the lake table whose root folder is `table_uri`, as a pyarrow dataset
    over the lake's filesystem (partition columns from the files' `key=value` folders): for code
    without a Lake or a Spark session (training ranks, pandas, tests)."""
    root = storage.resolve(table_uri)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise LakeError(f"lake table {table_uri} is missing (no {MANIFEST}); run the stage that writes it first") from None
    return _arrow_dataset(root, manifest)


def _arrow_dataset(root: StoragePath, manifest: dict[str, Any]) -> "pyarrow.dataset.Dataset":
    import pyarrow.dataset as ds

    files = _current_files(root, manifest)
    return ds.dataset([file.path for file in files], filesystem=root.fs, format="parquet", partitioning="hive")


def _storage_path(path: StoragePath | str | os.PathLike[str]) -> StoragePath:
    return path if isinstance(path, StoragePath) else storage.resolve(path)


def _absolute_uri(path: StoragePath) -> str:
    """`path` as a URI another engine can open: file:///... for a local path, else its own URI. Not
    percent-encoded: Hadoop's Path would encode `%` again, and partition folders hold `=`."""
    return f"file://{path.path}" if path.is_local and storage.is_local_uri(path.uri) else path.uri


def write_json(path: StoragePath | str | os.PathLike[str], payload: Any) -> None:
    """Write JSON to a lake file (a StoragePath; a local path is accepted too) in one atomic
    replace, so readers never see half a file."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(path: StoragePath | str | os.PathLike[str]) -> Any:
    """The JSON in a lake file (a StoragePath, or a local path)."""
    return json.loads(_storage_path(path).read_text())


def write_text_atomic(path: StoragePath | str | os.PathLike[str], text: str) -> None:
    """Replace a lake file's text whole (StoragePath.write_text: temp file + rename, or one PUT)."""
    _storage_path(path).write_text(text)
