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
from .device import PerDataSet, autocast, cpu_state, images_and_labels
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

    # optional: ``before_training(net, module)``, called once after the network is put in training
    # mode (FixBN freezes its BatchNorm statistics there); see :func:`before_training`


def before_training(hooks: Sequence[TrainHook], net: str, module: torch.nn.Module) -> None:
    """Each hook's optional ``before_training`` on a network just put in training mode."""
    for h in hooks:
        f = getattr(h, "before_training", None)
        if f is not None:
            f(net, module)


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
    channels_last : bool
        NHWC memory layout for the networks and batches.
    device : torch.device or str, default "cpu"
        Where the networks, their optimizer state and the batches live
        (:func:`fedsynth.train.device.resolve_device`).
    precision : str, default "fp32"
        ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast and a gradient scaler per network).
    """

    def __init__(self, gan: torch.nn.Module, loss: GANLoss, optim: OptimConfig = OptimConfig(),
                 channels_last: bool = False, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.channels_last = channels_last
        self.device = torch.device(device)
        self.precision = precision
        gan = gan.to(self.device)  # a no-op on the CPU
        if channels_last:  # NHWC: measured faster for these convolutions on CPU
            gan = gan.to(memory_format=torch.channels_last)
        self.gan, self.loss, self.optim = gan, loss, optim
        # fused Adam (one kernel for all parameters) where it exists; the CPU keeps the default
        # (foreach) implementation, so CPU results are unchanged
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(gan.G.parameters(), lr=optim.lr_g, betas=optim.betas, **fused)
        self.opt_d = torch.optim.Adam(gan.D.parameters(), lr=optim.lr_d, betas=optim.betas, **fused)
        self._fresh_g = self.opt_g.state_dict()
        self._fresh_d = self.opt_d.state_dict()
        self._images = PerDataSet()  # each client's (images, labels) on the device
        # layers that draw from torch's global RNG while training (dropout, stochastic depth)
        self._stochastic = any(_draws_randomly(m) for m in gan.modules())

    def _on_device(self, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's ``uint8`` images and labels on the device, moved once per data set (on the
        CPU: the arrays' own memory)."""
        return self._images.get(data, lambda d: images_and_labels(d, self.device))

    def _batch(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images in ``[-1, 1]`` and their labels for indices ``idx``, built on the device
        (the same arithmetic as :meth:`fedsynth.data.ImageSet.batch`)."""
        idx = idx.to(images.device)
        x = images[idx].to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)  # (B, C, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels[idx].to(self.device, non_blocking=True)

    # ---- client state in / out
    def load(self, weights: dict[str, torch.Tensor], opt_state: dict[str, Any] | None) -> None:
        """Load weights (a full ``GAN`` state dict) and a client's optimizer state (or fresh)."""
        self.gan.load_state_dict(weights)
        # load_state_dict keeps the caller's tensors when dtypes match, and Adam then updates
        # them in place: copy, so a stored client state is never changed behind its owner
        self.opt_g.load_state_dict(copy.deepcopy(opt_state["G"] if opt_state else self._fresh_g))
        self.opt_d.load_state_dict(copy.deepcopy(opt_state["D"] if opt_state else self._fresh_d))

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the weights, always on the CPU (what travels, aggregates and is saved)."""
        return cpu_state(self.gan)

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

        Networks with dropout or stochastic depth (the upsample-CNN generator, Swin) draw from
        torch's global RNG; for them the global RNG is forked and seeded from ``generator`` for
        this call, so those draws are reproducible too (and nothing else's stream moves).
        """
        if not self._stochastic:  # DCGAN: no global draws, and ``generator``'s stream is unchanged
            return self._train(data, steps, batch_size, generator, on_step, hooks, dp)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._train(data, steps, batch_size, generator, on_step, hooks, dp)

    def _train(self, data: ImageSet, steps: int, batch_size: int, generator: torch.Generator,
               on_step: Callable[[int], None] | None, hooks: Sequence[TrainHook], dp: Any) -> LocalResult:
        G, D, loss = self.gan.G, self.gan.D, self.loss
        dev = self.device
        loss.generator = generator
        if loss.augment is not None:
            loss.augment.generator = generator
        images, labels = self._on_device(data)
        k = max(data.num_classes, 1)
        G.train()
        D.train()
        before_training(hooks, "G", G)
        before_training(hooks, "D", D)
        n = len(data)
        bs = min(batch_size, n)
        per_epoch = steps_per_epoch(n, bs)
        order = torch.empty(0, dtype=torch.long)
        d_sum = torch.zeros((), device=dev)  # losses accumulate on the device: one sync per round
        g_sum = torch.zeros((), device=dev)
        amp = autocast(dev, self.precision)
        scale_d = scale_g = None
        if self.precision == "fp16":  # float16 gradients underflow without a loss scale
            scale_d, scale_g = torch.amp.GradScaler(dev.type), torch.amp.GradScaler(dev.type)
        t0 = time.perf_counter()
        for step in range(steps):
            # --- discriminator phase(s)
            D.requires_grad_(True)
            for _ in range(loss.n_critic):
                if len(order) < bs:  # epoch boundary: a fresh permutation
                    order = torch.randperm(n, generator=generator)[: per_epoch * bs]
                idx, order = order[:bs], order[bs:]
                real, y_real = self._batch(images, labels, idx)
                # drawn on the CPU from the seeded generator on every device, then moved
                z = torch.randn(bs, G.nz, generator=generator).to(dev)
                y_fake = torch.randint(0, k, (bs,), generator=generator).to(dev)
                with amp:
                    fake = G(z, y_fake)
                self.opt_d.zero_grad(set_to_none=True)
                if dp is not None:
                    d_loss = dp.backward(D, loss, real, fake, y_real, y_fake)
                else:
                    with amp:
                        d_loss = loss.d_loss(D, real, fake.detach(), y_real, y_fake)
                    _backward(d_loss, scale_d, self.opt_d)
                for h in hooks:
                    h.after_backward("D", D)
                _step(self.opt_d, scale_d)
            # --- generator phase: D's weights need no gradient here (saves a third of the work)
            D.requires_grad_(False)
            with amp:
                g_loss = loss.g_loss(D, fake, y_fake)
            self.opt_g.zero_grad(set_to_none=True)
            _backward(g_loss, scale_g, self.opt_g)
            for h in hooks:
                h.after_backward("G", G)
            _step(self.opt_g, scale_g)
            d_sum += d_loss.detach()
            g_sum += g_loss.detach()
            if on_step is not None:
                on_step(step + 1)
        D.requires_grad_(True)
        steps = max(steps, 1)
        return LocalResult(steps=steps, images=steps * bs * loss.n_critic,
                           d_loss=float(d_sum) / steps, g_loss=float(g_sum) / steps,
                           seconds=time.perf_counter() - t0)


def _draws_randomly(m: torch.nn.Module) -> bool:
    """Dropout (torch), stochastic depth (torchvision) or drop-path (timm) with a non-zero rate."""
    if isinstance(m, torch.nn.modules.dropout._DropoutNd):
        return m.p > 0
    if type(m).__name__ in ("StochasticDepth", "DropPath"):
        return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0) > 0
    return False


def _backward(loss: torch.Tensor, scaler: Any, opt: torch.optim.Optimizer) -> None:
    """Backward pass; with a gradient scaler (fp16) the gradients are unscaled right after, so
    hooks (FedProx, SCAFFOLD, FedDyn) see true gradients."""
    if scaler is None:
        loss.backward()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(opt)


def _step(opt: torch.optim.Optimizer, scaler: Any) -> None:
    if scaler is None:
        opt.step()
        return
    scaler.step(opt)  # skipped when a gradient is inf/NaN; the scale then shrinks
    scaler.update()
