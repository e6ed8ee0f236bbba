"""The evaluation budget of the default run, in CPU seconds: what is not training, as a share of
training time (target: at most 35 %).

    OMP_NUM_THREADS=1 python benchmarks/eval_budget.py OUT_DIR [--rounds 5] [--set key=value ...]

Runs the default `fedsynth run` (1 torch thread) with every timing the engine records taken as
this process's CPU time instead of wall time, so the train/evaluation split does not depend on
how loaded a shared machine is. With 5 rounds the sites' own models are scored once (round 5),
as often as in 20 rounds (every 5th); the 20-round figure is projected from the per-round CPU
seconds: start-up + 20 x training + round 0 + 16 global-only rounds + 4 rounds with the sites'
models. Use a fresh FEDSYNTH_CACHE to include the real-data statistics a first run computes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


class CPUClock:
    """``time`` with ``perf_counter`` replaced by this process's CPU time."""

    def __getattr__(self, name):
        return getattr(time, name)

    perf_counter = staticmethod(time.process_time)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    import fedsynth.fed.client as client
    import fedsynth.fed.engine as engine
    import fedsynth.train.local as local
    engine.time = client.time = local.time = CPUClock()
    from fedsynth.config import load_config
    from fedsynth.fed.run import run_experiment
    t0 = time.process_time()
    cfg = load_config(None, ["train.threads=1", f"fed.rounds={a.rounds}", *a.set])
    run_experiment(cfg, a.out)
    total = time.process_time() - t0
    rows = [json.loads(x) for x in (Path(a.out) / "timings.jsonl").read_text().splitlines() if x.strip()]
    server = {r["round"]: r for r in rows if r.get("client") == "server"}
    train = sum(r.get("train_s", 0.0) for r in server.values())
    evals = sum(r.get("eval_s", 0.0) for r in server.values())
    other = total - train - evals
    print(f"{a.rounds} rounds: process CPU {total:.1f} s, training {train:.1f} s, evaluation {evals:.1f} s, "
          f"start-up and report {other:.1f} s; not training: {(total - train) / train:.0%} of training")
    every = cfg.eval.local_every
    local_rounds = {r for r in server if r > 0 and (r == a.rounds or (every and r % every == 0))}
    plain = [server[r]["eval_s"] for r in server if r > 0 and r not in local_rounds] or \
        [server[r]["eval_s"] for r in local_rounds]
    with_local = [server[r]["eval_s"] for r in local_rounds]
    tr = statistics.mean(server[r]["train_s"] for r in server if r > 0)
    k = len(range(every, 21, every)) if every else 1
    ev20 = server[0]["eval_s"] + (20 - k) * statistics.mean(plain) + k * statistics.mean(with_local)
    print(f"20 rounds, projected: training {20 * tr:.0f} s, not training {other + ev20:.0f} s = "
          f"{(other + ev20) / (20 * tr):.0%} of training")


if __name__ == "__main__":
    main()
