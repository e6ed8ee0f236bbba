"""Model families behind one interface (:class:`GenerativeModel`).

:func:`build_model` makes the model a run configuration describes; :func:`model_from_description`
rebuilds one from a checkpoint. Families register in :data:`fedsynth.registry.FAMILIES`.
"""

from __future__ import annotations

from typing import Any

from ..registry import FAMILIES
from .base import GenerativeModel, Sampler, TrainHook, TrainResult
from .backbones import BACKBONES, Backbone, build_backbone
from .dcgan import Discriminator, Generator, dcgan_init_
from .gan import GAN, GANModel, ModelSpec, build_gan, norm_keys
from .heads import BackboneDiscriminator
from .upsample import UpsampleGenerator


def build_model(cfg: Any, image_size: int, channels: int, num_classes: int) -> GenerativeModel:
    """The model ``cfg.model.family`` names, for data of this shape and number of classes."""
    return FAMILIES.load(cfg.model.family).from_config(cfg, image_size, channels, num_classes)


def model_from_description(desc: dict[str, Any]) -> GenerativeModel:
    """Rebuild the architecture a checkpoint's ``model`` entry describes (default family: gan)."""
    family = desc.get("family", "gan")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}")
    return FAMILIES.load(family).from_description(desc)


__all__ = ["GenerativeModel", "TrainHook", "TrainResult", "Sampler", "build_model", "model_from_description",
           "GAN", "GANModel", "ModelSpec", "Generator", "Discriminator", "build_gan", "dcgan_init_", "norm_keys",
           "Backbone", "BACKBONES", "build_backbone", "BackboneDiscriminator", "UpsampleGenerator"]
