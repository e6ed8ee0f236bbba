"""What a feature network costs per 1,000 images: the frozen random network (`fd-random`, the
default) against the ImageNet EfficientNet-Lite0 (`fd-effnet`), side by side in one run.

    .venv/bin/python benchmarks/extractor_cost.py [--n 500] [--size 64] [--threads 1]

Feeds the same N phantom x-ray images (size x size px, scaled to [-1, 1] as evaluation does) to
each network's ``extract`` once to warm up on a few images, then times all N; prints CPU
seconds per 1,000 images (process time: steadier than wall time on a shared machine; with one
thread about the wall time of an idle one) and the ratio. This is why ``eval.feature-extractor = auto`` does not pick
effnet-lite0 (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from fedsynth.data import make_phantom
    from fedsynth.metrics import build_extractor

    torch.set_num_threads(args.threads)
    data = make_phantom("phantom-xray", args.n, args.size, seed=0)
    x = torch.from_numpy(data.images).float() / 127.5 - 1.0  # (N, 1, H, W) in [-1, 1]
    per_1000 = {}
    for kind in ("random", "effnet-lite0"):
        net = build_extractor(kind)
        net.extract(x[:8])  # warm-up: first-call allocations
        t0, c0 = time.perf_counter(), time.process_time()
        feats = net.extract(x)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        per_1000[kind] = cpu / args.n * 1000
        print(f"{kind:13s} {tuple(feats.shape)}  {cpu:6.2f} s of CPU ({wall:6.2f} s wall) for {args.n} images "
              f"= {per_1000[kind]:6.2f} s of CPU per 1,000")
    print(f"effnet-lite0 / random (CPU time) = {per_1000['effnet-lite0'] / per_1000['random']:.0f}x "
          f"({platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__})")


if __name__ == "__main__":
    main()
