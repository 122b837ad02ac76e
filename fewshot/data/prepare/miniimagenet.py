"""Mini-ImageNet with Ravi & Larochelle's split, built from an ImageNet training folder and their CSVs.

The output is what ``fewshot.data.miniimagenet.MiniImageNet`` reads: ``<out>/images/<filename>``
(84 x 84 RGB JPEGs) plus ``<out>/{train,val,test}.csv`` (copies of the CSVs given).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from fewshot.data.classes import SPLITS
from fewshot.data.errors import DataError
from fewshot.data.folder import default_workers, is_ignored_name
from fewshot.data.miniimagenet import CsvRow, check_disjoint, read_split_csv
from fewshot.data.prepare.output import (
    Counts,
    Prepared,
    check_name,
    finish,
    finished_counts,
    open_partial,
    partial_dir,
)
from fewshot.data.prepare.resize import ImageJob, open_image, write_images
from fewshot.io import write_bytes_atomic

DATASET = "miniimagenet"
IMAGE_SIZE = 84
STANDARD_CLASSES = {"train": 64, "val": 16, "test": 20}
STANDARD_IMAGES_PER_CLASS = 600
CSV_SOURCE = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
# ``n0153282900000005.jpg``: the synset, then an 8-digit image index (see order_synset_files).
CSV_FILENAME = re.compile(r"^(n\d{8})(\d{8})\.jpg$")
# ``n01532829_10026.JPEG``: an ILSVRC-2012 training image, numbered within its synset.
IMAGENET_FILENAME = re.compile(r"^(n\d{8})_(\d+)\.jpe?g$", re.IGNORECASE)


def parse_csv_filename(row: CsvRow) -> tuple[str, int]:
    """The synset and the 1-based image index that a CSV filename encodes (``"n01532829"``, 5)."""
    match = CSV_FILENAME.match(row.filename)
    if match is None:
        raise DataError(
            f"{row.csv_path} line {row.line}: {row.filename!r} is not a Mini-ImageNet filename like "
            f"'n0153282900000005.jpg'; use the split CSVs of Ravi & Larochelle ({CSV_SOURCE})."
        )
    synset, index = match.group(1), int(match.group(2))
    if synset != row.label:
        raise DataError(
            f"{row.csv_path} line {row.line}: {row.filename} belongs to synset {synset} but is labelled "
            f"{row.label}; fix the label."
        )
    if index < 1:
        raise DataError(f"{row.csv_path} line {row.line}: image index 0 in {row.filename}; indices start at 1.")
    return synset, index


def imagenet_number(path: Path) -> int:
    """The number after the underscore of an ImageNet training file (``n01532829_10026.JPEG`` -> 10026)."""
    match = IMAGENET_FILENAME.match(path.name)
    if match is None:
        raise DataError(
            f"{path} is not an ILSVRC-2012 training image named '<synset>_<number>.JPEG'; the image "
            "numbering needs the original file names, so remove or rename the file."
        )
    return int(match.group(2))


def order_synset_files(files: Sequence[Path]) -> list[Path]:
    """One synset's training files in the order that the CSVs' 8-digit indices count.

    The convention implemented: sort the synset's files by the number after the underscore,
    as an integer (``_2`` before ``_10``; not by name, where ``_10`` would come first); the
    CSV index ``k`` is then the ``k``-th file of that list, counting from 1. So
    ``n0153282900000005.jpg`` is the fifth-lowest numbered file of ``n01532829/``. This is the
    convention of the generator scripts everyone uses to rebuild Mini-ImageNet from ImageNet;
    the selection of the original authors was never published, so a build by any convention
    can differ from their copies image by image. Change this function to use another one.
    """
    return sorted(files, key=imagenet_number)


def synset_files(imagenet: Path, synset: str) -> list[Path]:
    """The training images of ``synset`` in ``imagenet/<synset>/``, ordered by ``order_synset_files``."""
    folder = imagenet / synset
    if not folder.is_dir():
        if (imagenet / f"{synset}.tar").is_file():
            fix = f"extract {imagenet / synset}.tar into {folder}/ (as for every synset)"
        else:
            fix = "pass the ILSVRC-2012 training folder (one folder per synset, e.g. ILSVRC/Data/CLS-LOC/train)"
        raise DataError(f"Synset folder {folder} not found; {fix}.")
    files = [p for p in folder.iterdir() if p.is_file() and not is_ignored_name(p.name)]
    return order_synset_files(files)


def read_rows(csv_dir: Path) -> dict[str, list[CsvRow]]:
    """The rows of ``csv_dir/{train,val,test}.csv``, checked: names, labels, no repeats, disjoint splits."""
    for split in SPLITS:
        if not (csv_dir / f"{split}.csv").is_file():
            raise DataError(
                f"{csv_dir / split}.csv not found; pass --csv-dir with the folder holding Ravi & Larochelle's "
                f"train.csv, val.csv and test.csv ({CSV_SOURCE})."
            )
    rows = {split: read_split_csv(csv_dir / f"{split}.csv") for split in SPLITS}
    check_disjoint(rows)
    seen: dict[str, CsvRow] = {}
    for split in SPLITS:
        for row in rows[split]:
            where = f"{row.csv_path} line {row.line}"
            check_name(row.filename, "filename", where)  # becomes images/<filename> under --out
            check_name(row.label, "label", where)
            parse_csv_filename(row)
            first = seen.setdefault(row.filename, row)
            if first is not row:
                raise DataError(
                    f"{row.filename} is named twice: {first.csv_path} line {first.line} and {row.csv_path} "
                    f"line {row.line}; remove one."
                )
    return rows


def plan_jobs(imagenet: Path, rows: Mapping[str, Sequence[CsvRow]], images: Path) -> list[ImageJob]:
    """One job per CSV row: the ImageNet file its index picks, written to ``images/<filename>``."""
    ordered: dict[str, list[Path]] = {}
    jobs = []
    for split in SPLITS:
        for row in rows[split]:
            synset, index = parse_csv_filename(row)
            if synset not in ordered:
                ordered[synset] = synset_files(imagenet, synset)
            files = ordered[synset]
            if index > len(files):
                raise DataError(
                    f"{row.csv_path} line {row.line} names image {index} of synset {synset}, but "
                    f"{imagenet / synset} holds only {len(files)} images; pass the complete ILSVRC-2012 "
                    "training folder (every synset has at least 732 images)."
                )
            jobs.append(ImageJob(images / row.filename, partial(open_image, files[index - 1])))
    return jobs


def check_output(images: Path, rows: Mapping[str, Sequence[CsvRow]]) -> Counts:
    """``{split: {class: images}}`` of the build, raising when an image the CSVs name is missing."""
    present = set(os.listdir(images)) if images.is_dir() else set()
    missing = [row for split in SPLITS for row in rows[split] if row.filename not in present]
    if missing:
        raise DataError(
            f"{len(missing)} images named in the CSVs are missing from {images} after the build (first: "
            f"{missing[0].filename}); run the command again to finish it."
        )
    counts: Counts = {split: {} for split in SPLITS}
    for split in SPLITS:
        for row in rows[split]:
            counts[split][row.label] = counts[split].get(row.label, 0) + 1
    return counts


def standard_split_notes(counts: Counts) -> tuple[str, ...]:
    """A note when the CSVs are not the standard 64/16/20 classes of 600 images."""
    standard = all(
        len(counts[s]) == STANDARD_CLASSES[s] and set(counts[s].values()) == {STANDARD_IMAGES_PER_CLASS} for s in SPLITS
    )
    if standard:
        return ()
    shape = ", ".join(f"{s} {len(counts[s])} classes" for s in SPLITS)
    return (
        f"these CSVs give {shape}, not Ravi & Larochelle's 64/16/20 classes of {STANDARD_IMAGES_PER_CLASS} "
        "images; results are not comparable with published Mini-ImageNet numbers.",
    )


def prepare_miniimagenet(
    imagenet: str | os.PathLike[str],
    out: str | os.PathLike[str],
    csv_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Prepared:
    """Build Mini-ImageNet in ``out`` from the ILSVRC-2012 training folder ``imagenet``.

    Every image the CSVs name is taken from ``imagenet/<synset>/`` (see ``order_synset_files``
    for which file an index picks), resized once to 84 x 84 (LANCZOS, the whole image) and saved
    as a JPEG (quality 95) into ``<out>.partial/images/``, one atomic file at a time; a run that
    stops resumes there. When every image is there, the CSVs are copied next to them and the
    folder is renamed to ``out``. A complete ``out`` is left as it is. ``csv_dir`` holds ``train.csv``,
    ``val.csv`` and ``test.csv`` (None: the current folder).
    """
    out_path = Path(out).expanduser()
    done = finished_counts(out_path, DATASET)
    if done is not None:
        return Prepared(DATASET, out_path, done, skipped=True)
    csv_path = Path.cwd() if csv_dir is None else Path(csv_dir).expanduser()
    rows = read_rows(csv_path)
    source = Path(imagenet).expanduser()
    if not source.is_dir():
        raise DataError(
            f"ImageNet training folder {source} not found; pass --imagenet <ILSVRC-2012 train folder> "
            "holding one folder of JPEGs per synset."
        )
    jobs = plan_jobs(source, rows, partial_dir(out_path) / "images")  # every check before any writing
    build = open_partial(out_path, DATASET)
    written, reused = write_images(jobs, IMAGE_SIZE, default_workers(workers), "Mini-ImageNet", progress)
    counts = check_output(build / "images", rows)
    for split in SPLITS:
        write_bytes_atomic(build / f"{split}.csv", (csv_path / f"{split}.csv").read_bytes())
    finish(build, out_path, DATASET, counts)
    return Prepared(DATASET, out_path, counts, written, reused, notes=standard_split_notes(counts))
