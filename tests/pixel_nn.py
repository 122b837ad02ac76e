"""Raw-pixel nearest neighbour: the floor a learned method must clearly beat (the learning tests compare
with it)."""

from __future__ import annotations

import torch

from fewshot.data.sampler import EpisodeSampler


def pixel_nn_accuracy(sampler: EpisodeSampler, n_episodes: int) -> torch.Tensor:
    """Per-episode accuracy ``[n_episodes]`` of 1-nearest-neighbour (Euclidean on raw pixels
    scaled to [0, 1]) from each query to the support images."""
    accuracies = []
    for i in range(n_episodes):
        episode = sampler[i]
        support = episode.support_images.flatten(1).float() / 255
        query = episode.query_images.flatten(1).float() / 255
        nearest = torch.cdist(query, support).argmin(1)
        predicted = episode.support_labels[nearest]
        accuracies.append((predicted == episode.query_labels).float().mean())
    return torch.stack(accuracies)
