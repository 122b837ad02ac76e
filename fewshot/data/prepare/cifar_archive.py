"""Reading CIFAR-100's python version: ``cifar-100-python.tar.gz`` or its extracted folder."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewshot.data.errors import DataError
from fewshot.data.pickles import load_data_pickle, pickle_entry
from fewshot.data.prepare.output import check_name

ARCHIVE_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
TOP_FOLDER = "cifar-100-python"
PARTS = ("train", "test")
PICKLES = (*PARTS, "meta")
SIDE = 32
FINE_CLASSES = 100
COARSE_CLASSES = 20


@dataclass(frozen=True)
class CifarPart:
    """One of the archive's two image sets (``train`` or ``test``), with the fine and coarse (superclass)
    label of each image."""

    name: str
    pixels: np.ndarray  # uint8 [N, 32, 32, 3] (height, width, RGB)
    fine: np.ndarray
    coarse: np.ndarray


@dataclass(frozen=True)
class Cifar100:
    """CIFAR-100 read into memory: label names and the train and test images."""

    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]
    parts: tuple[CifarPart, ...]
    where: str

    def superclass_of(self) -> dict[str, str]:
        """``{fine class name: superclass name}`` as the archive's labels pair them."""
        pairs: dict[str, str] = {}
        for part in self.parts:
            for fine, coarse in set(zip(part.fine.tolist(), part.coarse.tolist())):
                name, superclass = self.fine_names[fine], self.coarse_names[coarse]
                if pairs.setdefault(name, superclass) != superclass:
                    raise DataError(
                        f"{self.where}: class {name} is labelled with two superclasses ({pairs[name]}, "
                        f"{superclass}); the archive is corrupt, download {ARCHIVE_NAME} again."
                    )
        return pairs

    def images_per_class(self) -> dict[str, int]:
        """``{fine class name: images in train and test together}``."""
        counts = np.zeros(len(self.fine_names), dtype=np.int64)
        for part in self.parts:
            counts += np.bincount(part.fine, minlength=len(self.fine_names))
        return dict(zip(self.fine_names, counts.tolist()))


def read_cifar100(path: str | os.PathLike[str]) -> Cifar100:
    """Read CIFAR-100 from ``cifar-100-python.tar.gz``, the ``cifar-100-python/`` folder it extracts to,
    or the folder holding that; a DataError says what is wrong with any other path."""
    source = Path(path).expanduser()
    raw = _read_folder(source) if source.is_dir() else _read_tar(source)
    fine_names, coarse_names = _parse_meta(*raw["meta"])
    parts = tuple(_parse_part(name, *raw[name], fine_names, coarse_names) for name in PARTS)
    return Cifar100(fine_names, coarse_names, parts, str(source))


def _read_folder(folder: Path) -> dict[str, tuple[bytes, str]]:
    base = folder / TOP_FOLDER if (folder / TOP_FOLDER).is_dir() else folder
    missing = [name for name in PICKLES if not (base / name).is_file()]
    if missing:
        raise DataError(
            f"{base} has no {missing} file(s); pass {ARCHIVE_NAME} (the CIFAR-100 python version from "
            f"{ARCHIVE_PAGE}) or the folder it extracts to, holding train, test and meta."
        )
    return {name: ((base / name).read_bytes(), str(base / name)) for name in PICKLES}


def _read_tar(archive: Path) -> dict[str, tuple[bytes, str]]:
    if not archive.is_file():
        raise DataError(
            f"CIFAR-100 archive {archive} not found; download {ARCHIVE_NAME} (python version) from "
            f"{ARCHIVE_PAGE} and pass its path, or the folder it extracts to."
        )
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(
            f"{archive} is not a tar or tar.gz archive; pass {ARCHIVE_NAME} (the python version from "
            f"{ARCHIVE_PAGE}) or the folder it extracts to."
        ) from err
    with tar:
        try:
            members = {_pickle_name(m.name): m for m in tar.getmembers() if m.isfile() and _pickle_name(m.name)}
            missing = [name for name in PICKLES if name not in members]
            if missing:
                raise DataError(
                    f"{archive} holds no {TOP_FOLDER}/{missing[0]}; it is not CIFAR-100's python version "
                    f"(CIFAR-10 and the binary/Matlab versions differ). Download {ARCHIVE_NAME} from "
                    f"{ARCHIVE_PAGE}."
                )
            return {name: (_read_member(tar, members[name]), f"{archive}:{members[name].name}") for name in PICKLES}
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataError(
                f"{archive} is truncated or corrupt ({err}); download {ARCHIVE_NAME} again from {ARCHIVE_PAGE}."
            ) from err


def _pickle_name(member: str) -> str | None:
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if parts and parts[-1] in PICKLES and (len(parts) == 1 or parts[-2] == TOP_FOLDER):
        return parts[-1]
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise DataError(f"{member.name} in {tar.name} is not a regular file; download {ARCHIVE_NAME} again.")
    return handle.read()


def _field(table: Any, key: str, where: str) -> Any:
    fix = f"it is not a CIFAR-100 python pickle. Download {ARCHIVE_NAME} again from {ARCHIVE_PAGE}"
    return pickle_entry(table, key, where, fix)


def _names(values: Any, expected: int, key: str, where: str) -> tuple[str, ...]:
    names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
    for name in names:  # they become folder names under --out
        check_name(name, f"{key} entry", where)
    if len(names) != expected or len(set(names)) != expected:
        raise DataError(
            f"{where}: {key} has {len(names)} names ({len(set(names))} distinct), CIFAR-100 has {expected}; "
            f"pass {ARCHIVE_NAME} (CIFAR-100, not CIFAR-10)."
        )
    return names


def _parse_meta(raw: bytes, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    meta = load_data_pickle(io.BytesIO(raw), where)
    fine = _names(_field(meta, "fine_label_names", where), FINE_CLASSES, "fine_label_names", where)
    coarse = _names(_field(meta, "coarse_label_names", where), COARSE_CLASSES, "coarse_label_names", where)
    return fine, coarse


def _labels(values: Any, count: int, classes: int, key: str, where: str) -> np.ndarray:
    labels = np.asarray(values, dtype=np.int64)
    if labels.shape != (count,) or (count and (labels.min() < 0 or labels.max() >= classes)):
        raise DataError(
            f"{where}: {key} must hold {count} labels in 0..{classes - 1}; the pickle is corrupt, download "
            f"{ARCHIVE_NAME} again."
        )
    return labels


def _parse_part(
    name: str, raw: bytes, where: str, fine_names: tuple[str, ...], coarse_names: tuple[str, ...]
) -> CifarPart:
    table = load_data_pickle(io.BytesIO(raw), where)
    data = np.asarray(_field(table, "data", where))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(
            f"{where}: data is {data.dtype} {data.shape}, CIFAR-100 stores uint8 [N, 3072] rows; download "
            f"{ARCHIVE_NAME} again."
        )
    # each row is channel-major: 1024 red, then 1024 green, then 1024 blue values, row by row
    pixels = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    fine = _labels(_field(table, "fine_labels", where), len(data), len(fine_names), "fine_labels", where)
    coarse = _labels(_field(table, "coarse_labels", where), len(data), len(coarse_names), "coarse_labels", where)
    return CifarPart(name, pixels, fine, coarse)
