"""Two image sets compared with every metric fedsynth has: the chain features -> statistics ->
distance, plus precision/recall/density/coverage, sliced Wasserstein and diversity."""

from __future__ import annotations

from typing import Any

import torch

from .features import FeatureExtractor
from .planes import block_distances, plane_blocks
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


def compare_volumes(real: torch.Tensor, fake: torch.Tensor, extractor: FeatureExtractor, seed: int = 0) -> dict[str, Any]:
    """Volumes in [-1, 1] ``(N, C, D, H, W)``, scored as a run scores them (2.5-D, the protocol
    MAISI reports): through ``extractor`` (a :class:`fedsynth.metrics.features.PlaneFeatures`),
    per plane (``xy``, ``yz``, ``zx``) the Fréchet distance and KID of the slices' features --
    ``<fd metric>-plane-<plane>`` -- and their means as the headline ``<fd metric>`` and
    ``<kid metric>``, as in a run's records. Every number names the extractor that made it."""
    fr, ff = extractor.extract(real).double().numpy(), extractor.extract(fake).double().numpy()
    sr, sf = FeatureStats.of(fr), FeatureStats.of(ff)
    res: dict[str, Any] = {"extractor": extractor.name, "num_real": len(real), "num_fake": len(fake),
                           "slices_real": len(fr), "slices_fake": len(ff)}
    m = min(100, len(fr), len(ff))
    blocks = plane_blocks(extractor)
    fds = block_distances([(sf.mean[cols], sf.cov[cols, cols], None) for _, cols in blocks], blocks, sr)
    kids = []
    for (plane, cols), fd in zip(blocks, fds):
        res[f"{extractor.metric}-plane-{plane}"] = fd
        if m >= 2:
            kids.append(kernel_inception_distance(fr[:, cols], ff[:, cols], 50, m, seed)[0])
            res[f"{extractor.kid_metric}-plane-{plane}"] = kids[-1]
    res[extractor.metric] = sum(fds) / len(fds)
    if kids:
        res[extractor.kid_metric] = sum(kids) / len(kids)
    return res
