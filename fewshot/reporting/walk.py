"""Finding files by name below a folder, symlinked folders followed: the one walk of the report,
collect and the run queue (``--skip-collected``). Imports no torch (the run queue uses it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def files_below(root: Path, name: str) -> Iterator[Path]:
    """Every file called ``name`` below ``root``, symlinked folders followed; each folder is walked
    once, and a link that loops back to a folder it lies in, or whose target is missing, is
    skipped with a warning naming it."""
    walked = {os.path.realpath(root)}
    for here, dirnames, filenames in os.walk(root, followlinks=True):
        real_here = os.path.realpath(here)
        kept = []
        for folder in sorted(dirnames):
            real = os.path.realpath(os.path.join(here, folder))
            if real == real_here or real_here.startswith(real.rstrip(os.sep) + os.sep):
                log.warning("skipped %s: a link to %s, a folder it lies in (it would loop)", Path(here, folder), real)
            elif real not in walked:  # another link to a folder walked already: its files are found there
                walked.add(real)
                kept.append(folder)
        dirnames[:] = kept
        for file in filenames:
            path = Path(here, file)
            if path.is_symlink() and not path.exists():
                log.warning("skipped %s: a link to %s, which does not exist", path, os.readlink(path))
            elif file == name:
                yield path
