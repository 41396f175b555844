"""Model versions on the lake: `models/<name>/<version>/` plus a `LATEST` pointer file."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight import __version__
from ecominsight.errors import LakeError
from ecominsight.io import LATEST, Lake, write_text_atomic


def new_version(fingerprint: str) -> str:
    """`vYYYYmmddTHHMMSSZ-<data fingerprint prefix>`: sortable by time, tied to the data."""
    return f"v{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{fingerprint[:8]}"


def data_fingerprint(df: DataFrame) -> str:
    """A content hash of a table, order-independent, computed where the data lives."""
    row = df.select(F.count(F.lit(1)).alias("n"), F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)")).alias("h")).first()
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
        if not pointer.is_file():
            raise LakeError(f"no trained {name!r} model under {lake.model_root(name)}; run the 'train' stage first")
        version = pointer.read_text(encoding="utf-8").strip()
    # A version names a folder under models/<name>/: from config or a LATEST file, it must not climb out.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", version):
        raise LakeError(f"model {name!r} version {version!r} is not a version name (letters, digits, '.', '_', '-')")
    if not lake.model_dir(name, version).is_dir():
        raise LakeError(f"model {name!r} version {version!r} does not exist at {lake.model_dir(name, version)}")
    return version
