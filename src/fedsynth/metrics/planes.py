"""2.5-D features of volumes: slices along the three axes through a 2-D feature network.

The protocol MAISI (Guo et al. 2024, arXiv:2409.11169) reports: a Fréchet distance per plane --
axial (``xy``), sagittal (``yz``), coronal (``zx``) -- between the features of real and generated
slices, and their mean. :class:`fedsynth.metrics.features.PlaneFeatures` wraps any 2-D feature network (the
random network, EfficientNet-Lite0, ...) and turns a batch of volumes ``(B, C, D, H, W)`` into
one row per volume and slice index ``i``: the features of the ``i``-th axial, sagittal and coronal
slice side by side, ``(B * k, 3 * d)``.

So one :class:`fedsynth.metrics.FeatureStats` of those rows holds every plane's statistics as a
diagonal block (:func:`plane_blocks`): its mean's ``p``-th part and its covariance's ``(p, p)``
block are exactly the statistics of plane ``p``'s slices. The statistics merge across sites as
for images (sums add), so the per-plane distances of the merged statistics equal the pooled
ones. The off-diagonal blocks (between planes) are never used.
"""

from __future__ import annotations

import torch

PLANES = ("xy", "yz", "zx")  # axial (fixed D), sagittal (fixed W), coronal (fixed H)


def slice_indices(side: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced slice indices through a side of ``side`` voxels (0: all)."""
    if count <= 0 or count >= side:
        return torch.arange(side)
    return ((torch.arange(count) + 0.5) * side / count).long()


def planes_of(volumes: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``xy``, ``yz`` and ``zx`` slices at indices ``idx`` of ``(B, C, D, H, W)`` volumes, each
    ``(B * k, C, ., .)`` with row ``b * k + j`` from volume ``b`` and index ``idx[j]``."""
    b, c = volumes.shape[:2]
    k = len(idx)
    idx = idx.to(volumes.device)
    xy = volumes.index_select(2, idx).transpose(1, 2).reshape(b * k, c, *volumes.shape[3:])      # (B*k, C, H, W)
    yz = volumes.index_select(4, idx).permute(0, 4, 1, 2, 3).reshape(b * k, c, *volumes.shape[2:4])  # (B*k, C, D, H)
    zx = volumes.index_select(3, idx).permute(0, 3, 1, 2, 4).reshape(
        b * k, c, volumes.shape[2], volumes.shape[4])                                           # (B*k, C, D, W)
    return xy, yz, zx


def plane_blocks(extractor) -> list[tuple[str | None, slice]]:
    """``(plane, columns)`` of each plane's block of ``extractor``'s features; one ``(None, all)``
    for a 2-D extractor."""
    planes = getattr(extractor, "planes", None)
    if not planes:
        return [(None, slice(None))]
    d = extractor.plane_dims
    return [(p, slice(i * d, (i + 1) * d)) for i, p in enumerate(planes)]


def block_distances(moments: list, blocks: list[tuple[str | None, slice]], real) -> list[float]:
    """The Fréchet distance of each feature block (a volume's planes, :func:`plane_blocks`;
    images: one block) between generated moments ``(mean, cov, sqrt cov or None)``, one triple
    per block, and the real statistics ``real`` (a :class:`fedsynth.metrics.FeatureStats`)."""
    from .stats import frechet_distance
    return [frechet_distance(mu, cov, real.mean[cols], real.cov[cols, cols], sqrt_sigma1=root)
            for (mu, cov, root), (_, cols) in zip(moments, blocks)]
