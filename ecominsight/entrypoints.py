"""Console entry points, one per stage (`ecominsight-clean`, …), for Databricks `python_wheel_task`s
and any scheduler that runs an installed wheel.

Databricks calls the entry point with the task's `parameters` as `sys.argv[1:]` inside its own
Python process and session: a stage must return normally on success (no `sys.exit(0)`, which a
notebook-style runner reports as a failure on some runtimes) and raise on failure so the task fails.
"""

from __future__ import annotations

import sys

from ecominsight.cli import main


def _run(stage: str) -> None:
    status = main(stage, sys.argv[1:])
    if status != 0:
        raise SystemExit(status)


def clean() -> None:
    """raw source -> clean/ + quarantine/ (see `ecominsight-clean --help`)."""
    _run("clean")


def fuse() -> None:
    """clean/ -> features/ (see `ecominsight-fuse --help`)."""
    _run("fuse")


def train() -> None:
    """features/ -> models/ (see `ecominsight-train --help`)."""
    _run("train")


def score() -> None:
    """features/ + models/ -> scores/ (see `ecominsight-score --help`)."""
    _run("score")


def insights() -> None:
    """scores/ + clean/ -> insights/ + the report (see `ecominsight-insights --help`)."""
    _run("insights")


def register() -> None:
    """lake tables -> external tables in the metastore (see `ecominsight-register --help`)."""
    _run("register")


def pipeline() -> None:
    """clean -> fuse -> train -> score -> insights in one process."""
    _run("pipeline")
