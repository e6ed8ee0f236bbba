"""Secure aggregation (fed.secure-aggregation) against plain FedAvg over Flower, side by side.

    .venv/bin/python benchmarks/secagg_overhead.py [--rounds 3] [--repeats 2] [--images 64]

One federation on 127.0.0.1 (tools.local_federation.LocalFederation: a SuperLink with TLS and
SuperNode authentication, two `fedsynth deploy supernode` nodes with warm workers), and the same
tiny federated GAN (16 px, `--images` phantom images split over the two hospitals) run plainly
and with secure aggregation in turn, `--repeats` times, alternating. Printed, all measured in
this run:

* wall time per round on the server (timings.jsonl), median over rounds 2..N of every run of a
  setting, and the secure/plain ratio; the slower node's training time per round;
* the quantisation error: max |global weight - plain FedAvg| after round 1 (both runs start from
  the same weights), next to the bound of fedsynth.fed.flower.secagg.quantisation_bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/: the repository's test and benchmark helpers
from fedsynth.fed.flower.deploy import APP_DIR as APP  # noqa: E402

CONFIG = ("[data]\nimage-size = 16\n[model]\nnz = 16\nngf = 8\nndf = 8\n[train]\nbatch-size = 16\nthreads = 1\n"
          "[fed]\nrounds = {rounds}\nsecure-aggregation = {secure}\n[eval]\nenabled = false\n"
          "[privacy]\nvalidate = false\n[run]\nkeep-checkpoints = {rounds}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=64)
    a = ap.parse_args()
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.fed.flower import secagg
    from fedsynth.fed.flower.deploy import make_certs
    from tools.local_federation import LocalFederation
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = CliRunner().invoke(app, ["data", "split", "phantom-xray", "-k", "2", "--out", str(tmp / "sites"),
                                       "--set", f"data.num-images={a.images}", "--set", "data.image-size=16"])
        assert res.exit_code == 0, res.output
        make_certs(tmp / "certs", 2)
        fed = LocalFederation(tmp / "fl", [(str(tmp / "sites" / f"client-{k}"), str(k)) for k in (0, 1)],
                              certs=tmp / "certs", port=18900 + os.getpid() % 90,
                              env={**os.environ, "FEDSYNTH_CACHE": str(tmp / "cache")}, log_dir=tmp / "logs")
        wall: dict[str, list[float]] = {"plain": [], "secure": []}
        train: dict[str, list[float]] = {"plain": [], "secure": []}
        first: dict[str, dict] = {}
        t0 = time.perf_counter()
        try:
            fed.start()
            for rep in range(a.repeats):
                for name in ("plain", "secure"):
                    cfg = tmp / f"{name}.toml"
                    cfg.write_text(CONFIG.format(rounds=a.rounds, secure=str(name == "secure").lower()))
                    out = tmp / f"{name}-{rep}"
                    run = fed.run(APP, {"config-path": str(cfg), "out": str(out)}, timeout=1800)
                    if "[fedsynth] done" not in run.stdout:
                        sys.exit(f"{name} run failed:\n{run.stdout[-3000:]}{run.stderr[-2000:]}")
                    rows = [json.loads(x) for x in (out / "timings.jsonl").read_text().splitlines()]
                    srv = [r for r in rows if r["client"] == "server"]
                    wall[name] += [r["wall_s"] for r in srv[1:]]
                    train[name] += [r["max_client_train_s"] for r in srv[1:]]
                    ck = torch.load(out / "checkpoints" / "round-0001.pt", weights_only=True)
                    first.setdefault(name, ck["global"])
                    print(f"  run {rep + 1} {name}: s/round {[round(r['wall_s'], 2) for r in srv]}", flush=True)
        finally:
            fed.stop()
        nodes = json.loads((tmp / "secure-0" / "nodes.json").read_text())
    n = [v["images"] for v in nodes.values()]
    bound = secagg.quantisation_bound(n, max(n), 8.0)
    g, p = first["secure"], first["plain"]
    err = max(float((g[k].double() - p[k].double()).abs().max()) for k in p if p[k].is_floating_point())
    ints = max(int((g[k] - p[k]).abs().max()) for k in p if not p[k].is_floating_point())
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\nflwr {__import__('flwr').__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {a.repeats} x {a.rounds} rounds per setting, "
          f"{n} images per hospital; {time.perf_counter() - t0:.0f} s in all")
    for k in ("plain", "secure"):
        print(f"{k:>7}: {med[k]:.2f} s/round (median of rounds 2..{a.rounds}, {len(wall[k])} rounds; slower node "
              f"trains {statistics.median(train[k]):.2f} s)")
    print(f"secure / plain: {med['secure'] / med['plain']:.2f}x, +{med['secure'] - med['plain']:.2f} s per round")
    print(f"round 1: max |global - plain FedAvg| = {err:.3g} on floating weights (bound {bound:.3g}); "
          f"integer buffers differ by at most {ints}")


if __name__ == "__main__":
    main()
