"""One client's local GAN training, from given weights, for some epochs or steps.

:class:`LocalTrainer` is a *workspace*: one GAN and its two Adam optimizers, reused for every
client in turn. A client's own state (its optimizer moments, and its weights where a strategy
keeps them local) is a plain dict that the caller stores, so memory does not grow with the
number of clients beyond their data and that state.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from ..data import ImageSet
from .losses import GANLoss


@dataclass(frozen=True)
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


@dataclass
class LocalResult:
    steps: int
    images: int
    d_loss: float
    g_loss: float
    seconds: float


class TrainHook(Protocol):
    """Changes gradients after each backward pass, before the optimizer step: FedProx's
    proximal term, SCAFFOLD's control variates, FedDyn's linear term, DP clipping + noise.
    ``net`` is ``"G"`` or ``"D"``."""

    def after_backward(self, net: str, module: torch.nn.Module) -> None: ...


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped; at least one step)."""
    return max(1, n // batch_size)


class LocalTrainer:
    """Runs local GAN steps on a reusable GAN + Adam pair.

    Parameters
    ----------
    gan : torch.nn.Module
        The workspace networks (``gan.G``, ``gan.D``; :class:`fedsynth.models.gan.GAN`); their weights are overwritten by :meth:`load`.
    loss : GANLoss
        Computes the D and G phases.
    optim : OptimConfig
        Adam(2e-4, betas=(0.5, 0.999)) by default, as in DCGAN.
    """

    def __init__(self, gan: torch.nn.Module, loss: GANLoss, optim: OptimConfig = OptimConfig(), channels_last: bool = False):
        self.channels_last = channels_last
        if channels_last:  # NHWC: measured faster for these convolutions on CPU
            gan = gan.to(memory_format=torch.channels_last)
        self.gan, self.loss, self.optim = gan, loss, optim
        self.opt_g = torch.optim.Adam(gan.G.parameters(), lr=optim.lr_g, betas=optim.betas)
        self.opt_d = torch.optim.Adam(gan.D.parameters(), lr=optim.lr_d, betas=optim.betas)
        self._fresh_g = self.opt_g.state_dict()
        self._fresh_d = self.opt_d.state_dict()

    # ---- client state in / out
    def load(self, weights: dict[str, torch.Tensor], opt_state: dict[str, Any] | None) -> None:
        """Load weights (a full ``GAN`` state dict) and a client's optimizer state (or fresh)."""
        self.gan.load_state_dict(weights)
        # load_state_dict keeps the caller's tensors when dtypes match, and Adam then updates
        # them in place: copy, so a stored client state is never changed behind its owner
        self.opt_g.load_state_dict(copy.deepcopy(opt_state["G"] if opt_state else self._fresh_g))
        self.opt_d.load_state_dict(copy.deepcopy(opt_state["D"] if opt_state else self._fresh_d))

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.gan.state_dict().items()}

    def opt_state(self) -> dict[str, Any]:
        # state_dict() references the live tensors: deep-copy so the next client cannot alias it
        return {"G": copy.deepcopy(self.opt_g.state_dict()),
                "D": copy.deepcopy(self.opt_d.state_dict())}

    # ---- the loop
    def train(self, data: ImageSet, steps: int, batch_size: int, generator: torch.Generator,
              on_step: Callable[[int], None] | None = None,
              hooks: Sequence[TrainHook] = (), dp: Any = None) -> LocalResult:
        """Run ``steps`` steps (each: ``n_critic`` D updates, then one G update).

        Data order, latents, fake labels and augmentations come from ``generator`` only, so a
        step is reproducible from ``(run seed, round, client)``. ``dp`` (a
        :class:`fedsynth.privacy.dp.DPSGD`) replaces D's backward pass with clipped, noised
        per-example gradients.
        """
        G, D, loss = self.gan.G, self.gan.D, self.loss
        loss.generator = generator
        if loss.augment is not None:
            loss.augment.generator = generator
        labels = torch.from_numpy(data.labels)
        k = max(data.num_classes, 1)
        G.train()
        D.train()
        n = len(data)
        bs = min(batch_size, n)
        per_epoch = steps_per_epoch(n, bs)
        order = torch.empty(0, dtype=torch.long)
        d_sum = torch.zeros(())
        g_sum = torch.zeros(())
        t0 = time.perf_counter()
        for step in range(steps):
            # --- discriminator phase(s)
            D.requires_grad_(True)
            for _ in range(loss.n_critic):
                if len(order) < bs:  # epoch boundary: a fresh permutation
                    order = torch.randperm(n, generator=generator)[: per_epoch * bs]
                idx, order = order[:bs], order[bs:]
                real, y_real = data.batch(idx.numpy()), labels[idx]
                if self.channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                z = torch.randn(bs, G.nz, generator=generator)
                y_fake = torch.randint(0, k, (bs,), generator=generator)
                fake = G(z, y_fake)
                self.opt_d.zero_grad(set_to_none=True)
                if dp is not None:
                    d_loss = dp.backward(D, loss, real, fake, y_real, y_fake)
                else:
                    d_loss = loss.d_loss(D, real, fake.detach(), y_real, y_fake)
                    d_loss.backward()
                for h in hooks:
                    h.after_backward("D", D)
                self.opt_d.step()
            # --- generator phase: D's weights need no gradient here (saves a third of the work)
            D.requires_grad_(False)
            g_loss = loss.g_loss(D, fake, y_fake)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            for h in hooks:
                h.after_backward("G", G)
            self.opt_g.step()
            d_sum += d_loss.detach()
            g_sum += g_loss.detach()
            if on_step is not None:
                on_step(step + 1)
        D.requires_grad_(True)
        steps = max(steps, 1)
        return LocalResult(steps=steps, images=steps * bs * loss.n_critic,
                           d_loss=float(d_sum) / steps, g_loss=float(g_sum) / steps,
                           seconds=time.perf_counter() - t0)
