"""Omniglot, read straight from its zip files or from an unpacked folder."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.data.classes import SPLITS, ClassImages, check_splits
from fewshot.data.errors import DataError
from fewshot.data.folder import (
    Reader,
    decode_classes,
    default_workers,
    is_ignored_name,
    split_by_fractions,
)
from fewshot.data.images import is_image_name

# The small background sets of Brenden Lake's Omniglot repository (see the data README).
KNOWN_SHA256 = {
    "images_background_small1.zip": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
}
ROTATIONS = (0, 90, 180, 270)
SPLIT_MODES = ("alphabet", "character")

Parts = tuple[str, ...]


@dataclass(frozen=True)
class CharacterFolder:
    """One ``<Alphabet>/<character>`` folder found under the root, in a zip or on disk."""

    alphabet: str
    character: str
    location: str  # its path relative to the root, through a zip: what decides which copy is kept
    files: tuple[str, ...]
    readers: tuple[Reader, ...]

    @property
    def name(self) -> str:
        """The class name, ``"<Alphabet>/<character>"``."""
        return f"{self.alphabet}/{self.character}"


@dataclass(frozen=True)
class Tree:
    """The files and folders of one zip or one unpacked folder, as path parts."""

    location: str
    files: tuple[Parts, ...]
    dirs: frozenset[Parts]
    where: Callable[[Parts], str]
    reader: Callable[[Parts], Callable[[], bytes]]


class Omniglot:
    """Omniglot (Lake et al., 2015) read from the official zips, the small background zips,
    torchvision's ``omniglot-py`` folder or any unpacked copy, without extracting anything.

    Every ``<Alphabet>/<character>/<image>.png`` under ``root`` (a folder holding zips and/or
    unpacked folders in any mix, or a single zip) becomes one class ``"<Alphabet>/<character>"``;
    a character present in several archives is kept once, from the first in sorted path order.
    Images are grayscale, inverted (ink 255, background 0) and resized with LANCZOS.

    ``split="alphabet"`` puts whole alphabets in each split (``train_alphabets=None``: every
    alphabet not in val or test); ``split="character"`` splits the characters at random by
    ``split_fractions`` and ``split_seed``. Each of ``rotations`` (degrees) but 0 makes every
    character of ``rotate_splits`` a class of its own, ``"<Alphabet>/<character>/rot<deg>"``.
    """

    name = "omniglot"
    invert = True  # ink 255 on background 0 (fewshot.predict decodes users' images the same way)

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 28,
        split: str = "alphabet",
        val_alphabets: Sequence[str] = ("Early_Aramaic",),
        test_alphabets: Sequence[str] = ("Korean", "Tagalog"),
        train_alphabets: Sequence[str] | None = None,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        rotations: Sequence[int] = (0,),
        rotate_splits: Sequence[str] = ("train",),
        verify_checksums: bool = True,
        workers: int | None = None,
    ) -> None:
        if split not in SPLIT_MODES:
            raise DataError(
                f"Omniglot split must be one of {SPLIT_MODES}, got {split!r}; set data.source.split=alphabet "
                "(whole alphabets per split) or data.source.split=character (characters split by fractions)."
            )
        self.rotations = tuple(int(r) for r in rotations)
        bad = [r for r in self.rotations if r not in ROTATIONS]
        if bad or not self.rotations or len(set(self.rotations)) != len(self.rotations):
            raise DataError(f"rotations must be distinct values from {ROTATIONS}, got {list(rotations)}.")
        self.rotate_splits = tuple(rotate_splits)
        if any(s not in SPLITS for s in self.rotate_splits):
            raise DataError(f"rotate_splits must name splits from {SPLITS}, got {list(rotate_splits)}.")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.split = split
        self.val_alphabets = tuple(val_alphabets)
        self.test_alphabets = tuple(test_alphabets)
        self.train_alphabets = None if train_alphabets is None else tuple(train_alphabets)
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.verify_checksums = verify_checksums
        self.workers = default_workers(workers)

    def load(self) -> dict[str, ClassImages]:
        """Decode the characters of every split into memory (rotated copies included)."""
        with ExitStack() as archives:
            characters = self.find_characters(archives)
            names = self._split_characters(characters)
            readers = {n: characters[n].readers for s in SPLITS for n in names[s]}
            decoded = decode_classes(readers, 1, self.image_size, self.invert, self.workers)
        splits = {s: ClassImages.from_mapping(self._rotated(decoded, names[s], s)) for s in SPLITS}
        return check_splits(splits, self.name)

    def character_split(self) -> dict[str, list[str]]:
        """The character names (``"<Alphabet>/<character>"``) of each split, without decoding."""
        with ExitStack() as archives:
            return self._split_characters(self.find_characters(archives))

    def find_characters(self, archives: ExitStack) -> dict[str, CharacterFolder]:
        """Every character under ``root``, deduplicated by name; zips stay open in ``archives``."""
        found = [c for tree in self._trees(archives) for c in character_folders(tree)]
        if not found:
            raise DataError(
                f"No Omniglot images (<Alphabet>/<character>/<image>.png) found under {self.root}; "
                "point data.source.root at the folder holding the Omniglot zips (e.g. "
                "images_background_small1.zip) or their unpacked folders."
            )
        return deduplicate(found)

    def _trees(self, archives: ExitStack) -> list[Tree]:
        root = self.root
        if not root.exists():
            raise DataError(
                f"Omniglot root {root} not found; set data.source.root to the folder holding the "
                "Omniglot zips, e.g. ../shared/data/omniglot."
            )
        if root.is_file():
            return [self._zip_tree(root, root.name, archives)]
        files, dirs, zips = walk(root)
        trees = [Tree("", files, dirs, lambda p: str(root.joinpath(*p)), lambda p: root.joinpath(*p).read_bytes)]
        return trees + [self._zip_tree(root.joinpath(*z), "/".join(z), archives) for z in zips]

    def _zip_tree(self, path: Path, location: str, archives: ExitStack) -> Tree:
        if self.verify_checksums and path.name in KNOWN_SHA256:
            verify_sha256(path, KNOWN_SHA256[path.name])
        try:
            archive = archives.enter_context(zipfile.ZipFile(path))
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(
                f"{path} is not a readable zip file ({err}): it is truncated or corrupt; re-download it."
            ) from err
        files, dirs = [], set()
        for member in archive.namelist():
            parts = tuple(p for p in member.split("/") if p)
            if not parts or any(is_ignored_name(p) for p in parts):
                continue
            if member.endswith("/"):
                dirs.add(parts)
            else:
                files.append(parts)
                dirs.update(parts[:i] for i in range(1, len(parts)))
        return Tree(
            location,
            tuple(files),
            frozenset(dirs),
            lambda p: f"{'/'.join(p)} in {path}",
            lambda p: zip_reader(archive, path, "/".join(p)),
        )

    def _split_characters(self, characters: dict[str, CharacterFolder]) -> dict[str, list[str]]:
        if self.split == "character":
            return split_by_fractions(list(characters), self.split_fractions, self.split_seed)
        alphabets = self._split_alphabets(sorted({c.alphabet for c in characters.values()}))
        return {s: sorted(n for n, c in characters.items() if c.alphabet in alphabets[s]) for s in SPLITS}

    def _split_alphabets(self, found: list[str]) -> dict[str, set[str]]:
        chosen = {"val": self.val_alphabets, "test": self.test_alphabets}
        if self.train_alphabets is None:
            taken = set(self.val_alphabets) | set(self.test_alphabets)
            chosen["train"] = tuple(a for a in found if a not in taken)
        else:
            chosen["train"] = self.train_alphabets
        unknown = sorted({a for names in chosen.values() for a in names} - set(found))
        if unknown:
            raise DataError(
                f"Unknown Omniglot alphabets {unknown}; the data under {self.root} holds {found}. "
                "Fix data.source.train_alphabets / val_alphabets / test_alphabets."
            )
        owner: dict[str, str] = {}
        for split in SPLITS:
            for alphabet in chosen[split]:
                if owner.get(alphabet, split) != split:
                    raise DataError(
                        f"Alphabet {alphabet!r} is in both {owner[alphabet]}_alphabets and "
                        f"{split}_alphabets; each alphabet may belong to one split only."
                    )
                owner[alphabet] = split
        return {s: set(chosen[s]) for s in SPLITS}

    def _rotated(self, decoded: dict[str, torch.Tensor], names: Iterable[str], split: str) -> dict[str, torch.Tensor]:
        rotations = self.rotations if split in self.rotate_splits else (0,)
        classes = {}
        for name in names:
            for degrees in rotations:
                label = name if degrees == 0 else f"{name}/rot{degrees}"
                classes[label] = torch.rot90(decoded[name], k=degrees // 90, dims=(2, 3)).contiguous()
        return classes


def walk(root: Path) -> tuple[tuple[Parts, ...], frozenset[Parts], list[Parts]]:
    """Files, folders and zips under ``root`` as path parts, junk and hidden files skipped."""
    files, dirs, zips = [], set(), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
        here = Path(dirpath).relative_to(root).parts
        dirs.update(here + (d,) for d in dirnames)
        for name in sorted(filenames):
            if is_ignored_name(name):
                continue
            (zips if name.lower().endswith(".zip") else files).append(here + (name,))
    return tuple(files), frozenset(dirs), zips


def character_folders(tree: Tree) -> list[CharacterFolder]:
    """The ``<Alphabet>/<character>`` folders of one tree, checked for empty folders and stray files."""
    images = sorted(p for p in tree.files if len(p) >= 3 and is_image_name(p[-1]))
    by_folder: dict[Parts, list[Parts]] = {}
    for parts in images:
        by_folder.setdefault(parts[:-1], []).append(parts)
    for parts in tree.files:
        if parts[:-1] in by_folder and not is_image_name(parts[-1]):
            raise DataError(
                f"{tree.where(parts)} is not an image but lies in an Omniglot character folder; "
                "delete it or re-extract the archive."
            )
    alphabets = {folder[:-1] for folder in by_folder}
    for folder in sorted(tree.dirs):
        if folder[:-1] in alphabets and folder not in by_folder:
            raise DataError(
                f"Omniglot character folder {tree.where(folder)} has no images; delete it or re-extract the archive."
            )
    return [
        CharacterFolder(
            alphabet=folder[-2],
            character=folder[-1],
            location="/".join((tree.location, *folder) if tree.location else folder),
            files=tuple(p[-1] for p in members),
            readers=tuple((tree.where(p), tree.reader(p)) for p in members),
        )
        for folder, members in by_folder.items()
    ]


def deduplicate(found: list[CharacterFolder]) -> dict[str, CharacterFolder]:
    """One folder per ``<Alphabet>/<character>``: the first by location (sorted path)."""
    kept: dict[str, CharacterFolder] = {}
    for folder in sorted(found, key=lambda c: c.location):
        first = kept.setdefault(folder.name, folder)
        if first is not folder and first.files != folder.files:
            warnings.warn(
                f"Omniglot character {folder.name} differs between {first.location} and "
                f"{folder.location}; using {first.location}.",
                stacklevel=2,
            )
    return dict(sorted(kept.items()))


def verify_sha256(path: Path, expected: str) -> None:
    """Raise a DataError when the SHA-256 of ``path`` is not ``expected``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DataError(
            f"{path} is corrupt or incomplete: its SHA-256 is {digest.hexdigest()}, expected {expected}; "
            "re-download it (or set data.source.verify_checksums=false for a deliberately changed copy)."
        )


def zip_reader(archive: zipfile.ZipFile, path: Path, member: str) -> Callable[[], bytes]:
    """A reader of one zip member whose errors name the archive and the member."""

    def read() -> bytes:
        try:
            return archive.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise DataError(f"Cannot read {member} in {path} ({err}): the archive is corrupt; re-download it.") from err

    return read
