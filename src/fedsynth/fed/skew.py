"""Strategies for sites whose data differ (label skew): FBN and FedCAR.

Both are FedAvg with one change to the server's aggregation; local training is untouched.

* :class:`FBN` -- federated BatchNorm statistics with the between-site variance (Guerraoui et
  al. 2024, "Overcoming the Challenges of Batch Normalization in Federated Learning",
  arXiv:2405.14670): each BatchNorm layer's ``running_var`` becomes the variance of the pooled
  data (law of total variance), not the mean of the sites' variances.
* :class:`FedCAR` -- aggregation weights from what the sites generate (Kim, Kim & Jeong 2024,
  "FedCAR: Cross-client Adaptive Re-weighting for Generative Models in Federated Learning",
  arXiv:2412.11463): the server samples each site's generator, measures the Fréchet distance of
  its features to the consensus of all sites, and gives a site far from it less weight.

Neither needs anything but the weights the sites already send, so neither changes what the
server learns about a site. Both need each site's own update (not only their mean), so neither
runs under secure aggregation (:data:`fedsynth.registry.STRATEGIES`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..metrics.stats import FeatureStats, frechet_distance
from ..updates import ClientUpdate, State, by_client, weighted_average
from .strategies import FedAvg

__all__ = ["FBN", "FedCAR", "bn_layers", "pooled_bn_statistics", "consensus_distances", "fedcar_weights"]

MEAN, VAR = "running_mean", "running_var"


# ---------------------------------------------------------------- FBN

def bn_layers(keys: Any) -> list[str]:
    """Prefixes ``p`` of the layers with running statistics among ``keys``: both ``p.running_mean``
    and ``p.running_var`` present (BatchNorm 1d/2d/3d; GroupNorm and LayerNorm have none)."""
    keys = set(keys)
    return sorted(k[:-len(MEAN) - 1] for k in keys if k.endswith("." + MEAN) and k[:-len(MEAN)] + VAR in keys)


def _raise(state: Mapping[str, torch.Tensor], layers: Sequence[str]) -> State:
    """``state`` with each layer's ``running_var`` replaced by the raw second moment
    ``var + mean^2`` (both float64): the quantity whose weighted mean is the pooled one."""
    out = dict(state)
    for p in layers:
        m = state[f"{p}.{MEAN}"].to(torch.float64)
        out[f"{p}.{MEAN}"] = m
        out[f"{p}.{VAR}"] = state[f"{p}.{VAR}"].to(torch.float64) + m * m
    return out


def _lower(state: State, layers: Sequence[str], dtypes: Mapping[str, torch.dtype]) -> State:
    """The inverse of :func:`_raise` on an averaged state: ``var = E[x^2] - E[x]^2`` (clamped at
    0 against rounding), both statistics cast back to their dtypes."""
    out = dict(state)
    for p in layers:
        km, kv = f"{p}.{MEAN}", f"{p}.{VAR}"
        m = state[km].to(torch.float64)
        out[kv] = (state[kv].to(torch.float64) - m * m).clamp_min(0).to(dtypes[kv])
        out[km] = m.to(dtypes[km])
    return out


def pooled_bn_statistics(means: Sequence[torch.Tensor], variances: Sequence[torch.Tensor],
                         weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance of the pooled data from the sites' means, variances and sizes (the
    law of total variance): ``mean = sum_k p_k mean_k`` and ``var = sum_k p_k var_k + sum_k p_k
    (mean_k - mean)^2`` with ``p_k = w_k / sum w``. Exact for population (``1/n``) variances."""
    p = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    p = p / p.sum()
    mu = torch.stack([m.to(torch.float64) for m in means])          # (K, C)
    var = torch.stack([v.to(torch.float64) for v in variances])     # (K, C)
    mean = (p[:, None] * mu).sum(0)
    return mean, (p[:, None] * var).sum(0) + (p[:, None] * (mu - mean) ** 2).sum(0)


class FBN(FedAvg):
    """FedAvg whose BatchNorm running statistics are those of the pooled data: FBN, federated
    BatchNorm (Guerraoui et al. 2024, arXiv:2405.14670).

    FedAvg averages each site's ``running_var``: the mean *within-site* variance. Under label
    skew each site's features sit around its own class mix, so the union's variance also holds
    the spread of the sites' means, and FedAvg's statistics underestimate it: the global model
    normalises its activations with too small a variance. FBN adds the between-site term (law of
    total variance)::

        mean = sum_k p_k mean_k
        var  = sum_k p_k var_k + sum_k p_k (mean_k - mean)^2          p_k = n_k / sum n

    computed as ``E[x^2] - E[x]^2``: each update's ``running_var`` is raised to the raw second
    moment ``var_k + mean_k^2`` (float64), the strategy's usual mean (or a robust rule's, or
    client-level DP's, which then clip and perturb the same quantities) averages it, and the
    square of the averaged mean is taken off. Parameters and every other buffer are FedAvg's.
    With exact per-site statistics the result is the pooled data's mean and variance; PyTorch's
    running statistics are moving averages of batch statistics (with ``n/(n-1)`` per batch), so
    in training it is that estimate of the union's. Layers kept local (``fed.share``) are left alone.
    """

    name = "fbn"

    def aggregate(self, global_state, updates, rng=None, average=None):
        if not updates:
            return global_state
        ups = by_client(updates)
        layers = bn_layers(ups[0].weights)
        if not layers:
            return super().aggregate(global_state, ups, rng, average)
        dtypes = {k: global_state[k].dtype for p in layers for k in (f"{p}.{MEAN}", f"{p}.{VAR}")}
        raised = [ClientUpdate(u.client_id, _raise(u.weights, layers), u.num_examples, u.metrics, u.steps, u.extra)
                  for u in ups]
        # the global state is raised too, so a robust rule or client-level DP measures each
        # update's change in the same quantities
        new = super().aggregate(_raise(global_state, layers), raised, rng, average)
        return _lower(new, layers, dtypes)


# ---------------------------------------------------------------- FedCAR

def _moments(st: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population (``1/n``) covariance: the moments a mixture is built from."""
    mu = st.mean
    return mu, st.sum_outer / st.n - np.outer(mu, mu)


def consensus_distances(stats: Mapping[str, FeatureStats], weights: Mapping[str, float]) -> dict[str, float]:
    """Each site's Fréchet distance to the consensus: the mixture of every site's generated
    features, site ``k`` with share ``p_k = weights[k] / sum(weights)`` -- the distribution the
    sites' generators would make together, and the one a model of the pooled data should make.

    ``mean = sum_k p_k mean_k``, ``cov = sum_k p_k (cov_k + mean_k mean_k^T) - mean mean^T``
    (population covariances). One site: distance 0. A site whose features are not finite (a
    wrecked generator) stays out of the consensus and gets distance NaN."""
    mom = {c: _moments(stats[c]) for c in sorted(stats)}
    ids = [c for c in mom if np.isfinite(mom[c][0]).all() and np.isfinite(mom[c][1]).all()]
    if not ids:
        return {c: float("nan") for c in mom}
    total = float(sum(weights[c] for c in ids))
    mean = sum(weights[c] / total * mom[c][0] for c in ids)
    second = sum(weights[c] / total * (mom[c][1] + np.outer(mom[c][0], mom[c][0])) for c in ids)
    cov = second - np.outer(mean, mean)
    out = {}
    for c in mom:
        fd = frechet_distance(mom[c][0], mom[c][1], mean, cov)
        out[c] = max(0.0, fd) if math.isfinite(fd) else float("nan")  # rounding can give -1e-12
    return out


def fedcar_weights(distances: Mapping[str, float], counts: Mapping[str, float], temperature: float = 1.0,
                   mix: float = 0.5) -> dict[str, float]:
    """Aggregation weights (summing to 1) from the sites' distances to the consensus.

    ``w_k = (1 - mix) p_k + mix q_k`` with ``p_k = n_k / sum n`` (FedAvg's weight) and
    ``q_k ∝ p_k exp(-d_k / (temperature * median d))``: FedAvg's weights tilted away from the
    sites whose generators are far from the consensus. Dividing by the median distance makes
    ``temperature`` free of the feature network's scale (a site at the median distance keeps
    ``e^-1/temperature`` of its weight relative to one at distance 0); ``mix`` bounds the tilt
    (each site keeps at least ``1 - mix`` of its FedAvg weight). All distances equal (one site,
    or identical generators): FedAvg's weights. Non-finite distances (a wrecked generator) count
    as the largest finite one times 10."""
    ids = sorted(distances)
    n = np.array([float(counts[c]) for c in ids])
    p = n / n.sum()
    d = np.array([float(distances[c]) for c in ids])
    finite = np.isfinite(d)
    if not finite.all():
        d = np.where(finite, d, 10.0 * (d[finite].max() if finite.any() else 1.0))
    scale = float(np.median(d))
    if scale <= 0 or np.ptp(d) == 0:
        q = p
    else:
        z = -d / (temperature * scale)
        q = p * np.exp(z - z.max())   # softmax, shifted for stability
        q = q / q.sum()
    w = (1.0 - mix) * p + mix * q
    return dict(zip(ids, (w / w.sum()).tolist()))


class FedCAR(FedAvg):
    """FedAvg with aggregation weights from what the sites generate: FedCAR-style cross-client
    adaptive re-weighting (Kim, Kim & Jeong 2024, arXiv:2412.11463).

    Each round the server draws ``samples`` images from each site's updated generator (fixed
    latents, the same for every site and round; a conditional model draws the classes in equal
    shares), extracts features with a frozen, seeded random conv net (the ``random`` extractor,
    the same at every run with this seed), and keeps their mergeable moments
    (:class:`fedsynth.metrics.FeatureStats`). A site's distance ``d_k`` is the Fréchet distance
    of its moments to the consensus -- the sample-count-weighted mixture of all sites' moments
    (:func:`consensus_distances`) -- and the weights are :func:`fedcar_weights`. The paper, too,
    compares the images the clients' generators make rather than each client's FID; the exact
    weighting here (a tempered softmax of the distances, mixed with sample counts) is ours.

    What the server learns: nothing new. It samples from the generator weights each site sends
    under FedAvg anyway; no image and no statistic of real images leaves a site. It costs the
    server ``samples`` generated images and their features per site and round (the diffusion
    family: full sampling runs). Under label skew a site that holds a rare class is far from the
    consensus by design, and loses weight with it: compare against FedAvg before trusting it.

    Under a robust rule or client-level DP the wrapper's average replaces these weights.

    Parameters
    ----------
    samples : int
        Generated images per site and round (``fed.fedcar-samples``, default 256).
    temperature, mix : float
        Of :func:`fedcar_weights` (``fed.fedcar-temperature`` 1.0, ``fed.fedcar-mix`` 0.5).
    """

    name = "fedcar"

    def __init__(self, samples: int = 256, temperature: float = 1.0, mix: float = 0.5, **kw):
        super().__init__(**kw)
        self.samples, self.temperature, self.mix = samples, temperature, mix
        self.model: Any = None
        self.seed, self.dims = 0, 2
        self._extractor: Any = None
        self.last: dict[str, tuple[float, float]] = {}       # client id -> (distance, weight)

    @classmethod
    def from_config(cls, fed):
        return cls(fed.fedcar_samples, fed.fedcar_temperature, fed.fedcar_mix, weighted=fed.weighted)

    def attach(self, cfg, model):
        """The server samples the sites' generators in this process's model workspace."""
        self.model, self.seed, self.dims = model, cfg.run.seed, cfg.data.dims

    def _features(self):
        if self._extractor is None:
            from ..metrics.features import build_extractor
            from ..utils import derive_seed
            self._extractor = build_extractor("random", seed=derive_seed(self.seed, "fedcar-features") % 2 ** 31,
                                              dims=self.dims).to(self.model.device)
        return self._extractor

    def generated_statistics(self, state: State) -> FeatureStats:
        """Moments of the features of ``samples`` images from the generator in ``state``."""
        from ..utils import torch_generator
        model, ex = self.model, self._features()
        z = model.latents(self.samples, torch_generator(self.seed, "fedcar-latents"))
        y = torch.arange(self.samples) % model.num_classes if model.conditional else None
        st = FeatureStats.empty(ex.dims)
        for images in model.sample_batches(state, z, y):
            st.update(ex.extract(images))
        return st

    def round_weights(self, global_state: State, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """This round's weights (and, in :attr:`last`, each site's distance and weight)."""
        if self.model is None:
            raise RuntimeError("fedcar samples the sites' generators on the server: call attach(cfg, model) first")
        stats = {u.client_id: self.generated_statistics({**global_state, **u.weights}) for u in updates}
        counts = {u.client_id: float(u.num_examples) if self.weighted else 1.0 for u in updates}
        d = consensus_distances(stats, counts)
        w = fedcar_weights(d, counts, self.temperature, self.mix)
        self.last = {c: (d[c], w[c]) for c in w}
        return w

    def aggregate(self, global_state, updates, rng=None, average=None):
        """FedAvg with :meth:`round_weights`. A robust rule or client-level DP (``average``)
        replaces the weighted mean, and with it these weights (as it replaces FedAvg's counts)."""
        if not updates:
            return global_state
        ups = by_client(updates)
        if average is None and len(ups) > 1:
            w = self.round_weights(global_state, ups)
            average = lambda g, us: weighted_average([u.weights for u in us], [w[u.client_id] for u in us])  # noqa: E731
        return super().aggregate(global_state, ups, rng, average)

    def round_records(self, round_, sample_rate):
        out = super().round_records(round_, sample_rate)
        for c, (d, w) in sorted(self.last.items()):
            out += [{"round": round_, "client": c, "metric": "fedcar-distance", "value": d},
                    {"round": round_, "client": c, "metric": "fedcar-weight", "value": w}]
        self.last = {}
        return out
