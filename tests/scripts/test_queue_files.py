"""Every run of the committed queue files composes and sets only known keys, so a queue fails
in seconds here rather than after hours of CPU when its line comes up."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fewshot.reporting.costs import read_costs
from fewshot.run.config_keys import check_known_keys
from tests.conftest import CONFIG_DIR, PROJECT_ROOT
from tests.scripts.test_run_queue import run_queue  # the script, loaded once

QUEUE_FILES = sorted((PROJECT_ROOT / "scripts").glob("*converged*.txt"))
# the budget every line of the converged queue is capped at (scripts/omniglot_converged.txt, header)
REFERENCE_MINUTES = 180
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
    assert cfg.callbacks.early_stopping.monitor == "val/acc"
    # counted in work: no CPU cap, so the plateau rule or the step cap ends the run on any machine
    assert cfg.callbacks.cpu_budget.minutes is None and cfg.trainer.max_steps > 0 and cfg.trainer.max_epochs == -1


def overrides_of(name: str) -> dict[str, str]:
    """A queue line's overrides as key -> value."""
    runs = {run.name: run for _, run in RUNS}
    return dict(o.split("=", 1) for o in runs[name].overrides)


def test_every_line_is_capped_at_one_reference_budget_of_the_committed_costs():
    costs = read_costs(PROJECT_ROOT / "results" / "omniglot" / "reference_costs.json")
    cost_of = {name: row["step_cpu_s"] for row in costs["rows"] for name in row["lines"]}
    assert costs["machine"]["torch_threads"] == 1
    for _, run in RUNS:
        cap = int(overrides_of(run.name)["trainer.max_steps"])
        assert cap == math.floor(60 * REFERENCE_MINUTES / cost_of[run.name]), run.name


def test_seeds_and_variants_differ_from_their_base_line_only_in_what_names_them():
    seeded = {"omniglot_meta_lstm_5w1s", "omniglot_meta_lstm_5w5s", "omniglot_protonet_5w1s", "omniglot_protonet_5w5s"}
    for base in seeded:
        for seed in (1, 2):
            other = overrides_of(f"{base}_s{seed}")
            assert other == {**overrides_of(f"{base}_s0"), "seed": str(seed)}, f"{base} seed {seed}"
    for setting in ("5w1s", "5w5s", "20w1s"):
        variant = overrides_of(f"omniglot_meta_lstm_gmean_{setting}_s0")
        official = overrides_of(f"omniglot_meta_lstm_{setting}_s0")
        changed = {k for k in variant.keys() | official.keys() if variant.get(k) != official.get(k)}
        # the cap may differ: each line's cap comes from its own measured step cost
        assert changed - {"trainer.max_steps"} == {"model.grad_scale", "variant"}, setting
        assert variant["model.grad_scale"] == "mean"
