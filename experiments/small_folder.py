"""Does a small real folder learn with the defaults? Old per-round work vs the step floor.

    .venv/bin/python experiments/small_folder.py [--out runs/small-folder] [--rounds 6]
    .venv/bin/python experiments/small_folder.py --figure-only --out runs/small-folder

1. Builds a folder of 170 real images from a photograph that ships inside scikit-image
   (``skimage.data.retina``, CC0): 96 px grayscale tiles of the fundus (>= 95 % foreground,
   overlapping by half), 8-bit PNGs, as a small hospital export might be.
2. Runs ``fedsynth run`` on it twice at 32 px over 2 sites (85 images each, batch 32):
   ``old`` with ``fed.min-local-steps=0`` (one epoch = 2 local steps per round, the behaviour
   before the floor existed) and ``new`` with the defaults (30 local steps per round).
3. Writes ``small-folder.png``: the global model's Frechet distance per round for both, and
   both final sample grids side by side; prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def build_folder(out: Path, n: int = 170, tile: int = 96) -> Path:
    from skimage import data
    out.mkdir(parents=True, exist_ok=True)
    gray = (data.retina().astype(np.float32) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    k = 0
    for y in range(0, gray.shape[0] - tile + 1, tile // 2):
        for x in range(0, gray.shape[1] - tile + 1, tile // 2):
            t = gray[y:y + tile, x:x + tile]
            if (t > 20).mean() >= 0.95 and k < n:
                Image.fromarray(t).save(out / f"retina-{k:04d}.png")
                k += 1
    return out


def run(folder: Path, out: Path, rounds: int, extra: list[str]) -> None:
    from fedsynth.config import load_config
    from fedsynth.fed.run import run_experiment
    cfg = load_config(None, ["data.source=folder", f"data.path={folder}", "data.image-size=32",
                             f"fed.rounds={rounds}", *extra])
    run_experiment(cfg, out)


def curve(run_dir: Path) -> list[tuple[int, float]]:
    from fedsynth.registry import is_fd_metric
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sorted((r["round"], r["value"]) for r in recs
                  if r.get("client") == "global" and r.get("real") == "union" and is_fd_metric(r["metric"]))


def figure(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = {"old: one epoch a round (2 steps)": out / "old", "new: defaults (30 steps a round)": out / "new"}
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    print("| run | round 0 | " + " | ".join(f"round {r}" for r, _ in curve(out / "new")[1:]) + " |")
    for (label, d), img_ax in zip(runs.items(), ax[1:]):
        c = curve(d)
        ax[0].plot([r for r, _ in c], [v for _, v in c], marker="o", label=label)
        print(f"| {label} | " + " | ".join(f"{v:.3g}" for _, v in c) + " |")
        last = sorted((d / "samples").glob("round-*.png"))[-1]
        img_ax.imshow(Image.open(last), cmap="gray")
        img_ax.set_title(f"{label.split(':')[0]}: {last.stem}")
        img_ax.axis("off")
    ax[0].set(xlabel="round", ylabel="Fréchet distance (fd-random), global model", yscale="log",
              title="170 real retina tiles, 2 sites, 32 px")
    ax[0].xaxis.get_major_locator().set_params(integer=True)
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out / "small-folder.png", dpi=110)
    print(f"figure: {out / 'small-folder.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/small-folder"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--figure-only", action="store_true", help="only redraw from OUT/old and OUT/new")
    a = ap.parse_args()
    if not a.figure_only:
        folder = build_folder(a.out / "retina170")
        run(folder, a.out / "old", a.rounds, ["fed.min-local-steps=0"])
        run(folder, a.out / "new", a.rounds, [])
    figure(a.out)


if __name__ == "__main__":
    main()
