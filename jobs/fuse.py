"""spark-submit entry point for the 'fuse' stage (also: python -m jobs.fuse)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="fuse"))
