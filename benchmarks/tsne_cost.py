"""What the t-SNE figure of real vs synthetic features costs (fedsynth.evaluate.tsne).

    .venv/bin/python benchmarks/tsne_cost.py [--points 300] [--size 64]

Times, on one thread, for N real and N "synthetic" phantom-CT images (the synthetic side is
another seed's phantoms: the cost does not depend on where the images come from): the random
feature network's features, scikit-learn's t-SNE of the 2N points, and the figure. Prints one
line per step and the total, beside one evaluation of a default run for scale.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fedsynth.data import make_phantom
from fedsynth.evaluate.tsne import embed, figure
from fedsynth.metrics import build_extractor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    real = make_phantom("phantom-ct", args.points, args.size, seed=0)
    fake = make_phantom("phantom-ct", args.points, args.size, seed=1)
    ext = build_extractor("random")
    t: dict[str, tuple[float, float]] = {}

    def timed(name, f):
        w0, c0 = time.perf_counter(), time.process_time()
        out = f()
        t[name] = (time.perf_counter() - w0, time.process_time() - c0)
        return out
    fr, ff = timed("features (random network)", lambda: (ext.extract(real.batch()).double().numpy(),
                                                         ext.extract(fake.batch()).double().numpy()))
    xy = timed("t-SNE (scikit-learn)", lambda: embed(fr, ff, seed=0))
    png = timed("figure (matplotlib)", lambda: figure(xy, len(fr), real.labels.tolist(), fake.labels.tolist(),
                                                      real.class_names, "t-SNE"))
    with tempfile.TemporaryDirectory() as d:
        Path(d, "tsne.png").write_bytes(png)
    print(f"{args.points} real + {args.points} synthetic images of {args.size} px, 1 thread, torch {torch.__version__}"
          f" (wall seconds / CPU seconds of this process; wall grows with the machine's load)")
    for k, (w, c) in t.items():
        print(f"  {k}: {w:.2f} s / {c:.2f} s")
    print(f"  total: {sum(w for w, _ in t.values()):.2f} s / {sum(c for _, c in t.values()):.2f} s")


if __name__ == "__main__":
    main()
