"""Process-wide settings of a run: keep freed memory (glibc), and silence library notices."""

from __future__ import annotations

import ctypes
import logging
import platform
import warnings
from functools import cache

log = logging.getLogger(__name__)

# Keep freed memory in the process instead of handing it back to the OS (glibc only).
#
# A Meta-LSTM episode builds and frees a meta-graph of hundreds of MiB (the gates of every step),
# in blocks of a few MiB. glibc's default gives freed memory at the top of its heap back to the
# kernel, so the next episode touches fresh pages again: a page fault per 4 KiB, about 45,000 per
# Omniglot 1-shot T=5 episode measured here, and episode times that swing by a third between runs.
# With a fixed mmap threshold (32 MiB, glibc's maximum) and a trim threshold above any episode,
# the same memory is reused from one episode to the next: no faults, steady timings. The cost is
# that the process keeps its peak heap, which a training run reaches in its first episode anyway.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses larger values (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before any is returned


@cache
def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the comment above) for this process, once; whether
    the setting took effect (``False`` where the C library is not glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("retain_freed_memory: not glibc, allocator left as it is")
        return False
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(trim and mmap)


# Silence library notices that say nothing about the user's run (adverts, internal deprecations).
#
# Only exact, known messages are dropped; every other warning and log line passes unchanged.
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
