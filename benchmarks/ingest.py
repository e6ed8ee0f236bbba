"""Ingest speed: 5,000 PNG images of 256 px prepared to 64 px, then the cached second run.

    .venv/bin/python benchmarks/ingest.py [--n 5000] [--size 256] [--to 64]

Prints images/s for the first (uncached) ingest, the time of the second (cached) one, and
their ratio. Targets (issue 3): >= 500 images/s; cached >= 10x faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--to", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedsynth-ingest-"))
    os.environ["FEDSYNTH_CACHE"] = str(work / "cache")
    from fedsynth.config import build_config
    from fedsynth.data import load_dataset, make_phantom

    try:
        t = time.perf_counter()
        base = make_phantom("phantom-ct", (args.n + 3) // 4, args.size, seed=0)
        root = work / "images"
        for c in base.class_names:
            (root / c).mkdir(parents=True)
        i = 0
        for img, lab in zip(base.images, base.labels):
            for k in range(4):  # four orientations: distinct files
                if i == args.n:
                    break
                Image.fromarray(np.rot90(img[0], k)).save(root / base.class_names[lab] / f"{i:05d}.png")
                i += 1
        print(f"wrote {i} PNG files of {args.size}px in {time.perf_counter() - t:.1f}s")

        cfg = build_config(overrides=["data.source=folder", f'data.path="{root}"', f"data.image-size={args.to}"])
        t = time.perf_counter()
        first = load_dataset(cfg)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        second = load_dataset(cfg)
        t2 = time.perf_counter() - t
        assert first.provenance["cache"] == "miss" and second.provenance["cache"] == "hit"
        assert np.array_equal(first.images, second.images)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"first ingest : {len(first)} images in {t1:.2f}s = {len(first) / t1:.0f} images/s (target >= 500)")
        print(f"cached ingest: {t2:.3f}s = {t1 / t2:.0f}x faster (target >= 10x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
