"""The prepare commands on fake ImageNet and CIFAR-100 inputs: layouts, counts, resuming, errors."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder
from fewshot.data.miniimagenet import MiniImageNet
from fewshot.data.prepare import Prepared, prepare_cifar, prepare_miniimagenet, resize
from fewshot.data.prepare import __main__ as cli
from fewshot.data.prepare.cifar_splits import CIFAR_FS_CLASSES, FC100_SUPERCLASSES
from fewshot.data.prepare.output import MARKER, partial_dir
from tests.data.fakes import SYNSETS
from tests.data.prepare_fakes import (
    CIFAR100_COARSE,
    CIFAR100_FINE,
    CIFAR100_SUPERCLASSES,
    IMAGENET_NUMBERS,
    cifar100_pickles,
    imagenet_colour,
    make_imagenet,
    write_split_csvs,
    write_tar,
)

MINI_SYNSETS = SYNSETS[:3]
# train: 4 images of the first synset; val and test: 3 of the others (indices count from 1)
MINI_SPLIT = {
    "train": {MINI_SYNSETS[0]: [1, 2, 3, 5]},
    "val": {MINI_SYNSETS[1]: [1, 4, 5]},
    "test": {MINI_SYNSETS[2]: [2, 3, 4]},
}
MINI_IMAGES = sum(len(i) for split in MINI_SPLIT.values() for i in split.values())
TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 1
PER_CLASS = TRAIN_PER_CLASS + TEST_PER_CLASS


@pytest.fixture
def imagenet(tmp_path: Path) -> Path:
    """A fake ILSVRC-2012 training folder: 3 synsets x 5 JPEGs of random sizes."""
    return make_imagenet(tmp_path / "train", MINI_SYNSETS)


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    """Split CSVs naming 4 + 3 + 3 of the fake ImageNet images."""
    return write_split_csvs(tmp_path / "csv", MINI_SPLIT)


@pytest.fixture(scope="module")
def cifar_files() -> dict[str, bytes]:
    """The pickles of a fake CIFAR-100: every class, 5 train + 1 test images each."""
    return cifar100_pickles(TRAIN_PER_CLASS, TEST_PER_CLASS)


@pytest.fixture
def cifar_tar(tmp_path: Path, cifar_files: dict[str, bytes]) -> Path:
    """The fake CIFAR-100 as ``cifar-100-python.tar.gz``."""
    return write_tar(tmp_path / "cifar-100-python.tar.gz", cifar_files)


def mini(imagenet: Path, out: Path, csv_dir: Path) -> Prepared:
    return prepare_miniimagenet(imagenet, out, csv_dir, workers=2, progress=False)


def cifar_fs(archive: Path, out: Path) -> Prepared:
    return prepare_cifar("cifar_fs", archive, out, workers=2, progress=False, images_per_class=PER_CLASS)


def fc100(archive: Path, out: Path) -> Prepared:
    return prepare_cifar("fc100", archive, out, workers=2, progress=False, images_per_class=PER_CLASS)


def cifar_with_fake_counts(dataset: str, archive: Path, out: Path, workers: int | None, progress: bool) -> Prepared:
    """``prepare_cifar`` as the command line calls it, for the fake's 6 images per class."""
    return prepare_cifar(dataset, archive, out, workers, progress, images_per_class=PER_CLASS)


def stop(*_: object) -> None:
    raise RuntimeError("stop")


# --- Mini-ImageNet ---------------------------------------------------------------------------


def test_miniimagenet_has_the_csv_counts_and_84px_jpegs_readable_by_the_reader(imagenet, csv_dir, tmp_path):
    out = tmp_path / "mini"
    result = mini(imagenet, out, csv_dir)
    assert result.counts == {s: {c: len(i) for c, i in MINI_SPLIT[s].items()} for s in SPLITS}
    assert (result.written, result.reused, result.skipped) == (MINI_IMAGES, 0, False)
    assert "not Ravi & Larochelle's 64/16/20" in result.notes[0]
    files = sorted((out / "images").iterdir())
    assert len(files) == MINI_IMAGES
    for path in files:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (84, 84))
    for split in SPLITS:
        assert (out / f"{split}.csv").read_bytes() == (csv_dir / f"{split}.csv").read_bytes()
    assert (out / MARKER).is_file() and not partial_dir(out).exists()
    splits = MiniImageNet(out, cache=False).load()
    for split in SPLITS:
        assert splits[split].names == tuple(MINI_SPLIT[split])
        assert [tuple(t.shape) for t in splits[split].images] == [
            (len(i), 3, 84, 84) for i in MINI_SPLIT[split].values()
        ]


def test_csv_index_k_is_the_kth_file_in_numeric_order(imagenet, csv_dir, tmp_path):
    out = tmp_path / "mini"
    mini(imagenet, out, csv_dir)
    numeric = sorted(IMAGENET_NUMBERS)
    for s, synset in enumerate(MINI_SYNSETS):
        for index in next(i for split in MINI_SPLIT.values() for c, i in split.items() if c == synset):
            with Image.open(out / "images" / f"{synset}{index:08d}.jpg") as image:
                mean = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
            assert np.allclose(mean, imagenet_colour(s, numeric[index - 1]), atol=3), (synset, index)


def test_an_interrupted_build_resumes_without_redoing_finished_images(imagenet, csv_dir, tmp_path, monkeypatch):
    out, original, calls = tmp_path / "mini", resize.resize_square, []

    def failing_after_four(image, size):
        if len(calls) == 4:
            raise RuntimeError("interrupted")
        calls.append(size)
        return original(image, size)

    monkeypatch.setattr(resize, "resize_square", failing_after_four)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_miniimagenet(imagenet, out, csv_dir, workers=1, progress=False)
    assert not out.exists()
    finished = {p: p.stat().st_mtime_ns for p in sorted((partial_dir(out) / "images").iterdir())}
    assert len(finished) == 4
    truncated = next(iter(finished))  # a damaged image is not trusted: it is written again
    truncated.write_bytes(truncated.read_bytes()[:100])
    del finished[truncated]

    def counting(image, size):
        calls.append(size)
        return original(image, size)

    calls.clear()
    monkeypatch.setattr(resize, "resize_square", counting)
    result = mini(imagenet, out, csv_dir)
    assert (result.written, result.reused) == (MINI_IMAGES - 3, 3)
    assert len(calls) == MINI_IMAGES - 3
    kept = {out / "images" / p.name: t for p, t in finished.items()}
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert resize.is_written(out / "images" / truncated.name, 84)
    assert len(list((out / "images").iterdir())) == MINI_IMAGES
    assert not partial_dir(out).exists()


def test_a_complete_output_is_skipped_with_a_message(imagenet, csv_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mini"
    mini(imagenet, out, csv_dir)
    monkeypatch.setattr(resize, "resize_square", lambda *_: pytest.fail("a complete output was rebuilt"))
    again = mini(imagenet, out, csv_dir)
    assert again.skipped and again.written == 0
    assert sum(len(c) for c in again.counts.values()) == 3
    argv = ["miniimagenet", "--imagenet", str(imagenet), "--csv-dir", str(csv_dir), "--out", str(out)]
    assert cli.main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{out} already holds a complete miniimagenet" in printed and "delete the folder" in printed
    assert "data=miniimagenet" in printed


def test_a_missing_synset_folder_is_named_with_the_fix(imagenet, csv_dir, tmp_path):
    (imagenet / MINI_SYNSETS[1]).rename(tmp_path / "moved")
    with pytest.raises(DataError, match=f"Synset folder .*{MINI_SYNSETS[1]} not found.*ILSVRC-2012 training folder"):
        mini(imagenet, tmp_path / "mini", csv_dir)
    assert not partial_dir(tmp_path / "mini").exists()


def test_a_synset_with_too_few_images_for_the_csv_is_named(imagenet, tmp_path):
    csv_dir = write_split_csvs(tmp_path / "csv", {**MINI_SPLIT, "test": {MINI_SYNSETS[2]: [2, 6]}})
    with pytest.raises(DataError, match=f"names image 6 of synset {MINI_SYNSETS[2]}.*holds only 5 images.*complete"):
        mini(imagenet, tmp_path / "mini", csv_dir)


def test_missing_split_csvs_ask_for_csv_dir(imagenet, tmp_path):
    with pytest.raises(DataError, match="train.csv not found; pass --csv-dir"):
        mini(imagenet, tmp_path / "mini", tmp_path / "nowhere")


def test_an_existing_folder_that_is_not_a_build_is_left_alone(imagenet, csv_dir, tmp_path):
    out = tmp_path / "mini"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a finished `prepare` build.*delete it or pass another --out"):
        mini(imagenet, out, csv_dir)
    assert (out / "notes.txt").read_text() == "mine"


# --- CIFAR-FS and FC100 ----------------------------------------------------------------------


def test_the_class_lists_are_splits_of_the_cifar100_classes():
    assert list(CIFAR100_FINE) == sorted(c for fines in CIFAR100_SUPERCLASSES.values() for c in fines)
    assert {s: len(CIFAR_FS_CLASSES[s]) for s in SPLITS} == {"train": 64, "val": 16, "test": 20}
    named = [c for s in SPLITS for c in CIFAR_FS_CLASSES[s]]
    assert len(named) == len(set(named)) and set(named) == set(CIFAR100_FINE)
    assert {s: len(FC100_SUPERCLASSES[s]) for s in SPLITS} == {"train": 12, "val": 4, "test": 4}
    indices = {s: sorted(CIFAR100_COARSE.index(c) for c in FC100_SUPERCLASSES[s]) for s in SPLITS}
    assert indices == {
        "train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19],
        "val": [8, 11, 13, 16],
        "test": [0, 7, 12, 14],
    }


def test_cifar_fs_has_its_classes_as_32px_pngs_readable_by_the_folder_reader(cifar_tar, cifar_files, tmp_path):
    out = tmp_path / "cifar_fs"
    result = cifar_fs(cifar_tar, out)
    assert {s: sorted(result.counts[s]) for s in SPLITS} == {s: sorted(CIFAR_FS_CLASSES[s]) for s in SPLITS}
    assert {s: len(result.counts[s]) for s in SPLITS} == {"train": 64, "val": 16, "test": 20}
    assert {n for s in SPLITS for n in result.counts[s].values()} == {PER_CLASS}
    assert result.written == 100 * PER_CLASS
    train = pickle.loads(cifar_files["train"], encoding="bytes")
    first = CIFAR100_FINE[train[b"fine_labels"][0]]
    split = next(s for s in SPLITS if first in CIFAR_FS_CLASSES[s])
    with Image.open(out / split / first / "train_00000.png") as image:
        assert (image.format, image.size) == ("PNG", (32, 32))
        pixels = np.asarray(image)
    assert np.array_equal(pixels, train[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    splits = ImageFolder(out, image_size=32, name="cifar_fs").load()
    assert splits["test"].names == tuple(sorted(CIFAR_FS_CLASSES["test"]))
    assert splits["val"].image_shape == (3, 32, 32)
    assert set(splits["train"].counts) == {PER_CLASS}
    decoded = splits[split].images[splits[split].names.index(first)]
    assert any(torch.equal(image, torch.tensor(pixels).permute(2, 0, 1)) for image in decoded)


def test_fc100_splits_follow_the_superclasses(cifar_files, tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, data in cifar_files.items():
        (folder / name).write_bytes(data)
    result = fc100(folder, tmp_path / "fc100")
    assert {s: len(result.counts[s]) for s in SPLITS} == {"train": 60, "val": 20, "test": 20}
    for split in SPLITS:
        expected = {c for s in FC100_SUPERCLASSES[split] for c in CIFAR100_SUPERCLASSES[s]}
        assert set(result.counts[split]) == expected
    assert {"dolphin", "bee", "fox", "baby"} <= set(result.counts["test"])
    assert {"bear", "camel", "crab", "mouse"} <= set(result.counts["val"])
    named = [c for s in SPLITS for c in result.counts[s]]
    assert len(named) == len(set(named)) == 100


def test_a_file_that_is_not_a_tar_archive_is_named_with_the_fix(tmp_path):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(b"<html>not found</html>" * 20)
    with pytest.raises(
        DataError, match="cifar-100-python.tar.gz is not a tar or tar.gz archive; pass cifar-100-python.tar.gz"
    ):
        cifar_fs(bad, tmp_path / "out")


def test_a_truncated_archive_is_named_with_the_fix(cifar_tar, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(cifar_tar.read_bytes()[: cifar_tar.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.tar.gz is truncated or corrupt.*download cifar-100-python.tar.gz again"):
        cifar_fs(cut, tmp_path / "out")


def test_a_gzip_that_is_not_a_tar_is_named(tmp_path):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(gzip.compress(b"just some text, not a tar archive\n" * 40))
    with pytest.raises(DataError, match="is not a tar or tar.gz archive"):
        cifar_fs(bad, tmp_path / "out")


def test_an_archive_without_the_meta_pickle_is_named(cifar_files, tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", {k: v for k, v in cifar_files.items() if k != "meta"})
    with pytest.raises(DataError, match="holds no cifar-100-python/meta.*not CIFAR-100's python version"):
        cifar_fs(archive, tmp_path / "out")


def test_a_corrupt_pickle_is_named(cifar_files, tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", {**cifar_files, "train": cifar_files["train"][:1000]})
    with pytest.raises(DataError, match="Cannot read the pickle .*cifar-100-python/train"):
        fc100(archive, tmp_path / "out")


def test_a_pickle_naming_a_function_is_refused(cifar_files, tmp_path):
    archive = write_tar(tmp_path / "a.tar.gz", {**cifar_files, "meta": pickle.dumps(print)})
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        cifar_fs(archive, tmp_path / "out")


def test_a_missing_archive_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="not found; download cifar-100-python.tar.gz"):
        cifar_fs(tmp_path / "nowhere.tar.gz", tmp_path / "out")


def test_a_complete_cifar_output_is_skipped_and_another_dataset_refused(cifar_tar, tmp_path):
    out = tmp_path / "cifar_fs"
    cifar_fs(cifar_tar, out)
    again = cifar_fs(cifar_tar, out)
    assert again.skipped and "already holds a complete cifar_fs" in again.summary()
    with pytest.raises(DataError, match="already holds 'cifar_fs', not 'fc100'; pass another --out"):
        fc100(cifar_tar, out)


def test_a_partial_build_of_another_dataset_is_not_mixed_in(cifar_tar, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(resize, "resize_square", stop)
    with pytest.raises(RuntimeError, match="stop"):
        cifar_fs(cifar_tar, out)
    monkeypatch.undo()
    with pytest.raises(DataError, match="out.partial is left over from another build \\(cifar_fs\\), not fc100"):
        fc100(cifar_tar, out)


def test_the_command_line_builds_and_reports_errors(cifar_tar, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "prepare_cifar", cifar_with_fake_counts)
    out = tmp_path / "fc100"
    assert cli.main(["fc100", "--cifar100", str(cifar_tar), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "train: 60 classes" in printed and "data=fc100" in printed and "FEWSHOT_FC100_ROOT" in printed
    assert cli.main(["cifar_fs", "--cifar100", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "error: CIFAR-100 archive" in capsys.readouterr().err
