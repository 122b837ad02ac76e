"""tieredImageNet from fake class folders and fake release pickles."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.source import DatasetSource
from fewshot.data.tiered_imagenet import TieredImageNet
from tests.data.fakes import SYNSETS, random_image

# two classes per split, three images each (the real split has 351/97/160 classes)
CLASSES = {"train": SYNSETS[0:2], "val": SYNSETS[2:4], "test": SYNSETS[4:6]}


def png_array(image: Image.Image) -> np.ndarray:
    """An image PNG-encoded into a uint8 array, as the release's image pickles hold them."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def write_pickles(root: Path, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    """``{split}_images_png.pkl`` + ``{split}_labels.pkl`` like the release (labels interleaved)."""
    root.mkdir(parents=True)
    first: dict[str, list[Image.Image]] = {}
    for split, wnids in CLASSES.items():
        labels = [0, 1, 0, 1, 0, 1]
        images = [random_image(rng, (84, 84)) for _ in labels]
        first[split] = images
        (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps([png_array(i) for i in images], protocol=2))
        table = {
            "label_specific": np.array(labels),
            "label_general": np.zeros(len(labels), dtype=np.int64),
            "label_specific_str": list(wnids),
            "label_general_str": ["category"],
        }
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(table, protocol=2))
    return first


def test_reads_the_release_pickles(tmp_path):
    images = write_pickles(tmp_path / "tiered", np.random.default_rng(0))
    source = TieredImageNet(tmp_path / "tiered")
    assert isinstance(source, DatasetSource) and source.name == "tiered_imagenet"
    splits = source.load()
    for split in SPLITS:
        assert splits[split].names == CLASSES[split]
        assert [tuple(t.shape) for t in splits[split].images] == [(3, 3, 84, 84)] * 2
    expected = torch.tensor(np.asarray(images["val"][1])).permute(2, 0, 1)
    assert torch.equal(splits["val"].images[1][0], expected)


def test_reads_class_folders_and_resizes(tmp_path):
    rng = np.random.default_rng(1)
    for split, wnids in CLASSES.items():
        for wnid in wnids:
            folder = tmp_path / "tiered" / split / wnid
            folder.mkdir(parents=True)
            for i in range(3):
                random_image(rng, (100, 90)).save(folder / f"{wnid}_{i}.JPEG")
    splits = TieredImageNet(tmp_path / "tiered", image_size=32).load()
    assert splits["test"].names == CLASSES["test"]
    assert splits["train"].image_shape == (3, 32, 32)


def test_a_root_with_neither_layout_says_what_it_expects(tmp_path):
    with pytest.raises(DataError, match="tieredImageNet not found.*train_images_png.pkl.*FEWSHOT_TIERED_IMAGENET_ROOT"):
        TieredImageNet(tmp_path).load()


def test_mismatched_images_and_labels_are_named(tmp_path):
    root = tmp_path / "tiered"
    write_pickles(root, np.random.default_rng(2))
    (root / "val_images_png.pkl").write_bytes(pickle.dumps([], protocol=2))
    with pytest.raises(DataError, match="val_images_png.pkl holds 0 images but .*val_labels.pkl labels 6"):
        TieredImageNet(root).load()
