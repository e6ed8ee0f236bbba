"""Writing data out as image folders: what each hospital node reads (``fedsynth data split``);
volumes as NIfTI files (nibabel) with their voxel spacing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import UserError
from ..utils import atomic_folder, save_png
from .imageset import ImageSet


def nifti_bytes(volume: np.ndarray, spacing: float = 1.0) -> bytes:
    """A ``.nii.gz`` file of one volume ``(1, D, H, W)`` or ``(D, H, W)`` in the radiological axes
    of :mod:`fedsynth.data.phantoms3d`, stored in RAS+ order with isotropic ``spacing`` (mm), so
    that reading it back (:func:`fedsynth.data.volumes.read_nifti_volume`) gives the same array."""
    import gzip

    import nibabel as nib
    vol = np.asarray(volume)
    vol = vol[0] if vol.ndim == 4 else vol
    ras = np.ascontiguousarray(vol[::-1, ::-1, ::-1].transpose(2, 1, 0))
    img = nib.Nifti1Image(ras, np.diag([spacing, spacing, spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), mtime=0)


def write_site_folders(parts: list[ImageSet], class_names: tuple[str, ...], out: str | Path,
                       info: dict[str, Any]) -> None:
    """``out/client-K/<class>/NNNNNN.png`` (volumes: ``.nii.gz`` with the data's voxel size) for
    every client, and ``out/partition.json`` (``info``); written to a temporary folder and renamed,
    so never half-written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty")
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", str(c)) or f"class{i}" for i, c in enumerate(class_names)]
    with atomic_folder(out) as tmp:
        for k, part in enumerate(parts):
            for i, (img, lab) in enumerate(zip(part.images, part.labels)):
                d = tmp / f"client-{k}" / safe[lab]
                d.mkdir(parents=True, exist_ok=True)
                if img.ndim == 4:  # a volume
                    (d / f"{i:06d}.nii.gz").write_bytes(nifti_bytes(img, float(part.provenance.get("voxel_mm", 1.0))))
                else:
                    save_png(img, d / f"{i:06d}.png")
        (tmp / "partition.json").write_text(json.dumps(info, indent=2) + "\n")


def source_overrides(source: str) -> list[str]:
    """``--set`` overrides for a data source given as a built-in name or a path, whose kind is
    recognised by its contents (a MedMNIST ``.npz``, NIfTI or DICOM files, else image files)."""
    from ..registry import SOURCES
    if source in SOURCES:
        return [f"data.source={source}"]
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(f"no such data source or path: {source}")
    if p.is_file() and p.suffix == ".npz":
        m = re.fullmatch(r"(.+?)(?:_(64|128|224))?\.npz", p.name)
        size = m.group(2) or "28"
        return ["data.source=medmnist", f'data.path="{p.parent}"', f"data.medmnist-flag={m.group(1)}",
                f"data.medmnist-size={size}"]
    names = [q.name.lower() for q in ([p] if p.is_file() else p.rglob("*")) if q.is_file()]
    if any(n.endswith((".nii", ".nii.gz")) for n in names):
        kind = "nifti"
    elif any(n.endswith((".dcm", ".dicom")) for n in names):
        kind = "dicom"
    else:
        kind = "folder"
    return [f"data.source={kind}", f'data.path="{p}"']


def images_config(source: str, size: int, n: int, seed: int, extra: list[str]):
    """The config that reads a data source (built-in name or path) prepared to ``size`` px: at
    most ``n`` images (a seeded subset), with extra ``--set`` overrides."""
    from ..config import load_config
    return load_config(None, source_overrides(source) + [f"data.image-size={size}", f"run.seed={seed}"]
                       + ([f"data.num-images={n}"] if source.startswith("phantom-") else [f"data.max-images={n}"])
                       + list(extra))
