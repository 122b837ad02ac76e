"""Every config file of the family composes and runs a tiny version end to end."""

import json
from pathlib import Path

import pytest

import fewshot
from fewshot.learned_optimizer.run import NET_FILE, run
from tests.conftest import PROJECT_ROOT
from tests.learned_optimizer.conftest import CONFIG_DIR, TINY, TINY_IMAGES, compose_learned_optimizer


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def tiny_run(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_learned_optimizer([*TINY, *overrides], tmp_path)
    if cfg.problem._target_.endswith("MLPClassification"):
        cfg = compose_learned_optimizer([*TINY, *TINY_IMAGES, *overrides], tmp_path)
    return run(cfg)


def test_the_family_has_the_documented_options():
    assert options("problem") == ["mlp", "mlp_deep", "mlp_relu", "mlp_steps200", "mlp_wide", "quadratic"]
    assert options("baselines") == ["default", "none"]
    assert options("experiment") == ["mlp", "quadratic"]


def test_the_config_root_is_package_data_apart_from_train_yaml():
    """The configs live in the package and every file is listed in pyproject's package-data (so
    the wheel has them); train.py's conf/ no longer holds a learned_optimizer group."""
    assert CONFIG_DIR.is_relative_to(Path(fewshot.__file__).parent) and (CONFIG_DIR / "learn_to_learn.yaml").is_file()
    assert not (PROJECT_ROOT / "conf" / "learned_optimizer").exists()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["fewshot.learned_optimizer"]
    package = CONFIG_DIR.parent
    unlisted = [
        str(f.relative_to(package))
        for f in CONFIG_DIR.rglob("*")
        if f.is_file() and not any(f.relative_to(package).match(pattern) for pattern in patterns)
    ]
    assert not unlisted, f"not in [tool.setuptools.package-data] of pyproject.toml: {unlisted}"


@pytest.mark.parametrize("problem", options("problem"))
def test_every_problem_meta_trains_and_compares_and_writes_its_report(problem, tmp_path: Path):
    results = tiny_run(tmp_path, f"problem={problem}")
    assert results["problem"] == problem
    names = [row["optimizer"] for row in results["final_loss"]]
    assert names == ["LSTM", "SGD", "Momentum", "NAG", "RMSprop", "Adam"]
    assert all(row["n_draws"] == 4 and row["steps"] == 4 for row in results["final_loss"])
    assert all(row["lr"] in (0.01, 0.1) for row in results["final_loss"][1:])
    for name in ("results.json", "final_loss.md", "final_loss.json", "curves.csv", "loss_curves.png", NET_FILE):
        assert (tmp_path / name).is_file(), name
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "meta_train/loss" in metrics and "test/final_loss/LSTM" in metrics
    assert "| LSTM | learned |" in (tmp_path / "final_loss.md").read_text()
    assert len(json.loads((tmp_path / "final_loss.json").read_text())) == 6


def test_variant_is_evaluated_with_a_loaded_mlp_trained_network(tmp_path: Path):
    tiny_run(tmp_path / "mlp", "problem=mlp")
    results = tiny_run(
        tmp_path / "relu",
        "problem=mlp_relu",
        f"ckpt_path={tmp_path / 'mlp' / NET_FILE}",
        "meta_train.iterations=0",
        "baselines=none",
    )
    assert results["optimizer_net_trained"]["problem"] == "mlp"
    assert results["meta_training"]["iterations"] == 0
    assert [row["optimizer"] for row in results["final_loss"]] == ["LSTM"]
    assert not (tmp_path / "relu" / NET_FILE).exists()


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_runs(experiment, tmp_path: Path):
    cfg = compose_learned_optimizer([f"experiment={experiment}"], tmp_path)
    assert cfg.problem.name == experiment and cfg.meta_train.unroll == cfg.problem.steps == 100
    results = tiny_run(tmp_path, f"experiment={experiment}", "baselines=none")
    assert results["meta_training"]["iterations"] == 2


def test_default_config_is_the_papers_setting(tmp_path: Path):
    cfg = compose_learned_optimizer([], tmp_path)
    assert cfg.problem.dim == 10 and cfg.problem.steps == 100
    assert (cfg.meta_train.unroll, cfg.meta_train.truncation) == (100, 20)
    assert (cfg.optimizer_net.hidden_size, cfg.optimizer_net.layers, cfg.optimizer_net.output_scale) == (20, 2, 0.1)
    assert cfg.evaluation.n_draws == 100
    mlp = compose_learned_optimizer(["problem=mlp_steps200"], tmp_path).problem
    assert (mlp.steps, list(mlp.hidden), mlp.activation, mlp.batch_size) == (200, [20], "sigmoid", 128)
