"""spark-submit entry point for the 'train' stage (also: python -m jobs.train)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="train"))
