"""The downstream classifiers: a small CNN, or a backbone of :mod:`fedsynth.models.backbones`
with a linear head; the study's geometric augmentations; seeded training; scores.

The histopathology study we follow judged its generators by training ResNet-50, ViT-B/16 and
LeViT classifiers on real, synthetic and real + synthetic tiles, with random crops, flips and
affine transforms up to 45 degrees. Here every classifier takes images in ``[-1, 1]``,
``(B, C, H, W)`` with the run's channels and size; the backbones convert gray to three channels,
resize and normalise themselves.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import UserError
from ..data import ImageSet
from ..utils import derive_seed

SMALLCNN = "smallcnn"


class SmallCNN(nn.Module):
    """Three conv blocks + global pooling: enough for phantom classes at 16-128 px."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.net(x)


class BackboneClassifier(nn.Module):
    """A backbone's trunk (images -> pooled features) and a linear head (features -> logits)."""

    def __init__(self, trunk: nn.Module, features: int, num_classes: int, name: str):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(features, num_classes)
        self.name = name

    def forward(self, x):  # (B, C, H, W) in [-1, 1]
        return self.head(self.trunk(x))  # (B, num_classes)


def classifier_names() -> tuple[str, ...]:
    """``smallcnn`` and every backbone :func:`fedsynth.models.backbones.build_backbone` knows."""
    from ..models.backbones import BACKBONES
    return (SMALLCNN, *BACKBONES)


def build_classifier(name: str, channels: int, image_size: int, num_classes: int, pretrained: bool = False,
                     seed: int = 0) -> nn.Module:
    """The classifier ``name`` for ``channels``-channel images of ``image_size`` px, its weights
    initialised from ``seed`` (the head always; the trunk too unless ``pretrained``).

    ``pretrained``: ImageNet weights for a backbone, from its library's cache only (a
    :class:`UserError` names the missing file); ``smallcnn`` has none.
    """
    names = classifier_names()
    if name not in names:
        raise UserError(f"--classifier: unknown classifier {name!r}; choose from {', '.join(names)}")
    if name == SMALLCNN and pretrained:
        raise UserError("--pretrained: smallcnn has no pretrained weights; use a backbone "
                        f"({', '.join(n for n in names if n != SMALLCNN)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == SMALLCNN:
            return SmallCNN(channels, num_classes)
        from ..models.backbones import build_backbone
        b = build_backbone(name, channels, image_size, pretrained=pretrained)
        return BackboneClassifier(b.trunk, b.features, num_classes, b.name)


def default_lr(name: str, pretrained: bool) -> float:
    """Adam's learning rate: 2e-3 for the small CNN, 1e-3 for a backbone trained from scratch,
    1e-4 to fine-tune pretrained weights (a large step would wipe out what they learned)."""
    if name == SMALLCNN:
        return 2e-3
    return 1e-4 if pretrained else 1e-3


def augmentation(image_size: int):
    """The study's geometric augmentations (torchvision.transforms.v2), for one image in
    ``[-1, 1]``: a random crop of 70-100 % of the area resized back, horizontal and vertical
    flips, and an affine rotation of up to 45 degrees (corners filled with black, -1)."""
    from torchvision.transforms import v2
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=45, fill=-1.0),
    ])


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 5,
                     batch_size: int = 64, seed: int = 0, lr: float = 2e-3, min_steps: int = 300,
                     model: nn.Module | None = None, augment: bool = False,
                     device: torch.device | str = "cpu",
                     on_step: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train a classifier on images ``x`` in [-1, 1] and labels ``y`` (every draw seeded), for
    ``epochs`` epochs but at least ``min_steps`` steps, so a small training set is not
    under-trained compared with a large one.

    ``model``: the network to train (default: a :class:`SmallCNN` initialised from ``seed``).
    ``augment``: apply :func:`augmentation` to every image of every batch (on the CPU, from the
    seeded generator, so the same seed draws the same crops on every device).
    ``on_step(done, total)`` is called after each step.
    """
    n = len(x)
    if n < 2:
        raise UserError(f"a classifier needs at least two training images, got {n}")
    g = torch.Generator().manual_seed(seed)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SmallCNN(x.shape[1], num_classes)
    model = model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    aug = augmentation(x.shape[-1]) if augment else None
    model.train()
    per_epoch = max(1, (n - 1) // batch_size + 1)
    total = max(epochs * per_epoch, min_steps)
    step = 0
    with torch.random.fork_rng(devices=[]):
        # torchvision's random transforms draw from torch's global generator: seed it here, for
        # this training only (fork_rng restores the caller's state afterwards)
        torch.manual_seed(derive_seed(seed, "augment"))
        while step < total:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = x[idx]
                if aug is not None:
                    xb = torch.stack([aug(img) for img in xb])  # (B, C, H, W): each image its own draw
                loss = F.cross_entropy(model(xb.to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if on_step is not None:
                    on_step(step, total)
                if step == total:
                    break
    model.eval()
    return model


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The predicted class of each image of ``x`` (on the CPU)."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
    return {"accuracy": float(multiclass_accuracy(pred, target, num_classes, average="micro")),
            "f1": float(multiclass_f1_score(pred, target, num_classes, average="macro"))}


def conditional_accuracy(model, state, classifier: nn.Module, num_classes: int, n_per_class: int = 200,
                         seed: int = 0) -> dict[str, float]:
    """Fraction of images a class-conditional ``model`` (a :class:`fedsynth.models.GenerativeModel`
    with weights ``state``) generates for label k that ``classifier`` assigns to k, per class."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in range(num_classes):
        x = model.sample(state, model.latents(n_per_class, g), torch.full((n_per_class,), k, dtype=torch.long))
        out[str(k)] = float((predict(classifier, x) == k).float().mean())
    out["mean"] = float(np.mean([out[str(k)] for k in range(num_classes)]))
    return out


def labelled(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """An image set as ``(images in [-1, 1], labels)`` tensors."""
    return data.batch(), torch.from_numpy(data.labels)
