"""Data: the ImageSet container, sources (phantoms, folders, DICOM, NIfTI, MedMNIST, package
samples), the studies' preprocessing, and partitioning among clients."""

from __future__ import annotations

from typing import Callable

from ..config import Config
from .imageset import ImageSet
from .partition import SCHEMES, partition, summary
from .phantoms import CLASSES as PHANTOMS
from .phantoms import make_phantom
from .sources import DataError, load_source


def load_dataset(cfg: Config, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """The whole data set a run's clients share out (research mode, one machine)."""
    from ..registry import SOURCES
    if SOURCES[cfg.data.source].kind == "phantom":
        return make_phantom(cfg.data.source, cfg.data.num_images, cfg.data.image_size, cfg.run.seed)
    return load_source(cfg, progress)


def partition_for(cfg: Config, data: ImageSet) -> list[ImageSet]:
    p = cfg.partition
    return partition(data, p.scheme, p.clients, cfg.run.seed, majority=p.majority, alpha=p.alpha, beta=p.beta)


__all__ = ["ImageSet", "make_phantom", "PHANTOMS", "partition", "partition_for", "summary",
           "SCHEMES", "load_dataset", "load_source", "DataError"]
