"""Helpers shared by every test folder: where the real data is, and how to skip without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_ENV = "FEWSHOT_OMNIGLOT_ROOT"
OMNIGLOT_DEFAULT = PROJECT_ROOT.parent / "shared" / "data" / "omniglot"


def omniglot_root() -> Path | None:
    """The real Omniglot folder: ``$FEWSHOT_OMNIGLOT_ROOT`` or ``../shared/data/omniglot``; None if absent."""
    configured = os.environ.get(OMNIGLOT_ENV)
    root = Path(configured).expanduser() if configured else OMNIGLOT_DEFAULT
    return root if root.exists() else None


OMNIGLOT_MISSING = (
    f"real Omniglot data not found: set {OMNIGLOT_ENV} to the folder holding the Omniglot zips "
    f"or put them in {OMNIGLOT_DEFAULT}"
)
requires_omniglot = pytest.mark.skipif(omniglot_root() is None, reason=OMNIGLOT_MISSING)


def assert_batched_equals_per_episode(method, batch, atol: float = 1e-5) -> None:
    """A method's logits for a meta-batch equal its logits for each episode on its own."""
    import torch

    from fewshot.data.episode import collate_episodes

    together = method(batch)
    assert together.shape[:2] == batch.query_labels.shape
    for b, single in enumerate(batch.unbatch()):
        assert torch.allclose(method(collate_episodes([single]))[0], together[b], atol=atol)


def wandb_run_bytes(run_dir: Path, keys: tuple[bytes, ...], timeout_s: float = 60.0) -> bytes:
    """The bytes of an offline W&B run's ``*.wandb`` files once all ``keys`` are in them (W&B's
    service process may write the file after ``finish()`` returns), or what is there at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        logged = b"".join(f.read_bytes() for f in sorted(run_dir.glob("*.wandb")))
        if all(key in logged for key in keys) or time.monotonic() > deadline:
            return logged
        time.sleep(0.5)
