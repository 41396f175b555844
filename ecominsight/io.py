"""All reading and writing: raw sources through a preset, lake tables, and JSON artifacts."""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight.presets import Preset
from ecominsight.transforms.clean import CORRUPT, SOURCE_FILE

log = logging.getLogger(__name__)


class LakeError(RuntimeError):
    """An input or lake path is missing or unusable; the message says what to do."""


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


def read_source(spark: SparkSession, preset: Preset, paths: list[str]) -> DataFrame:
    """Read raw rows as the preset describes. Output: string columns named as in the source,
    `_source_file`, and for text formats `_corrupt_record` (the raw line of a malformed record)."""
    check_inputs_exist(paths, preset=preset.name)
    if preset.format == "csv":
        reader = (
            spark.read.option("sep", preset.delimiter)
            .option("header", preset.header)
            .option("encoding", preset.encoding)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
        )
        if preset.columns:
            names = list(preset.columns)
        else:
            names = [c for c in reader.option("inferSchema", False).csv(paths).columns]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())])
        frame = reader.schema(schema).csv(paths)
    elif preset.format == "parquet":
        frame = spark.read.option("mergeSchema", True).parquet(*paths)
        frame = frame.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in frame.columns])
    else:  # json lines
        frame = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT) \
            .option("primitivesAsString", True).json(paths)
        frame = frame.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in frame.columns])
    return frame.withColumn(SOURCE_FILE, F.input_file_name())


class Lake:
    """Paths of the lake zones (see DESIGN.md, "Lake layout") and table I/O on them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_path(self, zone: str, table: str) -> str:
        return str(self.root / zone / table)

    def model_dir(self, name: str, version: str) -> Path:
        return self.root / "models" / name / version

    def report_dir(self, run_id: str) -> Path:
        return self.root / "reports" / run_id

    def write(self, df: DataFrame, zone: str, table: str, *, partition_by: list[str] | None = None) -> str:
        """Write a table as Parquet. Partitioned tables use dynamic partition overwrite, so a
        re-run replaces exactly the partitions it recomputes; others are replaced whole."""
        path = self.table_path(zone, table)
        if partition_by:
            # One task per partition value: one file per partition instead of one per (task, value).
            writer = df.repartition(*partition_by).write.mode("overwrite")
            writer = writer.option("partitionOverwriteMode", "dynamic").partitionBy(*partition_by)
        else:
            writer = df.write.mode("overwrite")
        writer.parquet(path)
        log.info("wrote %s/%s to %s", zone, table, path)
        return path

    def read(self, spark: SparkSession, zone: str, table: str, *, written_by: str) -> DataFrame:
        """Read a lake table, or say which stage must run first."""
        path = self.table_path(zone, table)
        if _is_local(path) and not Path(path).exists():
            raise LakeError(f"lake table {zone}/{table} is missing at {path}; run the {written_by!r} stage first")
        return spark.read.parquet(path)

    def exists(self, zone: str, table: str) -> bool:
        return Path(self.table_path(zone, table)).exists()


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
