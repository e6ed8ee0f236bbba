"""DCGAN generator and discriminator (Radford, Metz & Chintala 2016, arXiv:1511.06434),
with the options that matter for federated GANs; ``dims = 3`` builds the volumetric DCGAN (the
same layers with 3-D convolutions, as in Wu et al. 2016's 3D-GAN) for ``data.dims = 3``.

One definition covers every power-of-two size from 16 to 256 px: the generator starts from a
4x4 map and doubles until it reaches ``image_size``; the discriminator mirrors it. At 64 px with
``ngf = ndf = 64`` and the defaults this is exactly the network of the paper.

Options
-------
norm : "batch" (paper) | "group" (GroupNorm: no batch statistics, so nothing site-specific to
    average) | "none"; set separately for G and D.
spectral_norm : spectral normalisation of D's convolutions (Miyato et al. 2018, arXiv:1802.05957).
conditional G : ``"multiply"`` multiplies a learned label embedding into the noise channels;
    ``"concat"`` concatenates a one-hot label to the noise (Mirza & Osindero 2014).
conditional D : ``"projection"`` adds ``<embed(y), phi(x)>`` to the logit (Miyato & Koyama 2018,
    arXiv:1802.05637); ``"acgan"`` adds an auxiliary classifier head (Odena et al. 2017,
    arXiv:1610.09585).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _num_ups(image_size: int) -> int:
    n = int(math.log2(image_size)) - 2
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


# the layer classes of 2-D images and of 3-D volumes (data.dims = 3: the volumetric DCGAN, the
# same network with 3-D convolutions, 4x4x4 kernels and a 4x4x4 first map)
_LAYERS = {2: (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d)}


def _layers(dims: int) -> tuple[type, type, type]:
    if dims not in _LAYERS:
        raise ValueError(f"dims must be 2 (images) or 3 (volumes), got {dims}")
    return _LAYERS[dims]


def _norm(kind: str, ch: int, dims: int = 2) -> nn.Module:
    if kind == "batch":
        return _layers(dims)[2](ch)
    if kind == "group":
        return nn.GroupNorm(min(32, max(1, ch // 4)), ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class LatentConditioning:
    """Label conditioning of a generator's latent, shared by the generators of this package:
    ``"multiply"`` multiplies a learned class embedding (``self.embed``) into each latent
    channel; ``"concat"`` appends a one-hot label; ``"none"`` leaves the latent alone."""

    def _conditioning(self, nz: int, num_classes: int, conditional: str) -> int:
        """Set up the conditioning (call in ``__init__``); returns the conditioned latent's width."""
        self.nz, self.num_classes, self.conditional = nz, num_classes, conditional
        if conditional == "multiply":
            self.embed = nn.Embedding(num_classes, nz)
            return nz
        if conditional == "concat":
            return nz + num_classes
        if conditional != "none":
            raise ValueError(f"unknown generator conditioning {conditional!r}")
        return nz

    def condition(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.conditional == "multiply":
            return z * self.embed(y)
        if self.conditional == "concat":
            return torch.cat([z, nn.functional.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        return z


class Generator(LatentConditioning, nn.Module):
    """``z (B, nz)`` [+ labels ``(B,)``] -> image ``(B, nc, S, S)`` in ``[-1, 1]`` (``dims = 3``:
    volume ``(B, nc, S, S, S)``)."""

    def __init__(self, image_size: int = 64, nc: int = 1, nz: int = 100, ngf: int = 64,
                 norm: str = "batch", num_classes: int = 0, conditional: str = "none", dims: int = 2):
        super().__init__()
        self.image_size, self.nc, self.dims = image_size, nc, dims
        _, Up, _ = _layers(dims)
        zin = self._conditioning(nz, num_classes, conditional)
        n = _num_ups(image_size)
        ch = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [
            Up(zin, ch, 4, 1, 0, bias=False),                      # (B, ch, 4, 4[, 4])
            _norm(norm, ch, dims), nn.ReLU(True),
        ]
        for _ in range(n - 1):                                     # doubles each side; halves ch
            layers += [Up(ch, ch // 2, 4, 2, 1, bias=False),
                       _norm(norm, ch // 2, dims), nn.ReLU(True)]
            ch //= 2
        layers += [Up(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]    # (B, nc, S, S[, S])
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.condition(z, y).view(z.shape[0], -1, *(1,) * self.dims))

    def folded(self) -> "Generator":
        """A copy for inference with every BatchNorm folded into the transposed convolution
        before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same function of the running
        statistics, one pass over each feature map fewer. Images agree with the unfolded
        network's to float rounding (~1e-8). Only for sampling: the copy does not train."""
        out = copy.deepcopy(self).eval()
        layers, i = list(out.net), 0
        fused: list[nn.Module] = []
        while i < len(layers):
            conv, bn = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)):
                f = fuse_conv_bn_eval(conv, bn, transpose=True)
                if conv.weight.ndim == 4 and conv.weight.is_contiguous(memory_format=torch.channels_last):
                    f = f.to(memory_format=torch.channels_last)
                fused.append(f)
                i += 2
            else:
                fused.append(conv)
                i += 1
        last = fused[-2]
        if isinstance(last, nn.ConvTranspose2d) and last.out_channels == 1:
            fused[-2] = ColumnConvTranspose2d(last)
        out.net = nn.Sequential(*fused)
        return out


class ColumnConvTranspose2d(nn.Module):
    """A transposed convolution with one output channel (a gray image's output layer), computed
    on the CPU as one matrix product and col2im (``F.fold``): each input pixel's ``k x k`` patch of
    contributions, then the patches summed into place. PyTorch's CPU kernel spends its time on the
    large output map; this is 3.4x faster for the 64 px output layer (docs/performance.md,
    "Evaluation, third pass") and agrees with it to float rounding (~1e-9). Elsewhere (a GPU, autocast) the
    convolution itself runs."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        if conv.out_channels != 1 or conv.groups != 1 or conv.dilation != (1, 1) or conv.output_padding != (0, 0):
            raise ValueError("ColumnConvTranspose2d takes a plain transposed convolution with one output channel")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or x.dtype != c.weight.dtype:
            return c(x)
        n, cin, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = c.kernel_size, c.stride, c.padding
        cols = torch.matmul(x.permute(0, 2, 3, 1).reshape(n, h * w, cin), c.weight.reshape(cin, kh * kw))
        out = nn.functional.fold(cols.transpose(1, 2), ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw),
                                 (kh, kw), stride=(sh, sw), padding=(ph, pw))
        return out if c.bias is None else out + c.bias.view(1, -1, 1, 1)


class Discriminator(nn.Module):
    """Image ``(B, nc, S, S)`` (``dims = 3``: volume ``(B, nc, S, S, S)``) [+ labels] -> logit
    ``(B,)``; with an ACGAN head also class logits ``(B, K)``. No sigmoid: the loss owns it."""

    def __init__(self, image_size: int = 64, nc: int = 1, ndf: int = 64, norm: str = "batch",
                 spectral_norm: bool = False, num_classes: int = 0, conditional: str = "none", dims: int = 2):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        Conv = _layers(dims)[0]
        self.dims = dims
        n = _num_ups(image_size)
        ch = ndf
        layers: list[nn.Module] = [sn(Conv(nc, ch, 4, 2, 1, bias=False)),
                                   nn.LeakyReLU(0.2, True)]        # no norm on the input layer
        for _ in range(n - 1):
            layers += [sn(Conv(ch, ch * 2, 4, 2, 1, bias=False)),
                       _norm(norm, ch * 2, dims), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)                     # (B, ch, 4, 4[, 4])
        self.head = sn(Conv(ch, 1, 4, 1, 0, bias=False))           # (B, 1, 1, 1[, 1])
        self.conditional = conditional
        if conditional == "projection":
            self.embed = sn(nn.Embedding(num_classes, ch))
        elif conditional == "acgan":
            self.aux = nn.Linear(ch * 4 ** dims, num_classes)
        elif conditional != "none":
            raise ValueError(f"unknown discriminator conditioning {conditional!r}")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = self.features(x)
        logit = self.head(h).view(-1)
        if self.conditional == "projection":
            # mean pooling keeps the projection term on the scale of the head's logit
            logit = logit + (self.embed(y) * h.flatten(2).mean(dim=2)).sum(dim=1)
        elif self.conditional == "acgan":
            return logit, self.aux(h.flatten(1))
        return logit


def dcgan_init_(module: nn.Module) -> None:
    """Weights from N(0, 0.02); norm scale from N(1, 0.02), shift 0 (paper, section 4)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(w, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, Discriminator) and m.conditional == "projection":
            w = m.embed.parametrizations.weight.original if hasattr(m.embed, "parametrizations") else m.embed.weight
            nn.init.normal_(w, 0.0, 0.02)
