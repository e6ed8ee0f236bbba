import math

import numpy as np
import pytest
from scipy import stats

from fedsynth.metrics.intervals import mean_interval


def test_mean_interval_equals_scipy_t_interval():
    x = [0.41, 0.38, 0.52, 0.47]
    iv = mean_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert iv.n == 4 and iv.mean == pytest.approx(np.mean(x), abs=0)
    assert (iv.low, iv.high) == (pytest.approx(lo, rel=1e-15), pytest.approx(hi, rel=1e-15))
    # by hand: t_{0.975, 3} = 3.182446...
    assert iv.high - iv.mean == pytest.approx(3.1824463052842638 * np.std(x, ddof=1) / 2, rel=1e-12)


def test_one_seed_has_no_interval_and_cannot_be_told_apart():
    one = mean_interval([1.0])
    assert one.n == 1 and math.isnan(one.low) and not one.known
    assert one.overlaps(mean_interval([5.0, 5.1, 4.9]))
    assert one.format() == "1 (1 seed)"


def test_overlap_and_separation():
    a = mean_interval([1.0, 1.1, 0.9])
    b = mean_interval([3.0, 3.1, 2.9])
    assert not a.overlaps(b) and not b.overlaps(a)
    assert a.overlaps(mean_interval([1.05, 1.2, 0.8]))
    assert mean_interval([2.0, 2.0]).low == 2.0


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError):
        mean_interval([1.0, float("nan")])
