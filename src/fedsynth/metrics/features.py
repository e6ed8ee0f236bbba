"""Feature extractors for Frechet distance and KID.

* ``inception`` -- the standard FID network (Inception-v3 with the 2015-12-05 TensorFlow
  weights, via torchmetrics / torch-fidelity). Used only when its weights file is given or
  already in the torch hub cache: fedsynth never downloads weights silently. Metric name ``fid``.
* ``random`` -- a frozen, seeded, weight-free convolutional network (random He-initialised
  filters, never trained). Honest when no pretrained weights can be had, comparable between
  runs with the same settings, but *not* FID: its metric is named ``fd-random``.

Every metric record names the extractor that produced it (:attr:`FeatureExtractor.name`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FeatureExtractor(nn.Module):
    """Images in ``[-1, 1]``, ``(B, C, H, W)`` with C = 1 or 3 -> features ``(B, D)``."""

    name: str          # full description, e.g. "random-conv-v1(seed=0,dims=480,input=64)"
    metric: str        # "fid" or "fd-random"
    kid_metric: str    # "kid" or "kid-random"
    dims: int

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        return torch.cat([self(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


class RandomConvFeatures(FeatureExtractor):
    """Four stride-2 3x3 conv + ReLU stages with random, frozen filters; the feature vector
    concatenates each stage's spatially averaged activations (multi-scale texture statistics).
    Input is resized to ``input_size`` so distances compare across image sizes."""

    widths = (32, 64, 128, 256)

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
        self.dims = sum(self.widths)
        self.name = f"random-conv-v1(seed={seed},dims={self.dims},input={input_size})"
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
            x = F.relu(conv(x))
            feats.append(x.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)  # (B, 480)


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of the FID Inception-v3 (torchmetrics' ``NoTrainInceptionV3``)."""

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
        self.metric = "fid"
        self.kid_metric = "kid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # the FID network wants uint8
        return self.net(x8).view(x.shape[0], -1).double()


def find_inception_weights(explicit: str = "") -> Path | None:
    """The weights file named by the user, else one already in the torch hub cache."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise UserError(f"config key 'eval.inception-weights': file not found: {p}")
        return p
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    p = hub / INCEPTION_FILE
    return p if p.is_file() else None


def build_extractor(kind: str = "auto", inception_weights: str = "", seed: int = 0) -> FeatureExtractor:
    """``auto``: Inception when its weights are on disk, else the random network."""
    if kind == "random":
        return RandomConvFeatures(seed=seed)
    path = find_inception_weights(inception_weights)
    if path is not None:
        return InceptionFeatures(path)
    if kind == "inception":
        raise UserError(f"config key 'eval.feature-extractor' is 'inception' but no weights were "
                        f"found: set 'eval.inception-weights' to a local copy of {INCEPTION_FILE} "
                        f"or put it in $TORCH_HOME/hub/checkpoints/ (fedsynth never downloads)")
    return RandomConvFeatures(seed=seed)
