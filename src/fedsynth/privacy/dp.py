"""Differential privacy.

**Sample-level DP-SGD on the discriminator** (Abadi et al. 2016; as in DP-GAN, Xie et al. 2018):
the discriminator is the only network that sees real images, so only its updates need
protecting; the generator, trained through D, inherits the guarantee by post-processing. Each
D step computes per-example gradients with ``torch.func`` (one real and one generated image per
example), clips each to ``clip`` and adds Gaussian noise ``N(0, (sigma clip)^2)`` drawn from a
seeded generator. The privacy cost is tracked with Opacus' RDP accountant per client (sample
rate = batch / client size; the loop shuffles rather than Poisson-samples, the usual
approximation). Requires a discriminator without BatchNorm.

**Sample-level DP-SGD on the denoising UNet** (the diffusion family, as in Dockhorn et al. 2023,
"Differentially private diffusion models"): the UNet sees real images, so its step is the one
privatised, by the same clipping and noise (:meth:`DPSGD.per_example_backward`, one noised real
image per example); its EMA copy and every sample are post-processing.

**Client-level DP at the server** (McMahan et al. 2018, DP-FedAvg): each client's change is
clipped to norm ``S``, the clipped changes are averaged (unweighted) and Gaussian noise
``N(0, (sigma S / m)^2)`` is added; accounted with sample rate = clients per round / clients.
:class:`ClientLevelDP` wraps any strategy this way and keeps the accountant's history in its
state (so a resumed run reports the same epsilon).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.func import functional_call, grad_and_value, vmap

from ..updates import Average, ClientUpdate, State, StrategyWrapper, by_client, update_norm


def accountant():
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:  # pragma: no cover
        from ..config import UserError
        raise UserError("differential privacy accounting needs opacus: pip install 'fedsynth[dp]'") from None
    return RDPAccountant()


def account_dp_sgd(history: list, noise: float, sample_rate: float, steps: int, delta: float) -> tuple[list, float]:
    """Add ``steps`` DP-SGD steps to an accountant ``history``; returns the new history and
    epsilon at ``delta``. The history is plain numbers (a client keeps it between rounds)."""
    acc = accountant()
    acc.history = [tuple(h) for h in history]
    for _ in range(steps):
        acc.step(noise_multiplier=noise, sample_rate=sample_rate)
    return [list(h) for h in acc.history], float(acc.get_epsilon(delta))


class DPSGD:
    """Replaces the backward pass of the network that sees real images (the GAN's discriminator,
    the diffusion model's UNet) with clipped, noised per-example gradients."""

    def __init__(self, clip: float, noise: float, generator: torch.Generator):
        self.clip, self.noise, self.generator = clip, noise, generator

    def backward(self, D: torch.nn.Module, loss, real, fake, y_real, y_fake) -> torch.Tensor:
        """The GAN discriminator's step: one real and one generated image per example."""
        return self.per_example_backward(
            D, lambda fD, r, f, yr, yf: loss.d_loss(fD, r[None], f[None], yr[None], yf[None]),
            real, fake.detach(), y_real, y_fake)

    def per_example_backward(self, module: torch.nn.Module, loss_fn, *batch: torch.Tensor) -> torch.Tensor:
        """Set ``module``'s gradients to the clipped, noised mean of per-example gradients.

        ``loss_fn(f, *example)`` is one example's loss, where ``f(*inputs)`` calls ``module``
        with the weights being differentiated and ``example`` is one row of each tensor in
        ``batch``. Returns the mean loss."""
        params = {k: v.detach() for k, v in module.named_parameters()}
        buffers = {k: v.detach() for k, v in module.named_buffers()}

        def one(p, b, *example):
            f = lambda *inputs: functional_call(module, (p, b), inputs)  # noqa: E731
            return loss_fn(f, *example)

        grads, values = vmap(grad_and_value(one), in_dims=(None, None, *[0] * len(batch)))(
            params, buffers, *batch)
        B = batch[0].shape[0]
        norms = torch.sqrt(sum(g.reshape(B, -1).pow(2).sum(1) for g in grads.values()))
        scale = (self.clip / (norms + 1e-12)).clamp(max=1.0)
        for k, p in module.named_parameters():
            g = (grads[k] * scale.view(-1, *[1] * (grads[k].dim() - 1))).sum(0)
            g += torch.randn(g.shape, generator=self.generator).to(g.device) * (self.noise * self.clip)  # drawn on the CPU
            p.grad = g / B
        return values.mean()


def client_dp_average(updates: Sequence[ClientUpdate], global_state: State, clip: float, noise: float,
                      generator: torch.Generator) -> State:
    """Clip each change to ``clip``, average unweighted, add ``N(0, (noise clip / m)^2)``."""
    ups = by_client(updates)
    m = len(ups)
    keys = [k for k, v in ups[0].weights.items() if v.is_floating_point()]
    deltas = []
    for u in ups:
        d = {k: u.weights[k].double() - global_state[k].double() for k in keys}
        nrm = update_norm(u.weights, global_state)
        s = min(1.0, clip / nrm) if nrm > 0 else 1.0
        deltas.append({k: v * s for k, v in d.items()})
    out = {}
    for k, ref in ups[0].weights.items():
        if k in keys:
            mean = sum(d[k] for d in deltas) / m
            mean = mean + torch.randn(mean.shape, generator=generator, dtype=torch.float64) * (noise * clip / m)
            out[k] = (global_state[k].double() + mean).to(ref.dtype)
        else:
            out[k] = torch.stack([u.weights[k].double() for u in ups]).median(dim=0).values.round().to(ref.dtype)
    return out


class ClientLevelDP(StrategyWrapper):
    """``inner`` with its mean replaced by :func:`client_dp_average` (noise drawn from the
    generator passed to :meth:`aggregate`), and an RDP accountant for ``(epsilon, delta)``."""

    def __init__(self, inner, clip: float, noise: float, delta: float):
        super().__init__(inner)
        self.clip, self.noise, self.delta = clip, noise, delta
        self.accountant = accountant()

    def aggregate(self, global_state, updates, rng=None, average: Average | None = None):
        if rng is None:
            raise ValueError("client-level DP needs a random generator for its noise")
        clip, noise = self.clip, self.noise
        return self.inner.aggregate(global_state, updates, rng=rng,
                                    average=lambda g, ups: client_dp_average(ups, g, clip, noise, rng))

    def round_records(self, round_: int, sample_rate: float) -> list[dict[str, Any]]:
        """Account for one aggregation of a fraction ``sample_rate`` of the clients."""
        self.accountant.step(noise_multiplier=self.noise, sample_rate=sample_rate)
        return self.inner.round_records(round_, sample_rate) + [
            {"round": round_, "client": "server", "metric": "client-dp-epsilon",
             "value": float(self.accountant.get_epsilon(self.delta)), "delta": self.delta}]

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "accountant": [list(h) for h in self.accountant.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.accountant.history = [tuple(h) for h in state["accountant"]]
