"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory, embed_episode


def compute_prototypes(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Class means of support embeddings.

    Args:
        features: ``[B, N*K, D]`` support embeddings.
        labels: ``[B, N*K]`` labels in ``0..N-1``.
        n_way: N.

    Returns:
        ``[B, N, D]`` prototypes.
    """
    one_hot = torch.nn.functional.one_hot(labels, n_way).to(features.dtype)  # [B, NK, N]
    sums = one_hot.transpose(1, 2) @ features  # [B, N, D]
    return sums / one_hot.sum(1).unsqueeze(-1)


def squared_euclidean(queries: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, M, D]`` x ``[B, N, D]`` -> ``[B, M, N]`` squared distances."""
    return (
        queries.pow(2).sum(-1, keepdim=True)
        - 2 * queries @ prototypes.transpose(1, 2)
        + prototypes.pow(2).sum(-1).unsqueeze(1)
    ).clamp_min(0)


class ProtoNet(EpisodicMethod):
    """Prototypical Networks: a query's logits are the negative squared Euclidean distances
    (or cosine similarities) between its embedding and the class-mean support embeddings.

    Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    Batch norm uses batch statistics of the episode's support and query images together in
    training, and running statistics (accumulated over meta-training) in evaluation, as in
    the paper's code.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        distance: str = "squared_euclidean",
    ) -> None:
        super().__init__(optimizer, scheduler)
        if distance not in ("squared_euclidean", "cosine"):
            raise ValueError(f"distance must be 'squared_euclidean' or 'cosine', got {distance!r}.")
        self.backbone = backbone
        self.distance = distance

    def forward(self, episode: Episode) -> Tensor:
        """Query logits ``[B, N*Q, N]``."""
        support, query = embed_episode(self.backbone, episode)
        prototypes = compute_prototypes(support, episode.support_labels, episode.n_way)
        if self.distance == "cosine":
            return nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(prototypes, dim=-1).transpose(1, 2)
        return -squared_euclidean(query, prototypes)
