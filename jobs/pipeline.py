"""spark-submit entry point for the 'pipeline' stage (also: python -m jobs.pipeline)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="pipeline"))
