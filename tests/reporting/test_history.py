"""A committed test result is never silently replaced, and a row's history comes from git log
(issue 36 item 6)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fewshot.reporting.build import main as report_main
from fewshot.reporting.history import ReplacementError, check_replacement
from tests.reporting.test_report import A, B, write_run


def git(folder: Path, *args: str) -> str:
    """Run git in ``folder`` with a throwaway identity; its output."""
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=folder, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """A git repository with one committed ProtoNet result (test acc 0.8)."""
    git(tmp_path, "init", "-q")
    write_run(tmp_path / "results" / "toy" / "protonet" / "seed0", "ProtoNet", A)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first result")
    return tmp_path / "results" / "toy" / "protonet" / "seed0" / "results.json"


def test_the_same_test_numbers_are_written_as_they_are(committed):
    again = json.loads(committed.read_text())
    assert check_replacement(committed, {**again, "wall_time_s": 1.0}, reason=None) == {**again, "wall_time_s": 1.0}
    assert check_replacement(committed.parent / "nothing_here.json", {"x": 1}, reason=None) == {"x": 1}


def test_other_test_numbers_need_a_reason_recorded_with_the_old_result(committed, tmp_path):
    other = write_run(tmp_path / "new", "ProtoNet", B) / "results.json"
    new = json.loads(other.read_text())
    with pytest.raises(ReplacementError, match=r"test acc 80.00 there, 50.00 now\); replacing it needs a reason"):
        check_replacement(committed, new, reason=None)
    written = check_replacement(committed, new, reason="rerun capped in steps")
    head = git(committed.parent, "rev-parse", "HEAD").strip()
    assert written["replaces"] == {
        "commit": head,
        "git_commit": None,
        "acc": pytest.approx(0.8),
        "ci95": pytest.approx(1.96 * 0.1633 / 2, abs=1e-4),
        "episodes": 4,
        "fingerprint": "f" * 64,
        "reason": "rerun capped in steps",
    }
    assert written["test"] == new["test"]


def test_history_lists_each_committed_version_with_its_accuracy_and_reason(committed, tmp_path, capsys):
    first = git(tmp_path, "rev-parse", "HEAD").strip()
    new = json.loads((write_run(tmp_path / "elsewhere", "ProtoNet", B) / "results.json").read_text())
    committed.write_text(json.dumps(check_replacement(committed, new, reason="rerun capped in steps")))
    git(tmp_path, "add", str(committed))
    git(tmp_path, "commit", "-qm", "second result")
    second = git(tmp_path, "rev-parse", "HEAD").strip()
    assert report_main([str(tmp_path / "results"), "--history", "toy 5-way 1-shot/ProtoNet"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 ")]
    date = git(tmp_path, "log", "-1", "--format=%cs").strip()
    assert rows == [
        f"| 0 | {second[:10]} | {date} | 50.00 ± 19.60 | 100 steps, ? | replaces 80.00 ({first[:10]}): rerun capped "
        "in steps |",
        f"| 0 | {first[:10]} | {date} | 80.00 ± 16.00 | 100 steps, ? |  |",
    ]
    # an uncommitted change shows as the working tree's version
    committed.write_text((write_run(tmp_path / "third", "ProtoNet", A) / "results.json").read_text())
    assert report_main([str(tmp_path / "results"), "--history", "toy 5-way 1-shot/ProtoNet"]) == 0
    assert "| 0 | working tr | - | 80.00 ± 16.00 |" in capsys.readouterr().out


def test_history_of_an_unknown_row_names_the_rows(committed, tmp_path, capsys):
    assert report_main([str(tmp_path / "results"), "--history", "toy 5-way 1-shot/MAML"]) == 2
    assert "no such row; the rows are: toy 5-way 1-shot/ProtoNet" in capsys.readouterr().err
