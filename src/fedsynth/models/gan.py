"""The GAN family: a generator and a discriminator trained adversarially.

Networks: generator ``model.g-arch`` = DCGAN (:mod:`fedsynth.models.dcgan`) or the study's
upsample-CNN (:mod:`fedsynth.models.upsample`); discriminator ``model.d-arch`` = DCGAN or a
torchvision/timm backbone with heads (:mod:`fedsynth.models.heads`,
:mod:`fedsynth.models.backbones`), optionally ImageNet-pretrained; BatchNorm/GroupNorm,
spectral norm and class conditioning. Training: the loss objects and loop of :mod:`fedsynth.train` (the loop
schedules the D and G phases; the loss computes them). Weights: one state dict with keys
``G.*`` and ``D.*``, so one update carries both (or, with ``fed.share = ["G"]``, only G).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..registry import D_ARCHS, G_ARCHS
from ..train import LocalTrainer, OptimConfig, build_loss
from .base import GenerativeModel, TrainResult, description_fields
from .backbones import build_backbone
from .dcgan import Discriminator, Generator, dcgan_init_
from .heads import BackboneDiscriminator
from .upsample import UpsampleGenerator


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a GAN (stored in checkpoints)."""

    arch: str = "dcgan"
    image_size: int = 64
    channels: int = 1
    nz: int = 100
    ngf: int = 32
    ndf: int = 16
    g_norm: str = "batch"
    d_norm: str = "batch"
    spectral_norm: bool = False
    num_classes: int = 0
    g_conditioning: str = "none"
    d_conditioning: str = "none"
    # issue 14 (defaults: what checkpoints written before it hold)
    g_arch: str = "dcgan"          # a name in fedsynth.registry.G_ARCHS: "dcgan" | "upsample-cnn"
    d_arch: str = "dcgan"          # a name in fedsynth.registry.D_ARCHS: "dcgan" | a backbone
    d_pretrained: bool = False     # the backbone started from ImageNet weights
    g_dropout: float = 0.25        # upsample-cnn: dropout after each block
    dims: int = 2                  # 3: the volumetric DCGAN (data.dims = 3), volumes (C, S, S, S)

    def to_dict(self) -> dict:
        return asdict(self)


class GAN(nn.Module):
    """G and D in one module, so one state dict (keys ``G.*`` and ``D.*``) travels per update."""

    def __init__(self, G: nn.Module, D: nn.Module, spec: ModelSpec | None = None):
        super().__init__()
        self.G, self.D = G, D
        self.spec = spec

    @property
    def conditional(self) -> bool:
        return self.spec is not None and self.spec.g_conditioning != "none"


def build_gan(arch: str | ModelSpec, image_size: int = 64, channels: int = 1, nz: int = 100,
              ngf: int = 32, ndf: int = 16, seed: int = 0, pretrained: bool = True) -> GAN:
    """Build and initialise a GAN from a :class:`ModelSpec` (or the basic arguments).

    Initialisation draws from ``seed`` only: the global RNG is forked, so building a model
    neither depends on nor disturbs any other random stream. DCGAN networks get DCGAN's
    initialisation; a backbone discriminator keeps its library's (or, with
    ``spec.d_pretrained`` and ``pretrained``, the ImageNet weights from the library's cache).
    ``pretrained=False`` skips that load where the weights come from a checkpoint anyway.
    """
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch=arch, image_size=image_size, channels=channels,
                                                              nz=nz, ngf=ngf, ndf=ndf)
    if spec.arch != "dcgan":
        raise ValueError(f"unknown architecture {spec.arch!r}")
    if spec.dims != 2 and (spec.g_arch != "dcgan" or spec.d_arch != "dcgan"):
        raise ValueError("volumes (dims = 3) need the DCGAN generator and discriminator")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = G_ARCHS.load(spec.g_arch)(spec)
        D = D_ARCHS.load(spec.d_arch)(spec, pretrained=pretrained)
        gan = GAN(G, D, spec)
        dcgan_init_(G)  # the same draws, in the same order, as one call on the whole GAN
        if isinstance(D, Discriminator):  # a backbone keeps its library's initialisation
            dcgan_init_(D)
    return gan


def dcgan_generator(spec: ModelSpec) -> nn.Module:
    """``model.g-arch = "dcgan"`` (:data:`fedsynth.registry.G_ARCHS`): transposed convolutions."""
    return Generator(image_size=spec.image_size, nc=spec.channels, nz=spec.nz, ngf=spec.ngf, norm=spec.g_norm,
                     num_classes=spec.num_classes, conditional=spec.g_conditioning, dims=spec.dims)


def upsample_generator(spec: ModelSpec) -> nn.Module:
    """``model.g-arch = "upsample-cnn"`` (:data:`fedsynth.registry.G_ARCHS`): the histopathology
    study's upsample + conv blocks."""
    return UpsampleGenerator(image_size=spec.image_size, nc=spec.channels, nz=spec.nz, ngf=spec.ngf,
                             norm=spec.g_norm, num_classes=spec.num_classes, conditional=spec.g_conditioning,
                             dropout=spec.g_dropout)


def dcgan_discriminator(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """``model.d-arch = "dcgan"`` (:data:`fedsynth.registry.D_ARCHS`): DCGAN's convolutions."""
    return Discriminator(image_size=spec.image_size, nc=spec.channels, ndf=spec.ndf, norm=spec.d_norm,
                         spectral_norm=spec.spectral_norm, num_classes=spec.num_classes,
                         conditional=spec.d_conditioning, dims=spec.dims)


def backbone_discriminator(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """``model.d-arch`` = a backbone (:data:`fedsynth.registry.BACKBONES`) with heads; ImageNet
    weights if ``spec.d_pretrained`` and ``pretrained``."""
    backbone = build_backbone(spec.d_arch, spec.channels, spec.image_size, pretrained=spec.d_pretrained and pretrained)
    return BackboneDiscriminator(backbone, spec.num_classes, spec.d_conditioning, spec.spectral_norm)


# FedBN keeps normalisation layers local: BatchNorm (its running statistics describe one site's
# data) and, by the same rule, the affine parameters of GroupNorm and LayerNorm (ViT, Swin).
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def norm_keys(module: nn.Module) -> set[str]:
    """State-dict keys of normalisation layers (what FedBN keeps local): BatchNorm 1d/2d (ResNet,
    LeViT, DCGAN), GroupNorm and LayerNorm (ViT, DeiT, Swin)."""
    keys = set()
    for name, m in module.named_modules():
        if isinstance(m, NORM_LAYERS):
            keys.update(f"{name}.{k}" for k in m.state_dict())
    return keys


class GANModel(GenerativeModel):
    """The GAN family behind :class:`GenerativeModel`: a :class:`GAN` and its
    :class:`fedsynth.train.LocalTrainer` (two Adam optimizers, the configured loss)."""

    family = "gan"
    title = "GAN"
    maker = "generator"
    loss_labels = {"d-loss": "discriminator", "g-loss": "generator"}
    loss_help = ("Each client's discriminator and generator losses, the mean over a round's local steps. A GAN's "
                 "losses do not fall towards 0; a discriminator loss near 0 with a rising generator loss means the "
                 "discriminator has won and training has stalled.")

    @classmethod
    def config_line(cls, cfg: dict[str, Any]) -> str:
        m, t = cfg.get("model", {}), cfg.get("train", {})
        cond = m.get("conditional", "none")
        dims = "3-D " if cfg.get("data", {}).get("dims", 2) == 3 else ""
        return (f"{dims}GAN: {m.get('g-arch', 'dcgan')} generator, {m.get('d-arch', 'dcgan')} discriminator, "
                f"loss {t.get('loss', 'bce')}" + (f", class-conditional ({cond})" if cond not in ("none", None) else ""))

    def __init__(self, spec: ModelSpec, seed: int = 0, train: Any = None, device: torch.device | str = "cpu",
                 pretrained: bool = True):
        from ..config import TrainConfig
        from ..train.device import resolve_precision
        t = train or TrainConfig()
        self.spec = spec
        self.device = torch.device(device)
        self.precision = resolve_precision(t.precision, self.device)
        loss = build_loss(t.loss, t.n_critic, t.gp_lambda, t.diffaugment, t.aux_weight)
        # the networks are built and initialised on the CPU (the same weights on every device), then moved
        # channels-last is a 4-D (image) layout: volumes keep the default one
        self.trainer = LocalTrainer(build_gan(spec, seed=seed, pretrained=pretrained), loss,
                                    OptimConfig(t.lr_g, t.lr_d, (t.beta1, t.beta2)), t.channels_last and spec.dims == 2,
                                    device=self.device, precision=self.precision)
        self.gan = self.trainer.gan
        self.num_classes = spec.num_classes
        self.conditional = spec.g_conditioning != "none"
        self._lrs = {f"{net}.{k}": lr for net, lr in (("G", t.lr_g), ("D", t.lr_d))
                     for k, _ in getattr(self.gan, net).named_parameters()}

    # ---- build
    @classmethod
    def from_config(cls, cfg, image_size: int, channels: int, num_classes: int) -> "GANModel":
        from ..train.device import resolve_device
        from ..utils import derive_seed
        m = cfg.model
        spec = ModelSpec(arch=m.arch, image_size=image_size, channels=channels, nz=m.nz, ngf=m.ngf, ndf=m.ndf,
                         g_norm=m.g_norm, d_norm=m.d_norm, spectral_norm=m.spectral_norm, num_classes=num_classes,
                         g_conditioning=m.conditional, d_conditioning=m.d_conditioning, g_arch=m.g_arch,
                         d_arch=m.d_arch, d_pretrained=m.d_pretrained, g_dropout=m.g_dropout, dims=cfg.data.dims)
        return cls(spec, seed=derive_seed(cfg.run.seed, "init"), train=cfg.train,
                   device=resolve_device(cfg.run.device))

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> "GANModel":
        # the weights come from the checkpoint: no ImageNet load (and no need for its file)
        return cls(ModelSpec(**description_fields(desc, ModelSpec, "GAN")), pretrained=False)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, **self.spec.to_dict()}

    # ---- weights
    def state(self):
        return self.trainer.weights()

    def load(self, state, opt_state=None):
        self.trainer.load(state, opt_state)

    def opt_state(self):
        return self.trainer.opt_state()

    def parameter_keys(self):
        return {k for k, _ in self.gan.named_parameters()}

    def norm_keys(self):
        return norm_keys(self.gan)

    def learning_rates(self):
        return dict(self._lrs)

    # ---- train
    def train(self, data, steps, batch_size, generator, on_step=None, hooks=(), dp=None) -> TrainResult:
        r = self.trainer.train(data, steps, batch_size, generator, on_step=on_step, hooks=hooks, dp=dp)
        return TrainResult(r.steps, r.images, r.seconds, {"d-loss": r.d_loss, "g-loss": r.g_loss},
                           private_steps=r.steps * self.trainer.loss.n_critic if dp is not None else 0)

    # ---- sample
    def latents(self, n, generator):
        return torch.randn(n, self.spec.nz, generator=generator)

    def sampler(self, state):
        G = self.gan.G
        if state is not None:
            G.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("G.")})
        G.eval()
        return G.folded() if hasattr(G, "folded") else G  # BatchNorm folded (docs/performance.md)
