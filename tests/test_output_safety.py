"""Every file is written atomically, and unwritable outputs are named before the work (issue 17, items 11, 12)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fewshot.io as io_module
from fewshot.io import (
    OutputPathError,
    check_writable_dir,
    check_writable_file,
    host_tag,
    json_text,
    remove_stale_temporaries,
    save_figure_atomic,
    write_text_atomic,
)
from fewshot.predict import Prediction, write_predictions
from fewshot.predict import main as predict_main
from fewshot.reporting.build import main as report_main
from fewshot.reporting.collect import collect
from fewshot.reporting.results import write_results
from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT, compose_config
from tests.reporting.test_report import A, B, write_run

ENOSPC = "no space left on the device: free some space or write to another disk"


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write puts half its bytes into the temporary file, then fails with ENOSPC."""

    def write_bytes(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.Path, "write_bytes", write_bytes)


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_results_write_leaves_the_previous_results_intact(tmp_path, full_disk):
    target = tmp_path / "results.json"
    target.write_text('{"old": true}')
    with pytest.raises(OutputPathError, match=f"Cannot write {target}: {ENOSPC}"):
        write_results(target, {"new": list(range(1000))})
    assert json.loads(target.read_text()) == {"old": True}
    assert only_file(tmp_path) == ["results.json"]  # no temporary left behind


def test_a_failed_predictions_write_leaves_the_previous_csv_intact(tmp_path, full_disk):
    target = tmp_path / "predictions.csv"
    target.write_text("file,prediction,confidence\nold.png,a,0.9\n")
    with pytest.raises(OutputPathError, match=ENOSPC):
        write_predictions(target, [Prediction(f"{i}.png", "b", 0.5) for i in range(100)])
    assert target.read_text() == "file,prediction,confidence\nold.png,a,0.9\n"
    assert only_file(tmp_path) == ["predictions.csv"]


def test_predictions_are_written_whole(tmp_path):
    path = write_predictions(tmp_path / "out" / "p.csv", [Prediction("x.png", "b", 0.5)])
    assert path.read_text().splitlines() == ["file,prediction,confidence", "x.png,b,0.500000"]


def test_a_failed_report_leaves_the_previous_report_files_intact(tmp_path, full_disk, capsys):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    write_run(tmp_path / "runs" / "b", "MAML", B)
    out = tmp_path / "report"
    out.mkdir()
    for name in ("table.md", "table.csv", "paired.md", "paired.csv"):
        (out / name).write_text(f"previous {name}")
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: Cannot write {out / 'table.md'}: {ENOSPC}."
    assert {p.name: p.read_text() for p in out.iterdir()} == {n: f"previous {n}" for n in only_file(out)}
    assert only_file(out) == ["paired.csv", "paired.md", "table.csv", "table.md"]


class HalfWrittenFigure:
    """A figure whose saving fails half-way, as on a full disk."""

    def savefig(self, path: Path, format: str, **kwargs: object) -> None:  # noqa: A002 - matplotlib's name
        Path(path).write_text("half a png")  # plain text write (not patched)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_plot_leaves_the_previous_plot_intact(tmp_path):
    target = tmp_path / "accuracy_vs_step.png"
    target.write_bytes(b"previous png")
    with pytest.raises(OutputPathError, match=ENOSPC):
        save_figure_atomic(HalfWrittenFigure(), target)
    assert target.read_bytes() == b"previous png"
    assert only_file(tmp_path) == ["accuracy_vs_step.png"]


def test_report_plots_are_real_pngs_written_through_the_atomic_helper(tmp_path, monkeypatch):
    saved = []
    original = io_module.save_figure_atomic

    def spy(fig, path, **kwargs):
        saved.append(Path(path).name)
        return original(fig, path, **kwargs)

    monkeypatch.setattr("fewshot.reporting.plots.save_figure_atomic", spy)
    history = [{"step": 1, "epoch": 0, "acc": 0.5, "ci95": 0.1, "cpu_s": 30.0}]
    write_run(tmp_path / "runs" / "a", "ProtoNet", A, val_history=history)
    write_run(tmp_path / "runs" / "b", "MAML", B)
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 0
    assert saved == ["accuracy_vs_cpu_time.png"]
    assert (tmp_path / "r" / "accuracy_vs_cpu_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- item 12: unwritable outputs, named before the work -------------------------------------------


def test_predict_names_an_output_that_is_a_folder_before_loading_anything(tmp_path, capsys):
    missing = tmp_path / "no.ckpt"  # would be the error if the checkpoint were read first
    code = predict_main([f"ckpt_path={missing}", "support=s", "query=q", f"output={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: Cannot write {tmp_path}: it is a folder; pass the path of a file, e.g. {tmp_path / 'out.csv'}."
    )


def test_predict_names_an_output_whose_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    output = tmp_path / "notes.txt" / "sub" / "p.csv"
    assert predict_main([f"ckpt_path={tmp_path / 'no.ckpt'}", "support=s", "query=q", f"output={output}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: Cannot write {output}: {tmp_path / 'notes.txt'} is a file, not a folder; "
        "pass another path or move that file."
    )


def test_predict_names_a_read_only_output_folder(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def denied(path, flags, *args):
        if ".fewshot-write-check" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(io_module.os, "open", denied)  # tests run as root, where chmod does not refuse
    output = tmp_path / "p.csv"
    assert predict_main([f"ckpt_path={tmp_path / 'no.ckpt'}", "support=s", "query=q", f"output={output}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: Cannot write {output}: permission denied: "
        "fix the folder's permissions or write somewhere you may write."
    )


def test_report_names_an_out_that_is_a_file_before_reading_the_runs(tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("x")
    assert report_main([str(tmp_path / "no_runs_here"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: Cannot write into {out}: it is a file, not a folder; pass another folder or move it."
    assert out.read_text() == "x"


def test_report_names_an_out_whose_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "report"
    assert report_main([str(tmp_path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: Cannot create the folder {out}: {tmp_path / 'f'} is a file, not a folder; "
        "pass another path or move it."
    )


def test_train_names_a_run_folder_that_is_a_file_before_building_anything(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a folder")

    def no_data(*args, **kwargs):
        raise AssertionError("data was built before the run folder was checked")

    monkeypatch.setattr("fewshot.run.training.instantiate", no_data)
    with pytest.raises(OutputPathError, match=f"Cannot write into {run_dir}: it is a file, not a folder"):
        train(compose_config(["debug=tiny", "trainer=cpu", "logger=none"], run_dir))


def test_check_writable_dir_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = check_writable_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert check_writable_dir(tmp_path / "c", create=False) == tmp_path / "c" and not (tmp_path / "c").exists()


def test_check_writable_file_creates_nothing(tmp_path):
    assert check_writable_file(tmp_path / "x" / "y.csv") == tmp_path / "x" / "y.csv"
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_replaces_through_a_temporary_in_the_same_folder(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(io_module.os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b)))
    write_text_atomic(tmp_path / "t.md", "new", fsync=True)
    ((src, dst),) = renames
    assert (
        src.parent == dst.parent == tmp_path
        and src.name.startswith(".t.md.")
        and (tmp_path / "t.md").read_text() == "new"
    )


@pytest.mark.parametrize("suffix", ["png", "pdf"])
def test_the_same_figure_saved_twice_gives_the_same_bytes(tmp_path, suffix):
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    for i in range(2):
        fig = plt.figure()
        plt.plot([1, 3, 2])
        saved.append(save_figure_atomic(fig, tmp_path / f"f{i}.{suffix}").read_bytes())
        plt.close(fig)
        time.sleep(1.1)  # a creation date in seconds would differ
    assert saved[0] == saved[1]


# --- issue 37, item 11: strict JSON everywhere --------------------------------------------------


def strict_json(text: str) -> object:
    """Parse ``text`` as strict JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_writer_in_the_package_goes_through_the_strict_helper():
    package = Path(io_module.__file__).parent
    dumps = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "io.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "json.dump" in line
    ]
    assert dumps == [], f"write JSON with fewshot.io.write_json_atomic / json_text: {dumps}"


def test_non_finite_numbers_are_written_as_null_and_the_file_is_strict_json(tmp_path):
    data = {"ci95": float("nan"), "up": float("inf"), "rows": [1.5, float("-inf")], "nested": {"x": (float("nan"),)}}
    written = write_results(tmp_path / "results.json", data)
    assert strict_json(written.read_text()) == {"ci95": None, "up": None, "rows": [1.5, None], "nested": {"x": [None]}}
    assert json_text({"a": 0.25}) == '{\n  "a": 0.25\n}\n'


def test_a_one_episode_test_writes_a_null_ci_and_the_report_says_why(tiny_config, tmp_path, capsys):
    train(tiny_config("data.test_episodes=1"))
    results = strict_json((tmp_path / "results.json").read_text())
    assert results["test"]["episodes"] == 1 and results["test"]["ci95"] is None
    assert report_main([str(tmp_path / "results.json"), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert "No 95% CI for ProtoNet (embedded_tiny 5-way 1-shot): tested on 1 episode" in table
    assert "± n/a" in table and "nan" not in table.lower().replace("n/a", "")
    assert "a confidence interval needs at least 2" in capsys.readouterr().out


# --- item 12: a killed writer's temporary file is removed by the next run -----------------------

KILLED_WRITER = """
import sys, time
from pathlib import Path
from fewshot.io import temporary_for
with temporary_for(Path(sys.argv[1])) as tmp:
    tmp.touch()
    print(tmp, flush=True)
    time.sleep(120)
"""


def killed_writer_temporary(target: Path) -> Path:
    """The 0-byte temporary file a process killed (SIGKILL) while writing ``target`` leaves."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    tmp = Path(process.stdout.readline().strip())
    process.kill()
    process.wait(timeout=30)
    assert tmp.is_file() and tmp.stat().st_size == 0 and tmp.parent == target.parent
    return tmp


def test_a_report_removes_the_temporary_file_a_killed_report_left_and_keeps_others(tmp_path):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    out = tmp_path / "report"
    stale = killed_writer_temporary(out / "table.md")
    assert re.fullmatch(rf"\.table\.md\.fewshot-{host_tag()}-\d+-[0-9a-f]+\.tmp", stale.name)
    live = out / f".table.csv.fewshot-{host_tag()}-{os.getpid()}-abc.tmp"  # a writer still at work
    other_host = out / ".paired.md.fewshot-otherhost-1-abc.tmp"  # on a shared disk: not ours to judge
    for keep in (live, other_host):
        keep.write_text("")
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not stale.exists() and live.exists() and other_host.exists()
    assert remove_stale_temporaries(out) == []


def test_collect_removes_the_temporary_file_a_killed_collect_left(tmp_path):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    target = tmp_path / "into" / "toy_5w1s" / "protonet" / "seed0" / "results.json"
    stale = killed_writer_temporary(target)
    collect([tmp_path / "runs"], tmp_path / "into")
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"] and not stale.exists()
