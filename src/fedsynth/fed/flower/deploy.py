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


def exec_flower(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Replace this process with the Flower command ``name`` (same PID), in fedsynth's Flower
    environment (:func:`flower_env`) plus ``extra_env``. A :class:`UserError` if it is not installed."""
    path = flower_bin(name)
    os.execve(path, [name, *args], {**flower_env(), **(extra_env or {})})


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
