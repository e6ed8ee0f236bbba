"""What travels between a client and the server, and the pure maths over it.

Below both :mod:`fedsynth.fed` (strategies, rounds, engines) and :mod:`fedsynth.privacy`
(validation, robust rules, client-level DP), so neither has to import the other's internals:

* :data:`State` -- a state dict, ``{key: tensor}``;
* :class:`ClientUpdate` -- one client's weights that travel, its sample and step counts,
  scalar metrics and strategy extras (SCAFFOLD's control-variate change);
* :func:`weighted_average`, :func:`shared_keys`, :func:`update_norm` -- pure functions;
* :class:`StrategyWrapper` -- the base of wrappers that change how *any* strategy aggregates
  (robust rules, client-level DP), in the shape of Flower's
  ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

State = dict[str, torch.Tensor]

#: ``average(global_state, sorted_updates) -> State``: the mean a strategy builds on.
Average = Callable[[State, Sequence["ClientUpdate"]], State]


@dataclass
class ClientUpdate:
    """What one client sends after local training: weights and scalars only."""

    client_id: str
    weights: State
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 1
    extra: State = field(default_factory=dict)   # SCAFFOLD: the change of the client's control variate


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


def shared_keys(keys: Iterable[str], patterns: Sequence[str]) -> set[str]:
    """Keys that travel: ``"G"`` means every ``G.*`` key; other patterns are fnmatch patterns
    (``"D.features.*"``)."""
    out = set()
    for k in keys:
        for p in patterns:
            if k == p or k.startswith(p + ".") or fnmatchcase(k, p):
                out.add(k)
                break
    return out


def update_norm(update: State, global_state: State) -> float:
    """Euclidean distance of an update's floating-point tensors from the global weights."""
    return float(torch.sqrt(sum(((v.double() - global_state[k].double()) ** 2).sum()
                                for k, v in update.items() if v.is_floating_point())))


def by_client(updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """Updates in client-id order: the summation order, so arrival order never changes a bit."""
    return sorted(updates, key=lambda u: u.client_id)


class StrategyWrapper:
    """Delegates everything to ``inner`` (a :class:`fedsynth.fed.strategies.Strategy` or another
    wrapper); subclasses override :meth:`aggregate` (to pass their own ``average``) and, if they
    account for something, :meth:`round_records`."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # name, aggregates, client_hooks, setup, ...
        return getattr(self.inner, name)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], rng: torch.Generator | None = None,
                  average: Average | None = None) -> State:
        return self.inner.aggregate(global_state, updates, rng=rng, average=average)

    def round_records(self, round_: int, sample_rate: float) -> list[dict[str, Any]]:
        return self.inner.round_records(round_, sample_rate)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
