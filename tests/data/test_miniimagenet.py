"""Mini-ImageNet on a fake Ravi & Larochelle layout: shapes, resizing, the decoded cache, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.images import decode_image
from fewshot.data.miniimagenet import MiniImageNet
from fewshot.data.source import DatasetSource
from tests.data.fakes import SYNSETS, make_mini_imagenet


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """A fake Mini-ImageNet with 3/2/2 synsets of 4 JPEGs of assorted sizes."""
    return make_mini_imagenet(tmp_path / "mini")


def test_is_a_dataset_source(mini):
    source = MiniImageNet(mini)
    assert isinstance(source, DatasetSource)
    assert source.name == "miniimagenet"


def test_classes_counts_and_shapes(mini):
    splits = MiniImageNet(mini, cache=False).load()
    assert splits["train"].names == SYNSETS[:3]
    assert splits["val"].names == SYNSETS[3:5]
    assert splits["test"].names == SYNSETS[5:7]
    for split in SPLITS:
        assert set(splits[split].counts) == {4}
        for images in splits[split].images:
            assert images.dtype == torch.uint8
            assert tuple(images.shape) == (4, 3, 84, 84)


def test_images_are_resized_only_when_needed(mini):
    images = MiniImageNet(mini, cache=False).load()["train"].images[0]
    first = mini / "images" / f"{SYNSETS[0]}00000001.jpg"  # already 84 x 84
    assert torch.equal(images[0], decode_image(first.read_bytes(), str(first), 3, None))
    small = MiniImageNet(mini, image_size=32, cache=False).load()
    assert small["test"].image_shape == (3, 32, 32)


def test_cache_is_written_and_reused_without_the_images(mini):
    source = MiniImageNet(mini)
    first = source.load()
    assert source.cache_path == mini / ".fewshot_cache" / "miniimagenet_84px.pt"
    assert source.cache_path.is_file()
    shutil.rmtree(mini / "images")
    again = MiniImageNet(mini).load()
    for split in SPLITS:
        assert again[split].names == first[split].names
        assert all(torch.equal(a, b) for a, b in zip(again[split].images, first[split].images, strict=True))


def test_a_changed_csv_invalidates_the_cache(mini):
    MiniImageNet(mini).load()
    csv = mini / "train.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")
    assert MiniImageNet(mini).load()["train"].counts == [4, 4, 3]
    assert MiniImageNet(mini).load()["train"].counts == [4, 4, 3]


def test_each_image_size_has_its_own_cache(mini):
    MiniImageNet(mini).load()
    assert MiniImageNet(mini, image_size=32).load()["train"].image_shape == (3, 32, 32)
    assert MiniImageNet(mini).load()["train"].image_shape == (3, 84, 84)
    assert len(list((mini / ".fewshot_cache").glob("*.pt"))) == 2


def test_no_cache_when_disabled(mini):
    MiniImageNet(mini, cache=False).load()
    assert not (mini / ".fewshot_cache").exists()


def test_cache_dir_can_be_elsewhere(mini, tmp_path):
    source = MiniImageNet(mini, cache_dir=tmp_path / "cache")
    source.load()
    assert source.cache_path.parent == tmp_path / "cache"
    assert source.cache_path.is_file()
    assert not (mini / ".fewshot_cache").exists()


def test_unwritable_cache_dir_only_warns(mini, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder should go")
    with pytest.warns(UserWarning, match="Cannot write the Mini-ImageNet cache"):
        splits = MiniImageNet(mini, cache_dir=blocker / "cache").load()
    assert len(splits["train"]) == 3


def test_broken_cache_is_rebuilt(mini):
    source = MiniImageNet(mini)
    source.load()
    source.cache_path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable Mini-ImageNet cache"):
        assert len(source.load()["val"]) == 2
    assert len(MiniImageNet(mini).load()["val"]) == 2
    assert not list(source.cache_dir.glob("*.tmp"))


# --- errors ----------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="not found; set data.source.root"):
        MiniImageNet(tmp_path / "nowhere").load()


def test_missing_csv_is_named(mini):
    (mini / "val.csv").unlink()
    with pytest.raises(DataError, match=r"val\.csv not found"):
        MiniImageNet(mini).load()


def test_wrong_header(mini):
    csv = mini / "test.csv"
    csv.write_text(csv.read_text().replace("filename,label", "file,class", 1))
    with pytest.raises(DataError, match=r"test\.csv starts with \['file', 'class'\].*'filename,label'"):
        MiniImageNet(mini).load()


def test_malformed_row_names_the_line(mini):
    csv = mini / "train.csv"
    csv.write_text(csv.read_text() + "just_a_filename.jpg\n")
    with pytest.raises(DataError, match=r"train\.csv line 14"):
        MiniImageNet(mini).load()


def test_missing_image_names_file_and_csv_line(mini):
    (mini / "images" / f"{SYNSETS[3]}00000002.jpg").unlink()
    with pytest.raises(DataError, match=rf"val\.csv line 3 names {SYNSETS[3]}00000002\.jpg"):
        MiniImageNet(mini).load()


def test_corrupt_image_is_named(mini):
    bad = mini / "images" / f"{SYNSETS[6]}00000004.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"Cannot decode image .*{bad.name}"):
        MiniImageNet(mini).load()


def test_class_in_two_splits(mini):
    with (mini / "test.csv").open("a") as f:
        f.write(f"{SYNSETS[0]}00000001.jpg,{SYNSETS[0]}\n")
    with pytest.raises(DataError, match=rf"Class {SYNSETS[0]} is in both .*train\.csv.*test\.csv"):
        MiniImageNet(mini).load()
