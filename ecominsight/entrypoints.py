"""Console entry points, one per stage (`ecominsight-clean`, …), for Databricks `python_wheel_task`s
and any scheduler that runs an installed wheel.

Databricks calls the entry point with the task's `parameters` as `sys.argv[1:]` inside its own
Python process and session: a stage must return normally on success (no `sys.exit(0)`, which a
notebook-style runner reports as a failure on some runtimes) and raise on failure so the task fails.
"""

from __future__ import annotations

import sys
from typing import Callable

from ecominsight.cli import main


def _entry_point(stage: str) -> Callable[[], None]:
    """The console entry point of one stage: `ecominsight-<stage> [--env …] [--set key=value …]`."""

    def run() -> None:
        status = main(stage, sys.argv[1:])
        if status != 0:
            raise SystemExit(status)

    run.__name__ = run.__qualname__ = stage
    run.__doc__ = f"Run the {stage!r} stage with sys.argv as its arguments (see `ecominsight-{stage} --help`)."
    return run


clean = _entry_point("clean")
fuse = _entry_point("fuse")
train = _entry_point("train")
score = _entry_point("score")
insights = _entry_point("insights")
register = _entry_point("register")
pipeline = _entry_point("pipeline")
