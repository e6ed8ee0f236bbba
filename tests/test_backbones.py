"""Discriminator backbones (model.d-arch), ImageNet weights from the libraries' caches, the
upsample-CNN generator (model.g-arch) and `fedsynth weights fetch` for backbones (issue 14).

Tiny images (16-32 px), 2-4 images, one or two steps: the point is that every combination
builds, its gradients reach every part, and it round-trips, not that it learns."""

import hashlib
import http.server

import numpy as np
import pytest
import torch

from conftest import local_http_server
from fedsynth import weights
from fedsynth.config import UserError, build_config, load_config
from fedsynth.data import ImageSet
from fedsynth.models import BACKBONES, build_backbone, build_model, model_from_description
from fedsynth.registry import D_ARCHS

BN = {"resnet18", "resnet50", "levit_128s"}           # BatchNorm inside; the others: LayerNorm


def _data(n=4, size=16, channels=1, classes=2):
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8),
                    np.arange(n) % classes, tuple("ab"[:classes]), "tiny")


def _model(*sets, size=16, channels=1, classes=0):
    cfg = load_config(None, ["model.nz=8", "model.ngf=4", "model.ndf=4", *sets])
    return build_model(cfg, size, channels, classes)


_TRUNKS: dict = {}


@pytest.fixture
def reuse_trunks(monkeypatch):
    """Builds each backbone once per session and hands out copies: ViT-B/16's initialisation
    alone takes a second, and the three heads need the same trunk."""
    import copy

    import fedsynth.models.gan as gan_module

    def cached(name, in_channels, image_size, pretrained=False):
        key = (name, in_channels, image_size, pretrained)
        if key not in _TRUNKS:
            _TRUNKS[key] = build_backbone(name, in_channels, image_size, pretrained)
        return copy.deepcopy(_TRUNKS[key])
    monkeypatch.setattr(gan_module, "build_backbone", cached)


@pytest.mark.parametrize("cond", ["none", "projection", "acgan"])
@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_backbone_discriminator_trains(arch, cond, reuse_trunks):
    sets = [f"model.d-arch={arch}", "model.g-arch=upsample-cnn"]
    if cond != "none":
        sets += ["model.conditional=multiply", f"model.d-conditioning={cond}"]
    m = _model(*sets, classes=2 if cond != "none" else 0)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = m.gan.D(x, torch.tensor([0, 1]))
    if cond == "acgan":
        assert out[0].shape == (2,) and out[1].shape == (2, 2)
    else:
        assert out.shape == (2,)
    params = dict(m.gan.named_parameters())
    trunk = [k for k in params if k.startswith("D.trunk.")]
    watch = [trunk[0], trunk[-1], "D.head.weight", "G.fc.weight", "G.net.2.weight"]  # first and last of each
    watch += {"projection": ["D.embed.weight"], "acgan": ["D.aux.weight"]}.get(cond, [])
    before = {k: params[k].detach().clone() for k in watch}
    r = m.train(_data(), 1, 2, torch.Generator().manual_seed(0))
    assert all(np.isfinite(v) for v in r.losses.values())
    params = dict(m.gan.named_parameters())
    assert [k for k in watch if torch.equal(before[k], params[k])] == []   # gradients reached every part
    keys = m.norm_keys()                                                # what FedBN keeps local
    state_keys = set(m.gan.state_dict())
    assert keys and keys <= state_keys
    d_norm = {k for k in keys if k.startswith("D.trunk")}
    assert d_norm, f"{arch}: its normalisation layers must be FedBN's norm keys"
    assert any(k.endswith("running_mean") for k in d_norm) == (arch in BN)


def test_names_agree_across_registry_backbones_and_weights_table():
    import torchvision
    assert set(D_ARCHS.names()) == {"dcgan"} | set(BACKBONES)
    for name, e in BACKBONES.items():
        w = weights.WEIGHTS[name]
        if e.library == "torchvision":  # the file torchvision's enum reads, with its hash prefix
            url = torchvision.models.get_model_weights(e.model)[e.weights].url
            assert w.url == url and w.filename == url.rsplit("/", 1)[1] and len(weights.hash_prefix(w.filename)) >= 8
        else:
            assert w.folder == "hf-hub" and w.repo == f"timm/{e.model}.{e.weights}"


def test_gray_input_is_repeated_and_imagenet_normalised():
    b = build_backbone("levit_128s", 1, 16)
    gray = torch.full((1, 1, 16, 16), 0.2)
    rgb = b.trunk.adapt(gray)
    assert rgb.shape == (1, 3, 16, 16)
    want = (torch.tensor([0.6, 0.6, 0.6]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(rgb[0, :, 0, 0], want)
    assert "adapt.mean" not in b.trunk.state_dict()                    # constants never travel
    with pytest.raises(ValueError, match="1 or 3 channels"):
        build_backbone("resnet18", 2, 16)


# ---------------------------------------------------------------- ImageNet weights from caches
def test_torchvision_pretrained_load_reads_torch_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth.*fedsynth weights fetch resnet18"):
        build_backbone("resnet18", 3, 32, pretrained=True)
    ref = torchvision.models.resnet18()                                 # stands in for ImageNet weights
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(ref.state_dict(), hub / "resnet18-f37072fd.pth")
    # through the config: model.d-pretrained = true loads it into the discriminator's trunk
    m = _model("model.d-arch=resnet18", "model.d-pretrained=true", size=32)
    assert torch.equal(m.gan.D.trunk.net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(m.gan.D.trunk.net.bn1.running_var, ref.bn1.running_var)
    # a checkpoint carries the weights: rebuilding it needs no cached file
    (hub / "resnet18-f37072fd.pth").unlink()
    again = model_from_description(m.describe())
    again.load(m.state())
    assert again.describe() == m.describe() and m.describe()["d_pretrained"] is True


def _put_in_hf_cache(root, repo, state, commit="0123456789abcdef0123456789abcdef01234567"):
    import safetensors.torch
    d = root / ("models--" + repo.replace("/", "--"))
    (d / "snapshots" / commit).mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(commit)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(d / "snapshots" / commit / "model.safetensors"))


def test_timm_pretrained_load_reads_the_hub_cache_through_timms_loader(tmp_path, monkeypatch):
    import timm
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"model\.safetensors.*deit_tiny_patch16_224.*fedsynth weights fetch deit_tiny"):
        build_backbone("deit_tiny", 1, 32, pretrained=True)
    ref = timm.create_model("deit_tiny_patch16_224")                   # a 224-px checkpoint, with its classifier
    _put_in_hf_cache(tmp_path / "hf", "timm/deit_tiny_patch16_224.fb_in1k", ref.state_dict())
    b = build_backbone("deit_tiny", 1, 32, pretrained=True)
    net = b.trunk.net
    assert torch.equal(net.blocks[11].mlp.fc2.weight, ref.blocks[11].mlp.fc2.weight)
    # timm's filter resampled the 14x14 position grid to the 2x2 of 32-px images
    assert net.pos_embed.shape == (1, 1 + 4, 192) and torch.equal(net.pos_embed[:, 0], ref.pos_embed[:, 0])
    assert b.trunk(torch.zeros(2, 1, 32, 32)).shape == (2, 192)


def test_pretrained_needs_a_backbone_and_dp_sgd_refuses_backbones():
    with pytest.raises(UserError, match="model.d-pretrained"):
        build_config(overrides=["model.d-pretrained=true"])
    with pytest.raises(UserError, match="model.d-arch"):
        build_config(overrides=["model.d-arch=resnet101"])
    with pytest.raises(UserError, match="dp-sgd.*d-arch"):
        build_config(overrides=["model.d-arch=deit_tiny", "privacy.dp-sgd=true", "model.d-norm=group"])


# ---------------------------------------------------------------- fetch from a (local) hub
class _Hub(http.server.BaseHTTPRequestHandler):
    """A Hugging Face hub in miniature: the resolve URL answers a redirect carrying the commit
    and the file's SHA-256; the CDN URL serves the bytes."""
    payload = b""
    sha = ""
    commit = "89abcdef0123456789abcdef0123456789abcdef"

    def _resolve(self):
        self.send_response(302)
        self.send_header("Location", "/cdn/blob")
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("X-Linked-Etag", f'"{self.sha}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self._resolve()

    def do_GET(self):  # noqa: N802
        if "/resolve/" in self.path:
            return self._resolve()
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server():
    with local_http_server(_Hub) as url:
        yield url


def test_fetch_a_timm_backbone_into_the_hub_cache_then_load_it_offline(hub_server, tmp_path, monkeypatch):
    import safetensors.torch
    import timm
    from typer.testing import CliRunner

    from fedsynth.cli import app
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    ref = timm.create_model("levit_128s", num_classes=0)
    _Hub.payload = safetensors.torch.save({k: v.contiguous() for k, v in ref.state_dict().items()})
    w = weights.WEIGHTS["levit_128s"]
    monkeypatch.setitem(weights.WEIGHTS, "levit_128s", weights.WeightsFile(
        w.name, w.what, f"{hub_server}/{w.repo}/resolve/main/model.safetensors", w.filename, w.folder,
        None, None, w.repo))
    _Hub.sha = "0" * 64                                                 # the hub's hash does not match
    res = CliRunner().invoke(app, ["weights", "fetch", "levit_128s"])
    assert res.exit_code == 2 and "checksum" in res.output and "Traceback" not in res.output
    assert weights.cached("levit_128s") is None and not list((tmp_path / "hf").rglob("*.safetensors*"))
    _Hub.sha = hashlib.sha256(_Hub.payload).hexdigest()
    res = CliRunner().invoke(app, ["weights", "fetch", "levit_128s"])
    assert res.exit_code == 0 and "verified" in res.output, res.output
    path = weights.cached("levit_128s")                                 # huggingface_hub finds it
    assert path == (tmp_path / "hf" / "models--timm--levit_128s.fb_dist_in1k" / "snapshots" / _Hub.commit
                    / "model.safetensors") and path.read_bytes() == _Hub.payload
    assert weights.fetch("levit_128s")[2] is False                      # no second download
    b = build_backbone("levit_128s", 3, 16, pretrained=True)            # resized to the weights' 224 px
    assert torch.equal(b.trunk.net.stages[2].blocks[0].attn.proj[1].linear.weight,
                       ref.stages[2].blocks[0].attn.proj[1].linear.weight)
    assert b.trunk.adapt.size == 224 and b.trunk(torch.zeros(1, 3, 16, 16)).shape == (1, 384)


def test_fetch_a_torchvision_backbone_checks_the_hash_prefix_in_its_name(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _Hub.payload = b"not really resnet weights" * 1000
    good = hashlib.sha256(_Hub.payload).hexdigest()[:8]
    for prefix, ok in (("deadbeef", False), (good, True)):
        monkeypatch.setitem(weights.WEIGHTS, "resnet18", weights.WeightsFile(
            "resnet18", "", f"{hub_server}/cdn/blob", f"resnet18-{prefix}.pth", "torch-hub", None, None))
        hub = tmp_path / "torch" / "hub" / "checkpoints"
        if ok:
            path, digest, new = weights.fetch("resnet18")
            assert new and path == hub / f"resnet18-{good}.pth" and digest.startswith(good)
        else:
            with pytest.raises(UserError, match="checksum"):
                weights.fetch("resnet18")
            assert not hub.exists() or list(hub.iterdir()) == []


# ---------------------------------------------------------------- the study's generator
@pytest.mark.parametrize("size", [16, 32, 64])
def test_upsample_cnn_generator_shapes_and_conditioning(size):
    m = _model("model.g-arch=upsample-cnn", "model.conditional=multiply", size=size, channels=3, classes=3)
    G = m.gan.G.eval()
    assert len([b for b in G.net if isinstance(b, torch.nn.Upsample)]) == 3
    assert {torch.nn.BatchNorm2d, torch.nn.LeakyReLU, torch.nn.Dropout2d} <= {type(b) for b in G.net}
    z = torch.randn(3, 8)
    x = G(z, torch.tensor([0, 1, 2]))
    assert x.shape == (3, 3, size, size) and x.abs().max() <= 1
    assert not torch.equal(x[0], G(z, torch.tensor([1, 1, 2]))[0])     # the label changes the image


@pytest.mark.parametrize("d_cond", ["none", "projection", "acgan"])
def test_upsample_cnn_trains_reproducibly_with_dropout(d_cond):
    sets = ["model.g-arch=upsample-cnn", "model.conditional=multiply", f"model.d-conditioning={d_cond}"]

    def run():
        m = _model(*sets, classes=2)
        torch.manual_seed(1234)
        before = torch.random.get_rng_state()
        r = m.train(_data(8), 2, 4, torch.Generator().manual_seed(3))
        assert torch.equal(torch.random.get_rng_state(), before)        # the global stream is left alone
        return m.state(), r
    (a, ra), (b, rb) = run(), run()
    assert np.isfinite(ra.losses["g-loss"]) and ra.losses == rb.losses
    assert all(torch.equal(a[k], b[k]) for k in a)                      # dropout draws are seeded


def test_a_backbone_run_end_to_end_and_its_checkpoint(tiny, tmp_path):
    from fedsynth.checkpoint import load_released
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    from fedsynth.fed.engine import MemorySink

    class Sink(MemorySink):  # the records in memory, the checkpoint on disk as a run directory writes it
        def save_checkpoint(self, round_, obj, keep):
            torch.save(obj, tmp_path / "last.pt")
    cfg = build_config(overrides=tiny + ["model.d-arch=deit_tiny", "model.g-arch=upsample-cnn",
                                         "fed.strategy=fedbn", "fed.rounds=1"])
    res = build_in_process(cfg, partition_for(cfg, load_dataset(cfg))).run(Sink())
    assert all(np.isfinite(r["value"]) for r in res.records if r["metric"] in ("d-loss", "g-loss", "fd-random"))
    local = res.client_states["0"].local                               # FedBN: LayerNorms stay at the site
    assert any(k.startswith("D.trunk.net.blocks.0.norm1") for k in local)
    model, state, _ = load_released(tmp_path / "last.pt")
    assert model.describe()["d_arch"] == "deit_tiny" and model.describe()["g_arch"] == "upsample-cnn"
    assert all(torch.equal(state[k], res.global_state[k]) for k in res.global_state)
    assert all(torch.equal(model.state()[k], state[k]) for k in state)


def test_wgan_gp_differentiates_twice_through_timms_fused_attention():
    # timm's ViTs use fused scaled-dot-product attention, which has no second derivative on the
    # CPU; the gradient penalty runs D with the math kernel
    m = _model("model.d-arch=deit_tiny", "train.loss=wgan-gp", "train.n-critic=1")
    r = m.train(_data(), 1, 2, torch.Generator().manual_seed(0))
    assert all(np.isfinite(v) for v in r.losses.values())


def test_a_run_without_the_cached_weights_stops_with_one_line(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    args = ["run", "--set", f"run.out-dir={tmp_path / 'runs'}", "--set", "model.d-arch=resnet18",
            "--set", "model.d-pretrained=true"]
    for s in tiny:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "resnet18-f37072fd.pth" in res.output and "fedsynth weights fetch resnet18" in res.output
