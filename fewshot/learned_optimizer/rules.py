"""The one interface of every optimizer here, learned or hand-designed: an update rule.

A rule maps the gradient of every coordinate to an update, ``theta_{t+1} = theta_t + g_t``, and
carries its own state (momentum buffers, LSTM hidden states) from step to step. It is a pure
function of ``(grad, state)``: nothing is kept on the rule object, so one rule can run many
draws, and the unrolled graph of a learned rule runs through its states.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

RuleState = Any
"""A rule's state: ``None`` before the first step, then tensors in (nested) tuples."""


@runtime_checkable
class UpdateRule(Protocol):
    """``(grad [B, P], state) -> (update [B, P], state)``; ``state`` is ``None`` at the first step."""

    def __call__(self, grad: Tensor, state: RuleState) -> tuple[Tensor, RuleState]:
        """The update ``g_t`` of every coordinate and the state for the next step."""
        ...


def detach_state(state: RuleState) -> RuleState:
    """``state`` with every tensor detached (the truncation point of backpropagation through time)."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple | list):
        return type(state)(detach_state(s) for s in state)
    return state


__all__ = ["RuleState", "UpdateRule", "detach_state"]
