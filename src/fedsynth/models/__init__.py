"""Generators and discriminators. :func:`build_gan` is the one constructor the rest uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .dcgan import Discriminator, Generator, dcgan_init_


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
              ngf: int = 32, ndf: int = 16, seed: int = 0) -> GAN:
    """Build and initialise a GAN from a :class:`ModelSpec` (or the basic arguments).

    Initialisation draws from ``seed`` only: the global RNG is forked, so building a model
    neither depends on nor disturbs any other random stream.
    """
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch, image_size, channels, nz, ngf, ndf)
    if spec.arch != "dcgan":
        raise ValueError(f"unknown architecture {spec.arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(spec.image_size, spec.channels, spec.nz, spec.ngf, spec.g_norm,
                      spec.num_classes, spec.g_conditioning)
        D = Discriminator(spec.image_size, spec.channels, spec.ndf, spec.d_norm, spec.spectral_norm,
                          spec.num_classes, spec.d_conditioning)
        gan = GAN(G, D, spec)
        dcgan_init_(gan)
    return gan


def norm_keys(gan: nn.Module) -> set[str]:
    """State-dict keys of normalisation layers (what FedBN keeps local)."""
    keys = set()
    for name, m in gan.named_modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            keys.update(f"{name}.{k}" for k in m.state_dict())
    return keys


__all__ = ["GAN", "ModelSpec", "Generator", "Discriminator", "build_gan", "dcgan_init_", "norm_keys"]
