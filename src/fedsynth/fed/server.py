"""The server's round, the same code in every engine.

:func:`server_round` takes the updates of the clients that answered and turns them into the
next global model: validation (a bad update is rejected and recorded, never aggregated), the
``fed.min-clients`` rule, the strategy's aggregation (wrapped by a robust rule or client-level
DP: :func:`fedsynth.fed.strategies.strategy_from_config`), the accounting those wrappers
report, the clients' mean of the layers they keep local (for evaluation only, where the server
can see them), training on data the server holds itself (``fed.server-data``:
:class:`ServerTrainer`, through the model interface's ``train``), and the EMA of the global weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..updates import ClientUpdate, State, weighted_average
from ..utils import derive_seed, torch_generator

Record = dict[str, Any]


@dataclass
class ServerState:
    """What the server holds between rounds (besides the strategy's own state)."""

    global_state: State | None            # None where clients keep their own models (local, ensemble)
    ema_state: State | None = None
    # fed.server-data: the layers the server keeps for its own training (those that do not travel,
    # e.g. its own discriminator under fed.share = ["G"]) and its optimizer state
    own: State | None = None
    own_opt: dict[str, Any] | None = None

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the server's own training (nothing when it trains none)."""
        return {} if self.own is None else {"server-training": {"own": self.own, "opt": self.own_opt}}

    def load_training_state(self, ck: dict[str, Any]) -> None:
        if "server-training" in ck:
            self.own, self.own_opt = ck["server-training"]["own"], ck["server-training"]["opt"]

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
                 travel: set[str], sample_rate: float, kept_local: dict[str, tuple[State, int]] | None = None,
                 trainer: "ServerTrainer | None" = None) -> ServerRound:
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
    trainer : ServerTrainer, optional
        Trains the aggregated model on the server's own data (``fed.server-data``).
    """
    recs: list[Record] = []
    warnings: list[str] = []
    ups = list(updates)
    if strategy.aggregates and cfg.privacy.validate and not strategy.sequential:
        from ..privacy.validation import validate_updates
        ups, rejected = validate_updates(ups, state.global_state, travel, cfg.privacy.outlier_factor)
        for cid, reason in rejected:
            recs.append({"round": r, "client": cid, "metric": "rejected", "value": 1, "reason": reason})
            warnings.append(f"round {r}: update of site {cid} rejected: {reason}")
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
        ids = sorted(u.client_id for u in ups if u.client_id in (kept_local or {}))
        if ids:  # evaluation only: the clients' mean of what they keep local (those of the server's architecture)
            state.global_state.update(weighted_average([kept_local[i][0] for i in ids],
                                                       [kept_local[i][1] for i in ids]))
        if trainer is not None:
            recs += trainer.train(state, r)
        if cfg.fed.ema > 0:
            state.ema_state = ema(state.ema_state or state.global_state, state.global_state, cfg.fed.ema)
    return ServerRound(recs, warnings, aggregate)


def ema(prev: State, new: State, beta: float) -> State:
    """``beta * prev + (1 - beta) * new`` for floating tensors (in float64); buffers follow ``new``."""
    return {k: (beta * prev[k].double() + (1 - beta) * v.double()).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in new.items()}


class ServerTrainer:
    """The server's own training (``fed.server-data``): after each aggregation, ``steps`` local
    steps of the global model on the server's images, through the model interface's ``train``
    -- what a client does, without strategy hooks. The weights that travel go into the global
    model; the others (under ``fed.share = ["G"]``, the server's own discriminator) stay in
    :attr:`ServerState.own`, with the server's optimizer state, so both engines agree and a
    resumed run continues exactly. Data order and latents come from ``(run seed,
    "server-train", round)``.
    """

    def __init__(self, model: Any, data: Any, steps: int, batch_size: int, seed: int, travel: set[str], source: str):
        self.model, self.data, self.steps, self.batch_size = model, data, steps, batch_size
        self.seed, self.travel, self.source = seed, travel, source

    def train(self, state: ServerState, r: int) -> list[Record]:
        g = state.global_state
        self.model.load({**g, **(state.own or {})}, state.own_opt)
        res = self.model.train(self.data, self.steps, self.batch_size, torch_generator(self.seed, "server-train", r))
        new = self.model.state()
        state.own_opt = self.model.opt_state()
        state.global_state = {k: (new[k] if k in self.travel else v) for k, v in g.items()}
        state.own = {k: new[k] for k in (state.own or {})}
        base = {"round": r, "client": "server"}
        return ([{**base, "metric": k, "value": v} for k, v in res.losses.items()]
                + [{**base, "metric": "server-steps", "value": res.steps, "images": res.images}])

    def describe(self) -> dict[str, Any]:
        """What partition.json says of the server's data."""
        return {"source": self.source, "images": len(self.data), "class_names": list(self.data.class_names),
                "class_counts": self.data.class_counts(),
                "steps": self.steps, "batch_size": self.batch_size}


def build_server_trainer(cfg: Any, model: Any, strategy: Any, travel: set[str], shape: tuple[int, int]
                         ) -> ServerTrainer | None:
    """The :class:`ServerTrainer` of ``fed.server-data`` (None when it is empty): its images
    loaded here -- on the machine the server runs on -- and preprocessed like the sites'
    (``[data]``, ``[preprocess]``); ``shape`` is the sites' ``(channels, side)``."""
    import dataclasses

    from ..config import UserError, server_source
    spec = server_source(cfg.fed.server_data)
    if spec is None:
        return None
    if not strategy.aggregates:
        raise UserError(f"config key 'fed.server-data': fed.strategy = '{cfg.fed.strategy}' keeps no global model "
                        f"for the server to train")
    from ..data import load_dataset
    from ..registry import SOURCES
    kind, path = spec
    n = cfg.fed.server_images
    phantom = SOURCES[kind].kind == "phantom"
    data_cfg = dataclasses.replace(cfg.data, source=kind, path=path, num_images=n or cfg.data.num_images,
                                   max_images=cfg.data.max_images if phantom else n, labels_csv="")
    # its own seed: a phantom the server holds is not the sites' images over again
    run = dataclasses.replace(cfg.run, seed=derive_seed(cfg.run.seed, "server-data") % 2 ** 31)
    try:
        data = load_dataset(dataclasses.replace(cfg, data=data_cfg, run=run))
    except UserError as e:
        raise UserError(f"config key 'fed.server-data' ({cfg.fed.server_data}): {e}") from None
    if (data.channels, data.size) != tuple(shape):
        raise UserError(f"config key 'fed.server-data': its images are {data.channels} channel(s) of {data.size} px, "
                        f"the sites' {shape[0]} of {shape[1]} px (set preprocess.channels)")
    if model.conditional and data.num_classes > model.num_classes:
        raise UserError(f"config key 'fed.server-data': {data.num_classes} classes, the sites' model has "
                        f"{model.num_classes}")
    return ServerTrainer(model, data, cfg.fed.server_steps, cfg.train.batch_size, cfg.run.seed, travel,
                         cfg.fed.server_data)
