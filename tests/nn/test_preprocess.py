import math

import pytest
import torch

from fewshot.nn.preprocess import preprocess

P = 10.0


def expected(x: float, p: float = P) -> tuple[float, float]:
    if abs(x) >= math.exp(-p):
        return math.log(abs(x)) / p, math.copysign(1.0, x)
    return -1.0, math.exp(p) * x


@pytest.mark.parametrize("x", [1.0, -3.5, 0.25, 123.0, -1e-3, 1e-4, 2e-5, -3e-5, 1e-7, 0.0])
def test_preprocess_matches_the_formula_on_both_branches(x):
    out = preprocess(torch.tensor([x], dtype=torch.float64), P)
    torch.testing.assert_close(out[0], torch.tensor(expected(x), dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_preprocess_is_continuous_at_the_threshold():
    boundary = math.exp(-P)
    x = torch.tensor([boundary, -boundary, boundary * (1 - 1e-9), -boundary * (1 - 1e-9)], dtype=torch.float64)
    out = preprocess(x, P)
    # at |x| = e^-p the log branch applies and gives (-1, sign x); just below, the linear branch
    # gives (-1, e^p x) ~ (-1, sign x)
    torch.testing.assert_close(out[:2], torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64))
    torch.testing.assert_close(out[2:], torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64))
    assert out[0, 1] == 1.0 and out[2, 1] < 1.0  # which branch ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_preprocess_is_finite_for_extreme_values(dtype):
    x = torch.tensor(
        [0.0, -0.0, 1e-45, -1e-45, 1e38, -1e38, torch.finfo(dtype).max, torch.finfo(dtype).tiny], dtype=dtype
    )
    out = preprocess(x)
    assert torch.isfinite(out).all()
    assert out[0].tolist() == [-1.0, 0.0]
    torch.testing.assert_close(out[4], torch.tensor([math.log(1e38) / P, 1.0], dtype=dtype))
    torch.testing.assert_close(out[5], torch.tensor([math.log(1e38) / P, -1.0], dtype=dtype))


def test_preprocess_shapes():
    x = torch.randn(3, 4)
    assert preprocess(x).shape == (3, 4, 2)
    assert preprocess(torch.tensor(0.5)).shape == (2,)
    flat = torch.randn(7)
    torch.testing.assert_close(preprocess(flat, dim=0), preprocess(flat).t())
