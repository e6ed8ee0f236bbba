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
    closest: list[tuple[int, int, float]] = field(default_factory=list)  # (fake idx, train idx, distance)

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
    n = min(len(train), len(held))
    g = torch.Generator().manual_seed(seed)
    if len(train) > n:
        train = train[torch.randperm(len(train), generator=g)[:n]]
    if len(held) > n:
        held = held[torch.randperm(len(held), generator=g)[:n]]
    f, t, h = _flat(fake), _flat(train), _flat(held)
    dt = torch.cdist(f, t)
    d_train, nn_train = dt.min(dim=1)
    d_held = torch.cdist(f, h).min(dim=1).values
    nearer = float((d_train < d_held).double().mean())
    ratio = float(torch.median(d_train / d_held.clamp_min(1e-12)))
    order = torch.argsort(d_train)[:n_closest]
    closest = [(int(i), int(nn_train[i]), float(d_train[i])) for i in order]
    return AuditResult(nearer, ratio, nearer > threshold or ratio < 0.5, diversity(fake, train),
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
