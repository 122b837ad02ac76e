"""ImageFolder: both layouts, channel conversion, and the errors that name the bad file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder, split_by_fractions
from fewshot.data.source import DatasetSource
from tests.data.fakes import make_image_folder

CLASSES = [f"class{i:02d}" for i in range(20)]


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """Twenty RGB class folders of three 40x30 images."""
    return make_image_folder(tmp_path / "flat", CLASSES)


@pytest.fixture
def presplit(tmp_path: Path) -> Path:
    """``train/``, ``val/`` and ``test/`` folders of grayscale class folders."""
    root = tmp_path / "presplit"
    for i, split in enumerate(SPLITS):
        make_image_folder(root / split, [f"{split}_a", f"{split}_b", f"{split}_c"][: 3 - (i > 0)], mode="L", seed=i)
    return root


def test_is_a_dataset_source(flat):
    source = ImageFolder(flat)
    assert isinstance(source, DatasetSource)
    assert source.name == "folder"
    assert ImageFolder(flat, name="birds").name == "birds"


def test_flat_layout_splits_classes_by_fractions_and_seed(flat):
    splits = ImageFolder(flat, split_fractions=[0.6, 0.2, 0.2], split_seed=1).load()
    names = {s: list(splits[s].names) for s in SPLITS}
    assert [len(names[s]) for s in SPLITS] == [12, 4, 4]
    assert sorted(n for s in SPLITS for n in names[s]) == CLASSES
    assert names == split_by_fractions(CLASSES, [0.6, 0.2, 0.2], 1)
    assert names == {
        s: list(v.names) for s, v in ImageFolder(flat, split_fractions=[0.6, 0.2, 0.2], split_seed=1).load().items()
    }
    assert names != split_by_fractions(CLASSES, [0.6, 0.2, 0.2], 2)
    assert splits["train"].image_shape == (3, 84, 84)
    assert set(splits["train"].counts) == {3}


def test_split_layout_is_detected(presplit):
    splits = ImageFolder(presplit, channels=1, image_size=16).load()
    assert splits["train"].names == ("train_a", "train_b", "train_c")
    assert splits["val"].names == ("val_a", "val_b")
    assert splits["test"].image_shape == (1, 16, 16)


def test_nested_class_folders_are_named_by_relative_path(tmp_path):
    root = make_image_folder(tmp_path, ["birds/owl", "birds/hawk", "cats/lynx", "cats/puma", "dogs", "fish", "frog"])
    source = ImageFolder(root, image_size=8, split_fractions=[0.4, 0.3, 0.3])
    names = [n for split in source.load().values() for n in split.names]
    assert sorted(names) == ["birds/hawk", "birds/owl", "cats/lynx", "cats/puma", "dogs", "fish", "frog"]


def test_rgb_becomes_grayscale_and_back(flat, presplit):
    gray = ImageFolder(flat, channels=1, image_size=20).load()["val"].images[0]
    assert gray.shape[1:] == (1, 20, 20)
    rgb = ImageFolder(presplit, channels=3, image_size=20).load()["train"].images[0]
    assert rgb.shape[1:] == (3, 20, 20)
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])


def test_invert(presplit):
    plain = ImageFolder(presplit, channels=1, image_size=16).load()["test"].images[0]
    inverted = ImageFolder(presplit, channels=1, image_size=16, invert=True).load()["test"].images[0]
    assert torch.equal(inverted, 255 - plain)


def test_junk_and_hidden_files_are_ignored(flat):
    (flat / "class00" / ".DS_Store").write_bytes(b"junk")
    (flat / "class01" / "Thumbs.db").write_bytes(b"junk")
    (flat / "class02" / ".hidden.png").write_bytes(b"junk")
    (flat / ".git").mkdir()
    (flat / "README.md").write_text("about these images")
    assert sum(len(s) for s in ImageFolder(flat, image_size=8).load().values()) == 20


# --- errors ----------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="not found; set data.source.root"):
        ImageFolder(tmp_path / "nowhere").load()


def test_no_class_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing")
    with pytest.raises(DataError, match="No class folders with images"):
        ImageFolder(tmp_path).load()


def test_empty_class_folder_is_named(flat):
    (flat / "class20").mkdir()
    with pytest.raises(DataError, match=r"class20 is empty; remove it"):
        ImageFolder(flat).load()


def test_corrupt_image_is_named(flat):
    (flat / "class03" / "img1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"Cannot decode image .*class03/img1\.png"):
        ImageFolder(flat).load()


def test_non_image_file_among_images_is_named(flat):
    (flat / "class04" / "labels.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"class04/labels\.csv is not an image"):
        ImageFolder(flat).load()


def test_image_directly_in_root_is_named(flat):
    (flat / "stray.png").write_bytes((flat / "class00" / "img0.png").read_bytes())
    with pytest.raises(DataError, match=r"stray\.png lies directly in"):
        ImageFolder(flat).load()


def test_too_few_classes_in_a_split(tmp_path):
    root = make_image_folder(tmp_path, ["a", "b", "c", "d"])
    with pytest.raises(DataError, match=r"gives the val split 0 class\(es\).*at least 2"):
        ImageFolder(root).load()


def test_split_folder_with_one_class(presplit):
    shutil.rmtree(presplit / "val" / "val_b")
    with pytest.raises(DataError, match=r"val split 1 class\(es\)"):
        ImageFolder(presplit).load()


def test_partial_split_folders(presplit):
    (presplit / "val").rename(presplit / "validation")
    with pytest.raises(DataError, match=r"has \['train', 'test'\] folders but no \['val'\]"):
        ImageFolder(presplit).load()


def test_same_class_in_two_split_folders(presplit):
    (presplit / "test" / "test_a").rename(presplit / "test" / "train_a")
    with pytest.raises(DataError, match="'train_a' is in both the train and the test split"):
        ImageFolder(presplit).load()


@pytest.mark.parametrize("fractions", [[0.5, 0.5], [0.7, 0.2, 0.2], [1.2, -0.1, -0.1]])
def test_bad_split_fractions(flat, fractions):
    with pytest.raises(DataError, match="split_fractions must be three"):
        ImageFolder(flat, split_fractions=fractions).load()


def test_bad_channels(flat):
    with pytest.raises(DataError, match="channels must be 1"):
        ImageFolder(flat, channels=2)
