"""TLS material and SuperNode keys for a Flower deployment, made with ``cryptography``.

``make_certs(out, nodes)`` writes::

    ca.crt, ca.key              a private certificate authority (keep ca.key offline)
    server.pem, server.key      the SuperLink's certificate, signed by the CA
                                (SAN: localhost, 127.0.0.1 and any extra names given)
    keys/node<k>, keys/node<k>.pub
                                one ECDSA P-384 key pair per hospital, OpenSSH format: the
                                operator registers the .pub with `flwr supernode register`,
                                the hospital keeps the private key for --auth-supernode-private-key

Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from .config import UserError


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(out: str | Path, nodes: int, names: tuple[str, ...] = (), days: int = 365) -> list[Path]:
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
    written = [out / "ca.crt", out / "server.pem", out / "server.key"]
    for k in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        _write(out / "keys" / f"node{k}", key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, no_enc), private=True)
        _write(out / "keys" / f"node{k}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                           serialization.PublicFormat.OpenSSH))
        written.append(out / "keys" / f"node{k}.pub")
    return written
