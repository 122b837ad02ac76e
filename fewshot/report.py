"""Old command of the report: ``python -m fewshot.report ...`` runs ``python -m fewshot.reporting ...``
(the code is in :mod:`fewshot.reporting.build`, whose ``build_report`` and ``main`` this re-exports)."""

import sys

from fewshot.reporting.build import build_report, main

__all__ = ["build_report", "main"]

if __name__ == "__main__":
    sys.exit(main())
