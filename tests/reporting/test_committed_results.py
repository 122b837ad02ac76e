"""The committed results: the README's tables are what the report prints from them, and they
hold no path of the machine that produced them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fewshot.reporting.build import main as report_main
from fewshot.reporting.build import tables_markdown
from fewshot.reporting.readme import read_block
from fewshot.reporting.runs import load_runs
from fewshot.reporting.table import build_cells
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
BEGIN = re.compile(r"<!-- report (\S+): begin")
SOURCES = BEGIN.findall(README.read_text())


def test_the_readme_has_a_results_table_made_by_the_report():
    assert "results/omniglot" in SOURCES


@pytest.mark.parametrize("source", SOURCES)
def test_readme_table_equals_the_report_of_the_committed_results(source):
    folder = PROJECT_ROOT / source
    assert folder.is_dir(), f"README shows the report of {source}, which is not in the repository"
    expected = tables_markdown(build_cells(load_runs([folder])))
    assert read_block(README.read_text(), source) == expected, (
        f"README's table of {source} is not what the report prints; "
        f"regenerate it: python -m fewshot.reporting {source} --readme README.md"
    )


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
def test_the_report_command_alone_regenerates_the_committed_tables_and_paired_tests(
    source, tmp_path, monkeypatch, capsys
):
    """``python -m fewshot.reporting <source>`` (its options from ``<source>/report.yaml``) writes
    the committed table and paired tests again, byte for byte, and leaves the README's table as it is."""
    monkeypatch.chdir(PROJECT_ROOT)
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    assert report_main([source, "--out", str(tmp_path / "report"), "--readme", str(readme)]) == 0
    assert f"unchanged: the table of {source}" in capsys.readouterr().out
    committed = PROJECT_ROOT / source / "report"
    for name in ("table.md", "table.csv", "paired.md", "paired.csv"):
        assert (tmp_path / "report" / name).read_text() == (committed / name).read_text(), (
            f"{source}/report/{name} is not what the report writes; regenerate: python -m fewshot.reporting {source}"
        )


def test_every_committed_omniglot_run_names_its_line_of_the_queue():
    """`run_queue.py --skip-collected results/omniglot` skips exactly the committed runs."""
    queue = PROJECT_ROOT / "scripts" / "omniglot_converged.txt"
    queued = {line.split()[0] for line in queue.read_text().splitlines() if line and line[0] not in "#@"}
    files = (PROJECT_ROOT / "results" / "omniglot").rglob("results.json")
    names = [json.loads(p.read_text()).get("run_name") for p in files]
    assert names and set(names) <= queued, sorted(set(names) - queued)
    assert len(set(names)) == len(names)
