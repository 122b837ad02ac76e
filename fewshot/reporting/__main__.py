"""``python -m fewshot.reporting <run dirs or multirun dirs> ...``: the report (see :mod:`fewshot.reporting.build`)."""

import sys

from fewshot.reporting.build import main

if __name__ == "__main__":
    sys.exit(main())
