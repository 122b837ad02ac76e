"""Siamese networks for one-shot recognition (Koch, Zemel & Salakhutdinov, 2015).

``model=siamese`` (Conv-4 twin) and ``model=siamese_koch`` (Koch et al.'s twin, ``fewshot.models.koch``)
both build :class:`SiameseNetwork`; their tests are ``tests/methods/test_siamese.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory, embed_episode
from fewshot.methods.choices import check_choice

SHOT_REDUCTIONS = ("max", "mean")


def pair_targets(query_labels: Tensor, support_labels: Tensor) -> Tensor:
    """Same/different targets of every (query, support) pair: ``[B, M]`` x ``[B, S]`` -> ``[B, M, S]``
    floats, 1 where the two labels are equal."""
    return (query_labels.unsqueeze(2) == support_labels.unsqueeze(1)).float()


def pair_loss(logits: Tensor, targets: Tensor, balance: bool) -> Tensor:
    """Binary cross-entropy of same/different pair logits.

    Args:
        logits: ``[...]`` pair logits (log-odds of "same").
        targets: ``[...]`` 1 for same-class pairs, 0 otherwise.
        balance: weight the pairs so that positives and negatives each make up half of the
            loss (an N-way episode has N-1 negatives per positive).

    Returns:
        Scalar loss.
    """
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if not balance:
        return losses.mean()
    positive = targets.bool()
    return 0.5 * losses[positive].mean() + 0.5 * losses[~positive].mean()


def class_scores(pair_logits: Tensor, support_labels: Tensor, n_way: int, reduce: str) -> Tensor:
    """log p(same) of each query with each class, from its pairs with the class's shots.

    Args:
        pair_logits: ``[B, M, S]`` logits of "same" for M queries and S support items.
        support_labels: ``[B, S]`` labels in ``0..N-1``.
        n_way: N.
        reduce: ``"max"`` (the most similar shot, Koch's one-shot rule) or ``"mean"`` (the mean
            p(same) over the shots).

    Returns:
        ``[B, M, N]`` scores; the predicted class is their argmax.
    """
    in_class = F.one_hot(support_labels, n_way).bool().unsqueeze(1)  # [B, 1, S, N]
    log_same = F.logsigmoid(pair_logits).unsqueeze(-1)  # [B, M, S, 1]
    masked = log_same.masked_fill(~in_class, float("-inf"))  # [B, M, S, N]
    if reduce == "max":
        return masked.amax(2)
    shots = in_class.sum(2)  # [B, 1, N]
    return masked.logsumexp(2) - shots.log()


class SiameseNetwork(EpisodicMethod):
    """Siamese networks: twin embeddings f, p(same | x1, x2) = sigmoid(sum_j alpha_j |f(x1) - f(x2)|_j + b);
    a query takes the class of its most similar support image.

    Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image Recognition",
    ICML Deep Learning Workshop 2015. Training pairs come from meta-training episodes: each
    (query, support) pair of an episode is a pair, "same" when the labels agree, scored with
    binary cross-entropy (``balance_pairs`` weights positives and negatives equally). For K > 1
    shots ``shot_reduce`` turns a class's shots into one score: the max (default) or the mean
    of p(same). ``forward`` returns those class scores, log p(same) ``[B, N*Q, N]``.

    Deviations from the paper: the default twin is our Conv-4 (``conf/model/siamese.yaml``);
    Koch's own twin is ``fewshot.models.koch.KochNet`` (``model=siamese_koch`` with
    ``data.image_size=105``). The L1-distance layer has a bias. Pairs are drawn from episodes,
    with Adam instead of the paper's SGD with momentum, layer-wise rates and L2 penalties, and
    without its affine distortions of the training pairs.

    Batch norm (Conv-4): the support and query images of a meta-batch go through the twin
    together, using their batch statistics in training and the running statistics in
    evaluation, as for ProtoNet.
    """

    display_name = "Siamese"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        balance_pairs: bool = True,
        shot_reduce: str = "max",
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_choice("shot_reduce", shot_reduce, SHOT_REDUCTIONS)
        dim = getattr(backbone, "out_features", None)
        if not isinstance(dim, int):
            raise ValueError(
                "The twin needs its embedding size as an integer `out_features` attribute (Conv4 and "
                f"KochNet have one); {type(backbone).__name__} has none."
            )
        self.backbone = backbone
        self.distance_weights = nn.Linear(dim, 1)
        self.balance_pairs = balance_pairs
        self.shot_reduce = shot_reduce

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """Logits of "same" for all pairs of two sets of embeddings: ``[B, M, D]`` x ``[B, S, D]`` -> ``[B, M, S]``."""
        distance = (first.unsqueeze(2) - second.unsqueeze(1)).abs()  # [B, M, S, D]
        return self.distance_weights(distance).squeeze(-1)

    def same_probability(self, first: Tensor, second: Tensor) -> Tensor:
        """p(same) of image pairs ``[P, C, H, W]`` x ``[P, C, H, W]`` -> ``[P]``."""
        features = self.backbone(torch.cat([first, second]))
        a, b = features.chunk(2)
        return self.distance_weights((a - b).abs()).squeeze(-1).sigmoid()

    def episode_pair_logits(self, episode: Episode) -> Tensor:
        """Logits of "same" of every (query, support) pair ``[B, N*Q, N*K]``."""
        support, queries = embed_episode(self.backbone, episode)
        return self.pair_logits(queries, support)

    def forward(self, episode: Episode) -> Tensor:
        """Query class scores ``[B, N*Q, N]`` (log p(same), reduced over each class's shots)."""
        logits = self.episode_pair_logits(episode)
        return class_scores(logits, episode.support_labels, episode.n_way, self.shot_reduce)

    def episode_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Balanced BCE over the episode's (query, support) pairs, and the class scores."""
        logits = self.episode_pair_logits(episode)
        targets = pair_targets(episode.query_labels, episode.support_labels)
        loss = pair_loss(logits, targets, self.balance_pairs)
        return loss, class_scores(logits, episode.support_labels, episode.n_way, self.shot_reduce)
