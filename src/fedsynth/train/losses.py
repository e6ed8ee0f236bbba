"""GAN losses as objects with phases; the training loop only schedules them.

A loss computes the discriminator phase (``d_loss``) and the generator phase (``g_loss``).
New losses (hinge, WGAN-GP with its gradient penalty, an ACGAN auxiliary-classifier term)
subclass :class:`GANLoss`; the loop in :mod:`fedsynth.train.local` does not change.
The structure follows stylegan2-ada's ``training/loss.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GANLoss:
    """Base class. ``n_critic`` discriminator steps are taken per generator step."""

    name = "base"
    n_critic = 1

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NonSaturatingBCE(GANLoss):
    """The original GAN loss with the non-saturating generator objective
    (Goodfellow et al. 2014, arXiv:1406.2661; as used by DCGAN).

    ``softplus(-x) = -log(sigmoid(x))`` so this equals BCE-with-logits, computed stably.
    """

    name = "bce"

    def d_loss(self, D, real, fake):
        return F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()

    def g_loss(self, D, fake):
        return F.softplus(-D(fake)).mean()


LOSSES: dict[str, type[GANLoss]] = {"bce": NonSaturatingBCE}


def build_loss(name: str) -> GANLoss:
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None
