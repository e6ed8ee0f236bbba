"""GAN losses as objects with phases; the training loop only schedules them.

A loss computes the discriminator phase (``d_loss``) and the generator phase (``g_loss``);
labels are always passed (unconditional models ignore them). The structure follows
stylegan2-ada's ``training/loss.py``:

* :class:`NonSaturatingBCE` -- Goodfellow et al. 2014 (arXiv:1406.2661), as in DCGAN.
* :class:`Hinge` -- Lim & Ye 2017 (arXiv:1705.02894), used with spectral norm / projection D.
* :class:`WGANGP` -- Gulrajani et al. 2017 (arXiv:1704.00028): critic with gradient penalty,
  ``n_critic`` critic steps per generator step. Use a discriminator without BatchNorm
  (``model.d-norm = "group"`` or ``"none"``): the penalty assumes samples are independent.
* An ACGAN discriminator (``model.d-conditioning = "acgan"``) adds its auxiliary
  classification term to every loss (Odena et al. 2017).
* DiffAugment (Zhao et al. 2020, arXiv:2006.10738): the same differentiable augmentation is
  applied to real and fake images whenever D sees them -- for small per-site data sets.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _split(out):
    return out if isinstance(out, tuple) else (out, None)


class GANLoss:
    """Base class. ``n_critic`` discriminator steps are taken per generator step."""

    name = "base"
    n_critic = 1

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None, aux_weight: float = 1.0):
        self.augment = augment
        self.aux_weight = aux_weight

    # D as the loss sees it: augmented input, (logit, aux-logits)
    def _d(self, D: nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        if self.augment is not None:
            x = self.augment(x)
        return _split(D(x, y))

    def _aux(self, aux: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | float:
        return self.aux_weight * F.cross_entropy(aux, y) if aux is not None else 0.0

    def d_loss(self, D, real, fake, y_real=None, y_fake=None) -> torch.Tensor:
        lr, ar = self._d(D, real, y_real)
        lf, af = self._d(D, fake, y_fake)
        return self.d_adv(lr, lf, D, real, fake, y_real, y_fake) + self._aux(ar, y_real) + self._aux(af, y_fake)

    def g_loss(self, D, fake, y_fake=None) -> torch.Tensor:
        lf, af = self._d(D, fake, y_fake)
        return self.g_adv(lf) + self._aux(af, y_fake)

    def d_adv(self, logit_real, logit_fake, D, real, fake, y_real, y_fake) -> torch.Tensor:
        raise NotImplementedError

    def g_adv(self, logit_fake) -> torch.Tensor:
        raise NotImplementedError


class NonSaturatingBCE(GANLoss):
    """``softplus(-x) = -log(sigmoid(x))``: BCE-with-logits, computed stably."""

    name = "bce"

    def d_adv(self, lr, lf, *_):
        return F.softplus(-lr).mean() + F.softplus(lf).mean()

    def g_adv(self, lf):
        return F.softplus(-lf).mean()


class Hinge(GANLoss):
    name = "hinge"

    def d_adv(self, lr, lf, *_):
        return F.relu(1 - lr).mean() + F.relu(1 + lf).mean()

    def g_adv(self, lf):
        return -lf.mean()


class WGANGP(GANLoss):
    name = "wgan-gp"

    def __init__(self, n_critic: int = 5, gp_lambda: float = 10.0, **kw):
        super().__init__(**kw)
        self.n_critic, self.gp_lambda = n_critic, gp_lambda
        self.generator: torch.Generator | None = None   # set by the loop: seeds the interpolation

    def d_adv(self, lr, lf, D, real, fake, y_real, y_fake):
        eps = torch.rand(real.shape[0], *(1,) * (real.ndim - 1), generator=self.generator).to(real.device)  # drawn on the CPU
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        # the penalty differentiates D's gradient: fused attention kernels (timm's ViTs on the
        # CPU) have no second derivative, the math kernel has (same result, slower)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.MATH):
            out, _ = self._d(D, mix, y_real)
        (grad,) = torch.autograd.grad(out.sum(), mix, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return lf.mean() - lr.mean() + self.gp_lambda * gp

    def g_adv(self, lf):
        return -lf.mean()


class DiffAugment:
    """Differentiable augmentation: ``color`` (brightness, saturation, contrast),
    ``translation`` (1/8 of the side, zero padded), ``cutout`` (a square of half the side).
    Draws come from ``generator`` (set by the loop), so a step is reproducible."""

    def __init__(self, policy: str):
        self.policy = [p.strip() for p in policy.split(",") if p.strip()]
        unknown = set(self.policy) - {"color", "translation", "cutout"}
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {sorted(unknown)}")
        self.generator: torch.Generator | None = None
        self.device = torch.device("cpu")

    def _r(self, *shape):
        # drawn on the CPU from the seeded generator (the same numbers on every device), then moved
        return torch.rand(*shape, generator=self.generator).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        self.device = x.device
        if "color" in self.policy:
            x = x + (self._r(B, 1, 1, 1) - 0.5)
            if C > 1:
                m = x.mean(dim=1, keepdim=True)
                x = (x - m) * (self._r(B, 1, 1, 1) * 2) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * (self._r(B, 1, 1, 1) + 0.5) + m
        if "translation" in self.policy:
            s = max(1, H // 8)
            tx = (self._r(B) * (2 * s + 1)).long() - s
            ty = (self._r(B) * (2 * s + 1)).long() - s
            pad = F.pad(x, (s, s, s, s))
            idx_y = (torch.arange(H, device=x.device).view(1, H) + ty.view(B, 1) + s).clamp(0, H + 2 * s - 1)
            idx_x = (torch.arange(W, device=x.device).view(1, W) + tx.view(B, 1) + s).clamp(0, W + 2 * s - 1)
            x = pad[torch.arange(B, device=x.device).view(B, 1, 1), :, idx_y.view(B, H, 1), idx_x.view(B, 1, W)].permute(0, 3, 1, 2)
        if "cutout" in self.policy:
            ch, cw = H // 2, W // 2
            oy = (self._r(B) * (H - ch + 1)).long()
            ox = (self._r(B) * (W - cw + 1)).long()
            yy = torch.arange(H, device=x.device).view(1, H, 1)
            xx = torch.arange(W, device=x.device).view(1, 1, W)
            inside = ((yy >= oy.view(B, 1, 1)) & (yy < (oy + ch).view(B, 1, 1))
                      & (xx >= ox.view(B, 1, 1)) & (xx < (ox + cw).view(B, 1, 1)))
            x = x * (~inside).unsqueeze(1).to(x.dtype)
        return x


def build_loss(name: str, n_critic: int = 5, gp_lambda: float = 10.0, diffaugment: str = "",
               aux_weight: float = 1.0) -> GANLoss:
    """The loss registered as ``name`` in :data:`fedsynth.registry.LOSSES`."""
    from ..registry import LOSSES
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    aug = DiffAugment(diffaugment) if diffaugment else None
    cls = LOSSES.load(name)
    if issubclass(cls, WGANGP):
        return cls(n_critic, gp_lambda, augment=aug, aux_weight=aux_weight)
    return cls(augment=aug, aux_weight=aux_weight)
