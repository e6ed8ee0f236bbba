"""Write ``tests/slow_tests.txt`` from a measured run of the whole suite, so that
``pytest -m "not slow"`` (the fast subset) stays within a time budget.

    .venv/bin/python -m pytest -q --junitxml=/tmp/junit.xml      # the whole suite, measured
    .venv/bin/python tests/find_slow.py /tmp/junit.xml --budget 100

A test's time is its setup, call and teardown as JUnit XML records them (pytest's own
``--junitxml``); parametrised cases count together under their test. The slowest tests are
listed until the rest fit in ``--budget`` seconds of one worker's time times the workers
(``-n 2``), and every test slower than ``--max`` seconds is listed whatever the budget.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent


def durations_of(junit: Path) -> dict[str, float]:
    """Seconds per test id (``tests/test_x.py::test_y``), parametrised cases summed."""
    times: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        name = case.get("name", "").split("[")[0]
        cls = [m for m in module if m[:1].isupper()]  # a test class: tests.test_x.TestY
        path = "/".join(m for m in module if not m[:1].isupper()) + ".py"
        times["::".join([path, *cls, name])] += float(case.get("time", 0) or 0)
    return dict(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("junit", type=Path)
    ap.add_argument("--budget", type=float, default=100.0, help="seconds the fast subset may take (wall, -n 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max", type=float, default=5.0, help="a test slower than this is always listed")
    args = ap.parse_args()
    times = durations_of(args.junit)
    order = sorted(times, key=times.get, reverse=True)
    rest = sum(times.values())
    slow = []
    for t in order:
        if times[t] <= args.max and rest <= args.budget * args.workers:
            break
        slow.append(t)
        rest -= times[t]
    lines = ["# Tests left out of the fast subset (pytest -m 'not slow'): written by tests/find_slow.py",
             f"# from a measured run; {len(slow)} of {len(times)} tests, {sum(times.values()) - rest:.0f} s of "
             f"{sum(times.values()):.0f} s. The fast subset: {len(times) - len(slow)} tests, {rest:.0f} s of "
             "worker time."]
    lines += [f"{t}  # {times[t]:.1f} s" for t in sorted(slow)]
    (HERE / "slow_tests.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(slow)} slow tests listed; the rest: {len(times) - len(slow)} tests, {rest:.0f} s of worker time")


if __name__ == "__main__":
    main()
