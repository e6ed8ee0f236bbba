"""Precision / recall (Kynkaanniemi et al. 2019, arXiv:1904.06991) and density / coverage
(Naeem et al. 2020, arXiv:2002.09797) from k-nearest-neighbour balls in feature space.

* precision: fraction of generated samples inside some real sample's k-NN ball (fidelity);
* recall: fraction of real samples inside some generated sample's k-NN ball (diversity);
* density: how many real balls contain each generated sample, over k (can exceed 1);
* coverage: fraction of real samples whose ball contains a generated sample.

All four count matches one sample at a time, so they can be 0 beside a small Fréchet distance
(which compares only means and covariances): when the real features sit close together, as
with few images or near-identical ones, the balls are small, and a difference that every
generated image shares (blur, noise, a texture) puts each of them outside every ball.
:func:`prdc_scales` gives the two distances to compare.
"""

from __future__ import annotations

import numpy as np
import torch


def _kth_nn(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    r = torch.as_tensor(np.asarray(real, np.float64))
    f = torch.as_tensor(np.asarray(fake, np.float64))
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"precision/recall need more than k={k} real and generated samples")
    r_rad, f_rad = _kth_nn(r, k), _kth_nn(f, k)
    d = torch.cdist(r, f)                                      # (R, F)
    inside_real = d <= r_rad[:, None]                          # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float((d <= f_rad[None, :]).any(dim=1).double().mean()),
        "density": float(inside_real.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values <= r_rad).double().mean()),
    }


def prdc_scales(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Median k-NN radius of the real features and median distance from a generated sample to
    its nearest real one: when the second exceeds the first, precision and density fall to 0."""
    r = torch.as_tensor(np.asarray(real, np.float64))
    f = torch.as_tensor(np.asarray(fake, np.float64))
    if len(r) <= k or len(f) == 0:
        raise ValueError(f"the k-NN radius needs more than k={k} real samples")
    return {"knn-radius-real": float(_kth_nn(r, k).median()),
            "nearest-real-distance": float(torch.cdist(f, r).min(dim=1).values.median())}
