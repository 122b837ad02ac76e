"""A small offline image-classification set for the MLP optimizee: procedural glyphs, flattened."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.data.embedded import EmbeddedGlyphs
from fewshot.learned_optimizer.errors import ConfigError, check_positive


@dataclass(frozen=True)
class ImageClassification:
    """Flattened images, float32 ``[N, D]`` in ``[0, 1]``, and their int64 labels ``[N]``, all in memory."""

    images: Tensor
    labels: Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        """``D``, the length of a flattened image."""
        return self.images.shape[1]


def glyph_classification(
    n_classes: int = 10, images_per_class: int = 500, image_size: int = 28, seed: int = 0
) -> ImageClassification:
    """The first ``n_classes`` classes of the embedded glyphs (``fewshot.data.embedded``), flattened:
    ``N = n_classes * images_per_class`` images ``[N, image_size^2]``, class-major.
    """
    if n_classes < 2:
        raise ConfigError(f"problem.data.n_classes must be at least 2, got {n_classes}: classify 2 or more classes.")
    check_positive("problem.data.images_per_class", images_per_class)
    source = EmbeddedGlyphs(
        train_classes=n_classes,
        val_classes=1,
        test_classes=1,
        images_per_class=images_per_class,
        image_size=image_size,
        seed=seed,
        name="glyphs",
    )
    pixels = torch.cat(source.generate(n_classes))
    images = pixels.flatten(1).float() / 255.0
    labels = torch.arange(n_classes).repeat_interleave(images_per_class)
    return ImageClassification(images=images, labels=labels, n_classes=n_classes)


__all__ = ["ImageClassification", "glyph_classification"]
