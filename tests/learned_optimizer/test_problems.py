"""Optimizee problems: losses as specified, batched draws equal to one-at-a-time, seeded draws."""

import pytest
import torch
import torch.nn.functional as F

from fewshot.learned_optimizer.images import ImageClassification, glyph_classification
from fewshot.learned_optimizer.mlp import MLPClassification
from fewshot.learned_optimizer.problem import Optimizees, Problem, draw_seed
from fewshot.learned_optimizer.quadratic import Quadratics


@pytest.fixture(scope="module")
def glyphs() -> ImageClassification:
    return glyph_classification(n_classes=4, images_per_class=6, image_size=8)


def test_quadratic_loss_is_squared_residual_norm():
    problem = Quadratics(dim=5)
    draws = problem.sample(3, seed=1)
    theta = torch.randn(3, 5)
    expected = torch.stack([(draws.w[b] @ theta[b] - draws.y[b]).square().sum() for b in range(3)])
    torch.testing.assert_close(draws.loss(theta, step=7), expected)
    assert isinstance(problem, Problem) and isinstance(draws, Optimizees)
    assert draws.theta0.abs().max() < 0.1  # init_std 0.01


def test_draws_are_a_function_of_the_seed(glyphs):
    for problem in (Quadratics(), MLPClassification(glyphs, steps=3, batch_size=5)):
        a, b, c = problem.sample(2, seed=5), problem.sample(2, seed=5), problem.sample(2, seed=6)
        torch.testing.assert_close(a.theta0, b.theta0, rtol=0, atol=0)
        assert not torch.equal(a.theta0, c.theta0)
    assert len({draw_seed(0, stream, index) for stream in range(4) for index in range(10)}) == 40


def test_glyph_classification_is_flat_and_labelled_class_major(glyphs):
    assert glyphs.images.shape == (24, 64) and glyphs.n_features == 64
    assert glyphs.images.min() >= 0 and glyphs.images.max() <= 1
    assert glyphs.labels.tolist() == [c for c in range(4) for _ in range(6)]


def test_mlp_loss_batched_over_draws_matches_a_loop_over_plain_modules(glyphs):
    problem = MLPClassification(glyphs, hidden=(5, 3), activation="relu", steps=4, batch_size=7)
    draws = problem.sample(3, seed=2)
    assert draws.theta0.shape == (3, problem.layout.n_coords)
    assert problem.layout.n_coords == 64 * 5 + 5 + 5 * 3 + 3 + 3 * 4 + 4
    theta = draws.theta0 + 0.1 * torch.randn_like(draws.theta0)
    expected = []
    for b in range(3):
        net = torch.nn.Sequential(
            torch.nn.Linear(64, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 4)
        )
        torch.nn.utils.vector_to_parameters(theta[b], net.parameters())
        index = draws.batch_index[b, 2]
        expected.append(F.cross_entropy(net(glyphs.images[index]), glyphs.labels[index]))
    torch.testing.assert_close(draws.loss(theta, step=2), torch.stack(expected))


def test_mlp_draws_have_a_minibatch_per_step_and_start_with_zero_biases(glyphs):
    problem = MLPClassification(glyphs, hidden=(5,), steps=4, batch_size=7)
    draws = problem.sample(2, seed=0, steps=9)
    assert draws.batch_index.shape == (2, 10, 7)
    params = problem.layout.unflatten(draws.theta0[0])
    assert params["0.bias"].abs().sum() == 0 and params["0.weight"].std() > 0.05
