"""Split one ImageSet among clients, the ways the studies we reproduce did (all seeded).

* ``iid`` -- a shuffle cut into equal parts.
* ``label-skew`` -- client k's majority class is ``k mod C``; ``majority`` of its images come
  from it and the rest evenly from the other classes (0.95/0.05 over two clients; 60-90 %
  over six clients).
* ``by-label`` -- each label's images go to different clients (the diabetic-retinopathy
  study): client k gets the classes ``c`` with ``c mod K == k``; with more clients than classes,
  each class is shared by several clients.
* ``dirichlet`` -- per class, client proportions drawn from Dir(alpha) (Hsu et al. 2019), drawn
  again until every client has ``min_size`` images.
* ``quantity-skew`` -- client sizes drawn from Dir(beta), labels mixed.
"""

from __future__ import annotations

import numpy as np

from ..config import UserError
from ..utils import numpy_rng
from .imageset import ImageSet


def _check(data: ImageSet, clients: int) -> None:
    if clients > len(data):
        raise UserError(f"cannot split {len(data)} images among {clients} clients "
                        f"(config key 'partition.clients')")


def _parts(data: ImageSet, index_lists: list[np.ndarray]) -> list[ImageSet]:
    out = []
    for k, idx in enumerate(index_lists):
        if len(idx) == 0:
            raise UserError(f"partition left site {k} with no images; use fewer sites (partition.clients) or another scheme")
        out.append(data.subset(np.sort(np.asarray(idx, np.int64)), name=f"client-{k}"))
    return out


def partition_iid(data: ImageSet, clients: int, seed: int, **_) -> list[ImageSet]:
    _check(data, clients)
    perm = numpy_rng(seed, "partition", "iid").permutation(len(data))
    return _parts(data, np.array_split(perm, clients))


def partition_label_skew(data: ImageSet, clients: int, seed: int, majority: float = 0.9, **_) -> list[ImageSet]:
    _check(data, clients)
    C = data.num_classes
    if C < 2:
        raise UserError("label-skew needs at least two classes")
    rng = numpy_rng(seed, "partition", "label-skew")
    by_class = [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(C)]
    # share[k, c]: fraction of client k's images from class c
    share = np.full((clients, C), (1 - majority) / (C - 1))
    share[np.arange(clients), np.arange(clients) % C] = majority
    size = len(data) / clients
    demand = share.sum(axis=0) * size
    avail = np.array([len(b) for b in by_class], float)
    scale = min(1.0, float(np.min(np.where(demand > 0, avail / np.maximum(demand, 1e-12), np.inf))))
    counts = np.floor(share * size * scale).astype(int)
    taken = np.zeros(C, int)
    out = []
    for k in range(clients):
        idx = []
        for c in range(C):
            idx.append(by_class[c][taken[c]: taken[c] + counts[k, c]])
            taken[c] += counts[k, c]
        out.append(np.concatenate(idx))
    return _parts(data, out)


def partition_by_label(data: ImageSet, clients: int, seed: int, **_) -> list[ImageSet]:
    _check(data, clients)
    C = data.num_classes
    rng = numpy_rng(seed, "partition", "by-label")
    out: list[list[np.ndarray]] = [[] for _ in range(clients)]
    if clients <= C:
        for c in range(C):
            out[c % clients].append(np.flatnonzero(data.labels == c))
    else:  # more clients than classes: class c is shared by clients k with k mod C == c
        for c in range(C):
            owners = [k for k in range(clients) if k % C == c]
            idx = rng.permutation(np.flatnonzero(data.labels == c))
            for k, part in zip(owners, np.array_split(idx, len(owners))):
                out[k].append(part)
    return _parts(data, [np.concatenate(o) if o else np.array([], np.int64) for o in out])


def partition_dirichlet(data: ImageSet, clients: int, seed: int, alpha: float = 0.5, min_size: int = 0,
                        **_) -> list[ImageSet]:
    """Per class, client shares drawn from Dir(``alpha``) (Hsu et al. 2019). ``min_size``: draw
    again (the same seeded stream) until every client has at least that many images, as
    NIID-Bench does (Li et al. 2022, arXiv:2102.02079); at small ``alpha`` a plain draw leaves some
    clients a handful of images, too few to hold any out for evaluation."""
    _check(data, clients)
    if min_size * clients > len(data):
        raise UserError(f"config key 'partition.min-size' = {min_size}: {clients} clients cannot each get "
                        f"{min_size} of {len(data)} images")
    rng = numpy_rng(seed, "partition", "dirichlet")
    for _ in range(MAX_DRAWS):
        lists = _dirichlet_draw(data, clients, alpha, rng)
        if min(len(x) for x in lists) >= min_size:
            break
    else:
        raise UserError(f"config key 'partition.min-size' = {min_size}: no Dirichlet(alpha = {alpha}) split of "
                        f"{len(data)} images over {clients} clients in {MAX_DRAWS} draws gave every client that "
                        f"many; lower it or raise partition.alpha")
    # every client needs data: move one image from the largest client to each empty one
    for k, lst in enumerate(lists):
        if len(lst) == 0:
            big = int(np.argmax([len(x) for x in lists]))
            lists[k], lists[big] = lists[big][-1:], lists[big][:-1]
    return _parts(data, lists)


#: draws :func:`partition_dirichlet` tries for ``min_size`` (each is microseconds per class)
MAX_DRAWS = 10_000


def _dirichlet_draw(data: ImageSet, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    out: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in range(data.num_classes):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        p = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, cuts)):
            out[k].append(part)
    return [np.concatenate(o) for o in out]


def partition_quantity_skew(data: ImageSet, clients: int, seed: int, beta: float = 1.0, **_) -> list[ImageSet]:
    _check(data, clients)
    rng = numpy_rng(seed, "partition", "quantity-skew")
    p = rng.dirichlet(np.full(clients, beta))
    n = len(data)
    sizes = np.maximum(1, np.floor(p * (n - clients)).astype(int) + 1)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    perm = rng.permutation(n)
    return _parts(data, np.split(perm, np.cumsum(sizes)[:-1]))


SCHEMES = {
    "iid": partition_iid,
    "label-skew": partition_label_skew,
    "by-label": partition_by_label,
    "dirichlet": partition_dirichlet,
    "quantity-skew": partition_quantity_skew,
}


def partition(data: ImageSet, scheme: str, clients: int, seed: int, **params) -> list[ImageSet]:
    """Split ``data`` among ``clients`` with ``scheme`` (params: majority, alpha, min_size, beta)."""
    try:
        fn = SCHEMES[scheme]
    except KeyError:
        raise UserError(f"unknown partition scheme {scheme!r}; choose from {', '.join(SCHEMES)}") from None
    return fn(data, clients, seed, **params)


def summary(parts: list[ImageSet], class_names: tuple[str, ...]) -> dict:
    """Images and class histogram per client (what partition.json holds)."""
    return {"class_names": list(class_names),
            "clients": {str(k): {"images": len(p), "class_counts": p.class_counts()}
                        for k, p in enumerate(parts)}}
