import sys

from ecominsight.cli import main

sys.exit(main())
