"""The Meta-Learner LSTM of Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning"
(ICLR 2017), as a pure-PyTorch module: learned initialisation, learned update rule.

One episode (``adapt`` then ``predict``):

    theta_0 = c_0                                       (a Parameter: the learned initialisation)
    for t = 1..T, each time on the whole support set:
        L_t, grad_t = CE(learner(theta_{t-1}, support)), its gradient   (both constants)
        h_t         = LSTM([prep(L_t), prep(grad_t)], h_{t-1})          (layer 1, coordinate-wise)
        theta_t     = f_t * theta_{t-1} - i_t * grad_t                  (layer 2, see ``cell.py``)
    meta-loss = CE(learner(theta_T, query))

Gradient independence (the paper's assumption; the official code does the same): ``grad_t`` and
``L_t`` are computed on a detached copy of ``theta_{t-1}`` and enter the meta-graph as constants,
so the meta-backward never goes through the learner's backward, only through the query forward
and the LSTM/cell maths. The meta-gradient still reaches ``c_0`` and every meta-learner weight
through ``f_t * theta_{t-1}`` and ``theta_{t-1}`` as a gate input.

Batch norm: the BN weights and biases are coordinates of ``theta`` like any other; the running
statistics are per-episode buffers, reset at the start of every episode and updated by the
``T`` support forwards. How the query is normalised is the ``bn_mode``:

* ``"transductive"``: with its own batch statistics (the paper's meta-training).
* ``"support"``: with the running statistics gathered on the support set during adaptation
  (the paper's meta-test scheme; the official code calls ``evaluate()`` on the learner).

The running-average momentum is the learner's own BatchNorm ``momentum``. The official configs
set ``BN_momentum`` 0.9 (1-shot) and 0.95 (5-shot) with eps 1e-3. Torch7's BatchNormalization
updates ``running = (1 - m) * running + m * batch``, the same convention as PyTorch, so the values
carry over unchanged: ``Conv4(..., bn_momentum=0.9, bn_eps=1e-3)``.

Known differences from the official (Torch7) code:

* ``grad_scale``: the official learner divides the gradient of its (already size-averaged)
  criterion by the batch size once more (``grad_scale="official"``), so its ``grad_t`` and
  ``c~_t`` are smaller by a factor ``N*K`` than the gradient of the mean cross-entropy
  (``grad_scale="mean"``). The learned input gate absorbs a constant factor only within its
  range (0, 1): with the official scale a step is at most ``1/(N*K)`` of the mean loss's
  gradient, and on Omniglot the gate sits at that ceiling (docs/reproduce.md). The
  preprocessing's ``log|grad|`` shifts by ``log(N*K) / p``.
* Preprocessing takes the log branch for ``|x| >= e^-p`` (the official code: ``>``); both
  branches give ``(-1, sign x)`` at the boundary, so the map is the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fewshot.methods.meta_lstm.cell import CellOutput, Feedback, MetaLearnerCell, cell_update
from fewshot.models.conv4 import layer_names as conv4_layer_names
from fewshot.nn.flat import FlatLayout
from fewshot.nn.lstm import CoordinateLSTM, State
from fewshot.nn.preprocess import preprocess

BNMode = Literal["transductive", "support"]
GradScale = Literal["official", "mean"]
GRAD_SCALES: tuple[str, ...] = ("official", "mean")
LearnerGrad = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]
"""``(theta [n], buffers) -> (loss [], grad [n])``, both detached: the learner's gradient oracle."""

GATES = ("input", "forget")
STATISTICS = ("mean", "std")


@dataclass(frozen=True)
class GateStats:
    """Per step and per learner layer, the mean and std of the input and forget gates.

    Attributes:
        layers: the learner's layers (``conv1 .. conv4, bn1 .. bn4, head`` for a Conv4).
        values: ``[T, 2, 2, L]``: step, gate (input, forget), statistic (mean, std), layer.
            Population std over the layer's coordinates; computed without gradient.
    """

    layers: tuple[str, ...]
    values: Tensor

    def to_metrics(self, prefix: str = "gates") -> dict[str, float]:
        """Flat metric dict, e.g. ``gates/input/conv1/step3`` (mean) and
        ``gates/input_std/conv1/step3``; steps count from 1. One device sync."""
        values = self.values.tolist()
        metrics = {}
        for t, per_gate in enumerate(values, start=1):
            for gate, per_stat in zip(GATES, per_gate, strict=True):
                for stat, per_layer in zip(STATISTICS, per_stat, strict=True):
                    key = gate if stat == "mean" else f"{gate}_{stat}"
                    for layer, value in zip(self.layers, per_layer, strict=True):
                        metrics[f"{prefix}/{key}/{layer}/step{t}"] = value
        return metrics


class Adaptation(NamedTuple):
    """The result of adapting to a support set.

    Attributes:
        theta: ``[n]`` the adapted parameters ``theta_T`` (in the meta-graph when grad is on).
        buffers: the episode's BN running statistics after the ``T`` support forwards.
        gates: gate statistics of the ``T`` steps.
    """

    theta: Tensor
    buffers: dict[str, Tensor]
    gates: GateStats


class MetaLoss(NamedTuple):
    """Query cross-entropy after adaptation, the query logits ``[N*Q, N]`` and gate statistics."""

    loss: Tensor
    logits: Tensor
    gates: GateStats


class MetaLearner(nn.Module):
    """Meta-Learner LSTM (Ravi & Larochelle, ICLR 2017); see the module docstring.

    Holds the learned initialisation ``c0`` (flat ``[n]``, from the learner's own initial
    parameters), layer 1 (:class:`CoordinateLSTM`, input 4 = preprocessed loss and gradient) and
    layer 2 (:class:`MetaLearnerCell`). The learner module itself is only a template for
    ``functional_call``: a copy on the ``meta`` device, not a submodule, so its parameters are
    neither trained nor saved.

    Args:
        learner: the learner, e.g. ``Conv4(..., n_classes=N)``; its parameters become ``c0``, its
            buffers the per-episode reset values of the BN statistics.
        n_steps: ``T``, the number of updates, each on the whole support set.
        hidden_size: layer 1's hidden size (20).
        preprocess_p: ``p`` of the preprocessing (10).
        train_bn: BN mode for the query when the module is in training mode (paper: ``transductive``).
        eval_bn: BN mode for the query in eval mode (paper: ``support``).
        feedback: what the cell feeds back as the previous gate (official: ``preactivation``).
        fused: use the fused coordinate-wise kernels; ``False`` runs the plain reference code
            (same function, slower; for tests).
        layers: parameter name -> layer name for the gate statistics; by default
            ``conv4.layer_names(learner)``.
        checkpoint: recompute the LSTM gates in the backward instead of keeping them: about a
            third of the meta-graph's memory per step, for some more time (long unrolls).
        grad_scale: the learner gradient fed to the meta-learner: ``"official"`` (that of the
            mean support loss divided by the support size once more, as the official code) or
            ``"mean"`` (that of the mean support loss).
    """

    def __init__(
        self,
        learner: nn.Module,
        n_steps: int,
        hidden_size: int = 20,
        preprocess_p: float = 10.0,
        train_bn: BNMode = "transductive",
        eval_bn: BNMode = "support",
        feedback: Feedback = "preactivation",
        fused: bool = True,
        layers: Mapping[str, str] | None = None,
        checkpoint: bool = False,
        grad_scale: GradScale = "official",
    ) -> None:
        super().__init__()
        if grad_scale not in GRAD_SCALES:
            raise ValueError(
                f"model.grad_scale must be one of {list(GRAD_SCALES)}, got {grad_scale!r}: 'official' divides the "
                "gradient of the mean support loss by the support size once more (the official code), 'mean' "
                "feeds the gradient of the mean loss."
            )
        self.grad_scale = grad_scale
        for mode in (train_bn, eval_bn):
            if mode not in ("transductive", "support"):
                raise ValueError(f"BN mode must be 'transductive' or 'support', got {mode!r}.")
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
        self.n_steps = n_steps
        self.preprocess_p = preprocess_p
        self.train_bn = train_bn
        self.eval_bn = eval_bn
        self.fused = fused
        self.layout = FlatLayout.of(learner)
        self.gate_layers, self.segment_sizes = self.layout.segments(layers or conv4_layer_names(learner))

        self.c0 = nn.Parameter(self.layout.flatten(dict(learner.named_parameters())).detach().clone())
        self.lstm = CoordinateLSTM(input_size=4, hidden_size=hidden_size, checkpoint=checkpoint)
        self.cell = MetaLearnerCell(hidden_size=hidden_size, feedback=feedback)

        self._buffer_names = tuple(name for name, _ in learner.named_buffers())
        for k, (_, buffer) in enumerate(learner.named_buffers()):
            self.register_buffer(f"learner_buffer_{k}", buffer.detach().clone(), persistent=False)
        template = copy.deepcopy(learner).to("meta").requires_grad_(False)
        # Plain attributes, not submodules: the templates hold no state anyone should train or save.
        object.__setattr__(self, "_train_template", template.train())
        object.__setattr__(self, "_eval_template", copy.deepcopy(template).eval())
        self._forced_gates: tuple[float, float] | None = None

    @property
    def bn_mode(self) -> BNMode:
        """The query's BN mode for the current ``training`` flag."""
        return self.train_bn if self.training else self.eval_bn

    def fresh_buffers(self) -> dict[str, Tensor]:
        """The learner's BN statistics, reset: a new copy for every episode."""
        return {name: getattr(self, f"learner_buffer_{k}").clone() for k, name in enumerate(self._buffer_names)}

    def learner_forward(self, theta: Tensor, buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
        """Learner logits ``[B, N]`` with parameters ``theta [n]``; ``train`` picks BN batch
        statistics (updating ``buffers`` in place) or ``buffers`` as running statistics."""
        template = self._train_template if train else self._eval_template
        return functional_call(template, (self.layout.unflatten(theta), buffers), (x,))

    def learner_loss_and_grad(
        self, theta: Tensor, buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Support loss and its gradient at ``theta``, both detached (gradient independence).

        The gradient is taken on a detached leaf copy of ``theta``, so the learner's backward
        never enters the meta-graph; gradients are of the mean cross-entropy, divided once more
        by the support size when ``grad_scale`` is ``"official"``. Works under
        ``torch.no_grad`` (evaluation) too.

        Returns:
            ``(loss [], grad [n])``.
        """
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            loss = F.cross_entropy(self.learner_forward(leaf, buffers, x, train=True), y)
            (grad,) = torch.autograd.grad(loss, leaf)
        if self.grad_scale == "official":
            grad = grad / y.shape[0]
        return loss.detach(), grad

    @contextmanager
    def force_gates(self, i: float, f: float = 1.0) -> Iterator[None]:
        """Testing hook: inside the block every coordinate uses ``i_t = i`` and ``f_t = f``,
        so ``f = 1`` makes each step plain SGD with learning rate ``i``."""
        previous = self._forced_gates
        self._forced_gates = (i, f)
        try:
            yield
        finally:
            self._forced_gates = previous

    def adapt(self, support_x: Tensor, support_y: Tensor, *, learner_grad: LearnerGrad | None = None) -> Adaptation:
        """Run the ``T`` meta-learner updates on the support set.

        Args:
            support_x: ``[N*K, C, H, W]``.
            support_y: ``[N*K]`` labels in ``0 .. N-1``.
            learner_grad: replaces :meth:`learner_loss_and_grad` (e.g. to replay recorded
                gradients in a finite-difference test); it must return detached tensors.

        Returns:
            An :class:`Adaptation`; ``theta`` carries the meta-graph when grad is enabled. Works
            under ``torch.no_grad`` and ``torch.inference_mode`` too (no meta-graph then).
        """
        if torch.is_inference_mode_enabled():
            # The learner's gradients need autograd, which inference mode forbids: adapt on
            # ordinary tensors, without a meta-graph (Lightning evaluates in inference mode).
            with torch.inference_mode(False), torch.no_grad():
                return self.adapt(support_x.clone(), support_y.clone(), learner_grad=learner_grad)
        buffers = self.fresh_buffers()
        if learner_grad is None:
            learner_grad = partial(self.learner_loss_and_grad, x=support_x, y=support_y)
        theta = self.c0
        i_state = f_state = torch.zeros_like(theta, requires_grad=False)
        lstm_state = None
        summaries = []
        for _ in range(self.n_steps):
            loss, grad = learner_grad(theta, buffers)
            out, lstm_state = self._meta_step(loss, grad, theta, lstm_state, i_state, f_state)
            theta, i_state, f_state = out.theta, out.input_state, out.forget_state
            summaries.append(self._summarise_gates(out.input_gate, out.forget_gate))
        return Adaptation(theta, buffers, GateStats(self.gate_layers, torch.stack(summaries)))

    def _meta_step(
        self, loss: Tensor, grad: Tensor, theta: Tensor, lstm_state: State | None, i_state: Tensor, f_state: Tensor
    ) -> tuple[CellOutput, State | None]:
        """Layers 1 and 2 on one step's learner loss and gradient (both constants)."""
        if self._forced_gates is not None:
            i = torch.full_like(grad, self._forced_gates[0])
            f = torch.full_like(grad, self._forced_gates[1])
            return CellOutput(cell_update(theta, grad, i, f), i, f, i, f), lstm_state
        p = self.preprocess_p
        if self.fused:  # coordinate-last [features, n]; the loss features are shared by all coordinates
            x = preprocess(grad, p, dim=0)
            lstm_state = self.lstm(x, lstm_state, shared=preprocess(loss, p))
            return self.cell(lstm_state[0], theta, grad, i_state, f_state), lstm_state
        x = torch.cat([preprocess(loss, p).expand(grad.shape[0], 2), preprocess(grad, p)], dim=1)  # [n, 4]
        lstm_state = self.lstm.reference(x, lstm_state)
        return self.cell.reference(lstm_state[0], theta, grad, i_state, f_state), lstm_state

    def predict(
        self, theta: Tensor, buffers: dict[str, Tensor], query_x: Tensor, bn_mode: BNMode | None = None
    ) -> Tensor:
        """Query logits ``[N*Q, N]`` with adapted parameters.

        Args:
            theta, buffers: from :meth:`adapt`.
            query_x: ``[N*Q, C, H, W]``.
            bn_mode: overrides :attr:`bn_mode` (``"transductive"``: the query's own statistics;
                ``"support"``: the running statistics in ``buffers``).
        """
        mode = bn_mode or self.bn_mode
        if mode == "transductive":
            # Batch statistics; the running buffers are irrelevant, so leave the episode's alone.
            return self.learner_forward(theta, self.fresh_buffers(), query_x, train=True)
        return self.learner_forward(theta, buffers, query_x, train=False)

    def meta_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        learner_grad: LearnerGrad | None = None,
    ) -> MetaLoss:
        """Adapt on the support set, then the query cross-entropy (the meta-training loss)."""
        theta, buffers, gates = self.adapt(support_x, support_y, learner_grad=learner_grad)
        logits = self.predict(theta, buffers, query_x)
        return MetaLoss(F.cross_entropy(logits, query_y), logits, gates)

    @torch.no_grad()
    def _summarise_gates(self, input_gate: Tensor, forget_gate: Tensor) -> Tensor:
        """``[2 (gate), 2 (mean, std), L]`` over each layer's contiguous coordinate segment."""
        return segment_moments(torch.stack([input_gate, forget_gate]), self.segment_sizes)

    def extra_repr(self) -> str:
        return (
            f"n_coords={self.layout.n_coords}, n_steps={self.n_steps}, train_bn={self.train_bn!r}, "
            f"eval_bn={self.eval_bn!r}, grad_scale={self.grad_scale!r}, fused={self.fused}, "
            f"checkpoint={self.lstm.checkpoint}"
        )


def segment_moments(x: Tensor, sizes: list[int]) -> Tensor:
    """Mean and population std of each segment of ``sizes`` coordinates of every row of ``x
    [rows, n]``: ``[rows, 2 (mean, std), n_segments]``. Each segment is shifted by its first
    value before two passes (the mean, then the squared deviations from it): gates near 1 with a
    tiny spread lose nothing to cancellation, and constant gates have a std of exactly 0."""
    out = x.new_empty(x.shape[0], 2, len(sizes))
    # one loop step per learner tensor (18 for Conv-4): measured 0.7 ms against 1.9 ms for
    # torch.segment_reduce over repeat_interleave'd means (112k coordinates, one thread)
    for s, part in enumerate(x.split(sizes, dim=1)):
        shifted = part - part[:, :1]
        mean = shifted.mean(1)
        out[:, 1, s] = shifted.sub_(mean[:, None]).square_().mean(1).sqrt_()
        out[:, 0, s] = mean + part[:, 0]
    return out


__all__ = ["Adaptation", "BNMode", "GateStats", "LearnerGrad", "MetaLearner", "MetaLoss", "segment_moments"]
