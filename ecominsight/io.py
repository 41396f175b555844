"""All reading and writing: raw sources through a preset, lake tables, and JSON artifacts."""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import catalog
from ecominsight.catalog import Table
from ecominsight.errors import LakeError
from ecominsight.presets import Preset, TableSource
from ecominsight.schema import CORRUPT, SOURCE_FILE, SOURCE_LINE
from ecominsight.session import default_parallelism

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
def staging_area(workdir: str | Path | None = None) -> Iterator[Callable[[list[str]], list[str]]]:
    """A scratch folder for one run's unpacked archives (under `workdir`, else the system temp).

    Yields `stage(paths) -> paths`: each local `.zip` (or glob matching zips) is replaced by the
    files it holds, extracted into the folder; other paths pass as they are. The folder is removed
    on exit, so whatever reads the staged files (Spark is lazy) must run inside the `with`.
    """
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="staging-", dir=workdir))
    try:
        yield lambda paths: [staged for path in paths for staged in _unpack(path, root)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
        log.info("removed the staging folder %s", root)


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
# Folders of a zone that are not tables: a write in progress, and the table it replaces.
STAGED_PREFIX, RETIRED_PREFIX = "_staged-", "_retired-"


# Tasks per core of a partitioned write: a few, so that days of unequal size even out across cores.
WRITE_TASKS_PER_CORE = 2


class Lake:
    """Every path under the lake root (README.md, "Layout"): tables of the catalog, model
    versions and their pointers, checkpoints, reports, the pseudonym key, staging and the lock;
    and the table I/O on them. Nothing outside the I/O layer builds a lake path."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- paths ----------------------------------------------------------------------------------

    def table_path(self, table: Table) -> str:
        return str(self.root / table.zone / table.name)

    def table_uri(self, table: Table) -> str:
        """The table's location as a URI, for a metastore or another engine (`file:///...` here)."""
        return Path(self.table_path(table)).resolve().as_uri()

    def model_root(self, name: str) -> Path:
        """`models/<name>/`: the versions of one model and its pointers."""
        return self.root / "models" / name

    def model_dir(self, name: str, version: str) -> Path:
        return self.model_root(name) / version

    def model_pointer(self, name: str, pointer: str = LATEST) -> Path:
        """`models/<name>/<pointer>`: a small file naming the version the pointer designates."""
        return self.model_root(name) / pointer

    def champion_pointer(self) -> Path:
        """`models/CHAMPION`: the model name and version the train stage chose to score users with."""
        return self.root / "models" / CHAMPION

    def checkpoint_dir(self, name: str, key: str) -> Path:
        """`checkpoints/<name>/<key>/`: one training run's per-epoch checkpoints (`key` names the run)."""
        return self.root / "checkpoints" / name / key

    def report_dir(self, run_id: str) -> Path:
        return self.root / "reports" / run_id

    def run_reports(self, filename: str) -> list[Path]:
        """`reports/<run_id>/<filename>` of every run that wrote one, oldest first."""
        return sorted((self.root / "reports").glob(f"*/{filename}"), key=lambda p: p.stat().st_mtime)

    def key_file(self) -> Path:
        """The lake's own pseudonym key (used when no key comes from the environment)."""
        return self.root / "_secrets" / "pseudonym.key"

    def staging_dir(self) -> Path:
        """Where a run unpacks archives it reads (a folder per run inside, removed when it ends)."""
        return self.root / "_staging"

    def _lock_path(self) -> Path:
        return self.root / "_lock"

    # ---- tables ---------------------------------------------------------------------------------

    def write(self, df: DataFrame, table: Table) -> str:
        """Write a table as Parquet. Partitioned tables use dynamic partition overwrite, so a
        re-run replaces exactly the partitions it recomputes; others are replaced whole."""
        path = self.table_path(table)
        self._recover(table)
        existed = Path(path).exists()
        staged = None if table.partition_by else self.root / table.zone / f"{STAGED_PREFIX}{table.name}-{uuid.uuid4().hex[:8]}"
        try:
            if table.partition_by:
                # Hashed on the partition columns, each value lands in one task: one file per partition
                # instead of one per (task, value). The task count is explicit: left to adaptive execution,
                # a shuffle of a few hundred MB is coalesced into fewer tasks than there are cores.
                # Spark stages the files and moves each partition in only when the job commits.
                tasks = WRITE_TASKS_PER_CORE * default_parallelism(df.sparkSession)
                writer = df.repartition(tasks, *table.partition_by).write.mode("overwrite")
                writer.option("partitionOverwriteMode", "dynamic").partitionBy(*table.partition_by).parquet(path)
            else:
                # Written beside the table, then swapped in by two renames: a run killed mid-write leaves
                # the previous table whole (Spark's own overwrite deletes it before writing the new one).
                df.write.parquet(str(staged))
                self._swap_in(staged, table)
        except Exception as err:
            # No partial output: the unfinished copy goes, and so does the empty folder a failed first
            # write of a partitioned table leaves (a reader would take it for an empty table).
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            elif not existed and _is_local(path) and next(Path(path).rglob("*.parquet"), None) is None:
                shutil.rmtree(path, ignore_errors=True)
            cause = storage_failure(err)
            if cause is None:
                raise
            raise LakeError(f"cannot write lake table {table} at {path}: {cause}") from err
        log.info("wrote %s to %s", table, path)
        return path

    def _swap_in(self, staged: Path, table: Table) -> None:
        target = Path(self.table_path(table))
        retired = target.with_name(f"{RETIRED_PREFIX}{table.name}-{staged.name.rsplit('-', 1)[-1]}")
        if target.exists():
            os.rename(target, retired)
        os.rename(staged, target)
        shutil.rmtree(retired, ignore_errors=True)

    def _recover(self, table: Table) -> None:
        """Finish or undo a swap that a killed run left half done: a table missing beside its retired
        copy gets that copy back; staged copies of unfinished writes are removed."""
        folder, target = self.root / table.zone, Path(self.table_path(table))
        if not folder.is_dir():
            return
        retired = sorted(folder.glob(f"{RETIRED_PREFIX}{table.name}-*"), key=lambda p: p.stat().st_mtime)
        if retired and not target.exists():
            os.rename(retired[-1], target)
            log.warning("restored %s from %s: a previous run stopped while swapping it in", table, retired[-1].name)
            retired = retired[:-1]
        # Spark's own staging folder of a partitioned write that never committed (readers skip it).
        leftovers = [*retired, *folder.glob(f"{STAGED_PREFIX}{table.name}-*"), *target.glob(".spark-staging-*")]
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)

    def read(self, spark: SparkSession, table: Table, *, schema: T.StructType | None = None) -> DataFrame:
        """Read a lake table, or say which stage must run first. A partitioned table written from no
        rows has no files; with its `schema` given, it reads as empty instead of failing."""
        path = self.table_path(table)
        self._recover(table)
        if _is_local(path) and not Path(path).exists():
            raise LakeError(f"lake table {table} is missing at {path}; run the {table.written_by!r} stage first")
        if schema is not None and _is_local(path) and next(Path(path).rglob("*.parquet"), None) is None:
            return spark.createDataFrame([], schema)
        return spark.read.parquet(path)

    def exists(self, table: Table) -> bool:
        self._recover(table)
        return Path(self.table_path(table)).exists()

    def tables(self, zone: str) -> list[Table]:
        """The tables written in a zone (folders holding Parquet data), sorted by name."""
        folder = self.root / zone
        if not folder.is_dir():
            return []
        return [catalog.table(zone, child.name) for child in sorted(folder.iterdir())
                if child.is_dir() and not child.name.startswith(("_", ".")) and next(child.rglob("*.parquet"), None)]

    def drop(self, table: Table) -> None:
        """Remove a table if it exists (a table a run does not produce must not outlive it)."""
        path = Path(self.table_path(table))
        if path.exists():
            shutil.rmtree(path)
            log.info("removed %s from %s", table, path)

    # ---- the write lock -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """Hold the lake's write lock for the duration: a second run on the same lake refuses to
        start (LakeError naming the holder) instead of mixing its partitions with the first's.
        A lock left by a process that no longer runs on this host is taken over."""
        path = self._lock_path()
        self.root.mkdir(parents=True, exist_ok=True)
        mine = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = _read_lock(path)
                # Unreadable and fresh: the holder is writing it this instant.
                fresh = other is None and time.time() - path.stat().st_mtime < 10
                if fresh or (other is not None and _holder_alive(other)):
                    other = other or {"holder": "a run starting now"}
                    raise LakeError(
                        f"the lake {self.root} is in use by {other.get('holder')} (pid {other.get('pid')} on "
                        f"{other.get('host')}, since {time.ctime(other.get('since', 0))}); wait for it to finish, "
                        f"or remove {path} if that run is known to be dead") from None
                log.warning("taking over the lake lock %s from a run that is gone: %s", path, other)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(mine, handle)
            break
        else:
            raise LakeError(f"could not take the lake lock {path}: another run keeps taking it")
        try:
            yield
        finally:
            if _read_lock(path) == mine:
                path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # vanished, or half-written by a holder killed while writing it


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


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        tmp = handle.name
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as handle:
        handle.write(text)
        tmp = handle.name
    os.replace(tmp, path)
