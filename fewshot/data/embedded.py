"""The embedded default dataset: procedurally drawn glyphs that need no download.

Each class is a random glyph of a few pen strokes (Bezier curves or polylines); each image
of a class is a random distortion of that glyph: jittered control points, an affine warp,
a stroke-width change, an occasional pen skip and pixel noise. Images look like Omniglot
after inversion: grayscale uint8, ink high, background 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fewshot.data.classes import SPLITS, ClassImages, check_splits
from fewshot.data.errors import DataError

MAX_STROKES = 4
CONTROL_POINTS = 4
# Beyond any pixel: the squared distance to it can never win the minimum.
FAR = 1.0e4
# (sample, pixel) pairs rendered at once: bounds memory at any image size (~200 MB).
RENDER_PAIRS = 1 << 22


def curve_basis(n_points: int) -> np.ndarray:
    """Weights ``[4 kinds, n_points, 4 control points]`` that turn 4 control points into ``n_points``
    curve points (evenly spaced in ``t``) for each stroke kind: quadratic and cubic Bezier curves,
    polylines through 3 or 4 control points.
    """
    t = np.linspace(0.0, 1.0, n_points)
    s = 1.0 - t
    zero = np.zeros_like(t)
    quadratic = np.stack([s * s, 2 * s * t, t * t, zero], axis=1)
    cubic = np.stack([s**3, 3 * s * s * t, 3 * s * t * t, t**3], axis=1)
    return np.stack([quadratic, cubic, polyline_basis(t, 3), polyline_basis(t, 4)])


def polyline_basis(t: np.ndarray, n_vertices: int) -> np.ndarray:
    """Piecewise-linear ("hat") weights ``[len(t), 4]`` of a polyline through ``n_vertices`` points."""
    position = t[:, None] * (n_vertices - 1) - np.arange(CONTROL_POINTS)[None, :]
    weights = np.clip(1.0 - np.abs(position), 0.0, 1.0)
    weights[:, n_vertices:] = 0.0
    return weights


@dataclass(frozen=True)
class Glyph:
    """One class's template: ``kinds [S]`` int, ``control [S, 4, 2]`` in [-1, 1] image
    coordinates (x right, y down) and ``present [S]`` bool, with ``S = MAX_STROKES``."""

    kinds: np.ndarray
    control: np.ndarray
    present: np.ndarray


@dataclass(frozen=True)
class Distortion:
    """How far the images of a class stray from its glyph; see EmbeddedGlyphs for each field."""

    rotation: float
    scale: float
    shear: float
    translation: float
    point_jitter: float
    stroke_width: float
    width_jitter: float
    dropout: float
    noise: float


def draw_glyph(rng: np.random.Generator, basis: np.ndarray) -> Glyph:
    """A random glyph of 2-4 strokes, centred and scaled to span about 65% of the image."""
    n_strokes = int(rng.integers(2, MAX_STROKES + 1))
    kinds = rng.integers(0, len(basis), size=MAX_STROKES)
    control = np.zeros((MAX_STROKES, CONTROL_POINTS, 2))
    for stroke in range(n_strokes):
        control[stroke] = draw_stroke(rng, control[:stroke])
    present = np.arange(MAX_STROKES) < n_strokes
    points = np.einsum("stk,skd->std", basis[kinds[present]], control[present]).reshape(-1, 2)
    low, high = points.min(axis=0), points.max(axis=0)
    span = max(float((high - low).max()), 1e-3)
    control = (control - (low + high) / 2) * (1.3 / span)
    return Glyph(kinds=kinds, control=control, present=present)


def draw_stroke(rng: np.random.Generator, earlier: np.ndarray) -> np.ndarray:
    """Control points ``[4, 2]`` of a pen stroke: a random walk of turning steps.

    Half of the later strokes start on a control point of an earlier stroke, so that glyphs
    are often connected, like handwritten characters.
    """
    if len(earlier) and rng.random() < 0.5:
        start = earlier[rng.integers(len(earlier)), rng.integers(CONTROL_POINTS)]
    else:
        start = rng.uniform(-0.7, 0.7, size=2)
    angle = rng.uniform(0.0, 2 * math.pi)
    points = [start]
    for _ in range(CONTROL_POINTS - 1):
        angle += rng.uniform(-2.0, 2.0)
        step = rng.uniform(0.35, 0.8)
        points.append(np.clip(points[-1] + step * np.array([math.cos(angle), math.sin(angle)]), -0.9, 0.9))
    return np.stack(points)


def affine_matrices(rng: np.random.Generator, n: int, distortion: Distortion) -> np.ndarray:
    """Random ``[n, 2, 2]`` warps: rotation @ shear @ (anisotropic) scale."""
    theta = np.deg2rad(rng.uniform(-distortion.rotation, distortion.rotation, size=n))
    size = rng.uniform(1.0 - distortion.scale, 1.0 + distortion.scale, size=n)
    aspect = rng.uniform(1.0 - distortion.scale / 2, 1.0 + distortion.scale / 2, size=n)
    shear = rng.uniform(-distortion.shear, distortion.shear, size=n)
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_scale = np.zeros((n, 2, 2))
    shear_scale[:, 0, 0] = size * aspect
    shear_scale[:, 0, 1] = shear * size / aspect
    shear_scale[:, 1, 1] = size / aspect
    return np.einsum("nij,njk->nik", rotate, shear_scale)


def pen_skips(rng: np.random.Generator, glyph: Glyph, n: int, n_points: int, dropout: float) -> np.ndarray:
    """Bool ``[n, S, n_points]``: True where a sample point is lifted off the paper.

    With probability ``dropout`` an image loses a stretch of 15-30% of one of its strokes.
    """
    skips = np.zeros((n, MAX_STROKES, n_points), dtype=bool)
    hit = rng.random(n) < dropout
    stroke = rng.choice(np.flatnonzero(glyph.present), size=n)
    start = rng.uniform(0.1, 0.6, size=n)
    length = rng.uniform(0.15, 0.3, size=n)
    t = np.linspace(0.0, 1.0, n_points)
    gap = (t[None, :] >= start[:, None]) & (t[None, :] < (start + length)[:, None])
    skips[np.arange(n), stroke] = gap & hit[:, None]
    return skips


def draw_images(
    rng: np.random.Generator,
    glyph: Glyph,
    n: int,
    image_size: int,
    basis: np.ndarray,
    distortion: Distortion,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random distortions of one glyph, ready for rendering: float32 curve samples ``[n, S * n_points, 2]``
    in pixel coordinates (x, y; absent strokes and pen skips moved far outside the image), stroke
    half-widths ``[n]`` in pixels and additive pixel noise ``[n, image_size, image_size]`` in ink units.
    """
    n_points = basis.shape[1]
    control = glyph.control[None] + rng.normal(0.0, distortion.point_jitter, size=(n, *glyph.control.shape))
    warp = affine_matrices(rng, n, distortion)
    shift = rng.uniform(-distortion.translation, distortion.translation, size=(n, 1, 1, 2))
    # Every basis sums to 1, so warping the control points warps the whole curve.
    control = (control @ warp.transpose(0, 2, 1)[:, None] + shift + 1.0) * (image_size / 2) - 0.5
    points = basis[glyph.kinds] @ control
    lifted = pen_skips(rng, glyph, n, n_points, distortion.dropout) | ~glyph.present[None, :, None]
    points[lifted] = FAR
    width = rng.uniform(1.0 - distortion.width_jitter, 1.0 + distortion.width_jitter, size=n)
    half_width = distortion.stroke_width * image_size / 2 * width
    noise = rng.standard_normal(size=(n, image_size, image_size), dtype=np.float32) * np.float32(distortion.noise)
    return points.reshape(n, -1, 2).astype(np.float32), half_width.astype(np.float32), noise


def render(points: Tensor, half_width: Tensor, image_size: int) -> Tensor:
    """Anti-aliased strokes: ink in [0, 1], float32 ``[B, image_size, image_size]``, falling from 1 to 0
    over the pixel at the stroke's edge, from curve samples ``points [B, N, 2]`` in pixel coordinates
    (pixel ``j`` is centred on ``j``) and stroke half-widths ``[B]`` in pixels.

    Each curve sample writes its squared distance into the few pixels around it, keeping
    the minimum per pixel. Only exactly rounded elementwise ops and an order-free minimum
    are used, so the result does not depend on thread count or SIMD width.
    """
    reach = ink_reach(half_width)
    pad = 2 * reach + 3
    side = image_size + 2 * pad
    # Far samples are pulled in just far enough that their windows stay in the padding.
    points = points.clamp(-(reach + 2.0), image_size + reach + 1.0)
    offsets = torch.arange(-reach, reach + 2, dtype=torch.float32)
    corner = points.floor()
    delta = points[..., None] - corner[..., None] - offsets
    d2 = (delta[..., 1, :, None] * delta[..., 1, :, None]) + (delta[..., 0, None, :] * delta[..., 0, None, :])
    window = (offsets.long()[:, None] * side + offsets.long()[None, :]).flatten()
    anchor = ((corner[..., 1] + pad) * side + corner[..., 0] + pad).long()
    index = (anchor[..., None] + window).flatten(1)
    nearest = torch.full((points.shape[0], side * side), float("inf"))
    nearest.scatter_reduce_(1, index, d2.flatten(1), reduce="amin")
    nearest = nearest.view(-1, side, side)[:, pad : pad + image_size, pad : pad + image_size]
    return (half_width[:, None, None] + 0.5 - nearest.sqrt()).clamp(0.0, 1.0)


def ink_reach(half_width: Tensor) -> int:
    """Pixels from a curve sample that its ink can reach: ``ceil(max half-width + 0.5)``."""
    return math.ceil(float(half_width.max()) + 0.5) if len(half_width) else 1


def render_all(points: Tensor, half_width: Tensor, image_size: int) -> Tensor:
    """``render`` in chunks of images small enough to bound the memory it takes."""
    window = (2 * ink_reach(half_width) + 2) ** 2
    rows = max(1, RENDER_PAIRS // (max(points.shape[1], 1) * window))
    chunks = [render(points[i : i + rows], half_width[i : i + rows], image_size) for i in range(0, len(points), rows)]
    return torch.cat(chunks)


class EmbeddedGlyphs:
    """Procedural "glyphs": a few-shot dataset generated in memory, with no download.

    Class ``i`` (named ``glyph0000``, ``glyph0001``, ...) is drawn from a numpy generator
    seeded with ``(seed, i)``: its glyph, then its images. Train, val and test take
    consecutive, disjoint index ranges. The result is a pure function of the arguments.

    The distortions: ``rotation`` is the largest rotation in degrees; ``scale`` the largest
    relative change of size (half of it of aspect ratio); ``shear`` the largest horizontal shear;
    ``translation`` the largest shift and ``point_jitter`` the control-point noise (std), both as
    fractions of the half-side of the image; ``stroke_width`` the mean stroke width as a fraction
    of the side, ``width_jitter`` its largest relative change; ``dropout`` the probability of a pen
    skip; ``noise`` the std of the pixel noise (1 = full ink). ``points_per_stroke=0`` samples
    enough curve points for ``image_size``.
    """

    def __init__(
        self,
        train_classes: int = 400,
        val_classes: int = 100,
        test_classes: int = 200,
        images_per_class: int = 20,
        image_size: int = 28,
        seed: int = 0,
        name: str = "embedded",
        rotation: float = 20.0,
        scale: float = 0.15,
        shear: float = 0.2,
        translation: float = 0.25,
        point_jitter: float = 0.07,
        stroke_width: float = 0.08,
        width_jitter: float = 0.3,
        dropout: float = 0.15,
        noise: float = 0.05,
        points_per_stroke: int = 0,
    ) -> None:
        self.name = name
        self.counts = {"train": int(train_classes), "val": int(val_classes), "test": int(test_classes)}
        self.images_per_class = int(images_per_class)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.distortion = Distortion(
            rotation=float(rotation),
            scale=float(scale),
            shear=float(shear),
            translation=float(translation),
            point_jitter=float(point_jitter),
            stroke_width=float(stroke_width),
            width_jitter=float(width_jitter),
            dropout=float(dropout),
            noise=float(noise),
        )
        # Dense enough that neighbouring samples of one stroke sit about a pixel apart.
        self.points_per_stroke = int(points_per_stroke) or self.image_size + 4
        self._check()

    def _check(self) -> None:
        for split, count in self.counts.items():
            if count < 1:
                raise DataError(f"{self.name}: {split}_classes must be at least 1, got {count}.")
        if self.images_per_class < 1:
            raise DataError(f"{self.name}: images_per_class must be at least 1, got {self.images_per_class}.")
        if self.image_size < 8:
            raise DataError(f"{self.name}: image_size must be at least 8, got {self.image_size}.")
        if self.seed < 0:
            raise DataError(f"{self.name}: seed must be non-negative, got {self.seed}.")
        if not 0.0 <= self.distortion.dropout <= 1.0:
            raise DataError(f"{self.name}: dropout is a probability, got {self.distortion.dropout}.")

    def class_names(self) -> dict[str, list[str]]:
        """The zero-padded class names of each split, in index (= sorted) order."""
        total = sum(self.counts.values())
        digits = max(4, len(str(total - 1)))
        names, start = {}, 0
        for split in SPLITS:
            names[split] = [f"glyph{i:0{digits}d}" for i in range(start, start + self.counts[split])]
            start += self.counts[split]
        return names

    def load(self) -> dict[str, ClassImages]:
        """Generate the three splits: uint8 ``[images_per_class, 1, image_size, image_size]`` per class."""
        names = self.class_names()
        ordered = [n for split in SPLITS for n in names[split]]
        images = self.generate(len(ordered))
        by_name = dict(zip(ordered, images))
        splits = {s: ClassImages.from_mapping({n: by_name[n] for n in names[s]}) for s in SPLITS}
        return check_splits(splits, self.name)

    def generate(self, n_classes: int) -> list[Tensor]:
        """Images of classes ``0 .. n_classes - 1``, one uint8 ``[n, 1, H, W]`` tensor each."""
        basis = curve_basis(self.points_per_stroke)
        drawn = [self._draw_class(index, basis) for index in range(n_classes)]
        points, half_width, noise = (torch.from_numpy(np.concatenate(part)) for part in zip(*drawn))
        ink = render_all(points, half_width, self.image_size) + noise
        pixels = (ink.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)[:, None]  # uint8 [B, 1, H, W]
        # Clones, so that each class owns its storage and pickles alone.
        return [t.clone() for t in pixels.split(self.images_per_class)]

    def _draw_class(self, index: int, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        glyph = draw_glyph(rng, basis)
        return draw_images(rng, glyph, self.images_per_class, self.image_size, basis, self.distortion)


__all__ = ["EmbeddedGlyphs", "curve_basis", "render"]
