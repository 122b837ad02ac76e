"""ProtoNet learns: a short CPU training clearly beats chance and raw-pixel nearest neighbour."""

import pytest
from hydra.utils import instantiate

from fewshot.run.training import train
from tests.conftest import compose_config
from tests.helpers import requires_omniglot
from tests.pixel_nn import pixel_nn_accuracy

SHORT_RUN = ["trainer=cpu", "logger=none", "callbacks=none", "trainer.max_epochs=1", "data.val_episodes=10"]


def pixel_nn_on_test_episodes(cfg, n_episodes: int) -> float:
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return pixel_nn_accuracy(datamodule.samplers["test"], n_episodes).mean().item()


EMBEDDED_LEARNING = [
    "data=embedded",
    "data.train_episodes=300",
    "data.test_episodes=200",
    "data.source.train_classes=200",
    "data.source.val_classes=20",
    "data.source.test_classes=100",
]


def learned_and_pixel_nn_accuracy(model: str, tmp_path) -> tuple[float, float]:
    """Test accuracy of ``model`` after a short training on the embedded default (5-way 1-shot, 300
    episodes), and raw-pixel nearest neighbour's on the same 200 test episodes; both printed."""
    cfg = compose_config([*SHORT_RUN, f"model={model}", *EMBEDDED_LEARNING], tmp_path)
    pixel_nn = pixel_nn_on_test_episodes(cfg, 200)
    acc = train(cfg)["test"]["acc"]
    print(f"embedded 5-way 1-shot: {model} {acc:.3f}, raw-pixel NN {pixel_nn:.3f}")
    return acc, pixel_nn


def test_protonet_learns_on_embedded_default(tmp_path):
    acc, pixel_nn = learned_and_pixel_nn_accuracy("protonet", tmp_path)
    assert acc > 0.70
    assert acc > pixel_nn + 0.15


@requires_omniglot
@pytest.mark.omniglot
def test_protonet_learns_on_real_omniglot_alphabet_split(tmp_path):
    cfg = compose_config([*SHORT_RUN, "data=omniglot", "data.train_episodes=400", "data.test_episodes=200"], tmp_path)
    pixel_nn = pixel_nn_on_test_episodes(cfg, 200)
    results = train(cfg)
    acc = results["test"]["acc"]
    print(f"omniglot 5-way 1-shot: ProtoNet {acc:.3f}, raw-pixel NN {pixel_nn:.3f}")
    assert acc > 0.75
    assert acc > pixel_nn + 0.15
