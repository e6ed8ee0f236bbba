"""The FedAvg-DCGAN study grid as docs/results.md shows it: modality x variant, each cell the
mean over seeds [95 % interval] of the runs' median of the last k evaluations, for one feature
network; then the paired verdicts the study's conclusions need.

    python experiments/study_table.py runs/study                 # fd-random
    python experiments/study_table.py runs/study --second        # fd-effnet (rescored)
    python experiments/study_table.py runs/study --final         # the last evaluation (epoch 15 for all)

The aggregation periods are compared at the same number of local epochs, so ``--final`` is the
fair comparison between them: period 5's last 3 evaluations are epochs 5, 10 and 15 where period
1's are 13, 14 and 15, so a median of the last 3 puts period 5 a third of the training earlier.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from paired import COLUMNS, FINAL, compare

from fedsynth.metrics.intervals import mean_interval

MODALITIES = {"xray": "phantom-xray", "ct": "phantom-ct", "histo": "phantom-histo"}
VARIANTS = ["period1", "period3", "period5", "local", "centralized"]
PAIRS = [("period1", "period3"), ("period1", "period5"), ("period3", "period5"), ("period1", "local"),
         ("period1", "centralized"), ("period3", "centralized"), ("period5", "centralized"), ("local", "centralized")]


def cell(rows: list[dict[str, str]], variant: str, column: str) -> str:
    vals = [float(r[column]) for r in rows if r["variant"] == variant and r.get(column, "") not in ("", None)]
    if not vals:
        return "—"
    iv = mean_interval(vals)
    digits = 3 if iv.mean < 10 else 1
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]" if iv.known else f"{iv.mean:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--second", action="store_true", help="the second feature network's scores")
    ap.add_argument("--final", action="store_true", help="the last evaluation instead of the median of the last k")
    args = ap.parse_args()
    with open(args.sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    column = {(False, False): "last_k_median", (True, False): "second_last_k_median",
              (False, True): "global_fd", (True, True): "second_final"}[(args.second, args.final)]
    print("| modality | " + " | ".join(VARIANTS) + " |\n|" + " --- |" * (len(VARIANTS) + 1))
    for short, name in MODALITIES.items():
        print(f"| {name} | " + " | ".join(cell(rows, f"{short}-{v}", column) for v in VARIANTS) + " |")
    print("\n| modality | A / B | network | ratio A/B [95 % interval] | verdict |\n| --- | --- | --- | --- | --- |")
    for short, name in MODALITIES.items():
        for a, b in PAIRS:
            for net, ratio, say in compare(rows, f"{short}-{a}", f"{short}-{b}", FINAL if args.final else COLUMNS):
                print(f"| {name} | {a} / {b} | {net} | {ratio} | {say.replace(short + '-', '')} |")


if __name__ == "__main__":
    main()
