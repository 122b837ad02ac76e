"""The pre-commit hooks run offline and do what CONTRIBUTING.md says they do."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _hooks() -> list[dict]:
    """Every hook of .pre-commit-config.yaml, with the repo it comes from."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [dict(hook, repo=repo["repo"]) for repo in config["repos"] for hook in repo["hooks"]]


def _ruff() -> str:
    """The ruff executable of the running environment (the dev extras install it)."""
    beside_python = Path(sys.executable).parent / "ruff"
    return str(beside_python) if beside_python.exists() else shutil.which("ruff") or "ruff"


def test_every_hook_is_local_and_needs_no_download():
    hooks = _hooks()
    assert {h["id"] for h in hooks} == {"ruff-check", "ruff-format"}
    assert all(h["repo"] == "local" and h["language"] == "system" for h in hooks)


def test_hooks_fix_lint_and_format_of_a_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys,os\nx = {  'a':1 }\n")
    for hook in _hooks():
        command, *args = shlex.split(hook["entry"])
        assert command == "ruff"
        subprocess.run([_ruff(), *args, "--config", str(ROOT / "pyproject.toml"), str(bad)], cwd=tmp_path)
    assert bad.read_text() == 'x = {"a": 1}\n'  # unused imports removed, then formatted
