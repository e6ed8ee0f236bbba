"""PyTorch's own DCGAN example, reimplemented for side-by-side timing (benchmarks/gpu.py).

What ``pytorch/examples`` ``dcgan/main.py --dataset fake`` does, written afresh: torchvision's
``FakeData`` (1,000 random RGB images) through a ``DataLoader`` (2 workers, shuffled, ``ToTensor``
and ``Normalize``), the paper's G and D (``ngf = ndf = 64``; D ends in a sigmoid and the loss is
``BCELoss``), Adam(2e-4, betas (0.5, 0.999)), and its step: D on the real batch (backward), D on
the detached fake batch (backward), D's step; then G's loss through D (D's weight gradients
computed too), G's step. Like the example it reads five scalars per step with ``.item()`` and
prints them, saves an image grid of the real batch and of the fixed noise every 100 iterations,
and saves both networks after the epoch.

    python benchmarks/dcgan_reference.py --image-size 64 --ngf 64 --ndf 64 --batch 64 --out DIR
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn as nn
import torch.utils.data
import torchvision.datasets as dset
import torchvision.transforms as transforms
import torchvision.utils as vutils


def networks(image_size: int, nz: int, ngf: int, ndf: int, nc: int = 3) -> tuple[nn.Module, nn.Module]:
    """G and D of the example, extended by one stage per doubling beyond 64 px (as its 128 px
    variants do)."""
    ups = {64: 3, 128: 4}[image_size]
    g: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * 2 ** ups, 4, 1, 0, bias=False),
                          nn.BatchNorm2d(ngf * 2 ** ups), nn.ReLU(True)]
    for i in range(ups, 0, -1):
        g += [nn.ConvTranspose2d(ngf * 2 ** i, ngf * 2 ** (i - 1), 4, 2, 1, bias=False),
              nn.BatchNorm2d(ngf * 2 ** (i - 1)), nn.ReLU(True)]
    g += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    d: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for i in range(ups):
        d += [nn.Conv2d(ndf * 2 ** i, ndf * 2 ** (i + 1), 4, 2, 1, bias=False),
              nn.BatchNorm2d(ndf * 2 ** (i + 1)), nn.LeakyReLU(0.2, inplace=True)]
    d += [nn.Conv2d(ndf * 2 ** ups, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    G, D = nn.Sequential(*g), nn.Sequential(*d)
    for m in list(G.modules()) + list(D.modules()):  # the example's weights_init
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return G, D


class Reference:
    """The example's networks, optimizers and step, usable in-process (images/s) too."""

    def __init__(self, image_size: int, ngf: int, ndf: int, nz: int = 100, device: str = "cpu",
                 precision: str = "fp32"):
        self.device, self.nz = torch.device(device), nz
        self.G, self.D = (m.to(self.device) for m in networks(image_size, nz, ngf, ndf))
        self.crit = nn.BCELoss()
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        self.amp = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else None

    def _ctx(self):
        import contextlib
        return self.amp() if self.amp else contextlib.nullcontext()

    def step(self, real: torch.Tensor) -> tuple[float, float, float, float, float]:
        real = real.to(self.device)
        b = real.shape[0]
        self.D.zero_grad()
        label = torch.full((b,), 1.0, device=self.device)
        with self._ctx():
            out = self.D(real).view(-1)
        err_real = self.crit(out.float(), label)
        err_real.backward()
        d_x = out.mean().item()
        noise = torch.randn(b, self.nz, 1, 1, device=self.device)
        with self._ctx():
            fake = self.G(noise)
            out = self.D(fake.detach()).view(-1)
        label.fill_(0.0)
        err_fake = self.crit(out.float(), label)
        err_fake.backward()
        d_gz1 = out.mean().item()
        err_d = err_real + err_fake
        self.opt_d.step()
        self.G.zero_grad()
        label.fill_(1.0)
        with self._ctx():
            out = self.D(fake).view(-1)
        err_g = self.crit(out.float(), label)
        err_g.backward()
        d_gz2 = out.mean().item()
        self.opt_g.step()
        return err_d.item(), err_g.item(), d_x, d_gz1, d_gz2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="dcgan-reference-out")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    data = dset.FakeData(size=a.images, image_size=(3, a.image_size, a.image_size),
                         transform=transforms.Compose([transforms.ToTensor(),
                                                       transforms.Normalize((0.5,) * 3, (0.5,) * 3)]))
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, num_workers=a.workers)
    ref = Reference(a.image_size, a.ngf, a.ndf, device=a.device)
    fixed = torch.randn(a.batch, ref.nz, 1, 1, device=ref.device)
    t = time.perf_counter()
    for i, (real, _) in enumerate(loader):
        err_d, err_g, d_x, d1, d2 = ref.step(real)
        print(f"[0/1][{i}/{len(loader)}] Loss_D: {err_d:.4f} Loss_G: {err_g:.4f} D(x): {d_x:.4f} "
              f"D(G(z)): {d1:.4f} / {d2:.4f}")
        if i % 100 == 0:
            vutils.save_image(real, f"{a.out}/real_samples.png", normalize=True)
            with torch.no_grad():
                vutils.save_image(ref.G(fixed).detach(), f"{a.out}/fake_samples_epoch_000.png", normalize=True)
    torch.save(ref.G.state_dict(), f"{a.out}/netG_epoch_0.pth")
    torch.save(ref.D.state_dict(), f"{a.out}/netD_epoch_0.pth")
    print(f"epoch: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
