"""MONAI vs diffusers for the diffusion family: the same-size UNet at 32 px, side by side.

Both libraries ship a denoising UNet (MONAI ``DiffusionModelUNet``, diffusers ``UNet2DModel``)
and DDPM/DDIM schedulers. This builds one UNet of each with the same widths, residual blocks
per level, attention level, GroupNorm groups and input size, then measures, alternating the two
libraries in each repeat so machine load hits both alike:

* training images/s: noise-prediction loss (DDPM objective), backward, Adam step;
* seconds per 1,000 samples: DDIM (eta = 0) with ``--ddim-steps`` steps, batches of ``--batch-sample``.

    python benchmarks/diffusion_libs.py --threads 1 --repeats 3

Needs ``monai`` and ``diffusers`` importable (fedsynth depends only on the one it chose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def monai_unet(channels, attention, blocks, groups, in_ch):
    from monai.networks.nets import DiffusionModelUNet
    return DiffusionModelUNet(spatial_dims=2, in_channels=in_ch, out_channels=in_ch, channels=channels,
                              attention_levels=attention, num_res_blocks=blocks, norm_num_groups=groups,
                              num_head_channels=channels[-1])


def diffusers_unet(channels, attention, blocks, groups, in_ch, size):
    from diffusers import UNet2DModel
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(sample_size=size, in_channels=in_ch, out_channels=in_ch, block_out_channels=channels,
                       down_block_types=down, up_block_types=up, layers_per_block=blocks,
                       norm_num_groups=groups, attention_head_dim=channels[-1])


class Lib:
    """One library's UNet, schedulers and the two timed operations."""

    def __init__(self, name, net, train_sched, ddim, call):
        self.name, self.net, self.train_sched, self.ddim, self.call = name, net, train_sched, ddim, call
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def train(self, x: torch.Tensor, steps: int, T: int, g: torch.Generator) -> float:
        self.net.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            noise = torch.randn(x.shape, generator=g)
            t = torch.randint(0, T, (len(x),), generator=g)
            noisy = self.train_sched.add_noise(x, noise, t)
            loss = torch.nn.functional.mse_loss(self.call(self.net, noisy, t), noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return steps * len(x) / (time.perf_counter() - t0)

    @torch.inference_mode()
    def sample(self, n: int, batch: int, shape, steps: int, g: torch.Generator) -> float:
        self.net.eval()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            b = min(batch, n - i)
            x = torch.randn((b, *shape), generator=g)
            self.ddim.set_timesteps(steps)
            for t in self.ddim.timesteps:
                eps = self.call(self.net, x, torch.full((b,), int(t), dtype=torch.long))
                x = self.ddim_step(eps, t, x)
        return time.perf_counter() - t0

    def ddim_step(self, eps, t, x):
        if self.name == "monai":
            return self.ddim.step(eps, int(t), x, eta=0.0)[0]
        return self.ddim.step(eps, t, x, eta=0.0).prev_sample


def build(size: int, channels, attention, blocks, groups, in_ch, T: int, seed: int) -> list[Lib]:
    libs = []
    torch.manual_seed(seed)
    from monai.networks.schedulers import DDIMScheduler as MDDIM, DDPMScheduler as MDDPM
    libs.append(Lib("monai", monai_unet(channels, attention, blocks, groups, in_ch),
                    MDDPM(num_train_timesteps=T), MDDIM(num_train_timesteps=T),
                    lambda net, x, t: net(x, t)))
    torch.manual_seed(seed)
    from diffusers import DDIMScheduler as DDDIM, DDPMScheduler as DDDPM
    libs.append(Lib("diffusers", diffusers_unet(channels, attention, blocks, groups, in_ch, size),
                    DDDPM(num_train_timesteps=T), DDDIM(num_train_timesteps=T),
                    lambda net, x, t: net(x, t).sample))
    return libs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", default="32,64,64", help="UNet widths per level")
    ap.add_argument("--attention", default="0,0,1", help="attention per level (0/1)")
    ap.add_argument("--blocks", type=int, default=1, help="residual blocks per level")
    ap.add_argument("--groups", type=int, default=8, help="GroupNorm groups")
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--batch-train", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=1000, help="samples per timing (reported per 1,000)")
    ap.add_argument("--batch-sample", type=int, default=250)
    ap.add_argument("--ddim-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    attention = tuple(bool(int(a)) for a in args.attention.split(","))
    libs = build(args.size, channels, attention, args.blocks, args.groups, args.in_channels,
                 args.timesteps, seed=0)
    shape = (args.in_channels, args.size, args.size)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch_train, *shape), generator=g) * 2 - 1
    print(f"UNet widths {channels}, attention {attention}, {args.blocks} res block(s)/level, "
          f"{args.groups} groups, {args.size} px, {args.in_channels} channel(s); torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    for lib in libs:
        print(f"  {lib.name:9s} {lib.params():,} parameters")
        lib.train(x, 2, args.timesteps, g)  # warm-up
        lib.sample(args.batch_sample, args.batch_sample, shape, 2, g)
    ips = {lib.name: [] for lib in libs}
    spk = {lib.name: [] for lib in libs}
    for r in range(args.repeats):
        for lib in libs if r % 2 == 0 else libs[::-1]:  # alternate the order between repeats
            ips[lib.name].append(lib.train(x, args.train_steps, args.timesteps, g))
            spk[lib.name].append(lib.sample(args.samples, args.batch_sample, shape, args.ddim_steps, g)
                                 * 1000 / args.samples)
    print(f"\n{'library':10s} {'train img/s (median)':>22s} {f's / 1,000 samples, DDIM {args.ddim_steps}':>30s}")
    for lib in libs:
        print(f"{lib.name:10s} {statistics.median(ips[lib.name]):22.1f} {statistics.median(spk[lib.name]):30.1f}"
              f"   (all: {', '.join(f'{v:.1f}' for v in ips[lib.name])} | "
              f"{', '.join(f'{v:.1f}' for v in spk[lib.name])})")
    m, d = (statistics.median(ips[n]) for n in ("monai", "diffusers"))
    ms, ds = (statistics.median(spk[n]) for n in ("monai", "diffusers"))
    print(f"\nmonai / diffusers: training {m / d:.2f}x the images/s; sampling {ms / ds:.2f}x the seconds "
          f"(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
