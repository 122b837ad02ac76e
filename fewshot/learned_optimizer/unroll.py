"""Running an update rule on optimizees: the one loop that meta-training and evaluation share.

    f_t = loss(theta_t, t),   grad_t = d f_t / d theta_t  (a constant: no second derivatives),
    (g_t, state_t) = rule(grad_t, state_{t-1}),   theta_{t+1} = theta_t + g_t

With ``differentiable=True`` the graph runs from the rule's parameters through every update
and state into the losses (meta-training); without, every step is detached (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.learned_optimizer.problem import Optimizees
from fewshot.learned_optimizer.rules import RuleState, UpdateRule


@dataclass(frozen=True)
class Trajectory:
    """What an unroll of ``steps`` updates from step ``start`` leaves: ``theta`` and the rule's state after
    the last update, and ``losses [steps + 1, B]``, ``f_t(theta_t)`` for ``t = start .. start + steps``
    (with a graph to the rule's parameters, but for the first row, when the unroll was differentiable).
    """

    theta: Tensor
    state: RuleState
    losses: Tensor

    @property
    def meta_loss(self) -> Tensor:
        """Mean loss of the parameters this unroll produced (scalar): the losses after each update."""
        return self.losses[1:].mean()


def unroll(
    rule: UpdateRule,
    draws: Optimizees,
    theta: Tensor,
    state: RuleState,
    start: int,
    steps: int,
    differentiable: bool = False,
) -> Trajectory:
    """Apply ``rule`` for ``steps`` steps to ``draws``, starting from ``theta`` at step ``start``.

    A detached ``theta`` starts a new truncation window (nothing before it is differentiated); ``state`` is
    ``None`` at step 0; ``start`` picks the minibatch of stochastic optimizees.
    """
    losses = []
    for t in range(start, start + steps):
        if not (differentiable and theta.requires_grad):
            theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = draws.loss(theta, t)
            (grad,) = torch.autograd.grad(loss.sum(), theta, retain_graph=differentiable)
        losses.append(loss if differentiable else loss.detach())
        with torch.set_grad_enabled(differentiable):
            update, state = rule(grad, state)
            theta = theta + update
    if not differentiable:
        theta = theta.detach()
    with torch.set_grad_enabled(differentiable):
        losses.append(draws.loss(theta, start + steps))
    return Trajectory(theta=theta, state=state, losses=torch.stack(losses))


def evaluate(rule: UpdateRule, draws: Optimizees, steps: int) -> Tensor:
    """Losses ``[steps + 1, B]`` of ``rule`` run from ``draws.theta0`` for ``steps`` steps (no graph)."""
    with torch.no_grad():
        return unroll(rule, draws, draws.theta0, None, start=0, steps=steps).losses


__all__ = ["Trajectory", "evaluate", "unroll"]
