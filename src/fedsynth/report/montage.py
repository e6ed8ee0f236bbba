"""Montages of real images: one row per class, labelled; volumes as three orthogonal mid-slices."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data import ImageSet
from ..utils import atomic_write_bytes


def orthogonal_slices(volumes, gap: int = 1):
    """Volumes ``(B, C, D, H, W)`` -> one picture per volume ``(B, C, S, 3 S + 2 gap)``: its mid
    axial (``xy``), coronal (``zx``) and sagittal (``yz``) slices side by side, ``gap`` pixels of
    the background value apart. Works on torch tensors (grids in [-1, 1]) and NumPy arrays
    (``uint8`` data); images ``(B, C, H, W)`` pass through unchanged."""
    if volumes.ndim != 5:
        return volumes
    d, h, w = volumes.shape[2:]
    axial = volumes[:, :, d // 2]                    # (B, C, H, W)
    coronal = volumes[:, :, :, h // 2]               # (B, C, D, W): head at the top
    sagittal = volumes[:, :, :, :, w // 2]           # (B, C, D, H)
    side = max(d, h, w)
    is_torch = not isinstance(volumes, np.ndarray)
    low = -1.0 if is_torch and volumes.is_floating_point() else 0

    def pad(x):
        ph, pw = side - x.shape[2], side - x.shape[3]
        if is_torch:
            import torch.nn.functional as F
            return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=low)
        return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), constant_values=low)

    parts = [pad(axial), pad(coronal), pad(sagittal)]
    if is_torch:
        import torch
        sep = torch.full((*volumes.shape[:2], side, gap), low, dtype=volumes.dtype, device=volumes.device)
        return torch.cat([parts[0], sep, parts[1], sep, parts[2]], dim=3)
    sep = np.full((*volumes.shape[:2], side, gap), low, dtype=volumes.dtype)
    return np.concatenate([parts[0], sep, parts[1], sep, parts[2]], axis=3)


def save_class_montage(data: ImageSet, path: str | Path, per_class: int = 8) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data.num_classes
    images = orthogonal_slices(data.images)          # volumes: three mid-slices each
    wide = images.shape[3] / images.shape[2]
    # class names in a column of their own, left of their row, so no name runs over an image
    label_in = 0.15 + 0.065 * max((len(n) for n in data.class_names), default=0)
    cell_w, cell_h, gap, top = 1.0 * wide, 1.0, 0.06, 0.3
    width = label_in + per_class * cell_w + (per_class - 1) * gap + 0.05
    height = top + rows * cell_h + (rows - 1) * gap + 0.05
    fig, axes = plt.subplots(rows, per_class, figsize=(width, height), dpi=100, squeeze=False)
    fig.subplots_adjust(left=label_in / width, right=1 - 0.05 / width, top=1 - top / height, bottom=0.05 / height,
                        wspace=gap / cell_w, hspace=gap / cell_h)
    for c in range(rows):
        idx = np.flatnonzero(data.labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_axis_off()
            if j < len(idx):
                img = images[idx[j]].transpose(1, 2, 0)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        axes[c, 0].text(-0.1 / cell_w, 0.5, data.class_names[c], transform=axes[c, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.suptitle(data.name, fontsize=9, y=1 - 0.05 / height, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
