"""The committed results: the README's table and docs/results.md are what the report writes from
them, byte for byte, and they hold no path of the machine that produced them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fewshot.reporting.build import main as report_main
from fewshot.reporting.options import read_folder_options
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
BEGIN = re.compile(r"<!-- report (\S+): begin")
SOURCES = BEGIN.findall(README.read_text())
README_MAX_LINES = 200  # issue 38 item 7: the README is a page; the results live in docs/results.md


def test_the_readme_has_a_results_table_made_by_the_report():
    assert "results/omniglot" in SOURCES


def test_the_readme_is_a_page_of_at_most_200_lines():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/ (at most {README_MAX_LINES})"


def strings(value: object):
    """Every string inside a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("source", SOURCES)
def test_committed_results_hold_no_machine_paths(source):
    files = sorted((PROJECT_ROOT / source).rglob("results.json"))
    assert files
    for path in files:
        absolute = [s for s in strings(json.loads(path.read_text())) if s.startswith("/") or str(Path.home()) in s]
        assert not absolute, f"{path} holds machine paths {absolute[:3]}; collect it with fewshot.reporting.collect"


@pytest.mark.parametrize("source", SOURCES)
def test_the_report_command_alone_regenerates_the_committed_readme_page_tables_and_paired_tests(
    source, tmp_path, monkeypatch, capsys
):
    """``python -m fewshot.reporting <source>`` (its options from ``<source>/report.yaml``), run in a
    copy of the project, writes the README's block, the results page's block, the tables and the
    paired tests again byte for byte: every one of them is reported unchanged and equals the committed file."""
    options = read_folder_options([PROJECT_ROOT / source])
    assert options.readme == Path("README.md") and options.page is not None, "report.yaml names README and page"
    documents = [options.readme, options.page]
    for name in documents:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / source, tmp_path / source)
    monkeypatch.chdir(tmp_path)
    assert report_main([source]) == 0
    out = capsys.readouterr().out
    assert f"unchanged: the table of {source} in README.md" in out
    assert f"unchanged: the results of {source} in {options.page}" in out
    report = Path(source) / "report"
    written = [*documents, *(report / name for name in ("table.md", "table.csv", "paired.md", "paired.csv"))]
    for name in written:
        assert (tmp_path / name).read_text() == (PROJECT_ROOT / name).read_text(), (
            f"{name} is not what the report writes; regenerate: python -m fewshot.reporting {source}"
        )


def test_every_committed_omniglot_run_names_its_line_of_the_queue():
    """`run_queue.py --skip-collected results/omniglot` skips exactly the committed runs."""
    queue = PROJECT_ROOT / "scripts" / "omniglot_converged.txt"
    queued = {line.split()[0] for line in queue.read_text().splitlines() if line and line[0] not in "#@"}
    files = (PROJECT_ROOT / "results" / "omniglot").rglob("results.json")
    names = [json.loads(p.read_text()).get("run_name") for p in files]
    assert names and set(names) <= queued, sorted(set(names) - queued)
    assert len(set(names)) == len(names)
