"""The diffusion family: a denoising UNet trained on the DDPM objective (predicting v, or the
noise), sampled with DDIM or DDPM, optionally class-conditional with classifier-free guidance,
with an EMA of its weights.

Building blocks from MONAI (``monai.networks.nets.DiffusionModelUNet``, its DDPM/DDIM
schedulers): the medical-imaging field's library, 2D and 3D, Apache-2.0; measured as fast as
diffusers' ``UNet2DModel`` for the same UNet here (``benchmarks/diffusion_libs.py``,
docs/models.md).

Weights: one state dict, every key under ``G.`` (the family's generative model, so the default
``fed.share = ["G", "D"]`` shares all of it):

* ``G.unet.*`` -- the UNet being trained (parameters: hooks, DP-SGD, SCAFFOLD, server optimisers);
* ``G.ema.*`` -- its exponential moving average, updated after every local step (buffers: they
  travel and are averaged like BatchNorm statistics; what is sampled and evaluated);
* ``G.ema_steps`` -- the EMA's update count (an integer, for its warm-up).

How the EMA travels: each client continues the EMA it received over its own local steps; the
server averages the clients' EMAs like any buffer. Since an EMA is linear in the weights it
averages, the mean of the clients' EMAs is the EMA of their mean trajectory -- for FedAvg, the
EMA of the global model's path through the round. ``fed.share = ["G.unet"]`` keeps the EMA on
the sites instead (the server then samples from the averaged UNet, or in-process from the mean
of the kept EMAs).

Sampling is deterministic given the latents: DDIM with eta = 0 draws nothing; DDPM's per-step
noise for a sample comes from a generator seeded by that sample's latent, so a sample does not
depend on the batch it is drawn in.

References: Ho et al. 2020 (DDPM, arXiv:2006.11239), Salimans & Ho 2022 (v-prediction,
arXiv:2202.00512), Song et al. 2021 (DDIM, arXiv:2010.02502),
Ho & Salimans 2022 (classifier-free guidance, arXiv:2207.12598), Nichol & Dhariwal 2021
(cosine schedule, arXiv:2102.09672).
"""

from __future__ import annotations

import copy
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..train import steps_per_epoch
from ..train.device import PerDataSet, autocast, cpu_state, images_and_labels
from .base import GenerativeModel, TrainResult, description_fields
from .gan import norm_keys

#: config names of the noise schedules -> MONAI's NoiseSchedules names
SCHEDULES = {"linear": "linear_beta", "scaled-linear": "scaled_linear_beta", "sigmoid": "sigmoid_beta",
             "cosine": "cosine"}


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything needed to rebuild a diffusion model and sample it (stored in checkpoints)."""

    image_size: int = 32
    channels: int = 1                          # image channels
    num_classes: int = 0
    widths: tuple = (16, 32, 64)               # UNet channels per level
    attention: tuple = (False, False, True)
    res_blocks: int = 1
    norm_groups: int = 8
    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sampler: str = "ddim"
    sampling_steps: int = 10
    conditional: bool = False
    guidance_scale: float = 1.0
    ema_decay: float = 0.999
    clip_sample: bool = True
    prediction: str = "epsilon"                # "epsilon" | "v" (config default v; epsilon: checkpoints before it)
    dims: int = 2                              # 3: volumes (C, S, S, S), a 3-D UNet

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["attention"] = list(self.widths), list(self.attention)
        return d


def unet_spec(cfg: Any, image_size: int, channels: int, num_classes: int, **change: Any) -> DiffusionSpec:
    """The UNet, noise schedule and sampler a run's ``[diffusion]`` section describes, for inputs
    of side ``image_size`` with ``channels`` channels (``change``: fields set otherwise)."""
    d = cfg.diffusion
    kw = dict(image_size=image_size, channels=channels, num_classes=num_classes, widths=tuple(d.channels),
              attention=tuple(d.attention), res_blocks=d.res_blocks, norm_groups=d.norm_groups,
              timesteps=d.timesteps, schedule=d.schedule, beta_start=d.beta_start, beta_end=d.beta_end,
              sampler=d.sampler, sampling_steps=d.sampling_steps, conditional=d.conditional,
              guidance_scale=d.guidance_scale, ema_decay=d.ema_decay, clip_sample=d.clip_sample,
              prediction=d.prediction, dims=cfg.data.dims)
    return DiffusionSpec(**{**kw, **change})


def build_unet(spec: DiffusionSpec) -> nn.Module:
    """MONAI's ``DiffusionModelUNet`` for ``spec`` (one attention head per attention level;
    conditional: ``num_classes + 1`` label embeddings, the last being the null label)."""
    from monai.networks.nets import DiffusionModelUNet
    return DiffusionModelUNet(
        spatial_dims=spec.dims, in_channels=spec.channels, out_channels=spec.channels, channels=tuple(spec.widths),
        attention_levels=tuple(spec.attention), num_res_blocks=spec.res_blocks, norm_num_groups=spec.norm_groups,
        num_head_channels=tuple(spec.widths),
        num_class_embeds=max(spec.num_classes, 1) + 1 if spec.conditional else None)


def schedulers(spec: DiffusionSpec) -> tuple[Any, Any]:
    """MONAI's DDPM (training: ``add_noise``; ``ddpm`` sampling) and DDIM schedulers for ``spec``."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
    args: dict[str, Any] = {"num_train_timesteps": spec.timesteps, "schedule": SCHEDULES[spec.schedule]}
    if spec.schedule != "cosine":
        args.update(beta_start=spec.beta_start, beta_end=spec.beta_end)
    kind = {"epsilon": "epsilon", "v": "v_prediction"}[spec.prediction]
    return (DDPMScheduler(clip_sample=spec.clip_sample, prediction_type=kind, **args),
            DDIMScheduler(clip_sample=spec.clip_sample, prediction_type=kind, **args))


def ddim_timesteps(T: int, n: int) -> list[int]:
    """The ``n`` DDIM timesteps, highest first: ``(n - 1) s, ..., s, 0`` with stride ``s = T // n``
    (the "leading" spacing of Song et al. 2021). MONAI 1.6.1's ``DDIMScheduler.set_timesteps``
    spaces them by ``linspace(T - 1, 0, n)`` while its ``step`` moves from ``t`` to ``t - T // n``,
    so the two disagree whenever ``n`` does not divide ``T - 1`` evenly; these are the steps its
    ``step`` assumes."""
    stride = T // n
    return [k * stride for k in range(n - 1, -1, -1)]


class Denoiser(nn.Module):
    """The UNet and its EMA copy in one module (state keys ``unet.*``, ``ema.*``, ``ema_steps``)."""

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        self.unet = build_unet(spec)
        if spec.ema_decay > 0:
            self.ema = copy.deepcopy(self.unet).requires_grad_(False)
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))


class DiffusionNets(nn.Module):
    """``G``: the family's generative model, so every key starts with ``G.``."""

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        self.G = Denoiser(spec)


class DiffusionModel(GenerativeModel):
    """The diffusion family behind :class:`GenerativeModel`: a MONAI UNet, its Adam optimizer,
    the DDPM objective, an EMA, DDIM/DDPM sampling.

    One local step: a batch of real images ``x0``, noise ``e`` and timesteps ``t`` (drawn from
    the seeded generator), ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e``, loss ``|| target - unet(x_t, t) ||^2``
    with target ``v = sqrt(a_t) e - sqrt(1 - a_t) x0`` (Salimans & Ho 2022) or ``e`` (Ho et al.
    2020), hooks, the optimizer step, then the EMA update.
    """

    family = "diffusion"
    title = "diffusion model"
    maker = "denoising UNet"
    loss_labels = {"loss": "denoising loss"}
    loss_help = ("Each client's denoising loss, the mean over a round's local steps: the mean squared error of "
                 "the UNet's prediction (v or the noise, diffusion.prediction) at random noise levels. It falls "
                 "quickly and then flattens while the samples still improve, so judge the samples by the "
                 "distances above, not by this loss.")

    @classmethod
    def config_line(cls, cfg: dict[str, Any]) -> str:
        d = cfg.get("diffusion", {})
        steps = f" {d.get('sampling-steps', 10)} steps" if d.get("sampler", "ddim") == "ddim" else ""
        widths = "/".join(str(c) for c in d.get("channels", ())) or "?"
        dims = "3-D " if cfg.get("data", {}).get("dims", 2) == 3 else ""
        return (f"diffusion: {dims}UNet ({widths} channels), {d.get('timesteps', 1000)} noise steps, "
                f"{d.get('schedule', 'linear')} schedule, predicts {d.get('prediction', 'v')}; sampled with "
                f"{d.get('sampler', 'ddim')}{steps}" + (", class-conditional" if d.get("conditional") else ""))

    def __init__(self, spec: DiffusionSpec, seed: int = 0, lr: float = 1e-3, cond_drop: float = 0.1,
                 device: torch.device | str = "cpu", precision: str = "auto"):
        from ..train.device import resolve_precision
        self.spec = spec
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.lr, self.cond_drop = lr, cond_drop
        self.num_classes = spec.num_classes
        self.conditional = spec.conditional
        self.null_label = max(spec.num_classes, 1)  # the label embedding classifier-free guidance drops to
        # built and initialised on the CPU from the seed only (the same weights on every device), then moved
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = DiffusionNets(spec)
        self.nets = nets.to(self.device)
        self.G = self.nets.G
        self.ddpm, self.ddim = schedulers(spec)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.Adam(self.G.unet.parameters(), lr=lr, betas=(0.9, 0.999), **fused)
        self._fresh = self.opt.state_dict()
        self._images = PerDataSet()  # each client's (images, labels) on the device

    # ---- build
    @classmethod
    def from_config(cls, cfg, image_size: int, channels: int, num_classes: int) -> "DiffusionModel":
        return cls(unet_spec(cfg, image_size, channels, num_classes), **cls.run_options(cfg))

    @staticmethod
    def run_options(cfg: Any) -> dict[str, Any]:
        """How a run trains the UNet, beside its spec: initialisation seed, learning rate, label
        dropout, device and precision (the constructor's keywords)."""
        from ..train.device import resolve_device
        from ..utils import derive_seed
        d = cfg.diffusion
        return dict(seed=derive_seed(cfg.run.seed, "init"), lr=d.lr, cond_drop=d.cond_drop,
                    device=resolve_device(cfg.run.device), precision=cfg.train.precision)

    @staticmethod
    def spec_of(desc: dict[str, Any], ignore: tuple[str, ...] = ()) -> DiffusionSpec:
        """The :class:`DiffusionSpec` a checkpoint's description holds (``ignore``: keys of others)."""
        kw = description_fields({k: v for k, v in desc.items() if k not in ignore}, DiffusionSpec, "diffusion")
        for k in ("widths", "attention"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return DiffusionSpec(**kw)

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> "DiffusionModel":
        return cls(cls.spec_of(desc))

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, **self.spec.to_dict()}

    # ---- weights
    def state(self):
        return cpu_state(self.nets)

    def load(self, state, opt_state=None):
        self.nets.load_state_dict(state)
        # copied: Adam updates its state in place, and a stored client state must not change
        self.opt.load_state_dict(copy.deepcopy(opt_state["G"] if opt_state else self._fresh))

    def opt_state(self):
        return {"G": copy.deepcopy(self.opt.state_dict())}

    def parameter_keys(self):
        return {f"G.unet.{k}" for k, _ in self.G.unet.named_parameters()}

    def norm_keys(self):
        return norm_keys(self.nets)  # GroupNorm layers of the UNet and of its EMA

    def learning_rates(self):
        return {k: self.lr for k in self.parameter_keys()}

    def provenance(self) -> dict[str, Any]:
        steps = self.spec.sampling_steps if self.spec.sampler == "ddim" else self.spec.timesteps
        out: dict[str, Any] = {"sampler": self.spec.sampler, "sampler-steps": steps}
        if self.conditional and self.spec.guidance_scale != 1.0:
            out["guidance"] = self.spec.guidance_scale
        return out

    # ---- train
    def _on_device(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's uint8 images and labels on the device, moved once per data set."""
        return self._images.get(data, lambda d: images_and_labels(d, self.device))

    def train(self, data, steps, batch_size, generator, on_step=None, hooks=(), dp=None) -> TrainResult:
        unet, dev, T = self.G.unet, self.device, self.spec.timesteps
        images, labels = self._on_device(data)  # (latent diffusion: the latents' moments)
        n = len(data)
        bs = min(batch_size, n)
        per_epoch = steps_per_epoch(n, bs)
        order = torch.empty(0, dtype=torch.long)
        loss_sum = torch.zeros((), device=dev)  # one sync per round
        amp = autocast(dev, self.precision)
        scaler = torch.amp.GradScaler(dev.type) if self.precision == "fp16" else None
        ema = getattr(self.G, "ema", None)
        ema_n = int(self.G.ema_steps) if ema is not None else 0
        if ema is not None:
            live, avg = list(unet.parameters()), list(ema.parameters())
        unet.train()
        from ..train.local import before_training
        before_training(hooks, "G", unet)
        t0 = time.perf_counter()
        for step in range(steps):
            if len(order) < bs:  # epoch boundary: a fresh permutation
                order = torch.randperm(n, generator=generator)[: per_epoch * bs]
            idx, order = order[:bs], order[bs:]
            i = idx.to(labels.device)  # (where the images, or latents, are)
            x0 = self._clean(images, i, generator)  # (B, C, H, W[, D])
            # drawn on the CPU from the seeded generator on every device, then moved
            noise = torch.randn(x0.shape, generator=generator).to(dev)
            t = torch.randint(0, T, (bs,), generator=generator).to(dev)
            y = None
            if self.conditional:
                drop = torch.rand(bs, generator=generator).to(dev) < self.cond_drop
                y = torch.where(drop, torch.full_like(t, self.null_label), labels[i].to(dev).long())
            xt = self.ddpm.add_noise(x0, noise, t)  # sqrt(a_t) x0 + sqrt(1 - a_t) e
            target = noise if self.spec.prediction == "epsilon" else self.ddpm.get_velocity(x0, noise, t)
            self.opt.zero_grad(set_to_none=True)
            if dp is not None:
                loss = self._dp_backward(dp, unet, xt, target, t, y)
            else:
                with amp:
                    loss = F.mse_loss(unet(xt, t, class_labels=y).float(), target)
                if scaler is None:
                    loss.backward()
                else:  # unscaled right away, so hooks see true gradients
                    scaler.scale(loss).backward()
                    scaler.unscale_(self.opt)
            for h in hooks:
                h.after_backward("G.unet", unet)
            if scaler is None:
                self.opt.step()
            else:
                scaler.step(self.opt)
                scaler.update()
            if ema is not None:
                decay = min(self.spec.ema_decay, (1 + ema_n) / (10 + ema_n))  # warm-up
                with torch.no_grad():
                    torch._foreach_lerp_(avg, live, 1.0 - decay)  # avg = decay avg + (1 - decay) live
                ema_n += 1
            loss_sum += loss.detach()
            if on_step is not None:
                on_step(step + 1)
        if ema is not None:
            self.G.ema_steps.fill_(ema_n)
        steps = max(steps, 1)
        return TrainResult(steps, steps * bs, time.perf_counter() - t0, {"loss": float(loss_sum) / steps},
                           private_steps=steps if dp is not None else 0)

    def _clean(self, images: Any, i: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The clean batch ``x0`` the UNet learns to denoise: images ``i`` in ``[-1, 1]``."""
        return images[i].to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)

    @staticmethod
    def _dp_backward(dp, unet, xt, noise, t, y) -> torch.Tensor:
        """DP-SGD's per-example step: each example is one noised real image (its noise and
        timestep, and its label when conditional)."""
        if y is None:
            return dp.per_example_backward(
                unet, lambda f, x, e, s: F.mse_loss(f(x[None], s[None]), e[None]), xt, noise, t)
        return dp.per_example_backward(
            unet, lambda f, x, e, s, c: F.mse_loss(f(x[None], s[None], None, c[None]), e[None]), xt, noise, t, y)

    # ---- sample
    def latents(self, n, generator):
        s = self.spec
        return torch.randn(n, s.channels, *(s.image_size,) * s.dims, generator=generator)

    def sampler(self, state):
        net = self.G.ema if self.spec.ema_decay > 0 else self.G.unet  # the EMA copy is what is sampled
        if state is not None:
            prefix = "G.ema." if any(k.startswith("G.ema.") for k in state) else "G.unet."
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        net.eval()
        return lambda z, y: self._finish(self._sample(net, z, y))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The image a denoised ``x`` is: itself, clipped to ``[-1, 1]``."""
        return x.clamp(-1, 1)

    def _predict(self, net: nn.Module, x: torch.Tensor, t: int, y: torch.Tensor | None) -> torch.Tensor:
        """The UNet's prediction (the noise, or v) at step ``t``; conditional with guidance w != 1:
        the classifier-free mix ``out_u + w (out_c - out_u)`` (one batched pass of both)."""
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        if not self.conditional:
            return net(x, tt).float()
        w = self.spec.guidance_scale
        if w == 1.0:
            return net(x, tt, class_labels=y).float()
        both = net(torch.cat([x, x]), torch.cat([tt, tt]),
                   class_labels=torch.cat([y, torch.full_like(y, self.null_label)])).float()
        cond, uncond = both.chunk(2)
        return uncond + w * (cond - uncond)

    def _sample(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = z.float()  # (B, C, H, W), x_T
        if self.spec.sampler == "ddim":
            self.ddim.set_timesteps(self.spec.sampling_steps)  # MONAI's step reads num_inference_steps
            for t in ddim_timesteps(self.spec.timesteps, self.spec.sampling_steps):
                x, _x0 = self.ddim.step(self._predict(net, x, t, y), t, x, eta=0.0)
            return x
        # ddpm: ancestral sampling over every timestep (Ho et al. 2020, eq. 11 with sigma_t^2 = beta~_t);
        # each sample's noise comes from a generator seeded by its own latent
        gens = [torch.Generator().manual_seed(zlib.crc32(zi.numpy().tobytes()))
                for zi in z.detach().float().cpu()]
        for t in range(self.spec.timesteps - 1, -1, -1):
            noise = None
            if t > 0:
                noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device)
            x = self._ddpm_step(self._predict(net, x, t, y), t, x, noise)
        return x

    def _ddpm_step(self, out: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One ancestral step from ``x_t`` to ``x_{t-1}``: the posterior mean of q(x_{t-1} | x_t, x0)
        at the x0 predicted from the UNet's ``out`` (clipped), plus ``sigma_t noise``; schedule from
        MONAI's scheduler."""
        s = self.ddpm
        a_bar = s.alphas_cumprod[t].item()
        a_bar_prev = s.alphas_cumprod[t - 1].item() if t > 0 else 1.0
        beta = s.betas[t].item()
        if self.spec.prediction == "v":  # v = sqrt(a) e - sqrt(1 - a) x0
            x0 = a_bar ** 0.5 * x - (1 - a_bar) ** 0.5 * out
        else:
            x0 = (x - (1 - a_bar) ** 0.5 * out) / a_bar ** 0.5
        if self.spec.clip_sample:
            x0 = x0.clamp(-1, 1)
        mean = (a_bar_prev ** 0.5 * beta / (1 - a_bar)) * x0 + ((1 - beta) ** 0.5 * (1 - a_bar_prev) / (1 - a_bar)) * x
        if noise is None:
            return mean
        var = max(beta * (1 - a_bar_prev) / (1 - a_bar), 1e-20)
        return mean + var ** 0.5 * noise
