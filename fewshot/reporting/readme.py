"""Keep marked blocks of Markdown files equal to what the report prints: the README's results
table (``--readme``) and a results page (``--page``) with every table, paired test and figure.

A block is marked in a file by two HTML comments that name the report's folder::

    <!-- report results/omniglot: begin (python -m fewshot.reporting results/omniglot) -->
    ...generated...
    <!-- report results/omniglot: end -->

Text outside the markers is the authors' and is kept as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
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


def check_block(path: Path, source: str) -> None:
    """Refuse, before anything is written, a file without the block marked for ``source``."""
    try:
        read_block(Path(path).read_text(), source)
    except ReadmeBlockError as err:
        raise ReadmeBlockError(f"{path}: {err}") from None


def update_block(path: Path, source: str, content: str) -> bool:
    """Replace the block marked for ``source`` in the file at ``path``; True when it changed."""
    text = Path(path).read_text()
    read_block(text, source)  # a clear error when the markers are missing
    updated = block_pattern(source).sub(lambda m: m.group(1) + content + m.group(3), text, count=1)
    if updated == text:
        return False
    write_text_atomic(Path(path), updated)
    return True


def link_from(document: Path, target: Path) -> str:
    """``target`` as a relative Markdown link from the file ``document`` (both relative to the same folder)."""
    return Path(os.path.relpath(target, Path(document).parent)).as_posix()


def readme_block(accuracy_table: str, details: str) -> str:
    """The README's block: the accuracy table and a link to the page that has the rest."""
    return (
        accuracy_table
        + f"\nHow each run trained and stopped, tested checkpoints, paired tests, figures: [{details}]({details}).\n"
    )


def page_block(
    tables: str, paired: str, figures: Sequence[tuple[str, str]], gate_figures: Sequence[tuple[str, str]]
) -> str:
    """The results page's block: the report's tables, its paired tests, its figures (``(title, link)``)
    and links to the Meta-LSTM gate figures of single runs."""
    text = tables + "\n### Paired tests\n\n" + paired
    if figures:
        text += "\n### Figures\n\n" + "".join(f"![{title}]({link})\n\n" for title, link in figures)
    if gate_figures:
        text += "Meta-LSTM gates per update and layer, one figure per run (`python -m fewshot.reporting` draws them):\n"
        text += "".join(f"- [{title}]({link})\n" for title, link in gate_figures)
    return text
