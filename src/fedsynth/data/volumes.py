"""Volumes in (``data.dims = 3``): NIfTI files (nibabel) and DICOM series (pydicom), each read
with its voxel spacing, reoriented to the radiological axes of :mod:`fedsynth.data.phantoms3d`
(``D`` head to feet, ``H`` anterior to posterior, ``W`` patient's right to left) and prepared
to a ``uint8`` cube ``(1, S, S, S)``:

1. intensity to [0, 1] over the whole volume: ``preprocess.rescale`` / ``quantiles`` as for
   images (DICOM: slope/intercept, then ``data.window`` if set)
2. crop fractions ``preprocess.crop`` on the axial plane ``[top, bottom, left, right]``
3. resample to isotropic voxels of side ``extent / S`` (``scipy.ndimage.zoom``, linear, with a
   Gaussian pre-filter when shrinking, so small structures are averaged, not aliased), where the
   extent is the longest physical side (``preprocess.resize = pad``: the rest padded with 0) or
   the shortest (``crop``: centred crop); ``none`` needs a cubic field of view
4. gamma and intensity binning as for images; CLAHE (scikit-image, which is n-dimensional)

Bad input is a :class:`BadImage` the caller names the file in: a 2-D file in a 3-D run, a series
with missing slices or unequal slice spacing, mixed slice shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..config import PreprocessConfig
from .preprocess import BadImage, to_unit

SPACING_TOLERANCE = 0.05   # relative: slice gaps that differ more than this are "inconsistent"


# ------------------------------------------------------------------ reading


def read_nifti_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as float32 ``(D, H, W)`` in the radiological axes and its spacing in mm."""
    import nibabel as nib
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] >= 1:
            img = img.slicer[..., 0]
        if len(img.shape) == 2 or (len(img.shape) == 3 and min(img.shape) == 1):
            raise BadImage(f"is a 2-D image (shape {tuple(img.shape)}), but data.dims = 3 needs volumes")
        if len(img.shape) != 3:
            raise BadImage(f"has shape {tuple(img.shape)}, expected a 3-D volume")
        img = nib.as_closest_canonical(img)            # array axes along R, A, S
        vol = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = tuple(float(v) for v in img.header.get_zooms()[:3])
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot read NIfTI volume ({e.__class__.__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not np.all(np.isfinite(vol)):
        raise BadImage("NIfTI volume contains NaN or Inf")
    # RAS index order (x to the Right... ) -> (D superior first, H anterior first, W patient's right first)
    out = vol.transpose(2, 1, 0)[::-1, ::-1, ::-1]
    return np.ascontiguousarray(out), (zooms[2], zooms[1], zooms[0])


def dicom_series(files: list[Path]) -> dict[str, list[Path]]:
    """DICOM files grouped by ``SeriesInstanceUID`` (headers only; files without one: by folder)."""
    import pydicom
    groups: dict[str, list[Path]] = {}
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            uid = str(getattr(ds, "SeriesInstanceUID", "") or f"folder:{p.parent}")
        except Exception:
            uid = f"unreadable:{p}"  # reported when the series is read
        groups.setdefault(uid, []).append(p)
    return groups


def read_dicom_series(files: list[Path], window: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float, float], bool]:
    """One series' slices -> float ``(D, H, W)``, spacing (mm) and whether ``window`` scaled it to [0, 1].

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` on
    the normal of ``ImageOrientationPatient``); the gaps between neighbours must be equal: a
    gap of about twice the others is a missing slice, any other difference unequal spacing.
    """
    import pydicom
    if len(files) < 2:
        raise BadImage("is a single 2-D slice, but data.dims = 3 needs a series of slices (one folder per series)")
    slices = []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
            arr = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise BadImage(f"{p.name}: not a readable DICOM slice ({e.__class__.__name__})") from None
        if arr.ndim != 2:
            raise BadImage(f"{p.name}: has {arr.ndim}-D pixel data; a series takes single-frame 2-D slices")
        arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            arr = arr.max() - arr + arr.min()
        orient = getattr(ds, "ImageOrientationPatient", None)
        pos = getattr(ds, "ImagePositionPatient", None)
        if orient is None or pos is None:
            raise BadImage(f"{p.name}: no ImagePositionPatient / ImageOrientationPatient, so the slice order "
                           f"is unknown")
        row, col = np.asarray(orient[:3], float), np.asarray(orient[3:], float)
        normal = np.cross(row, col)
        spacing = [float(v) for v in getattr(ds, "PixelSpacing", (1.0, 1.0))]
        slices.append((float(np.dot(normal, np.asarray(pos, float))), arr, tuple(spacing), p.name))
    shapes = {s[1].shape for s in slices}
    if len(shapes) > 1:
        raise BadImage(f"slices of different sizes {sorted(shapes)} in one series")
    if len({s[2] for s in slices}) > 1:
        raise BadImage("slices with different PixelSpacing in one series")
    slices.sort(key=lambda s: s[0])
    z = np.array([s[0] for s in slices])
    gaps = np.diff(z)
    if np.any(gaps <= 1e-6):
        raise BadImage("two slices at the same position (a duplicate, or two series in one folder)")
    step = float(np.median(gaps))
    for k, g in enumerate(gaps):
        if abs(g - step) > SPACING_TOLERANCE * step:
            where = f"between {slices[k][3]} and {slices[k + 1][3]}"
            missing = round(g / step) - 1
            if missing >= 1 and abs(g - (missing + 1) * step) <= SPACING_TOLERANCE * step:
                raise BadImage(f"series has {missing} missing slice(s) {where} (gap {g:.2f} mm, "
                               f"spacing {step:.2f} mm)")
            raise BadImage(f"inconsistent slice spacing {where}: {g:.2f} mm against {step:.2f} mm elsewhere")
    # increasing position along the normal is towards the head for axial LPS slices: flip so D
    # runs head to feet; rows (anterior first) and columns (patient's right first) are kept
    vol = np.stack([s[1] for s in slices])[::-1]
    center, width = window
    unit = width > 0
    if unit:
        lo, hi = center - width / 2, center + width / 2
        vol = np.clip((vol - lo) / (hi - lo), 0, 1)
    sp = slices[0][2]
    return np.ascontiguousarray(vol, dtype=np.float32), (step, sp[0], sp[1]), unit


# ------------------------------------------------------------------ preparing


def _resample_to_cube(vol: np.ndarray, spacing: tuple[float, float, float], size: int, mode: str) -> np.ndarray:
    extent = np.array(vol.shape) * np.array(spacing)
    if mode == "none" and (np.ptp(extent) > 0.01 * extent.max()):
        raise BadImage(f"field of view {' x '.join(f'{e:.1f}' for e in extent)} mm is not a cube "
                       f"(set preprocess.resize = 'pad' or 'crop')")
    side = float(extent.min() if mode == "crop" else extent.max())
    voxel = side / size
    factors = np.array(spacing) / voxel                       # new voxels per old voxel
    shrink = factors < 1
    if shrink.any():  # anti-aliasing: a Gaussian of ~half the new voxel along shrinking axes
        sigma = np.where(shrink, np.sqrt(np.maximum(1 / factors ** 2 - 1, 0)) / 2, 0)
        vol = ndimage.gaussian_filter(vol, sigma, mode="nearest")
    target = np.maximum(1, np.round(np.array(vol.shape) * factors).astype(int))
    out = ndimage.zoom(vol, target / np.array(vol.shape), order=1, mode="nearest", grid_mode=True)
    cube = np.zeros((size, size, size), np.float32)
    src, dst = [], []
    for n in out.shape:  # centre: crop what is longer, pad what is shorter
        if n >= size:
            a = (n - size) // 2
            src.append(slice(a, a + size))
            dst.append(slice(0, size))
        else:
            a = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    cube[tuple(dst)] = out[tuple(src)]
    return cube


def prepare_volume(vol: np.ndarray, spacing: tuple[float, float, float], p: PreprocessConfig, size: int,
                   already_unit: bool = False) -> np.ndarray:
    """A raw volume ``(D, H, W)`` with its spacing in mm -> ``uint8 (1, size, size, size)``."""
    if p.channels == "rgb":
        raise BadImage("volumes are gray: set preprocess.channels = 'auto' or 'gray'")
    if min(vol.shape) < 2:
        raise BadImage(f"volume of shape {vol.shape} is too thin")
    unit = vol.astype(np.float32) if already_unit else to_unit(vol, p.rescale, p.quantiles, vol.dtype == np.uint8)
    t, b, l, r = p.crop
    if any(p.crop):
        _, h, w = unit.shape
        unit = unit[:, int(round(t * h)): h - int(round(b * h)), int(round(l * w)): w - int(round(r * w))]
    cube = np.clip(_resample_to_cube(unit, spacing, size, p.resize), 0, 1)
    if p.clahe > 0:
        from skimage.exposure import equalize_adapthist
        cube = equalize_adapthist(cube, clip_limit=p.clahe).astype(np.float32)
    if p.gamma != 1.0:
        cube = cube ** p.gamma
    if p.bins:
        cube = np.floor(cube * p.bins).clip(0, p.bins - 1) / max(p.bins - 1, 1)
    return (np.clip(cube, 0, 1) * 255.0 + 0.5).astype(np.uint8)[None]
