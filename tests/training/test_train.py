"""The training entry point end to end: compose API, subprocess, multirun, load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

import fewshot
from fewshot.data.errors import DataError
from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT, compose_config
from tests.helpers import wandb_run_bytes


def test_train_via_compose_writes_results_and_best_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config()
    results = train(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "ProtoNet" and saved["dataset"] == "embedded_tiny"
    assert saved["n_way"] == 5 and saved["n_shot"] == 1 and saved["n_query"] == 5
    test = saved["test"]
    assert test["episodes"] == 6 and len(test["episode_acc"]) == 6
    assert test["episode_index"] == list(range(6))
    assert 0.0 <= test["acc"] <= 1.0 and test["ci95"] > 0
    assert abs(test["acc"] - sum(test["episode_acc"]) / 6) < 1e-9
    assert len(test["fingerprint"]) == 64
    assert saved["config"]["model"]["_target_"] == "fewshot.methods.protonet.ProtoNet"
    assert "cpu_count" in saved["hardware"] and saved["wall_time_s"] > 0
    assert results["checkpoint"] and Path(results["checkpoint"]).is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_load_rebuilds_the_trained_method(tiny_config, tmp_path):
    results = train(tiny_config())
    method = fewshot.load(results["checkpoint"])
    assert type(method).__name__ == "ProtoNet" and not method.training
    state = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in method.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_load_rejects_a_foreign_file(tmp_path):
    bogus = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ValueError, match="not a fewshot checkpoint"):
        fewshot.load(bogus)
    with pytest.raises(FileNotFoundError, match="not found"):
        fewshot.load(tmp_path / "missing.ckpt")


def test_same_seed_gives_identical_test_results(tmp_path):
    first = train(compose_config(["debug=tiny", "trainer=cpu", "logger=none"], tmp_path / "a"))
    second = train(compose_config(["debug=tiny", "trainer=cpu", "logger=none"], tmp_path / "b"))
    assert first["test"]["episode_acc"] == second["test"]["episode_acc"]
    assert first["test"]["fingerprint"] == second["test"]["fingerprint"]


def test_test_episodes_do_not_depend_on_training_seed_or_method_settings(tmp_path):
    a = compose_config(["debug=tiny", "trainer=cpu", "logger=none", "seed=1"], tmp_path / "a")
    b = compose_config(["debug=tiny", "trainer=cpu", "logger=none", "seed=2", "model.distance=cosine"], tmp_path / "b")
    from hydra.utils import instantiate

    fa, fb = (instantiate(c.data).episode_fingerprint("test") for c in (a, b))
    assert fa == fb


def test_unknown_dataset_or_method_names_the_options(tmp_path):
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="data.*nosuchdata|nosuchdata"):
        compose_config(["data=nosuchdata"], tmp_path)
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="nosuchmethod"):
        compose_config(["model=nosuchmethod"], tmp_path)


def test_unknown_config_key_is_rejected(tmp_path):
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError), match="n_wya"):
        compose_config(["data.n_wya=5"], tmp_path)


def test_n_way_larger_than_split_fails_before_training(tiny_config):
    with pytest.raises(DataError, match="n_way=12 is larger than the 10 classes"):
        train(tiny_config("data.n_way=12"))


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_py_subprocess_prints_table_and_writes_json(tmp_path):
    out = run_train("debug=tiny", "trainer=cpu", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Test accuracy" in out.stdout and "ProtoNet" in out.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["episodes"] == 6
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


def test_multirun_runs_every_job_and_each_writes_results(tmp_path):
    out = run_train(
        "-m",
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "data.n_shot=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    shots = sorted(json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text())["n_shot"] for i in (0, 1))
    assert shots == [1, 2]


def test_cfg_job_shows_composed_config(tmp_path):
    out = run_train("--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "n_way: 5" in out.stdout and "fewshot.methods.protonet.ProtoNet" in out.stdout


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    out = run_train(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "callbacks=none",
        "data.n_shot=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    shots = sorted(json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text())["n_shot"] for i in (0, 1))
    assert shots == [1, 2]


def test_optuna_preset_tunes_on_validation_accuracy(tmp_path):
    out = run_train(
        "-m",
        "hparams_search=optuna",
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "callbacks=none",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "model.optimizer.lr" in best and "best_value" in best
    trial_vals = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text())["val"]["acc"] for i in (0, 1)]
    assert float(best.split("best_value:")[1]) == pytest.approx(max(trial_vals))


def test_wandb_offline_runs_of_one_sweep_share_a_group_and_log_results(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_train(
        "-m",
        "debug=tiny",
        "trainer=cpu",
        "logger=wandb",
        "callbacks=none",
        "data.n_shot=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        keys = (b"sweep-sweep", b"test/acc", b"val/acc", b"results", b"train/loss")
        logged = wandb_run_bytes(run, keys)
        assert b"sweep-sweep" in logged  # the group: sweep-<sweep folder name>
        for key in keys[1:]:
            assert key in logged, key


def test_results_name_the_commit_the_run_was_built_from(tiny_config, monkeypatch):
    # a checkout changed while a long run trains must not relabel the run with the new commit
    commits = iter(["built-from", "changed-later"])
    monkeypatch.setattr("fewshot.run.training.git_commit", lambda *args, **kwargs: next(commits))
    assert train(tiny_config())["git_commit"] == "built-from"


def test_train_py_reports_a_bad_input_in_one_line_without_a_traceback(tmp_path):
    out = run_train("debug=tiny", "trainer=cpu", "data.n_way='5'", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: data.n_way must be an integer, got '5' (a string); set e.g. data.n_way=5."
    ], out.stderr[-3000:]


def test_a_wrapped_bad_input_is_found_and_a_bug_is_not():
    from hydra.errors import InstantiationException

    from fewshot.cli import user_error
    from fewshot.data.errors import DataError

    cause = DataError("data.n_way must be positive")
    try:
        raise InstantiationException("Error in call to target\nfull_key: data") from cause
    except InstantiationException as wrapped:
        assert user_error(wrapped) is cause
    assert user_error(KeyError("a bug")) is None
