"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN,
arXiv:1710.10196, section 5). Needs no pretrained network: it compares the distributions of
7x7 local patches at each pyramid level, finest first. Values are reported x 1e3, as in ProGAN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_K = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k2 = (_K[:, None] * _K[None, :]).to(x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=c)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    out = []
    for _ in range(levels - 1):
        down = _blur(x)[:, :, ::2, ::2]
        up = F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False)
        out.append(x - up[:, :, : x.shape[2], : x.shape[3]])
        x = down
    out.append(x)
    return out


def _patches(x: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    B, C, H, W = x.shape
    ys = torch.randint(0, H - size + 1, (B, n), generator=g)
    xs = torch.randint(0, W - size + 1, (B, n), generator=g)
    off = torch.arange(size)
    rows = (ys[..., None] + off).view(B, n, size, 1).expand(B, n, size, size)
    cols = (xs[..., None] + off).view(B, n, 1, size).expand(B, n, size, size)
    b = torch.arange(B).view(B, 1, 1, 1).expand(B, n, size, size)
    p = x.permute(0, 2, 3, 1)[b, rows, cols]                        # (B, n, size, size, C)
    return p.reshape(B * n, -1)


def _normalise(d: torch.Tensor, C: int) -> torch.Tensor:
    v = d.view(len(d), -1, C)
    v = (v - v.mean(dim=(0, 1), keepdim=True)) / (v.std(dim=(0, 1), keepdim=True) + 1e-8)
    return v.reshape(len(d), -1)


def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, levels: int | None = None,
                       patches_per_image: int = 64, patch: int = 7, directions: int = 128,
                       repeats: int = 4, seed: int = 0) -> dict[str, float]:
    """SWD x 1e3 per pyramid level (``swd-<side>px``) and their mean (``swd``).
    Images in [-1, 1], ``(N, C, H, W)``; the same number of real and generated images is best."""
    g = torch.Generator().manual_seed(seed)
    size = real.shape[-1]
    if levels is None:
        levels = max(1, int(torch.log2(torch.tensor(size / 16.0)).item()) + 1)
    pr, pf = laplacian_pyramid(real.double(), levels), laplacian_pyramid(fake.double(), levels)
    out = {}
    C = real.shape[1]
    for lr, lf in zip(pr, pf):
        a = _normalise(_patches(lr, patches_per_image, patch, g), C)
        b = _normalise(_patches(lf, patches_per_image, patch, g), C)
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        dist = []
        for _ in range(repeats):
            dirs = torch.randn(a.shape[1], directions, generator=g, dtype=torch.float64)
            dirs /= dirs.norm(dim=0, keepdim=True)
            pa, _ = torch.sort(a @ dirs, dim=0)
            pb, _ = torch.sort(b @ dirs, dim=0)
            dist.append((pa - pb).abs().mean())
        out[f"swd-{lr.shape[-1]}px"] = float(torch.stack(dist).mean()) * 1e3
    out["swd"] = sum(out.values()) / len(out)
    return out
