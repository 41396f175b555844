"""The one logging setup of every command line: the CLI, the benchmarks and the data builders.

Library modules only ask for loggers (`logging.getLogger(__name__)`); the program that runs them
decides where records go, by calling `setup_logging` once at its start.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Records at `level` and above to stderr, one line each in LOG_FORMAT.

    Does nothing where the root logger already has a handler: a second call, or a host that set up
    its own logging (Databricks, a notebook, pytest), keeps the handlers it has and none is doubled."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
