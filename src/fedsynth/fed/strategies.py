"""Aggregation strategies: pure functions over state dicts.

A strategy never sees images: it gets the current global weights and a list of
:class:`ClientUpdate` (the weights a client shares, its sample count and scalar metrics) and
returns new global weights. The maths lives in plain functions (:func:`weighted_average`) with
hand-computed tests; strategy classes only choose the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

State = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What one client sends after local training: weights and scalars only."""

    client_id: str
    weights: State
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """``sum_k w_k * state_k / sum_k w_k``, key by key.

    Floating tensors are accumulated in float64 and cast back to their dtype. Integer tensors
    (BatchNorm's ``num_batches_tracked``) get the weighted mean rounded to the nearest integer
    and keep their integer dtype. With one state the result equals it exactly.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights must sum to a positive number")
    keys = list(states[0].keys())
    for k, s in enumerate(states[1:], 1):
        if list(s.keys()) != keys:
            raise ValueError(f"state {k} has different keys from state 0")
    out: State = {}
    for key in keys:
        ref = states[0][key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[key].to(torch.float64) * (float(w) / total)
        out[key] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out


class Strategy:
    """Base class: ``aggregate(global_state, updates) -> new global state``."""

    name = "base"
    aggregates = True   # False for the 'local' baseline: clients keep their own weights

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        raise NotImplementedError


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017, arXiv:1602.05629) over every G and D
    parameter and BatchNorm buffer, weighted by client sample count (or unweighted).

    Updates are sorted by client id before summation, so the result is bit-identical
    whatever order the updates arrive in.
    """

    name = "fedavg"

    def __init__(self, weighted: bool = True):
        self.weighted = weighted

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        if not updates:
            return global_state
        ups = sorted(updates, key=lambda u: u.client_id)
        w = [u.num_examples if self.weighted else 1.0 for u in ups]
        return weighted_average([u.weights for u in ups], w)


class Local(Strategy):
    """Baseline: every client trains alone and never aggregates."""

    name = "local"
    aggregates = False

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        return global_state


def build_strategy(name: str, weighted: bool = True) -> Strategy:
    """``centralized`` is FedAvg over a single client holding all the data."""
    if name in ("fedavg", "centralized"):
        return FedAvg(weighted)
    if name == "local":
        return Local()
    raise ValueError(f"unknown strategy {name!r}")
