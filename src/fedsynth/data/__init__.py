"""Data: the ImageSet container, built-in phantoms, and partitioning among clients."""

from __future__ import annotations

from ..config import Config, UserError
from .imageset import ImageSet
from .partition import SCHEMES, partition
from .phantoms import CLASSES as PHANTOMS
from .phantoms import make_phantom


def load_dataset(cfg: Config) -> ImageSet:
    """The whole data set a run's clients share out (research mode, one machine)."""
    name = cfg.data.dataset
    if name in PHANTOMS:
        return make_phantom(name, cfg.data.num_images, cfg.data.image_size, cfg.run.seed)
    raise UserError(f"config key 'data.dataset': unknown data set {name!r}")


__all__ = ["ImageSet", "make_phantom", "PHANTOMS", "partition", "SCHEMES", "load_dataset"]
