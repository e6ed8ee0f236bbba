"""Seconds to sample 1,000 images with a run's released diffusion model and its own sampler.

    python benchmarks/diffusion_sampling.py runs/demo-xray [--n 1000] [--batch 250] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fedsynth.checkpoint import load_released


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory or checkpoint of a diffusion model")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, state, _ = load_released(args.run)
    z = model.latents(args.n, torch.Generator().manual_seed(0))
    model.sample(state, z[:8])  # warm-up
    t0 = time.perf_counter()
    x = model.sample(state, z, batch=args.batch)
    s = time.perf_counter() - t0
    print(f"{model.provenance()} {tuple(x.shape)}: {s * 1000 / args.n:.1f} s per 1,000 samples "
          f"(batch {args.batch}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
