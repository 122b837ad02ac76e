"""Every preset's Conv-4 options (initialisation, batch-norm form, down-sampling), each with its source.

A preset whose source is an official code builds that code's network: cbfinn/maml (Glorot weights,
batch norm without gamma, eps 1e-3; on Omniglot stride-2 convolutions, the map's mean and an N(0, 1)
output layer), openai/supervised-reptile (Glorot weights, eps 1e-3; stride-2 convolutions on Omniglot,
'same' max-pooling on Mini-ImageNet), twitter/meta-learning-lstm (torch7's batch-norm gamma ~ U(0, 1)).
Every other preset keeps PyTorch's defaults.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewshot.methods.meta_lstm.metalearner import MetaLearner
from fewshot.models.conv4 import Conv4
from tests.conftest import PROJECT_ROOT, compose_config

CONF = PROJECT_ROOT / "conf" / "experiment"
PRESETS = sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.glob("*/*.yaml"))

FINN_WEIGHTS = "cbfinn/maml maml.py construct_conv_weights (xavier_initializer_conv2d / xavier_initializer, tf.zeros)"
FINN_HEAD = "cbfinn/maml maml.py construct_conv_weights, non-Mini-ImageNet branch (w5 = tf.random_normal)"
FINN_BN = "cbfinn/maml utils.py normalize (tf.contrib.layers.batch_norm: scale=False, epsilon=0.001)"
NICHOL_MODEL = "openai/supervised-reptile models.py"
NICHOL_WEIGHTS = NICHOL_MODEL + " (tf.layers.conv2d / dense: default glorot_uniform kernels, zero biases)"
NICHOL_BN = NICHOL_MODEL + " (tf.layers.batch_normalization: epsilon=1e-3, scale=True)"
NICHOL_POOL = NICHOL_MODEL + " MiniImageNetModel (max_pooling2d(out, 2, 2, padding='same'))"
NICHOL_STRIDE = NICHOL_MODEL + " OmniglotModel (conv2d(out, 64, 3, strides=2, padding='same'), flattened)"
FINN_STRIDE = "cbfinn/maml utils.py conv_block (main.py --max_pool=False: tf.nn.conv2d stride 2, 'SAME')"
FINN_MEAN = "cbfinn/maml maml.py forward_conv, non-Mini-ImageNet branch (tf.reduce_mean(hidden4, [1, 2]))"
FINN_MAXPOOL = "cbfinn/maml main.py Mini-ImageNet usage (--max_pool=True), utils.py (tf.nn.max_pool 'VALID')"
TORCH7_BN = "torch7 nn BatchNormalization:reset (weight:uniform(), bias:zero())"
TORCH7_OK = "torch7 nn SpatialConvolution / Linear:reset U(+-1/sqrt(fan_in)) = PyTorch's default"
RAVI_BN_EPS = "twitter/meta-learning-lstm SpatialBatchNormalization(n, 1e-3)"
DEFAULT = "PyTorch defaults (conf/backbone/conv4.yaml)"

Pins = dict[str, tuple[Any, str]]
CONV4 = "fewshot.models.conv4.Conv4"
# an option a config leaves out takes Conv4's default (the Siamese twin's config names no option)
CONV4_DEFAULTS = {name: p.default for name, p in inspect.signature(Conv4).parameters.items()}


def backbone_pins(key: str, **values: tuple[Any, str]) -> Pins:
    """Pins of ``model.<key>.<option>``; options not given keep the Conv-4 defaults."""
    pins = {
        "init": ("torch", DEFAULT),
        "head_init": (None, DEFAULT),
        "bn_scale": (True, DEFAULT),
        "pool_padding": ("valid", DEFAULT),
        "downsample": ("maxpool", DEFAULT),
        "readout": ("flatten", DEFAULT),
    }
    pins.update(values)
    return {f"model.{key}.{option}": value for option, value in pins.items()}


def maml(dataset: str) -> Pins:
    if dataset == "omniglot":
        network = {
            "head_init": ("normal", FINN_HEAD),
            "downsample": ("stride", FINN_STRIDE),
            "readout": ("mean", FINN_MEAN),
        }
    else:
        network = {"head_init": (None, FINN_WEIGHTS + " (w5: fc_initializer)"), "downsample": ("maxpool", FINN_MAXPOOL)}
    return backbone_pins(
        "learner", init=("xavier", FINN_WEIGHTS), bn_scale=(False, FINN_BN), bn_eps=(0.001, FINN_BN), **network
    )


def reptile(dataset: str) -> Pins:
    if dataset == "miniimagenet":
        network = {"pool_padding": ("same", NICHOL_POOL), "downsample": ("maxpool", NICHOL_POOL)}
    else:
        network = {"downsample": ("stride", NICHOL_STRIDE), "readout": ("flatten", NICHOL_STRIDE)}
    return backbone_pins(
        "learner", init=("xavier", NICHOL_WEIGHTS), bn_scale=(True, NICHOL_BN), bn_eps=(0.001, NICHOL_BN), **network
    )


def twitter(key: str) -> Pins:
    return backbone_pins(key, init=("torch7", f"{TORCH7_BN}; {TORCH7_OK}"), bn_eps=(0.001, RAVI_BN_EPS))


def expected(preset: str) -> Pins:
    """The Conv-4 pins of one preset, by its method and dataset."""
    dataset, name = preset.split("/")
    method = name.rsplit("_", 1)[0]
    if method in ("maml", "fomaml"):
        return maml(dataset)
    if method == "reptile":
        return reptile(dataset)
    if method == "meta_lstm":
        return twitter("learner")
    if method in ("baseline_nn", "baseline_finetune"):
        return twitter("backbone")
    if method in ("matchingnet", "matchingnet_fce") and dataset == "miniimagenet":
        return twitter("backbone")
    return backbone_pins("backbone")  # ProtoNet, Siamese, Omniglot Matching Networks (Vinyals et al.)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_its_sources_backbone(preset: str, tmp_path: Path):
    cfg = compose_config([f"experiment={preset}"], tmp_path)
    assert OmegaConf.select(cfg, f"model.{'learner' if 'learner' in cfg.model else 'backbone'}._target_") == CONV4
    found = {key: OmegaConf.select(cfg, key, default=CONV4_DEFAULTS[key.rsplit(".", 1)[1]]) for key in expected(preset)}
    wrong = {
        key: (found[key], value, source) for key, (value, source) in expected(preset).items() if found[key] != value
    }
    assert not wrong, f"{preset}: (found, expected, source) {wrong}"


@pytest.mark.parametrize("model", ["maml", "fomaml", "metasgd"])
def test_every_maml_model_config_builds_cbfinns_learner(model: str, tmp_path: Path):
    cfg = compose_config([f"model={model}"], tmp_path)
    for key, (value, source) in maml("miniimagenet").items():
        assert OmegaConf.select(cfg, key) == value, (key, source)


def test_omniglot_maml_learner_has_no_bn_gamma_and_a_standard_normal_head(tmp_path: Path):
    torch.manual_seed(0)
    learner = instantiate(compose_config(["experiment=omniglot/maml_20w1s"], tmp_path).model.learner)
    names = [name for name, _ in learner.named_parameters()]
    assert [n for n in names if n.startswith("features.0.")] == [
        "features.0.0.weight",
        "features.0.0.bias",
        "features.0.1.bias",
    ]
    assert learner.features[0][1].eps == 0.001
    x = torch.rand(2, 1, 28, 28)
    assert [learner.features[: i + 1](x).shape[-1] for i in range(4)] == [14, 7, 4, 2]  # strided, no pooling
    assert learner.embed(x).shape == (2, 64)  # the mean of the 2 x 2 x 64 map
    assert learner.head.weight.shape == (20, 64)
    assert learner.head.weight.std().item() == pytest.approx(1.0, abs=0.1)
    conv = learner.features[1][0].weight
    assert conv.abs().max() <= (6 / (2 * 64 * 9)) ** 0.5


@pytest.mark.parametrize("preset", ["omniglot/reptile_5w1s", "omniglot/reptile_20w5s"])
def test_omniglot_reptile_learner_is_strided_with_256_features(preset: str, tmp_path: Path):
    learner = instantiate(compose_config([f"experiment={preset}"], tmp_path).model.learner)
    x = torch.rand(2, 1, 28, 28)
    assert [learner.features[: i + 1](x).shape[-1] for i in range(4)] == [14, 7, 4, 2]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in learner.modules())
    assert learner.head.in_features == 256  # 2 x 2 x 64, flattened
    assert learner(x).shape == (2, learner.head.out_features)


def test_mini_imagenet_maml_learner_max_pools_to_5x5_and_flattens(tmp_path: Path):
    learner = instantiate(compose_config(["experiment=miniimagenet/maml_5w1s"], tmp_path).model.learner)
    assert learner.head.in_features == 800  # 5 x 5 x 32 (maml.py w5: dim_hidden*5*5)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in learner.modules()) == 4


def test_mini_imagenet_reptile_learner_has_1152_features(tmp_path: Path):
    learner = instantiate(compose_config(["experiment=miniimagenet/reptile_5w5s"], tmp_path).model.learner)
    assert learner.head.in_features == 1152  # 6 x 6 x 32
    assert learner(torch.rand(2, 3, 84, 84)).shape == (2, 5)


def test_meta_lstm_c0_starts_from_torch7_gammas(tmp_path: Path):
    """The learned initialisation c0 is taken from the learner after its torch7 initialisation."""
    torch.manual_seed(0)
    learner = instantiate(compose_config(["experiment=miniimagenet/meta_lstm_5w1s"], tmp_path).model.learner)
    meta = MetaLearner(learner, n_steps=1)
    start = meta.layout.unflatten(meta.c0.detach())
    gammas = torch.cat([start[f"features.{i}.1.weight"] for i in range(4)])
    assert gammas.numel() == 4 * 32
    assert gammas.min() >= 0 and gammas.max() < 1
    assert gammas.mean().item() == pytest.approx(0.5, abs=0.1)
    assert torch.equal(gammas, torch.cat([learner.features[i][1].weight.detach() for i in range(4)]))
