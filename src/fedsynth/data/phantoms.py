"""Built-in procedural phantoms: seeded, any size 16-256 px, any count, fast.

Three modalities mirror the FedAvg-DCGAN study's data sets, with deliberately different
homogeneity:

* ``phantom-xray`` -- grayscale chest radiograph: lung fields, heart, ribs, clavicles, spine,
  diaphragm. Two classes (``slim`` / ``broad`` body habitus). Small anatomical variation:
  the most homogeneous set.
* ``phantom-ct`` -- grayscale axial CT slice at three levels (``upper-liver``, ``heart``,
  ``shoulders``): body outline with fat, spine, organs, lungs. Intermediate variability
  (position, scale, rotation, organ sizes).
* ``phantom-histo`` -- RGB H&E-like tissue tile rendered by Beer-Lambert colour mixing of a
  haematoxylin and an eosin density map. Classes ``normal`` (sparse, small, round nuclei) and
  ``tumour`` (dense, large, irregular, darker nuclei). Stroma texture, lumina, stain colour and
  nucleus placement vary freely: highly variable, no repeated pattern.

These are *phantoms*: they look like their modality and have its class structure, but they
are not real patients. Image ``i`` depends only on ``(seed, i)``, never on how many images are
asked for, so growing a data set keeps its first images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .imageset import ImageSet

CHUNK = 128  # parameters are drawn per chunk of this many images (keeps image i stable)

CLASSES = {
    "phantom-xray": ("slim", "broad"),
    "phantom-ct": ("upper-liver", "heart", "shoulders"),
    "phantom-histo": ("normal", "tumour"),
}
#: what a phantom's classes are, in words (``fedsynth data inspect`` prints it beside the counts)
CLASS_MEANING = {
    "phantom-xray": "body habitus: a slimmer or a broader chest outline",
    "phantom-ct": "the slice's level: upper liver, heart or shoulders",
    "phantom-histo": "the tissue: normal, or tumour (denser, larger, irregular nuclei)",
}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in ``[-1, 1]``: y grows downwards. Shapes ``(1, S, S)``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return c[None, :, None], c[None, None, :]


def _p(v: np.ndarray) -> np.ndarray:
    """Per-image parameter vector -> broadcastable ``(n, 1, 1)``."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _ellipse(y, x, cy, cx, ry, rx, edge, angle=0.0):
    """Soft ellipse mask in [0, 1]; ``edge`` is the blur width in normalised units."""
    dy, dx = y - cy, x - cx
    if np.any(angle):
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * np.minimum(rx, ry) / edge, -30, 30)))


def _band(d, width):
    """Soft band of half-width ``width`` around d == 0."""
    return np.exp(-(d / width) ** 2)


def _white(rng, n, size, chunk=True):
    """White noise ``(n, S, S)``; drawn for a whole chunk so image i never depends on n."""
    return rng.standard_normal((CHUNK if chunk else n, size, size), dtype=np.float32)[:n]


def _smooth_noise(rng, n, size, sigma_frac, chunk=True):
    """Zero-mean, unit-std smooth random fields ``(n, S, S)``."""
    z = _white(rng, n, size, chunk)
    z = ndimage.gaussian_filter(z, sigma=(0, sigma_frac * size, sigma_frac * size), mode="wrap")
    z -= z.mean(axis=(1, 2), keepdims=True)
    z /= z.std(axis=(1, 2), keepdims=True) + 1e-8
    return z


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ chest radiograph


def _xray_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    draw = lambda mu, sd: _p(rng.normal(mu, sd, CHUNK)[:n])  # noqa: E731
    label = rng.integers(0, 2, CHUNK)[:n]
    broad = _p(label)
    sx, sy = draw(0, 0.02), draw(0, 0.02)
    body_w = 0.78 + 0.14 * broad + draw(0, 0.02)
    lung_w = 0.25 + 0.03 * broad + draw(0, 0.01)
    lung_h = 0.56 + draw(0, 0.02)
    heart_w = 0.25 + 0.05 * broad + draw(0, 0.015)
    dome = 0.42 + draw(0, 0.03)
    edge = 2.0 / size

    img = np.full((n, size, size), 0.06, np.float32)
    # torso with shoulders: a wide ellipse plus a neck column
    torso = _ellipse(y, x, 0.25 + sy, sx, 1.05, body_w, edge * 3)
    torso = np.maximum(torso, _ellipse(y, x, -0.95 + sy, sx, 0.35, 0.22, edge * 3))
    img += 0.48 * torso
    # lungs (dark), cut below by the diaphragm domes
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx = sx + side * (body_w * 0.45)
        lung = _ellipse(y, x, -0.08 + sy, cx, lung_h, lung_w, edge * 2, angle=side * 0.08)
        diaphragm = dome + sy - 0.55 * ((x - cx) / (lung_w * 1.6)) ** 2
        lung *= 1.0 / (1.0 + np.exp(np.clip((y - diaphragm) * size / 3, -30, 30)))
        lungs = np.maximum(lungs, lung)
    img -= 0.34 * lungs
    # heart: brighter, overlapping the left lung (image right)
    heart = _ellipse(y, x, 0.22 + sy, sx + 0.1, 0.22, heart_w, edge * 4, angle=-0.35)
    img += heart * (0.30 * lungs + 0.14)
    # spine and mediastinum, with vertebral bodies
    spine = _band(x - sx, 0.075) * torso
    img += spine * (0.16 + 0.05 * np.cos((y - sy) * np.pi * 11))
    # posterior ribs: curved arcs across each lung field
    ribs = np.zeros_like(img)
    for k in range(9):
        yk = -0.62 + 0.135 * k + sy + 0.28 * np.abs(x - sx) ** 1.6
        ribs += _band(y - yk, 0.022 + 0.002 * k)
    img += 0.085 * np.minimum(ribs, 1.0) * torso * (0.3 + 0.7 * lungs)
    # clavicles
    for side in (-1, 1):
        t = (x - sx) * side
        yc = -0.64 + sy - 0.12 * t
        img += 0.22 * _band(y - yc, 0.03) * ((t > 0.06) & (t < 0.62)) * torso
    img += 0.012 * _smooth_noise(rng, n, size, 0.05)
    img = ndimage.gaussian_filter(img, sigma=(0, size / 160, size / 160))
    img += 0.012 * _white(rng, n, size)
    return _to_uint8(img)[:, None], label


# ------------------------------------------------------------------ axial CT


def _ct_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    label = rng.integers(0, 3, CHUNK)[:n]
    draw = lambda lo, hi: _p(rng.uniform(lo, hi, CHUNK)[:n])  # noqa: E731
    cx, cy = draw(-0.06, 0.06), draw(-0.04, 0.06)
    scale = draw(0.88, 1.06)
    rot = draw(-0.14, 0.14)
    organ = draw(0.85, 1.18)        # organ size variation
    fat = draw(0.05, 0.13)          # subcutaneous fat thickness
    edge = 1.5 / size
    # rotate and scale coordinates once: anatomy is drawn in body coordinates (u, v)
    c, s = np.cos(rot), np.sin(rot)
    u = (c * (x - cx) + s * (y - cy)) / scale
    v = (-s * (x - cx) + c * (y - cy)) / scale
    lv = _p(label)
    shoulders = lv == 2
    heart = lv == 1
    liver = lv == 0

    E = lambda v0, u0, rv, ru, a=0.0, e=edge: _ellipse(v, u, v0, u0, rv, ru, e, a)  # noqa: E731
    img = np.zeros((n, size, size), np.float32)
    # table under the patient
    img += 0.32 * (np.abs(v - 0.78) < 0.03) * (np.abs(u) < 0.95)
    body_rx = np.where(shoulders, 0.93, 0.80)
    body_ry = np.where(shoulders, 0.50, 0.62)
    body = E(0.05, 0.0, body_ry, body_rx)
    inner = E(0.05, 0.0, body_ry - fat, body_rx - fat)
    img = np.maximum(img, 0.36 * body)            # fat
    img += 0.16 * inner                           # muscle / soft tissue
    # spine: vertebral body with cortex, spinous process; paraspinal muscles
    vert = E(0.36, 0.0, 0.1, 0.1)
    img += 0.25 * vert + 0.12 * E(0.36, 0.0, 0.065, 0.065) * 0 + 0.3 * E(0.52, 0.0, 0.07, 0.03)
    img += 0.18 * (vert - E(0.36, 0.0, 0.075, 0.075)).clip(0)
    # --- level 0: upper abdomen with liver, stomach, aorta, lung bases
    liv = E(-0.02, -0.3, 0.36 * organ, 0.42 * organ, 0.2)
    stomach = E(-0.12, 0.34, 0.2 * organ, 0.2)
    gas = stomach * (v < -0.14)
    img += liver * (0.1 * liv + 0.04 * stomach - 0.5 * gas)
    img += liver * 0.1 * E(0.22, 0.08, 0.05, 0.05)
    lung_base = E(0.32, -0.5, 0.12, 0.2) + E(0.32, 0.5, 0.12, 0.2)
    img -= liver * 0.45 * np.minimum(lung_base, 1)
    # --- level 1: heart between two large lungs; aorta; sternum; vessels
    lungs1 = E(0.0, -0.4, 0.45, 0.31 * organ) + E(0.0, 0.42, 0.45, 0.29 * organ)
    img -= heart * 0.48 * np.minimum(lungs1, 1)
    hrt = E(-0.12, 0.1, 0.26 * organ, 0.3 * organ, -0.4)
    img += heart * (0.12 * hrt + 0.1 * E(0.22, 0.13, 0.06, 0.06))
    img += heart * 0.45 * E(-0.55, 0.0, 0.04, 0.08)
    # --- level 2: shoulders: humeral heads, scapulae, lung apices, trachea
    for side in (-1, 1):
        img += shoulders * (0.35 * E(0.0, side * 0.78, 0.13, 0.13) - 0.12 * E(0.0, side * 0.78, 0.08, 0.08))
        img += shoulders * 0.35 * E(0.3, side * 0.52, 0.05, 0.22, side * 0.5)
        img += shoulders * 0.3 * E(-0.38, side * 0.4, 0.035, 0.22, -side * 0.15)
        img -= shoulders * 0.45 * E(0.05, side * 0.25, 0.16 * organ, 0.14 * organ)
    img -= shoulders * 0.5 * E(-0.18, 0.0, 0.055, 0.065)
    # rib cross-sections around the chest levels
    ang = np.linspace(0.4, np.pi - 0.4, 7)
    for a in np.concatenate([ang, -ang]):
        ru, rv = 0.72 * np.cos(a), 0.52 * np.sin(a) + 0.05
        img += (heart | liver) * 0.3 * E(rv, ru, 0.035, 0.035)
    # small vessels in the lungs (random per image)
    nv = 10
    vu = rng.uniform(-0.6, 0.6, (CHUNK, nv))[:n]
    vv = rng.uniform(-0.35, 0.35, (CHUNK, nv))[:n]
    for k in range(nv):
        img += heart * 0.22 * E(_p(vv[:, k]), _p(vu[:, k]), 0.025, 0.025) * np.minimum(lungs1, 1)
    img = np.clip(img, 0, 1) * body + 0.32 * (np.abs(v - 0.78) < 0.03) * (np.abs(u) < 0.95) * (1 - body)
    img += 0.02 * _smooth_noise(rng, n, size, 0.03) * body
    img = ndimage.gaussian_filter(img, sigma=(0, size / 200, size / 200))
    img += 0.015 * _white(rng, n, size) * body
    return _to_uint8(img)[:, None], label


# ------------------------------------------------------------------ H&E histology

# Optical densities per unit stain (Ruifrok & Johnston 2001), RGB.
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
_EOSIN = np.array([0.07, 0.99, 0.11], np.float32)


def _nuclei(rng, size, count, r_mean, r_sd, irregular, dark):
    """Haematoxylin density of ``count`` nuclei, each rendered in a small local window.

    Windows of all nuclei are evaluated at once (``(count, w, w)``) and summed into the tile
    with ``bincount``; overlapping nuclei stain darker, as on a real slide.
    """
    rmax = int(np.ceil((r_mean + 2 * r_sd) * (1.25 + 0.2 * irregular))) + 1
    w = 2 * rmax + 1
    pad = rmax + 1
    side = size + 2 * pad
    cy = rng.uniform(0, size, count).astype(np.float32)
    cx = rng.uniform(0, size, count).astype(np.float32)
    r = np.clip(rng.normal(r_mean, r_sd, count), 0.8, None).astype(np.float32)[:, None, None]
    ecc = rng.uniform(1.0, 1.25 + 0.35 * irregular, count).astype(np.float32)[:, None, None]
    theta = rng.uniform(0, np.pi, count).astype(np.float32)[:, None, None]
    harm = (irregular * rng.uniform(0, 0.16, (count, 2))).astype(np.float32)[:, :, None, None]
    phase = rng.uniform(0, 2 * np.pi, (count, 2)).astype(np.float32)[:, :, None, None]
    stain = (dark * rng.uniform(0.7, 1.15, count)).astype(np.float32)[:, None, None]
    iy0 = np.floor(cy).astype(np.int64) - rmax
    ix0 = np.floor(cx).astype(np.int64) - rmax
    off = np.arange(w)
    dy = (iy0[:, None, None] + off[None, :, None] + 0.5) - cy[:, None, None]
    dx = (ix0[:, None, None] + off[None, None, :] + 0.5) - cx[:, None, None]
    c, s = np.cos(theta), np.sin(theta)
    du, dv = c * dx + s * dy, (c * dy - s * dx) * ecc
    rho = np.sqrt(du * du + dv * dv)
    ang = np.arctan2(dv, du)
    rad = r * (1 + harm[:, 0] * np.cos(2 * ang + phase[:, 0]) + harm[:, 1] * np.cos(3 * ang + phase[:, 1]))
    val = stain / (1 + np.exp(np.clip((rho - rad) * 2.5, -30, 30)))
    val *= 0.88 + 0.12 * np.cos(du * 1.7 + phase[:, 0]) * np.cos(dv * 1.9)  # chromatin texture
    flat = (iy0[:, None, None] + off[None, :, None] + pad) * side + (ix0[:, None, None] + off[None, None, :] + pad)
    out = np.bincount(flat.ravel(), weights=val.ravel(), minlength=side * side)
    out = np.minimum(out.reshape(side, side), 1.6 * dark).astype(np.float32)
    return out[pad:pad + size, pad:pad + size]


def _histo_one(rng: np.random.Generator, size: int, tumour: bool) -> np.ndarray:
    k = size / 64.0  # lengths below are in pixels of a 64 px tile
    # stroma: fibrous eosin texture (anisotropic smoothed noise), varying density
    z = rng.standard_normal((size, size)).astype(np.float32)
    angle = rng.uniform(0, 180)
    fib = ndimage.gaussian_filter(z, sigma=(0.6 * k, 3.0 * k))
    fib = ndimage.rotate(fib, angle, reshape=False, mode="wrap", order=1)
    fib /= fib.std() + 1e-8
    eos = 0.45 + 0.12 * fib + 0.15 * _smooth_noise(rng, 1, size, 0.12, chunk=False)[0]
    # lumina / fat: white spaces from a thresholded smooth field
    lum_field = _smooth_noise(rng, 1, size, rng.uniform(0.06, 0.14), chunk=False)[0]
    thr = rng.uniform(0.9, 1.8) if not tumour else rng.uniform(1.3, 2.5)
    lumen = 1.0 / (1.0 + np.exp(-(lum_field - thr) * 6))
    eos *= 1 - lumen
    # nuclei: normal = sparse, small, round; tumour = dense, large, irregular, darker
    area = size * size * (1 - lumen.mean())
    if tumour:
        count = int(area / (k * k) * rng.uniform(0.024, 0.036))
        hem = _nuclei(rng, size, count, 2.4 * k, 0.6 * k, irregular=1.0, dark=1.2)
    else:
        count = int(area / (k * k) * rng.uniform(0.010, 0.020))
        hem = _nuclei(rng, size, count, 1.7 * k, 0.25 * k, irregular=0.15, dark=0.85)
    hem *= 1 - lumen
    hem += 0.06 * (1 - lumen)  # faint background haematoxylin
    # Beer-Lambert colour mixing with per-tile stain variation (different labs/scanners)
    h_vec = _HEMATOXYLIN * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    e_vec = _EOSIN * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    h_amt, e_amt = rng.uniform(1.0, 1.6), rng.uniform(0.45, 0.8)
    od = hem[..., None] * h_vec * h_amt + eos[..., None] * e_vec * e_amt + 0.03
    rgb = np.exp(-od) + rng.normal(0, 0.012, od.shape)
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.35 * k, 0.35 * k, 0))
    return _to_uint8(rgb).transpose(2, 0, 1)


def _histo_chunk(rng: np.random.Generator, n: int, size: int, seeds) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, CHUNK)[:n]
    imgs = np.stack([_histo_one(np.random.default_rng(seeds[i]), size, bool(labels[i]))
                     for i in range(n)])
    return imgs, labels


# ------------------------------------------------------------------ public API


def make_phantom(name: str, n: int, size: int = 64, seed: int = 0) -> ImageSet:
    """Generate ``n`` phantom images of side ``size`` for modality ``name``.

    Parameters
    ----------
    name : {"phantom-xray", "phantom-ct", "phantom-histo"}
    n : int
        Number of images.
    size : int, default 64
        Side in pixels, 16-256.
    seed : int, default 0
        Image ``i`` depends only on ``(seed, i)``.
    """
    if name not in CLASSES:
        raise ValueError(f"unknown phantom {name!r}; choose from {', '.join(CLASSES)}")
    if not 16 <= size <= 256:
        raise ValueError(f"phantom size must be 16-256 px, got {size}")
    ss = np.random.SeedSequence([seed, sum(map(ord, name))])
    chunks_needed = -(-n // CHUNK)
    chunk_seeds = ss.spawn(chunks_needed)
    images, labels = [], []
    for c, cs in enumerate(chunk_seeds):
        m = min(CHUNK, n - c * CHUNK)
        rng = np.random.default_rng(cs)
        if name == "phantom-xray":
            im, lb = _xray_chunk(rng, m, size)
        elif name == "phantom-ct":
            im, lb = _ct_chunk(rng, m, size)
        else:
            im, lb = _histo_chunk(rng, m, size, cs.spawn(CHUNK))
        images.append(im)
        labels.append(lb)
    return ImageSet(np.concatenate(images), np.concatenate(labels).astype(np.int64),
                    CLASSES[name], name,
                    {"source": "builtin-phantom", "phantom": name, "seed": seed, "size": size,
                     "count": n})
