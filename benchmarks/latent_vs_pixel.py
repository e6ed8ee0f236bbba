"""Latent against pixel-space diffusion at the same image size, side by side.

Builds, from fedsynth's own families, a pixel-space diffusion model (``model.family =
"diffusion"``) and a latent diffusion model (``"latent-diffusion"``: the same UNet settings on
the latents of an untrained stage-1 autoencoder -- its cost does not depend on its training) for
images of ``--size`` px, then measures, alternating the two in each repeat so machine load hits
both alike:

* training images/s: one local step (a batch of ``--batch``: the UNet's denoising loss,
  backward, Adam, EMA; latent: on the cached latents, after their one-off encoding, which is
  timed apart as encoding images/s);
* seconds per 1,000 samples: DDIM with the config's steps (latent: plus decoding), batches of
  ``--batch-sample``, extrapolated from ``--samples``;
* bytes sent per round: what a site sends (the UNet and its EMA; never the autoencoder).

    python benchmarks/latent_vs_pixel.py --size 128 --threads 2 --repeats 3

Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def build(size: int, dims: int, unet: list[int], ae: list[int]):
    from fedsynth.config import load_config
    from fedsynth.models.autoencoder import AutoencoderModel, AutoencoderSpec
    from fedsynth.models.diffusion import DiffusionModel, unet_spec
    from fedsynth.models.latent import LatentDiffusionModel
    att = "[" + ", ".join(["false"] * (len(unet) - 1) + ["true"]) + "]"
    cfg = load_config(None, [f"data.image-size={size}", f"data.dims={dims}", f"diffusion.channels={unet}",
                             f"diffusion.attention={att}"] + (["data.source=phantom-ct"] if dims == 3 else []))
    pixel = DiffusionModel(unet_spec(cfg, size, 1, 0))
    a = AutoencoderModel(AutoencoderSpec(image_size=size, dims=dims, widths=tuple(ae)))
    latent = LatentDiffusionModel(LatentDiffusionModel._spec(cfg, a.describe(), 0), a.frozen(), a.describe(), "-")
    return pixel, latent


def images(n: int, size: int, dims: int):
    from fedsynth.data import ImageSet
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 255, (n, 1, *(size,) * dims), dtype=np.uint8), np.zeros(n, dtype=np.int64),
                    ("all",), "bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dims", type=int, default=2, choices=(2, 3))
    ap.add_argument("--unet", type=int, nargs="+", default=[16, 32, 64], help="UNet widths (both models)")
    ap.add_argument("--ae", type=int, nargs="+", default=[16, 32, 64], help="autoencoder widths (latent model)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="training steps timed per repeat")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch-sample", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pixel, latent = build(a.size, a.dims, a.unet, a.ae)
    data = images(max(a.batch * 4, 64), a.size, a.dims)
    t0 = time.perf_counter()
    latent._on_device(data)  # the one-off encoding of a site's images
    encode = len(data) / (time.perf_counter() - t0)
    rows = {"pixel": {"train": [], "sample": []}, "latent": {"train": [], "sample": []}}
    models = {"pixel": pixel, "latent": latent}
    for _ in range(a.repeats):
        for name, m in models.items():
            m.train(data, 1, a.batch, torch.Generator().manual_seed(0))  # warm
            t0 = time.perf_counter()
            m.train(data, a.steps, a.batch, torch.Generator().manual_seed(1))
            rows[name]["train"].append(a.steps * a.batch / (time.perf_counter() - t0))
            z = m.latents(a.samples, torch.Generator().manual_seed(2))
            t0 = time.perf_counter()
            m.sample(None, z, batch=a.batch_sample)
            rows[name]["sample"].append((time.perf_counter() - t0) * 1000 / a.samples)
    side = f"{a.size}{'³' if a.dims == 3 else ' px'}"
    print(f"{side}, UNet {a.unet}, autoencoder {a.ae} (latent {latent.spec.channels} x {latent.spec.image_size}"
          f"{'³' if a.dims == 3 else '²'}), batch {a.batch}, {a.threads} thread(s), median of {a.repeats} repeats")
    print(f"{'':8} {'train images/s':>15} {'s per 1,000 samples':>20} {'bytes sent per round':>21} {'UNet params':>12}")
    for name, m in models.items():
        sent = sum(v.numel() * v.element_size() for v in m.state().values())
        params = sum(p.numel() for p in m.G.unet.parameters())
        print(f"{name:8} {statistics.median(rows[name]['train']):15.1f} {statistics.median(rows[name]['sample']):20.1f} "
              f"{sent:21,d} {params:12,d}")
    print(f"latent: encoding a site's images once: {encode:.1f} images/s")


if __name__ == "__main__":
    main()
