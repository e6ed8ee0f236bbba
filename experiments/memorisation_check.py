"""Does the memorisation audit catch a generator that copies its training images?

    .venv/bin/python experiments/memorisation_check.py [--steps 2000]

Two centralized DCGANs on phantom-histo at 32 px, the same number of steps:
* "over-trained": only 64 training images (the regime where GANs memorise);
* "normal": 2,000 training images.
Each is audited against its own training images and an equal number of held-out images
(another seed), and the verdicts are printed with the closest generated/training pairs.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedsynth.config import build_config
from fedsynth.data import load_dataset, make_phantom, partition_for
from fedsynth.fed import build_in_process
from fedsynth.privacy.audit import closest_pairs_image, memorisation_audit


def train(n_images: int, steps_per_round: int, rounds: int):
    cfg = build_config(overrides=["data.source=phantom-histo", "data.image-size=32", f"data.num-images={n_images}",
                                  "fed.strategy=centralized", f"fed.rounds={rounds}",
                                  f"fed.local-steps={steps_per_round}", "eval.every=0", "eval.num-samples=200",
                                  "eval.per-site=false"])
    data = load_dataset(cfg)
    run = build_in_process(cfg, partition_for(cfg, data))
    res = run.run()
    return run.model, res.global_state, data, cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="runs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| model | training images | steps | samples nearer a training image | median d(train)/d(held-out) | diversity | flagged |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, n in (("over-trained", 64), ("normal", 2000)):
        t0 = time.perf_counter()
        model, state, data, cfg = train(n, 50, args.steps // 50)
        train_x = data.batch()
        held = make_phantom("phantom-histo", n, 32, seed=777).batch()
        fake = model.sample(state, model.latents(500, torch.Generator().manual_seed(3)))
        a = memorisation_audit(fake, train_x if n <= 2000 else train_x[:n], held)
        closest_pairs_image(fake, train_x, a.closest, f"{args.out}/memorisation-{name}-closest-pairs.png")
        print(f"| {name} | {n} | {args.steps} | {a.nearer_train_fraction:.1%} | {a.median_ratio:.3f} | "
              f"{a.diversity_ratio:.2f} | {'YES' if a.flagged else 'no'} | ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
