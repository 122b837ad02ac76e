"""Collecting runs into a committable results folder: no machine paths, the same report."""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

import pytest

from fewshot.io import UnsafePathError
from fewshot.reporting.build import build_report
from fewshot.reporting.collect import ABSOLUTE_PATH, collect, strip_paths
from fewshot.reporting.collect import main as collect_main
from fewshot.reporting.runs import BadResultsError
from fewshot.run.training import train
from tests.reporting.test_report import A, B, C, write_run


def test_collected_results_hold_no_machine_path_and_report_the_same_table(tiny_config, tmp_path):
    train(tiny_config())
    run = tmp_path  # tiny_config writes the run into tmp_path
    into = tmp_path.parent / f"{tmp_path.name}_committed" / "results"
    assert collect_main([str(run / "results.json"), "--into", str(into)]) == 0
    collected = into / "embedded_tiny_5w1s" / "protonet" / "seed0" / "results.json"
    text = collected.read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text and str(Path.cwd()) not in text
    data = json.loads(text)
    assert data["output_dir"] == "<run>" and data["checkpoint"].startswith("<run>/checkpoints/")
    assert data["config"]["paths"]["output_dir"] == "<run>"
    assert data["run_name"] == tmp_path.name  # the run's folder: a queue's run name
    table = build_report([collected], tmp_path / "r1")["table_md"]
    assert table == build_report([run / "results.json"], tmp_path / "r2")["table_md"]


def test_two_runs_of_one_setting_method_and_seed_are_refused(tmp_path, capsys):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "ProtoNet", A)
    assert collect_main([str(tmp_path), "--into", str(tmp_path / "out")]) == 2
    assert "same setting, method and seed" in capsys.readouterr().err


# --- issue 37, item 1: every path part built from the results file is checked --------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("seed", "/../../../../x", "seed is '/../../../../x', not an integer"),
        ("seed", "0/../..", "seed is '0/../..', not an integer"),
        ("seed", 1.5, "seed is 1.5, not an integer"),
        ("seed", True, "seed is True, not an integer"),
        ("n_way", "5/../../x", "n_way is '5/../../x', not an integer of at least 1"),
        ("n_shot", 0, "n_shot is 0, not an integer of at least 1"),
        ("method", "..", "method ('..' as a folder name) is '', which is not a plain folder name"),
        ("method", ".", "method ('.' as a folder name) is ''"),
        ("method", "/", "method ('/' as a folder name) is ''"),
        ("method", None, "method is None, not a name"),
        ("dataset", "../..", "dataset ('../..' as a folder name) is ''"),
        ("dataset", ["x"], "dataset is ['x'], not a name"),
    ],
)
def test_a_path_part_from_the_results_file_is_checked_before_anything_is_written(tmp_path, capsys, key, value, problem):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    bad = tmp_path / "runs" / "b"
    write_run(bad, "MAML", A)
    results = json.loads((bad / "results.json").read_text())
    results[key] = value
    (bad / "results.json").write_text(json.dumps(results))
    into = tmp_path / "deep" / "er" / "into"
    code = collect_main([str(tmp_path / "runs"), "--into", str(into)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad / 'results.json'}: {problem}") and err.count("\n") == 1, err
    assert "fix that key in" in err
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [Path("runs/a/results.json"), Path("runs/b/results.json")]  # nothing written anywhere


@pytest.mark.parametrize("method", ["MAML (meta-batch 4)", "Meta-SGD v1.5", "..hidden", "a/../../b", "C:\\x", "~"])
def test_every_method_name_becomes_one_folder_inside_into(tmp_path, method):
    write_run(tmp_path / "runs" / "a", method, A, seed=-3)
    into = tmp_path / "into"
    if method == "~":
        with pytest.raises(UnsafePathError, match=r"method \('~' as a folder name\) is ''"):
            collect([tmp_path / "runs"], into)
        return
    [written] = collect([tmp_path / "runs"], into)
    assert written.parent.name == "seed-3" and written.parents[2] == into / "toy_5w1s"
    assert written.resolve().is_relative_to(into.resolve()) and not written.parent.parent.name.startswith(".")


def test_a_symlink_inside_into_that_leads_outside_is_refused(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    into, elsewhere = tmp_path / "into", tmp_path / "elsewhere"
    into.mkdir()
    elsewhere.mkdir()
    (into / "toy_5w1s").symlink_to(elsewhere)
    assert collect_main([str(tmp_path / "runs"), "--into", str(into)]) == 2
    assert f"lies outside {into}" in capsys.readouterr().err
    assert not any(elsewhere.iterdir())


# --- item 4: a run already in --into is not replaced silently ---------------------------------------


def test_a_collected_run_is_not_replaced_by_another_of_its_setting_method_and_seed_without_replace(tmp_path, capsys):
    into = tmp_path / "into"
    write_run(tmp_path / "old" / "run-a", "ProtoNet", [0.467] * 4)
    assert collect_main([str(tmp_path / "old"), "--into", str(into)]) == 0
    collected = into / "toy_5w1s" / "protonet" / "seed0" / "results.json"
    before = collected.read_text()
    capsys.readouterr()
    assert collect_main([str(tmp_path / "old"), "--into", str(into)]) == 0  # the same run again: unchanged
    assert collected.read_text() == before
    write_run(tmp_path / "new" / "run-b", "ProtoNet", [0.2] * 4)
    assert collect_main([str(tmp_path / "new"), "--into", str(into)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {collected} (run run-a, test acc 46.70%) already holds a run of the same setting, method and seed "
        f"as {tmp_path / 'new' / 'run-b' / 'results.json'} (test acc 20.00%); pass --replace to replace it, or "
        "collect into another folder.\n"
    )
    assert collected.read_text() == before
    # other test numbers: --replace alone is refused, a reason is recorded in the new file
    assert collect_main([str(tmp_path / "new"), "--into", str(into), "--replace"]) == 2
    assert "replacing it needs a reason" in capsys.readouterr().err
    assert collected.read_text() == before
    reason = "preset changed: inner_loss_scale=official"
    assert collect_main([str(tmp_path / "new"), "--into", str(into), "--replace", "--reason", reason]) == 0
    replaced = json.loads(collected.read_text())
    assert replaced["test"]["acc"] == pytest.approx(0.2)
    assert replaced["replaces"]["acc"] == pytest.approx(0.467)
    assert replaced["replaces"]["reason"] == reason


def test_a_refused_run_leaves_every_other_run_of_the_command_unwritten(tmp_path):
    into = tmp_path / "into"
    write_run(tmp_path / "first" / "a", "ProtoNet", A)
    collect([tmp_path / "first"], into)
    write_run(tmp_path / "second" / "b", "MAML", A)
    write_run(tmp_path / "second" / "c", "ProtoNet", C)
    with pytest.raises(BadResultsError, match="pass --replace"):
        collect([tmp_path / "second"], into)
    assert not (into / "toy_5w1s" / "maml").exists()


def test_collecting_a_results_folder_into_itself_changes_nothing_and_never_replaces_a_source(tmp_path):
    into = tmp_path / "into"
    write_run(tmp_path / "runs" / "a", "ProtoNet", A)
    [collected] = collect([tmp_path / "runs"], into)
    before = collected.read_text()
    assert collect([into], into) == [collected] and collected.read_text() == before
    edited = json.loads(before)
    edited["note"] = "/home/someone/x"  # collecting it would change the very file it reads
    collected.write_text(json.dumps(edited))
    with pytest.raises(BadResultsError, match="is both a run to collect and where it would be collected to"):
        collect([into], into, replace=True)
    assert json.loads(collected.read_text())["note"] == "/home/someone/x"


# --- item 9: no absolute path of any machine is kept ----------------------------------------------


def random_tree(rng: random.Random, depth: int, paths: list[str]) -> object:
    """A JSON value with absolute paths (random ones, in random keys and positions) inside."""
    kind = rng.choice(["path", "sentence", "list", "dict", "number"] if depth else ["path", "sentence", "number"])
    part = "".join(rng.choice(string.ascii_letters + string.digits + "_-.") for _ in range(rng.randint(1, 9)))
    if kind == "path":
        path = rng.choice([f"/tmp/{part}/x{depth}", f"C:\\Users\\{part}\\d", f"~/{part}/y", f"/{part}", f"D:/{part}/z"])
        paths.append(path)
        return path
    if kind == "sentence":
        path = f"/var/lib/{part}/data"
        paths.append(path)
        return rng.choice([f"FEWSHOT_OMNIGLOT_ROOT={path}", f"ckpt_path={path}/last.ckpt", f"see ({path}) there"])
    if kind == "number":
        return rng.random()
    if kind == "list":
        return [random_tree(rng, depth - 1, paths) for _ in range(rng.randint(1, 3))]
    return {f"k{part}{i}": random_tree(rng, depth - 1, paths) for i in range(rng.randint(1, 3))}


@pytest.mark.parametrize("seed", range(5))
def test_no_absolute_path_survives_in_any_key_or_value(tmp_path, seed):
    rng = random.Random(seed)
    paths: list[str] = []
    tree = {f"key{i}": random_tree(rng, 3, paths) for i in range(6)}
    unseen = tmp_path / f"never-seen-{rng.randrange(10**9)}" / "omniglot"
    tree[str(unseen)] = {"root": str(unseen), "env": {"FEWSHOT_OMNIGLOT_ROOT": str(unseen)}}
    keep = {"metric": "train/acc", "url": "https://github.com/x/y", "ratio": "1/2", "fmt": "${now:%Y}/x"}
    write_run(
        tmp_path / "runs" / "a", "ProtoNet", A, config={"data": {"source": {"root": str(unseen)}}, **tree}, **keep
    )
    [collected] = collect([tmp_path / "runs"], tmp_path / "into")
    text = collected.read_text()
    assert str(tmp_path) not in text and "never-seen" not in text
    for path in paths:
        assert path.replace("\\", "\\\\") not in text, path
    stored = json.loads(text)
    assert stored["config"]["data"]["source"]["root"] == "<path>"
    assert {k: stored[k] for k in keep} == keep  # relative paths, URLs and metric names stay
    assert not [s for s in strings_of(stored) if ABSOLUTE_PATH.search(s)]


def strings_of(value: object) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_of(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_of(v)]
    return [value] if isinstance(value, str) else []


def test_a_known_root_is_replaced_only_by_whole_path_parts(tmp_path):
    roots = [("/home/al", "<home>")]
    assert strip_paths({"a": "/home/al/x", "b": "/home/alice/x", "c": "/home/al"}, roots) == {
        "a": "<home>/x",
        "b": "<path>",
        "c": "<home>",
    }
    assert strip_paths("train/acc", [("/", "<home>")]) == "train/acc"  # a home of "/" names nothing


# --- item 10: symlinked run folders are collected, loops named ------------------------------------


def test_a_symlinked_run_folder_is_collected_and_a_loop_is_named_and_skipped(tmp_path, caplog):
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    write_run(runs / "a", "ProtoNet", A)
    write_run(elsewhere / "b", "MAML", B)
    (runs / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (runs / "again").symlink_to(elsewhere, target_is_directory=True)  # b reached twice: collected once
    (runs / "a" / "loop").symlink_to(runs, target_is_directory=True)
    (runs / "dangling").symlink_to(tmp_path / "gone")
    written = collect([runs], tmp_path / "into")
    assert [p.parent.parent.name for p in written] == ["maml", "protonet"]
    messages = "\n".join(caplog.messages)
    assert f"skipped {runs / 'a' / 'loop'}: a link to {runs.resolve()}, a folder it lies in" in messages
    assert f"skipped {runs / 'dangling'}: a link to {tmp_path / 'gone'}, which does not exist" in messages


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"method": "ProtoNet", "test": {"acc"', "Cannot read .*results.json: "), ("[1, 2]", "holds a JSON list")],
)
def test_collect_reports_a_cut_or_non_object_results_file_in_one_line(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(content)
    assert collect_main([str(run), "--into", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: .*{message}", err) and err.count("\n") == 1, err
