"""Model versions on the lake: `models/<name>/<version>/` plus a `LATEST` pointer file per model, and
`models/CHAMPION` naming the model and version that score the users."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ecominsight import __version__
from ecominsight.errors import LakeError
from ecominsight.io import LATEST, Lake, read_json, write_json, write_text_atomic


def new_version(fingerprint: str) -> str:
    """`vYYYYmmddTHHMMSSZ-<data fingerprint prefix>`: sortable by time, tied to the data."""
    return f"v{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{fingerprint[:8]}"


def data_fingerprint(df: DataFrame) -> str:
    """A content hash of a table, order-independent, computed where the data lives."""
    # Spark refuses to hash maps (equal maps may hash apart): a map is hashed as its entries sorted by key.
    hashable = [F.array_sort(F.map_entries(F.col(f"`{f.name}`"))) if isinstance(f.dataType, T.MapType)
                else F.col(f"`{f.name}`") for f in df.schema.fields]
    row = df.select(F.count(F.lit(1)).alias("n"), F.sum(F.xxhash64(*hashable).cast("decimal(38,0)")).alias("h")).first()
    return hashlib.sha256(f"{row['n']}:{row['h']}".encode()).hexdigest()


def stable_hash(payload: object) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5, check=True).stdout.strip()
        return f"{__version__}+{commit}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def publish(lake: Lake, name: str, version: str) -> None:
    """Point `models/<name>/LATEST` at a complete version directory (written last, atomically)."""
    write_text_atomic(lake.model_pointer(name, LATEST), version + "\n")


def resolve_version(lake: Lake, name: str, version: str) -> str:
    """`latest` -> the published version; an explicit version must exist."""
    if version == "latest":
        pointer = lake.model_pointer(name, LATEST)
        if not pointer.exists():
            raise LakeError(f"no trained {name!r} model under {lake.model_root(name)}; run the 'train' stage first")
        version = pointer.read_text().strip()
    # A version names a folder under models/<name>/: from config or a LATEST file, it must not climb out.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", version):
        raise LakeError(f"model {name!r} version {version!r} is not a version name (letters, digits, '.', '_', '-')")
    if not lake.model_dir(name, version).exists():
        raise LakeError(f"model {name!r} version {version!r} does not exist at {lake.model_dir(name, version)}")
    return version


def publish_champion(lake: Lake, name: str, version: str, *, reason: str) -> None:
    """Point `models/CHAMPION` at `models/<name>/<version>` (written atomically, after its LATEST)."""
    write_json(lake.champion_pointer(), {"model": name, "version": version, "reason": reason})


def resolve_champion(lake: Lake) -> tuple[str, str] | None:
    """(model name, version) of `models/CHAMPION`, checked like any version; None on a lake trained
    before champions existed."""
    pointer = lake.champion_pointer()
    if not pointer.exists():
        return None
    record = read_json(pointer)
    name = str(record["model"])
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise LakeError(f"{pointer} names {name!r}, which is not a model name")
    return name, resolve_version(lake, name, str(record["version"]))
