"""What a curious server pays to strip one pairwise mask in flwr 1.42's SecAgg+ (a measurement).

    .venv/bin/python benchmarks/secagg_mask_seeds.py [--candidates 200000]

``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen`` XOR-folds every mask key
(the node's private mask seed, each pairwise ECDH key) to a 32-bit integer and expands it with
NumPy's Mersenne Twister (upstream: flwrlabs/flower#7522, open). In a two-node round the server
learns each node's private mask seed in the unmask stage (that is how it removes the private
masks), so a node's masked vector is its quantised update plus ONE pairwise mask drawn from 2^32
possible seeds. The vector's first entry is the node's weight factor, which the server knows
(round(n / max_weight * 2^22), with n sent in the clear): one mask value per candidate seed tests
it. This script times exactly that test with Flower's own function, over ``--candidates``
seeds, checks that it finds a planted seed, and prints the projected time for all 2^32 seeds
on one core. No attack is run against anyone; nothing here changes how fedsynth works.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

M = 2 ** 32


def first_mask_value(seed32: int) -> int:
    """The first mask entry Flower draws from a key that folds to ``seed32``."""
    return int(pseudo_rand_gen(seed32.to_bytes(4, "little"), M, [(1,)])[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=200_000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    start = int(rng.integers(0, M - a.candidates))
    planted = start + a.candidates // 2
    factor = round(32 / 32 * 2 ** 22)  # a node with max_weight images
    observed = (factor + first_mask_value(planted)) % M  # masked first entry after the private mask is removed
    t0 = time.perf_counter()
    found = [s for s in range(start, start + a.candidates) if (observed - first_mask_value(s)) % M == factor]
    dt = time.perf_counter() - t0
    per = dt / a.candidates
    print(f"{a.candidates} candidate seeds in {dt:.2f} s ({per * 1e6:.2f} us each, one core, load average "
          f"{os.getloadavg()[0]:.1f}); planted seed found: {planted in found} (matches: {len(found)})")
    print(f"all 2^32 seeds: {per * 2 ** 32 / 3600:.1f} core-hours with Flower's own Python function")


if __name__ == "__main__":
    main()
