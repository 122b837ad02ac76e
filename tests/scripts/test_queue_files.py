"""Every run of the committed queue files composes and sets only known keys, so a queue fails
in seconds here rather than after hours of CPU when its line comes up."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fewshot.run.config_keys import check_known_keys
from tests.conftest import CONFIG_DIR, PROJECT_ROOT
from tests.scripts.test_run_queue import run_queue  # the script, loaded once

QUEUE_FILES = sorted((PROJECT_ROOT / "scripts").glob("*converged*.txt"))
RUNS = [(path.name, run) for path in QUEUE_FILES for run in run_queue.read_queue(path)]


def test_the_converged_table_has_a_queue_file():
    assert [p.name for p in QUEUE_FILES] == ["omniglot_converged.txt"]
    assert len(RUNS) >= 30


@pytest.mark.parametrize(("queue", "run"), RUNS, ids=[run.name for _, run in RUNS])
def test_queued_run_composes_with_only_known_keys(queue, run):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(run.overrides), return_hydra_config=True)
        check_known_keys(cfg, cfg.hydra.runtime.choices, cfg.hydra.overrides.task)
    assert cfg.seed == int(run.name.rsplit("_s", 1)[1]), "the folder name's seed suffix matches seed="
    assert cfg.callbacks.cpu_budget.minutes > 0 and cfg.callbacks.early_stopping.monitor == "val/acc"


def test_meta_lstm_seeds_repeat_seed_zeros_training_length_in_episodes():
    runs = {run.name: run for _, run in RUNS}
    for shot in ("5w1s", "5w5s"):
        committed = PROJECT_ROOT / "results" / "omniglot" / f"omniglot_{shot}" / "meta-lstm" / "seed0" / "results.json"
        steps = json.loads(committed.read_text())["train"]["steps"]
        seed_zero = set(runs[f"omniglot_meta_lstm_{shot}_s0"].overrides) - {"seed=0"}
        for seed in (1, 2):
            extra = set(runs[f"omniglot_meta_lstm_{shot}_s{seed}"].overrides) - seed_zero - {f"seed={seed}"}
            assert f"trainer.max_steps={steps}" in extra, f"{shot} seed {seed} must train seed 0's {steps} episodes"
            assert {e.split("=")[0] for e in extra} == {"trainer.max_steps", "callbacks.cpu_budget.minutes"}


def committed_steps(setting: str, method: str = "meta-lstm") -> int:
    """Training steps of the committed seed-0 run of ``method`` in ``setting``."""
    path = PROJECT_ROOT / "results" / "omniglot" / f"omniglot_{setting}" / method / "seed0" / "results.json"
    return json.loads(path.read_text())["train"]["steps"]


def test_meta_lstm_one_shot_variants_are_counted_in_the_official_runs_episodes():
    runs = {run.name: run for _, run in RUNS}
    for setting in ("5w1s", "20w1s"):
        variant = set(runs[f"omniglot_meta_lstm_gmean_{setting}_s0"].overrides)
        official = set(runs[f"omniglot_meta_lstm_{setting}_s0"].overrides)
        assert variant - official == {
            "model.grad_scale=mean",
            "variant='gradient as mean'",
            f"trainer.max_steps={committed_steps(setting)}",
            "callbacks.cpu_budget.minutes=240",
        }
    longer = set(runs["omniglot_meta_lstm_long_5w1s_s1"].overrides) - set(runs["omniglot_meta_lstm_5w1s_s1"].overrides)
    assert f"trainer.max_steps={2 * committed_steps('5w1s')}" in longer, "twice seed 0's (and seed 1's) episodes"
    assert {e.split("=")[0] for e in longer} == {"trainer.max_steps", "callbacks.cpu_budget.minutes", "variant"}
