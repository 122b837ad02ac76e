"""The embedded glyphs: shapes, determinism, difficulty and speed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshot.data.classes import SPLITS, ClassImages
from fewshot.data.embedded import EmbeddedGlyphs, render
from fewshot.data.errors import DataError
from fewshot.data.sampler import EpisodeSampler, EpisodeSpec
from fewshot.data.source import DatasetSource
from tests.pixel_nn import pixel_nn_accuracy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = dict(train_classes=30, val_classes=10, test_classes=10, images_per_class=10, name="embedded_tiny")


def digest(splits: dict[str, ClassImages]) -> str:
    """SHA-256 over every split's class names and image bytes."""
    sha = hashlib.sha256()
    for split in SPLITS:
        sha.update("\n".join(splits[split].names).encode())
        for images in splits[split].images:
            sha.update(images.numpy().tobytes())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def tiny() -> dict[str, ClassImages]:
    """The tiny configuration of the smoke tests."""
    return EmbeddedGlyphs(**TINY).load()


@pytest.fixture(scope="module")
def default() -> dict[str, ClassImages]:
    """The default (400 / 100 / 200 classes of 20 images)."""
    return EmbeddedGlyphs().load()


def test_is_a_dataset_source_named_by_its_argument():
    assert isinstance(EmbeddedGlyphs(), DatasetSource)
    assert EmbeddedGlyphs().name == "embedded"
    assert EmbeddedGlyphs(**TINY).name == "embedded_tiny"


def test_tiny_has_the_requested_classes_and_images(tiny):
    assert {s: len(tiny[s]) for s in SPLITS} == {"train": 30, "val": 10, "test": 10}
    for split in SPLITS:
        assert tiny[split].counts == [10] * len(tiny[split])
        assert tiny[split].image_shape == (1, 28, 28)
        assert all(t.dtype == torch.uint8 for t in tiny[split].images)


def test_default_has_400_100_200_classes_of_20_images(default):
    assert {s: len(default[s]) for s in SPLITS} == {"train": 400, "val": 100, "test": 200}
    assert all(default[s].counts == [20] * len(default[s]) for s in SPLITS)
    assert default["train"].image_shape == (1, 28, 28)


def test_class_names_are_zero_padded_sorted_and_disjoint(tiny):
    names = [n for s in SPLITS for n in tiny[s].names]
    assert names == [f"glyph{i:04d}" for i in range(50)]
    for split in SPLITS:
        assert list(tiny[split].names) == sorted(tiny[split].names)
    assert len(set(names)) == len(names)


def test_images_have_dark_background_and_bright_ink(tiny):
    images = torch.cat([t for s in SPLITS for t in tiny[s].images])
    per_image_max = images.flatten(1).amax(1)
    assert bool((per_image_max >= 200).all()), "every image shows some full-strength ink"
    median = images.float().flatten(1).median(1).values
    assert float(median.max()) < 40, "most of every image is background"


def test_images_of_a_class_vary(tiny):
    for images in tiny["train"].images:
        assert len({hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in images}) == len(images)


def test_same_arguments_give_identical_tensors(tiny):
    again = EmbeddedGlyphs(**TINY).load()
    for split in SPLITS:
        assert again[split].names == tiny[split].names
        assert all(torch.equal(a, b) for a, b in zip(again[split].images, tiny[split].images))


def test_a_different_seed_gives_different_images(tiny):
    other = EmbeddedGlyphs(**TINY, seed=1).load()
    assert other["train"].names == tiny["train"].names
    assert not any(torch.equal(a, b) for a, b in zip(other["train"].images, tiny["train"].images))


def test_identical_in_another_process_with_one_thread(tiny):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from fewshot.data.embedded import EmbeddedGlyphs\n"
        "from tests.data.test_embedded import TINY, digest\n"
        "print(digest(EmbeddedGlyphs(**TINY).load()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=PROJECT_ROOT
    )
    assert result.stdout.strip() == digest(tiny)


def test_render_matches_brute_force_distances():
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(20, 64, 2, generator=gen) * 40 - 6
    points[:, ::5] = 1.0e4
    half_width = torch.rand(20, generator=gen) * 1.5 + 0.5
    grid = torch.arange(28, dtype=torch.float32)
    dy = points[:, :, 1, None, None] - grid[:, None]
    dx = points[:, :, 0, None, None] - grid
    nearest = (dy * dy + dx * dx).amin(1).sqrt()
    expected = (half_width[:, None, None] + 0.5 - nearest).clamp(0, 1)
    assert torch.allclose(render(points, half_width, 28), expected, atol=1e-6)


def test_raw_pixel_nearest_neighbour_is_well_above_chance_and_far_from_solved(default):
    # Measured 0.440 on these 200 episodes (0.43-0.45 over 300 episodes with seeds 0-2).
    sampler = EpisodeSampler(default["test"], EpisodeSpec(5, 1, 15), seed=0, split="test")
    accuracy = pixel_nn_accuracy(sampler, 200).mean().item()
    assert 0.30 < accuracy < 0.58


def test_tiny_generates_in_well_under_a_second():
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        EmbeddedGlyphs(**TINY).load()
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5


@pytest.mark.parametrize(
    "kwargs",
    [dict(test_classes=0), dict(images_per_class=0), dict(image_size=4), dict(seed=-1), dict(dropout=1.5)],
)
def test_bad_arguments_raise_data_error(kwargs):
    with pytest.raises(DataError):
        EmbeddedGlyphs(**kwargs)
