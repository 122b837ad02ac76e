"""tieredImageNet, from class folders or from the pickles of its original release."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fewshot.data.classes import SPLITS, ClassImages, check_splits
from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder, Reader, decode_classes, default_workers
from fewshot.data.pickles import load_data_pickle, pickle_entry

IMAGES_PICKLE = "{split}_images_png.pkl"
LABELS_PICKLE = "{split}_labels.pkl"


class TieredImageNet:
    """tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes grouped in 34 categories.

    The standard split is by category, 20/6/8 categories holding 351/97/160 classes, so that
    test classes are further from the training ones than in Mini-ImageNet. Two layouts are read:

    - folders: ``root/{train,val,test}/<wnid>/<image>`` (any image files; read by ``ImageFolder``);
    - the original release's pickles: ``root/{split}_images_png.pkl`` (a list of PNG-encoded
      images as uint8 arrays) and ``root/{split}_labels.pkl`` (a dict whose ``label_specific``
      holds each image's class index and ``label_specific_str`` the class wnids).

    All 779,165 images are decoded into memory (about 16.5 GB at 84 x 84), in parallel threads.
    """

    name = "tiered_imagenet"

    def __init__(self, root: str | os.PathLike[str], image_size: int = 84, workers: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.workers = default_workers(workers)

    def load(self) -> dict[str, ClassImages]:
        """Decode the three splits into memory from whichever layout ``root`` holds."""
        root = self.root
        if all((root / split).is_dir() for split in SPLITS):
            return ImageFolder(root, 3, self.image_size, name=self.name, workers=self.workers).load()
        if all((root / IMAGES_PICKLE.format(split=split)).is_file() for split in SPLITS):
            return self._load_pickles()
        raise DataError(
            f"tieredImageNet not found in {root}: expected train/, val/ and test/ folders of <wnid>/ class "
            f"folders, or {', '.join(IMAGES_PICKLE.format(split=s) for s in SPLITS)} with their "
            f"{LABELS_PICKLE.format(split='<split>')}; set data.source.root (or FEWSHOT_TIERED_IMAGENET_ROOT)."
        )

    def _load_pickles(self) -> dict[str, ClassImages]:
        splits = {}
        for split in SPLITS:
            readers = read_split_pickles(self.root, split)
            decoded = decode_classes(readers, 3, self.image_size, False, self.workers)
            splits[split] = ClassImages.from_mapping(decoded)
        return check_splits(splits, self.name)


def read_split_pickles(root: Path, split: str) -> dict[str, list[Reader]]:
    """``{wnid: [(where, read PNG bytes), ...]}`` of one split of the pickle layout."""
    images_path = root / IMAGES_PICKLE.format(split=split)
    labels_path = root / LABELS_PICKLE.format(split=split)
    if not labels_path.is_file():
        raise DataError(f"{labels_path} not found next to {images_path}; restore it from the tieredImageNet archive.")
    with images_path.open("rb") as f:
        images = load_data_pickle(f, str(images_path))
    with labels_path.open("rb") as f:
        labels = load_data_pickle(f, str(labels_path), encoding="latin1")
    not_labels = "it is not a tieredImageNet labels pickle"
    specific = np.asarray(pickle_entry(labels, "label_specific", str(labels_path), not_labels), dtype=np.int64)
    wnids = pickle_entry(labels, "label_specific_str", str(labels_path), not_labels)
    wnids = [w.decode() if isinstance(w, bytes) else str(w) for w in wnids]
    if not isinstance(images, list) or len(images) != len(specific):
        count = len(images) if isinstance(images, list) else type(images).__name__
        raise DataError(
            f"{images_path} holds {count} images but {labels_path} labels {len(specific)}; the two files are "
            "from different releases or truncated, restore them."
        )
    if len(specific) and (specific.min() < 0 or specific.max() >= len(wnids)):
        raise DataError(f"{labels_path}: class indices outside 0..{len(wnids) - 1}; restore the file.")
    readers: dict[str, list[Reader]] = {}
    for index, (label, encoded) in enumerate(zip(specific.tolist(), images)):
        where = f"{images_path} image {index}"
        readers.setdefault(wnids[label], []).append((where, _bytes_reader(encoded)))
    return readers


def _bytes_reader(encoded: Any) -> Callable[[], bytes]:
    if isinstance(encoded, bytes):
        return lambda: encoded
    return lambda: np.asarray(encoded, dtype=np.uint8).tobytes()
