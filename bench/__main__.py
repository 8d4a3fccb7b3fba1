"""``python -m bench``: run the benchmark; ``--help`` lists the options."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
