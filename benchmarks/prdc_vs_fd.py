"""Why precision/recall/density/coverage can be 0 beside a small Frechet distance.

Real phantoms against (a) a second real set and (b) the same second set with small per-image
artefacts (pixel noise, a brightness shift). The k-NN balls precision uses have the radius of a
real image's distance to its k-th nearest real neighbour; on homogeneous images that radius is a
small fraction of the distance between two typical real images, so a small artefact on every
generated image puts it outside every ball, while the feature means and covariances -- all a
Frechet distance compares -- barely move. Prints measured numbers; run:

    OMP_NUM_THREADS=1 python benchmarks/prdc_vs_fd.py
"""

import torch

from fedsynth.data import make_phantom
from fedsynth.metrics import FeatureStats, build_extractor, fd_from_stats, prdc

torch.set_num_threads(1)
N, SIZE, K = 500, 64, 5
ext = build_extractor("random", "")
real = make_phantom("phantom-xray", N, SIZE, seed=0).batch()
other = make_phantom("phantom-xray", N, SIZE, seed=1).batch()
fr = ext.extract(real).double()
d = torch.cdist(fr, fr)
print(f"{N} phantom-xray images, {SIZE} px, {ext.name}")
print(f"real {K}-NN radius (median) {d.kthvalue(K + 1, dim=1).values.median():.3f}; "
      f"median distance between two real images {d.median():.3f}")
g = torch.Generator().manual_seed(0)
cases = [("second real set", other)]
cases += [(f"second set + pixel noise sd {s}", (other + s * torch.randn(other.shape, generator=g)).clamp(-1, 1))
          for s in (0.02, 0.05, 0.1)]
cases += [("second set, brightness +0.05", (other + 0.05).clamp(-1, 1))]
for name, x in cases:
    ff = ext.extract(x).double()
    fd = fd_from_stats(FeatureStats.of(fr.numpy()), FeatureStats.of(ff.numpy()))
    p = prdc(fr.numpy(), ff.numpy(), k=K)
    print(f"{name:32s} {ext.metric} {fd:7.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in p.items()))
