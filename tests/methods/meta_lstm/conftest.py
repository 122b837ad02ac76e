"""Small learners and episodes for the Meta-Learner LSTM tests."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fewshot.models.conv4 import Conv4


def tiny_conv4(n_way: int = 3, hidden: int = 2, seed: int = 0) -> Conv4:
    """A Conv4 small enough for float64 finite differences (16x16 inputs, ~150 coordinates)."""
    torch.manual_seed(seed)
    return Conv4(in_channels=1, hidden=hidden, image_size=16, n_classes=n_way, bn_momentum=0.9, bn_eps=1e-3)


def random_episode(
    n_way: int = 3, n_shot: int = 2, n_query: int = 3, size: int = 16, seed: int = 0, dtype=torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(support_x, support_y, query_x, query_y)`` of Gaussian images, class-major labels."""
    g = torch.Generator().manual_seed(seed)
    support_x = torch.randn(n_way * n_shot, 1, size, size, generator=g, dtype=dtype)
    query_x = torch.randn(n_way * n_query, 1, size, size, generator=g, dtype=dtype)
    support_y = torch.arange(n_way).repeat_interleave(n_shot)
    query_y = torch.arange(n_way).repeat_interleave(n_query)
    return support_x, support_y, query_x, query_y


@pytest.fixture
def episode() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return random_episode()


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are tiny: one intra-op thread is as fast and is immune to a busy machine
    (spinning OpenMP workers on a shared core slow small ops down by orders of magnitude)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
