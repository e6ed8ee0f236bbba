"""Robust aggregation rules, wrapped around any strategy (:class:`RobustAggregation`).

* coordinate-wise ``median`` (Yin et al. 2018);
* coordinate-wise ``trimmed-mean``: drop the ``trim`` fraction at each end (Yin et al. 2018);
* ``krum`` / ``multi-krum`` (Blanchard et al. 2017): the update(s) closest to their
  ``n - f - 2`` nearest neighbours, assuming at most ``f`` malicious clients;
* norm ``clip``: each update's change is scaled to at most a bound (the round's median norm by
  default), then weighted-averaged (Sun et al. 2019).
Integer buffers take the (rounded) median.

The rule replaces the plain mean *inside* the wrapped strategy: FedAvg returns it, a server
optimiser (FedAdam, ...) takes its difference from the global weights as the pseudo-gradient,
SCAFFOLD and FedDyn keep their own correction terms.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..registry import ROBUST_RULES
from ..updates import Average, ClientUpdate, State, StrategyWrapper, by_client, update_norm, weighted_average


def _stack(updates: Sequence[ClientUpdate], key: str) -> torch.Tensor:
    return torch.stack([u.weights[key].to(torch.float64) for u in updates])


def _cast(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x.round().to(ref.dtype) if not ref.is_floating_point() else x.to(ref.dtype)


def coordinate_median(updates: Sequence[ClientUpdate]) -> State:
    return {k: _cast(_stack(updates, k).quantile(0.5, dim=0), v) for k, v in updates[0].weights.items()}


def trimmed_mean(updates: Sequence[ClientUpdate], trim: float) -> State:
    n = len(updates)
    cut = min(int(trim * n), (n - 1) // 2)
    out = {}
    for k, v in updates[0].weights.items():
        s = _stack(updates, k).sort(dim=0).values
        out[k] = _cast(s[cut:n - cut].mean(dim=0), v)
    return out


def _flat_delta(u: ClientUpdate, global_state: State) -> torch.Tensor:
    return torch.cat([(v.double() - global_state[k].double()).flatten() for k, v in sorted(u.weights.items())
                      if v.is_floating_point()])


def krum(updates: Sequence[ClientUpdate], global_state: State, f: int, multi: bool) -> State:
    n = len(updates)
    if n < 3:
        return weighted_average([u.weights for u in updates], [u.num_examples for u in updates])
    x = torch.stack([_flat_delta(u, global_state) for u in updates])
    d = torch.cdist(x, x) ** 2
    m = max(1, n - f - 2)
    scores = torch.stack([d[i][torch.arange(n) != i].sort().values[:m].sum() for i in range(n)])
    order = torch.argsort(scores, stable=True)
    chosen = [updates[i] for i in order[: max(1, n - f) if multi else 1]]
    return weighted_average([u.weights for u in chosen], [u.num_examples for u in chosen])


def norm_clip(updates: Sequence[ClientUpdate], global_state: State, bound: float = 0.0) -> State:
    norms = torch.tensor([update_norm(u.weights, global_state) for u in updates])
    b = bound if bound > 0 else float(norms.median())
    clipped = []
    for u, nrm in zip(updates, norms.tolist()):
        s = min(1.0, b / nrm) if nrm > 0 else 1.0
        clipped.append({k: (global_state[k].double() + s * (v.double() - global_state[k].double())).to(v.dtype)
                        if v.is_floating_point() else v for k, v in u.weights.items()})
    return weighted_average(clipped, [u.num_examples for u in updates])


# The rules as registry.ROBUST_RULES loads them: (one update per client, global weights, the
# [privacy] options) -> the aggregated weights; each takes the options it needs.

def median_rule(ups: Sequence[ClientUpdate], global_state: State, *, trim: float, byzantine: int,
                clip_norm: float) -> State:
    return coordinate_median(ups)


def trimmed_mean_rule(ups: Sequence[ClientUpdate], global_state: State, *, trim: float, byzantine: int,
                      clip_norm: float) -> State:
    return trimmed_mean(ups, trim)


def krum_rule(ups: Sequence[ClientUpdate], global_state: State, *, trim: float, byzantine: int,
              clip_norm: float) -> State:
    return krum(ups, global_state, byzantine, multi=False)


def multi_krum_rule(ups: Sequence[ClientUpdate], global_state: State, *, trim: float, byzantine: int,
                    clip_norm: float) -> State:
    return krum(ups, global_state, byzantine, multi=True)


def clip_rule(ups: Sequence[ClientUpdate], global_state: State, *, trim: float, byzantine: int,
              clip_norm: float) -> State:
    return norm_clip(ups, global_state, clip_norm)


def robust_average(name: str, updates: Sequence[ClientUpdate], global_state: State, trim: float = 0.2,
                   byzantine: int = 1, clip_norm: float = 0.0) -> State:
    """The robust rule registered as ``name`` (:data:`fedsynth.registry.ROBUST_RULES`) applied to
    ``updates`` (merged per client first)."""
    if name not in RULES:
        raise ValueError(f"unknown robust aggregation {name!r}")
    return ROBUST_RULES.load(name)(by_client(updates), global_state, trim=trim, byzantine=byzantine,
                                   clip_norm=clip_norm)


class RobustAggregation(StrategyWrapper):
    """``inner`` with its mean replaced by a robust rule (``median``, ``trimmed-mean``,
    ``krum``, ``multi-krum``, ``clip``)."""

    def __init__(self, inner, rule: str, trim: float = 0.2, byzantine: int = 1, clip_norm: float = 0.0):
        super().__init__(inner)
        if rule not in RULES:
            raise ValueError(f"unknown robust aggregation {rule!r}")
        self.rule, self.trim, self.byzantine, self.clip_norm = rule, trim, byzantine, clip_norm

    def _average(self, global_state: State, updates) -> State:
        return robust_average(self.rule, updates, global_state, self.trim, self.byzantine, self.clip_norm)

    def aggregate(self, global_state, updates, rng=None, average: Average | None = None):
        return self.inner.aggregate(global_state, updates, rng=rng, average=self._average)


RULES = tuple(n for n in ROBUST_RULES if ROBUST_RULES[n].target)  # "none" is no rule: the plain mean
