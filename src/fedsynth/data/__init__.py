"""Data: the ImageSet container, sources (phantoms, folders, DICOM, NIfTI, MedMNIST, package
samples; volumes: 3-D phantoms, NIfTI, DICOM series), the studies' preprocessing, and
partitioning among clients."""

from __future__ import annotations

from typing import Callable

from ..config import Config
from .imageset import ImageSet
from .partition import SCHEMES, partition, summary
from .phantoms import CLASSES as PHANTOMS
from .phantoms import make_phantom
from .phantoms3d import CLASSES3D as PHANTOMS3D
from .phantoms3d import make_volume_phantom
from .sources import DataError, load_source


def load_dataset(cfg: Config, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """The whole data set a run's clients share out (research mode, one machine)."""
    from ..registry import SOURCES
    return SOURCES.load(cfg.data.source)(cfg, progress)


def load_phantom(cfg: Config, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """A built-in phantom source (:data:`fedsynth.registry.SOURCES`): ``data.num-images`` images,
    or volumes with ``data.dims = 3``, drawn from the run seed."""
    if cfg.data.dims == 3:
        return make_volume_phantom(cfg.data.source, cfg.data.num_images, cfg.data.image_size, cfg.run.seed)
    return make_phantom(cfg.data.source, cfg.data.num_images, cfg.data.image_size, cfg.run.seed)


def class_meaning(source: str, dims: int = 2) -> str | None:
    """What a built-in phantom's classes stand for (None for other sources)."""
    from .phantoms import CLASS_MEANING
    from .phantoms3d import CLASS_MEANING3D
    return (CLASS_MEANING3D if dims == 3 else CLASS_MEANING).get(source)


def preview_set(name: str, n: int, size: int, seed: int, dims: int = 2) -> ImageSet:
    """Enough images of built-in phantom ``name`` for a montage of ``n`` (volumes are costlier:
    a few per class suffice)."""
    if dims == 3:
        return make_volume_phantom(name, max(n * 3, 8), size, seed)
    return make_phantom(name, max(n * 4, 64), size, seed)


def partition_for(cfg: Config, data: ImageSet) -> list[ImageSet]:
    p = cfg.partition
    return partition(data, p.scheme, p.clients, cfg.run.seed, majority=p.majority, alpha=p.alpha,
                     min_size=p.min_size, beta=p.beta)


__all__ = ["ImageSet", "make_phantom", "PHANTOMS", "make_volume_phantom", "PHANTOMS3D", "partition", "partition_for", "summary",
           "SCHEMES", "load_dataset", "load_phantom", "load_source", "DataError", "class_meaning", "preview_set"]
