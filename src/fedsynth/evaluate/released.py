"""What the commands that take a run's released model do, as functions: draw images from it
(``fedsynth generate``), score its samples -- or an image folder -- against real images
(``fedsynth evaluate``), audit it for memorisation (``fedsynth audit``).

Each reads its real images through ``load`` (a config -> :class:`~fedsynth.data.ImageSet`
function: :func:`fedsynth.data.load_dataset` by default; the CLI passes one that draws a
progress bar) and raises :class:`~fedsynth.config.UserError` for bad input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config, UserError
from ..data import ImageSet, load_dataset
from ..data.export import images_config

Load = Callable[[Config], ImageSet]

IMAGES = 1000   # images per set that fedsynth evaluate scores unless told (--images)
VOLUMES = 64    # volumes, likewise (eval.num-samples' default for volumes)


def images_only(model, command: str) -> None:
    """A one-line refusal where ``fedsynth COMMAND`` has no volume form yet."""
    if model.describe().get("dims", 2) == 3:
        raise UserError(f"fedsynth {command} works on 2-D images; this checkpoint makes volumes (data.dims = 3), "
                        f"which are scored during the run with 2.5-D distances (docs/volumes.md)")


def images_of(source: str, size: int, n: int, seed: int, extra: list[str], load: Load = load_dataset) -> ImageSet:
    """The ImageSet of a data source (phantom/sample name or path) prepared to ``size`` px."""
    return load(images_config(source, size, n, seed, extra))


def generate(checkpoint: Path, client: str | None, which: str | None, n: int, seed: int, label: int | None):
    """``(released, images)``: ``n`` images (floats in [-1, 1]) from the model ``checkpoint``
    released (:func:`fedsynth.checkpoint.load_released`), of class ``label`` if given."""
    from ..checkpoint import load_released
    released = load_released(checkpoint, client, which)
    model, state, names = released
    if label is not None and not 0 <= label < max(model.num_classes, 1):
        raise UserError(f"--label {label} out of range: the model has {model.num_classes} classes {names}")
    try:
        return released, model.generate(state, n, seed, label)
    except ValueError as e:
        raise UserError(f"--label: {e}") from None


@dataclass
class Scores:
    """``fedsynth evaluate``'s result: the numbers (as written to ``--out``), the feature network
    that made them, the released model (None for an image folder) and caveats worth a warning."""

    numbers: dict[str, Any]
    extractor: Any
    released: Any = None
    caveats: list[str] = field(default_factory=list)


def score_images(real: str, fake: str | None, checkpoint: Path | None, which: str | None, n: int | None,
                 size: int | None, extractor: str, inception_weights: str, seed: int,
                 load: Load = load_dataset) -> Scores:
    """Fréchet distance, KID, precision/recall/density/coverage, sliced Wasserstein distance and
    the diversity ratio of ``fake`` images (a path) or ``checkpoint``'s samples against ``real``
    (at most ``n`` images each, default :data:`IMAGES`, at ``size`` px: default the checkpoint's
    image size, else 64). A checkpoint that makes volumes is scored against ``real`` read as
    volumes, with 2.5-D distances per plane (at most ``n`` volumes, default :data:`VOLUMES`)."""
    from ..metrics import build_extractor
    from ..metrics.compare import compare_images
    from ..metrics.stats import few_real_note
    from ..privacy.audit import diversity
    model = state = released = None
    if checkpoint is not None:
        from ..checkpoint import load_released
        released = load_released(checkpoint, None, which)
        model, state, _ = released
        if model.describe().get("dims", 2) == 3:
            return _score_volumes(real, checkpoint, released, n or VOLUMES, size, extractor, inception_weights, seed,
                                  load)
    n = n or IMAGES
    side = size or (model.describe()["image_size"] if model is not None else 64)
    r = images_of(real, side, n, seed, [], load)
    if model is not None:
        xf = model.generate(state, min(n, len(r) if len(r) > 1 else n), seed + 1)
        if xf.shape[1] != r.channels:
            raise UserError(f"the checkpoint makes {xf.shape[1]}-channel images, {real} has {r.channels}")
    else:
        f = images_of(fake, side, n, seed, [f"preprocess.channels={'gray' if r.channels == 1 else 'rgb'}"], load)
        xf = f.batch()
    xr = r.batch()
    ext = build_extractor(extractor, inception_weights)
    res = {"real": real, "fake": fake or str(checkpoint), **compare_images(xr, xf, ext, seed)}
    res["diversity_ratio"] = diversity(xf, xr)
    caveats = [few_real_note(res["num_real"], getattr(ext, "dims", None))]
    if res["num_real"] < n:
        caveats.append(f"{real} has {res['num_real']} images: fewer than the {n} asked for (--images)")
    if "precision" not in res:
        caveats.append("precision, recall, density and coverage need more than 5 images in each set: not computed")
    return Scores(res, ext, released, [c for c in caveats if c])


def _score_volumes(real: str, checkpoint: Path, released, n: int, size: int | None, extractor: str,
                   inception_weights: str, seed: int, load: Load) -> Scores:
    """:func:`score_images` for a checkpoint that makes volumes: ``real`` read as volumes
    (``data.dims = 3``) at the checkpoint's side, scored with 2.5-D distances per plane and their
    mean (:func:`fedsynth.metrics.compare.compare_volumes`), every slice of each volume."""
    from ..metrics import build_extractor
    from ..metrics.compare import compare_volumes
    from ..metrics.stats import few_real_note
    model, state, _ = released
    side = size or model.describe()["image_size"]
    r = images_of(real, side, n, seed, ["data.dims=3"], load)
    xf = model.generate(state, min(n, len(r) if len(r) > 1 else n), seed + 1)
    if xf.shape[1] != r.channels:
        raise UserError(f"the checkpoint makes {xf.shape[1]}-channel volumes, {real} has {r.channels}")
    ext = build_extractor(extractor, inception_weights, dims=3)
    res = {"real": real, "fake": str(checkpoint), **compare_volumes(r.batch(), xf, ext, seed)}
    caveats = [few_real_note(res["slices_real"], getattr(ext, "plane_dims", None)),
               "precision, recall, density, coverage and the sliced Wasserstein distance are 2-D measures: not "
               "computed for volumes (the per-plane distances are the volumes' scores, as in a run)"]
    if res["num_real"] < n:
        caveats.append(f"{real} has {res['num_real']} volumes: fewer than the {n} asked for (--images)")
    return Scores(res, ext, released, [c for c in caveats if c])


def audit(checkpoint: Path, which: str | None, train: str, held: str, train_set: list[str], held_set: list[str],
          n: int, seed: int, out: Path, load: Load = load_dataset, extractor: str = "random"):
    """``(released, result)``: :func:`fedsynth.privacy.audit.write_audit` of ``n`` samples of the
    model ``checkpoint`` released against its ``train`` and ``held``-out images, written to ``out``.
    A volume checkpoint reads its sets as volumes and is audited per plane in the feature space of
    ``extractor`` (a 2-D network through which every volume's slices go; default the frozen random
    network: :func:`fedsynth.privacy.audit.write_volume_audit`, a
    :class:`~fedsynth.privacy.audit.VolumeAuditResult`). Images are audited in pixel space."""
    from ..checkpoint import load_released
    from ..privacy.audit import write_audit, write_volume_audit
    from ..config import feature_network
    feature_network(extractor)
    released = load_released(checkpoint, None, which)
    model, state, _ = released
    side = model.describe()["image_size"]
    volumes = model.describe().get("dims", 2) == 3
    dims = ["data.dims=3"] if volumes else []
    tr = images_of(train, side, 10**9, 0, dims + list(train_set), load).batch()
    he = images_of(held, side, 10**9, 0, dims + list(held_set), load).batch()
    xf = model.generate(state, n, seed)
    if volumes:
        from ..metrics import build_extractor
        from ..report.montage import orthogonal_slices
        return released, write_volume_audit(xf, tr, he, out, orthogonal_slices, seed, build_extractor(extractor))
    return released, write_audit(xf, tr, he, out, seed)


def write_generated(x: torch.Tensor, out: Path, spacing: float, checkpoint: Path) -> bool:
    """Write images ``x`` (floats in [-1, 1]) to the new folder ``out`` (atomically) as
    ``NNNNNN.png``; volumes as ``NNNNNN.nii.gz`` with voxel size ``spacing`` mm (0: the voxel size
    of the data ``checkpoint``'s run learnt from, :func:`voxel_mm`). Returns whether they are volumes."""
    from ..data.export import nifti_bytes
    from ..utils import atomic_folder, save_png
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=torch.uint8).numpy()
    volumes = arr.ndim == 5
    mm = (spacing or voxel_mm(checkpoint)) if volumes else 0.0
    with atomic_folder(out) as tmp:
        for i, img in enumerate(arr):
            if volumes:  # NIfTI, with the voxel size of the data the model learnt from
                (tmp / f"{i:06d}.nii.gz").write_bytes(nifti_bytes(img, mm))
            else:
                save_png(img, tmp / f"{i:06d}.png")
    return volumes


def voxel_mm(checkpoint: Path) -> float:
    """The voxel size (mm) of the data a run's model learnt from, from its ``partition.json``
    (1.0 where the run does not say)."""
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent
    try:
        return float(json.loads((run / "partition.json").read_text())["data"].get("voxel_mm", 1.0))
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0
