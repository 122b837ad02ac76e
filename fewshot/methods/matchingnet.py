"""Matching Networks, with optional full-context embeddings (Vinyals et al., NeurIPS 2016).

``model=matchingnet`` and ``model=matchingnet_fce`` (``fce: true``) both build :class:`MatchingNetwork`;
their tests are ``tests/methods/test_matchingnet.py``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory, embed_episode
from fewshot.methods.choices import BatchNormModes, check_choice

SUPPORT_ORDERS = ("canonical", "episode")
# whose gradient norm grad_clip_norm clips: the attention LSTM's, each FCE LSTM's on its own, or one
# norm over all the parameters
GRAD_CLIP_PARAMS = ("attention_lstm", "fce_lstms", "all")
# attention: P(y=n) = sum of the softmax-over-support attention on class n (the paper's equation);
# class_sum: softmax over classes of each class's summed similarity (Ravi & Larochelle's code)
READOUTS = ("attention", "class_sum")
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


def class_sum_log_probabilities(scores: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
    """log softmax over the classes of each class's summed similarity ``sum_{i in n} scores_i``.

    Args:
        scores: ``[B, M, S]`` similarities of M queries to the S support items.
        support_labels: ``[B, S]`` labels in ``0..N-1``.
        n_way: N.

    Returns:
        ``[B, M, N]`` log class probabilities. Equal to :func:`class_log_probabilities` when
        every class has one support item.
    """
    one_hot = F.one_hot(support_labels, n_way).to(scores.dtype)  # [B, S, N]
    return (scores @ one_hot).log_softmax(-1)


def tied_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its parameters (the same Parameter objects) but has its
    own buffers, e.g. batch-norm running statistics."""
    twin = copy.deepcopy(module)
    for (name, _), (_, parameter) in zip(twin.named_parameters(), module.named_parameters(), strict=True):
        owner_name, _, attribute = name.rpartition(".")
        setattr(twin.get_submodule(owner_name) if owner_name else twin, attribute, parameter)
    return twin


@contextmanager
def episode_batch_norm(module: nn.Module) -> Iterator[None]:
    """Within the block, every batch norm of ``module`` normalises with the statistics of the
    batch it is given and leaves its running statistics unchanged (other layers keep their mode)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    counts = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in norms]
    try:
        for m in norms:
            m.train()
            m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged
        yield
    finally:
        for m, (training, momentum), count in zip(norms, saved, counts, strict=True):
            m.train(training)
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


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

    Embeddings: f' = g' = the backbone (shared weights). Without full-context embeddings
    (``fce=False``) f = f' and g = g'. With ``fce=True`` g is a bidirectional LSTM over the
    support set with a skip connection, and f an attention LSTM that reads g(S) for
    ``fce_steps`` steps (the paper's appendix; ``lstm_layers`` stacks the bidirectional LSTM).

    Readout: ``readout="attention"`` is the paper's equation above; ``"class_sum"`` is what
    Ravi & Larochelle's code computes (``model/baselines/matching-net.lua``): a softmax over the
    classes of each class's summed cosine. The two are equal in 1-shot episodes. The
    similarities are multiplied by ``cosine_scale`` (1 in the paper and that code; a learnable
    parameter with ``learn_scale=True``).

    Support order: the paper treats S as a set but reads it with a bidirectional LSTM, whose
    output depends on the order. With ``support_order="canonical"`` (default) the LSTM reads
    the support sorted by label, then within a class by a fixed key of the image content; FCE
    is then a function of the support *set*: permuting the support permutes its embeddings
    and leaves the query predictions unchanged. For the sampler's class-major episodes this
    only reorders the shots inside each class. ``support_order="episode"`` reads the support
    in the order the episode gives (class-major, shots in sampling order).

    Batch norm (the shared modes, docs/configuration.md): ``train_bn="joint"`` passes the support
    and query images of a meta-batch through the backbone together (one set of batch and running
    statistics); ``"transductive"`` passes them in two calls, the queries through a copy of the
    backbone that shares its weights but keeps its own running statistics (Ravi & Larochelle's
    code builds two embedding nets with one set of parameters). In evaluation (``eval_bn``) batch
    norm uses the running statistics of those nets (``"running"``), or each batch's own with the
    support and queries in one batch (``"joint"``) or in two (``"transductive"``).

    Gradient clipping: with ``grad_clip_norm`` set, the gradient norm of the parameters
    ``grad_clip_params`` names is scaled to it when larger: ``"attention_lstm"`` (0.25 in that
    code's ``FCE-embedding.lua``), ``"fce_lstms"`` the attention LSTM's and, separately, the
    bidirectional LSTM's (that code names it but, reading its parameters under another key, clips
    nothing there), or ``"all"`` one norm over every parameter.
    """

    own_gradient_clipping = ("grad_clip_norm",)
    bn_modes = BatchNormModes(train=("joint", "transductive"), eval=("running", "joint", "transductive"))

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        fce: bool = False,
        fce_steps: int = 3,
        lstm_layers: int = 1,
        support_order: str = "canonical",
        train_bn: str = "joint",
        eval_bn: str = "running",
        readout: str = "attention",
        cosine_scale: float = 1.0,
        learn_scale: bool = False,
        grad_clip_norm: float | None = None,
        grad_clip_params: str = "attention_lstm",
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_choice("support_order", support_order, SUPPORT_ORDERS)
        self.bn_modes.check(type(self).__name__, train_bn, eval_bn)
        check_choice("model.grad_clip_params", grad_clip_params, GRAD_CLIP_PARAMS)
        check_choice("readout", readout, READOUTS)
        if not cosine_scale > 0:
            raise ValueError(f"cosine_scale must be positive, got {cosine_scale}.")
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be positive or null (no clipping), got {grad_clip_norm}.")
        self.backbone = backbone
        self.query_backbone = tied_copy(backbone) if train_bn == "transductive" else None
        self.fce = fce
        self.support_order = support_order
        self.train_bn = train_bn
        self.eval_bn = eval_bn
        self.readout = readout
        scale = torch.tensor(float(cosine_scale))
        if learn_scale:
            self.cosine_scale = nn.Parameter(scale)
        else:
            self.register_buffer("cosine_scale", scale, persistent=False)
        self.grad_clip_norm = grad_clip_norm
        self.grad_clip_params = grad_clip_params
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

    def embed_images(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Backbone embeddings g'(x_i) ``[B, N*K, D]`` and f'(x) ``[B, N*Q, D]``: support and queries in one
        batch or in two, as the batch-norm mode of the current stage says (running statistics: as in training)."""
        mode = self.train_bn if self.training else self.eval_bn
        if (self.train_bn if mode == "running" else mode) == "joint":
            return embed_episode(self.backbone, episode)
        b, nk = episode.support_labels.shape
        support = self.backbone(episode.support_images.flatten(0, 1))
        query_backbone = self.backbone if self.query_backbone is None else self.query_backbone
        queries = query_backbone(episode.query_images.flatten(0, 1))
        return support.view(b, nk, -1), queries.view(b, -1, queries.shape[-1])

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support embeddings g(x_i, S) ``[B, N*K, D]`` and query embeddings f(x, S) ``[B, N*Q, D]``,
        the support in the episode's order."""
        if not self.training and self.eval_bn != "running":
            with episode_batch_norm(self):
                support, queries = self.embed_images(episode)
        else:
            support, queries = self.embed_images(episode)
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
        scores = self.cosine_scale * cosine_similarities(queries, support)
        if self.readout == "class_sum":
            return class_sum_log_probabilities(scores, episode.support_labels, episode.n_way)
        return class_log_probabilities(scores, episode.support_labels, episode.n_way)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm of the parameters ``grad_clip_params`` names when ``grad_clip_norm`` is set."""
        if self.grad_clip_norm is None:
            return
        if self.grad_clip_params == "all":
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip_norm)
            return
        if not self.fce:
            return
        torch.nn.utils.clip_grad_norm_(self.query_encoder.parameters(), self.grad_clip_norm)
        if self.grad_clip_params == "fce_lstms":
            torch.nn.utils.clip_grad_norm_(self.support_encoder.parameters(), self.grad_clip_norm)
