"""Montages of real images: one row per class, labelled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data import ImageSet
from ..utils import atomic_write_bytes


def save_class_montage(data: ImageSet, path: str | Path, per_class: int = 8) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data.num_classes
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 1.0, rows * 1.08), dpi=100,
                             squeeze=False)
    for c in range(rows):
        idx = np.flatnonzero(data.labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_axis_off()
            if j < len(idx):
                img = data.images[idx[j]].transpose(1, 2, 0)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            if j == 0:
                ax.set_title(data.class_names[c], fontsize=8, loc="left")
    fig.suptitle(data.name, fontsize=9)
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
