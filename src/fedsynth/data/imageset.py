"""The in-memory dataset every source produces and every client consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ImageSet:
    """Images as ``uint8`` ``(N, C, H, W)`` -- or volumes ``(N, C, D, H, W)`` (``data.dims = 3``) --
    with integer labels and where they came from.

    ``uint8`` keeps thousands of images in little memory; batches are turned into float
    tensors in ``[-1, 1]`` only when a step needs them (:meth:`batch`).
    """

    images: np.ndarray                      # (N, C, H, W) or (N, C, D, H, W) uint8
    labels: np.ndarray                      # (N,) int64
    class_names: tuple[str, ...]
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (4, 5):
            raise ValueError(f"ImageSet {self.name!r}: images must be uint8 (N, C, H, W) or (N, C, D, H, W), "
                             f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"ImageSet {self.name!r}: {len(self.labels)} labels for "
                             f"{len(self.images)} images")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.images.ndim - 2

    @property
    def size(self) -> int:
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, name: str | None = None) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], self.class_names,
                        name or self.name, dict(self.provenance))

    def batch(self, index: np.ndarray | torch.Tensor | slice | None = None) -> torch.Tensor:
        """Float tensor in ``[-1, 1]``, shape ``(B, C, H, W)`` (volumes: ``(B, C, D, H, W)``)."""
        x = self.images if index is None else self.images[index]
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(127.5).sub_(1.0)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def intensity_stats(self) -> list[dict[str, float]]:
        """Per channel: mean, std, min and max of the prepared pixel values (0-255)."""
        x = self.images.astype(np.float32)
        return [{"mean": float(x[:, c].mean()), "std": float(x[:, c].std()), "min": float(x[:, c].min()),
                 "max": float(x[:, c].max())} for c in range(self.channels)]

    def fingerprint(self) -> str:
        """Hash of the pixels and labels: the cache key for real-data feature statistics."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()

    @staticmethod
    def concat(sets: list["ImageSet"], name: str) -> "ImageSet":
        first = sets[0]
        return ImageSet(np.concatenate([s.images for s in sets]),
                        np.concatenate([s.labels for s in sets]),
                        first.class_names, name, dict(first.provenance))
