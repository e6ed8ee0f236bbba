"""The latent-diffusion family: stage 2 of latent diffusion. A denoising UNet (the diffusion
family's, :mod:`fedsynth.models.diffusion`) trained on the latents of a frozen stage-1
autoencoder (:mod:`fedsynth.models.autoencoder`), sampled in latent space and decoded.

What a consortium agrees on before stage 2: one trained autoencoder (the stage-1 run's released
model, ``autoencoder.path``), frozen and identical at every site. Its weights are not part of
this family's state, so they never travel, are never averaged and are never checkpointed with
the UNet; only ``G.unet.*`` and ``G.ema.*`` travel, as in pixel-space diffusion. A hash of the
autoencoder's weights (:func:`~fedsynth.models.autoencoder.autoencoder_sha256`) is pinned in the
run's configuration (``autoencoder.sha256``) when the run starts; every site, the server and every
later use of the released model (``generate``, ``evaluate``, a resume) rebuild it from their own
copy of the file and refuse one whose hash differs.

Latents: each client's images are encoded once per data set (the posterior's mean and standard
deviation); every step draws ``z = mu + sigma e`` with ``e`` from the seeded generator and scales
it by ``1 / sqrt(latent_sq)`` (the autoencoder's federated second moment), so the UNet sees unit
variance (Rombach et al. 2022's scale factor). Sampling denoises a latent grid and decodes it.
Latents are unbounded, so the sampler never clips them (``diffusion.clip-sample`` applies to
pixel-space diffusion).

References: Rombach et al. 2022 (arXiv:2112.10752), Pinaya et al. 2022 (arXiv:2209.07162).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config import UserError
from .autoencoder import AutoencoderModel, LatentAutoencoder, autoencoder_sha256
from ..train.device import PerDataSet, images_and_labels
from .diffusion import DiffusionModel, DiffusionSpec, unet_spec

ENCODE_BATCH = 32


def autoencoder_file(path: str | Path) -> Path:
    """The checkpoint file ``autoencoder.path`` names: a file as it is, or a stage-1 run directory's
    released round (``checkpoints/best.pt``, else its newest ``round-*.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        best = p / "checkpoints" / "best.pt"
        rounds = sorted((p / "checkpoints").glob("round-*.pt"))
        if best.is_file():
            return best
        if rounds:
            return rounds[-1]
        raise UserError(f"config key 'autoencoder.path': {p} holds no checkpoints (checkpoints/best.pt or "
                        f"round-*.pt): give a finished stage-1 run directory or a checkpoint file")
    return p


def load_autoencoder(path: str | Path, expect_sha256: str = "") -> tuple[LatentAutoencoder, dict[str, Any], str]:
    """The frozen autoencoder at ``path`` (:func:`autoencoder_file`), its description and its hash;
    a different hash than ``expect_sha256`` (when given) is refused, naming both."""
    from ..serial import UnsafeOrCorrupt, read_torch_file
    f = autoencoder_file(path)
    try:
        ck = read_torch_file(f)
    except FileNotFoundError:
        raise UserError(f"config key 'autoencoder.path': no such file or run directory: {f}") from None
    except UnsafeOrCorrupt as e:
        raise UserError(f"config key 'autoencoder.path': cannot read checkpoint {f}: {e}") from None
    desc = dict(ck.get("model", {})) if isinstance(ck, dict) else {}
    if desc.get("family") != AutoencoderModel.family:
        raise UserError(f"config key 'autoencoder.path': {f} is not an autoencoder (model family "
                        f"{desc.get('family', 'unknown')!r}); stage 2 needs the released model of a run with "
                        f"model.family = 'autoencoder'")
    desc.pop("class_names", None)
    state = ck.get("ema") or ck.get("global")
    if state is None:
        raise UserError(f"config key 'autoencoder.path': {f} holds no global model (its run kept models on the "
                        f"sites); train stage 1 with a strategy that aggregates")
    ae = AutoencoderModel.from_description(desc)
    ae.load(state)
    sha = autoencoder_sha256(state)
    if expect_sha256 and sha != expect_sha256:
        raise UserError(f"the frozen autoencoder {f} has sha256 {sha[:16]}…, not the run's {expect_sha256[:16]}… "
                        f"(autoencoder.sha256): every site must hold the same stage-1 autoencoder")
    return ae.frozen(), desc, sha


class LatentDiffusionModel(DiffusionModel):
    """Stage 2 behind :class:`GenerativeModel`: the diffusion family's UNet, objective, EMA and
    samplers on the latents of a frozen autoencoder (:attr:`autoencoder`, outside the state)."""

    family = "latent-diffusion"
    title = "latent diffusion model"
    maker = "latent denoising UNet"
    loss_help = ("Each client's denoising loss in the autoencoder's latent space, the mean over a round's local "
                 "steps: the mean squared error of the UNet's prediction (v or the noise) at random noise levels. "
                 "It falls quickly and then flattens while the samples still improve; judge the samples by the "
                 "distances above.")

    @classmethod
    def config_line(cls, cfg: dict[str, Any]) -> str:
        a = cfg.get("autoencoder", {})
        line = super().config_line(cfg).replace("diffusion: ", "latent diffusion: ", 1)
        return f"{line}; frozen autoencoder sha256 {str(a.get('sha256', ''))[:12] or '?'}…"

    def __init__(self, spec: DiffusionSpec, autoencoder: LatentAutoencoder, ae_desc: dict[str, Any],
                 ae_sha256: str, ae_path: str = "", **kw: Any):
        super().__init__(spec, **kw)
        self.autoencoder = autoencoder.to(self.device)
        self.ae_desc, self.ae_sha256, self.ae_path = ae_desc, ae_sha256, ae_path
        self.scale = float(autoencoder.latent_sq.rsqrt())
        self._latents = PerDataSet()  # each client's ((mu, sigma), labels) on the device

    @staticmethod
    def _spec(cfg: Any, ae_desc: dict[str, Any], num_classes: int) -> DiffusionSpec:
        side = ae_desc["image_size"] >> (len(ae_desc["widths"]) - 1)
        return unet_spec(cfg, side, ae_desc["latent_channels"], num_classes, clip_sample=False)

    @classmethod
    def from_config(cls, cfg, image_size: int, channels: int, num_classes: int) -> "LatentDiffusionModel":
        a = cfg.autoencoder
        if not a.path:
            raise UserError("model.family = 'latent-diffusion' needs config key 'autoencoder.path': the released "
                            "model of a stage-1 run (model.family = 'autoencoder')")
        ae, desc, sha = load_autoencoder(a.path, a.sha256)
        want = {"image_size": image_size, "channels": channels, "dims": cfg.data.dims}
        got = {k: desc.get(k, 2 if k == "dims" else None) for k in want}
        if got != want:
            raise UserError(f"config key 'autoencoder.path': the autoencoder was trained on {got}, this run's data is "
                            f"{want}: train stage 1 on data of the same size, channels and dimensions")
        spec = cls._spec(cfg, desc, num_classes)
        if spec.image_size >> (len(spec.widths) - 1) < 1:
            raise UserError(f"config key 'diffusion.channels' has {len(spec.widths)} levels: the latent side "
                            f"({spec.image_size}) cannot halve {len(spec.widths) - 1} times; use fewer levels")
        return cls(spec, ae, desc, sha, str(autoencoder_file(a.path).resolve()), **cls.run_options(cfg))

    @classmethod
    def pinned(cls, cfg: Any) -> Any:
        """``cfg`` with the hash of its frozen autoencoder (``autoencoder.sha256``) when not set;
        when set, this machine's copy (``autoencoder.path``) is checked against it (a site's
        greeting, a server given the agreed hash)."""
        a = cfg.autoencoder
        if not a.path:
            return cfg
        _ae, _desc, sha = load_autoencoder(a.path, a.sha256)
        return cfg if a.sha256 else dataclasses.replace(cfg, autoencoder=dataclasses.replace(a, sha256=sha))

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> "LatentDiffusionModel":
        ref = desc.get("autoencoder") or {}
        ae, ae_desc, sha = load_autoencoder(ref.get("path", ""), ref.get("sha256", ""))
        return cls(cls.spec_of(desc, ignore=("autoencoder",)), ae, ae_desc, sha, ref.get("path", ""))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self.family,
                "autoencoder": {"path": self.ae_path, "sha256": self.ae_sha256}}

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "autoencoder": self.ae_sha256[:12]}

    # ---- train: the clean inputs are the autoencoder's latents
    def _on_device(self, data) -> tuple[Any, torch.Tensor]:
        """The client's latent moments ``(mu, sigma)`` and labels on the device, encoded once per
        data set (only the latents are kept, not the images)."""
        return self._latents.get(data, self._encode)

    def _encode(self, data) -> tuple[Any, torch.Tensor]:
        images, labels = images_and_labels(data, self.device)
        mus, sigmas = [], []
        with torch.inference_mode():
            for i in range(0, len(images), ENCODE_BATCH):
                x = images[i:i + ENCODE_BATCH].to(self.device).float().div_(127.5).sub_(1.0)
                mu, sigma = self.autoencoder.moments(x)
                mus.append(mu.float())
                sigmas.append(sigma.float())
        return (torch.cat(mus).clone(), torch.cat(sigmas).clone()), labels  # (normal tensors, usable in autograd)

    def _clean(self, moments: Any, i: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mu, sigma = moments[0][i.to(moments[0].device)], moments[1][i.to(moments[0].device)]
        e = torch.randn(mu.shape, generator=generator).to(mu.device)  # drawn on the CPU
        return ((mu + sigma * e) * self.scale).to(self.device)

    # ---- sample: denoise a latent grid, then decode it
    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(x / self.scale).float().clamp(-1, 1)
