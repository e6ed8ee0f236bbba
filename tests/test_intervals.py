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


def test_paired_ratio_interval_equals_scipy_on_log_ratios():
    from fedsynth.metrics.intervals import paired_ratio_interval
    a, ref = [2.0, 3.1, 2.4, 5.0], [1.0, 1.4, 1.3, 2.2]
    iv = paired_ratio_interval(a, ref)
    logs = np.log(np.array(a) / np.array(ref))
    lo, hi = stats.t.interval(0.95, 3, loc=logs.mean(), scale=stats.sem(logs))
    assert iv.mean == pytest.approx(stats.gmean(np.array(a) / np.array(ref)), rel=1e-12)
    assert (iv.low, iv.high) == (pytest.approx(np.exp(lo), rel=1e-12), pytest.approx(np.exp(hi), rel=1e-12))
    assert not iv.contains(1.0)           # every seed's ratio is about 2: told apart from the reference
    same = paired_ratio_interval([1.0, 1.2, 0.9], [1.1, 1.0, 1.0])
    assert same.contains(1.0)             # cannot be told apart
    assert paired_ratio_interval([2.0], [1.0]).format() == "2 (1 seed)"
    with pytest.raises(ValueError):
        paired_ratio_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio_interval([1.0, 0.0], [1.0, 1.0])


def test_median_of_last_k():
    from fedsynth.metrics.intervals import median_last
    curve = [9.0, 5.0, 0.155, 0.406, 0.2]
    assert median_last(curve, 3) == 0.2
    assert median_last(curve, 2) == pytest.approx((0.406 + 0.2) / 2)
    assert median_last(curve, 1) == 0.2 and median_last(curve, 10) == 0.406
    assert math.isnan(median_last([], 3))
    with pytest.raises(ValueError):
        median_last(curve, 0)


def test_rank_agreement_is_scipy_kendall_tau():
    from fedsynth.metrics.intervals import rank_agreement
    x, y = [0.1, 0.4, 0.3, 0.9, 0.5], [10.0, 30.0, 40.0, 80.0, 50.0]
    ra = rank_agreement(x, y)
    ref = stats.kendalltau(x, y)
    assert ra.tau == pytest.approx(ref.statistic, abs=1e-15) and ra.pvalue == pytest.approx(ref.pvalue)
    assert ra.tau == pytest.approx(0.8) and ra.n == 5   # by hand: 9 concordant, 1 discordant pair of 10
    assert rank_agreement([1, 2, float("nan"), 3], [3, 2, 1, 1]).n == 3
    assert math.isnan(rank_agreement([1, 2], [1, 2]).tau)


def test_geometric_interval_is_scipys_t_interval_of_the_logs_exponentiated():
    import math

    from scipy import stats

    from fedsynth.metrics.intervals import geometric_interval
    x = [4.8, 19.0, 7.6]
    logs = [math.log(v) for v in x]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(logs) / 3, scale=stats.sem(logs))
    iv = geometric_interval(x)
    assert iv.mean == pytest.approx(math.exp(sum(logs) / 3)) and iv.n == 3
    assert (iv.low, iv.high) == pytest.approx((math.exp(lo), math.exp(hi)))
    assert iv.low > 0  # a plain t-interval of these three values reaches below zero
