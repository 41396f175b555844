"""spark-submit entry point for the 'score' stage (also: python -m jobs.score)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="score"))
