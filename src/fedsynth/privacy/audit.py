"""Memorisation and mode-collapse audits.

**Memorisation** (a data-copying test in the spirit of Meehan et al. 2020, arXiv:2004.05675):
for every generated image, the distance to its nearest *training* image is compared with the
distance to its nearest *held-out* image of the same distribution (equal set sizes). A
generator that only learned the distribution is as close to unseen images as to its training
images: about half of its samples are nearer a training image. A generator that copies its
training set is much nearer training images. The audit is flagged when more than
``threshold`` (default 0.75) of the samples are nearer a training image, or when the median
ratio d(train) / d(held-out) is below 0.5. Distances are Euclidean in pixel space at 32 px
(what a person would call a copy).

**Volumes** (``(N, C, D, H, W)``, :func:`volume_memorisation_audit`) are compared in feature
space, per plane, as the 2.5-D distances score them: for each plane (``xy``, ``yz``, ``zx``) a
volume is one row, the features of 8 evenly spaced slices along that plane through a 2-D
network (the frozen random network by default), concatenated; then the same statistics and
thresholds per plane, flagged when any plane is.

**Diversity**: mean pairwise distance among generated images over the same among real images
(1 = as diverse as the data; well below 1 = mode collapse), and the fraction of distinct
training images that are some sample's nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


def _flat(x: torch.Tensor, side: int = 32) -> torch.Tensor:
    x = x.double()
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x.flatten(1)


@dataclass
class AuditResult:
    nearer_train_fraction: float
    median_ratio: float
    flagged: bool
    diversity_ratio: float
    distinct_nn_fraction: float
    # (generated index, index into the training set given, distance), closest first
    closest: list[tuple[int, int, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"nearer_train_fraction": self.nearer_train_fraction, "median_ratio": self.median_ratio,
                "memorisation_flagged": self.flagged, "diversity_ratio": self.diversity_ratio,
                "distinct_nn_fraction": self.distinct_nn_fraction}


def diversity(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise distance of generated over real images (pixel space, 32 px)."""
    f, r = _flat(fake), _flat(real)
    pd = lambda x: torch.pdist(x).mean()  # noqa: E731
    return float(pd(f) / pd(r))


def memorisation_audit(fake: torch.Tensor, train: torch.Tensor, held: torch.Tensor, threshold: float = 0.75,
                       n_closest: int = 8, seed: int = 0) -> AuditResult:
    """See the module docstring. Images in [-1, 1], ``(N, C, H, W)``."""
    train_idx, held_idx = _equal_sizes(len(train), len(held), seed)
    train, held = train[train_idx], held[held_idx]
    res = _nn_audit(_flat(fake), _flat(train), _flat(held), threshold, n_closest, diversity(fake, train))
    res.closest = [(i, int(train_idx[j]), d) for i, j, d in res.closest]   # indices into the ``train`` given
    return res


def _equal_sizes(n_train: int, n_held: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of equal-sized subsets of the training and held-out sets (a seeded random subset
    of the larger one), so that "nearer a training image" has a 50 % baseline."""
    n = min(n_train, n_held)
    g = torch.Generator().manual_seed(seed)
    train = torch.randperm(n_train, generator=g)[:n] if n_train > n else torch.arange(n_train)
    held = torch.randperm(n_held, generator=g)[:n] if n_held > n else torch.arange(n_held)
    return train, held


def _nn_audit(f: torch.Tensor, t: torch.Tensor, h: torch.Tensor, threshold: float, n_closest: int,
              diversity_ratio: float) -> AuditResult:
    """The statistics of :func:`memorisation_audit` from rows already embedded: generated ``f``,
    training ``t`` and held-out ``h`` (equal-sized sets), ``(N, d)`` each."""
    dt = torch.cdist(f, t)
    d_train, nn_train = dt.min(dim=1)
    d_held = torch.cdist(f, h).min(dim=1).values
    nearer = float((d_train < d_held).double().mean())
    ratio = float(torch.median(d_train / d_held.clamp_min(1e-12)))
    order = torch.argsort(d_train)[:n_closest]
    closest = [(int(i), int(nn_train[i]), float(d_train[i])) for i in order]
    return AuditResult(nearer, ratio, nearer > threshold or ratio < 0.5, diversity_ratio,
                       float(len(torch.unique(nn_train)) / len(t)), closest)


def closest_pairs_image(fake: torch.Tensor, train: torch.Tensor, closest, path) -> None:
    """Generated image (top) over its nearest training image (bottom), closest pairs first."""
    from torchvision.utils import make_grid, save_image
    tops = torch.stack([fake[i] for i, _, _ in closest])
    bots = torch.stack([train[j] for _, j, _ in closest])
    grid = make_grid(torch.cat([tops, bots]), nrow=len(closest), normalize=True, value_range=(-1, 1), padding=2)
    save_image(grid, path)


def embedding_plot(real_feats: np.ndarray, fake_feats: np.ndarray, path, title: str = "") -> None:
    """2-D PCA of real vs generated features."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.concatenate([real_feats, fake_feats])
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=110)
    n = len(real_feats)
    ax.scatter(p[:n, 0], p[:n, 1], s=5, alpha=0.5, label="real")
    ax.scatter(p[n:, 0], p[n:, 1], s=5, alpha=0.5, label="generated")
    ax.set_title(title or "PCA of features: real vs generated", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_audit(fake: torch.Tensor, train: torch.Tensor, held: torch.Tensor, out, seed: int = 0) -> AuditResult:
    """Run :func:`memorisation_audit` and write ``out/audit.json``, ``closest-pairs.png`` and
    ``embedding-pca.png`` (features of the frozen random network)."""
    import json
    from pathlib import Path

    from ..metrics import RandomConvFeatures
    from ..utils import atomic_write_text
    out = Path(out)
    res = memorisation_audit(fake, train, held, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    closest_pairs_image(fake, train, res.closest, out / "closest-pairs.png")
    ext = RandomConvFeatures()
    embedding_plot(ext.extract(train).numpy(), ext.extract(fake).numpy(), out / "embedding-pca.png")
    atomic_write_text(out / "audit.json", json.dumps({**res.as_dict(), "train_images": len(train),
                                                     "held_images": len(held), "generated": len(fake),
                                                     "closest": res.closest}, indent=2) + "\n")
    return res


# ---------------------------------------------------------------------------------------------
# Volumes: nearest neighbours in feature space, per plane

VOLUME_SLICES = 8  # evenly spaced slices per axis that embed a volume


@dataclass
class VolumeAuditResult:
    """The memorisation audit of volumes: one :class:`AuditResult` per plane (``xy``, ``yz``,
    ``zx``), made in the feature space of ``extractor`` (its name) from ``slices`` slices per axis.
    Flagged when any plane is. ``closest`` training indices are into the training set given."""

    planes: dict[str, AuditResult]
    extractor: str
    slices: int

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.planes.values())

    @property
    def flagged_planes(self) -> list[str]:
        return [p for p, r in self.planes.items() if r.flagged]

    @property
    def telling_plane(self) -> str:
        """The plane whose generated volumes sit nearest their training neighbours (lowest median
        ratio): the one whose closest pairs are worth a look."""
        return min(self.planes, key=lambda p: self.planes[p].median_ratio)

    def as_dict(self) -> dict:
        return {"space": "features per plane", "feature_network": self.extractor, "slices_per_axis": self.slices,
                "embedding": f"per plane: the features of {self.slices} evenly spaced slices, concatenated in order",
                "memorisation_flagged": self.flagged, "flagged_planes": self.flagged_planes,
                "nearer_train_fraction_max": max(r.nearer_train_fraction for r in self.planes.values()),
                "median_ratio_min": min(r.median_ratio for r in self.planes.values()),
                "planes": {p: {**r.as_dict(), "closest": r.closest} for p, r in self.planes.items()}}


def plane_embeddings(volumes: torch.Tensor, extractor, slices: int = VOLUME_SLICES) -> dict[str, torch.Tensor]:
    """One row per volume and plane: the 2-D features (``extractor``, e.g. the random network)
    of the volume's ``slices`` evenly spaced slices along that plane (0: all), concatenated in
    slice order, float64 ``(N, k * d)``. Concatenation rather than a mean keeps where a slice
    lies, so a copy must match its source slice by slice at the same depth."""
    from ..metrics.features import PlaneFeatures
    from ..metrics.planes import PLANES, slice_indices
    k = len(slice_indices(volumes.shape[2], slices))
    rows = PlaneFeatures(extractor, slices).extract(volumes).double()   # (N * k, 3 * d), row n * k + j
    rows = rows.reshape(len(volumes), k, len(PLANES), extractor.dims)
    return {p: rows[:, :, i].reshape(len(volumes), -1) for i, p in enumerate(PLANES)}


def volume_memorisation_audit(fake: torch.Tensor, train: torch.Tensor, held: torch.Tensor, threshold: float = 0.75,
                              n_closest: int = 8, seed: int = 0, extractor=None,
                              slices: int = VOLUME_SLICES) -> VolumeAuditResult:
    """:func:`memorisation_audit` for volumes ``(N, C, D, H, W)`` in [-1, 1], per plane.

    Each volume is embedded per plane by :func:`plane_embeddings`; per plane, the same statistics
    as for images on those rows (Euclidean distances): the fraction of generated volumes nearer a
    training than a held-out volume (about 0.5 expected), the median ratio of the two distances,
    flagged above ``threshold`` or below 0.5; the diversity ratio (mean pairwise distance of
    generated over training rows) and the fraction of training volumes that are a nearest
    neighbour.

    Parameters
    ----------
    extractor : FeatureExtractor, optional
        The 2-D feature network slices go through; default the frozen random network (seed 0),
        fast on a CPU and enough to tell a copy.
    slices : int, default 8
        Evenly spaced slices per axis (0: all).
    """
    return _volume_audit(fake, train, held, threshold, n_closest, seed, extractor, slices)[0]


def _volume_audit(fake, train, held, threshold, n_closest, seed, extractor, slices):
    """:func:`volume_memorisation_audit` and the rows it compared: ``(result, generated rows,
    training rows)``, rows per plane."""
    if extractor is None:
        from ..metrics import RandomConvFeatures
        extractor = RandomConvFeatures()
    train_idx, held_idx = _equal_sizes(len(train), len(held), seed)
    ef, et, eh = (plane_embeddings(x, extractor, slices) for x in (fake, train[train_idx], held[held_idx]))
    planes = {}
    for p in ef:
        div = float(torch.pdist(ef[p]).mean() / torch.pdist(et[p]).mean())
        r = _nn_audit(ef[p], et[p], eh[p], threshold, n_closest, div)
        r.closest = [(i, int(train_idx[j]), d) for i, j, d in r.closest]   # indices into ``train``
        planes[p] = r
    k = et[next(iter(et))].shape[1] // extractor.dims
    return VolumeAuditResult(planes, extractor.name, k), ef, et


def write_volume_audit(fake: torch.Tensor, train: torch.Tensor, held: torch.Tensor, out, picture, seed: int = 0,
                       extractor=None, slices: int = VOLUME_SLICES) -> VolumeAuditResult:
    """Run :func:`volume_memorisation_audit` and write ``out/audit.json`` (an entry per plane),
    ``closest-pairs.png`` (the closest pairs of the plane with the lowest median ratio, each
    volume as the 2-D ``picture`` -- e.g. its three orthogonal mid-slices -- generated over
    training) and ``embedding-pca.png`` (the three planes' rows side by side)."""
    import json
    from pathlib import Path

    from ..utils import atomic_write_text
    out = Path(out)
    res, ef, et = _volume_audit(fake, train, held, 0.75, 8, seed, extractor, slices)
    out.mkdir(parents=True, exist_ok=True)
    plane = res.telling_plane
    closest_pairs_image(picture(fake), picture(train), res.planes[plane].closest, out / "closest-pairs.png")
    whole = lambda rows: torch.cat(list(rows.values()), dim=1).numpy()  # noqa: E731
    embedding_plot(whole(et), whole(ef), out / "embedding-pca.png",
                   "PCA of per-plane slice features: real vs generated volumes")
    atomic_write_text(out / "audit.json", json.dumps({**res.as_dict(), "closest_pairs_plane": plane,
                                                     "train_volumes": len(train), "held_volumes": len(held),
                                                     "generated": len(fake)}, indent=2) + "\n")
    return res
