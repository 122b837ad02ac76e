"""Silence library notices that say nothing about the user's run (adverts, internal deprecations).

Only exact, known messages are dropped; every other warning and log line passes unchanged.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's own code calls an API that torch deprecated; nothing a user of fewshot can change.
LIBRARY_DEPRECATIONS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)
# Lightning logs advertisements for its cloud products when a trainer is built.
ADVERT_PREFIX = "💡 Tip:"
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class DropAdverts(logging.Filter):
    """A logging filter that drops Lightning's product tips."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except a tip."""
        return not str(record.msg).startswith(ADVERT_PREFIX)


def silence_library_noise() -> None:
    """Install the warning filters and the log filter (idempotent)."""
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdverts) for f in logger.filters):
            logger.addFilter(DropAdverts())
