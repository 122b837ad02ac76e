"""Matching Networks: attention over the support, full-context embeddings, batching, learning."""

import json
import math

import pytest
import torch
from torch import nn

from fewshot.data.episode import Episode
from fewshot.methods.matching import (
    AttentionLSTM,
    MatchingNetwork,
    canonical_order,
    class_log_probabilities,
    cosine_similarities,
)
from fewshot.models.conv4 import Conv4
from fewshot.training import train
from tests.conftest import compose_config
from tests.helpers import assert_batched_equals_per_episode
from tests.methods.test_protonet_learning import SHORT_RUN, pixel_nn_on_test_episodes


class Identity(nn.Module):
    """Flattens the images: the embedding of a ``[C, 1, 1]`` image is its C values."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.flatten(1)


def vector_episode(support, support_labels, query, query_labels, n_way) -> Episode:
    """A one-episode batch whose images are the given vectors as ``[D, 1, 1]`` images."""
    s, q = torch.tensor(support), torch.tensor(query)
    return Episode(
        s.view(1, len(s), -1, 1, 1),
        torch.tensor([support_labels]),
        q.view(1, len(q), -1, 1, 1),
        torch.tensor([query_labels]),
        n_way,
        torch.tensor([0]),
    )


def conv_episode(batch: int = 1, n_way: int = 3, n_shot: int = 2, n_query: int = 2, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(batch, n_way * n_shot, 1, 16, 16, generator=g),
        torch.arange(n_way).repeat_interleave(n_shot).expand(batch, -1),
        torch.rand(batch, n_way * n_query, 1, 16, 16, generator=g),
        torch.arange(n_way).repeat_interleave(n_query).expand(batch, -1),
        n_way,
        torch.arange(batch),
    )


def conv_matching_net(**kwargs) -> MatchingNetwork:
    torch.manual_seed(0)
    return MatchingNetwork(Conv4(1, 8, 16), optimizer=torch.optim.Adam, **kwargs).eval()


def permuted(episode: Episode, order: torch.Tensor) -> Episode:
    return Episode(
        episode.support_images[:, order],
        episode.support_labels[:, order],
        episode.query_images,
        episode.query_labels,
        episode.n_way,
        episode.index,
    )


def test_class_probabilities_sum_to_one_over_classes():
    scores = torch.randn(2, 7, 6) * 5
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    probabilities = class_log_probabilities(scores, labels, 3).exp()
    assert probabilities.shape == (2, 7, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 7), atol=1e-6)
    logits = conv_matching_net(fce=True)(conv_episode(batch=2))
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 6), atol=1e-5)


def test_class_probability_is_the_attention_mass_on_the_class():
    scores = torch.tensor([[[1.0, 2.0, 3.0]]])
    attention = scores.softmax(-1)[0, 0]
    log_p = class_log_probabilities(scores, torch.tensor([[1, 0, 1]]), 2)[0, 0]
    assert log_p.exp().tolist() == pytest.approx([attention[1].item(), (attention[0] + attention[2]).item()])


def test_identity_embedding_predicts_the_label_of_the_most_cosine_similar_support():
    episode = vector_episode(
        support=[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]],
        support_labels=[0, 1, 1],
        query=[[1.0, 0.2], [0.1, 5.0], [-1.0, -0.5]],
        query_labels=[0, 1, 1],
        n_way=2,
    )
    method = MatchingNetwork(Identity(2), optimizer=torch.optim.Adam)
    log_p = method(episode)
    assert log_p.shape == (1, 3, 2)
    assert log_p.argmax(-1).tolist() == [[0, 1, 1]]
    # golden value for the first query: cosines 1/sqrt(1.04), 0.2/sqrt(1.04), -1/sqrt(1.04)
    c = [1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04), -1 / math.sqrt(1.04)]
    z = sum(math.exp(v) for v in c)
    assert log_p[0, 0].exp().tolist() == pytest.approx([math.exp(c[0]) / z, (math.exp(c[1]) + math.exp(c[2])) / z])
    assert torch.allclose(
        cosine_similarities(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0]]])), torch.tensor(0.6)
    )


def test_attention_lstm_one_step_follows_the_papers_equations():
    torch.manual_seed(0)
    lstm = AttentionLSTM(dim=4, steps=1)
    queries, support = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    # h_0 = c_0 = 0, so the first read r_0 is the uniform average of g(S)
    read = support.mean(1, keepdim=True).expand(1, 2, 4)
    gates = lstm.input_gates(queries) + lstm.recurrent_gates(torch.cat([torch.zeros_like(queries), read], -1))
    i, f, g, o = gates.chunk(4, -1)
    expected = o.sigmoid() * (i.sigmoid() * g.tanh()).tanh() + queries
    assert torch.allclose(lstm(queries, support), expected, atol=1e-6)


def test_canonical_order_sorts_by_label_and_ignores_the_given_order():
    episode = conv_episode(n_way=3, n_shot=3)
    order = canonical_order(episode.support_images, episode.support_labels)
    assert episode.support_labels.gather(1, order).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]]
    shuffle = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    again = canonical_order(episode.support_images[:, shuffle], episode.support_labels[:, shuffle])
    assert torch.equal(shuffle[again], order)


def test_fce_permuting_the_support_permutes_its_embeddings_and_keeps_the_predictions():
    method = conv_matching_net(fce=True)
    episode = conv_episode(n_way=3, n_shot=2)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    support, queries = method.embed(episode)
    support_p, queries_p = method.embed(permuted(episode, shuffle))
    assert torch.allclose(support_p, support[:, shuffle], atol=1e-5)
    assert torch.allclose(queries_p, queries, atol=1e-5)
    assert torch.allclose(method(permuted(episode, shuffle)), method(episode), atol=1e-5)


def test_fce_in_episode_order_depends_on_the_order():
    method = conv_matching_net(fce=True, support_order="episode")
    episode = conv_episode(n_way=3, n_shot=2)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    support, _ = method.embed(episode)
    support_p, _ = method.embed(permuted(episode, shuffle))
    assert not torch.allclose(support_p, support[:, shuffle], atol=1e-4)


@pytest.mark.parametrize("fce", [False, True])
def test_support_embeddings_depend_on_the_other_support_items_only_with_fce(fce):
    method = conv_matching_net(fce=fce)
    episode = conv_episode(n_way=3, n_shot=2)
    changed_images = episode.support_images.clone()
    changed_images[:, 0] = torch.rand_like(changed_images[:, 0])
    changed = episode.with_images(changed_images, episode.query_images)
    before, _ = method.embed(episode)
    after, _ = method.embed(changed)
    others_equal = torch.allclose(after[:, 1:], before[:, 1:], atol=1e-6)
    assert others_equal != fce


@pytest.mark.parametrize("fce", [False, True])
def test_batched_forward_equals_per_episode_forward_in_eval_mode(fce):
    method = conv_matching_net(fce=fce)
    batch = conv_episode(batch=3, n_way=5, n_shot=2, n_query=3)
    assert method(batch).shape == (3, 15, 5)
    assert_batched_equals_per_episode(method, batch)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="support_order must be"):
        MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, support_order="random")
    with pytest.raises(ValueError, match="out_features"):
        MatchingNetwork(nn.Flatten(), optimizer=torch.optim.Adam, fce=True)
    with pytest.raises(ValueError, match="fce_steps"):
        MatchingNetwork(Identity(2), optimizer=torch.optim.Adam, fce=True, fce_steps=0)


@pytest.mark.parametrize(("model", "name"), [("matchingnet", "MatchingNet"), ("matchingnet_fce", "MatchingNet-FCE")])
def test_fit_and_test_through_train(tiny_config, tmp_path, model, name):
    results = train(tiny_config(f"model={model}"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == name and results["test"]["episodes"] == 6
    assert 0.0 <= results["test"]["acc"] <= 1.0


def test_fce_config_sets_fce_and_its_learning_rate(tmp_path):
    cfg = compose_config(["model=matchingnet_fce"], tmp_path)
    assert cfg.model.fce is True and cfg.model.optimizer.lr == 1e-4
    assert cfg.model.backbone == compose_config(["model=matchingnet"], tmp_path).model.backbone


def test_matching_net_learns_on_embedded_default(tmp_path):
    cfg = compose_config(
        [
            *SHORT_RUN,
            "model=matchingnet",
            "data=embedded",
            "data.train_episodes=300",
            "data.test_episodes=200",
            "data.source.train_classes=200",
            "data.source.val_classes=20",
            "data.source.test_classes=100",
        ],
        tmp_path,
    )
    pixel_nn = pixel_nn_on_test_episodes(cfg, 200)
    results = train(cfg)
    acc = results["test"]["acc"]
    print(f"embedded 5-way 1-shot: MatchingNet {acc:.3f}, raw-pixel NN {pixel_nn:.3f}")
    # measured: 0.696 vs raw-pixel NN 0.443 (chance 0.2)
    assert acc > 0.60
    assert acc > pixel_nn + 0.15
