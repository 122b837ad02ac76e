"""Matching Networks, with optional full-context embeddings (Vinyals et al., NeurIPS 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory, embed_episode

SUPPORT_ORDERS = ("canonical", "episode")
# seed of the fixed random projection that gives every support image its sort key
CONTENT_KEY_SEED = 20160613


def cosine_similarities(queries: Tensor, support: Tensor) -> Tensor:
    """``[B, M, D]`` x ``[B, S, D]`` -> ``[B, M, S]`` cosine similarities."""
    return F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)


def class_log_probabilities(scores: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
    """log P(y = n | x) for P(y | x) = sum_i a(x, x_i) y_i with a = softmax of ``scores`` over the support.

    Computed as a log-sum-exp of the log-attention over each class's support items, so no
    probability is ever rounded to zero before the log.

    Args:
        scores: ``[B, M, S]`` similarities of M queries to the S support items.
        support_labels: ``[B, S]`` labels in ``0..N-1``.
        n_way: N.

    Returns:
        ``[B, M, N]`` log class probabilities (``exp`` sums to 1 over the classes).
    """
    log_attention = scores.log_softmax(-1)  # [B, M, S]
    in_class = F.one_hot(support_labels, n_way).bool()  # [B, S, N]
    masked = log_attention.unsqueeze(-1).masked_fill(~in_class.unsqueeze(1), float("-inf"))  # [B, M, S, N]
    return masked.logsumexp(2)


def content_keys(images: Tensor) -> Tensor:
    """A scalar sort key per image, a fixed random projection of its pixels: ``[B, S, C, H, W] -> [B, S]``.

    Equal for equal images and, with probability one, different for different ones.
    """
    generator = torch.Generator().manual_seed(CONTENT_KEY_SEED)
    direction = torch.randn(images[0, 0].numel(), generator=generator)
    return images.flatten(2).float() @ direction.to(images.device)


def canonical_order(images: Tensor, labels: Tensor) -> Tensor:
    """A support order that depends only on the support set: by label, then by content key.

    Args:
        images: ``[B, S, C, H, W]`` support images.
        labels: ``[B, S]`` support labels.

    Returns:
        ``[B, S]`` indices: item ``order[b, j]`` of episode b goes j-th. For episodes served by
        the sampler (class-major) it only reorders the shots within each class.
    """
    by_key = content_keys(images).argsort(dim=1, stable=True)
    by_label = labels.gather(1, by_key).argsort(dim=1, stable=True)
    return by_key.gather(1, by_label)


def permute_items(x: Tensor, order: Tensor) -> Tensor:
    """``x[b, order[b, j]]`` for ``x [B, S, D]``, ``order [B, S]``."""
    return x.gather(1, order.unsqueeze(-1).expand_as(x))


class SupportContextEncoder(nn.Module):
    """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i): a bidirectional LSTM read over the support
    embeddings g'(x_i), with a skip connection (the paper's appendix A.2).

    Input and output ``[B, S, D]``, in the order given; hidden size D.
    """

    def __init__(self, dim: int, layers: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, bidirectional=True, batch_first=True)

    def forward(self, support: Tensor) -> Tensor:
        """``[B, S, D]`` -> ``[B, S, D]``."""
        states, _ = self.lstm(support)  # [B, S, 2D]: forward then backward direction
        forward_states, backward_states = states.split(self.dim, dim=-1)
        return forward_states + backward_states + support


class AttentionLSTM(nn.Module):
    """f(x, S) = attLSTM(f'(x), g(S), K): K read steps of an LSTM over the support embeddings
    (the paper's appendix A.1), for every query at once::

        r_{k-1}      = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)
        h^_k, c_k    = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
        h_k          = h^_k + f'(x)

    with h_0 = c_0 = 0 (so r_0 is the mean support embedding) and f(x, S) = h_K. The LSTM's
    input is f'(x) (D) and its recurrent input the concatenation [h, r] (2D); its state is D.
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"fce_steps must be at least 1, got {steps}.")
        self.steps = steps
        self.input_gates = nn.Linear(dim, 4 * dim)
        self.recurrent_gates = nn.Linear(2 * dim, 4 * dim, bias=False)

    def forward(self, queries: Tensor, support: Tensor) -> Tensor:
        """Queries ``[B, M, D]``, context-embedded support ``[B, S, D]`` -> ``[B, M, D]``."""
        h = torch.zeros_like(queries)
        c = torch.zeros_like(queries)
        from_input = self.input_gates(queries)
        for _ in range(self.steps):
            read = (h @ support.transpose(1, 2)).softmax(-1) @ support  # r_{k-1}: [B, M, D]
            gates = from_input + self.recurrent_gates(torch.cat([h, read], dim=-1))
            input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
            c = forget_gate.sigmoid() * c + input_gate.sigmoid() * candidate.tanh()
            h = output_gate.sigmoid() * c.tanh() + queries
        return h


class MatchingNetwork(EpisodicMethod):
    """Matching Networks: a query's class distribution is an attention-weighted vote of the
    support labels, P(y | x, S) = sum_i a(x, x_i) y_i with a(x, x_i) = softmax_i cos(f(x), g(x_i)).

    Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for One Shot
    Learning", NeurIPS 2016. ``forward`` returns log P ``[B, N*Q, N]``, so the base class's
    cross-entropy is the paper's negative log-likelihood.

    Embeddings: f' = g' = the backbone. Without full-context embeddings (``fce=False``) f = f'
    and g = g'. With ``fce=True`` g is a bidirectional LSTM over the support set with a skip
    connection, and f an attention LSTM that reads g(S) for ``fce_steps`` steps (the paper's
    appendix; ``lstm_layers`` stacks the bidirectional LSTM).

    Support order: the paper treats S as a set but reads it with a bidirectional LSTM, whose
    output depends on the order. With ``support_order="canonical"`` (default) the LSTM reads
    the support sorted by label, then within a class by a fixed key of the image content; FCE
    is then a function of the support *set*: permuting the support permutes its embeddings
    and leaves the query predictions unchanged. For the sampler's class-major episodes this
    only reorders the shots inside each class. ``support_order="episode"`` reads the support
    in the order the episode gives (class-major, shots in sampling order).

    Batch norm: the support and query images of a meta-batch go through the backbone together,
    using their batch statistics in training and the running statistics (accumulated over
    meta-training) in evaluation, as for ProtoNet.

    Optimiser: Adam, lr 1e-3 (``conf/model/matchingnet.yaml``); the FCE config uses 1e-4, the
    official code's FCE setting as cited in issue 5.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        fce: bool = False,
        fce_steps: int = 3,
        lstm_layers: int = 1,
        support_order: str = "canonical",
    ) -> None:
        super().__init__(optimizer, scheduler)
        if support_order not in SUPPORT_ORDERS:
            raise ValueError(f"support_order must be one of {SUPPORT_ORDERS}, got {support_order!r}.")
        self.backbone = backbone
        self.fce = fce
        self.support_order = support_order
        if fce:
            dim = getattr(backbone, "out_features", None)
            if not isinstance(dim, int):
                raise ValueError(
                    "fce=True needs the backbone's embedding size as an integer `out_features` attribute "
                    f"(Conv4 has one); {type(backbone).__name__} has none."
                )
            self.support_encoder = SupportContextEncoder(dim, lstm_layers)
            self.query_encoder = AttentionLSTM(dim, fce_steps)

    @property
    def display_name(self) -> str:
        """Name in results tables."""
        return "MatchingNet-FCE" if self.fce else "MatchingNet"

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support embeddings g(x_i, S) ``[B, N*K, D]`` and query embeddings f(x, S) ``[B, N*Q, D]``,
        the support in the episode's order."""
        support, queries = embed_episode(self.backbone, episode)
        if not self.fce:
            return support, queries
        if self.support_order == "canonical":
            order = canonical_order(episode.support_images, episode.support_labels)
            encoded = self.support_encoder(permute_items(support, order))
            support = permute_items(encoded, order.argsort(1))
        else:
            support = self.support_encoder(support)
        return support, self.query_encoder(queries, support)

    def forward(self, episode: Episode) -> Tensor:
        """Query log class probabilities ``[B, N*Q, N]``."""
        support, queries = self.embed(episode)
        return class_log_probabilities(cosine_similarities(queries, support), episode.support_labels, episode.n_way)
