"""Meta-LSTM learns: a short CPU meta-training clearly beats chance, raw-pixel nearest
neighbour and the untrained meta-learner on the same test episodes."""

import pytest

from fewshot.run.training import train
from tests.conftest import compose_config
from tests.helpers import requires_omniglot
from tests.methods.test_protonet_learning import pixel_nn_on_test_episodes

# the thresholds below were measured with the gradient of the mean support loss; the official
# scale (model default) starts more slowly over the first meta-steps (tests/methods/meta_lstm's toy test
# covers its learning, docs/reproduce.md its Omniglot accuracy: the same after 2,000 episodes)
SHORT_RUN = [
    "trainer=cpu",
    "logger=none",
    "callbacks=none",
    "trainer.max_epochs=1",
    "data.val_episodes=10",
    "model=meta_lstm",
    "model.inner_steps=5",
    "model.learner.hidden=32",
    "data.train_episodes=200",
    "data.test_episodes=100",
    "model.grad_scale=mean",
]


def untrained_and_trained(overrides: list[str], tmp_path) -> tuple[float, float, float]:
    # no training epoch (train=false needs a checkpoint): the final weights are the initial ones
    untrained = train(compose_config([*SHORT_RUN, *overrides, "trainer.max_epochs=0"], tmp_path / "untrained"))
    cfg = compose_config([*SHORT_RUN, *overrides], tmp_path / "trained")
    trained = train(cfg)
    return untrained["test"]["acc"], trained["test"]["acc"], pixel_nn_on_test_episodes(cfg, 100)


def test_meta_lstm_learns_on_embedded_default(tmp_path):
    before, after, pixel_nn = untrained_and_trained(
        ["data.source.train_classes=200", "data.source.val_classes=20", "data.source.test_classes=100"], tmp_path
    )
    print(f"embedded 5-way 1-shot: untrained {before:.3f}, trained {after:.3f}, raw-pixel NN {pixel_nn:.3f}")
    # measured: untrained 0.415, trained 0.689, pixel NN 0.44
    assert after > before + 0.15
    assert after > pixel_nn + 0.12
    assert after > 0.55


@requires_omniglot
@pytest.mark.omniglot
def test_meta_lstm_learns_on_real_omniglot_alphabet_split(tmp_path):
    before, after, pixel_nn = untrained_and_trained(["data=omniglot"], tmp_path)
    print(f"omniglot 5-way 1-shot: untrained {before:.3f}, trained {after:.3f}, raw-pixel NN {pixel_nn:.3f}")
    # measured: untrained 0.448, trained 0.785
    assert after > before + 0.2
    assert after > pixel_nn + 0.15
    assert after > 0.65
