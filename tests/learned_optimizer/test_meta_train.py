"""The unroll and truncated-BPTT meta-training harness: SGD exactly, detached windows, learning."""

from functools import partial

import pytest
import torch
from torch import Tensor, nn

from fewshot.learned_optimizer.baselines import SGD
from fewshot.learned_optimizer.images import glyph_classification
from fewshot.learned_optimizer.meta_train import MetaTrainer
from fewshot.learned_optimizer.mlp import MLPClassification
from fewshot.learned_optimizer.network import LSTMOptimizer
from fewshot.learned_optimizer.quadratic import Quadratics
from fewshot.learned_optimizer.rules import RuleState, detach_state
from fewshot.learned_optimizer.unroll import evaluate, unroll


def state_tensors(state: RuleState) -> list[Tensor]:
    """Every tensor in a rule's state, depth first."""
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state or () for t in state_tensors(s)]


class ScaledGradient(nn.Module):
    """The update network replaced by the fixed rule ``-alpha * grad`` (``alpha`` a parameter,
    so that the meta-training harness has something to optimise)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha))

    def forward(self, grad: Tensor, state: None) -> tuple[Tensor, None]:
        return -self.alpha * grad, None


def plain_sgd_losses(draws, lr: float, steps: int) -> Tensor:
    """``[steps + 1, B]`` losses of ``torch.optim.SGD``, one draw at a time (the reference)."""
    columns = []
    for b in range(draws.theta0.shape[0]):
        theta = draws.theta0.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([theta], lr=lr)
        losses = []
        for t in range(steps + 1):
            optimizer.zero_grad()
            loss = draws.loss(theta, t)[b]  # draws do not interact: only row b moves
            losses.append(loss.detach())
            if t < steps:
                loss.backward()
                optimizer.step()
        columns.append(torch.stack(losses))
    return torch.stack(columns, dim=1)


def problems():
    glyphs = glyph_classification(n_classes=3, images_per_class=10, image_size=8)
    return [
        (Quadratics(dim=5, steps=12).sample(3, seed=0), 0.01),
        (MLPClassification(glyphs, hidden=(4,), steps=12, batch_size=6).sample(3, seed=0), 0.5),
    ]


def test_fixed_rule_reproduces_sgd_in_evaluation_and_in_meta_training():
    for draws, lr in problems():
        reference = plain_sgd_losses(draws, lr, steps=12)
        assert reference[-1].mean() < reference[0].mean()
        torch.testing.assert_close(evaluate(SGD(lr=lr), draws, steps=12), reference)
        torch.testing.assert_close(evaluate(ScaledGradient(lr), draws, steps=12), reference)
        # 12 steps in windows of 5, 5 and 2; a zero meta learning rate keeps alpha fixed
        rule = ScaledGradient(lr)
        trainer = MetaTrainer(partial(torch.optim.SGD, lr=0.0), unroll=12, truncation=5)
        losses = trainer.train_iteration(rule, trainer.optimizer(rule.parameters()), draws)
        torch.testing.assert_close(losses, reference)
        assert rule.alpha.grad is not None and rule.alpha.grad != 0  # the meta-gradient was taken


def test_truncated_windows_start_detached_and_their_meta_gradient_ignores_earlier_windows():
    torch.manual_seed(0)
    net = LSTMOptimizer(hidden_size=6)
    draws = Quadratics(dim=4).sample(2, seed=1)
    params = list(net.parameters())
    windows = MetaTrainer(partial(torch.optim.Adam, lr=1e-3), unroll=9, truncation=3).windows(net, draws)
    first = next(windows)
    fired = []
    for tensor in [first.theta, *state_tensors(first.state)]:
        tensor.register_hook(lambda grad: fired.append(grad))
    second = next(windows)  # first's graph is still alive: nothing was backpropagated yet

    # the start of the second window does not depend on the network
    start_grads = torch.autograd.grad(second.losses[0].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in start_grads)
    assert all(not t.requires_grad for t in state_tensors(detach_state(first.state)))

    harness = torch.autograd.grad(second.meta_loss, params)
    assert not fired  # no gradient reached the end of the first window
    fresh = unroll(net, draws, first.theta.detach(), detach_state(first.state), 3, 3, differentiable=True)
    for a, b in zip(harness, torch.autograd.grad(fresh.meta_loss, params), strict=True):
        torch.testing.assert_close(a, b)
    # without truncation the same losses have another meta-gradient (through steps 0..3)
    untruncated = unroll(net, draws, draws.theta0, None, 0, 6, differentiable=True)
    torch.testing.assert_close(untruncated.losses[3:].detach(), second.losses.detach())
    full = torch.autograd.grad(untruncated.losses[4:].mean(), params)
    assert max((a - b).abs().max() for a, b in zip(harness, full, strict=True)) > 1e-6


def test_short_meta_training_on_quadratics_beats_the_untrained_lstm_and_slow_sgd():
    torch.manual_seed(0)
    problem = Quadratics(dim=10, steps=20)
    net = LSTMOptimizer()
    draws = problem.sample(50, seed=999)
    untrained = evaluate(net, draws, 20)[-1].mean().item()
    trainer = MetaTrainer(
        partial(torch.optim.Adam, lr=1e-2), iterations=30, unroll=20, truncation=10, draws_per_iteration=32
    )
    summary = trainer.fit(net, problem, seed=0)
    trained = evaluate(net, draws, 20)[-1].mean().item()
    sgd = evaluate(SGD(lr=1e-4), draws, 20)[-1].mean().item()
    assert summary.iterations == 30 and len(summary.history) == 3
    assert trained < 0.5 * untrained, (trained, untrained)
    assert trained < 0.5 * sgd, (trained, sgd)
    assert trained < 2.0  # seeded: about 1.2; the untrained LSTM and SGD(1e-4) stay near 10


def test_validation_keeps_the_best_weights():
    torch.manual_seed(0)
    problem = Quadratics(dim=4, steps=6)
    net = LSTMOptimizer(hidden_size=5)
    scores = []
    trainer = MetaTrainer(
        partial(torch.optim.Adam, lr=0.3),
        iterations=6,
        unroll=6,
        truncation=3,
        draws_per_iteration=4,
        val_every=1,
        n_val_draws=4,
        log_every=1,
    )
    summary = trainer.fit(net, problem, seed=0, log_metrics=lambda metrics, step: scores.append(metrics))
    val = [m["meta_val/loss"] for m in scores]
    assert summary.best_val_loss == min(val) and summary.best_iteration == 1 + val.index(min(val))


def test_diverging_optimizees_stop_meta_training_with_a_clear_error():
    rule = ScaledGradient(alpha=100.0)  # far beyond 2 / curvature: the quadratics blow up
    trainer = MetaTrainer(partial(torch.optim.SGD, lr=0.0), unroll=200, truncation=50)
    draws = Quadratics(dim=5).sample(2, seed=0)
    with pytest.raises(FloatingPointError, match="diverged; lower meta_train.optimizer.lr"):
        trainer.train_iteration(rule, trainer.optimizer(rule.parameters()), draws)
