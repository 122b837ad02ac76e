"""Bad settings fail early with a message that names the setting and the fix."""

from pathlib import Path

import pytest

from fewshot.learned_optimizer.errors import ConfigError
from fewshot.learned_optimizer.run import run
from tests.learned_optimizer.conftest import TINY, TINY_IMAGES, compose_learned_optimizer

CASES = [
    (
        ["meta_train.unroll=20", "meta_train.truncation=30"],
        r"meta_train.truncation=30 is longer than meta_train.unroll=20.*set meta_train.truncation to at most 20",
    ),
    (["problem.steps=0"], r"problem.steps must be positive, got 0: set problem.steps to a value above 0"),
    (["meta_train.truncation=-2"], r"meta_train.truncation must be positive, got -2"),
    (["meta_train.iterations=-1"], r"meta_train.iterations must be 0 or more.*meta_train.iterations=0"),
    (["evaluation.n_draws=0"], r"evaluation.n_draws must be positive, got 0"),
    (["meta_train.draws_per_iteration=0"], r"meta_train.draws_per_iteration must be positive"),
    (["optimizer_net.layers=0"], r"optimizer_net.layers must be positive, got 0.*the paper uses 2"),
    (["baselines.lr_grid=[]"], r"baselines.lr_grid is empty: list the learning rates"),
    (["baselines.lr_grid=[0.1,-1]"], r"every entry of baselines.lr_grid must be positive, got -1"),
    (
        ["problem=mlp", "problem.activation=swish", *TINY_IMAGES],
        r"problem.activation='swish' is unknown: choose one of",
    ),
    (["problem=mlp", "problem.hidden=[20,0]", *TINY_IMAGES], r"every entry of problem.hidden must be positive, got 0"),
    (["ckpt_path=/nonexistent/optimizer_net.pt"], r"ckpt_path='/nonexistent/optimizer_net.pt' does not exist"),
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[c[1].split(" ")[0] for c in CASES])
def test_bad_setting_raises_config_error_naming_it(overrides, message, tmp_path: Path):
    cfg = compose_learned_optimizer([*TINY, "logger=none", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_meta_training_a_rule_without_parameters_raises_config_error(tmp_path: Path):
    cfg = compose_learned_optimizer([*TINY, "logger=none"], tmp_path)
    cfg.optimizer_net = {"_target_": "fewshot.learned_optimizer.baselines.SGD", "lr": 0.1}
    with pytest.raises(ConfigError, match="no trainable parameters.*meta_train.iterations=0"):
        run(cfg)
