"""The hand-designed rules follow torch.optim step for step."""

from functools import partial

import pytest
import torch

from fewshot.learned_optimizer.baselines import SGD, Adam, Momentum, RMSprop
from fewshot.learned_optimizer.errors import ConfigError
from fewshot.learned_optimizer.quadratic import Quadratics
from fewshot.learned_optimizer.unroll import evaluate

CASES = [
    (SGD(lr=0.01), partial(torch.optim.SGD, lr=0.01)),
    (Momentum(lr=0.01, momentum=0.9), partial(torch.optim.SGD, lr=0.01, momentum=0.9)),
    (Momentum(lr=0.01, momentum=0.9, nesterov=True), partial(torch.optim.SGD, lr=0.01, momentum=0.9, nesterov=True)),
    (RMSprop(lr=0.01, alpha=0.99, eps=1e-8), partial(torch.optim.RMSprop, lr=0.01, alpha=0.99, eps=1e-8)),
    (Adam(lr=0.05, betas=(0.9, 0.999), eps=1e-8), partial(torch.optim.Adam, lr=0.05, betas=(0.9, 0.999), eps=1e-8)),
]


def torch_optim_losses(make_optimizer, draws, steps: int) -> torch.Tensor:
    """Losses ``[steps + 1, B]`` of a torch.optim optimizer on the ``[B, P]`` parameters (each
    optimizer is elementwise and the draws' losses are independent, so the draws do not mix)."""
    theta = draws.theta0.clone().requires_grad_(True)
    optimizer = make_optimizer([theta])
    losses = []
    for t in range(steps + 1):
        optimizer.zero_grad()
        loss = draws.loss(theta, t)
        losses.append(loss.detach())
        if t < steps:
            loss.sum().backward()
            optimizer.step()
    return torch.stack(losses)


@pytest.mark.parametrize(("rule", "make_optimizer"), CASES, ids=["sgd", "momentum", "nag", "rmsprop", "adam"])
def test_rule_matches_torch_optim_step_for_step(rule, make_optimizer):
    draws = Quadratics(dim=6).sample(3, seed=4)
    ours = evaluate(rule, draws, steps=15)
    reference = torch_optim_losses(make_optimizer, draws, steps=15)
    assert ours.shape == (16, 3)
    assert ours[-1].mean() < ours[0].mean()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", [SGD, Momentum, RMSprop, Adam])
def test_rule_raises_error_when_learning_rate_is_not_positive(rule):
    with pytest.raises(ConfigError, match="lr must be positive, got 0"):
        rule(lr=0.0)
