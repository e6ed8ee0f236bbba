"""`fedsynth deploy keygen` (a hospital's own SuperNode key pair, made on site) and the file
count / hint that `fedsynth deploy certs` prints."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key  # noqa: E402

from fedsynth.fed.flower.deploy import make_node_key  # noqa: E402

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "fedsynth.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_keygen_writes_a_p384_pair_that_loads(tmp_path):
    res = _cli("deploy", "keygen", "--out", "keys", "--name", "hospital-a", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    priv, pub = tmp_path / "keys" / "hospital-a", tmp_path / "keys" / "hospital-a.pub"
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["hospital-a", "hospital-a.pub"]
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700   # a folder it made itself
    assert priv.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    key = load_ssh_private_key(priv.read_bytes(), None)
    pkey = load_ssh_public_key(pub.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key().public_numbers() == pkey.public_numbers()    # the .pub belongs to the key
    assert "hospital-a.pub" in res.stdout and "fedsynth deploy register" in res.stdout


def test_keygen_pub_is_what_flower_registers(tmp_path):
    """Flower's own loaders take both files: `flwr supernode register` (public) and
    flower-supernode --auth-supernode-private-key (private)."""
    pytest.importorskip("flwr")
    from cryptography.hazmat.primitives import serialization
    try:
        from flwr.cli.supernode.register import try_load_public_key
    except ImportError:
        pytest.skip("this flwr has no flwr.cli.supernode.register.try_load_public_key (checked on 1.42)")

    priv, pub = make_node_key(tmp_path, "site")
    key = load_ssh_private_key(priv.read_bytes(), None)
    # what `flwr supernode register` sends to the SuperLink: the key as PEM SubjectPublicKeyInfo
    assert try_load_public_key(pub) == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_keygen_refuses_to_overwrite(tmp_path):
    priv, pub = make_node_key(tmp_path / "k", "h")
    before = (priv.read_bytes(), pub.read_bytes())
    res = _cli("deploy", "keygen", "--out", str(tmp_path / "k"), "--name", "h", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "refusing to overwrite" in lines[0]
    assert "Traceback" not in res.stderr
    assert (priv.read_bytes(), pub.read_bytes()) == before
    # a lone .pub left over (private key moved away) is refused too: no new key behind an old .pub
    priv.unlink()
    res = _cli("deploy", "keygen", "--out", str(tmp_path / "k"), "--name", "h", cwd=tmp_path)
    assert res.returncode == 2 and "h.pub already exists" in res.stderr
    assert not priv.exists() and pub.read_bytes() == before[1]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-x"])
def test_keygen_rejects_a_path_as_name(tmp_path, name):
    res = _cli("deploy", "keygen", "--out", str(tmp_path / "k"), f"--name={name}", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--name" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "k").exists()


def test_certs_counts_every_file_it_writes_and_names_the_register_command(tmp_path):
    res = _cli("deploy", "certs", "--out", "certs", "--nodes", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    files = [p for p in (tmp_path / "certs").rglob("*") if p.is_file()]
    assert len(files) == 4 + 2 * 3
    assert f"wrote {len(files)} files" in res.stdout
    assert "fedsynth deploy register certs/keys/node<k>.pub" in res.stdout
    for p in files:   # every private key 0600
        if p.name in ("ca.key", "server.key") or (p.parent.name == "keys" and p.suffix != ".pub"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_certs_with_no_node_keys_for_hospitals_that_make_their_own(tmp_path):
    res = _cli("deploy", "certs", "--out", "certs", "--nodes", "0", "--name", "fedsynth.consortium.example",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "certs").rglob("*") if p.is_file()) == \
        ["ca.crt", "ca.key", "server.key", "server.pem"]
    assert "wrote 4 files" in res.stdout and "fedsynth deploy keygen" in res.stdout
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fedsynth.consortium.example" in san.get_values_for_type(x509.DNSName)
    res = _cli("deploy", "certs", "--out", "c2", "--nodes", "-1", cwd=tmp_path)
    assert res.returncode == 2 and "--nodes" in res.stderr and not (tmp_path / "c2").exists()
