"""Symlinked class folders, query sub-folders and images are followed, loops refused (issue 17, item 4)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder, find_class_folders
from fewshot.predict import query_files, support_files


def write_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), np.uint8)).save(path)
    return path


def class_folders(root: Path, names: list[str], per_class: int = 2) -> None:
    for c, name in enumerate(names):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", c * 100 + i)


def test_a_symlinked_class_folder_is_a_class(tmp_path):
    class_folders(tmp_path / "elsewhere", ["e"])
    class_folders(tmp_path / "data", ["a", "b", "c", "d"])
    os.symlink(tmp_path / "elsewhere" / "e", tmp_path / "data" / "e")
    classes = find_class_folders(tmp_path / "data")
    assert sorted(classes) == ["a", "b", "c", "d", "e"]
    assert [p.name for p in classes["e"]] == ["0.png", "1.png"]


def test_a_symlinked_split_of_class_folders_loads_in_the_folder_dataset(tmp_path):
    for split in ("train", "val", "test"):
        class_folders(tmp_path / "store" / split, [f"{split}{i}" for i in range(2)])
    (tmp_path / "data").mkdir()
    for split in ("train", "val", "test"):
        os.symlink(tmp_path / "store" / split, tmp_path / "data" / split)
    os.symlink(tmp_path / "store" / "train" / "train0", tmp_path / "store" / "val" / "linked")  # a linked class
    splits = ImageFolder(tmp_path / "data", channels=1, image_size=8, workers=1).load()
    assert sorted(splits["val"].names) == ["linked", "val0", "val1"]


def test_a_symlinked_image_file_is_an_image(tmp_path):
    class_folders(tmp_path / "data", ["a", "b"])
    os.symlink(write_image(tmp_path / "x.png", 7), tmp_path / "data" / "a" / "2.png")
    assert [p.name for p in find_class_folders(tmp_path / "data")["a"]] == ["0.png", "1.png", "2.png"]


def test_a_symlink_loop_is_an_error_naming_the_link(tmp_path):
    class_folders(tmp_path / "data", ["a", "b"])
    os.symlink(tmp_path / "data", tmp_path / "data" / "a" / "again")
    with pytest.raises(DataError, match=f"{tmp_path / 'data' / 'a' / 'again'} is a symbolic link to .* loop"):
        find_class_folders(tmp_path / "data")


def test_a_broken_symlink_is_an_error_naming_it(tmp_path):
    class_folders(tmp_path / "data", ["a", "b"])
    os.symlink(tmp_path / "gone", tmp_path / "data" / "c")
    with pytest.raises(DataError, match=f"{tmp_path / 'data' / 'c'} is a symbolic link to .*gone, which does not"):
        find_class_folders(tmp_path / "data")


def test_predict_follows_symlinked_query_sub_folders_and_support_classes(tmp_path):
    class_folders(tmp_path / "support", ["a", "b", "c", "d"], per_class=1)
    class_folders(tmp_path / "other", ["e"], per_class=1)
    os.symlink(tmp_path / "other" / "e", tmp_path / "support" / "e")
    for i in range(8):
        write_image(tmp_path / "query" / f"{i}.png", i)
    for i in range(4):
        write_image(tmp_path / "more" / f"{i}.png", 50 + i)
    os.symlink(tmp_path / "more", tmp_path / "query" / "linked")
    assert sorted(support_files(tmp_path / "support")) == ["a", "b", "c", "d", "e"]
    queries = query_files(tmp_path / "query")
    assert len(queries) == 12
    assert [p.relative_to(tmp_path / "query").as_posix() for p in queries[-4:]] == [f"linked/{i}.png" for i in range(4)]


def test_predict_refuses_a_query_folder_that_links_to_itself(tmp_path):
    write_image(tmp_path / "query" / "0.png", 0)
    os.symlink(tmp_path / "query", tmp_path / "query" / "loop")
    with pytest.raises(DataError, match="loop"):
        query_files(tmp_path / "query")
