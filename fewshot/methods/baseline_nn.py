"""Baseline-nearest-neighbour of Ravi & Larochelle (ICLR 2017, Table 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import OptimizerFactory, SchedulerFactory, embed_episode
from fewshot.methods.choices import check_choice
from fewshot.methods.pretrained import PretrainedClassifier

METRICS = ("cosine", "euclidean")


def nearest_neighbour_logits(
    query: Tensor, support: Tensor, support_labels: Tensor, n_way: int, metric: str = "cosine"
) -> Tensor:
    """Per class, the similarity of each query to its nearest support example of that class,
    so that the argmax over classes is the label of the query's nearest neighbour.

    Args:
        query: ``[B, M, D]`` query embeddings.
        support: ``[B, S, D]`` support embeddings.
        support_labels: ``[B, S]`` labels in ``0..N-1``.
        n_way: N.
        metric: ``"cosine"`` (cosine similarity) or ``"euclidean"`` (negative distance).

    Returns:
        ``[B, M, N]`` logits.
    """
    if metric == "cosine":
        similarity = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(support, dim=-1).transpose(1, 2)
    elif metric == "euclidean":
        similarity = -torch.cdist(query, support)
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    in_class = nn.functional.one_hot(support_labels, n_way).bool()  # [B, S, N]
    per_class = similarity.unsqueeze(-1).masked_fill(~in_class.unsqueeze(1), float("-inf"))  # [B, M, S, N]
    return per_class.amax(2)


class BaselineNearestNeighbour(PretrainedClassifier):
    """Baseline-nearest-neighbour: the pre-trained classifier's embedding, with each query
    labelled as its nearest support example.

    Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017, Table 1. As
    in the official code (``model/baselines/conv-nearest-neighbor.lua``, ``nearest-neighbor.lua``)
    the embedding is the flattened output of the last conv block (the layer below the
    classification head), computed in evaluation mode (batch-norm running statistics), and the
    neighbour is the support example of highest cosine similarity (``K = 1``).

    Args:
        backbone: embedding network with an ``out_features`` attribute.
        optimizer: optimiser partial for the pre-training.
        n_train_classes: number of meta-training classes (filled in from the data).
        scheduler: optional scheduler partial.
        metric: ``"cosine"`` (official) or ``"euclidean"``.
    """

    display_name = "Baseline-NN"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        n_train_classes: int | None = None,
        scheduler: SchedulerFactory | None = None,
        metric: str = "cosine",
    ) -> None:
        check_choice("metric", metric, METRICS)
        super().__init__(backbone, optimizer, n_train_classes, scheduler)
        self.metric = metric

    def forward(self, episode: Episode) -> Tensor:
        """Query logits ``[B, N*Q, N]``: per class, the similarity to the nearest support."""
        support, query = embed_episode(self.backbone, episode)
        return nearest_neighbour_logits(query, support, episode.support_labels, episode.n_way, self.metric)


__all__ = ["BaselineNearestNeighbour", "nearest_neighbour_logits"]
