"""Mini-ImageNet in the layout of Ravi & Larochelle: ``images/`` plus train/val/test CSVs."""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.data.classes import SPLITS, ClassImages, check_splits
from fewshot.data.errors import DataError
from fewshot.data.folder import Reader, decode_classes, default_workers
from fewshot.io import temporary_for

# Bump when the cache's content or layout changes, so old caches are rebuilt.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CsvRow:
    """One ``filename,label`` row and where it was read, for error messages."""

    filename: str
    label: str
    csv_path: Path
    line: int


class MiniImageNet:
    """Mini-ImageNet (Vinyals et al., 2016) with the class split of Ravi & Larochelle (2017).

    Reads ``root/images/<file>.jpg`` and ``root/{train,val,test}.csv`` (header
    ``filename,label``; the label, a WordNet synset, is the class). Images are decoded as RGB
    in parallel threads and resized to ``image_size`` where they are not that size already.
    Decoding the 60,000 images takes minutes, so the decoded tensors are cached in
    ``cache_dir`` (None: ``root/.fewshot_cache``) and reused while the CSVs and ``image_size``
    are unchanged; a folder that cannot be written to only costs the cache (with a warning).
    """

    name = "miniimagenet"

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 84,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        workers: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.cache = cache
        self.cache_dir = self.root / ".fewshot_cache" if cache_dir is None else Path(cache_dir).expanduser()
        self.workers = default_workers(workers)

    @property
    def cache_path(self) -> Path:
        """The cache file for this ``image_size``."""
        return self.cache_dir / f"miniimagenet_{self.image_size}px.pt"

    def load(self) -> dict[str, ClassImages]:
        """Decode the three splits into memory, or read them from the cache."""
        if not self.root.is_dir():
            raise DataError(
                f"Mini-ImageNet root {self.root} not found; set data.source.root to the folder holding "
                "images/, train.csv, val.csv and test.csv."
            )
        csv_paths = {s: self.root / f"{s}.csv" for s in SPLITS}
        rows = {s: read_split_csv(csv_paths[s]) for s in SPLITS}
        check_disjoint(rows)
        key = cache_key(csv_paths, self.image_size)
        splits = read_cache(self.cache_path, key) if self.cache else None
        if splits is None:
            splits = self._decode(rows)
            if self.cache:
                write_cache(self.cache_path, key, splits)
        return check_splits(splits, self.name)

    def _decode(self, rows: dict[str, list[CsvRow]]) -> dict[str, ClassImages]:
        images = self.root / "images"
        readers: dict[str, list[Reader]] = {}
        for split in SPLITS:
            for row in rows[split]:
                path = images / row.filename
                if not path.is_file():
                    raise DataError(
                        f"{row.csv_path} line {row.line} names {row.filename}, but {path} does not exist; "
                        "restore the image (or re-create images/ from the Mini-ImageNet archive)."
                    )
                readers.setdefault(row.label, []).append((str(path), path.read_bytes))
        decoded = decode_classes(readers, 3, self.image_size, False, self.workers)
        labels = {s: sorted({r.label for r in rows[s]}) for s in SPLITS}
        return {s: ClassImages.from_mapping({c: decoded[c] for c in labels[s]}) for s in SPLITS}


def read_split_csv(path: Path) -> list[CsvRow]:
    """The rows of one ``filename,label`` split CSV, checked for its header and row shape."""
    if not path.is_file():
        raise DataError(
            f"Mini-ImageNet split file {path} not found; put the train.csv, val.csv and test.csv of "
            "Ravi & Larochelle next to the images/ folder."
        )
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    header = [h.strip() for h in lines[0]] if lines else []
    if header != ["filename", "label"]:
        raise DataError(
            f"{path} starts with {header} but must start with the header 'filename,label'; "
            "use the split CSVs of Ravi & Larochelle."
        )
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        if len(fields) != 2 or not all(f.strip() for f in fields):
            raise DataError(f"{path} line {number}: expected 'filename,label', got {fields}; fix that line.")
        rows.append(CsvRow(fields[0].strip(), fields[1].strip(), path, number))
    return rows


def check_disjoint(rows: dict[str, list[CsvRow]]) -> None:
    """Raise when one label appears in two split CSVs."""
    owner: dict[str, CsvRow] = {}
    for split in SPLITS:
        for row in rows[split]:
            first = owner.setdefault(row.label, row)
            if first.csv_path != row.csv_path:
                raise DataError(
                    f"Class {row.label} is in both {first.csv_path} (line {first.line}) and {row.csv_path} "
                    f"(line {row.line}); splits must hold disjoint classes, fix the CSVs."
                )


def cache_key(csv_paths: dict[str, Path], image_size: int) -> str:
    """A fingerprint of the split CSVs, the image size and the cache format."""
    digest = hashlib.sha256(f"miniimagenet format={CACHE_FORMAT} size={image_size}".encode())
    for split in SPLITS:
        digest.update(split.encode())
        digest.update(csv_paths[split].read_bytes())
    return digest.hexdigest()


def read_cache(path: Path, key: str) -> dict[str, ClassImages] | None:
    """The cached splits, or None when there is no cache or it was built from other settings."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            return None
        return {
            s: ClassImages(names=tuple(saved["splits"][s]["names"]), images=tuple(saved["splits"][s]["images"]))
            for s in SPLITS
        }
    except Exception as err:  # a broken cache must never stop a run: it is rebuilt
        warnings.warn(f"Ignoring the unreadable Mini-ImageNet cache {path} ({err}); rebuilding it.", stacklevel=2)
        return None


def write_cache(path: Path, key: str, splits: dict[str, ClassImages]) -> None:
    """Save the decoded splits to ``path`` atomically; warn and go on when that fails."""
    payload = {
        "key": key,
        "splits": {s: {"names": list(splits[s].names), "images": list(splits[s].images)} for s in SPLITS},
    }
    try:
        with temporary_for(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        warnings.warn(
            f"Cannot write the Mini-ImageNet cache {path} ({err}); going on without it. Set "
            "data.source.cache_dir to a writable folder to skip decoding next time.",
            stacklevel=2,
        )
