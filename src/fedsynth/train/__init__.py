"""Local GAN training for one client: loss objects and the loop that schedules them."""

from .local import LocalResult, LocalTrainer, OptimConfig, TrainHook, steps_per_epoch
from .losses import WGANGP, DiffAugment, GANLoss, Hinge, NonSaturatingBCE, build_loss

__all__ = ["GANLoss", "NonSaturatingBCE", "Hinge", "WGANGP", "DiffAugment", "TrainHook", "build_loss", "LocalTrainer", "LocalResult",
           "OptimConfig", "steps_per_epoch"]
