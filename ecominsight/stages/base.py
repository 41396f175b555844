"""What every stage shares: its typed result, and frames persisted for the length of a block."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from ecominsight.io import Lake, write_json


@dataclasses.dataclass(frozen=True)
class StageResult:
    """A stage's outcome: written to `reports/<run_id>/<stage>.json` and summed up by the CLI."""

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data: the shape of the stage's JSON report."""
        return dataclasses.asdict(self)

    def describe(self, lake: Lake) -> list[str]:
        """Lines the command line prints about where this stage's outputs are (none by default)."""
        return []

    def write(self, lake: Lake, run_id: str, stage: str) -> None:
        """Write the result to `reports/<run_id>/<stage>.json`."""
        write_json(lake.report_dir(run_id) / f"{stage}.json", self.to_dict())


@contextmanager
def persisted(frame: DataFrame, level: StorageLevel) -> Iterator[DataFrame]:
    """`frame` persisted at `level` for the block, unpersisted after it (also on error)."""
    frame = frame.persist(level)
    try:
        yield frame
    finally:
        frame.unpersist()
