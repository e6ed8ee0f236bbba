"""`fedsynth weights fetch`: a checked, atomic download, against a local HTTP server on 127.0.0.1."""

import hashlib
import http.server

import pytest
from typer.testing import CliRunner

from conftest import local_http_server
from fedsynth import weights
from fedsynth.cli import app
from fedsynth.config import UserError
from fedsynth.metrics import find_inception_weights

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
runner = CliRunner()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        if self.path == "/short":  # announces the whole file, sends a third, then hangs up
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    with local_http_server(_Handler) as url:
        yield url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _serve_as_inception(monkeypatch, url, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD)):
    w = weights.WEIGHTS["inception"]
    monkeypatch.setitem(weights.WEIGHTS, "inception",
                        weights.WeightsFile(w.name, w.what, url, w.filename, w.folder, sha256, size))


def test_the_pinned_inception_checksum_agrees_with_the_file_name():
    # torch.hub names checkpoints with the first 8 hex digits of their SHA-256.
    w = weights.WEIGHTS["inception"]
    assert w.filename.split("-")[-1].split(".")[0] == w.sha256[:8] and len(w.sha256) == 64


def test_right_checksum_is_stored_where_the_fid_libraries_look(server, hub, monkeypatch):
    _serve_as_inception(monkeypatch, server + "/file")
    seen = []
    path, digest, new = weights.fetch("inception", progress=lambda n, total: seen.append((n, total)))
    assert new and path == hub / "weights-inception-2015-12-05-6726825d.pth"
    assert path.read_bytes() == PAYLOAD and digest == hashlib.sha256(PAYLOAD).hexdigest()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in hub.iterdir()) == [path.name]          # no temporary file left
    assert find_inception_weights() == path                              # auto/inception now find it
    again = weights.fetch("inception")
    assert again == (path, digest, False)                                # no second download


@pytest.mark.parametrize("route, sha, message", [
    ("/file", "0" * 64, "checksum"),                 # wrong checksum
    ("/short", None, "incomplete|failed"),           # the server hangs up after a third of the file
])
def test_a_bad_download_stores_nothing(server, hub, monkeypatch, route, sha, message):
    _serve_as_inception(monkeypatch, server + route, **({"sha256": sha} if sha else {}))
    with pytest.raises(UserError, match=message):
        weights.fetch("inception")
    assert list(hub.iterdir()) == []                 # no file, no partial file
    assert find_inception_weights() is None


def test_an_interrupted_download_stores_nothing(server, hub, monkeypatch):
    _serve_as_inception(monkeypatch, server + "/file")

    def ctrl_c_half_way(n, total):
        if n >= len(PAYLOAD) // 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        weights.fetch("inception", progress=ctrl_c_half_way)
    assert list(hub.iterdir()) == []


def test_cli_fetch_refuses_a_wrong_checksum_with_exit_2(server, hub, monkeypatch):
    _serve_as_inception(monkeypatch, server + "/file", sha256="f" * 64)
    res = runner.invoke(app, ["weights", "fetch", "inception"])
    assert res.exit_code == 2 and "checksum" in res.output and "Traceback" not in res.output
    assert not hub.exists() or list(hub.iterdir()) == []
    _serve_as_inception(monkeypatch, server + "/file")
    res = runner.invoke(app, ["weights", "fetch", "inception"])
    assert res.exit_code == 0, res.output
    assert "stored" in res.output and "verified" in res.output
    assert (hub / weights.WEIGHTS["inception"].filename).read_bytes() == PAYLOAD
    listing = runner.invoke(app, ["weights", "list"])
    assert listing.exit_code == 0 and "inception" in listing.output and "yes" in listing.output


def test_unpinned_weights_take_a_checksum_from_the_user(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = weights.WEIGHTS["dinov2"]
    monkeypatch.setitem(weights.WEIGHTS, "dinov2",
                        weights.WeightsFile(w.name, w.what, server + "/file", w.filename, w.folder, None, None))
    with pytest.raises(UserError, match="checksum"):
        weights.fetch("dinov2", sha256="1" * 64)
    path, digest, new = weights.fetch("dinov2", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert new and path.name == "dinov2_vitl14_pretrain.pth" and path.read_bytes() == PAYLOAD


def test_unknown_weights_name_is_a_user_error():
    res = runner.invoke(app, ["weights", "fetch", "resnet"])
    assert res.exit_code == 2 and "unknown weights 'resnet'" in res.output
