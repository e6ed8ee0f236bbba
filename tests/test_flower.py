"""Flower deployment engine on 127.0.0.1 with TLS and SuperNode authentication: a SuperLink, two
registered SuperNodes (each hospital reading its own folder) and one SuperNode with an unregistered
key, which must be refused; two rounds; the global weights must be bit-identical to the in-process
engine's.
Skipped where flwr is not installed (pip install -e ".[flower]"). Every process started here is
stopped by PID, with its descendants (the SuperLink starts its SuperExec detached)."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

BIN = Path(sys.executable).parent


def _wait_port(port: int, seconds: float = 60) -> None:
    import socket
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(x) for x in out]
    return kids + [d for k in kids for d in _descendants(k)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited already
    except FileNotFoundError:
        return False


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _session_members(sids: set[int]) -> list[int]:
    """PIDs of every live process in one of these sessions (orphans included: Flower starts
    some helpers through a short-lived intermediate, so they are nobody's descendants)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[3]) in sids and fields[0] != "Z":   # field 6 of stat: the session id
                out.append(int(d.name))
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop every process started here, by PID: each Flower command was started in a session of
    its own, so everything it spawned -- descendants and orphans -- is found by session id.
    The supervisors are frozen first (SIGSTOP) so they cannot respawn a helper meanwhile."""
    top = [p.pid for p in procs]
    _signal(top, 19)
    pids = sorted(set(top + [d for p in top for d in _descendants(p)] + _session_members(set(top))))
    _signal(pids, 9)
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    for p in procs:
        p.wait(timeout=10)
    assert not any(_alive(p) for p in pids) and not _session_members(set(top)), "a Flower process survived"


@pytest.mark.smoke
def test_tls_authenticated_supernodes_match_the_in_process_engine(tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.config import load_config
    from fedsynth.data import load_dataset
    from fedsynth.fed import FederatedRun

    res = CliRunner().invoke(app, ["data", "split", "phantom-xray", "-k", "2", "--out", str(tmp_path / "sites"),
                                   "--set", "data.num-images=64", "--set", "data.image-size=16"])
    assert res.exit_code == 0, res.output
    (tmp_path / "fedsynth.toml").write_text("[data]\nimage-size = 16\n[model]\nnz = 16\nngf = 8\nndf = 8\n"
                                            "[train]\nbatch-size = 16\nthreads = 1\n[fed]\nrounds = 2\n"
                                            "[eval]\nenabled = false\n")
    appdir = tmp_path / "app"
    appdir.mkdir()
    text = (Path(__file__).parent.parent / "deploy" / "flower-app" / "pyproject.toml").read_text()
    text = text.replace('config-path = "fedsynth.toml"', f'config-path = "{tmp_path / "fedsynth.toml"}"')
    text = text.replace('out = "runs/flower"', f'out = "{tmp_path / "run"}"')
    (appdir / "pyproject.toml").write_text(text)
    certs = tmp_path / "certs"
    assert CliRunner().invoke(app, ["deploy", "certs", "--out", str(certs), "--nodes", "3"]).exit_code == 0
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = 18000 + os.getpid() % 1000
    (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                      f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(home),
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "FEDSYNTH_CACHE": str(tmp_path / "cache")}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
             "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
             "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port),
             "--database", str(tmp_path / "state.db")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        _wait_port(port)
        for k in (0, 1):  # the operator registers the two hospitals' public keys
            reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(certs / "keys" / f"node{k}.pub"),
                                  "loopback"], env=env, capture_output=True, text=True, timeout=60)
            assert reg.returncode == 0, reg.stdout + reg.stderr

        def node(key: str, cid: str, data: str, port_off: int) -> subprocess.Popen:
            return subprocess.Popen(
                [str(BIN / "flower-supernode"), "--root-certificates", str(certs / "ca.crt"),
                 "--superlink", f"127.0.0.1:{port}", "--port", str(port + 100 + port_off),
                 "--auth-supernode-private-key", str(certs / "keys" / key),
                 "--node-config", f'data-path="{data}" client-id="{cid}"'],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for k in (0, 1):
            procs.append(node(f"node{k}", str(k), str(tmp_path / "sites" / f"client-{k}"), k))
        intruder = node("node2", "9", str(tmp_path / "sites" / "client-0"), 2)  # key never registered
        procs.append(intruder)
        run = subprocess.run([str(BIN / "flwr"), "run", str(appdir), "loopback", "--stream"], env=env,
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert intruder.wait(timeout=60) != 0  # refused by the SuperLink (Flower exits with 305)
    finally:
        _stop(procs)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0002.pt", weights_only=False)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["round-0000.png", "round-0001.png", "round-0002.png"]
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()

    cfg = load_config(tmp_path / "fedsynth.toml")
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="folder", path=str(tmp_path / "sites" / f"client-{k}")))) for k in (0, 1)]
    ref = FederatedRun(cfg, parts, client_ids=["0", "1"]).run()
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)
