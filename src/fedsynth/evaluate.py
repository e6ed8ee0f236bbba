"""Downstream utility: does synthetic data help a classifier?

A small CNN is trained on real only, synthetic only, or real + synthetic images and scored on
a held-out *real* test split (accuracy and macro F1, from torchmetrics). The same classifier
checks conditional generators: images generated for label k should be classified as k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSet


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


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 5,
                     batch_size: int = 64, seed: int = 0, lr: float = 2e-3, min_steps: int = 300) -> SmallCNN:
    """Train :class:`SmallCNN` on images ``x`` in [-1, 1] and labels ``y`` (seeded), for
    ``epochs`` epochs but at least ``min_steps`` steps, so a small training set is not
    under-trained compared with a large one."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(x.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = len(x)
    per_epoch = max(1, (n - 1) // batch_size + 1)
    total = max(epochs * per_epoch, min_steps)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == total:
                break
    model.eval()
    return model


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
    return {"accuracy": float(multiclass_accuracy(pred, target, num_classes, average="micro")),
            "f1": float(multiclass_f1_score(pred, target, num_classes, average="macro"))}


@dataclass
class UtilityResult:
    rows: list[dict]

    def markdown(self) -> str:
        lines = ["| training data | images | accuracy | macro F1 |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['train']} | {r['images']} | {r['accuracy']:.3f} | {r['f1']:.3f} |" for r in self.rows]
        return "\n".join(lines)


def downstream_utility(real_train: ImageSet, real_test: ImageSet, synth_x: torch.Tensor, synth_y: torch.Tensor,
                       epochs: int = 5, seed: int = 0) -> UtilityResult:
    """Real only / synthetic only / real + synthetic, all scored on the real test split."""
    k = real_train.num_classes
    xr, yr = real_train.batch(), torch.from_numpy(real_train.labels)
    xt, yt = real_test.batch(), torch.from_numpy(real_test.labels)
    rows = []
    for name, x, y in (("real", xr, yr), ("synthetic", synth_x, synth_y),
                       ("real + synthetic", torch.cat([xr, synth_x]), torch.cat([yr, synth_y]))):
        model = train_classifier(x, y, k, epochs, seed=seed)
        rows.append({"train": name, "images": len(x), **scores(predict(model, xt), yt, k)})
    return UtilityResult(rows)


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
