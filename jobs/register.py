"""spark-submit entry point for the 'register' stage (also: python -m jobs.register)."""

import sys

from ecominsight.cli import main

if __name__ == "__main__":
    sys.exit(main(stage="register"))
