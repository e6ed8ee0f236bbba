"""Split one ImageSet among clients (seeded). More schemes arrive with the data issue."""

from __future__ import annotations

import numpy as np

from ..config import UserError
from ..utils import numpy_rng
from .imageset import ImageSet


def partition_iid(data: ImageSet, clients: int, seed: int) -> list[ImageSet]:
    """IID: a seeded shuffle cut into ``clients`` disjoint parts of (nearly) equal size."""
    if clients > len(data):
        raise UserError(f"cannot split {len(data)} images among {clients} clients")
    perm = numpy_rng(seed, "partition", "iid").permutation(len(data))
    return [data.subset(np.sort(part), name=f"client-{k}")
            for k, part in enumerate(np.array_split(perm, clients))]


SCHEMES = {"iid": partition_iid}


def partition(data: ImageSet, scheme: str, clients: int, seed: int) -> list[ImageSet]:
    try:
        fn = SCHEMES[scheme]
    except KeyError:
        raise UserError(f"unknown partition scheme {scheme!r}; choose from {', '.join(SCHEMES)}") from None
    return fn(data, clients, seed)
