"""Uncertainty of a number measured over seeds: the mean with its Student-t interval, and whether
two such intervals can be told apart.

A study's conclusion ("period 1 beats period 5") is only as good as its spread over seeds: GAN
curves swing 2-5x between evaluations and rankings from one seed have flipped between runs. The
maths is scipy's (``scipy.stats.t``); this module only fixes the conventions fedsynth reports with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

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
