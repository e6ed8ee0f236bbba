"""The studies' preprocessing, one image at a time: raw array -> uint8 ``(C, S, S)``.

Order (each step optional, all recorded in the run's ``config.toml`` under ``[preprocess]``):

1. channels: drop alpha; ``gray`` converts RGB (ITU-R 601 luma), ``rgb`` repeats gray
2. crop by fractions per side (e.g. 5 % top/left/right, 25 % bottom for chest radiographs)
3. intensity to [0, 1]: quantiles (default 0.02/0.98, the way 16-bit radiographs were
   prepared), min-max, or /255 for 8-bit data
4. proportional resize to a square: letterbox pad, or centre crop (PIL, antialiased)
5. CLAHE (scikit-image), gamma, intensity binning
6. to uint8; batches are scaled to [-1, 1] when training reads them
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..config import PreprocessConfig

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class BadImage(ValueError):
    """An image that cannot be prepared (the caller adds the file name)."""


def channels_of(img: np.ndarray) -> int:
    return 1 if img.ndim == 2 else img.shape[2]


def to_unit(x: np.ndarray, mode: str, quantiles: tuple[float, float], eight_bit: bool) -> np.ndarray:
    """Intensity to float32 [0, 1]."""
    if mode == "none" or (mode == "auto" and eight_bit):
        return x.astype(np.float32) / 255.0
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
    else:  # quantile (and auto for >8-bit data)
        lo, hi = (float(v) for v in np.quantile(x, quantiles))
        if hi <= lo:  # a flat image at these quantiles: fall back to its full range
            lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    return np.clip((x.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _square(img: Image.Image, size: int, mode: str) -> Image.Image:
    w, h = img.size
    if mode == "none":
        if w != h:
            raise BadImage(f"image is {w}x{h}, not square (set preprocess.resize = 'pad' or 'crop')")
        return img if w == size else img.resize((size, size), Image.Resampling.LANCZOS)
    if mode == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        return img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    # pad: fit the long side, centre on black
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if (nw, nh) == (size, size):
        return small
    canvas = Image.new(img.mode, (size, size))
    canvas.paste(small, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def prepare(img: np.ndarray, p: PreprocessConfig, size: int, out_channels: int,
            already_unit: bool = False) -> np.ndarray:
    """One raw image (H, W) or (H, W, C), any dtype -> uint8 (C, size, size).

    ``already_unit``: the source has scaled intensities to [0, 1] itself (e.g. per NIfTI volume).
    """
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or min(img.shape[:2]) < 2:
        raise BadImage(f"unsupported image shape {img.shape}")
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise BadImage("image contains NaN or Inf")
    eight_bit = img.dtype == np.uint8
    # 1. channels
    if out_channels == 1 and img.ndim == 3:
        img = img.astype(np.float32) @ _LUMA
        if eight_bit:
            img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    # 2. crop fractions (top, bottom, left, right)
    t, b, l, r = p.crop
    if any(p.crop):
        h, w = img.shape[:2]
        img = img[int(round(t * h)): h - int(round(b * h)), int(round(l * w)): w - int(round(r * w))]
    # 3. intensity to [0, 1] -> uint8 for fast, antialiased PIL resizing
    if eight_bit and (p.rescale in ("auto", "none")):
        u8 = img
    else:
        unit = img.astype(np.float32) if already_unit else to_unit(img, p.rescale, p.quantiles, eight_bit)
        u8 = (np.clip(unit, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    # 4. square + resize
    pil = _square(Image.fromarray(u8), size, p.resize)
    x = np.asarray(pil)
    if x.ndim == 2:
        x = x[..., None]
    if out_channels == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    # 5. contrast steps on the small image
    if p.clahe > 0 or p.gamma != 1.0 or p.bins:
        f = x.astype(np.float32) / 255.0
        if p.clahe > 0:
            from skimage.exposure import equalize_adapthist
            f = equalize_adapthist(f if f.shape[2] == 3 else f[..., 0], clip_limit=p.clahe)
            f = f.reshape(x.shape).astype(np.float32)
        if p.gamma != 1.0:
            f = f ** p.gamma
        if p.bins:
            f = np.floor(f * p.bins).clip(0, p.bins - 1) / max(p.bins - 1, 1)
        x = (np.clip(f, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
