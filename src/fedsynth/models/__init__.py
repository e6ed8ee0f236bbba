"""Generators and discriminators. :func:`build_gan` is the one constructor the rest uses."""

from __future__ import annotations

import torch
from torch import nn

from .dcgan import Discriminator, Generator, dcgan_init_


class GAN(nn.Module):
    """G and D in one module, so one state dict (keys ``G.*`` and ``D.*``) travels per update."""

    def __init__(self, G: nn.Module, D: nn.Module):
        super().__init__()
        self.G, self.D = G, D


def build_gan(arch: str, image_size: int, channels: int, nz: int, ngf: int, ndf: int,
              seed: int) -> GAN:
    """Build and initialise a GAN. Initialisation draws from ``seed`` only."""
    if arch != "dcgan":
        raise ValueError(f"unknown architecture {arch!r}")
    # construction itself draws default inits from the global RNG: fork it, so building a
    # model neither depends on nor disturbs any other random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gan = GAN(Generator(image_size, channels, nz, ngf), Discriminator(image_size, channels, ndf))
        dcgan_init_(gan)
    return gan


__all__ = ["GAN", "Generator", "Discriminator", "build_gan", "dcgan_init_"]
