"""CIFAR-FS and FC100 built from the CIFAR-100 python archive, as ``<out>/<split>/<class>/<image>.png``.

That is the split layout of ``fewshot.data.folder.ImageFolder``, which ``data=cifar_fs`` and
``data=fc100`` read. Every class keeps all its 600 images (CIFAR-100's 500 training and 100
test images together), named ``train_<index>.png`` / ``test_<index>.png`` after their place in
the archive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from PIL import Image

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.folder import default_workers
from fewshot.data.prepare.cifar_archive import ARCHIVE_NAME, SIDE, Cifar100, read_cifar100
from fewshot.data.prepare.cifar_splits import CIFAR_FS_CLASSES, FC100_SUPERCLASSES
from fewshot.data.prepare.output import (
    Counts,
    Prepared,
    count_class_files,
    finish,
    finished_counts,
    open_partial,
    partial_dir,
)
from fewshot.data.prepare.resize import ImageJob, write_images

IMAGES_PER_CLASS = 600

ClassSplit = dict[str, list[str]]


def cifar_fs_classes(archive: Cifar100) -> ClassSplit:
    """CIFAR-FS's fine classes per split (64/16/20), checked against the archive's class names."""
    splits = {split: sorted(CIFAR_FS_CLASSES[split]) for split in SPLITS}
    check_class_split(splits, archive, "CIFAR-FS")
    return splits


def fc100_classes(archive: Cifar100) -> ClassSplit:
    """FC100's fine classes per split (60/20/20): every class of the split's superclasses."""
    superclass_of = archive.superclass_of()
    unknown = [s for split in SPLITS for s in FC100_SUPERCLASSES[split] if s not in archive.coarse_names]
    if unknown:
        raise DataError(
            f"{archive.where} has no superclasses {unknown}; FC100 needs CIFAR-100's 20 superclasses, so "
            f"pass the original {ARCHIVE_NAME}."
        )
    splits = {split: sorted(c for c, s in superclass_of.items() if s in FC100_SUPERCLASSES[split]) for split in SPLITS}
    check_class_split(splits, archive, "FC100")
    return splits


def check_class_split(splits: Mapping[str, Sequence[str]], archive: Cifar100, dataset: str) -> None:
    """Raise unless ``splits`` are disjoint and cover exactly the archive's 100 fine classes."""
    named = [c for split in SPLITS for c in splits[split]]
    unknown = sorted(set(named) - set(archive.fine_names))
    if unknown:
        raise DataError(
            f"{dataset} classes {unknown[:5]} are not in {archive.where}; pass the original {ARCHIVE_NAME}."
        )
    if len(named) != len(set(named)) or set(named) != set(archive.fine_names):
        raise DataError(
            f"The {dataset} split does not cover CIFAR-100's {len(archive.fine_names)} classes exactly once "
            f"({len(named)} listed, {len(set(named))} distinct); the archive is not CIFAR-100."
        )


def check_images_per_class(archive: Cifar100, expected: int) -> None:
    """Raise unless every fine class has ``expected`` images in train and test together."""
    wrong = {c: n for c, n in archive.images_per_class().items() if n != expected}
    if wrong:
        first = next(iter(wrong))
        raise DataError(
            f"{archive.where} holds {wrong[first]} images of class {first!r} ({len(wrong)} classes differ), "
            f"CIFAR-100 has {expected} per class; the archive is incomplete, download {ARCHIVE_NAME} again."
        )


def plan_jobs(archive: Cifar100, splits: Mapping[str, Sequence[str]], root: Path) -> list[ImageJob]:
    """One job per image: ``root/<split>/<class>/<part>_<index>.png`` from its archive pixels."""
    split_of = {c: split for split in SPLITS for c in splits[split]}
    jobs = []
    for part in archive.parts:
        for index, label in enumerate(part.fine.tolist()):
            name = archive.fine_names[label]
            target = root / split_of[name] / name / f"{part.name}_{index:05d}.png"
            load = partial(Image.fromarray, part.pixels[index], "RGB")
            jobs.append(ImageJob(target, load))
    return jobs


def check_output(root: Path, splits: Mapping[str, Sequence[str]], expected: int) -> Counts:
    """``{split: {class: images}}`` found under ``root``, raising unless it is exactly the split planned."""
    counts = {split: count_class_files(root / split) for split in SPLITS}
    for split in SPLITS:
        want = dict.fromkeys(splits[split], expected)
        if counts[split] != want:
            wrong = sorted(set(want) ^ set(counts[split])) or [c for c in want if counts[split][c] != expected]
            raise DataError(
                f"{root / split} does not hold the planned {len(want)} classes of {expected} images (first "
                f"difference: class {wrong[0]!r}); delete {root} and run the command again."
            )
    return counts


# how each benchmark splits CIFAR-100's classes
CLASS_SPLITS: dict[str, Callable[[Cifar100], ClassSplit]] = {"cifar_fs": cifar_fs_classes, "fc100": fc100_classes}


def prepare_cifar(
    dataset: str,
    cifar100: str | os.PathLike[str],
    out: str | os.PathLike[str],
    workers: int | None = None,
    progress: bool = True,
    images_per_class: int = IMAGES_PER_CLASS,
) -> Prepared:
    """Build ``dataset`` (``cifar_fs``: Bertinetto et al., 2019; ``fc100``: Oreshkin et al., 2018) in ``out``
    (``out/{train,val,test}/<class>/<image>.png``, 32 x 32) from ``cifar-100-python.tar.gz`` or its folder.

    ``workers`` threads write the PNGs (None: ``min(8, cpu count)``); ``images_per_class`` is 600 in
    CIFAR-100 (smaller in tests).
    """
    out_path = Path(out).expanduser()
    done = finished_counts(out_path, dataset)
    if done is not None:
        return Prepared(dataset, out_path, done, skipped=True)
    archive = read_cifar100(cifar100)
    check_images_per_class(archive, images_per_class)
    splits = CLASS_SPLITS[dataset](archive)
    jobs = plan_jobs(archive, splits, partial_dir(out_path))
    build = open_partial(out_path, dataset)
    written, reused = write_images(jobs, SIDE, default_workers(workers), dataset, progress)
    counts = check_output(build, splits, images_per_class)
    finish(build, out_path, dataset, counts)
    return Prepared(dataset, out_path, counts, written, reused)
