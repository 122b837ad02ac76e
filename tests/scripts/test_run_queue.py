"""scripts/run_queue.py: queue files, claiming, resuming and failures, with a stand-in train.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("run_queue", PROJECT_ROOT / "scripts" / "run_queue.py")
run_queue = importlib.util.module_from_spec(spec)
sys.modules["run_queue"] = run_queue  # dataclasses look their module up
spec.loader.exec_module(run_queue)

# writes results.json into hydra.run.dir, or fails when told to; records its arguments
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
folder = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")))
(folder / "args.json").write_text(json.dumps(args))
if "fail=true" in args:
    sys.exit(3)
(folder / "results.json").write_text("{}")
"""


def write_queue(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_queue_lines_get_the_common_overrides_first_and_keep_quoted_values(tmp_path):
    queue = write_queue(
        tmp_path / "q.txt",
        "# comment\n@common callbacks=plateau trainer.max_epochs=-1\n\n"
        "a experiment=x seed=0  # trailing comment\nb \"variant='meta-batch 4'\"\n",
    )
    runs = run_queue.read_queue(queue)
    assert runs == [
        run_queue.QueuedRun("a", ("callbacks=plateau", "trainer.max_epochs=-1", "experiment=x", "seed=0")),
        run_queue.QueuedRun("b", ("callbacks=plateau", "trainer.max_epochs=-1", "variant='meta-batch 4'")),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("experiment=x seed=0\n", "starts with the run's folder name"),
        ("a x=1\na x=2\n", "repeated: a"),
        # issue 37, item 2: a name that is not one folder of --out
        ("ok x=1\n.. seed=0\n", r"q.txt:2: the run's folder name is '\.\.', which is not a plain folder name"),
        (". seed=0\n", r"the run's folder name is '\.', which is not a plain folder name"),
        ("a/b seed=0\n", r"the run's folder name is 'a/b', which is not"),
        ("../up seed=0\n", r"the run's folder name is '\.\./up', which is not"),
        ("a\\\\b seed=0\n", r"the run's folder name is 'a\\\\b', which is not"),
        (".hidden seed=0\n", r"the run's folder name is '\.hidden', which is not .* rename the run"),
        ("'' seed=0\n", r"the run's folder name is '', which is not"),
    ],
)
def test_bad_queue_files_are_refused_naming_the_problem(tmp_path, text, message):
    with pytest.raises(SystemExit, match=message):
        run_queue.read_queue(write_queue(tmp_path / "q.txt", text))


def test_a_run_named_dot_dot_never_claims_or_moves_the_parent_of_out(tmp_path):
    """Issue 37, item 2: ``..`` would be ``<out>/..``, whose run files were set aside into attempt-1/."""
    parent = tmp_path / "parent"
    for name in (".hydra", "checkpoints", "csv"):
        (parent / name).mkdir(parents=True)
    queue = write_queue(tmp_path / "q.txt", ".. seed=0\n")
    with pytest.raises(SystemExit, match="q.txt:1: the run's folder name is '..', which is not a plain folder name"):
        run_queue.main([str(queue), "--out", str(parent / "out"), "--python", sys.executable])
    assert sorted(p.name for p in parent.iterdir()) == [".hydra", "checkpoints", "csv"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda q: None, r"q.txt: cannot read the queue file \(No such file or directory\)"),
        (lambda q: q.write_text("# only a comment\n\n"), r"q.txt lists no runs; add lines '<name> <overrides>'"),
        (lambda q: q.write_text("a seed=0 variant='open\n"), r"q.txt:1: No closing quotation; close the quote"),
        (lambda q: q.write_bytes(b"a seed=0 \xff\xfe\n"), r"q.txt: cannot read the queue file \(.*codec"),
        (lambda q: (q.write_text("a seed=0\n"), (q.parent / "out").write_text("x")), r"--out .*out is a file"),
    ],
    ids=["missing", "empty", "unterminated quote", "not text", "out is a file"],
)
def test_a_broken_queue_or_out_folder_is_one_line_not_a_traceback(tmp_path, capsys, setup, message):
    queue = tmp_path / "q.txt"
    setup(queue)
    with pytest.raises(SystemExit) as stop:
        run_queue.main([str(queue), "--out", str(tmp_path / "out")])
    text = str(stop.value.code) if stop.value.code != 2 else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, text) and "\n" not in text, text


def test_status_names_an_unreadable_metrics_file(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.txt", "a seed=0\n")
    (tmp_path / "out" / "a" / "csv").mkdir(parents=True)
    (tmp_path / "out" / "a" / "csv" / "metrics.csv").write_bytes(b"step,val/acc\n3,\xff\n")
    assert run_queue.main([str(queue), "--out", str(tmp_path / "out"), "--status"]) == 0
    assert "csv/metrics.csv unreadable (UnicodeDecodeError)" in capsys.readouterr().out


def test_claim_skips_finished_failed_and_live_claims_and_takes_over_dead_ones(tmp_path):
    done, failed, live, dead, fresh = (tmp_path / n for n in ("done", "failed", "live", "dead", "fresh"))
    for folder in (done, failed, live, dead):
        folder.mkdir()
    (done / "results.json").write_text("{}")
    (failed / "FAILED").write_text("1\n")
    (live / ".claimed").write_text(str(os.getpid()))
    (dead / ".claimed").write_text("999999999")
    assert [run_queue.claim(f) for f in (done, failed, live, dead, fresh)] == [False, False, False, True, True]
    assert (fresh / ".claimed").read_text() == str(os.getpid())


def test_an_empty_claim_is_stale_only_after_a_minute(tmp_path):
    (tmp_path / ".claimed").write_text("")
    assert not run_queue.claim(tmp_path)
    old = time.time() - 120
    os.utime(tmp_path / ".claimed", (old, old))
    assert run_queue.claim(tmp_path)


def test_a_run_with_a_last_checkpoint_is_resumed(tmp_path):
    run = run_queue.QueuedRun("a", ("seed=0",))
    assert run_queue.command(run, tmp_path, "py")[-1] == f"hydra.run.dir={tmp_path.resolve()}"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_queue.command(run, tmp_path, "py")[-1] == "resume=true"


def test_queue_runs_every_job_once_records_failures_and_skips_them_next_time(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(FAKE_TRAIN)
    queue = write_queue(tmp_path / "q.txt", "@common logger=csv\na seed=0\nb seed=1 fail=true\nc seed=2\n")
    out = tmp_path / "out"
    argv = [str(queue), "--out", str(out), "--parallel", "2", "--python", sys.executable, "--project", str(project)]
    assert run_queue.main(argv) == 1
    assert sorted(p.parent.name for p in out.glob("*/results.json")) == ["a", "c"]
    assert (out / "b" / "FAILED").read_text() == "3\n"
    assert not list(out.glob("*/.claimed"))
    assert '"logger=csv", "seed=1", "fail=true"' in (out / "b" / "args.json").read_text()
    assert "exit 3 after" in (out / "b" / "run.log").read_text()
    assert "failed: b" in capsys.readouterr().out
    (out / "a" / "args.json").unlink()
    assert run_queue.main(argv) == 1  # nothing reruns: a and c finished, b failed
    assert not (out / "a" / "args.json").exists()


# records the claim marker's content and its own process id; run "a" appends a line to the queue
CLAIM_RECORDING_TRAIN = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
folder = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")))
claim = (folder / ".claimed").read_text()
(folder / "seen.json").write_text(json.dumps({"claim": claim, "pid": os.getpid()}))
if folder.name == "a":
    with open(os.environ["QUEUE_FILE"], "a") as queue:
        queue.write("late seed=9\\n")
(folder / "results.json").write_text("{}")
"""


def test_a_running_jobs_claim_holds_its_own_process_id_and_lines_added_meanwhile_run(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(CLAIM_RECORDING_TRAIN)
    queue = write_queue(tmp_path / "q.txt", "a seed=0\nb seed=1\n")
    monkeypatch.setenv("QUEUE_FILE", str(queue))
    out = tmp_path / "out"
    argv = [str(queue), "--out", str(out), "--parallel", "1", "--python", sys.executable, "--project", str(project)]
    assert run_queue.main(argv) == 0
    for name in ("a", "b", "late"):
        seen = json.loads((out / name / "seen.json").read_text())
        assert seen["claim"] == str(seen["pid"]) != str(os.getpid())
    assert "seed=9" in (out / "late" / "run.log").read_text()
    assert not list(out.glob("*/.claimed*"))


def test_a_queue_file_broken_mid_edit_keeps_its_last_readable_runs(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.txt", "a seed=0\n")
    reader = run_queue.QueueFile(queue)
    queue.write_text("a seed=0\na seed=1\n")
    assert reader.current() == [run_queue.QueuedRun("a", ("seed=0",))]
    assert "queue file unreadable, using its last version" in capsys.readouterr().out
    queue.write_text("b seed=2\n")
    assert reader.current() == [run_queue.QueuedRun("b", ("seed=2",))]


def test_runs_collected_into_a_results_folder_are_skipped_and_shown_as_collected(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(FAKE_TRAIN)
    results = tmp_path / "results" / "omniglot_5w1s" / "protonet" / "seed0" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"run_name": "a", "test": {"acc": 0.9, "ci95": 0.01}}))
    queue = write_queue(tmp_path / "q.txt", "a seed=0\nb seed=1\n")
    out = tmp_path / "out"
    argv = [str(queue), "--out", str(out), "--python", sys.executable, "--project", str(project)]
    argv += ["--skip-collected", str(tmp_path / "results")]
    assert run_queue.main(argv) == 0
    assert not (out / "a").exists() and (out / "b" / "results.json").exists()
    assert run_queue.main([*argv, "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].split() == ["a", "collected", "test", "90.00", "+-", "1.00"]
    assert lines[-1] == "1 collected, 1 done (of 2)"
    with pytest.raises(SystemExit, match="no such folder"):
        run_queue.main([*argv[:-1], str(tmp_path / "nowhere")])


def test_failures_in_a_row_stop_the_queue(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(FAKE_TRAIN)
    queue = write_queue(tmp_path / "q.txt", "a fail=true\nb fail=true\nc seed=0\nd seed=1\n")
    out = tmp_path / "out"
    argv = [str(queue), "--out", str(out), "--parallel", "1", "--python", sys.executable, "--project", str(project)]
    assert run_queue.main([*argv, "--stop-after-failures", "2"]) == 1
    assert sorted(p.parent.name for p in out.glob("*/FAILED")) == ["a", "b"]
    assert not (out / "c").exists()
    assert "stopped after 2 failures in a row" in capsys.readouterr().out


def test_status_says_where_each_run_stands_and_starts_nothing(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.txt", "done x=1\nfailed x=2\ncut x=3\nrunning x=4\nwaiting x=5\n")
    out = tmp_path / "out"
    for name in ("done", "failed", "cut", "running"):
        (out / name / "checkpoints").mkdir(parents=True)
    results = {"test": {"acc": 0.9667, "ci95": 0.0035}, "train": {"cpu_s": 3612.0, "stopped_by": "cpu_budget"}}
    (out / "done" / "results.json").write_text(json.dumps(results))
    (out / "failed" / "FAILED").write_text("3\n")
    (out / "cut" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (out / "cut" / "csv").mkdir()
    (out / "cut" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/acc,val/acc\n0,10,0.5,\n0,499,,0.5\n1,999,,0.836\n1,1009,0.9,\n"
    )
    (out / "running" / ".claimed").write_text(str(os.getpid()))
    assert run_queue.main([str(queue), "--out", str(out), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(None, 2) == ["done", "done", "test 96.67 +- 0.35, 60.2 CPU-min, stopped by cpu_budget"]
    assert lines[1].startswith("failed   failed   exit 3; see ") and "delete FAILED to retry" in lines[1]
    assert lines[2].split(None, 2)[1:] == [
        "cut",
        "val 83.6 at step 999 (2 validations), continues from checkpoints/last.ckpt",
    ]
    assert lines[3].split() == ["running", "running"]
    assert lines[4].split() == ["waiting", "waiting"]
    assert lines[5] == "1 done, 1 failed, 1 cut, 1 running, 1 waiting (of 5)"
    assert not (out / "waiting").exists() and not (out / "running" / "args.json").exists()


def test_status_names_an_unreadable_results_file(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.txt", "a x=1\n")
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "results.json").write_text("{ cut short")
    assert run_queue.main([str(queue), "--out", str(tmp_path / "out"), "--status"]) == 0
    assert "done     results.json unreadable (JSONDecodeError" in capsys.readouterr().out


def test_status_shows_the_cpu_minutes_of_a_cut_runs_last_checkpoint(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.txt", "cut x=1\nbroken x=2\n")
    for name in ("cut", "broken"):
        (tmp_path / "out" / name / "checkpoints").mkdir(parents=True)
    checkpoint = {
        "state_dict": {},
        "callbacks": {"CpuTimeBudget": {"used_s": 1410.0}},
        "fewshot_config": {"callbacks": {"cpu_budget": {"minutes": 60}}},
    }
    torch.save(checkpoint, tmp_path / "out" / "cut" / "checkpoints" / "last.ckpt")
    (tmp_path / "out" / "broken" / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    assert run_queue.main([str(queue), "--out", str(tmp_path / "out"), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    resumes = "continues from checkpoints/last.ckpt"
    assert lines[0].split(None, 2)[2] == f"23.5 of 60 CPU-min at the last checkpoint, {resumes}"
    assert lines[1].split(None, 2)[2] == resumes


def test_an_attempt_that_never_validated_is_set_aside_and_a_resumable_one_is_kept(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "csv").mkdir()
    (tmp_path / "run.log").write_text("first attempt\n")
    assert run_queue.set_aside_unresumable_attempt(tmp_path) == [".hydra", "csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt-1", "run.log"]
    assert sorted(p.name for p in (tmp_path / "attempt-1").iterdir()) == [".hydra", "csv"]
    (tmp_path / ".hydra").mkdir()
    assert run_queue.set_aside_unresumable_attempt(tmp_path) == [".hydra"] and (tmp_path / "attempt-2").is_dir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / ".hydra").mkdir()
    assert run_queue.set_aside_unresumable_attempt(tmp_path) == []  # resumed, not set aside
    assert (tmp_path / ".hydra").is_dir() and not (tmp_path / "attempt-3").exists()


def test_skip_collected_follows_symlinked_results_folders_once_and_names_a_loop(tmp_path, caplog):
    """Issue 37, item 10 for the queue: collected runs are found through symlinked folders, as the report and
    collect find them (one walk, fewshot.reporting.walk); a link back to a folder it lies in is skipped by name."""
    elsewhere = tmp_path / "elsewhere" / "omniglot_5w1s" / "protonet"
    for seed, name in ((0, "a"), (1, "b")):
        (elsewhere / f"seed{seed}").mkdir(parents=True)
        (elsewhere / f"seed{seed}" / "results.json").write_text(json.dumps({"run_name": name}))
    results = tmp_path / "results"
    (results / "omniglot_5w1s").mkdir(parents=True)
    (results / "omniglot_5w1s" / "protonet").symlink_to(elsewhere, target_is_directory=True)
    (results / "again").symlink_to(elsewhere / "seed0", target_is_directory=True)  # a reached twice
    (elsewhere / "seed1" / "up").symlink_to(elsewhere, target_is_directory=True)  # a loop
    (elsewhere / "seed1" / "back").symlink_to(results, target_is_directory=True)  # the walk's start: walked already
    found = run_queue.collected_runs([results])
    assert found == {
        "a": results / "again" / "results.json",
        "b": results / "omniglot_5w1s" / "protonet" / "seed1" / "results.json",
    }
    loop = results / "omniglot_5w1s" / "protonet" / "seed1" / "up"
    assert f"skipped {loop}: a link to {elsewhere.resolve()}, a folder it lies in" in caplog.text
