"""Two image sets compared with every metric fedsynth has: the chain features -> statistics ->
distance, plus precision/recall/density/coverage, sliced Wasserstein and diversity."""

from __future__ import annotations

from typing import Any

import torch

from .features import FeatureExtractor
from .prdc import prdc, prdc_scales
from .stats import FeatureStats, fd_from_stats, kernel_inception_distance
from .swd import sliced_wasserstein


def compare_images(real: torch.Tensor, fake: torch.Tensor, extractor: FeatureExtractor, seed: int = 0) -> dict[str, Any]:
    """Images in [-1, 1] ``(N, C, H, W)``. Every number names the extractor that made it."""
    fr, ff = extractor.extract(real).double().numpy(), extractor.extract(fake).double().numpy()
    res: dict[str, Any] = {"extractor": extractor.name, "num_real": len(real), "num_fake": len(fake),
                           extractor.metric: fd_from_stats(FeatureStats.of(fr), FeatureStats.of(ff))}
    m = min(100, len(fr), len(ff))
    if m >= 2:
        res[extractor.kid_metric] = kernel_inception_distance(fr, ff, 50, m, seed)[0]
    if min(len(fr), len(ff)) > 5:
        res.update(prdc(fr, ff, k=5))
        res.update(prdc_scales(fr, ff, k=5))
    res.update(sliced_wasserstein(real, fake, seed=seed))
    return res
