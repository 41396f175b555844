"""spark-submit entry point for the 'insights' stage (also: python -m jobs.insights)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="insights"))
