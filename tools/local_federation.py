"""A SuperLink and SuperNodes on 127.0.0.1 for tests, benchmarks and trying it out
(:class:`LocalFederation`), and stopping processes by PID (:func:`stop_processes`).

Test and benchmark tooling, outside the installed package: the product starts Flower's
processes with ``fedsynth deploy`` (:mod:`fedsynth.fed.flower.deploy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedsynth.fed.flower.deploy import flower_bin, flower_env


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"  # a zombie has exited already


def session_members(sids: set[int]) -> list[int]:
    """PIDs of every live process in one of these sessions (Flower starts some helpers through
    a short-lived intermediate, so they are nobody's descendants; the session id stays)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None and f[0] != "Z" and int(f[3]) in sids:  # field 6 of stat: session id
                out.append(int(d.name))
    return out


def wait_port(port: int, seconds: float = 60) -> None:
    """Return once something listens on 127.0.0.1:``port``; TimeoutError after ``seconds``."""
    import socket
    import time
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def descendants(pids: set[int]) -> set[int]:
    """Every live descendant of these PIDs (by parent PID, from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None and f[0] != "Z":
                children.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = set(), list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def stop_processes(procs: list) -> None:
    """Stop these ``subprocess.Popen`` processes -- each started with ``start_new_session`` --
    and everything they spawned, by PID: the supervisors are frozen first (SIGSTOP) so that they
    cannot respawn a helper meanwhile, then every member of their sessions and every descendant
    gets SIGKILL. Raises if anything survives."""
    import signal
    import time

    def send(pids, sig):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    top = [p.pid for p in procs]
    send(top, signal.SIGSTOP)
    pids = set(top) | set(session_members(set(top)))
    pids = sorted(pids | descendants(pids))
    send(pids, signal.SIGKILL)
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    for p in procs:
        p.wait(timeout=10)
    left = sorted(set(session_members(set(top))) | {p for p in pids if _alive(p)})
    if left:
        raise RuntimeError(f"processes survived: {left}")


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1, for tests, benchmarks and trying it out.

    Every command is started in a session of its own; :meth:`stop` stops them -- and everything
    they spawned, orphans included -- by PID (found by session id), never by name.

    Parameters
    ----------
    workdir : folder for the SuperLink database and the Flower home (``FLWR_HOME``)
    nodes : ``[(data_path, client_id), ...]``, one SuperNode each; a third item, a dict, adds node
        config keys -- a site's own settings, e.g. ``{"model.ndf": 32}`` (docs/heterogeneous.md)
    certs : folder written by :func:`fedsynth.fed.flower.deploy.make_certs` (TLS + node authentication), or None: insecure
    port : the SuperLink's port; SuperNode ``k`` uses ``node_port + k`` (default ``port + 100 + k``)
    warm : start the SuperNodes as ``fedsynth deploy supernode`` does, with a warm worker each

    Faults, for tests and benchmarks/soak.py: :meth:`restart_node` SIGKILLs one SuperNode (with its
    worker and ClientApp processes: a crashed or rebooted hospital machine) and starts it again
    with the same key and data; :meth:`restart_superlink` does the same to the SuperLink (and
    the ServerApp it runs), keeping its database -- the registered nodes and their ids.
    """

    def __init__(self, workdir: str | Path, nodes: list[tuple], certs: str | Path | None = None,
                 port: int = 18000, env: dict[str, str] | None = None, log_dir: str | Path | None = None,
                 warm: bool = True, node_port: int | None = None):
        self.workdir, self.nodes, self.port, self.warm = Path(workdir), nodes, port, warm
        self.node_port = port + 100 if node_port is None else node_port
        self.certs = Path(certs) if certs is not None else None
        self.home = self.workdir / "flwr-home"
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.env = flower_env(env)
        self.env["FLWR_HOME"] = str(self.home)
        self.env.pop("FEDSYNTH_NODE_WORKER", None)  # each warm SuperNode gets its own
        self.procs: list = []
        self.node_procs: list = []
        self.by_node: dict[int, Any] = {}  # hospital k -> its SuperNode process
        self.superlink: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _popen(self, args: list[str], name: str):
        import subprocess
        if self.log_dir is None:
            p = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
                p = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start_superlink(self, fresh: bool = True) -> None:
        """Start the SuperLink; ``fresh``: with a new database (no nodes from an earlier federation)."""
        self.home.mkdir(parents=True, exist_ok=True)
        for old in self.workdir.glob("state.db*") if fresh else ():
            old.unlink()
        tls = (f'root-certificates = "{self.certs / "ca.crt"}"\n' if self.certs else "insecure = true\n")
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                               f'address = "{self.address}"\n{tls}')
        args = [flower_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.workdir / "state.db")]
        if self.certs:
            args += ["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
                     "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth"]
        else:
            args += ["--insecure"]
        self.superlink = self._popen(args, "superlink")
        wait_port(self.port)

    def register(self, k: int) -> None:
        """The operator registers hospital ``k``'s public key (TLS mode only)."""
        import subprocess
        res = subprocess.run([flower_bin("flwr"), "supernode", "register", str(self.certs / "keys" / f"node{k}.pub"),
                              "local"], env=self.env, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"flwr supernode register node{k}.pub failed: {(res.stdout + res.stderr)[-500:]}")

    def start_node(self, k: int, data_path: str, client_id: str, key: str | None = None,
                   settings: dict[str, object] | None = None):
        """A SuperNode for hospital ``k``: ``fedsynth deploy supernode`` (with a warm worker) if
        this federation is ``warm``, else plain ``flower-supernode``. ``settings``: the site's own
        ``section.key`` values, added to its node config."""
        import json
        import sys
        cmd = ([sys.executable, "-m", "fedsynth.cli", "deploy", "supernode"] if self.warm
               else [flower_bin("flower-supernode")])
        extra = "".join(f" {k}={json.dumps(v)}" for k, v in (settings or {}).items())
        args = cmd + ["--superlink", self.address, "--port", str(self.node_port + k),
                      "--node-config", f'data-path="{data_path}" client-id="{client_id}"{extra}']
        if self.certs:
            args += ["--root-certificates", str(self.certs / "ca.crt"),
                     "--auth-supernode-private-key", str(self.certs / "keys" / (key or f"node{k}"))]
        else:
            args += ["--insecure"]
        p = self._popen(args, f"supernode-{k}")
        self.node_procs.append(p)
        self.by_node[k] = p
        return p

    def kill(self, proc) -> None:
        """SIGKILL one process started here, with everything it spawned (:func:`stop_processes`)."""
        stop_processes([proc])
        self.procs = [p for p in self.procs if p is not proc]
        self.node_procs = [p for p in self.node_procs if p is not proc]

    def restart_node(self, k: int, down: float = 0.0):
        """SIGKILL hospital ``k``'s SuperNode (and its worker and ClientApp processes), wait
        ``down`` seconds, start it again with the same key, data and node config."""
        import time
        self.kill(self.by_node[k])
        time.sleep(down)
        path, cid, *settings = self.nodes[k]
        return self.start_node(k, path, cid, settings=settings[0] if settings else None)

    def revive(self) -> list[int]:
        """Start again every SuperNode whose process has ended -- as a service manager would
        (systemd ``Restart=always``, a Kubernetes pod). Flower 1.42 refuses a node whose key is
        still online (exit 305): a killed SuperNode counts as online until it misses two
        heartbeats (Flower's interval is 30 s, fixed), so a restart may take a few tries.
        Returns the hospitals started again."""
        out = []
        for k, p in list(self.by_node.items()):
            if p.poll() is not None:
                self.kill(p)  # its leftovers (a SuperExec that still retries) go with it
                path, cid, *settings = self.nodes[k]
                self.start_node(k, path, cid, settings=settings[0] if settings else None)
                out.append(k)
        return out

    def restart_superlink(self, down: float = 0.0) -> None:
        """SIGKILL the SuperLink (and the ServerApp it runs), then start it again on the same
        database: the registered keys and node ids stay; the SuperNodes reconnect by themselves."""
        import time
        self.kill(self.superlink)
        time.sleep(down)
        self.start_superlink(fresh=False)

    def start(self) -> "LocalFederation":
        self.start_superlink()
        for k, (path, cid, *settings) in enumerate(self.nodes):
            if self.certs:
                self.register(k)
            self.start_node(k, path, cid, settings=settings[0] if settings else None)
        return self

    def run(self, app_dir: str | Path, run_config: dict[str, object], timeout: float = 600):
        """``flwr run APP local --stream`` with these run-config overrides; the CompletedProcess."""
        import json
        import subprocess
        items = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        return subprocess.run([flower_bin("flwr"), "run", str(app_dir), "local", "--stream", "--run-config", items],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Stop every process started here, by PID (see :func:`stop_processes`)."""
        procs, self.procs, self.node_procs = self.procs, [], []
        stop_processes(procs)

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
