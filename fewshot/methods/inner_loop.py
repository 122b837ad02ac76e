"""Functional inner loops shared by every method that adapts a network to a support set.

A network's weights are handled as a dict ``{name: tensor}`` and the network is called with
``torch.func.functional_call``, so adaptation never mutates the module: MAML keeps the graph
through its inner steps, Reptile and fine-tuning adapt detached copies. Everything here is
generic (any ``nn.Module``, any loss); the methods choose what to detach and when.

Batch norm: a functional call in train mode updates the running statistics of the buffers
it is given, so :func:`module_state` hands out *copies* of the buffers and the module's own
running statistics never change. :func:`batch_statistics` makes batch-norm layers normalise
with the statistics of the current batch even while the module is in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


def module_state(module: nn.Module, detach: bool = False) -> tuple[Params, Params]:
    """The ``(params, buffers)`` dicts to call ``module`` functionally.

    Args:
        module: any module.
        detach: False: the params are the module's own ``nn.Parameter``s, so a loss on the
            adapted weights back-propagates into them (MAML). True: detached copies that
            require grad, the start of an adaptation that must not reach the module
            (evaluation, Reptile).

    Returns:
        ``params`` (named parameters) and ``buffers`` (clones of the named buffers, so that
        train-mode batch norm cannot update the module's running statistics).
    """
    if detach:
        params = {name: p.detach().clone().requires_grad_(True) for name, p in module.named_parameters()}
    else:
        params = dict(module.named_parameters())
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    return params, buffers


def functional_logits(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor
) -> Tensor:
    """``model(x)`` with the weights ``params`` and ``buffers``: ``[M, ...]`` -> ``[M, N]``."""
    return functional_call(model, (dict(params), dict(buffers)), (x,))


def functional_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn = F.cross_entropy,
) -> Tensor:
    """Scalar ``loss_fn(model(x), y)`` with the weights ``params`` (``x [M, ...]``, ``y [M]``)."""
    return loss_fn(functional_logits(model, params, buffers, x), y)


def learning_rate(lr: float | Mapping[str, Tensor], name: str) -> float | Tensor:
    """The step size of parameter ``name``: a shared float, or a per-parameter tensor
    (Meta-SGD, broadcastable to the parameter's shape)."""
    return lr[name] if isinstance(lr, Mapping) else lr


def resolve_inner_steps(inner_steps: int, eval_inner_steps: int | None) -> int:
    """The evaluation step count (``None``: the training one), after checking both counts."""
    eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
    if inner_steps < 1 or eval_inner_steps < 0:
        raise ValueError(
            f"model.inner_steps must be >= 1 and model.eval_inner_steps >= 0, got {inner_steps} and {eval_inner_steps}."
        )
    return eval_inner_steps


def sgd_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float | Mapping[str, Tensor],
    create_graph: bool = False,
    loss_fn: LossFn = F.cross_entropy,
    frozen: Collection[str] = (),
) -> Params:
    """``steps`` full-batch gradient steps ``theta <- theta - lr * grad L(theta; x, y)``.

    Args:
        model: the network, called functionally (never mutated).
        params: starting weights; each must require grad or depend on tensors that do.
        buffers: the buffers used in every call (pass copies, see :func:`module_state`).
        x: ``[M, ...]`` inputs (the support set).
        y: ``[M]`` targets.
        steps: number of gradient steps (0 returns ``params`` unchanged).
        lr: one step size, or a dict of per-parameter step-size tensors keyed like ``params``.
        create_graph: keep the graph of the gradients themselves, so that a loss on the result
            has second-order derivatives w.r.t. the starting weights (MAML). False gives
            first-order adaptation: the gradients are constants, the update still depends on
            ``params`` (identity) and on ``lr``.
        loss_fn: ``loss_fn(logits, y) -> scalar``.
        frozen: names of parameters used in every call but never stepped (returned as given).

    Returns:
        The adapted weights, a new dict with the keys of ``params``.
    """
    fixed = {name: p for name, p in params.items() if name in frozen}
    adapted = {name: p for name, p in params.items() if name not in frozen}
    with torch.enable_grad():  # evaluation runs under no_grad; adaptation needs gradients
        for _ in range(steps):
            loss = functional_loss(model, {**fixed, **adapted}, buffers, x, y, loss_fn)
            grads = torch.autograd.grad(loss, tuple(adapted.values()), create_graph=create_graph)
            adapted = {name: p - learning_rate(lr, name) * g for (name, p), g in zip(adapted.items(), grads)}
    return {name: adapted[name] if name in adapted else fixed[name] for name in params}


def minibatches(n: int, batch_size: int | None, steps: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """Index tensors of ``steps`` minibatches drawn from ``n`` items without replacement,
    reshuffling after each pass (as in Reptile's code); ``batch_size`` None or >= n gives the
    whole set every step, in order."""
    if batch_size is None or batch_size >= n:
        return [torch.arange(n)] * steps
    passes = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
    return list(order[: steps * batch_size].view(steps, batch_size))


class CarriedOptimizerState:
    """An inner optimizer's per-parameter state (Adam's moments and step count) handed from one
    adaptation to the next, instead of a fresh state for every task.

    The state is matched to parameters by position, so every adaptation must optimise the same
    parameters in the same order. An optimizer started from it gets a copy and never changes
    it; :meth:`save_from` takes over the state of an optimizer that is done.
    """

    def __init__(self) -> None:
        self.state: dict[int, dict[str, Any]] = {}

    def load_into(self, optimizer: torch.optim.Optimizer) -> None:
        """Start ``optimizer`` from the kept state (its hyperparameters stay its own)."""
        if self.state:
            current = optimizer.state_dict()
            optimizer.load_state_dict({**current, "state": copy.deepcopy(self.state)})

    def save_from(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep ``optimizer``'s final state for the adaptations that follow (taken over, not
        copied: the optimizer must not step again)."""
        self.state = optimizer.state_dict()["state"]

    def state_dict(self) -> dict[int, dict[str, Any]]:
        """The kept state (tensors and plain numbers: it loads with ``weights_only=True``)."""
        return self.state

    def load_state_dict(self, state: Mapping[int, Mapping[str, Any]] | None) -> None:
        """Replace the kept state (``None`` or empty: the next adaptation starts fresh)."""
        self.state = {int(index): dict(values) for index, values in (state or {}).items()}


def optimizer_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    make_optimizer: OptimizerFactory,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = F.cross_entropy,
    carried: CarriedOptimizerState | None = None,
    keep_state: bool = True,
) -> Params:
    """``steps`` steps of a ``torch.optim`` optimizer on detached copies of ``params``.

    No graph reaches the starting weights (Reptile, fine-tuning). The optimizer's state is
    fresh for every call unless ``carried`` is given: then it starts from ``carried`` and,
    with ``keep_state``, leaves its final state there for the next call.

    Args:
        model: the network, called functionally (never mutated).
        params: starting weights (detached and copied here).
        buffers: the buffers used in every call.
        x: ``[M, ...]`` inputs; ``y``: ``[M]`` targets.
        steps: number of optimizer steps.
        make_optimizer: ``make_optimizer(list_of_tensors) -> Optimizer``, e.g.
            ``partial(torch.optim.Adam, lr=1e-3)``.
        batch_size: minibatch size (None: the whole set every step), see :func:`minibatches`.
        generator: random source of the minibatch order.
        loss_fn: ``loss_fn(logits, y) -> scalar``.
        carried: the optimizer state to start from (None: a fresh one).
        keep_state: whether the final state replaces ``carried``'s (False: ``carried`` is
            only read, e.g. evaluation tasks that must not change what training carries).

    Returns:
        The adapted weights (detached leaf tensors).
    """
    adapted = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    leaves = list(adapted.values())
    optimizer = make_optimizer(leaves)
    if carried is not None:
        carried.load_into(optimizer)
    with torch.enable_grad():
        for index in minibatches(len(y), batch_size, steps, generator):
            index = index.to(y.device)
            loss = functional_loss(model, adapted, buffers, x[index], y[index], loss_fn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=leaves)
            optimizer.step()
    if carried is not None and keep_state:
        carried.save_from(optimizer)
    return {name: p.detach() for name, p in adapted.items()}


def batch_norm_parameter_names(module: nn.Module) -> set[str]:
    """Names (as in ``module.named_parameters()``) of the parameters of every batch-norm layer:
    its scale and shift, or only the shift when the layer has no scale, or none."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for name, _ in m.named_parameters(recurse=False)
    }


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every batch-norm layer of ``module`` normalises with the statistics
    of the current batch (train mode), whatever the module's mode; restored on exit.

    Pair with copied buffers (:func:`module_state`) so that no running statistic changes.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    try:
        for m in norms:
            m.train(True)
        yield module
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


def _batch_norm_from_elementary_ops(module: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm with the current batch's statistics, written with elementary operations."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + module.eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if module.weight is not None:  # a batch norm without a scale (gamma) has none
        y = y * module.weight.view(shape)
    if module.bias is not None:
        y = y + module.bias.view(shape)
    return y


@contextmanager
def elementary_batch_norm(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every batch-norm layer of ``module`` normalises with the current batch's
    statistics computed from elementary operations, and reads or writes no running statistic.

    For ``torch.func.vmap``: torch's fused batch-norm kernel under ``vmap`` gave wrong second
    derivatives (torch 2.14, checked against the per-task loop); elementary operations do not.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m in norms:
            m.forward = _batch_norm_from_elementary_ops.__get__(m)
        yield module
    finally:
        for m in norms:
            del m.forward


__all__ = [
    "CarriedOptimizerState",
    "elementary_batch_norm",
    "Params",
    "batch_norm_parameter_names",
    "batch_statistics",
    "functional_logits",
    "functional_loss",
    "learning_rate",
    "minibatches",
    "module_state",
    "optimizer_adapt",
    "sgd_adapt",
]
