"""Layer 1 of the Meta-Learner: a standard LSTM applied to every learner coordinate.

Coordinate-wise (Andrychowicz et al. 2016): the ``n`` coordinates of the learner are ``n``
independent sequences that share one set of LSTM weights. With ``n`` around 10^5 the step is a
handful of large matrix and elementwise operations, so its tensors are laid out
*coordinate-last*: features ``[F, n]``, hidden and cell state ``[H, n]``, gates ``[4H, n]``, where
every gate is a contiguous block of rows.

Equations, per coordinate, with input ``x_t`` (preprocessed loss and gradient):

    [i, f, o] = sigmoid(W [x_t, h_{t-1}] + b),  g = tanh(W [x_t, h_{t-1}] + b)
    c_t = f * c_{t-1} + i * g,                 h_t = o * tanh(c_t)

The gate rows of ``W`` are ordered ``(i, f, o, g)`` like the official Torch code (one sigmoid over
three blocks). ``forward`` is the fused step: one registered operator, ``fewshot::lstm_step``
(:func:`lstm_step`, with its backward ``fewshot::lstm_step_backward`` registered for autograd),
that walks the coordinates in blocks small enough for a block's gates to stay in cache from the
product that makes them to the maths that reads them. Each has a composite implementation in torch
operations (any device and dtype) and a CPU kernel that runs the whole step (blocks, products,
pointwise maths, on torch's threads) in the C++ of :mod:`fewshot.nn.native` where
:func:`~fewshot.nn.native.applies`.
``reference`` is the textbook version in the usual ``[n, F]`` layout; the tests check that they
all agree, and that ``reference`` agrees with ``torch.nn.LSTMCell``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from fewshot.nn import native

State = tuple[Tensor, Tensor]

CPU_BLOCK_SIZE = 2048
"""Coordinates per block on the CPU: a block's gates (``4H x 2048`` floats, 640 KB at ``H = 20``)
stay in a core's L2 cache; the blocks are also the tasks shared among torch's threads."""

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def _pointwise_forward(gates: Tensor, c_prev: Tensor | None, c: Tensor, h: Tensor, tanh_c: Tensor | None) -> None:
    """Activate ``gates [4H, m]`` (rows i, f, o, g) in place; write ``c``, ``h`` and, unless ``None``,
    ``tanh(c)``: the step's pointwise maths as torch operations, into preallocated buffers."""
    hidden = c.shape[0]
    gates[: 3 * hidden].sigmoid_()
    gates[3 * hidden :].tanh_()
    i, f, o, g = gates.chunk(4)
    torch.mul(i, g, out=c)
    if c_prev is not None:
        c.addcmul_(f, c_prev)
    if tanh_c is None:
        torch.tanh(c, out=h).mul_(o)
        return
    torch.tanh(c, out=tanh_c)
    torch.mul(o, tanh_c, out=h)


def _pointwise_backward(
    gates: Tensor,
    tanh_c: Tensor,
    c_prev: Tensor | None,
    dh: Tensor,
    dc_next: Tensor | None,
    d_pre: Tensor,
    dc_prev: Tensor | None,
) -> None:
    """From activated ``gates`` and ``tanh(c)``: the pre-activation gradient ``d_pre [4H, m]`` and
    ``dc_prev = dc * f`` (unless ``None``)."""
    hidden = tanh_c.shape[0]
    i, f, o, g = gates.chunk(4)
    di, df, do, dg = d_pre.chunk(4)
    torch.mul(dh, tanh_c, out=do)
    dc = torch.mul(dh, o, out=dg)  # dg's rows are free until the end: borrow them for dc
    _tanh_backward(dc, tanh_c, grad_input=dc)
    if dc_next is not None:
        dc.add_(dc_next)
    torch.mul(dc, g, out=di)
    if c_prev is not None:
        torch.mul(dc, c_prev, out=df)
    else:
        df.zero_()
    if dc_prev is not None:
        torch.mul(dc, f, out=dc_prev)
    dg.mul_(i)
    _sigmoid_backward(d_pre[: 3 * hidden], gates[: 3 * hidden], grad_input=d_pre[: 3 * hidden])
    _tanh_backward(dg, g, grad_input=dg)


def _blocks(n: int, block_size: int) -> Iterator[slice]:
    for start in range(0, n, block_size):
        yield slice(start, min(start + block_size, n))


def _column(t: Tensor | None, b: slice) -> Tensor | None:
    return None if t is None else t[:, b]


def _matrix(buffer: Tensor, rows: int, m: int) -> Tensor:
    """The first ``rows * m`` values of a flat buffer as a contiguous ``[rows, m]`` matrix (the same
    layout for every block, ragged last one included, so that every block runs the same kernels)."""
    return buffer[: rows * m].view(rows, m)


def _lstm_step_composite(
    x: Tensor,
    h: Tensor | None,
    c: Tensor | None,
    w_x: Tensor,
    w_h: Tensor,
    bias: Tensor,
    block_size: int,
    keep: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One coordinate-wise LSTM step on coordinate-last tensors: ``(h, c, kept)``.

    ``x [F_x, n]``, ``h``, ``c`` ``[H, n]`` (``None``: zeros), ``w_x [4H, F_x]``, ``w_h [4H, H]``,
    ``bias [4H]``. The coordinates are walked in blocks of ``block_size``; per block, ``[x; h; 1]``
    is gathered into one buffer so that a single matrix product gives the gate pre-activations
    (bias included), and the block's gates stay in cache for the maths that reads them. With
    ``keep``, ``kept`` holds what the backward needs, one ``[5H, m]`` tensor per block: the
    activated gates ``i, f, o, g``, then ``tanh(c)`` (blocks, not one tensor: glibc serves
    requests above 32 MB with fresh pages every time); without it (inference, or checkpointing:
    the backward recomputes them) it is empty. This is the composite implementation (torch
    operations, any device and dtype); the CPU kernel below runs the C++ step of
    :mod:`fewshot.nn.native` where it applies.
    """
    hidden, n = w_h.shape[1], x.shape[1]
    weight = _augmented_weight(w_x, w_h if h is not None else None, bias)
    h_new, c_new = x.new_empty(hidden, n), x.new_empty(hidden, n)
    block = min(block_size, n)
    rows = _input_rows(x, h)
    inputs_buffer, scratch = x.new_empty(rows * block), x.new_empty(4 * hidden * block)
    kept = []
    for b in _blocks(n, block):
        m = b.stop - b.start
        if keep:
            kept.append(x.new_empty(5 * hidden, m))
        gates, tanh_c = (
            (kept[-1][: 4 * hidden], kept[-1][4 * hidden :]) if keep else (_matrix(scratch, 4 * hidden, m), None)
        )
        inputs = _matrix(inputs_buffer, rows, m)
        _gather(inputs, x[:, b], _column(h, b))
        torch.mm(weight, inputs, out=gates)
        _pointwise_forward(gates, _column(c, b), c_new[:, b], h_new[:, b], tanh_c)
    return h_new, c_new, kept


lstm_step = torch.library.custom_op("fewshot::lstm_step", mutates_args=())(_lstm_step_composite)


@lstm_step.register_kernel("cpu")
def _(x, h, c, w_x, w_h, bias, block_size, keep):
    if not native.applies(x, w_x, w_h, bias):
        return _lstm_step_composite(x, h, c, w_x, w_h, bias, block_size, keep)
    x, h, c = (native.kernel_matrix(t) for t in (x, h, c))
    return native.kernels().lstm_step_forward(x, h, c, w_x, w_h, bias.contiguous(), block_size, keep)


@lstm_step.register_fake
def _(x, h, c, w_x, w_h, bias, block_size, keep):
    hidden, n = w_h.shape[1], x.shape[1]
    kept = [x.new_empty(5 * hidden, b.stop - b.start) for b in _blocks(n, min(block_size, n))] if keep else []
    return x.new_empty(hidden, n), x.new_empty(hidden, n), kept


def _lstm_step_backward_composite(
    x: Tensor,
    h: Tensor | None,
    c: Tensor | None,
    w_x: Tensor,
    w_h: Tensor,
    bias: Tensor,
    kept: list[Tensor],
    dh: Tensor | None,
    dc_next: Tensor | None,
    block_size: int,
    need_x: bool,
    need_h: bool,
    need_c: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`lstm_step`: ``(dx, dh_prev, dc_prev, dweight)`` with ``dweight =
    [dW_x, dW_h, db]`` (``[4H, F_x (+ H) + 1]``), summed block by block in block order; a gradient
    not asked for (``need_*``) is an empty tensor. Empty ``kept`` (checkpointing): the gates are
    recomputed block by block. The composite implementation; the CPU kernel below runs the C++
    step."""
    hidden, n, n_x = w_h.shape[1], x.shape[1], x.shape[0]
    need_h, need_c = need_h and h is not None, need_c and c is not None
    dh = x.new_zeros(hidden, n) if dh is None else dh
    block = min(block_size, n)
    weight = _augmented_weight(w_x, w_h if h is not None else None, bias)
    rows = _input_rows(x, h)
    inputs_buffer, d_pre_buffer = x.new_empty(rows * block), x.new_empty(4 * hidden * block)
    if not kept:
        recomputed = [x.new_empty(r * block) for r in (4 * hidden, hidden, hidden, hidden)]
    dh_prev = x.new_empty(hidden, n) if need_h else x.new_empty(0)
    dc_prev = x.new_empty(hidden, n) if need_c else x.new_empty(0)
    dx = x.new_empty(n_x, n) if need_x else x.new_empty(0)
    partials = x.new_empty(len(range(0, n, block)), rows, 4 * hidden)  # inputs @ d_pre^T is the fast product
    for k, b in enumerate(_blocks(n, block)):
        m = b.stop - b.start
        c_prev, inp, d_pre = _column(c, b), _matrix(inputs_buffer, rows, m), _matrix(d_pre_buffer, 4 * hidden, m)
        _gather(inp, x[:, b], _column(h, b))
        if kept:
            gates, tanh_c = kept[k][: 4 * hidden], kept[k][4 * hidden :]
        else:
            sizes = (4 * hidden, hidden, hidden, hidden)
            gates, tanh_c, c_scratch, h_scratch = (_matrix(t, r, m) for t, r in zip(recomputed, sizes, strict=True))
            torch.mm(weight, inp, out=gates)
            _pointwise_forward(gates, c_prev, c_scratch, h_scratch, tanh_c)
        dc_prev_b = dc_prev[:, b] if need_c else None
        _pointwise_backward(gates, tanh_c, c_prev, dh[:, b], _column(dc_next, b), d_pre, dc_prev_b)
        if need_h:
            torch.mm(w_h.t(), d_pre, out=dh_prev[:, b])
        if need_x:
            torch.mm(w_x.t(), d_pre, out=dx[:, b])
        torch.mm(inp, d_pre.t(), out=partials[k])
    return dx, dh_prev, dc_prev, partials.sum(0).t().contiguous()


lstm_step_backward = torch.library.custom_op("fewshot::lstm_step_backward", mutates_args=())(
    _lstm_step_backward_composite
)


@lstm_step_backward.register_kernel("cpu")
def _(x, h, c, w_x, w_h, bias, kept, dh, dc_next, block_size, need_x, need_h, need_c):
    if not native.applies(x, w_x, w_h, bias):
        args = (x, h, c, w_x, w_h, bias, kept, dh, dc_next, block_size, need_x, need_h, need_c)
        return _lstm_step_backward_composite(*args)
    hidden, n = w_h.shape[1], x.shape[1]
    dh = x.new_zeros(hidden, n) if dh is None else dh
    x, h, c, dh, dc_next = (native.kernel_matrix(t) for t in (x, h, c, dh, dc_next))
    return native.kernels().lstm_step_backward(
        x, h, c, w_x, w_h, bias.contiguous(), kept, dh, dc_next, block_size, need_x, need_h, need_c
    )


@lstm_step_backward.register_fake
def _(x, h, c, w_x, w_h, bias, kept, dh, dc_next, block_size, need_x, need_h, need_c):
    hidden, n = w_h.shape[1], x.shape[1]
    need_h, need_c = need_h and h is not None, need_c and c is not None
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    dh_prev = x.new_empty(hidden, n) if need_h else x.new_empty(0)
    dc_prev = x.new_empty(hidden, n) if need_c else x.new_empty(0)
    return dx, dh_prev, dc_prev, x.new_empty(4 * hidden, _input_rows(x, h))


def _setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
    x, h, c, w_x, w_h, bias, block_size, _keep = inputs
    kept = output[2]
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*kept)
    ctx.block_size, ctx.n_kept = block_size, len(kept)
    ctx.has_h, ctx.has_c = h is not None, c is not None
    ctx.save_for_backward(x, h, c, w_x, w_h, bias, *kept)


def _backward(ctx: FunctionCtx, dh: Tensor | None, dc_next: Tensor | None, _kept: list | None) -> tuple:
    x, h, c, w_x, w_h, bias, *kept = ctx.saved_tensors
    if dh is None and dc_next is None:
        return (None,) * 8
    need = ctx.needs_input_grad
    dx, dh_prev, dc_prev, dweight = lstm_step_backward(
        x, h, c, w_x, w_h, bias, kept, dh, dc_next, ctx.block_size, need[0], need[1], need[2]
    )
    n_x = x.shape[0]
    dw_x, dw_h, dbias = dweight[:, :n_x], dweight[:, n_x:-1], dweight[:, -1]
    return (
        dx if need[0] else None,
        dh_prev if need[1] and h is not None else None,
        dc_prev if need[2] and c is not None else None,
        dw_x if need[3] else None,
        dw_h if need[4] and h is not None else None,
        dbias if need[5] else None,
        None,
        None,
    )


lstm_step.register_autograd(_backward, setup_context=_setup_context)


def _augmented_weight(w_x: Tensor, w_h: Tensor | None, bias: Tensor) -> Tensor:
    """``[W_x, W_h, b]``: ``[4H, F_x + H + 1]`` (no ``W_h`` at the first step, where ``h = 0``)."""
    parts = [w_x, bias.unsqueeze(1)] if w_h is None else [w_x, w_h, bias.unsqueeze(1)]
    return torch.cat(parts, dim=1)


def _input_rows(x: Tensor, h: Tensor | None) -> int:
    """Rows of ``[x; h; 1]``: ``F_x (+ H) + 1``."""
    return x.shape[0] + (0 if h is None else h.shape[0]) + 1


def _gather(inputs: Tensor, x: Tensor, h: Tensor | None) -> None:
    """Write ``[x; h; 1]`` into ``inputs [F_x (+ H) + 1, m]``."""
    n_x = x.shape[0]
    inputs[:n_x].copy_(x)
    if h is not None:
        inputs[n_x:-1].copy_(h)
    inputs[-1].fill_(1.0)


class CoordinateLSTM(nn.Module):
    """A standard LSTM cell shared by all coordinates, each with its own ``(h, c)``.

    Args:
        input_size: features per coordinate (4: preprocessed loss and gradient).
        hidden_size: ``H`` (20 in the paper).
        init_range: weights and biases start ``U(-init_range, init_range)`` (official code).
        block_size: coordinates per block of the fused step, a speed knob (any value gives the
            same result up to float rounding); ``None``: ``CPU_BLOCK_SIZE`` on CPU, where blocks
            keep the gates in cache, and all coordinates at once on other devices.
        differentiable_input: backpropagate into the per-coordinate input ``x`` (a stacked
            layer fed by the hidden state below); by default ``x`` is a constant (preprocessed
            gradients), and a gradient reaching it is an error.
        checkpoint: keep only each step's inputs for the backward and recompute the gates there
            (``H`` + 3 floats per coordinate and step instead of ``6H`` + 3, about one more
            forward pass of time); for long unrolls.
    """

    def __init__(
        self,
        input_size: int = 4,
        hidden_size: int = 20,
        init_range: float = 0.01,
        block_size: int | None = None,
        differentiable_input: bool = False,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        native.prepare()
        self.block_size = block_size
        self.differentiable_input = differentiable_input
        self.checkpoint = checkpoint
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.init_range = init_range
        self.weight = nn.Parameter(torch.empty(4 * hidden_size, input_size + hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(-init_range, init_range)`` for every weight and bias."""
        nn.init.uniform_(self.weight, -self.init_range, self.init_range)
        nn.init.uniform_(self.bias, -self.init_range, self.init_range)

    def forward(self, x: Tensor, state: State | None = None, shared: Tensor | None = None) -> State:
        """Fused step on coordinate-last tensors.

        The input of coordinate ``k`` is ``[shared, x[:, k]]``: ``shared`` holds features equal for
        every coordinate (the preprocessed loss), folded into the bias instead of broadcast to
        ``[F_s, n]``. ``x`` is treated as a constant (no gradient flows into it) unless the layer
        was built with ``differentiable_input``.

        Args:
            x: ``[F_x, n]`` per-coordinate features, ``F_s + F_x == input_size``.
            state: ``(h, c)``, each ``[H, n]``; ``None`` for the zero initial state.
            shared: ``[F_s]`` features common to all coordinates, or ``None``.

        Returns:
            ``(h, c)``, each ``[H, n]``.
        """
        n_shared = 0 if shared is None else shared.shape[0]
        if n_shared + x.shape[0] != self.input_size:
            raise ValueError(f"Expected {self.input_size} input features, got {n_shared} + {x.shape[0]}.")
        w_shared, w_x, w_h = self.weight.split([n_shared, x.shape[0], self.hidden_size], dim=1)
        bias = self.bias if shared is None else torch.addmv(self.bias, w_shared, shared)
        h, c = (None, None) if state is None else state
        if x.requires_grad and torch.is_grad_enabled() and not self.differentiable_input:
            raise RuntimeError(
                "The coordinate-wise LSTM treats its per-coordinate input as a constant; "
                "build it with differentiable_input=True to backpropagate into the input."
            )
        block_size = self.block_size or (CPU_BLOCK_SIZE if x.device.type == "cpu" else x.shape[1])
        keep = torch.is_grad_enabled() and not self.checkpoint
        h_new, c_new, _ = torch.ops.fewshot.lstm_step(x, h, c, w_x, w_h, bias, block_size, keep)
        return h_new, c_new

    def reference(self, x: Tensor, state: State | None = None) -> State:
        """Plain autograd step in the usual layout, to check ``forward`` against.

        Args:
            x: ``[n, input_size]``.
            state: ``(h, c)``, each ``[n, H]``, or ``None`` for zeros.

        Returns:
            ``(h, c)``, each ``[n, H]``.
        """
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        pre = torch.cat([x, h], dim=1) @ self.weight.t() + self.bias
        i, f, o = torch.sigmoid(pre[:, : 3 * self.hidden_size]).chunk(3, dim=1)
        g = torch.tanh(pre[:, 3 * self.hidden_size :])
        c_new = f * c + i * g
        return o * torch.tanh(c_new), c_new

    def to_lstm_cell(self) -> nn.LSTMCell:
        """A ``torch.nn.LSTMCell`` with the same function (a copy; gate rows reordered to
        PyTorch's ``(i, f, g, o)``, ``bias_hh = 0``)."""
        h = self.hidden_size
        order = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
        cell = nn.LSTMCell(self.input_size, h).to(self.weight)
        with torch.no_grad():
            cell.weight_ih.copy_(self.weight[order, : self.input_size])
            cell.weight_hh.copy_(self.weight[order, self.input_size :])
            cell.bias_ih.copy_(self.bias[order])
            cell.bias_hh.zero_()
        return cell


__all__ = ["CoordinateLSTM", "State"]
