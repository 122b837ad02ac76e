"""The one data contract between episodic data and methods."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

# the per-image and per-episode tensors of an Episode, in field order (moved, split and stacked alike)
TENSOR_FIELDS = ("support_images", "support_labels", "query_images", "query_labels", "index")


@dataclass
class Episode:
    """An N-way K-shot episode, or a meta-batch of B such episodes.

    Images are class-major: support image ``c * n_shot + k`` is the k-th shot of class ``c``
    (likewise for queries), and labels are relabelled ``0 .. n_way - 1``.

    Shapes, unbatched / batched:
        support_images: ``[N*K, C, H, W]`` / ``[B, N*K, C, H, W]`` (uint8 from the sampler,
            float after the datamodule's normalisation)
        support_labels: ``[N*K]`` / ``[B, N*K]`` (int64)
        query_images:   ``[N*Q, C, H, W]`` / ``[B, N*Q, C, H, W]``
        query_labels:   ``[N*Q]`` / ``[B, N*Q]``
        index:          ``[]`` / ``[B]``, the episode's index within its split and stream
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    n_way: int
    index: Tensor

    @property
    def is_batched(self) -> bool:
        """True when the episode carries a leading meta-batch dimension."""
        return self.support_labels.dim() == 2

    @property
    def batch_size(self) -> int:
        """Number of episodes in the meta-batch (1 for an unbatched episode)."""
        return self.support_labels.shape[0] if self.is_batched else 1

    @property
    def n_shot(self) -> int:
        """Support images per class."""
        return self.support_labels.shape[-1] // self.n_way

    @property
    def n_query(self) -> int:
        """Query images per class."""
        return self.query_labels.shape[-1] // self.n_way

    def to(self, device: torch.device | str) -> Episode:
        """Return a copy with every tensor moved to ``device``."""
        return Episode(n_way=self.n_way, **{f: getattr(self, f).to(device, non_blocking=True) for f in TENSOR_FIELDS})

    def with_images(self, support_images: Tensor, query_images: Tensor) -> Episode:
        """Return a copy with the images replaced (e.g. normalised floats)."""
        return replace(self, support_images=support_images, query_images=query_images)

    def with_shots(self, n_shot: int) -> Episode:
        """Keep the first ``n_shot`` support images of every class (the official protocol
        scores 1-shot and 5-shot on one episode this way)."""
        if not 1 <= n_shot <= self.n_shot:
            raise ValueError(
                f"with_shots({n_shot}) needs 1 <= n_shot <= {self.n_shot}, the episode's shots; "
                f"sample episodes with at least {n_shot} shots."
            )
        lead = self.support_labels.shape[:-1]

        def first_shots(t: Tensor) -> Tensor:
            per_class = t.reshape(*lead, self.n_way, self.n_shot, *t.shape[len(lead) + 1 :])
            kept = per_class[(slice(None),) * len(lead) + (slice(None), slice(0, n_shot))]
            return kept.reshape(*lead, self.n_way * n_shot, *t.shape[len(lead) + 1 :])

        return replace(
            self,
            support_images=first_shots(self.support_images),
            support_labels=first_shots(self.support_labels),
        )

    def unbatch(self) -> list[Episode]:
        """Split a meta-batch into its single episodes."""
        if not self.is_batched:
            return [self]
        return [
            Episode(n_way=self.n_way, **{f: getattr(self, f)[b] for f in TENSOR_FIELDS}) for b in range(self.batch_size)
        ]


def collate_episodes(episodes: list[Episode]) -> Episode:
    """Stack single episodes of one shape into a meta-batch ``[B, ...]``."""
    first = episodes[0]
    if any(e.n_way != first.n_way for e in episodes):
        raise ValueError("All episodes in a meta-batch must have the same n_way.")
    return Episode(n_way=first.n_way, **{f: torch.stack([getattr(e, f) for e in episodes]) for f in TENSOR_FIELDS})
