"""experiments/paired.py: the paired verdicts docs/results.md quotes, against a hand computation."""

import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("paired", Path(__file__).parents[1] / "experiments" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def _rows(variant, first, second=None):
    return [{"variant": variant, "seed": str(s), "metric": "fd-random", "last_k_median": str(v),
             "second_metric": "fd-effnet" if second else "", "second_last_k_median": str(second[s]) if second else ""}
            for s, v in enumerate(first)]


def test_ratios_pair_seeds_and_give_verdicts_per_network():
    rows = _rows("a", [1.0, 2.0, 4.0], [10.0, 10.0, 10.0]) + _rows("b", [2.0, 4.0, 8.0], [10.0, 11.0, 9.0])
    (net1, ratio1, say1), (net2, ratio2, say2) = paired.compare(rows, "a", "b")
    assert (net1, say1) == ("fd-random", "a better") and ratio1.startswith("0.50 [0.50, 0.50]")  # every seed halves
    assert net2 == "fd-effnet" and say2 == "cannot tell"
    g = math.exp((math.log(10 / 10) + math.log(10 / 11) + math.log(10 / 9)) / 3)
    assert ratio2.startswith(f"{g:.2f} [")
    assert paired.compare(rows, "b", "a")[0][2] == "a better"  # the other way round: still a


def test_a_variant_with_one_common_seed_gives_no_verdict():
    rows = _rows("a", [1.0, 2.0]) + _rows("b", [2.0])
    assert paired.compare(rows, "a", "b") == []
