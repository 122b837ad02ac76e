"""Fake inputs of the prepare commands, in the real shapes and names: ImageNet, split CSVs, CIFAR-100."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# CIFAR-100's fine_label_names, in the order of its meta file (alphabetical).
CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

# CIFAR-100's superclasses (coarse_label_names, in the meta file's order) and their fine classes.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE = tuple(CIFAR100_SUPERCLASSES)

# Numbers of the fake ImageNet files of each synset: name order (_100, _1203, _85, _9) differs
# from numeric order (9, 85, 100, 1203), as in the real folders.
IMAGENET_NUMBERS = (1203, 85, 9, 100, 4410)


def imagenet_colour(synset_index: int, number: int) -> tuple[int, int, int]:
    """The solid colour of one fake ImageNet file, so a test can tell which file an output came from."""
    return (40 * synset_index + 20, number % 251, (number * 7) % 253)


def make_imagenet(root: Path, synsets: Sequence[str], seed: int = 0) -> Path:
    """``root/<synset>/<synset>_<number>.JPEG`` for ``IMAGENET_NUMBERS``: solid colours of random sizes."""
    rng = np.random.default_rng(seed)
    for s, synset in enumerate(synsets):
        folder = root / synset
        folder.mkdir(parents=True, exist_ok=True)
        for number in IMAGENET_NUMBERS:
            size = (int(rng.integers(60, 200)), int(rng.integers(60, 200)))
            Image.new("RGB", size, imagenet_colour(s, number)).save(folder / f"{synset}_{number}.JPEG", quality=95)
    return root


def write_split_csvs(folder: Path, splits: Mapping[str, Mapping[str, Sequence[int]]]) -> Path:
    """``folder/{split}.csv`` in Ravi & Larochelle's format from ``{split: {synset: [1-based indices]}}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, synsets in splits.items():
        lines = ["filename,label"]
        lines += [f"{synset}{index:08d}.jpg,{synset}" for synset, indices in synsets.items() for index in indices]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def cifar100_pickles(train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, bytes]:
    """The ``train``, ``test`` and ``meta`` pickles of a small CIFAR-100 (Python 2 style: bytes keys)."""
    rng = np.random.default_rng(seed)
    coarse_of = {fine: CIFAR100_COARSE.index(c) for c, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}
    files = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(len(CIFAR100_FINE)), per_class))
        table = {
            b"filenames": [f"image_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{part} batch".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [coarse_of[CIFAR100_FINE[f]] for f in fine],
            b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
        }
        files[part] = pickle.dumps(table, protocol=2)
    meta = {
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE],
    }
    files["meta"] = pickle.dumps(meta, protocol=2)
    return files


def write_tar(path: Path, files: Mapping[str, bytes], top: str = "cifar-100-python") -> Path:
    """A ``.tar.gz`` holding ``top/<name>`` for each file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
