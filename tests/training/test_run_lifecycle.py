"""Issue 17, items 5-9: test-only runs, resumes, signals, unknown keys and run keys checked up front.

5. a test-only run needs a checkpoint and never replaces another run's results or .hydra.
6. a resume under a changed config is refused, naming the keys (unless allowed explicitly);
   a resume keeps the CSV rows logged before the interruption.
7. SIGTERM/SIGINT leave a loadable last.ckpt, exit non-zero and print the resume command, also
   during a long validation.
8. an unknown key in a preset is refused, naming the closest valid key; every preset passes
   (tests/training/test_configs.py::test_experiment_preset_sets_only_known_keys).
9. bad run keys fail before any data are read.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import setup_globals
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from fewshot import io as io_module
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.errors import DataError
from fewshot.run.checkpoint import read_checkpoint
from fewshot.run.checks import check_resume_config
from fewshot.run.config_keys import UnknownConfigKeyError, check_known_keys, reference_overrides
from fewshot.run.folder import LOCK_FILE, FolderLock, ProtectExistingRuns, RunConfigError
from fewshot.run.loggers import ResumableCSVLogger
from fewshot.run.signals import rerun_command, resume_command, resume_sweep_command, sweep_folder
from fewshot.run.training import objective, train
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

TINY = ["debug=tiny", "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]


def start_train_py(*args: str, cwd: Path) -> subprocess.Popen:
    """``python train.py args`` in the background, stdout and stderr captured."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_train_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python train.py args`` to its end, stdout and stderr captured; asserts it succeeded."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def stop_with(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 120) -> str:
    """Send ``signum`` to a started train.py, wait for it to exit with 128 + signum; its stderr."""
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 128 + signum, stderr[-3000:]
    return stderr


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``path`` exists (the run reached the announced point)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"train.py ended before {path.name}: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def announce(path: Path, stage: str, batches: int, delay: float) -> list[str]:
    """Overrides adding tests.training.signals.AnnounceAndSlowDown to a run."""
    return [
        "+callbacks.announce._target_=tests.training.signals.AnnounceAndSlowDown",
        f"+callbacks.announce.path={path}",
        f"+callbacks.announce.stage={stage}",
        f"+callbacks.announce.batches={batches}",
        f"+callbacks.announce.delay={delay}",
    ]


@pytest.fixture
def no_data_reads(monkeypatch):
    """Fail the test if a run gets as far as reading its data."""

    def refuse(self, stage=None):
        raise AssertionError("the run read its data before refusing the bad key")

    monkeypatch.setattr(EpisodicDataModule, "setup", refuse)


# --- 5. test-only runs ------------------------------------------------------------------------


def test_5_test_only_run_without_a_checkpoint_is_refused_before_work(tiny_config, no_data_reads):
    with pytest.raises(RunConfigError, match="train=false tests a trained model, but no ckpt_path.*pass ckpt_path="):
        train(tiny_config("train=false"))
    with pytest.raises(RunConfigError, match="resume=true continues training, but train=false"):
        train(tiny_config("train=false", "resume=true"))


def test_5_test_only_run_in_a_trained_runs_folder_replaces_nothing(tmp_path):
    run = tmp_path / "trained"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    (run / "results.json").write_text('{"kept": true}')
    (run / "model.ckpt").write_bytes(b"not used: refused before loading")
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *TINY, "train=false", f"ckpt_path={run / 'model.ckpt'}",
         f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0
    assert "already holds another run (results.json, .hydra)" in out.stderr and "drop hydra.run.dir" in out.stderr
    assert (run / "results.json").read_text() == '{"kept": true}'
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=3\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "model.ckpt", "results.json"]


def test_5_validate_only_is_refused_with_training_or_with_nothing_to_do(tiny_config, no_data_reads):
    with pytest.raises(RunConfigError, match="validate=true scores a trained checkpoint.*pass train=false ckpt_path="):
        train(tiny_config("validate=true"))
    with pytest.raises(RunConfigError, match="leave nothing to do; set train=true, test=true or validate=true"):
        train(tiny_config("train=false", "test=false"))
    with pytest.raises(RunConfigError, match="validate must be true or false, got 'yes'"):
        train(tiny_config("validate=yes"))


def test_5_validate_only_scores_the_checkpoint_on_validation_episodes_and_never_the_test_ones(
    tiny_config, tmp_path, monkeypatch
):
    trained = train(tiny_config("trainer.max_epochs=1", "data.train_episodes=2", "test=false"))
    last = tmp_path / "checkpoints" / "last.ckpt"  # written after the run's only validation

    def refuse(self):
        raise AssertionError("a validate-only run read the test episodes")

    monkeypatch.setattr(EpisodicDataModule, "test_dataloader", refuse)
    overrides = ["debug=tiny", "trainer=cpu", "logger=none", "train=false", "test=false", "validate=true"]
    scored = train(compose_config([*overrides, f"ckpt_path={last}"], tmp_path / "validate_only"))
    assert "test" not in scored and scored["checkpoint"] == str(last)
    assert scored["val"]["episode_acc"] == trained["val_last"]["episode_acc"]
    assert re.fullmatch("[0-9a-f]{64}", scored["val"]["fingerprint"])
    assert objective(scored, "val/acc") == pytest.approx(trained["val_last"]["acc"])
    written = json.loads((tmp_path / "validate_only" / "results.json").read_text())
    assert written["val"]["acc"] == pytest.approx(trained["val_last"]["acc"]) and "test" not in written


# --- 6. resume under a changed config; CSV rows ----------------------------------------------


def test_6_resume_with_a_changed_episode_shape_or_seed_is_refused_naming_the_keys(tiny_config, tmp_path):
    train(tiny_config("trainer.max_epochs=1", "data.train_episodes=2", "test=false"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(RunConfigError) as caught:
        train(tiny_config("trainer.max_epochs=2", "data.train_episodes=2", "resume=true", "data.n_shot=2", "seed=1"))
    message = str(caught.value)
    for part in ("data.n_shot: 1 (run) vs 2 (now)", "seed: 0 (run) vs 1 (now)", "data.seed", "resume_allow_changes=["):
        assert part in message, message
    assert "trainer.max_epochs" not in message  # a budget may change


def test_6_resume_allow_changes_accepts_the_named_keys_only():
    stored = {"seed": 0, "data": {"n_shot": 1, "val_episodes": 10}, "trainer": {"max_epochs": 2}, "resume": False}
    current = {
        "seed": 0,
        "data": {"n_shot": 1, "val_episodes": 20},
        "trainer": {"max_epochs": 5},
        "resume": True,
        "resume_may_change": ["resume", "trainer.max_epochs"],
        "resume_allow_changes": ["data.val_episodes"],
    }
    stored.update(resume_may_change=current["resume_may_change"], resume_allow_changes=[])
    check_resume_config(stored, current, "last.ckpt")  # no error
    current["data"]["n_shot"] = 5
    with pytest.raises(RunConfigError, match=r"data.n_shot: 1 \(run\) vs 5 \(now\)"):
        check_resume_config(stored, current, "last.ckpt")


def test_6_a_moved_run_folder_resumes_but_a_path_outside_it_is_a_change():
    paths = {"output_dir": "/old/run", "data_dir": "/data"}
    stored = {"paths": paths, "trainer": {"default_root_dir": "/old/run"}, "cb": {"dirpath": "/old/run/checkpoints"}}
    current = {
        "paths": {**paths, "output_dir": "/new/place"},
        "trainer": {"default_root_dir": "/new/place"},
        "cb": {"dirpath": "/new/place/checkpoints"},
        "resume_may_change": ["paths"],
    }
    check_resume_config(stored, current, "last.ckpt")  # no error: the same paths inside the moved folder
    current["cb"]["dirpath"] = "/elsewhere/checkpoints"
    with pytest.raises(RunConfigError, match=r"cb.dirpath: '/old/run/checkpoints' \(run\) vs '/elsewhere/checkpoints'"):
        check_resume_config(stored, current, "last.ckpt")


def test_6_one_existing_folder_by_another_path_is_no_change_but_another_folder_is(tmp_path):
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (tmp_path / "checkout_a").mkdir()
    (tmp_path / "checkout_b").mkdir()
    (tmp_path / "link").symlink_to(data)
    stored = {"data": {"source": {"root": str(tmp_path / "checkout_a" / ".." / "shared" / "data")}}}
    for same in (tmp_path / "checkout_b" / ".." / "shared" / "data", tmp_path / "link"):
        check_resume_config(stored, {"data": {"source": {"root": str(same)}}}, "last.ckpt")  # no error
    other = tmp_path / "other_data"
    other.mkdir()
    for changed in (other, tmp_path / "missing"):
        with pytest.raises(RunConfigError, match=r"data.source.root: .* \(run\) vs .* \(now\)"):
            check_resume_config(stored, {"data": {"source": {"root": str(changed)}}}, "last.ckpt")


def test_6_resumed_csv_logger_keeps_the_rows_before_the_checkpoint(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    rows = [(0, 0, 0.1), (0, 1, 0.2), (1, 2, 0.3), (1, 3, 0.4)]  # the run's checkpoint is at epoch 0, step 1
    with open(folder / "metrics.csv", "w", newline="") as file:
        file.write("epoch,step,train/loss\n" + "".join(f"{e},{s},{v}\n" for e, s, v in rows))
    logger = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
    assert logger.continue_from(epoch=0, step=1) == 2  # the rows logged after the checkpoint
    logger.log_metrics({"train/loss": 0.9, "epoch": 1}, step=2)
    logger.save()
    with open(folder / "metrics.csv", newline="") as file:
        kept = [(r["epoch"], r["step"], r["train/loss"]) for r in csv.DictReader(file)]
    assert kept == [("0", "0", "0.1"), ("0", "1", "0.2"), ("1", "2", "0.9")]


# --- 7. SIGTERM and SIGINT --------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_7_signal_during_training_leaves_last_ckpt_exits_nonzero_and_the_printed_command_resumes(stop, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "reached"
    # a step cap as the converged runs have (with it Lightning's ModelCheckpoint warned on resume)
    overrides = [*TINY, "trainer.max_epochs=-1", "trainer.max_steps=12", "data.train_episodes=6",
                 *announce(mark, "train", 8, 1.0)]  # fmt: skip
    process = start_train_py(*overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(mark, process)  # two steps into the second epoch: epoch 0's last.ckpt exists
    epoch0 = read_checkpoint(run / "checkpoints" / "last.ckpt")
    stderr = stop_with(process, stop)
    assert f"Run interrupted by {stop.name}; the last checkpoint is {run / 'checkpoints' / 'last.ckpt'}" in stderr
    assert not (run / "results.json").exists()
    kept = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert epoch0["global_step"] == 6
    assert kept["global_step"] == 8  # the state at the cut, with the loader's place in epoch 1
    assert kept["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "position": 2}]
    command = re.search(r"Resume it with:\n\s+(.*)", stderr).group(1)
    assert "resume=true" in command and f"hydra.run.dir={run}" in command
    args = shlex.split(command)[2:]  # drop "python train.py"
    mark.unlink()
    resumed = run_train_py(*args, cwd=tmp_path)
    assert "could not find the monitored key" not in resumed.stderr  # no checkpoint saved before validating
    results = json.loads((run / "results.json").read_text())
    assert results["train"]["steps"] == 12 and [h["epoch"] for h in results["val_history"]] == [0, 1]
    assert (run / ".hydra").is_dir() and (run / ".hydra-resume-1").is_dir()  # the first run's .hydra is kept


def test_7_sigterm_during_a_long_validation_is_acted_on_within_an_episode(tmp_path):
    run, mark = tmp_path / "run", tmp_path / "reached"
    overrides = [*TINY, "data.train_episodes=2", "data.val_episodes=100000", *announce(mark, "validation", 3, 0.05)]
    process = start_train_py(*overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(mark, process)
    stderr = stop_with(process, timeout=60)
    assert "resume=true" in stderr
    # no validation finished: the current training state was saved so that there is one to resume
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_7_a_run_stopped_in_its_first_validation_runs_it_in_full_on_resume(tmp_path):
    common = [*TINY, "trainer.max_epochs=2", "data.train_episodes=2", "data.val_episodes=6"]
    uninterrupted = train(compose_config(common, tmp_path / "reference"))
    run, mark = tmp_path / "run", tmp_path / "reached"
    process = start_train_py(*common, *announce(mark, "validation", 3, 0.5), f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(mark, process)  # half of epoch 0's validation done: no last.ckpt yet
    stop_with(process)
    run_train_py(*common, f"hydra.run.dir={run}", "resume=true", "resume_allow_changes=[callbacks.announce]",
                 cwd=tmp_path)  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    # the interrupted validation ran again in full: the history, the best epoch and the test are the
    # uninterrupted run's (Lightning alone restored it as finished and skipped it)
    assert [h["epoch"] for h in results["val_history"]] == [0, 1]
    assert [h["acc"] for h in results["val_history"]] == pytest.approx([h["acc"] for h in uninterrupted["val_history"]])
    assert results["test"]["acc"] == pytest.approx(uninterrupted["test"]["acc"])


def test_7_a_run_cut_twice_and_resumed_trains_and_logs_exactly_as_an_uninterrupted_one(tmp_path):
    # the converged queue's flags: no epoch cap, a step cap, the plateau callbacks, the CSV logger
    common = [*[o for o in TINY if o != "logger=none"], "logger=csv", "callbacks=plateau", "trainer.max_epochs=-1",
              "trainer.max_steps=18", "data.train_episodes=6"]  # fmt: skip
    uninterrupted = train(compose_config(common, tmp_path / "reference"))
    run = tmp_path / "run"
    for cut, (resume, batches) in enumerate([([], 8), (["resume=true"], 8)]):  # in epoch 1, then in epoch 2
        mark = tmp_path / f"reached{cut}"
        allow = ["resume_allow_changes=[callbacks.announce]"] if resume else []
        process = start_train_py(*common, *announce(mark, "train", batches, 1.0), f"hydra.run.dir={run}", *resume,
                                 *allow, cwd=tmp_path)  # fmt: skip
        wait_for(mark, process)
        stop_with(process)
    run_train_py(*common, f"hydra.run.dir={run}", "resume=true", "resume_allow_changes=[callbacks.announce]",
                 cwd=tmp_path)  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    without_cpu_time = lambda history: [{k: v for k, v in h.items() if k != "cpu_s"} for h in history]  # noqa: E731
    assert without_cpu_time(results["val_history"]) == without_cpu_time(uninterrupted["val_history"])
    assert results["test"]["episode_acc"] == uninterrupted["test"]["episode_acc"]
    # every training and validation row, with its step, as the uninterrupted run logged it (Lightning
    # replayed the restored epoch's end and trained the rest on other episodes, one step off)
    reference_rows = (tmp_path / "reference" / "csv" / "metrics.csv").read_text()
    assert (run / "csv" / "metrics.csv").read_text() == reference_rows


MID_EPOCH_CUTS = {
    # no validation yet: the current state (epoch 0, after 3 of its 6 episodes) is what resumes
    "before the first validation": ([], "train", 3),
    # validation every 3 episodes: cut inside epoch 0 after its first validation
    "after a validation inside an epoch": (["+trainer.val_check_interval=3"], "train", 5),
    # the same with a worker process reading episodes ahead of the training loop
    "with a loader worker": (["+trainer.val_check_interval=3", "data.num_workers=1"], "train", 5),
    # a pre-trained baseline: shuffled image batches instead of episodes
    "of shuffled image batches": (["model=baseline_nn", "data.image_batch_size=16"], "train", 3),
    # the official baselines' draws: 5 images of every class, then a batch of those
    "of class-balanced image batches": (
        ["model=baseline_nn", "data.image_batch_size=16", "data.image_sampling=class_balanced"],
        "train",
        3,
    ),
    # in epoch 1's validation (the first has 4 episodes): it runs again in full on resume
    "during a later validation": ([], "validation", 6),
}


@pytest.mark.parametrize("case", MID_EPOCH_CUTS)
def test_7_a_run_cut_inside_an_epoch_resumes_at_its_next_batch(case, tmp_path):
    extra, stage, batches = MID_EPOCH_CUTS[case]
    common = [*[o for o in TINY if o != "logger=none"], "logger=csv", "trainer.max_epochs=2", "data.train_episodes=6",
              *extra]  # fmt: skip
    uninterrupted = train(compose_config(common, tmp_path / "reference"))
    run, mark = tmp_path / "run", tmp_path / "reached"
    process = start_train_py(*common, *announce(mark, stage, batches, 1.0), f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(mark, process)
    stop_with(process)
    resumed = run_train_py(*common, f"hydra.run.dir={run}", "resume=true", "resume_allow_changes=[callbacks.announce]",
                           cwd=tmp_path)  # fmt: skip
    assert "dataloader is not resumable" not in resumed.stderr
    assert "exists and is not empty" not in resumed.stderr  # Lightning's warning, noise on a resume
    results = json.loads((run / "results.json").read_text())
    without_cpu_time = lambda history: [{k: v for k, v in h.items() if k != "cpu_s"} for h in history]  # noqa: E731
    assert without_cpu_time(results["val_history"]) == without_cpu_time(uninterrupted["val_history"])
    assert results["test"]["episode_acc"] == uninterrupted["test"]["episode_acc"]
    # the rest of the cut epoch trained on its remaining batches (Lightning alone served the epoch's
    # first batches again), every row at the uninterrupted run's step
    assert (run / "csv" / "metrics.csv").read_text() == (tmp_path / "reference" / "csv" / "metrics.csv").read_text()


def test_7_resume_command_keeps_the_overrides_and_replaces_folder_and_resume():
    command = resume_command("train.py", ["model=maml", "resume=false", "hydra.run.dir=x", "data.n_shot=5"], "/r un")
    assert command == "python train.py model=maml data.n_shot=5 'hydra.run.dir=/r un' resume=true"


def test_7_an_interrupted_test_only_run_prints_a_command_that_runs_it_again(tmp_path):
    trained = train(compose_config([*TINY, "trainer.max_epochs=1", "data.train_episodes=2"], tmp_path))
    run, mark = tmp_path / "test_only", tmp_path / "reached"
    overrides = [*TINY, "train=false", f"ckpt_path={trained['checkpoint']}", *announce(mark, "test", 2, 0.5)]
    process = start_train_py(*overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(mark, process)
    stderr = stop_with(process, timeout=120)
    command = re.search(r"A test-only run has no training to resume; run it again:\n\s+(.*)", stderr).group(1)
    assert "resume=" not in command and "hydra.run.dir" not in command and "train=false" in command
    assert rerun_command("train.py", ["train=false", f"hydra.run.dir={run}", "resume=false"]) == (
        "python train.py train=false"
    )


# --- 8. unknown keys ------------------------------------------------------------------------


def compose_with_hydra(overrides: list[str]):
    """The composed config and its Hydra node, as @hydra.main sees them."""
    GlobalHydra.instance().clear()
    initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3")
    cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    return cfg, cfg.hydra


def typo_preset(tmp_path: Path, body: str) -> str:
    """A preset conf/experiment/typo.yaml in a search-path folder; the override that adds it."""
    (tmp_path / "experiment").mkdir(parents=True, exist_ok=True)
    (tmp_path / "experiment" / "typo.yaml").write_text(f"# @package _global_\n{body}")
    return f"hydra.searchpath=[file://{tmp_path}]"


@pytest.mark.parametrize(
    ("body", "key", "closest"),
    [
        ("eval:\n  shot: [1, 5]\n", "eval.shot", "eval.shots"),
        ("nonfinite_los: skip\n", "nonfinite_los", "nonfinite_loss"),
    ],
)
def test_8_misspelled_key_in_a_preset_names_the_closest_key(tmp_path, body, key, closest):
    cfg, hydra_cfg = compose_with_hydra([typo_preset(tmp_path, body), "experiment=typo"])
    try:
        with pytest.raises(UnknownConfigKeyError, match=rf"'{key}' \(did you mean '{closest}'\?\)"):
            check_known_keys(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
    finally:
        GlobalHydra.instance().clear()


def test_8_explicit_additions_and_target_parameters_are_allowed(tmp_path):
    overrides = ["debug=fast_dev_run", "+callbacks.crash._target_=tests.training.crash.CrashAfterStep"]
    cfg, hydra_cfg = compose_with_hydra(overrides)
    try:
        assert "+callbacks.crash._target_=tests.training.crash.CrashAfterStep" in reference_overrides(
            hydra_cfg.runtime.choices, hydra_cfg.overrides.task
        )
        check_known_keys(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)  # trainer.fast_dev_run is a
    finally:  # Trainer argument; the callback was added deliberately with +
        GlobalHydra.instance().clear()


def test_8_train_py_refuses_a_preset_typo_before_work(tmp_path):
    searchpath = typo_preset(tmp_path / "conf", "eval:\n  shot: [1, 5]\n")
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *TINY, searchpath, "experiment=typo",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0
    assert "Unknown config key 'eval.shot' (did you mean 'eval.shots'?)" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- 9. run keys checked before any work -------------------------------------------------


@pytest.mark.parametrize(
    ("override", "error_type", "message"),
    [
        ("data.eval_seed=-1", DataError, "data.eval_seed must be a non-negative integer, got -1; set data.eval_seed=0"),
        ("seed=-3", RunConfigError, "seed must be a non-negative integer, got -3"),
        ("seed=1.5", RunConfigError, "seed must be an integer, got 1.5"),
        ("data.test_episodes=2.5", RunConfigError, "data.test_episodes must be an integer, got 2.5"),
        ("data.val_episodes=0", DataError, "data.val_episodes must be a positive integer, got 0"),
        ("data.num_workers=-1", DataError, "data.num_workers must be a non-negative integer"),
        ("data.image_batch_size=0", DataError, "data.image_batch_size must be a positive integer"),
        ("data.std=[0.0]", DataError, "data.std must be positive"),
        ("data.mean=[nan]", DataError, "data.mean must be null or a list of finite numbers"),
        ("eval.shots=[0]", RunConfigError, "eval.shots must be null or a list of positive integers"),
        ("eval.shots=[1,5]", RunConfigError, "asks for 5 shots but test episodes have data.n_shot=1"),
        ("optimized_metric=valacc", RunConfigError, "optimized_metric must be '<stage>/<key>'"),
        ("train=maybe", RunConfigError, "train must be true or false, got 'maybe'"),
        ("ckpt_path=/no/such.ckpt", FileNotFoundError, "Checkpoint /no/such.ckpt not found"),
        ("ckpt_path=last", RunConfigError, "ckpt_path=last is a Lightning shorthand this project does not take"),
        ("ckpt_path=best", RunConfigError, "Continue a run with resume=true hydra.run.dir=<run folder>"),
        ("resume_allow_changes=seed", RunConfigError, "resume_allow_changes must be a list, got 'seed'"),
    ],
)
def test_9_bad_run_keys_fail_before_the_data_are_read(tiny_config, no_data_reads, override, error_type, message):
    with pytest.raises((error_type, InstantiationException)) as caught:
        train(tiny_config(override))
    error = caught.value.__cause__ if isinstance(caught.value, InstantiationException) else caught.value
    assert isinstance(error, error_type) and message in str(error), repr(error)


def test_5_a_test_only_run_with_lightnings_last_shorthand_is_refused_not_scored_untrained(tiny_config, no_data_reads):
    with pytest.raises(RunConfigError, match="with train=false, test untrained weights"):
        train(tiny_config("train=false", "ckpt_path=last"))


def hydra_run_config(run_dir: Path, *overrides: str) -> DictConfig:
    """The config Hydra hands ``ProtectExistingRuns.on_run_start`` for a run in ``run_dir``."""
    base = OmegaConf.create({"train": True, "resume": False, "ckpt_path": None})
    base.hydra = {"run": {"dir": str(run_dir)}, "output_subdir": ".hydra"}
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


def test_5_a_run_trained_from_scratch_in_another_runs_folder_is_refused_before_hydra_writes(tmp_path):
    (tmp_path / ".hydra").mkdir()
    with pytest.raises(SystemExit, match=r"already holds a run \(.hydra\).*Continue that run with resume=true"):
        ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path))
    ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path / "empty"))  # a new folder: no error


@pytest.mark.parametrize("continuation", ["resume=true", "ckpt_path=/run/checkpoints/epoch003.ckpt"])
def test_6_a_run_that_continues_one_in_its_folder_writes_its_config_beside_the_first(tmp_path, continuation):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra-resume-1").mkdir()
    config = hydra_run_config(tmp_path, continuation)
    ProtectExistingRuns().on_run_start(config)
    assert config.hydra.output_subdir == ".hydra-resume-2"


def test_5_a_test_only_run_records_the_seed_its_checkpoint_was_trained_with(tiny_config, tmp_path):
    trained = train(tiny_config("trainer.max_epochs=1", "data.train_episodes=2", "seed=3"))
    overrides = ["debug=tiny", "trainer=cpu", "logger=none", "train=false", "seed=7"]
    tested = train(compose_config([*overrides, f"ckpt_path={trained['checkpoint']}"], tmp_path / "test_only"))
    assert trained["seed"] == tested["seed"] == 3  # the report counts seeds by it: seed=7 is not a new seed
    assert tested["test"]["episode_acc"] == trained["test"]["episode_acc"]


def test_5_the_other_processes_of_a_ddp_run_start_in_rank_zeros_folder(tmp_path, monkeypatch):
    (tmp_path / ".hydra").mkdir()  # rank 0 wrote it; Lightning starts rank 1 with hydra.output_subdir=null
    ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path, "hydra.output_subdir=null"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit, match="already holds a run"):
        ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path))


# --- sweeps (-m): cut, continued, and protected like single runs ------------------------------


def hydra_sweep_config(sweep_dir: Path, *overrides: str) -> DictConfig:
    """The config Hydra hands ``ProtectExistingRuns.on_multirun_start`` for a sweep into ``sweep_dir``."""
    base = OmegaConf.create({"train": True, "resume": False, "ckpt_path": None})
    base.hydra = {"sweep": {"dir": str(sweep_dir)}, "output_subdir": ".hydra", "overrides": {"hydra": []}}
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


def a_sweep_folder(sweep_dir: Path, jobs: int = 2) -> Path:
    """A sweep folder whose jobs 0..jobs-1 hold a run (config, results) and its multirun.yaml."""
    for job in range(jobs):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (sweep_dir / str(job) / "results.json").write_text("{}")
    (sweep_dir / "multirun.yaml").write_text("first sweep\n")
    return sweep_dir


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train=false"], r"already holds runs .*a test-only sweep \(train=false\) would replace their configs"),
        ([], r"already holds runs .*Continue that sweep with resume=true"),
    ],
)
def test_5_a_test_only_or_fresh_sweep_into_a_sweep_folder_holding_runs_is_refused(tmp_path, overrides, message):
    sweep = a_sweep_folder(tmp_path / "sweep")
    with pytest.raises(SystemExit, match=message):
        ProtectExistingRuns().on_multirun_start(hydra_sweep_config(sweep, *overrides))
    assert (sweep / "multirun.yaml").read_text() == "first sweep\n"  # nothing renamed or replaced
    ProtectExistingRuns().on_multirun_start(hydra_sweep_config(tmp_path / "new", *overrides))  # a new folder


def test_6_continuing_a_sweep_into_a_folder_without_runs_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    for sweep in (tmp_path / "empty", tmp_path / "no_such_folder"):
        with pytest.raises(SystemExit, match=r"resume=true but the sweep folder .* holds no run to continue"):
            ProtectExistingRuns().on_multirun_start(hydra_sweep_config(sweep, "resume=true"))


def test_6_a_continued_sweep_writes_job_configs_beside_the_first_and_keeps_multirun_yaml(tmp_path):
    sweep = a_sweep_folder(tmp_path / "sweep")
    (sweep / "1" / ".hydra-resume-1").mkdir()  # job 1 was continued once already
    config = hydra_sweep_config(sweep, "resume=true")
    ProtectExistingRuns().on_multirun_start(config)
    assert list(config.hydra.overrides.hydra) == ["hydra.output_subdir='.hydra-resume-2'"]  # free in every job
    assert not (sweep / "multirun.yaml").exists()  # Hydra writes the new one next
    assert (sweep / "multirun.before-resume-1.yaml").read_text() == "first sweep\n"
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text() == "- seed=0\n"


def test_6_a_job_of_a_continued_sweep_that_never_started_gets_its_config_as_its_hydra(tmp_path):
    job = tmp_path / "sweep" / "2"
    (job / ".hydra-resume-1").mkdir(parents=True)  # what Hydra just wrote for the job
    job_config = OmegaConf.create({"hydra": {"output_subdir": ".hydra-resume-1", "runtime": {"output_dir": str(job)}}})
    ProtectExistingRuns().on_job_start(job_config)
    assert (job / ".hydra").is_dir() and not (job / ".hydra-resume-1").exists()
    started = tmp_path / "sweep" / "0"  # a job that ran before keeps both
    (started / ".hydra").mkdir(parents=True)
    (started / ".hydra-resume-1").mkdir()
    ProtectExistingRuns().on_job_start(
        OmegaConf.merge(job_config, {"hydra": {"runtime": {"output_dir": str(started)}}})
    )
    assert (started / ".hydra").is_dir() and (started / ".hydra-resume-1").is_dir()


def test_7_the_sweep_resume_command_keeps_the_sweep_arguments_and_replaces_folder_and_resume():
    arguments = ["-m", "model=maml,protonet", "seed=0,1", "hydra.sweep.dir=old", "resume=false"]
    assert resume_sweep_command("train.py", arguments, "/s w") == (
        "python train.py -m model=maml,protonet seed=0,1 'hydra.sweep.dir=/s w' resume=true"
    )
    assert sweep_folder("/logs/sweep/3", "3") == Path("/logs/sweep")
    assert sweep_folder("/logs/sweep/model=maml/seed=1", "model=maml/seed=1") == Path("/logs/sweep")


def test_7_a_cut_sweep_continues_with_the_printed_command_and_starts_the_jobs_that_never_ran(tmp_path):
    sweep, mark = tmp_path / "sweep", tmp_path / "reached"
    common = [*TINY, "trainer.max_epochs=2", "data.train_episodes=6"]
    process = start_train_py("-m", *common, *announce(mark, "train", 8, 1.0), "seed=0,1", f"hydra.sweep.dir={sweep}",
                             cwd=tmp_path)  # fmt: skip
    wait_for(mark, process)  # job 0 is in its second epoch; job 1 has not started
    stderr = stop_with(process)
    assert not (sweep / "1").exists()
    command = re.search(r"Continue the sweep with:\n\s+(.*)", stderr).group(1)
    assert f"hydra.sweep.dir={sweep}" in command and "seed=0,1" in command and command.endswith("resume=true")
    run_train_py(*shlex.split(command)[2:], cwd=tmp_path)
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["seed"] == int(job) and results["train"]["steps"] == 12
        assert [h["epoch"] for h in results["val_history"]] == [0, 1]
    # job 0's first config stays, its continuation has its own; job 1's only config is its .hydra
    assert "resume=true" not in (sweep / "0" / ".hydra" / "overrides.yaml").read_text().lower()
    assert "resume=true" in (sweep / "0" / ".hydra-resume-1" / "overrides.yaml").read_text().lower()
    assert "resume=true" in (sweep / "1" / ".hydra" / "overrides.yaml").read_text().lower()
    assert not (sweep / "1" / ".hydra-resume-1").exists()
    assert (sweep / "multirun.yaml").is_file() and (sweep / "multirun.before-resume-1.yaml").is_file()


# --- issue 37, item 3: a run folder is claimed atomically; time-stamped names are made unique -----

# a time-stamped name that every run started on one day shares: the collision of two runs in one second, on demand
SHARED_TIME_NAME = "${now:%Y-%m-%d}"
setup_globals()  # Hydra's resolvers (now) for configs resolved outside a Hydra app


def test_3_a_run_folder_held_by_a_running_run_is_refused_naming_it(tmp_path):
    holder = FolderLock.take(tmp_path / "run")  # another run, running now
    for overrides in ([], ["resume=true"], ["hydra.output_subdir=null"]):
        with pytest.raises(SystemExit, match=rf"run folder {tmp_path / 'run'} is in use by another run \(process "):
            ProtectExistingRuns().on_run_start(hydra_run_config(tmp_path / "run", *overrides))
    holder.release()
    assert not (tmp_path / "run").exists()  # the lock made the folder and took it away again
    callback = ProtectExistingRuns()
    callback.on_run_start(hydra_run_config(tmp_path / "run"))  # free now
    assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    callback.on_run_end(hydra_run_config(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_3_a_taken_time_stamped_folder_gets_a_suffix_and_an_explicit_one_never_does(tmp_path):
    base = tmp_path / "runs" / time.strftime("%Y-%m-%d")
    holder = FolderLock.take(base)  # a run started in the same second, running
    (tmp_path / "runs" / f"{base.name}_1").mkdir()
    (tmp_path / "runs" / f"{base.name}_1" / "results.json").write_text("{}")  # one that ended
    config = hydra_run_config(tmp_path / "unused")
    config.hydra.run.dir = f"{tmp_path}/runs/{SHARED_TIME_NAME}"
    callback = ProtectExistingRuns()
    callback.on_run_start(config)
    assert config.hydra.run.dir == f"{base}_2" and (tmp_path / "runs" / f"{base.name}_2" / LOCK_FILE).is_file()
    holder.release()
    callback.release_all()


def test_3_a_taken_time_stamped_sweep_folder_gets_a_suffix_that_every_job_is_composed_with(tmp_path):
    base = tmp_path / "multiruns" / time.strftime("%Y-%m-%d")
    holder = FolderLock.take(base)
    config = hydra_sweep_config(tmp_path / "unused")
    config.hydra.sweep.dir = f"{tmp_path}/multiruns/{SHARED_TIME_NAME}"
    config.hydra.overrides.hydra = [f"hydra.sweep.dir={tmp_path}/multiruns/{SHARED_TIME_NAME}", "hydra.verbose=false"]
    ProtectExistingRuns().on_multirun_start(config)
    assert config.hydra.sweep.dir == f"{base}_1"
    assert list(config.hydra.overrides.hydra) == ["hydra.verbose=false", f"hydra.sweep.dir='{base}_1'"]
    holder.release()


def test_3_two_runs_started_at_once_in_one_time_stamped_folder_each_get_their_own(tmp_path):
    """Both runs of the same second end well, each with its own folder, checkpoints and results."""
    common = [
        *TINY,
        "trainer.max_epochs=1",
        "data.train_episodes=2",
        f"hydra.run.dir={tmp_path}/runs/{SHARED_TIME_NAME}",
    ]
    processes = [start_train_py(*common, f"seed={seed}", cwd=tmp_path) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    base = tmp_path / "runs" / time.strftime("%Y-%m-%d")
    folders = [base, base.with_name(f"{base.name}_1")]
    seeds = sorted(json.loads((folder / "results.json").read_text())["seed"] for folder in folders)
    assert seeds == [1, 2]
    for folder in folders:
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted(
            {"last.ckpt", *(p.name for p in (folder / "checkpoints").glob("epoch*.ckpt"))}
        )
        assert not (folder / LOCK_FILE).exists()  # let go when the run ended


def test_3_two_runs_given_one_folder_at_once_never_both_run_there(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, "trainer.max_epochs=1", "data.train_episodes=2", f"hydra.run.dir={run}"]
    processes = [start_train_py(*common, f"seed={seed}", cwd=tmp_path) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [0, 1], [err[-2000:] for _, err in outputs]
    refused = outputs[codes.index(1)][1]
    assert "is in use by another run (process" in refused or "already holds a run" in refused, refused[-2000:]
    winner = (1, 2)[codes.index(0)]
    assert json.loads((run / "results.json").read_text())["seed"] == winner
    assert sorted(p.name for p in run.glob(".hydra*")) == [".hydra"]  # one config, the winner's


def test_3_a_sweep_into_a_taken_time_stamped_folder_runs_in_its_own(tmp_path):
    base = tmp_path / "multiruns" / time.strftime("%Y-%m-%d")
    holder = FolderLock.take(base)  # a sweep started in the same second, running
    done = run_train_py("-m", *TINY, "trainer.max_epochs=1", "data.train_episodes=2", "seed=4",
                        f"hydra.sweep.dir={tmp_path}/multiruns/{SHARED_TIME_NAME}", cwd=tmp_path)  # fmt: skip
    holder.release()
    assert done.returncode == 0
    assert json.loads((tmp_path / "multiruns" / f"{base.name}_1" / "0" / "results.json").read_text())["seed"] == 4
    assert not base.exists()


def test_3_a_folder_that_cannot_be_made_gets_no_lock_and_is_left_to_the_runs_own_check(tmp_path):
    (tmp_path / "file").write_text("x")
    lock = FolderLock.take(tmp_path / "file" / "run")  # the run's output check names it, with its fix
    assert lock is not None and lock.fd is None
    lock.release()
    assert (tmp_path / "file").read_text() == "x"


# --- issue 37, item 14: a run folder this process cannot write is named with its fix, before Hydra writes there ---


def unwritable_message(kind: str, folder: Path, reason: str) -> str:
    """The one line a run (or sweep) prints for a ``folder`` it cannot write in."""
    return (
        f"Error: The {kind} folder {folder} is not writable ({reason}). Choose another with hydra.{kind}.dir=<folder>."
    )


PERMISSION_DENIED = "permission denied: fix the folder's permissions or write somewhere you may write"
A_FILE_IN_THE_PATH = "a part of the path is a file, not a folder: pass another path or move that file"


def run_entry_point(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``[prefix] python train.py args`` to its end, stdout and stderr captured, whatever its exit status."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [*prefix, sys.executable, str(PROJECT_ROOT / "train.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def bound_by_permissions(folder: Path) -> tuple[str, ...]:
    """A command prefix under which ``folder``'s permission bits bind the process: nothing for a user;
    for root (whom chmod does not stop) setpriv dropping its capabilities. Skips where neither works."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("runs as root, whom chmod does not stop, and setpriv (to drop root's capabilities) is missing")
        prefix = (setpriv, "--inh-caps=-all", "--bounding-set=-all")
    probe = [*prefix, sys.executable, "-c", "import os, sys; sys.exit(os.access(sys.argv[1], os.W_OK))", str(folder)]
    if subprocess.run(probe).returncode != 0:
        pytest.skip(f"{folder} stays writable after chmod 0o555 for this user")
    return prefix


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty folder with mode 0o555 (made writable again afterwards, so it can be removed)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_14_a_read_only_run_folder_ends_with_one_line_naming_it_before_hydra_writes(read_only_folder, tmp_path, sweep):
    prefix = bound_by_permissions(read_only_folder)
    kind = "sweep" if sweep else "run"
    mode = ["-m", "seed=1,2"] if sweep else []
    done = run_entry_point(*mode, *TINY, f"hydra.{kind}.dir={read_only_folder}", cwd=tmp_path, prefix=prefix)
    assert done.returncode == 1
    assert done.stderr.strip() == unwritable_message(kind, read_only_folder, PERMISSION_DENIED)
    assert list(read_only_folder.iterdir()) == []


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_14_a_run_folder_below_a_file_ends_with_one_line_naming_it_before_hydra_writes(tmp_path, sweep):
    """Fails for root as for anyone: a regular file stands where a folder of the path should be."""
    (tmp_path / "notes.txt").write_text("x")
    folder = tmp_path / "notes.txt" / "run"
    kind = "sweep" if sweep else "run"
    mode = ["-m", "seed=1,2"] if sweep else []
    done = run_entry_point(*mode, *TINY, f"hydra.{kind}.dir={folder}", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == unwritable_message(kind, folder, A_FILE_IN_THE_PATH)
    assert (tmp_path / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("errno_code", [errno.EACCES, errno.EROFS, errno.ENOSPC], ids=["denied", "read-only", "full"])
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_14_a_run_folder_that_refuses_writes_is_named_and_left_unlocked(tmp_path, monkeypatch, errno_code, sweep):
    """The folder's write check fails as in a read-only, denied or full folder (chmod does not stop root)."""
    real_open = os.open

    def refuse_probe(path, flags, *args):
        if ".fewshot-write-check" in str(path):
            raise OSError(errno_code, os.strerror(errno_code), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_probe)
    folder, kind = tmp_path / "out", "sweep" if sweep else "run"
    callback = ProtectExistingRuns()
    start = callback.on_multirun_start if sweep else callback.on_run_start
    config = hydra_sweep_config(folder) if sweep else hydra_run_config(folder)
    with pytest.raises(SystemExit) as refused:
        start(config)
    reason = io_module.FIXES[errno_code]
    assert str(refused.value) == unwritable_message(kind, folder, reason)
    assert not folder.exists() and callback.locks == []  # the claim made the folder and let it go again


def test_14_a_default_time_stamped_run_folder_that_cannot_be_made_is_named_with_its_fix(tmp_path):
    """The default folder (``${now:...}``, claimed with a suffix when taken) gets the same check as an explicit one."""
    (tmp_path / "logs").write_text("x")  # where the log folder should be
    config = hydra_run_config(tmp_path / "unused")
    config.hydra.run.dir = f"{tmp_path}/logs/{SHARED_TIME_NAME}"
    callback = ProtectExistingRuns()
    with pytest.raises(SystemExit) as refused:
        callback.on_run_start(config)
    folder = tmp_path / "logs" / time.strftime("%Y-%m-%d")
    assert str(refused.value) == unwritable_message("run", folder, A_FILE_IN_THE_PATH)
    assert callback.locks == [] and (tmp_path / "logs").read_text() == "x"
