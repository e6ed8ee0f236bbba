"""What experiment tracking costs a run: the same small run with no tracker, with TensorBoard,
and with MLflow (a local sqlite store), interleaved, measured side by side in one process.

    .venv/bin/python benchmarks/tracking.py [--repeats 2] [--rounds 4]

Prints each setting's median wall-clock seconds and its ratio to the run without tracking, plus
the one-off costs: importing the libraries and creating an MLflow sqlite store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedsynth-tracking-"))
    os.environ["FEDSYNTH_CACHE"] = str(work / "cache")
    import torch
    torch.set_num_threads(1)
    from fedsynth.config import load_config
    from fedsynth.fed.run import run_experiment

    base = ["data.image-size=16", "data.num-images=256", "model.nz=16", "model.ngf=8", "model.ndf=8",
            "train.batch-size=16", f"fed.rounds={args.rounds}", "eval.num-samples=128", "eval.kid-subsets=5",
            "eval.kid-subset-size=16", "eval.grid-size=16", "eval.feature-extractor=random"]
    t = time.perf_counter()
    import torch.utils.tensorboard  # noqa: F401
    t_tb = time.perf_counter() - t
    t = time.perf_counter()
    import mlflow.tracking  # noqa: F401
    t_ml = time.perf_counter() - t
    uri = f"sqlite:///{work / 'mlflow.db'}"
    t = time.perf_counter()
    mlflow.tracking.MlflowClient(uri).search_experiments()  # creates the store's tables
    t_db = time.perf_counter() - t

    settings = {"none": [], "tensorboard": ["run.tensorboard=true"], "mlflow": [f"run.mlflow-uri={uri}"]}
    run_experiment(load_config(None, base), work / "warm")  # caches, first-use costs
    times: dict[str, list[float]] = {k: [] for k in settings}
    for rep in range(args.repeats):
        for name, extra in settings.items():
            t = time.perf_counter()
            run_experiment(load_config(None, base + extra), work / f"{name}-{rep}")
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["none"])
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{args.rounds} rounds x 2 clients, 16 px, {args.repeats} repeats (interleaved)")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:12s} {m:7.2f} s  ({m / ref:.2f}x no tracking)   runs: {', '.join(f'{x:.2f}' for x in ts)}")
    print(f"one-off: import torch.utils.tensorboard {t_tb:.2f} s, import mlflow.tracking {t_ml:.2f} s, "
          f"new sqlite store {t_db:.2f} s")


if __name__ == "__main__":
    main()
