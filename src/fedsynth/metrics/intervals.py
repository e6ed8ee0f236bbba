"""Uncertainty of a number measured over seeds: the mean with its Student-t interval, whether two
such intervals can be told apart, the paired ratio of two settings run with the same seeds, the
median of a run's last evaluations, and the rank agreement of two feature networks.

A study's conclusion ("period 1 beats period 5") is only as good as its spread over seeds: GAN
curves swing 2-5x between evaluations and rankings from one seed have flipped between runs. The
maths is scipy's (``scipy.stats.t``); this module only fixes the conventions fedsynth reports with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """``mean`` of ``n`` values with a two-sided ``level`` confidence interval ``[low, high]``
    (Student t, ``n - 1`` degrees of freedom). With one value the interval is unknown (NaN)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def known(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def overlaps(self, other: "Interval") -> bool:
        """True when the two intervals share a point, or either is unknown: then the two means
        cannot be told apart at this number of seeds."""
        if not (self.known and other.known):
            return True
        return self.low <= other.high and other.low <= self.high

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval, or the interval is unknown (then the data
        cannot exclude it)."""
        return not self.known or self.low <= value <= self.high

    def format(self, digits: int = 3) -> str:
        """``"0.412 [0.380, 0.444]"``, or the bare mean with ``(1 seed)`` when unknown."""
        if not self.known:
            return f"{self.mean:.{digits}g} ({self.n} seed{'s' if self.n != 1 else ''})"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def mean_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """The mean of ``values`` and its ``level`` t-interval, as ``scipy.stats.t.interval`` gives it
    with the standard error of the mean (``scipy.stats.sem``, ddof 1). NaNs are an error: a missing
    measurement must be dropped by the caller, who knows why it is missing."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_interval of no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_interval got non-finite values: {x.tolist()}")
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, float("nan"), float("nan"), int(x.size), level)
    se = float(stats.sem(x))
    if se == 0.0:
        return Interval(m, m, m, int(x.size), level)
    lo, hi = stats.t.interval(level, x.size - 1, loc=m, scale=se)
    return Interval(m, float(lo), float(hi), int(x.size), level)


def paired_ratio_interval(values: Iterable[float], reference: Iterable[float], level: float = 0.95) -> Interval:
    """The ratio ``values / reference`` of two settings run with the same seeds (seed ``i`` of one
    paired with seed ``i`` of the other), as the geometric mean of the per-seed ratios with the
    ``level`` t-interval of the mean *log* ratio, exponentiated.

    Distances are positive and skewed and a ratio's spread is multiplicative, so the interval is
    taken on the log scale, where ``a/b`` and ``b/a`` are symmetric; pairing removes what a seed
    does to both settings alike (partition, initialisation, sampling latents). The ratio is ``1``
    (no difference) inside the interval when the two cannot be told apart. Every value must be
    finite and positive."""
    a = np.asarray(list(values), dtype=np.float64)
    b = np.asarray(list(reference), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_ratio_interval needs one reference value per value: {a.size} vs {b.size}")
    if a.size and not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a > 0) and np.all(b > 0)):
        raise ValueError(f"paired_ratio_interval needs finite positive values: {a.tolist()} / {b.tolist()}")
    logs = mean_interval(np.log(a / b), level)
    return Interval(math.exp(logs.mean), math.exp(logs.low) if logs.known else float("nan"),
                    math.exp(logs.high) if logs.known else float("nan"), logs.n, level)


def geometric_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """The geometric mean of positive ``values`` with the ``level`` t-interval of their mean log,
    exponentiated: never below 0, and symmetric on a log axis, where the figures of distances
    over seeds draw it (:func:`paired_ratio_interval` against 1)."""
    x = list(values)
    return paired_ratio_interval(x, [1.0] * len(x), level)


def median_last(values: Sequence[float], k: int) -> float:
    """The median of the last ``k`` values of a curve (all of them if it has fewer): one
    evaluation of a GAN swings 2-5x, the median of its last few does not follow one swing."""
    if k < 1:
        raise ValueError("median_last needs k >= 1")
    if not values:
        return float("nan")
    return float(np.median(np.asarray(values[-k:], dtype=np.float64)))


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b between two rankings of the same items (``scipy.stats.kendalltau``), its
    two-sided p-value and the number of items; NaN where fewer than 3 items or a constant ranking."""

    tau: float
    pvalue: float
    n: int

    def format(self) -> str:
        if self.tau != self.tau:
            return f"— ({self.n} item{'s' if self.n != 1 else ''})"
        return f"{self.tau:+.2f} (p = {self.pvalue:.2g}, {self.n} items)"


def rank_agreement(a: Iterable[float], b: Iterable[float]) -> RankAgreement:
    """Kendall's tau-b of two feature networks' scores of the same variants (1: the same order,
    -1: reversed, 0: unrelated). Pairs where either value is missing (NaN) are dropped."""
    x = np.asarray(list(a), dtype=np.float64)
    y = np.asarray(list(b), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"rank_agreement needs equally many values: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return RankAgreement(float("nan"), float("nan"), int(x.size))
    res = stats.kendalltau(x, y)
    return RankAgreement(float(res.statistic), float(res.pvalue), int(x.size))
