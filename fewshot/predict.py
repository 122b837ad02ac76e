"""Classify your own images with a trained method: adapt on a support folder, label a query folder.

    python -m fewshot.predict ckpt_path=<checkpoint> support=<folder of class folders> \\
        query=<folder of images> output=predictions.csv

The support folder holds one sub-folder per class (its name is the class); the query folder
holds the images to label. Images are decoded as in training (the checkpoint's image size,
channels and normalisation). The CSV has one row per query image: file, predicted class,
confidence (softmax probability of the prediction).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fewshot.data.episode import Episode
from fewshot.data.errors import DataError
from fewshot.data.folder import find_class_folders, is_ignored_name, walk_folders
from fewshot.data.images import decode_image, is_image_name, normalise, warn_constant_images
from fewshot.io import OutputPathError, check_not_an_input, check_writable_file, write_text_atomic
from fewshot.run.checkpoint import checkpoint_config, load

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    """Command-line options of ``python -m fewshot.predict`` (``key=value``)."""

    ckpt_path: str = MISSING
    support: str = MISSING
    query: str = MISSING
    output: str = "predictions.csv"
    device: str = "cpu"
    # null: decode like the training data; true/false: force inverting pixel values
    invert: bool | None = None
    # queries scored per forward call; null: an evaluation episode's (the checkpoint's n_way * n_query)
    batch_size: int | None = None


@dataclass(frozen=True)
class Prediction:
    """The label given to one query image."""

    file: str
    label: str
    confidence: float


@dataclass(frozen=True)
class ImageFormat:
    """How a checkpoint's training data was decoded and normalised."""

    image_size: int
    channels: int
    invert: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def of_checkpoint(cls, ckpt_path: str | Path) -> ImageFormat:
        """Read the image format from the config stored in a checkpoint."""
        data = checkpoint_config(ckpt_path).data
        return cls(
            image_size=int(data.image_size),
            channels=int(data.channels),
            invert=bool(data.source.get("invert", getattr(get_class(data.source._target_), "invert", False))),
            mean=None if data.get("mean") is None else tuple(data.mean),
            std=None if data.get("std") is None else tuple(data.std),
        )

    def read(self, path: Path) -> torch.Tensor:
        """Decode and normalise one image file into float ``[C, H, W]``."""
        image = decode_image(path.read_bytes(), str(path), self.channels, self.image_size, self.invert)
        mean, std = (None if stats is None else torch.tensor(stats) for stats in (self.mean, self.std))
        return normalise(image, mean, std)


def support_files(folder: Path) -> dict[str, list[Path]]:
    """``{class: image paths}`` of a support folder, with the same number K of images per class
    (the episode contract); classes with more images keep their first K (sorted), with a warning."""
    if not folder.is_dir():
        raise DataError(f"Support folder {folder} does not exist; pass support=<folder with one sub-folder per class>.")
    classes = find_class_folders(folder)
    for name in classes:
        check_utf8_name(name, "support class folder")
    if len(classes) < 2:
        raise DataError(f"Support folder {folder} has {len(classes)} class folder(s); a prediction needs at least 2.")
    n_shot = min(len(files) for files in classes.values())
    trimmed = [name for name, files in classes.items() if len(files) > n_shot]
    if trimmed:
        log.warning(
            "Support classes have different numbers of images; using the first %d of each (trimmed: %s).",
            n_shot,
            ", ".join(trimmed[:5]),
        )
    return {name: files[:n_shot] for name, files in classes.items()}


def query_files(folder: Path) -> list[Path]:
    """The images of a query folder (sorted; sub-folders included, symlinked ones followed)."""
    if not folder.is_dir():
        raise DataError(f"Query folder {folder} does not exist; pass query=<folder of images to classify>.")
    files = []
    for here, dirnames, filenames in walk_folders(folder):  # symlinked sub-folders too, loops refused
        dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
        files += [here / name for name in filenames if not is_ignored_name(name)]
    files.sort()
    others = [p for p in files if not is_image_name(p.name)]
    if others:
        raise DataError(
            f"{others[0]} in the query folder is not an image (known suffixes: .png, .jpg, ...); remove it."
        )
    if not files:
        raise DataError(f"Query folder {folder} holds no images; put the images to classify in it.")
    for path in files:
        check_utf8_name(path.relative_to(folder), "query file")
    return files


def check_utf8_name(name: Path | str, what: str) -> None:
    """Refuse a file or folder name that is not valid UTF-8 (it could not be written to the CSV)."""
    try:
        str(name).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise DataError(
            f"The {what} name {shown} is not valid UTF-8, so the predictions file could not name it; rename it "
            "(e.g. `convmv -f latin1 -t utf-8`)."
        ) from None


def read_images(paths: list[Path], image_format: ImageFormat, what: str) -> torch.Tensor:
    """Images ``[n, C, H, W]``, with a warning naming any that decode to one flat colour."""
    images = torch.stack([image_format.read(p) for p in paths])
    warn_constant_images([str(p) for p in paths], list(images), what)
    return images


def build_episode(support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor) -> Episode:
    """A one-episode batch of the support and a batch of queries (their labels are unknown: zeros)."""
    return Episode(
        support_images=support_images[None],
        support_labels=support_labels[None],
        query_images=query_images[None],
        query_labels=torch.zeros(1, len(query_images), dtype=torch.long),  # never used to predict
        n_way=int(support_labels.max()) + 1,
        index=torch.tensor([0]),
    )


def adapt_and_predict(method: Any, episode: Episode) -> torch.Tensor:
    """Class probabilities ``[Q, N]`` of the episode's queries after adapting ``method`` to its support.

    Runs as evaluation does (``torch.no_grad``): a method that adapts by gradient steps turns
    gradients on for its support itself, so no graph of the queries is kept.
    """
    method.eval()
    device = next(iter(method.parameters())).device
    with torch.no_grad():
        logits = method(episode.to(device))
    return torch.softmax(logits[0].float(), dim=-1).cpu()


def predict_folders(
    ckpt_path: str | Path,
    support: str | Path,
    query: str | Path,
    device: str = "cpu",
    invert: bool | None = None,
    batch_size: int | None = None,
) -> list[Prediction]:
    """Load a checkpoint, adapt it to the support folder and label every query image.

    The queries are decoded and scored ``batch_size`` at a time (default: an evaluation episode's,
    the checkpoint's ``n_way * n_query``), each batch with the whole support, so memory does not
    grow with the number of query files; a method whose queries are scored independently gives the
    same labels for any batch size.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or null, got {batch_size!r}; set e.g. batch_size=64.")
    image_format = ImageFormat.of_checkpoint(ckpt_path)
    if invert is not None:
        image_format = ImageFormat(**{**image_format.__dict__, "invert": invert})
    method = load(ckpt_path, map_location=device)
    queries = query_files(Path(query))
    classes = support_files(Path(support))
    names = list(classes)
    # class-major, as sampled episodes; every class has the same number of images (support_files)
    support_images = read_images([p for files in classes.values() for p in files], image_format, "support images")
    support_labels = torch.arange(len(names)).repeat_interleave(len(classes[names[0]]))
    data = checkpoint_config(ckpt_path).data
    size = batch_size or int(data.n_way) * int(data.n_query)
    probabilities = []
    for start in range(0, len(queries), size):
        images = read_images(queries[start : start + size], image_format, "query images")
        probabilities.append(adapt_and_predict(method, build_episode(support_images, support_labels, images)))
    confidence, label = torch.cat(probabilities).max(dim=-1)
    root = Path(query)
    return [
        Prediction(file=str(path.relative_to(root)), label=names[int(k)], confidence=float(c))
        for path, k, c in zip(queries, label, confidence)
    ]


def write_predictions(path: str | Path, predictions: list[Prediction]) -> Path:
    """Write predictions as CSV (file, prediction, confidence), atomically: an old file stays whole on failure."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["file", "prediction", "confidence"])
    for p in predictions:
        writer.writerow([p.file, p.label, f"{p.confidence:.6f}"])
    return write_text_atomic(path, buffer.getvalue())


def input_files(cfg: PredictConfig) -> list[Path]:
    """Every file the command reads: the checkpoint, every support image (also those past the
    first K of a class) and every query image."""
    support, query = Path(cfg.support), Path(cfg.query)
    classes = find_class_folders(support) if support.is_dir() else {}
    queries = query_files(query) if query.is_dir() else []
    return [Path(cfg.ckpt_path), *(p for files in classes.values() for p in files), *queries]


def parse_args(argv: list[str]) -> PredictConfig:
    """``key=value`` arguments checked against :class:`PredictConfig`."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig), OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ValueError(f"missing {', '.join(f'{k}=...' for k in missing)}")
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError) as err:
        raise SystemExit(
            f"error: {str(err).splitlines()[0]}.\nusage: python -m fewshot.predict ckpt_path=<ckpt> "
            "support=<folder of class folders> query=<folder of images> [output=predictions.csv] [device=cpu]"
        ) from err


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_writable_file(cfg.output)  # before loading and adapting
        check_not_an_input(cfg.output, input_files(cfg), "output=<file>, e.g. output=predictions.csv")
        predictions = predict_folders(cfg.ckpt_path, cfg.support, cfg.query, cfg.device, cfg.invert, cfg.batch_size)
        path = write_predictions(cfg.output, predictions)
    except (DataError, FileNotFoundError, ValueError, OutputPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in predictions[:20]:
        print(f"{p.file}\t{p.label}\t{p.confidence:.3f}")
    if len(predictions) > 20:
        print(f"... {len(predictions) - 20} more")
    print(f"wrote {len(predictions)} predictions to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
