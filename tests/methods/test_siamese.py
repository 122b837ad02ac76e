"""Siamese networks: episode pairs, the twin distance, one-shot prediction, batching, learning."""

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from fewshot.data.episode import Episode
from fewshot.methods.siamese import SiameseNetwork, class_scores, pair_loss, pair_targets
from fewshot.models.conv4 import Conv4
from fewshot.models.koch import KochNet
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.helpers import assert_batched_equals_per_episode
from tests.methods.test_protonet_learning import learned_and_pixel_nn_accuracy


class Identity(nn.Module):
    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.flatten(1)


def l1_siamese(dim: int, **kwargs) -> SiameseNetwork:
    """Identity twins and p(same) = sigmoid(-|x1 - x2|_1): the nearest support in L1 wins."""
    method = SiameseNetwork(Identity(dim), optimizer=torch.optim.Adam, **kwargs)
    with torch.no_grad():
        method.distance_weights.weight.fill_(-1.0)
        method.distance_weights.bias.zero_()
    return method


def vector_episode(support, support_labels, query, query_labels, n_way) -> Episode:
    s, q = torch.tensor(support), torch.tensor(query)
    return Episode(
        s.view(1, len(s), -1, 1, 1),
        torch.tensor([support_labels]),
        q.view(1, len(q), -1, 1, 1),
        torch.tensor([query_labels]),
        n_way,
        torch.tensor([0]),
    )


def conv_episode(batch: int, n_way: int, n_shot: int, n_query: int, size: int = 16) -> Episode:
    g = torch.Generator().manual_seed(0)
    return Episode(
        torch.rand(batch, n_way * n_shot, 1, size, size, generator=g),
        torch.arange(n_way).repeat_interleave(n_shot).expand(batch, -1),
        torch.rand(batch, n_way * n_query, 1, size, size, generator=g),
        torch.arange(n_way).repeat_interleave(n_query).expand(batch, -1),
        n_way,
        torch.arange(batch),
    )


def test_episode_pairs_have_n_times_q_times_k_positives():
    episode = conv_episode(batch=2, n_way=5, n_shot=2, n_query=3)
    targets = pair_targets(episode.query_labels, episode.support_labels)
    assert targets.shape == (2, 15, 10)
    assert targets.sum((1, 2)).tolist() == [5 * 3 * 2] * 2
    # query j of class c is "same" exactly with the K shots of class c
    assert targets[0, 4].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]


def test_balanced_loss_gives_positives_and_negatives_equal_weight():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert pair_loss(logits, targets, balance=True).item() == pytest.approx(0.5 * bce[0] + 0.5 * bce[1:].mean())
    assert pair_loss(logits, targets, balance=False).item() == pytest.approx(bce.mean().item())


def test_distance_is_symmetric_in_its_twins():
    torch.manual_seed(0)
    method = SiameseNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam).eval()
    x1, x2 = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    assert torch.allclose(method.same_probability(x1, x2), method.same_probability(x2, x1), atol=1e-6)
    a, b = torch.randn(1, 3, 5), torch.randn(1, 4, 5)
    method = SiameseNetwork(Identity(5), optimizer=torch.optim.Adam)
    assert torch.allclose(method.pair_logits(a, b), method.pair_logits(b, a).transpose(1, 2))


def test_prediction_is_the_class_of_the_most_similar_support():
    episode = vector_episode(
        support=[[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]],
        support_labels=[0, 1, 2],
        query=[[9.0, 9.0], [1.0, 0.0], [1.0, 9.0]],
        query_labels=[1, 0, 2],
        n_way=3,
    )
    scores = l1_siamese(2)(episode)
    assert scores.shape == (1, 3, 3)
    assert scores.argmax(-1).tolist() == [[1, 0, 2]]
    # log p(same) of query [1, 0] with class 0 at L1 distance 1
    assert scores[0, 1, 0].item() == pytest.approx(math.log(1 / (1 + math.e)))


def test_shot_reduce_max_takes_the_nearest_shot_and_mean_the_average_probability():
    # query 0.5; class 0 shots at 0.5 and 100 (one perfect match), class 1 shots at 1.0 and 1.2
    episode = vector_episode([[0.5], [100.0], [1.0], [1.2]], [0, 0, 1, 1], [[0.5]], [0], n_way=2)
    assert l1_siamese(1, shot_reduce="max")(episode).argmax(-1).item() == 0
    mean_scores = l1_siamese(1, shot_reduce="mean")(episode)
    assert mean_scores.argmax(-1).item() == 1
    sig = torch.sigmoid
    expected = [
        (sig(torch.tensor(0.0)) + sig(torch.tensor(-99.5))) / 2,
        (sig(torch.tensor(-0.5)) + sig(torch.tensor(-0.7))) / 2,
    ]
    assert mean_scores[0, 0].exp().tolist() == pytest.approx([e.item() for e in expected], rel=1e-5)


def test_class_scores_handle_unsorted_support_labels():
    logits = torch.tensor([[[0.0, 3.0, -1.0, 1.0]]])
    scores = class_scores(logits, torch.tensor([[1, 0, 1, 0]]), 2, "max")
    assert scores[0, 0].exp().tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0)).item(), 0.5])


def test_episode_loss_scores_are_the_forward_scores():
    torch.manual_seed(0)
    method = SiameseNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam).eval()
    episode = conv_episode(batch=2, n_way=3, n_shot=2, n_query=2)
    loss, scores = method.episode_loss(episode)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.allclose(scores, method(episode))


def test_batched_forward_equals_per_episode_forward_in_eval_mode():
    torch.manual_seed(0)
    method = SiameseNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam).eval()
    batch = conv_episode(batch=3, n_way=5, n_shot=2, n_query=3)
    assert method(batch).shape == (3, 15, 5)
    assert_batched_equals_per_episode(method, batch)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="shot_reduce must be"):
        SiameseNetwork(Identity(2), optimizer=torch.optim.Adam, shot_reduce="min")
    with pytest.raises(ValueError, match="out_features"):
        SiameseNetwork(nn.Flatten(), optimizer=torch.optim.Adam)
    with pytest.raises(ValueError, match="at least 65x65"):
        KochNet(image_size=28)


def test_koch_net_embeds_105x105_images_into_4096_sigmoid_units():
    torch.manual_seed(0)
    net = KochNet(in_channels=1, image_size=105)
    assert net.fc.in_features == 256 * 6 * 6
    out = net(torch.rand(2, 1, 105, 105))
    assert out.shape == (2, 4096) and ((out >= 0) & (out <= 1)).all()
    method = SiameseNetwork(net, optimizer=torch.optim.Adam).eval()
    assert method(conv_episode(batch=1, n_way=2, n_shot=1, n_query=1, size=105)).shape == (1, 2, 2)


def test_siamese_koch_config_builds_koch_net(tmp_path):
    cfg = compose_config(["model=siamese_koch", "data.image_size=105"], tmp_path)
    method = instantiate(cfg.model)
    assert isinstance(method.backbone, KochNet) and method.display_name == "Siamese"
    assert cfg.model.balance_pairs == compose_config(["model=siamese"], tmp_path).model.balance_pairs


def test_the_omniglot_presets_take_kochs_twin_at_105x105_and_refuse_it_at_28x28(tmp_path):
    # the restoring key of the Omniglot Siamese row in docs/reproduce.md (Deviations)
    cfg = compose_config(["experiment=omniglot/siamese_5w1s", "model=siamese_koch", "data.image_size=105"], tmp_path)
    assert (cfg.data.source.image_size, cfg.data.source.rotations) == (105, [0, 90, 180, 270])
    method = instantiate(cfg.model)
    assert isinstance(method.backbone, KochNet) and method.backbone.fc.in_features == 256 * 6 * 6
    cfg = compose_config(["experiment=omniglot/siamese_5w1s", "model=siamese_koch"], tmp_path)
    with pytest.raises(Exception, match=r"KochNet needs images of at least 65x65 \(105x105 in the paper\), got 28"):
        instantiate(cfg.model)


def test_fit_and_test_through_train(tiny_config, tmp_path):
    results = train(tiny_config("model=siamese"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "Siamese" and results["test"]["episodes"] == 6
    assert 0.0 <= results["test"]["acc"] <= 1.0


def test_siamese_learns_on_embedded_default(tmp_path):
    acc, pixel_nn = learned_and_pixel_nn_accuracy("siamese", tmp_path)
    # measured: 0.714 vs raw-pixel NN 0.443 (chance 0.2)
    assert acc > 0.60
    assert acc > pixel_nn + 0.15
