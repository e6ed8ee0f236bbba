"""The autoencoder family: stage 1 of latent diffusion, a KL-regularised autoencoder (MONAI's
``AutoencoderKL``) that maps images or volumes to a smaller latent grid and back, trained
federated like any model; optionally with a patch adversarial loss (MONAI's
``PatchDiscriminator``) that sharpens its reconstructions.

Stage 2 (:mod:`fedsynth.models.latent`) freezes a trained autoencoder and trains a diffusion
UNet on its latents. Every site must hold the *same* frozen autoencoder; its weights never
travel in stage 2, and a hash of them (:func:`autoencoder_sha256`) is checked at every site.

Weights: ``G.ae.*`` (the autoencoder), ``G.latent_sq`` (a running mean of the latents' second
moment, a buffer averaged across sites like BatchNorm statistics: stage 2 scales latents by
``1 / sqrt(latent_sq)`` so the diffusion model sees unit variance, as Rombach et al. 2022 do with
their scale factor -- here computed from every site's data without any image leaving it) and,
with the adversarial loss, ``D.*`` (the patch discriminator).

As a generator on its own the autoencoder decodes draws from ``N(0, latent_sq)``: with the small
KL weight latent diffusion uses, these are not good images (the latent distribution is far from
Gaussian). Judge stage 1 by its reconstruction loss (``recon-loss``); its distances are recorded
like any family's but say little.

One local step: ``mu, sigma = encode(x)``, ``z = mu + sigma e`` (``e`` from the seeded
generator), ``x' = decode(z)``; loss ``|x - x'|_1 + kl_weight KL(N(mu, sigma) || N(0, 1))``
[``+ adversarial_weight * hinge(D(x'))``, and a hinge step of ``D`` on ``x`` against ``x'``].

References: Kingma & Welling 2014 (VAE, arXiv:1312.6114), Rombach et al. 2022 (latent diffusion,
arXiv:2112.10752), Isola et al. 2017 (patch discriminator, arXiv:1611.07004), Pinaya et al. 2022
(brain imaging latent diffusion with MONAI's networks, arXiv:2209.07162).
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..train import steps_per_epoch
from ..train.device import PerDataSet, autocast, cpu_state, images_on
from .base import GenerativeModel, TrainResult, description_fields
from .gan import norm_keys

MOMENTUM = 0.01  # of the running latent second moment (BatchNorm's default is 0.1; these change slowly)


@dataclass(frozen=True)
class AutoencoderSpec:
    """Everything needed to rebuild an autoencoder (stored in checkpoints)."""

    image_size: int = 32
    channels: int = 1
    num_classes: int = 0
    dims: int = 2
    widths: tuple = (16, 32)                  # encoder/decoder widths per level: the side halves len - 1 times
    latent_channels: int = 3
    res_blocks: int = 1
    norm_groups: int = 8
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0           # 0: no patch discriminator
    discriminator_width: int = 16

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @property
    def latent_size(self) -> int:
        return self.image_size >> (len(self.widths) - 1)


class LatentAutoencoder(nn.Module):
    """MONAI's ``AutoencoderKL`` and the running second moment of its latents.

    ``forward(x, e)`` is one reconstruction with the noise ``e`` given (never drawn inside, so a
    step depends only on the seeded generator): ``(x', mu, sigma)``."""

    def __init__(self, spec: AutoencoderSpec):
        super().__init__()
        from monai.networks.nets import AutoencoderKL
        levels = len(spec.widths)
        self.ae = AutoencoderKL(
            spatial_dims=spec.dims, in_channels=spec.channels, out_channels=spec.channels,
            channels=tuple(spec.widths), latent_channels=spec.latent_channels,
            num_res_blocks=(spec.res_blocks,) * levels, attention_levels=(False,) * levels,
            norm_num_groups=spec.norm_groups, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.register_buffer("latent_sq", torch.ones(()))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and standard deviation for images ``x`` in ``[-1, 1]``."""
        return self.ae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(z)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.ae.encode(x)
        return self.ae.decode(mu + sigma * e), mu, sigma


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` summed over a sample's latent grid, mean over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def autoencoder_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of an autoencoder's weights (its ``G.*`` keys: the autoencoder and its latent scale;
    never the patch discriminator): key, dtype, shape and bytes of each tensor, in key order. Two
    sites hold the same frozen autoencoder exactly when their hashes agree, whatever file format
    or path each keeps it in."""
    h = hashlib.sha256()
    for k in sorted(k for k in state if k.startswith("G.")):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class AutoencoderNets(nn.Module):
    def __init__(self, spec: AutoencoderSpec):
        super().__init__()
        self.G = LatentAutoencoder(spec)
        if spec.adversarial_weight > 0:
            from monai.networks.nets import PatchDiscriminator
            self.D = PatchDiscriminator(spatial_dims=spec.dims, channels=spec.discriminator_width,
                                        in_channels=spec.channels, num_layers_d=2, norm="INSTANCE")


class AutoencoderModel(GenerativeModel):
    """Stage 1 of latent diffusion behind :class:`GenerativeModel`: an autoencoder, its Adam
    optimizer(s), the reconstruction + KL (+ patch adversarial) objective."""

    family = "autoencoder"
    title = "autoencoder"
    maker = "autoencoder"
    loss_labels = {"recon-loss": "reconstruction (L1)", "kl-loss": "KL to N(0, 1)", "d-loss": "patch discriminator",
                   "g-loss": "adversarial (decoder)"}
    loss_help = ("Each client's reconstruction loss (mean absolute error between an image and its "
                 "reconstruction through the latent grid, in [-1, 1] units) and the KL term, means over a round's "
                 "local steps. This is stage 1 of latent diffusion: judge it by the reconstruction loss. Its "
                 "samples decode random latents and are not meant as images; the diffusion model of stage 2 "
                 "learns which latents make images.")

    @classmethod
    def config_line(cls, cfg: dict[str, Any]) -> str:
        a = cfg.get("autoencoder", {})
        widths = "/".join(str(c) for c in a.get("channels", ())) or "?"
        dims = "3-D " if cfg.get("data", {}).get("dims", 2) == 3 else ""
        adv = f", patch adversarial loss × {a['adversarial-weight']}" if a.get("adversarial-weight", 0) else ""
        return (f"autoencoder (stage 1 of latent diffusion): {dims}AutoencoderKL ({widths} channels, "
                f"{a.get('latent-channels', 3)} latent channels), KL weight {a.get('kl-weight', 1e-6):g}{adv}")

    def __init__(self, spec: AutoencoderSpec, seed: int = 0, lr: float = 1e-4,
                 device: torch.device | str = "cpu", precision: str = "auto"):
        from ..train.device import resolve_precision
        self.spec = spec
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.lr = lr
        self.num_classes = spec.num_classes
        self.conditional = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = AutoencoderNets(spec)
        self.nets = nets.to(self.device)
        self.G = self.nets.G
        self.D = getattr(self.nets, "D", None)
        self.opts = {"G": torch.optim.Adam(self.G.parameters(), lr=lr, betas=(0.5, 0.9))}
        if self.D is not None:
            self.opts["D"] = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(0.5, 0.9))
        self._fresh = {k: o.state_dict() for k, o in self.opts.items()}
        self._images = PerDataSet()  # each client's images on the device

    # ---- build
    @classmethod
    def from_config(cls, cfg, image_size: int, channels: int, num_classes: int) -> "AutoencoderModel":
        from ..train.device import resolve_device
        from ..utils import derive_seed
        a = cfg.autoencoder
        spec = AutoencoderSpec(image_size=image_size, channels=channels, num_classes=num_classes, dims=cfg.data.dims,
                               widths=tuple(a.channels), latent_channels=a.latent_channels,
                               res_blocks=a.res_blocks, norm_groups=a.norm_groups, kl_weight=a.kl_weight,
                               adversarial_weight=a.adversarial_weight, discriminator_width=a.discriminator_width)
        return cls(spec, seed=derive_seed(cfg.run.seed, "init"), lr=a.lr, device=resolve_device(cfg.run.device),
                   precision=cfg.train.precision)

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> "AutoencoderModel":
        kw = description_fields(desc, AutoencoderSpec, "autoencoder")
        if "widths" in kw:
            kw["widths"] = tuple(kw["widths"])
        return cls(AutoencoderSpec(**kw))

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, **self.spec.to_dict()}

    # ---- weights
    def state(self):
        return cpu_state(self.nets)

    def load(self, state, opt_state=None):
        self.nets.load_state_dict(state)
        for k, o in self.opts.items():
            o.load_state_dict(copy.deepcopy(opt_state[k] if opt_state else self._fresh[k]))

    def opt_state(self):
        return {k: copy.deepcopy(o.state_dict()) for k, o in self.opts.items()}

    def parameter_keys(self):
        return {f"{n}.{k}" for n in ("G", "D") if getattr(self, n) is not None
                for k, _ in getattr(self, n).named_parameters()}

    def norm_keys(self):
        return norm_keys(self.nets)

    def learning_rates(self):
        return {k: self.lr for k in self.parameter_keys()}

    def frozen(self) -> "LatentAutoencoder":
        """The autoencoder as stage 2 uses it: evaluation mode, no gradients."""
        return self.G.eval().requires_grad_(False)

    # ---- train
    def train(self, data, steps, batch_size, generator, on_step=None, hooks=(), dp=None) -> TrainResult:
        G, D, dev, spec = self.G, self.D, self.device, self.spec
        images = self._images.get(data, lambda d: images_on(d.images, dev))
        n = len(data)
        bs = min(batch_size, n)
        per_epoch = steps_per_epoch(n, bs)
        order = torch.empty(0, dtype=torch.long)
        sums = {k: torch.zeros((), device=dev) for k in ("recon-loss", "kl-loss", "d-loss", "g-loss")}
        amp = autocast(dev, self.precision)
        G.train()
        if D is not None:
            D.train()
        from ..train.local import before_training
        before_training(hooks, "G", G)
        latent_shape = (spec.latent_channels, *(spec.latent_size,) * spec.dims)
        t0 = time.perf_counter()
        for step in range(steps):
            if len(order) < bs:
                order = torch.randperm(n, generator=generator)[: per_epoch * bs]
            idx, order = order[:bs], order[bs:]
            x = images[idx.to(images.device)].to(dev, non_blocking=True).float().div_(127.5).sub_(1.0)
            e = torch.randn((bs, *latent_shape), generator=generator).to(dev)  # drawn on the CPU
            self.opts["G"].zero_grad(set_to_none=True)
            if dp is not None:
                loss = dp.per_example_backward(
                    G, lambda f, xi, ei: self._loss(f(xi[None], ei[None]), xi[None])[0], x, e)
                with torch.no_grad():
                    recon, mu, sigma = G(x, e)
                    rec, kl = F.l1_loss(recon, x), kl_divergence(mu, sigma)
            else:
                with amp:
                    recon, mu, sigma = G(x, e)
                    loss, rec, kl = self._loss((recon.float(), mu.float(), sigma.float()), x)
                    if D is not None:
                        g_adv = -D(recon)[-1].float().mean()
                        loss = loss + spec.adversarial_weight * g_adv
                        sums["g-loss"] += g_adv.detach()
                loss.backward()
            for h in hooks:
                h.after_backward("G", G)
            self.opts["G"].step()
            if D is not None:  # hinge step of the patch discriminator: real x against the reconstruction
                self.opts["D"].zero_grad(set_to_none=True)
                with amp:
                    d_loss = F.relu(1 - D(x)[-1].float()).mean() + F.relu(1 + D(recon.detach())[-1].float()).mean()
                d_loss.backward()
                for h in hooks:
                    h.after_backward("D", D)
                self.opts["D"].step()
                sums["d-loss"] += d_loss.detach()
            with torch.no_grad():  # the running second moment of the latents z = mu + sigma e
                m = (mu.float().pow(2) + sigma.float().pow(2)).mean()
                G.latent_sq.lerp_(m, MOMENTUM)
            sums["recon-loss"] += rec.detach()
            sums["kl-loss"] += kl.detach()
            if on_step is not None:
                on_step(step + 1)
        steps = max(steps, 1)
        keep = ("recon-loss", "kl-loss") + (("d-loss", "g-loss") if D is not None else ())
        return TrainResult(steps, steps * bs, time.perf_counter() - t0, {k: float(sums[k]) / steps for k in keep},
                           private_steps=steps if dp is not None else 0)

    def _loss(self, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor):
        recon, mu, sigma = out
        rec, kl = F.l1_loss(recon, x), kl_divergence(mu, sigma)
        return rec + self.spec.kl_weight * kl, rec, kl

    # ---- sample
    def latents(self, n, generator):
        s = self.spec
        return torch.randn(n, s.latent_channels, *(s.latent_size,) * s.dims, generator=generator)

    def sampler(self, state):
        G = self.G
        if state is not None:
            G.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("G.")})
        G.eval()
        return lambda z, y: G.decode(z * G.latent_sq.sqrt()).float().clamp(-1, 1)
