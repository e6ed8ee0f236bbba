"""Built-in 3-D phantoms (``data.dims = 3``): seeded volumes of any cube side 16-256 voxels.

* ``phantom-ct`` -- a chest CT volume: body outline with subcutaneous fat and muscle, two lungs
  whose bases are domed by the diaphragm, the heart between them, the aorta, the trachea at
  the top, the liver under the right dome, a segmented spine with its canal, rib hoops and the
  table. Classes ``slim`` / ``broad`` body habitus.
* ``phantom-mr`` -- a head MR volume: scalp, skull, CSF, folded grey matter over white matter,
  lateral ventricles, eyes, neck, under a smooth receive-coil bias field. Classes ``t1`` / ``t2``
  (the sequence: in T1 white matter is bright and CSF dark, in T2 the reverse), what a
  sequence-conditioned model is conditioned on.

Axes: a volume is ``(C, D, H, W)`` with ``D`` from head (0) to feet, ``H`` from anterior (0) to
posterior and ``W`` from the patient's right (0) to left -- the radiological display, so an
axial slice ``v[:, k]`` looks like a CT slice on a viewing station and the coronal and sagittal
slices have the head at the top. NIfTI and DICOM volumes are reoriented to the same axes.

Volume ``i`` depends only on ``(seed, i)``; these are phantoms, not patients.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .imageset import ImageSet

CLASSES3D = {
    "phantom-ct": ("slim", "broad"),
    "phantom-mr": ("t1", "t2"),
}
#: what a 3-D phantom's classes are, in words (``fedsynth data inspect`` prints it)
CLASS_MEANING3D = {
    "phantom-ct": "body habitus: a slimmer or a broader body outline",
    "phantom-mr": "the MR sequence: T1- or T2-weighted contrast",
}
FIELD_OF_VIEW_MM = {"phantom-ct": 400.0, "phantom-mr": 240.0}  # the cube's side: voxel size = this / size


def _grid3(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in ``[-1, 1]``, broadcastable ``(S,1,1)``, ``(1,S,1)``, ``(1,1,S)``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return c[:, None, None], c[None, :, None], c[None, None, :]


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance ``d`` (negative inside), ``edge`` wide."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -30, 30)))


def _ellipsoid(z, y, x, c, r, edge):
    """Soft ellipsoid with centre ``c`` and radii ``r`` (both (z, y, x))."""
    q = np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2)
    return _soft((q - 1.0) * min(r), edge)


def _cylinder(y, x, c, r, edge):
    """Soft elliptic cylinder along the head-feet axis, centre ``c`` and radii ``r`` (y, x)."""
    q = np.sqrt(((y - c[0]) / r[0]) ** 2 + ((x - c[1]) / r[1]) ** 2)
    return _soft((q - 1.0) * np.minimum(r[0], r[1]), edge)


def _smooth(rng: np.random.Generator, size: int, sigma_frac: float) -> np.ndarray:
    z = rng.standard_normal((size, size, size)).astype(np.float32)
    z = ndimage.gaussian_filter(z, sigma_frac * size, mode="wrap")
    return (z - z.mean()) / (z.std() + 1e-8)


def _chest_ct(rng: np.random.Generator, size: int, broad: bool) -> np.ndarray:
    z, y, x = _grid3(size)
    e = 1.5 / size
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    sx, sy = u(-0.04, 0.04), u(-0.03, 0.03)
    x, y = x - sx, y - sy
    body_rx = (0.84 if broad else 0.72) + u(-0.03, 0.03)
    body_ry = (0.58 if broad else 0.52) + u(-0.03, 0.03)
    fat = (0.09 if broad else 0.05) + u(-0.015, 0.015)
    organ = u(0.9, 1.1)
    dome = 0.35 + u(-0.08, 0.08)            # diaphragm height (z grows towards the feet)
    # the body widens towards the shoulders at the top of the volume
    widen = 1.0 + 0.12 * np.clip(-(z + 0.5) / 0.5, 0, 1)
    body = _cylinder(y, x, (0.05, 0.0), (body_ry, body_rx * widen), e)
    inner = _cylinder(y, x, (0.05, 0.0), (body_ry - fat, body_rx * widen - fat), e)
    img = 0.36 * body + 0.16 * inner                              # fat, then muscle
    # lungs, cut below by the domed diaphragm (higher on the right, where the liver is)
    lungs = np.zeros((size, size, size), np.float32)
    for side in (-1, 1):
        cx = side * 0.36 * body_rx / 0.78
        lung = _ellipsoid(z, y, x, (-0.1, 0.0, cx), (0.75, 0.36 * organ, 0.27 * organ * body_rx / 0.78), e)
        surface = dome - (0.06 if side < 0 else 0.0) + 0.5 * ((x - cx) ** 2 + y ** 2)
        lungs = np.maximum(lungs, lung * _soft(z - surface, e))
    heart = _ellipsoid(z, y, x, (0.22, -0.14, 0.1), (0.3 * organ, 0.25 * organ, 0.27 * organ), 2 * e)
    heart = heart * _soft(z - (dome + 0.12), e)
    liver = _ellipsoid(z, y, x, (0.75, 0.0, -0.25), (0.45, 0.4, 0.45), 2 * e) * _soft((dome - 0.05) - z, e)
    img = img * (1 - lungs) + 0.05 * lungs * inner                 # air in the lungs
    img = img * (1 - heart) + 0.62 * heart * inner
    img = img * (1 - liver) + 0.58 * liver * inner
    aorta = _cylinder(y, x, (0.24, 0.1), (0.06, 0.06), e) * _soft(-0.55 - z, -e)
    img = img * (1 - aorta) + 0.62 * aorta * inner
    trachea = _cylinder(y, x, (-0.12, 0.0), (0.06, 0.06), e) * _soft(z + 0.35, e)
    img = img * (1 - trachea) + 0.02 * trachea
    # spine: vertebral bodies with darker discs, cortex, the spinal canal
    vert = _cylinder(y, x, (0.38, 0.0), (0.1, 0.1), e)
    segments = 0.75 + 0.25 * np.cos(z * np.pi * 7.5) ** 2
    canal = _cylinder(y, x, (0.53, 0.0), (0.04, 0.045), e)
    img = img * (1 - vert) + 0.88 * vert * segments
    img = img * (1 - canal) + 0.5 * canal
    img += 0.3 * _cylinder(y, x, (0.62, 0.0), (0.05, 0.025), e) * inner   # spinous process
    # ribs: thin hoops just inside the body outline, tilted down at the front
    ring = np.sqrt((x / (body_rx * widen - fat - 0.03)) ** 2 + ((y - 0.05) / (body_ry - fat - 0.03)) ** 2)
    for k in range(8):
        zk = -0.75 + 0.2 * k - 0.12 * (y - 0.3)
        rib = np.exp(-((ring - 1.0) / 0.05) ** 2 - ((z - zk) / 0.035) ** 2) * (np.abs(x) > 0.12)
        img += 0.45 * rib * inner
    # table under the patient
    img = np.maximum(img, 0.32 * (np.abs(y - 0.78) < 0.03) * (np.abs(x) < 0.95) * np.ones_like(z))
    img += 0.02 * _smooth(rng, size, 0.03) * body
    img = ndimage.gaussian_filter(img, size / 200)
    img += 0.012 * rng.standard_normal(img.shape).astype(np.float32) * body
    return img


def _head_mr(rng: np.random.Generator, size: int, t2: bool) -> np.ndarray:
    z, y, x = _grid3(size)
    e = 1.5 / size
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    cz, cy, cx = u(-0.12, -0.02), u(-0.04, 0.04), u(-0.03, 0.03)
    s = u(0.92, 1.05)
    rz, ry, rx = 0.72 * s, 0.86 * s, 0.7 * s
    q = np.sqrt(((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)  # 1 on the scalp
    gyri = 0.03 * _smooth(rng, size, 0.04)
    vent_w = u(0.06, 0.12)                                       # ventricle size varies with age
    tissue = {  # (T1, T2) intensities
        "scalp": (0.85, 0.5), "bone": (0.06, 0.05), "csf": (0.12, 0.95), "gm": (0.5, 0.62),
        "wm": (0.78, 0.4), "eye": (0.1, 0.9), "neck": (0.45, 0.35)}
    v = {k: t[1 if t2 else 0] for k, t in tissue.items()}
    head = _soft((q - 1.0) * rz, e)
    skull = _soft((q - 0.93) * rz, e)
    csf = _soft((q - 0.87) * rz, e)
    brain = _soft((q - 0.83 - gyri) * rz, e)
    wm = _soft((q - 0.66 - 1.5 * gyri) * rz, e)
    img = v["scalp"] * (head - skull) + v["bone"] * (skull - csf) + v["csf"] * (csf - brain)
    img += v["gm"] * (brain - wm) + v["wm"] * wm
    vents = np.zeros_like(img)
    for side in (-1, 1):
        vents = np.maximum(vents, _ellipsoid(z, y, x, (cz - 0.05, cy - 0.05, cx + side * 0.1),
                                             (0.14, 0.3, vent_w), e))
    img = img * (1 - vents) + v["csf"] * vents
    for side in (-1, 1):  # eyes, in front, below the brain
        eye = _ellipsoid(z, y, x, (cz + 0.45 * s, cy - 0.8 * s, cx + side * 0.3 * s), (0.11, 0.11, 0.11), e)
        img = img * (1 - eye) + v["eye"] * eye
    neck = _cylinder(y, x, (cy + 0.15, cx), (0.38 * s, 0.36 * s), e) * _soft(cz + 0.55 * s - z, e)
    img = np.maximum(img, v["neck"] * neck)
    bias = 1.0 + 0.12 * _smooth(rng, size, 0.25)                  # receive-coil inhomogeneity
    img = img * bias
    img = ndimage.gaussian_filter(img, size / 200)
    img += 0.015 * np.abs(rng.standard_normal(img.shape)).astype(np.float32)   # Rician-like floor
    return img


def make_volume_phantom(name: str, n: int, size: int = 32, seed: int = 0) -> ImageSet:
    """``n`` phantom volumes ``(n, 1, size, size, size)`` of modality ``name``.

    Parameters
    ----------
    name : {"phantom-ct", "phantom-mr"}
        Chest CT or head MR.
    n : int
        Number of volumes.
    size : int, default 32
        Cube side in voxels, 16-256.
    seed : int, default 0
        Volume ``i`` depends only on ``(seed, i)``: growing a set keeps its first volumes.
    """
    if name not in CLASSES3D:
        raise ValueError(f"no 3-D phantom {name!r}; choose from {', '.join(CLASSES3D)}")
    if not 16 <= size <= 256:
        raise ValueError(f"phantom size must be 16-256 voxels, got {size}")
    make = _chest_ct if name == "phantom-ct" else _head_mr
    vols, labels = [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, name)), 3, i]))
        label = int(rng.integers(0, 2))
        vols.append(np.clip(make(rng, size, bool(label)) * 255.0 + 0.5, 0, 255).astype(np.uint8)[None])
        labels.append(label)
    return ImageSet(np.stack(vols), np.asarray(labels, np.int64), CLASSES3D[name], name,
                    {"source": "builtin-phantom", "phantom": name, "dims": 3, "seed": seed, "size": size,
                     "count": n, "voxel_mm": FIELD_OF_VIEW_MM[name] / size})
