"""Local GAN training for one client: loss objects and the loop that schedules them."""

from .local import LocalResult, LocalTrainer, OptimConfig, steps_per_epoch
from .losses import GANLoss, NonSaturatingBCE, build_loss

__all__ = ["GANLoss", "NonSaturatingBCE", "build_loss", "LocalTrainer", "LocalResult",
           "OptimConfig", "steps_per_epoch"]
