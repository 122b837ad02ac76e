"""Keep a results table in a Markdown file (the README) equal to what the report prints.

A block is marked in the file by two HTML comments that name the report's folder::

    <!-- report results/omniglot: begin (python -m fewshot.reporting results/omniglot --readme README.md) -->
    ...the report's table.md...
    <!-- report results/omniglot: end -->

``python -m fewshot.reporting results/omniglot --readme README.md`` rewrites what is between them.
"""

from __future__ import annotations

import re
from pathlib import Path

from fewshot.io import write_text_atomic


class ReadmeBlockError(ValueError):
    """The Markdown file has no (or a broken) block marked for this report."""


def block_pattern(source: str) -> re.Pattern[str]:
    """The marked block of the report over ``source`` (a folder as given on the command line)."""
    name = re.escape(source.rstrip("/"))
    return re.compile(
        rf"(<!-- report {name}: begin[^>]*-->\n)(.*?)(<!-- report {name}: end -->)",
        re.DOTALL,
    )


def read_block(text: str, source: str) -> str:
    """The content of the block marked for ``source`` in ``text``."""
    match = block_pattern(source).search(text)
    if match is None:
        raise ReadmeBlockError(
            f"no block marked '<!-- report {source}: begin ... -->' ... '<!-- report {source}: end -->'; "
            "add the two markers where the table goes."
        )
    return match.group(2)


def update_block(path: Path, source: str, content: str) -> bool:
    """Replace the block marked for ``source`` in the file at ``path``; True when it changed."""
    text = Path(path).read_text()
    read_block(text, source)  # a clear error when the markers are missing
    updated = block_pattern(source).sub(lambda m: m.group(1) + content + m.group(3), text, count=1)
    if updated == text:
        return False
    write_text_atomic(Path(path), updated)
    return True
