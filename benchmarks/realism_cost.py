"""What the realism score adds to an evaluation, measured side by side in one process: one
evaluation of the global model at the defaults (64 px, 1,000 samples, 2 sites x 1,000 real images,
fd-random) with and without it. Run: OMP_NUM_THREADS=1 python benchmarks/realism_cost.py"""
import os
import time

import torch

torch.set_num_threads(1)
os.environ.setdefault("FEDSYNTH_CACHE", "/tmp/fedsynth-realism-cost-cache")
from fedsynth.config import build_config
from fedsynth.data import load_dataset, partition_for
from fedsynth.fed import build_in_process
cfg = build_config(overrides=["eval.feature-extractor=random"])
parts = partition_for(cfg, load_dataset(cfg))
fed = build_in_process(cfg, parts)
ev, state = fed.evaluator, fed.server.released
t = time.perf_counter(); feats = ev.fake_features(state, None); t_feat = time.perf_counter() - t
t = time.perf_counter(); ev.score(feats, 1, "nobody", None); t_score = time.perf_counter() - t   # FD + KID, no realism
base = {"round": 1}
t = time.perf_counter(); ev.realism(feats, 1, base); t_first = time.perf_counter() - t             # + the real side, once
t = time.perf_counter(); ev.realism(feats, 2, base); t_next = time.perf_counter() - t
t = time.perf_counter(); ev.realism_extremes(state); t_ext = time.perf_counter() - t
print(f"samples+features {t_feat:.2f}s, FD+KID {t_score:.2f}s; realism first round {t_first:.2f}s "
      f"(incl. real radii once), later rounds {t_next:.2f}s, extremes image {t_ext:.2f}s; "
      f"later-round overhead {t_next / (t_feat + t_score):.1%} of this evaluation")
