"""kill -9 at random points, resume each time, and compare with an uninterrupted run.

    .venv/bin/python experiments/kill_resume.py [--kills 5] [--rounds 8]

Runs `fedsynth run` (32 px phantom-xray, 2 clients, SCAFFOLD so that optimizer *and* strategy
state must survive) once uninterrupted; then again, killing the process with SIGKILL at a
random moment after each new checkpoint and resuming with `fedsynth run --resume`, until it
finishes. Prints where each kill landed and whether the final weights and metrics.jsonl are
bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedsynth-kill-"))
    sets = ["data.image-size=32", "data.num-images=600", "fed.strategy=scaffold", f"fed.rounds={args.rounds}",
            "eval.every=2", "eval.num-samples=300"]
    cmd = [sys.executable, "-m", "fedsynth", "run"] + [a for s in sets for a in ("--set", s)]
    try:
        t = time.perf_counter()
        subprocess.run(cmd + ["--out", str(work / "ref")], check=True, capture_output=True)
        print(f"uninterrupted run: {time.perf_counter() - t:.0f}s")
        out = work / "killed"
        rng = random.Random(args.seed)
        proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills = 0

        def newest() -> int:
            cks = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").is_dir() else []
            return max((int(p.stem.split("-")[1]) for p in cks), default=0)

        while kills < args.kills and proc.poll() is None:
            seen = newest()
            while newest() == seen and proc.poll() is None:  # let it make progress first
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))               # then kill at a random moment
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            print(f"kill {kills}: SIGKILL during round {newest() + 1} (checkpoint of round {newest()} on disk)")
            proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "run", "--resume", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert proc.wait() == 0
        a = torch.load(sorted((work / "ref" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
        b = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
        same_w = all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
        same_m = (work / "ref" / "metrics.jsonl").read_bytes() == (out / "metrics.jsonl").read_bytes()
        print(f"{kills} kills; final round {b['round']}; final global weights bit-identical: {same_w}; "
              f"metrics.jsonl byte-identical: {same_m}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
