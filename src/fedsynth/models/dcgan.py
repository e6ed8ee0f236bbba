"""DCGAN generator and discriminator (Radford, Metz & Chintala 2016, arXiv:1511.06434).

One definition covers every power-of-two size from 16 to 256 px: the generator starts from a
4x4 map and doubles until it reaches ``image_size``; the discriminator mirrors it. At 64 px with
``ngf = ndf = 64`` this is exactly the network of the paper (and of the PyTorch DCGAN example).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _num_ups(image_size: int) -> int:
    n = int(math.log2(image_size)) - 2
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


class Generator(nn.Module):
    """``z (B, nz)`` -> image ``(B, nc, S, S)`` in ``[-1, 1]``."""

    def __init__(self, image_size: int = 64, nc: int = 1, nz: int = 100, ngf: int = 64):
        super().__init__()
        self.image_size, self.nc, self.nz = image_size, nc, nz
        n = _num_ups(image_size)
        ch = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False),      # (B, ch, 4, 4)
            nn.BatchNorm2d(ch), nn.ReLU(True),
        ]
        for _ in range(n - 1):                                     # doubles H, W; halves ch
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]  # (B, nc, S, S)
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    """Image ``(B, nc, S, S)`` -> one logit per image ``(B,)`` (no sigmoid: the loss owns it)."""

    def __init__(self, image_size: int = 64, nc: int = 1, ndf: int = 64):
        super().__init__()
        n = _num_ups(image_size)
        ch = ndf
        layers: list[nn.Module] = [nn.Conv2d(nc, ch, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]        # no BatchNorm on the input layer
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]          # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def dcgan_init_(module: nn.Module) -> None:
    """Weights from N(0, 0.02); BatchNorm scale from N(1, 0.02), shift 0 (paper, section 4)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
