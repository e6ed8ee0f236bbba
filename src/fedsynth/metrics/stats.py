"""Features -> statistics -> distance.

:class:`FeatureStats` keeps the sufficient statistics of a feature set -- count ``n``, sum
``s = sum x`` and sum of outer products ``S = sum x x^T`` -- in float64. They *merge exactly*:
the statistics of the union of several sites' data are the sums of theirs, so the global
model's Fréchet distance against every hospital's data needs no image to leave a hospital.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


_BLAS = None


def one_blas_thread():
    """A context in which NumPy's BLAS/LAPACK run on one thread (``threadpoolctl``).

    The statistics' linear algebra (the sums of outer products, the eigendecompositions of the
    Fréchet distance) runs between torch's work, whose OpenMP threads are still spinning on the
    same cores when NumPy's OpenBLAS threads start: each pool then waits on the other. Measured on
    the 2-core machine with other runs beside it, right after a convolution: ``eigvalsh`` of a
    480-dimensional covariance (the random network's) took a median 0.54 s on 2 threads and
    0.028 s on one, 1,280 dimensions 12.9 s against 0.17 s, 2,048 dimensions (Inception's)
    5.1 s against 0.81 s. One thread also makes the results independent of the core count."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


@dataclass
class FeatureStats:
    """Mergeable mean/covariance accumulator (float64)."""

    n: int
    sum: np.ndarray        # (D,)
    sum_outer: np.ndarray  # (D, D)

    @classmethod
    def empty(cls, dim: int) -> "FeatureStats":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> "FeatureStats":
        s = cls.empty(features.shape[1])
        s.update(features)
        return s

    @property
    def dim(self) -> int:
        return self.sum.shape[0]

    def update(self, features: np.ndarray | torch.Tensor) -> "FeatureStats":
        """Add a batch of features ``(B, D)``; returns ``self``."""
        x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) \
            else np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got {x.shape}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        with one_blas_thread():
            self.sum_outer += x.T @ x
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Statistics of the union (a new object)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        return FeatureStats(self.n + other.n, self.sum + other.sum, self.sum_outer + other.sum_outer)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (``n - 1`` denominator), as numpy.cov and torchmetrics use."""
        if self.n < 2:
            raise ValueError("covariance needs at least 2 samples")
        mu = self.mean
        return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        return {"n": np.array(self.n), "sum": self.sum, "sum_outer": self.sum_outer}

    @classmethod
    def from_npz_dict(cls, d) -> "FeatureStats":
        return cls(int(d["n"]), np.asarray(d["sum"], np.float64), np.asarray(d["sum_outer"], np.float64))


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (the one FD uses)."""
    return _sqrtm_psd(np.asarray(a, np.float64))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    with one_blas_thread():
        w, v = np.linalg.eigh((a + a.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     sqrt_sigma1: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``, where the last
    trace is computed as ``tr((A^{1/2} sigma2 A^{1/2})^{1/2})`` with ``A = sigma1``: a symmetric
    positive semi-definite matrix, so only ``eigh`` is needed and no complex parts appear.
    ``sqrt_sigma1``: ``A^{1/2}`` if already known (one generated set scored against several real
    targets computes it once; :func:`sqrtm_psd`).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("statistics have different dimensions")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        return float("nan")  # e.g. a wrecked generator: report it, do not crash the run
    r1 = _sqrtm_psd(s1) if sqrt_sigma1 is None else sqrt_sigma1
    with one_blas_thread():
        m = r1 @ s2 @ r1
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 50,
                              subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``,
    averaged over random subsets. Returns ``(mean, std)`` over subsets.

    The subsets' Gram matrices are one batched float32 product (the cost: 1.5x faster than
    float64 on this CPU); kernel values and sums are float64. Against an all-float64
    computation KID moves by ~1e-7 of its value, far inside its spread over subsets
    (``tests/test_metrics.py``).
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        return float("nan"), float("nan")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 real and 2 generated samples")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    idx = [(rng.choice(len(real), m, replace=False), rng.choice(len(fake), m, replace=False))
           for _ in range(subsets)]
    real_t, fake_t = torch.from_numpy(real).float(), torch.from_numpy(fake).float()

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.bmm(a, b.transpose(1, 2)).double() / d + 1) ** 3

    def within(kk: torch.Tensor) -> torch.Tensor:  # off-diagonal mean
        return (kk.sum((1, 2)) - kk.diagonal(dim1=1, dim2=2).sum(-1)) / (m * (m - 1))

    vals = []
    chunk = max(1, 2 ** 24 // (m * max(d, m)))  # subsets at a time: each tensor at most ~128 MB
    for c in range(0, subsets, chunk):
        part = idx[c:c + chunk]
        x = real_t[torch.from_numpy(np.stack([i for i, _ in part]))]  # (chunk, m, d)
        y = fake_t[torch.from_numpy(np.stack([j for _, j in part]))]
        vals.append(within(k(x, x)) + within(k(y, y)) - 2 * k(x, y).mean((1, 2)))
    v = torch.cat(vals).numpy()
    return float(v.mean()), float(v.std())


#: below this many real images a Fréchet distance or KID is a rough number whatever the features
MIN_REAL_IMAGES = 50


def few_real_note(num_real: int, dims: int | None, where: str = "") -> str | None:
    """A caveat when a distance rests on few real images (``None`` when it does not): fewer than
    the feature dimension ``dims`` (the real features' covariance is then rank-deficient and the
    Fréchet distance depends mostly on how many images there are) or than
    :data:`MIN_REAL_IMAGES`. ``where`` names the set, e.g. ``"site 0's data"``."""
    limits = [x for x in (dims, MIN_REAL_IMAGES) if x]
    if not limits or num_real >= max(limits):
        return None
    why = (f"fewer than the {dims} feature dimensions, so the real features' covariance is rank-deficient"
           if dims and num_real < dims else f"fewer than {MIN_REAL_IMAGES}")
    return (f"{'the distances against ' + where + ' rest' if where else 'the distances rest'} on "
            f"{num_real} real image{'s' if num_real != 1 else ''} ({why}): they move with the number of images "
            f"as much as with the model; compare them only with scores from the same numbers of images")
