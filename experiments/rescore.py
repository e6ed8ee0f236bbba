"""Score finished runs again with another feature network, and say whether the ranking holds.

    .venv/bin/python experiments/rescore.py RUN_DIR... [--extractor effnet-lite0]

For each run directory: rebuild its clients from its own config.toml (same data, split and
seed), compute the real statistics with the other feature network, load the newest readable
checkpoint and score its released model(s) exactly as the run scored them at that round
(global on the union and on each site; the local baseline's models on the union). Prints one
table, pairing every record of the run (its own metric, e.g. fd-random) with the new score, and
the Spearman rank correlation between the two over all pairs and over the runs' headline
numbers (the global model on the union, or the mean of the local models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def rescore(run_dir: Path, extractor: str) -> list[dict]:
    from fedsynth.checkpoint import latest_checkpoint
    from fedsynth.config import load_config
    from fedsynth.fed.engine import Reporter
    from fedsynth.fed.run import in_process
    from fedsynth.registry import is_fd_metric
    cfg = load_config(run_dir / "config.toml")
    other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, feature_extractor=extractor, enabled=True))
    fed = in_process()(other, Reporter())
    ck, _ = latest_checkpoint(run_dir)
    fed.restore({**ck, "config": other.to_dict()})  # the same run; only the feature network differs
    r = ck["round"]
    new = [x for x in fed.pool.evaluate_global(r) if x["round"] == r]
    old = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    old = {(x["client"], x.get("real")): x for x in old if x["round"] == r
           and is_fd_metric(x["metric"])}
    out = []
    for x in new:
        if not is_fd_metric(x["metric"]):
            continue
        o = old.get((x["client"], x.get("real")))
        if o is not None:
            out.append({"run": run_dir.name, "round": r, "client": x["client"], "real": x.get("real"),
                        o["metric"]: o["value"], x["metric"]: x["value"], "old_metric": o["metric"],
                        "new_metric": x["metric"]})
    return out


def headline(rows: list[dict]) -> tuple[float, float]:
    """The run's headline pair: global on the union, else the mean over the local models on the union."""
    g = [r for r in rows if r["client"] == "global" and r["real"] == "union"]
    pick = g or [r for r in rows if r["real"] == "union"]
    return (float(np.mean([r[r["old_metric"]] for r in pick])), float(np.mean([r[r["new_metric"]] for r in pick])))


def main() -> None:
    from scipy.stats import spearmanr
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--extractor", default="effnet-lite0")
    ap.add_argument("--out", type=Path, help="write all pairs as JSON lines here")
    a = ap.parse_args()
    rows, heads = [], {}
    if a.out:
        a.out.write_text("")
    for d in a.runs:  # each run's pairs are printed and written as it finishes: a failure loses one run
        got = rescore(d, a.extractor)
        rows += got
        if got:
            heads[d.name] = headline(got)
            print(f"{d.name}: {len(got)} scores; headline {got[0]['old_metric']} {heads[d.name][0]:.4g}, "
                  f"{got[0]['new_metric']} {heads[d.name][1]:.4g}", flush=True)
            if a.out:
                with a.out.open("a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in got))
        else:
            print(f"{d.name}: no comparable records", flush=True)
    if not rows:
        raise SystemExit("no comparable records")
    om, nm = rows[0]["old_metric"], rows[0]["new_metric"]
    print(f"\n| run | {om} | {nm} |\n| --- | --- | --- |")
    for name, (o, n) in sorted(heads.items(), key=lambda kv: kv[1][0]):
        print(f"| {name} | {o:.4g} | {n:.4g} |")
    rho_all = spearmanr([r[om] for r in rows], [r[nm] for r in rows]).statistic
    rho_runs = spearmanr([o for o, _ in heads.values()], [n for _, n in heads.values()]).statistic
    print(f"\nSpearman rank correlation {om} vs {nm}: runs' headline numbers {rho_runs:.3f} "
          f"(n={len(heads)}); all {len(rows)} scores {rho_all:.3f}")


if __name__ == "__main__":
    main()
