"""Layer 2 of the Meta-Learner: the cell whose state is the learner's parameters.

Ravi & Larochelle (2017) observe that a gradient step ``theta_t = theta_{t-1} - alpha_t grad_t``
is an LSTM cell update ``c_t = f_t * c_{t-1} + i_t * c~_t`` with ``c = theta``, ``c~ = -grad``,
``f = 1`` and ``i = alpha``, and learn the gates instead (per coordinate, shared weights):

    i_t = sigmoid(W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I)
    f_t = sigmoid(W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F)
    theta_t = f_t * theta_{t-1} - i_t * grad_t

The paper writes the gate inputs as ``[grad_t, L_t, theta_{t-1}, i_{t-1}]``; the official code
(this realisation) feeds the gradient and loss through layer 1's LSTM first and uses its hidden
state ``h_t`` (size ``H``) in their place, so ``W_I`` and ``W_F`` have ``H + 2`` entries.

What is fed back as ``i_{t-1}`` / ``f_{t-1}``: the official code keeps the gates'
*pre-activations* (the argument of the sigmoid) as its recurrent state, starting from zero, and
that is the default (``feedback="preactivation"``); ``feedback="gate"`` feeds back the sigmoid
values, as the paper's notation reads.

Tensors are coordinate-last: ``h [H, n]``; ``theta``, ``grad`` and the gate states ``[n]``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from fewshot.nn import native

Feedback = Literal["preactivation", "gate"]


class CellOutput(NamedTuple):
    """One step of the meta-learner cell.

    Attributes:
        theta: ``[n]`` the learner's new parameters ``theta_t``.
        input_gate: ``[n]`` ``i_t`` (values in (0, 1)).
        forget_gate: ``[n]`` ``f_t``.
        input_state: ``[n]`` what the next step receives as ``i_prev``.
        forget_state: ``[n]`` what the next step receives as ``f_prev``.
    """

    theta: Tensor
    input_gate: Tensor
    forget_gate: Tensor
    input_state: Tensor
    forget_state: Tensor


def cell_update(theta_prev: Tensor, grad: Tensor, input_gate: Tensor, forget_gate: Tensor) -> Tensor:
    """``c_t = f_t * c_{t-1} + i_t * c~_t`` with ``c~_t = -grad_t``: one (learned) gradient step."""
    return forget_gate * theta_prev - input_gate * grad


def _meta_cell_step_composite(
    h: Tensor,
    theta_prev: Tensor,
    grad: Tensor,
    i_prev: Tensor,
    f_prev: Tensor,
    weight: Tensor,
    bias: Tensor,
    feed_preactivation: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The cell's step as one operator: ``(theta_t, i_t, f_t, i_state, f_state)``, each ``[n]``.

    ``h [H, n]``, ``theta_prev``, ``grad``, ``i_prev``, ``f_prev`` ``[n]``, ``weight [2, H + 2]``
    (rows ``W_I``, ``W_F``), ``bias [2]``. Plain autograd records about ten nodes per step and
    keeps their inputs; this keeps ``h``, ``theta_{t-1}``, the previous gate states and the two
    gates, and its backward (:func:`meta_cell_step_backward`) writes each gradient once (the
    learner gradient ``grad`` is a constant). This is the composite implementation (torch
    operations, any device and dtype); the CPU kernel below runs the C++ kernel where it applies.
    """
    hidden = h.shape[0]
    pre = torch.addmm(bias.unsqueeze(1), weight[:, :hidden], h)  # [2, n]
    pre.addcmul_(weight[:, hidden : hidden + 1], theta_prev).addcmul_(
        weight[:, hidden + 1 :], torch.stack([i_prev, f_prev])
    )
    i, f = torch.sigmoid(pre[0]), torch.sigmoid(pre[1])
    state_i, state_f = (pre[0], pre[1]) if feed_preactivation else (i, f)
    return cell_update(theta_prev, grad, i, f), i, f, state_i.clone(), state_f.clone()


meta_cell_step = torch.library.custom_op("fewshot::meta_cell_step", mutates_args=())(_meta_cell_step_composite)


@meta_cell_step.register_kernel("cpu")
def _(h, theta_prev, grad, i_prev, f_prev, weight, bias, feed_preactivation):
    if not native.applies(h, theta_prev, weight, bias):
        return _meta_cell_step_composite(h, theta_prev, grad, i_prev, f_prev, weight, bias, feed_preactivation)
    return native.kernels().meta_cell_forward(
        native.kernel_matrix(h), theta_prev.contiguous(), grad.contiguous(), i_prev.contiguous(),
        f_prev.contiguous(), weight.contiguous(), bias.contiguous(), feed_preactivation,
    )  # fmt: skip


@meta_cell_step.register_fake
def _(h, theta_prev, grad, i_prev, f_prev, weight, bias, feed_preactivation):
    return tuple(torch.empty_like(theta_prev) for _ in range(5))


def _meta_cell_step_backward_composite(
    h: Tensor,
    theta_prev: Tensor,
    grad: Tensor,
    i_prev: Tensor,
    f_prev: Tensor,
    i: Tensor,
    f: Tensor,
    weight: Tensor,
    feed_preactivation: bool,
    d_outputs: list[Tensor | None],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`meta_cell_step` from those of its five outputs (``None``: zero):
    ``(d_h, d_theta_prev, d_i_prev, d_f_prev, d_weight, d_bias)``; the composite implementation."""
    d_theta, d_i, d_f, d_state_i, d_state_f = d_outputs
    hidden = h.shape[0]
    gates, states = torch.stack([i, f]), torch.stack([i_prev, f_prev])
    d_gates = torch.zeros_like(gates)
    if d_theta is not None:
        torch.mul(d_theta, grad, out=d_gates[0]).neg_()
        torch.mul(d_theta, theta_prev, out=d_gates[1])
    for k, d in enumerate((d_i, d_f)):
        if d is not None:
            d_gates[k] += d
    d_states = (d_state_i, d_state_f)
    if not feed_preactivation:
        for k, d in enumerate(d_states):
            if d is not None:
                d_gates[k] += d
    d_pre = d_gates.mul_(gates).mul_(1.0 - gates)  # sigmoid'
    if feed_preactivation:
        for k, d in enumerate(d_states):
            if d is not None:
                d_pre[k] += d
    d_h = torch.mm(weight[:, :hidden].t(), d_pre)
    w_theta, w_state = weight[:, hidden], weight[:, hidden + 1]
    d_theta_prev = torch.mv(d_pre.t(), w_theta)  # [n]
    if d_theta is not None:
        d_theta_prev.addcmul_(d_theta, f)
    d_weight = torch.cat(
        [torch.mm(d_pre, h.t()), torch.mv(d_pre, theta_prev).unsqueeze(1), (d_pre * states).sum(1, keepdim=True)],
        dim=1,
    )
    return d_h, d_theta_prev, d_pre[0] * w_state[0], d_pre[1] * w_state[1], d_weight, d_pre.sum(1)


meta_cell_step_backward = torch.library.custom_op("fewshot::meta_cell_step_backward", mutates_args=())(
    _meta_cell_step_backward_composite
)


@meta_cell_step_backward.register_kernel("cpu")
def _(h, theta_prev, grad, i_prev, f_prev, i, f, weight, feed_preactivation, d_outputs):
    if not native.applies(h, theta_prev, weight):
        args = (h, theta_prev, grad, i_prev, f_prev, i, f, weight, feed_preactivation, d_outputs)
        return _meta_cell_step_backward_composite(*args)
    d_outputs = [theta_prev.new_zeros(theta_prev.shape) if d is None else d.contiguous() for d in d_outputs]
    inputs = (t.contiguous() for t in (theta_prev, grad, i_prev, f_prev, i, f, weight))
    return native.kernels().meta_cell_backward(native.kernel_matrix(h), *inputs, feed_preactivation, *d_outputs)


@meta_cell_step_backward.register_fake
def _(h, theta_prev, grad, i_prev, f_prev, i, f, weight, feed_preactivation, d_outputs):
    vectors = tuple(torch.empty_like(theta_prev) for _ in range(3))
    return (torch.empty_like(h), *vectors, torch.empty_like(weight), weight.new_empty(2))


def _setup_cell_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
    h, theta_prev, grad, i_prev, f_prev, weight, _bias, feed_preactivation = inputs
    ctx.set_materialize_grads(False)
    ctx.feed_preactivation = feed_preactivation
    ctx.save_for_backward(h, theta_prev, grad, i_prev, f_prev, output[1], output[2], weight)


def _cell_backward(ctx: FunctionCtx, *d_outputs: Tensor | None) -> tuple[Tensor | None, ...]:
    if all(d is None for d in d_outputs):
        return (None,) * 8
    h, theta_prev, grad, i_prev, f_prev, i, f, weight = ctx.saved_tensors
    grads = meta_cell_step_backward(
        h, theta_prev, grad, i_prev, f_prev, i, f, weight, ctx.feed_preactivation, list(d_outputs)
    )
    return (*grads[:2], None, *grads[2:], None)


meta_cell_step.register_autograd(_cell_backward, setup_context=_setup_cell_context)


class MetaLearnerCell(nn.Module):
    """The gated update of the learner's parameters (see the module docstring).

    Args:
        hidden_size: ``H``, the size of layer 1's hidden state.
        init_range: ``W_I``, ``W_F`` start ``U(-init_range, init_range)``.
        forget_bias_range: ``b_F`` starts uniform in this range (forget gate near 1).
        input_bias_range: ``b_I`` starts uniform in this range (small input gate), so the cell
            starts close to plain gradient descent with a small learning rate.
        feedback: what is fed back as the previous gate (see the module docstring).
    """

    def __init__(
        self,
        hidden_size: int = 20,
        init_range: float = 0.01,
        forget_bias_range: tuple[float, float] = (4.0, 5.0),
        input_bias_range: tuple[float, float] = (-5.0, -4.0),
        feedback: Feedback = "preactivation",
    ) -> None:
        super().__init__()
        native.prepare()
        if feedback not in ("preactivation", "gate"):
            raise ValueError(f"feedback must be 'preactivation' or 'gate', got {feedback!r}.")
        self.hidden_size = hidden_size
        self.init_range = init_range
        self.forget_bias_range = forget_bias_range
        self.input_bias_range = input_bias_range
        self.feedback = feedback
        self.weight_i = nn.Parameter(torch.empty(hidden_size + 2))
        self.weight_f = nn.Parameter(torch.empty(hidden_size + 2))
        self.bias_i = nn.Parameter(torch.empty(1))
        self.bias_f = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: weights ``U(-0.01, 0.01)``, ``b_F ~ U(4, 5)``, ``b_I ~ U(-5, -4)``."""
        nn.init.uniform_(self.weight_i, -self.init_range, self.init_range)
        nn.init.uniform_(self.weight_f, -self.init_range, self.init_range)
        nn.init.uniform_(self.bias_i, *self.input_bias_range)
        nn.init.uniform_(self.bias_f, *self.forget_bias_range)

    def forward(self, h: Tensor, theta_prev: Tensor, grad: Tensor, i_prev: Tensor, f_prev: Tensor) -> CellOutput:
        """One step, all coordinates at once.

        Args:
            h: ``[H, n]`` layer 1's hidden state ``h_t``.
            theta_prev: ``[n]`` ``theta_{t-1}`` (the cell state ``c_{t-1}``).
            grad: ``[n]`` the learner's gradient at ``theta_{t-1}`` (a constant: no second order).
            i_prev, f_prev: ``[n]`` the previous gate states (zeros at the first step).

        Returns:
            A :class:`CellOutput`.
        """
        weight = torch.stack([self.weight_i, self.weight_f])  # [2, H + 2]
        bias = torch.cat([self.bias_i, self.bias_f])
        grad = grad.detach()  # a constant (gradient independence)
        feed_preactivation = self.feedback == "preactivation"
        return CellOutput(
            *torch.ops.fewshot.meta_cell_step(h, theta_prev, grad, i_prev, f_prev, weight, bias, feed_preactivation)
        )

    def reference(self, h: Tensor, theta_prev: Tensor, grad: Tensor, i_prev: Tensor, f_prev: Tensor) -> CellOutput:
        """The same step written gate by gate, with ``h`` in the usual ``[n, H]`` layout."""
        pre_i = torch.cat([h, theta_prev[:, None], i_prev[:, None]], dim=1) @ self.weight_i + self.bias_i
        pre_f = torch.cat([h, theta_prev[:, None], f_prev[:, None]], dim=1) @ self.weight_f + self.bias_f
        i, f = torch.sigmoid(pre_i), torch.sigmoid(pre_f)
        theta = f * theta_prev + i * (-grad)
        if self.feedback == "preactivation":
            return CellOutput(theta, i, f, pre_i, pre_f)
        return CellOutput(theta, i, f, i, f)


__all__ = ["CellOutput", "Feedback", "MetaLearnerCell", "cell_update"]
