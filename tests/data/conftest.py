"""Fixtures of the data tests: the real Omniglot (loaded once per session)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fewshot.data.classes import ClassImages
from fewshot.data.omniglot import Omniglot
from tests.helpers import OMNIGLOT_MISSING, omniglot_root

ALL_ROTATIONS = [0, 90, 180, 270]


@pytest.fixture(scope="session")
def real_omniglot_root() -> Path:
    """The real Omniglot folder, or a skip with the reason."""
    root = omniglot_root()
    if root is None:
        pytest.skip(OMNIGLOT_MISSING)
    return root


@pytest.fixture(scope="session")
def real_omniglot(real_omniglot_root: Path) -> dict[str, ClassImages]:
    """The real Omniglot with every rotation in every split, decoded once for the session."""
    start = time.perf_counter()
    splits = Omniglot(real_omniglot_root, rotations=ALL_ROTATIONS, rotate_splits=["train", "val", "test"]).load()
    print(f"\nreal Omniglot loaded in {time.perf_counter() - start:.2f} s")
    return splits
