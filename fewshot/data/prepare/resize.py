"""Resizing and writing many images in parallel threads, skipping those already written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fewshot.data.errors import DataError
from fewshot.io import temporary_for

# LANCZOS, as the dataset readers use when they resize; the whole image is squeezed to a
# square (no crop), as in the usual Mini-ImageNet builds.
RESAMPLING = Image.Resampling.LANCZOS
# JPEG quality 95 without chroma subsampling: little loss on top of the original JPEG.
SAVE_OPTIONS = {".jpg": {"format": "JPEG", "quality": 95, "subsampling": 0}, ".png": {"format": "PNG"}}
# Futures kept in flight at once: enough to keep every thread busy, few enough to stop soon
# after an error or Ctrl-C.
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class ImageJob:
    """One output image: ``target`` (``.jpg`` or ``.png``) and ``load``, which returns its source image."""

    target: Path
    load: Callable[[], Image.Image]


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """``image`` as RGB, resized to ``size`` x ``size`` with LANCZOS (unchanged when already that size)."""
    rgb = image.convert("RGB")
    if rgb.size == (size, size):
        return rgb
    return rgb.resize((size, size), RESAMPLING)


def is_written(path: Path, size: int) -> bool:
    """True when ``path`` is a readable ``size`` x ``size`` RGB image (a finished output file)."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == (size, size) and image.mode == "RGB"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def open_image(path: Path) -> Image.Image:
    """Decode the image file ``path`` fully, raising a DataError that names it when it is unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"Cannot decode image {path}: {err}. The file is corrupt or truncated; restore it from the "
            "original archive and run the command again (finished images are kept)."
        ) from err


def write_image(job: ImageJob, size: int) -> bool:
    """Write one job's image atomically; False (and nothing done) when a valid one is already there."""
    if is_written(job.target, size):
        return False
    image = resize_square(job.load(), size)
    options = SAVE_OPTIONS.get(job.target.suffix.lower())
    if options is None:
        raise DataError(f"Cannot write {job.target}: only {sorted(SAVE_OPTIONS)} outputs are supported.")
    with temporary_for(job.target) as tmp:
        image.save(tmp, **options)
    return True


def write_images(
    jobs: Sequence[ImageJob], size: int, workers: int, description: str, progress: bool = True
) -> tuple[int, int]:
    """Run ``jobs`` in ``workers`` threads with a progress bar; return ``(written, reused)``.

    The first error stops the run: jobs not started are dropped, finished files stay, so
    running again resumes where this run stopped.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    written = reused = 0
    with Progress(*columns, disable=not progress) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(description, total=len(jobs))
        pending: set[Future[bool]] = set()
        queue = iter(jobs)
        try:
            while True:
                while len(pending) < workers * IN_FLIGHT_PER_WORKER:
                    job = next(queue, None)
                    if job is None:
                        break
                    pending.add(pool.submit(write_image, job, size))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.result():
                        written += 1
                    else:
                        reused += 1
                    bar.advance(task)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return written, reused
