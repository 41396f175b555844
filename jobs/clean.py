"""spark-submit entry point for the 'clean' stage (also: python -m jobs.clean)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="clean"))
