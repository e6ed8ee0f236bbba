"""Per-sample realism score (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", arXiv:1904.06991, Sec. 5).

Each real feature vector ``r`` gets a radius: the distance to its k-th nearest real neighbour,
``NND_k(r)``. A generated sample ``g`` scores

    R(g) = max_r  NND_k(r) / ||g - r||

so ``R(g) >= 1`` exactly when ``g`` lies inside some real sample's k-NN ball (the test precision
uses), and larger means nearer the dense part of the real manifold. Real outliers have large
balls that would let unrealistic samples score high, so -- as in the paper -- the half of the
balls with the largest radii is pruned (``prune_percentile=50``: radii above the median are set
to 0 and those real samples no longer count).

The paper writes the score with distances, as here; the authors' released code takes the ratio
of *squared* distances, which is ``R**2`` (same order, same threshold 1): ``squared=True``
reproduces it.
"""

from __future__ import annotations

import numpy as np
import torch


def realism_scores(real: np.ndarray, fake: np.ndarray, k: int = 3, prune_percentile: float = 50.0,
                   squared: bool = False, eps: float = 1e-5) -> np.ndarray:
    """Realism score of every generated sample.

    Parameters
    ----------
    real, fake : array (N, D), (M, D)
        Feature vectors of real and generated images (same feature network).
    k : int, default 3
        Neighbourhood size for the real radii (the paper's default).
    prune_percentile : float, default 50
        Radii above this percentile of all radii are pruned (set to 0); 100 keeps every ball.
    squared : bool, default False
        Ratio of squared distances, as the authors' code (gives the square of the paper's score).
    eps : float, default 1e-5
        Added to each distance in the denominator, so a sample on top of a real one is finite.

    Returns
    -------
    array (M,)
        ``R`` per generated sample, float64.
    """
    r = torch.as_tensor(np.asarray(real, np.float64))
    f = torch.as_tensor(np.asarray(fake, np.float64))
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features must be (N, D) and (M, D), got {tuple(r.shape)}, {tuple(f.shape)}")
    if len(r) <= k:
        raise ValueError(f"the realism score needs more than k={k} real samples, got {len(r)}")
    radii = torch.cdist(r, r).kthvalue(k + 1, dim=1).values     # (N,): +1 skips the point itself
    cut = np.percentile(radii.numpy(), prune_percentile)
    radii = torch.where(radii > float(cut), torch.zeros_like(radii), radii)
    d = torch.cdist(f, r)                                         # (M, N)
    if squared:
        radii, d = radii ** 2, d ** 2
    return (radii[None, :] / (d + eps)).max(dim=1).values.numpy()


def realism_summary(scores: np.ndarray) -> dict[str, float]:
    """Mean, median and the fraction of generated samples with ``R >= 1`` (inside a kept ball)."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        raise ValueError("no realism scores to summarise")
    return {"realism-mean": float(s.mean()), "realism-median": float(np.median(s)),
            "realism-inside": float((s >= 1.0).mean())}
