"""The fast subset (``pytest -m "not slow"``): the listed slow tests exist, and the list is
written from JUnit XML times as tests/find_slow.py says."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import SLOW_LIST, slow_tests

HERE = Path(__file__).parent


def test_every_listed_slow_test_exists():
    """A renamed or deleted test would leave a stale line and its successor in the fast subset."""
    for test_id in slow_tests():
        path, *names = test_id.split("::")
        source = (HERE.parent / path).read_text()
        assert re.search(rf"^\s*(async )?def {re.escape(names[-1])}\(", source, re.M), f"{SLOW_LIST.name}: {test_id}"


def test_find_slow_lists_the_slowest_until_the_rest_fits(tmp_path, monkeypatch):
    junit = tmp_path / "junit.xml"
    cases = [("tests.test_a", "test_big[1]", 30.0), ("tests.test_a", "test_big[2]", 30.0),
             ("tests.test_b", "test_mid", 6.0), ("tests.test_b.TestK", "test_small", 1.0),
             ("tests.test_c", "test_tiny", 0.5)]
    junit.write_text("<testsuites><testsuite>" + "".join(
        f'<testcase classname="{c}" name="{n}" time="{t}"/>' for c, n, t in cases) + "</testsuite></testsuites>")
    import find_slow
    assert find_slow.durations_of(junit) == {"tests/test_a.py::test_big": 60.0, "tests/test_b.py::test_mid": 6.0,
                                             "tests/test_b.py::TestK::test_small": 1.0, "tests/test_c.py::test_tiny": 0.5}
    monkeypatch.setattr(find_slow, "HERE", tmp_path)
    monkeypatch.setattr(sys, "argv", ["find_slow.py", str(junit), "--budget", "5", "--workers", "1", "--max", "5"])
    find_slow.main()
    listed = [x.split("#")[0].strip() for x in (tmp_path / "slow_tests.txt").read_text().splitlines()
              if x.strip() and not x.startswith("#")]
    assert listed == ["tests/test_a.py::test_big", "tests/test_b.py::test_mid"]  # the rest: 1.5 s <= 5 s


def test_the_fast_subset_leaves_out_what_the_list_names():
    """pytest itself applies the marker: a listed test is deselected by -m "not slow"."""
    listed = sorted(slow_tests())
    if not listed:
        return
    path = listed[0].split("::")[0]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "--collect-only", "-m", "not slow", path],
                         capture_output=True, text=True, cwd=HERE.parent).stdout
    assert listed[0].split("::")[-1] not in out, out[-2000:]
