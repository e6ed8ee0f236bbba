"""Paired comparisons of sweep variants over seeds, by both feature networks: the verdicts of
docs/results.md come from here.

    python experiments/paired.py runs/study xray-period1/xray-period5 ct-period1/ct-period5
    python experiments/paired.py runs/strategies fedavg/fedbn fedadam/fedavg --markdown

Each ``A/B`` pairs A's and B's runs seed by seed (the sweep's ``results.csv``: the median of each
run's last k evaluations against held-out images, and the same with the second network where the
sweep rescored it) and prints the geometric mean of the per-seed ratios A/B with its 95 %
t-interval on the log ratios (:func:`fedsynth.metrics.intervals.paired_ratio_interval`):
``A better`` when the interval lies below 1, ``B better`` above 1, ``cannot tell`` when it
contains 1.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from fedsynth.metrics.intervals import paired_ratio_interval

COLUMNS = (("last_k_median", "metric"), ("second_last_k_median", "second_metric"))
FINAL = (("global_fd", "metric"), ("second_final", "second_metric"))  # the last evaluation only


def per_seed(rows: list[dict[str, str]], variant: str, column: str) -> dict[int, float]:
    out = {}
    for r in rows:
        if r["variant"] == variant and r.get(column, "") not in ("", None):
            v = float(r[column])
            if math.isfinite(v):
                out[int(r["seed"])] = v
    return out


def verdict(low: float, high: float, a: str, b: str) -> str:
    if high < 1:
        return f"{a} better"
    if low > 1:
        return f"{b} better"
    return "cannot tell"


def compare(rows: list[dict[str, str]], a: str, b: str, columns=COLUMNS) -> list[tuple[str, str, str]]:
    """``(network, ratio [interval], verdict)`` per feature network the sweep scored with
    (``columns``: the medians of the last k evaluations, or :data:`FINAL`, the last ones)."""
    out = []
    for column, name_col in columns:
        va, vb = per_seed(rows, a, column), per_seed(rows, b, column)
        seeds = sorted(set(va) & set(vb))
        if len(seeds) < 2:
            continue
        net = next((r.get(name_col) or "" for r in rows if r["variant"] == a), "") or column
        iv = paired_ratio_interval([va[s] for s in seeds], [vb[s] for s in seeds])
        out.append((net, f"{iv.mean:.2f} [{iv.low:.2f}, {iv.high:.2f}] ({len(seeds)} seeds)",
                    verdict(iv.low, iv.high, a, b)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("pairs", nargs="+", help="A/B: variant A against variant B")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    ap.add_argument("--final", action="store_true", help="compare the last evaluations, not the medians of "
                    "the last k (variants whose last k evaluations span different stages of training)")
    args = ap.parse_args()
    with open(args.sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if args.markdown:
        print("| A / B | network | ratio A/B [95 % interval] | verdict |\n| --- | --- | --- | --- |")
    for pair in args.pairs:
        a, b = pair.split("/")
        for net, ratio, say in compare(rows, a, b, FINAL if args.final else COLUMNS):
            print(f"| {a} / {b} | {net} | {ratio} | {say} |" if args.markdown else f"{a}/{b}  {net}: {ratio}  {say}")


if __name__ == "__main__":
    main()
