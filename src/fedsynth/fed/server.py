"""The server's round, the same code in every engine.

:func:`server_round` takes the updates of the clients that answered and turns them into the
next global model: validation (a bad update is rejected and recorded, never aggregated), the
``fed.min-clients`` rule, the strategy's aggregation (wrapped by a robust rule or client-level
DP: :func:`fedsynth.fed.strategies.strategy_from_config`), the accounting those wrappers
report, the clients' mean of the layers they keep local (for evaluation only, where the server
can see them), and the EMA of the global weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..updates import ClientUpdate, State, weighted_average
from ..utils import torch_generator

Record = dict[str, Any]


@dataclass
class ServerState:
    """What the server holds between rounds (besides the strategy's own state)."""

    global_state: State | None            # None where clients keep their own models (local, ensemble)
    ema_state: State | None = None

    @property
    def released(self) -> State | None:
        """The global model evaluated and released: its EMA if one is kept."""
        return self.ema_state if self.ema_state is not None else self.global_state


@dataclass
class ServerRound:
    records: list[Record]
    warnings: list[str]
    aggregated: bool


def server_round(cfg: Any, strategy: Any, state: ServerState, r: int, updates: Sequence[ClientUpdate],
                 travel: set[str], sample_rate: float, kept_local: dict[str, tuple[State, int]] | None = None
                 ) -> ServerRound:
    """Aggregate round ``r``'s ``updates`` into ``state``.

    Parameters
    ----------
    travel : set of str
        The keys an update must carry (validation checks keys, shapes, dtypes and values).
    sample_rate : float
        Sampled clients / all clients (client-level DP's accountant).
    kept_local : dict, optional
        ``client id -> (its kept-local layers, its image count)``, where the server can see them
        (in-process): their mean completes the global model for evaluation.
    """
    recs: list[Record] = []
    warnings: list[str] = []
    ups = list(updates)
    if strategy.aggregates and cfg.privacy.validate and not strategy.sequential:
        from ..privacy.validation import validate_updates
        ups, rejected = validate_updates(ups, state.global_state, travel, cfg.privacy.outlier_factor)
        for cid, reason in rejected:
            recs.append({"round": r, "client": cid, "metric": "rejected", "value": 1, "reason": reason})
            warnings.append(f"round {r}: update of client {cid} rejected: {reason}")
    aggregate = strategy.aggregates
    if aggregate and len(ups) < cfg.fed.min_clients:
        aggregate = False
        recs.append({"round": r, "client": "server", "metric": "round-skipped", "value": 1,
                     "reason": f"{len(ups)} valid update(s), fed.min-clients = {cfg.fed.min_clients}"})
        warnings.append(f"round {r} skipped: only {len(ups)} valid update(s)")
    if aggregate:
        rng = torch_generator(cfg.run.seed, "client-dp-noise", r)
        state.global_state = strategy.aggregate(state.global_state, ups, rng=rng)
        recs += strategy.round_records(r, sample_rate)
        if kept_local and ups:  # evaluation only: the clients' mean of what they keep local
            ids = sorted(u.client_id for u in ups)
            state.global_state.update(weighted_average([kept_local[i][0] for i in ids],
                                                       [kept_local[i][1] for i in ids]))
        if cfg.fed.ema > 0:
            state.ema_state = ema(state.ema_state or state.global_state, state.global_state, cfg.fed.ema)
    return ServerRound(recs, warnings, aggregate)


def ema(prev: State, new: State, beta: float) -> State:
    """``beta * prev + (1 - beta) * new`` for floating tensors (in float64); buffers follow ``new``."""
    return {k: (beta * prev[k].double() + (1 - beta) * v.double()).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in new.items()}
