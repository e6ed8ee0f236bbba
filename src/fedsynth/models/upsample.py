"""The histopathology study's generator (``model.g-arch = "upsample-cnn"``).

A linear layer turns the latent into a ``(4 ngf, S/8, S/8)`` map; three blocks of
nearest-neighbour upsampling (x2), a 3x3 convolution, normalisation (BatchNorm by default),
LeakyReLU(0.2) and dropout double it to ``S``; a 3x3 convolution and tanh give the image. This
is the conditional-GAN generator of PyTorch-GAN's ACGAN (Odena et al. 2017, as the study ran it)
with a third block and dropout. Upsampling + convolution instead of transposed convolutions
avoids their checkerboard artefacts (Odena, Dumoulin & Olah 2016, distill.pub/2016/deconv-checkerboard).

Conditioning as in :class:`fedsynth.models.dcgan.Generator`: ``"multiply"`` multiplies a learned
class embedding into each input channel of the latent (the study's best), ``"concat"`` appends a
one-hot label.
"""

from __future__ import annotations

import torch
from torch import nn

from .dcgan import LatentConditioning, _norm, _num_ups


class UpsampleGenerator(LatentConditioning, nn.Module):
    """``z (B, nz)`` [+ labels ``(B,)``] -> image ``(B, nc, S, S)`` in ``[-1, 1]``."""

    def __init__(self, image_size: int = 64, nc: int = 1, nz: int = 100, ngf: int = 32,
                 norm: str = "batch", num_classes: int = 0, conditional: str = "none",
                 dropout: float = 0.25):
        super().__init__()
        _num_ups(image_size)                                        # a power of two >= 16
        self.image_size, self.nc = image_size, nc
        zin = self._conditioning(nz, num_classes, conditional)
        self.s0, ch = image_size // 8, ngf * 4
        self.fc = nn.Linear(zin, ch * self.s0 * self.s0)            # (B, 4 ngf * s0 * s0)
        blocks: list[nn.Module] = [_norm(norm, ch)]
        for out in (ngf * 4, ngf * 2, ngf):                         # each doubles H, W
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(ch, out, 3, 1, 1, bias=False),
                       _norm(norm, out), nn.LeakyReLU(0.2, True), nn.Dropout2d(dropout)]
            ch = out
        blocks += [nn.Conv2d(ch, nc, 3, 1, 1), nn.Tanh()]           # (B, nc, S, S)
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.condition(z, y)).view(z.shape[0], -1, self.s0, self.s0)  # (B, 4 ngf, S/8, S/8)
        return self.net(h)
