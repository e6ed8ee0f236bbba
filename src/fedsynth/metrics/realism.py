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
    ref = RealismReference(real, k, prune_percentile)
    return ref.scores(fake, squared=squared, eps=eps)


class RealismReference:
    """The real side of the realism score, computed once: the real features whose k-NN balls
    survive pruning, and their radii. Scoring a set of generated features then costs one
    ``(M, N_kept)`` distance matrix, so an evaluation can score every round without redoing the
    real-real distances. :func:`realism_scores` is this class used once; the values are the same
    (pruned balls have radius 0 and contribute a ratio of 0 to the maximum, so dropping them
    changes nothing).
    """

    def __init__(self, real: np.ndarray, k: int = 3, prune_percentile: float = 50.0):
        r = torch.as_tensor(np.asarray(real, np.float64))
        if r.ndim != 2:
            raise ValueError(f"real features must be (N, D), got {tuple(r.shape)}")
        if len(r) <= k:
            raise ValueError(f"the realism score needs more than k={k} real samples, got {len(r)}")
        radii = torch.cdist(r, r).kthvalue(k + 1, dim=1).values     # (N,): +1 skips the point itself
        cut = float(np.percentile(radii.numpy(), prune_percentile))
        keep = radii <= cut
        self.real, self.radii, self.k = r[keep], radii[keep], k     # (N_kept, D), (N_kept,)

    def scores(self, fake: np.ndarray, squared: bool = False, eps: float = 1e-5) -> np.ndarray:
        """``R`` of every generated feature vector ``fake`` (M, D), float64 (M,)."""
        f = torch.as_tensor(np.asarray(fake, np.float64))
        if f.ndim != 2 or f.shape[1] != self.real.shape[1]:
            raise ValueError(f"real and fake features must be (N, D) and (M, D), got "
                             f"{tuple(self.real.shape)}, {tuple(f.shape)}")
        radii, d = self.radii, torch.cdist(f, self.real)              # (M, N_kept)
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
