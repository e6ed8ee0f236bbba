"""Realism score (Kynkaanniemi et al. 2019): a hand-checked 2-D example and the link to precision."""

import numpy as np
import pytest

from fedsynth.metrics import prdc
from fedsynth.metrics.realism import realism_scores, realism_summary

# Real points on a line at x = 0, 1, 3, 10. With k = 1 their radii (distance to the nearest
# other real point) are 1, 1, 2, 7; the median of the radii is 1.5, so the balls of x = 3 and
# x = 10 are pruned (radius 0). Kept balls: centre 0 and centre 1, radius 1 each.
REAL = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
FAKE = np.array([
    [0.5, 0.0],   # 0.5 from both kept centres:       max(1/0.5, 1/0.5)   = 2
    [0.0, 2.0],   # 2 from (0,0), sqrt(5) from (1,0): max(1/2, 1/sqrt 5)  = 0.5
    [3.0, 0.0],   # on a pruned point; 2 from (1,0):  1/2                 = 0.5
    [-0.8, 0.0],  # inside (0,0)'s ball:              1/0.8               = 1.25
])


def test_realism_score_by_hand():
    s = realism_scores(REAL, FAKE, k=1, eps=1e-12)
    np.testing.assert_allclose(s, [2.0, 0.5, 0.5, 1.25], rtol=1e-9)
    # Without pruning (radii 1, 1, 2, 7) the outliers' big balls decide: (0, 2) scores
    # 7 / sqrt(10^2 + 2^2) = 0.686 via x = 10, and the sample on x = 3 gets 2 / eps.
    unpruned = realism_scores(REAL, FAKE, k=1, prune_percentile=100, eps=1e-6)
    np.testing.assert_allclose(unpruned, [2.0, 7 / np.sqrt(104), 2 / 1e-6, 1.25], rtol=1e-5)


def test_squared_variant_is_the_square_and_summary_counts_the_inside():
    s = realism_scores(REAL, FAKE, k=1, eps=1e-12)
    np.testing.assert_allclose(realism_scores(REAL, FAKE, k=1, squared=True, eps=1e-12), s ** 2, rtol=1e-9)
    summary = realism_summary(s)
    assert summary == {"realism-mean": pytest.approx(4.25 / 4), "realism-median": pytest.approx(0.875),
                       "realism-inside": 0.5}


def test_without_pruning_the_inside_fraction_is_precision():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 8)), rng.normal(0.4, 1.2, size=(150, 8))
    s = realism_scores(real, fake, k=5, prune_percentile=100, eps=0.0)
    assert realism_summary(s)["realism-inside"] == pytest.approx(prdc(real, fake, k=5)["precision"])
    pruned = realism_scores(real, fake, k=5)
    assert (pruned <= s + 1e-12).all() and pruned.mean() < s.mean()   # pruning only removes balls


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="more than k=3"):
        realism_scores(REAL[:3], FAKE)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        realism_scores(REAL, FAKE[:, :1])
