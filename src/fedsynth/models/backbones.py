"""Image backbones from torchvision and timm as feature trunks (discriminators, classifiers).

:func:`build_backbone` returns a :class:`Backbone`: a trunk that takes images in ``[-1, 1]``,
``(B, C, H, W)`` with ``C`` = 1 or 3, and returns pooled features ``(B, features)``. The trunk
adapts the input to what the network was trained on:

* gray images are repeated to 3 channels;
* ``[-1, 1]`` is mapped to ``[0, 1]`` and normalised with the ImageNet mean and standard
  deviation (the statistics every one of these checkpoints was trained with);
* the size: convolutional and windowed networks (ResNet, Swin) take any size; ViTs and LeViT
  are built for the image size (timm's ``img_size``, torchvision's ``image_size``) when
  untrained. With ImageNet weights, timm's DeiT keeps the image size (timm's loader resamples
  the position embeddings), while torchvision's ViT-B/16 and timm's LeViT (whose attention
  biases belong to one resolution) are fed images resized (bilinear) to 224 px.

Names: :data:`fedsynth.registry.BACKBONES` (ResNet-18/50, ViT-B/16 and Swin-T from torchvision; the
small CPU-friendly DeiT-Tiny/16, 5.5 M parameters, and LeViT-128S, 7 M, from timm); each entry's
target is the library entry below, and :data:`BACKBONES` maps the names to them.

``pretrained=True`` loads ImageNet weights through the libraries' own loaders, from their own
caches only: torchvision's weights enum (``weights.get_state_dict`` reads
``$TORCH_HOME/hub/checkpoints/<file>``), timm's ``load_pretrained`` (checkpoint filter,
classifier removal) with ``pretrained_cfg_overlay=dict(file=...)`` pointing at the file in the
Hugging Face hub cache. Nothing is downloaded: a missing file raises
:class:`fedsynth.config.UserError` naming it and ``fedsynth weights fetch NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as _weights
from ..config import UserError
from ..registry import BACKBONES as _NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    trunk: torch.nn.Module   # images in [-1, 1], shape (B, C, H, W) with C = in_channels -> features (B, features)
    features: int            # feature width
    name: str


@dataclass(frozen=True)
class _Entry:
    library: str                   # "torchvision" | "timm"
    model: str                     # the library's model name
    weights: str                   # torchvision: weights enum member; timm: pretrained tag
    pretrained_size: Optional[int]  # input size the ImageNet weights need; None: any size
    sized: bool                    # built for one input size (ViT, LeViT)


# What each name in fedsynth.registry.BACKBONES is in its library (the registry's targets)
RESNET18 = _Entry("torchvision", "resnet18", "IMAGENET1K_V1", None, False)
RESNET50 = _Entry("torchvision", "resnet50", "IMAGENET1K_V2", None, False)
VIT_B_16 = _Entry("torchvision", "vit_b_16", "IMAGENET1K_V1", 224, True)
SWIN_T = _Entry("torchvision", "swin_t", "IMAGENET1K_V1", None, False)
DEIT_TINY = _Entry("timm", "deit_tiny_patch16_224", "fb_in1k", None, True)
LEVIT_128S = _Entry("timm", "levit_128s", "fb_dist_in1k", 224, True)

# name -> library entry, in the registry's order (loading a target of this module finds it in sys.modules)
BACKBONES: dict[str, _Entry] = {name: _NAMES.load(name) for name in _NAMES}


class InputAdapter(nn.Module):
    """``[-1, 1]`` images with 1 or 3 channels -> ImageNet-normalised RGB at ``size`` (if set)."""

    def __init__(self, in_channels: int, size: Optional[int] = None):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"backbones take 1 or 3 channels, got {in_channels}")
        self.in_channels, self.size = in_channels, size
        # not persistent: constants, so they neither travel in updates nor enter checkpoints
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)                            # (B, 3, H, W)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Trunk(nn.Module):
    """``adapt`` then ``net``: ``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B, features)``."""

    def __init__(self, adapt: InputAdapter, net: nn.Module):
        super().__init__()
        self.adapt, self.net = adapt, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapt(x))


def _torchvision(e: _Entry, name: str, size: int, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision
    kwargs = {}
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(e.model)[e.weights]
        file = _weights.WEIGHTS[name].filename
        if file != weights.url.rsplit("/", 1)[-1]:  # the fetch table and torchvision must agree
            raise RuntimeError(f"{name}: weights table names {file}, torchvision {weights.url}")
        if _weights.cached(name) is None:
            raise UserError(_weights.missing_message(name, None))
    elif e.sized:
        kwargs["image_size"] = size
    net = torchvision.models.get_model(e.model, weights=weights, **kwargs)  # reads the cached file
    if e.model.startswith("resnet"):
        features, net.fc = net.fc.in_features, nn.Identity()
    elif e.model.startswith("vit"):
        features, net.heads = net.hidden_dim, nn.Identity()
    else:  # swin
        features, net.head = net.head.in_features, nn.Identity()
    return net, features


def _timm(e: _Entry, name: str, size: int, pretrained: bool) -> tuple[nn.Module, int]:
    import timm
    kwargs: dict = {"num_classes": 0}                               # pooled features, no classifier
    if e.sized:
        kwargs["img_size"] = e.pretrained_size if pretrained and e.pretrained_size else size
    if pretrained:
        path = _weights.cached(name)
        if path is None:
            raise UserError(_weights.missing_message(name, None))
        # timm's own loader (load_pretrained: checkpoint filter, position-embedding resampling,
        # classifier removal), pointed at the cached file so it never reaches for the network
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    net = timm.create_model(f"{e.model}.{e.weights}", pretrained=pretrained, **kwargs)
    return net, int(net.num_features)


def build_backbone(name: str, in_channels: int, image_size: int, pretrained: bool = False) -> Backbone:
    """The backbone ``name`` as a trunk for ``in_channels``-channel images of ``image_size`` px.

    Parameters
    ----------
    name : str
        One of :data:`BACKBONES`.
    in_channels : int
        1 (gray, repeated to RGB) or 3.
    image_size : int
        Side of the square input images.
    pretrained : bool, default False
        Load ImageNet weights from the library's cache (never downloads; see the module doc).

    Raises
    ------
    UserError
        ``pretrained`` and the weights file is not in the cache.
    ValueError
        Unknown name or unsupported number of channels.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    e = BACKBONES[name]
    adapt = InputAdapter(in_channels, e.pretrained_size if pretrained and e.pretrained_size else None)
    build = _torchvision if e.library == "torchvision" else _timm
    net, features = build(e, name, image_size, pretrained)
    return Backbone(Trunk(adapt, net), features, name)
