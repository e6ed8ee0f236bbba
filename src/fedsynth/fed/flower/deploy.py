"""TLS material and SuperNode keys for a Flower deployment, made with ``cryptography``.

``make_certs(out, nodes)`` writes::

    ca.crt, ca.key              a private certificate authority (keep ca.key offline)
    server.pem, server.key      the SuperLink's certificate, signed by the CA
                                (SAN: localhost, 127.0.0.1 and any extra names given)
    keys/node<k>, keys/node<k>.pub
                                one ECDSA P-384 key pair per hospital, OpenSSH format: the
                                operator registers the .pub with `fedsynth deploy register`
                                (Flower's `flwr supernode register` in fedsynth's environment),
                                the hospital keeps the private key for --auth-supernode-private-key

Private keys are written with mode 0600. ``make_node_key(out, name)`` makes one such key pair
alone, for a hospital that makes its own key on site (``fedsynth deploy keygen``) and sends only
the ``.pub`` to the operator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

from ...config import UserError


def _write(path: Path, data: bytes, private: bool = False, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(out: str | Path, nodes: int, names: tuple[str, ...] = (), days: int = 365) -> list[Path]:
    """Write the CA, the SuperLink's certificate and ``nodes`` key pairs under ``out`` (layout in
    the module docstring): 4 + 2 x ``nodes`` files, whose paths are returned (the CLI reports
    their count). Refuses a folder that already holds a CA."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover
        raise UserError("making certificates needs cryptography: pip install 'fedsynth[flower]'") from None
    out = Path(out)
    if (out / "ca.key").exists():
        raise UserError(f"{out} already holds a CA (ca.key); refusing to overwrite it")
    now = dt.datetime.now(dt.timezone.utc)
    pem = serialization.Encoding.PEM

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(name("fedsynth CA")).issuer_name(name("fedsynth CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    srv_key = ec.generate_private_key(ec.SECP384R1())
    sans: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    srv = (x509.CertificateBuilder().subject_name(name("fedsynth SuperLink")).issuer_name(ca.subject)
           .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .sign(ca_key, hashes.SHA384()))
    no_enc = serialization.NoEncryption()
    _write(out / "ca.crt", ca.public_bytes(pem))
    _write(out / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_enc), private=True)
    _write(out / "server.pem", srv.public_bytes(pem))
    _write(out / "server.key", srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_enc), private=True)
    written = [out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key"]
    for k in range(nodes):
        written += _write_node_key(out / "keys", f"node{k}")
    return written


def _write_node_key(folder: Path, name: str, exclusive: bool = False) -> list[Path]:
    """A fresh ECDSA P-384 key pair, OpenSSH format: ``folder/name`` (0600) and ``folder/name.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / name, folder / f"{name}.pub"
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True, exclusive=exclusive)
    _write(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
           + b"\n", exclusive=exclusive)
    return [priv, pub]


def make_node_key(out: str | Path, name: str) -> tuple[Path, Path]:
    """One hospital's SuperNode key pair, made on site: ``out/name`` (private, mode 0600; it
    never leaves the hospital: ``flower-supernode --auth-supernode-private-key``) and
    ``out/name.pub`` (the only file sent to the operator, for ``fedsynth deploy register``).
    ECDSA P-384 in OpenSSH format, as :func:`make_certs` makes them. Refuses to overwrite either
    file; returns (private, public)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:  # pragma: no cover
        raise UserError("making keys needs cryptography: pip install 'fedsynth[flower]'") from None
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("-"):
        raise UserError(f"--name {name!r}: give a plain file name such as 'hospital-a' (no path)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    priv, pub = out / name, out / f"{name}.pub"
    for f in (priv, pub):
        if f.exists() or f.is_symlink():
            raise UserError(f"{f} already exists; refusing to overwrite a key (move it away or choose another --name)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: only this user enters it
    try:
        return tuple(_write_node_key(out, name, exclusive=True))  # type: ignore[return-value]
    except FileExistsError as e:  # appeared meanwhile
        raise UserError(f"{e.filename} already exists; refusing to overwrite a key") from None


# ------------------------------------------------------------------ Flower processes

#: What fedsynth sets for every Flower process it starts (``setdefault``: the caller's own
#: environment wins). The first three keep Flower off the network and off pip; the poll interval
#: lets a SuperExec notice a waiting ClientApp/ServerApp task in 50 ms instead of Flower's 1 s.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
}


def flower_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`FLOWER_ENV` filled in, and
    this interpreter's ``bin`` first on PATH (Flower finds ``flwr-clientapp`` there)."""
    import sys
    env = dict(os.environ if base is None else base)
    for k, v in FLOWER_ENV.items():
        env.setdefault(k, v)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def start_worker() -> str:
    """Start a warm node worker (:mod:`fedsynth.fed.flower.worker`) as a child of this process, which
    is about to become the SuperNode (``os.execve``); return its socket path, in a fresh folder
    only this user can enter. The worker exits when its parent does."""
    import subprocess
    import sys
    import tempfile
    folder = tempfile.mkdtemp(prefix="fedsynth-node-")  # mode 0700
    path = str(Path(folder) / "worker.sock")
    subprocess.Popen([sys.executable, "-m", "fedsynth.fed.flower.worker", "--socket", path, "--parent", str(os.getpid())],
                     stdin=subprocess.DEVNULL)
    return path


def flower_bin(name: str) -> str:
    """Path of a Flower command: beside this interpreter if there, else on PATH."""
    import shutil
    import sys
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"'{name}' not found: install Flower with pip install 'fedsynth[flower]'")
    return found


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"  # a zombie has exited already


def _session_members(sids: set[int]) -> list[int]:
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


def _descendants(pids: set[int]) -> set[int]:
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
    pids = set(top) | set(_session_members(set(top)))
    pids = sorted(pids | _descendants(pids))
    send(pids, signal.SIGKILL)
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    for p in procs:
        p.wait(timeout=10)
    left = sorted(set(_session_members(set(top))) | {p for p in pids if _alive(p)})
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
    certs : folder written by :func:`make_certs` (TLS + node authentication), or None: insecure
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


# ------------------------------------------------------------------ starting a run

#: The Flower app folder (its pyproject.toml names fedsynth's ServerApp and ClientApp).
APP_DIR = Path(__file__).resolve().parent / "app"


def run_config_file(path: Path, config_text: str, out: str, clients: int, extra: dict[str, object]) -> Path:
    """A TOML file of run-config overrides for ``flwr run --run-config FILE``. The fedsynth
    config travels *as text* with the run, so the ServerApp needs no file on the SuperLink's
    machine (it is not sensitive: no data paths are in it that the server would use)."""
    import json
    lines = [f"config-text = {json.dumps(config_text)}", f"out = {json.dumps(out)}", f"clients = {int(clients)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def stream_run(args: list[str], env: dict[str, str], echo=print) -> int:
    """Run ``flwr run ... --stream``, echo its output live, and return an honest exit code:
    Flower's own is 0 even when the ServerApp failed, so the ServerApp's last word decides
    (``[fedsynth] done`` -> 0, ``[fedsynth] error`` -> 2, neither -> 1)."""
    import subprocess
    done = failed = False
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as p:
        assert p.stdout is not None
        for line in p.stdout:
            echo(line.rstrip("\n"))
            done |= line.startswith("[fedsynth] done")
            failed |= line.startswith("[fedsynth] error")
    if failed:
        return 2
    if p.returncode != 0:
        return p.returncode
    return 0 if done else 1


def prepare_run(config, overrides, out, clients: int, resume) -> tuple:
    """The config and run directory of ``fedsynth deploy run``, checked before anything is sent:
    a resume takes the directory's own config.toml; a new run must not reuse a directory."""
    import time

    from ...config import check_output_path, load_config
    target = None
    if resume is not None:
        if config is not None or overrides or out is not None:
            raise UserError("--resume continues a run with its own config.toml and folder: "
                            "leave out --config, --set and --out")
        if not (Path(resume) / "config.toml").is_file():
            raise UserError(f"--resume {resume}: no config.toml there (not a run directory)")
        config, target = Path(resume) / "config.toml", Path(resume).resolve()
    cfg = load_config(config, overrides)
    if clients < 1:
        raise UserError("--clients must be at least 1")
    if target is None:
        target = (Path(out) if out else Path("runs") / time.strftime("flower-%Y%m%d-%H%M%S")).resolve()
        check_output_path(target, "--out")
        if (target / "config.toml").exists():
            raise UserError(f"--out {target} already holds a run (config.toml exists); choose another "
                            f"directory, or continue it with --resume {target}")
    flower_bin("flwr")
    return cfg, target


def run_flower(cfg, target: Path, clients: int, superlink: str, round_timeout: float, resume: bool, echo=print,
               audit_dir: str = "") -> int:
    """``flwr run APP [superlink] --stream`` with the fedsynth config sent along; the exit code is
    non-zero when the server reported an error (Flower's own is not). ``audit_dir``: the server
    writes every reply it receives there."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        rc = run_config_file(Path(d) / "run-config.toml", cfg.to_toml(), str(target), clients,
                             {"round-timeout": round_timeout, "resume": resume, "audit-dir": audit_dir})
        args = [flower_bin("flwr"), "run", str(APP_DIR), *([superlink] if superlink else []), "--stream",
                "--run-config", str(rc)]
        return stream_run(args, flower_env(), echo=echo)
