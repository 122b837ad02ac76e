"""Names taken from input archives and CSVs never write outside ``--out`` (issue 17, item 2)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from fewshot.data.errors import DataError
from fewshot.data.prepare import __main__ as cli
from fewshot.data.prepare import prepare_cifar, prepare_miniimagenet
from fewshot.data.prepare.output import check_name
from tests.data.fakes import SYNSETS
from tests.data.prepare_fakes import CIFAR100_FINE, cifar100_pickles, make_imagenet, write_split_csvs, write_tar

PER_CLASS = 2


def files_under(root: Path) -> set[Path]:
    """Every path under ``root`` (files and folders)."""
    return set(root.rglob("*"))


def crafted_cifar(tmp_path: Path, key: bytes, index: int, name: str) -> Path:
    """A fake CIFAR-100 archive whose ``meta[key][index]`` is ``name``."""
    files = cifar100_pickles(1, 1)
    meta = pickle.loads(files["meta"])
    meta[key] = list(meta[key])
    meta[key][index] = name  # a str entry (an empty bytes object would not be plain pickle data)
    files["meta"] = pickle.dumps(meta, protocol=2)
    return write_tar(tmp_path / "in" / "cifar-100-python.tar.gz", files)


@pytest.mark.parametrize("dataset", ["fc100", "cifar_fs"])
@pytest.mark.parametrize("bad", ["../../../x", "ABSOLUTE", "a/b", "..", ""])
def test_a_crafted_class_name_in_the_cifar_meta_is_refused_before_anything_is_written(dataset, bad, tmp_path):
    escape = tmp_path / "escaped"
    name = str(escape) if bad == "ABSOLUTE" else bad
    index = CIFAR100_FINE.index("apple")
    archive = crafted_cifar(tmp_path, b"fine_label_names", index, name)
    out = tmp_path / "work" / "a" / "b" / "out"
    before = files_under(tmp_path)
    with pytest.raises(DataError, match=f"fine_label_names entry {re.escape(repr(name))}.*nothing was written"):
        prepare_cifar(dataset, archive, out, workers=1, progress=False, images_per_class=PER_CLASS)
    assert files_under(tmp_path) == before  # nothing at all, inside --out or outside
    assert not escape.exists()


def test_a_crafted_superclass_name_is_refused(tmp_path):
    archive = crafted_cifar(tmp_path, b"coarse_label_names", 0, "../up")
    before = files_under(tmp_path)
    with pytest.raises(DataError, match="coarse_label_names entry '../up' contains a path separator"):
        prepare_cifar("fc100", archive, tmp_path / "out", workers=1, progress=False, images_per_class=PER_CLASS)
    assert files_under(tmp_path) == before


def test_the_command_line_reports_a_crafted_name_in_one_line(tmp_path, capsys):
    archive = crafted_cifar(tmp_path, b"fine_label_names", 0, "../../../x")
    code = cli.main(["fc100", "--cifar100", str(archive), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'../../../x' contains a path separator" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path.parent.parent / "x").exists()


@pytest.mark.parametrize("column", ["filename", "label"])
@pytest.mark.parametrize("bad", ["../../../x.jpg", "ABSOLUTE"])
def test_a_crafted_name_in_the_miniimagenet_csvs_is_refused_before_anything_is_written(column, bad, tmp_path):
    synsets = SYNSETS[:3]
    imagenet = make_imagenet(tmp_path / "train", synsets)
    csv_dir = write_split_csvs(
        tmp_path / "csv", {s: {synsets[i]: [1, 2]} for i, s in enumerate(("train", "val", "test"))}
    )
    name = str(tmp_path / "escaped.jpg") if bad == "ABSOLUTE" else bad
    lines = (csv_dir / "val.csv").read_text().splitlines()
    filename, label = lines[1].split(",")
    lines[1] = f"{name},{label}" if column == "filename" else f"{filename},{name}"
    (csv_dir / "val.csv").write_text("\n".join(lines) + "\n")
    before = files_under(tmp_path)
    with pytest.raises(DataError, match=f"val.csv line 2: the {column} {re.escape(repr(name))}.*nothing was written"):
        prepare_miniimagenet(imagenet, tmp_path / "out", csv_dir, workers=1, progress=False)
    assert files_under(tmp_path) == before
    assert not (tmp_path / "escaped.jpg").exists()


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        (".", "is empty or a relative folder reference"),
        ("..", "is empty or a relative folder reference"),
        ("a/../b", "contains a path separator"),
        ("a\\b", "contains a path separator"),
        ("a\0b", "contains a NUL character"),
        ("/etc", "contains a path separator"),
        ("C:x", "is an absolute path"),
    ],
)
def test_check_name_refuses_every_unsafe_name(name, problem):
    with pytest.raises(DataError, match=f"where: the class {re.escape(repr(name))} {problem}"):
        check_name(name, "class", "where")


def test_check_name_keeps_ordinary_names():
    for name in ("apple", "maple_tree", "n01532829", "n0153282900000005.jpg", "..hidden", "a.b"):
        assert check_name(name, "class", "where") == name
