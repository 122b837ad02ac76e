"""Prototypical Networks: prototypes, distances and the episodic forward pass."""

import pytest
import torch

from fewshot.data.episode import Episode
from fewshot.methods.protonet import ProtoNet, compute_prototypes, squared_euclidean
from fewshot.models.conv4 import Conv4
from tests.helpers import assert_batched_equals_per_episode


def test_prototypes_are_class_means():
    features = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [0.0, 6.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    assert compute_prototypes(features, labels, 2).tolist() == [[[2.0, 1.0], [0.0, 5.0]]]


def test_squared_euclidean_matches_cdist():
    q, p = torch.randn(2, 7, 5), torch.randn(2, 3, 5)
    assert torch.allclose(squared_euclidean(q, p), torch.cdist(q, p) ** 2, atol=1e-4)


class Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_forward_classifies_queries_by_nearest_prototype():
    support = torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]]).view(1, 3, 2, 1, 1)
    query = torch.tensor([[9.0, 9.0], [1.0, 0.0], [1.0, 9.0]]).view(1, 3, 2, 1, 1)
    episode = Episode(support, torch.tensor([[0, 1, 2]]), query, torch.tensor([[1, 0, 2]]), 3, torch.tensor([0]))
    method = ProtoNet(Identity(), optimizer=torch.optim.Adam)
    logits = method(episode)
    assert logits.shape == (1, 3, 3)
    assert logits.argmax(-1).tolist() == [[1, 0, 2]]
    assert logits[0, 1, 0].item() == pytest.approx(-1.0)


def test_batched_forward_equals_per_episode_forward_in_eval_mode():
    torch.manual_seed(0)
    method = ProtoNet(Conv4(1, 8, 28), optimizer=torch.optim.Adam).eval()
    support, query = torch.rand(3, 10, 1, 28, 28), torch.rand(3, 15, 1, 28, 28)
    s_labels = torch.arange(5).repeat_interleave(2).expand(3, -1)
    q_labels = torch.arange(5).repeat_interleave(3).expand(3, -1)
    batch = Episode(support, s_labels, query, q_labels, 5, torch.arange(3))
    assert_batched_equals_per_episode(method, batch)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance must be"):
        ProtoNet(Identity(), optimizer=torch.optim.Adam, distance="manhattan")
