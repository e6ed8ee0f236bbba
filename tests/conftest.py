import contextlib
from pathlib import Path

import pytest
import torch

TINY = [
    "data.image-size=16", "data.num-images=64", "model.nz=16", "model.ngf=8", "model.ndf=8",
    "train.batch-size=16", "fed.rounds=2", "eval.num-samples=64", "eval.kid-subsets=5",
    "eval.kid-subset-size=16", "eval.grid-size=16",
    "eval.feature-extractor=random",  # auto would pick the trained EfficientNet: seconds per evaluation
    "fed.min-local-steps=0",  # one epoch (2 steps) per round: tests check mechanics, not learning
    "train.threads=1",  # a run sets its process's threads (fed/assembly.py): two test workers, one core each
]


SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def slow_tests() -> set[str]:
    """Test ids (``tests/test_x.py::test_y``, parameters left out) that ``tests/slow_tests.txt``
    lists: measured slower than the fast subset allows (``tests/find_slow.py`` writes the file)."""
    if not SLOW_LIST.is_file():
        return set()
    return {line.split("#")[0].strip() for line in SLOW_LIST.read_text().splitlines()} - {""}


def pytest_collection_modifyitems(config, items):
    """Mark the listed tests ``slow``: ``pytest -m "not slow"`` is the fast subset."""
    slow = slow_tests()
    for item in items:
        if item.nodeid.split("[")[0] in slow:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own statistics cache and working directory; one torch thread."""
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Overrides for a seconds-long run: 16 px, 64 images, 8-channel networks."""
    return list(TINY)



@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Two hospitals' folders (client-0/, client-1/) of 32 phantom-xray images at 16 px, written
    by `fedsynth data split`: what the Flower and secure-aggregation tests' nodes read."""
    from typer.testing import CliRunner

    from fedsynth.cli import app
    root = tmp_path_factory.mktemp("sites")
    res = CliRunner().invoke(app, ["data", "split", "phantom-xray", "-k", "2", "--out", str(root / "sites"),
                                   "--set", "data.num-images=64", "--set", "data.image-size=16"])
    assert res.exit_code == 0, res.output
    return root / "sites"


@contextlib.contextmanager
def local_http_server(handler):
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler`` in a thread; yields
    its base URL and stops it on exit (weights downloads tested without a network)."""
    import http.server
    import threading
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join()


def kill_9_when(cmd, env, ready, timeout=300.0):
    """Start ``cmd``, wait until ``ready()`` holds (or ``timeout`` s pass, or the process ends),
    SIGKILL it and reap it. Returns whether it was still running when killed (the kill -9 +
    resume tests)."""
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def need_chromium() -> str:
    """The chromium binary for a test that looks at a page in a browser. Outside CI a machine
    without it skips the test with one line saying how to enable it; in CI (CI=true, set by
    .ci/run, which installs it) a missing browser is a failure."""
    import os

    from tools.browser import chromium
    path = chromium()
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed, and CI=true: CI must install it (apt-get install chromium)")
        pytest.skip("Chromium not found: install it (apt-get install chromium) to look at report.html in a browser")
    return path


@pytest.fixture
def chromium_bin() -> str:
    """:func:`need_chromium` as a fixture: list it first, so that a skip comes before the others are built."""
    return need_chromium()


@pytest.fixture
def wide_cli(monkeypatch):
    """The CLI's consoles 1,000 columns wide, whatever width an earlier test left them: printed
    lines (long temporary paths included) are never wrapped or folded."""
    from fedsynth import cli
    for c in (cli.console, cli.err_console):
        monkeypatch.setattr(c, "_width", 1000)
        monkeypatch.setattr(c, "_height", 25)
