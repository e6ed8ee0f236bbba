"""A discriminator made of a backbone trunk (:mod:`fedsynth.models.backbones`) and heads.

The heads are the ones the DCGAN discriminator has (:mod:`fedsynth.models.dcgan`), on the
trunk's pooled features ``h (B, F)``:

* the real/fake logit: a linear layer ``F -> 1``;
* ``"projection"`` (Miyato & Koyama 2018, arXiv:1802.05637): ``+ <embed(y), h>``;
* ``"acgan"`` (Odena et al. 2017, arXiv:1610.09585): an auxiliary classifier ``F -> K``,
  returned beside the logit.

Spectral normalisation (``model.spectral-norm``) applies to the heads only: the backbone keeps
its own normalisation (BatchNorm in ResNet and LeViT, LayerNorm in the ViTs and Swin).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone


class BackboneDiscriminator(nn.Module):
    """Image ``(B, C, S, S)`` in ``[-1, 1]`` [+ labels] -> logit ``(B,)``; with an ACGAN head
    also class logits ``(B, K)``. No sigmoid: the loss owns it."""

    def __init__(self, backbone: Backbone, num_classes: int = 0, conditional: str = "none",
                 spectral_norm: bool = False):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self.backbone_name = backbone.name
        self.trunk = backbone.trunk                                 # (B, C, S, S) -> (B, F)
        f = backbone.features
        self.head = sn(nn.Linear(f, 1))
        self.conditional = conditional
        if conditional == "projection":
            embed = nn.Embedding(num_classes, f)
            nn.init.normal_(embed.weight, 0.0, 0.02)  # as DCGAN's projection: starts near the plain logit
            self.embed = sn(embed)
        elif conditional == "acgan":
            self.aux = nn.Linear(f, num_classes)
        elif conditional != "none":
            raise ValueError(f"unknown discriminator conditioning {conditional!r}")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = self.trunk(x)                                           # (B, F)
        logit = self.head(h).view(-1)                               # (B,)
        if self.conditional == "projection":
            logit = logit + (self.embed(y) * h).sum(dim=1)
        elif self.conditional == "acgan":
            return logit, self.aux(h)                               # (B,), (B, K)
        return logit
