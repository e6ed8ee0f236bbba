"""The server's round, the same code in every engine.

:func:`server_round` takes the updates of the clients that answered and turns them into the
next global model: validation (a bad update is rejected and recorded, never aggregated), the
``fed.min-clients`` rule, the strategy's aggregation (wrapped by a robust rule or client-level
DP: :func:`fedsynth.fed.strategies.strategy_from_config`), the accounting those wrappers
report, the clients' mean of the layers they keep local (for evaluation only, where the server
can see them), training on data the server holds itself (``fed.server-data``:
:class:`ServerTrainer`, through the model interface's ``train``) or on samples of the sites'
updated models (``fed.server-data = "sites"``: :class:`SiteSamples`, a FedDDPM-style server
correction), and the EMA of the global weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..updates import ClientUpdate, State, by_client, weighted_average
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
            recs += trainer.train(state, r, ups)
        if cfg.fed.ema > 0:
            state.ema_state = ema(state.ema_state or state.global_state, state.global_state, cfg.fed.ema)
    return ServerRound(recs, warnings, aggregate)


def ema(prev: State, new: State, beta: float) -> State:
    """``beta * prev + (1 - beta) * new`` for floating tensors (in float64); buffers follow ``new``."""
    return {k: (beta * prev[k].double() + (1 - beta) * v.double()).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in new.items()}


class HeldImages:
    """The server's images for :class:`ServerTrainer` when it holds data of its own
    (``fed.server-data`` names a source): the same images every round."""

    def __init__(self, data: Any, source: str):
        self.data, self.source = data, source

    def draw(self, state: ServerState, r: int, updates: Sequence[ClientUpdate]) -> tuple[Any, list[Record]]:
        return self.data, []

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": len(self.data), "class_names": list(self.data.class_names),
                "class_counts": self.data.class_counts()}


def proportional_shares(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split over ``weights`` in proportion, as whole numbers that sum to ``total``
    (largest remainders; ties to the earlier entry)."""
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = exact - out
    for i in sorted(range(len(w)), key=lambda i: (-rest[i], i))[: total - int(out.sum())]:
        out[i] += 1
    return out.tolist()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Samples in ``[-1, 1]`` as the ``uint8`` pixels an :class:`~fedsynth.data.ImageSet` holds
    (the inverse of ``ImageSet.batch``, rounded; values outside the range are clipped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


class SiteSamples:
    """The server's images for :class:`ServerTrainer` under ``fed.server-data = "sites"``: each
    round, ``n`` images generated by the sites' *updated* models, a FedDDPM-style server-side
    correction (Peng et al. 2025, "Federated Learning for Diffusion Models", arXiv:2503.06426:
    after each aggregation the server fine-tunes the global model on samples of the clients'
    models). The paper generates that auxiliary set once, from local models the clients train and
    upload before the federation; here it is redrawn every round from the updates the server
    aggregates, so nothing more is uploaded and the family need not be a diffusion model.

    The mixture is the sites' in proportion to their images: site ``k`` of the round's valid
    updates draws ``n_k`` of the ``n`` images (:func:`proportional_shares` of ``num_examples``),
    from its travelling weights over the aggregated global model (``{**global, **update}``: the
    layers a site keeps local are the global model's), through the family's own sampler. A
    conditional model draws each site's labels from that site's class counts, and the server
    trains with them. Latents and labels come from ``(run seed, "server-correction", round,
    site)``. Nothing more leaves a site: the server samples the weights it aggregated.

    The images are quantised to ``uint8`` like real images and ordered site by site (client-id
    order); ``provenance`` says which site drew how many.
    """

    source = "sites"

    def __init__(self, model: Any, n: int, seed: int, class_counts: Callable[[], dict[str, Sequence[int]]],
                 class_names: Sequence[str]):
        self.model, self.n, self.seed = model, n, seed
        self._counts, self._class_counts = None, class_counts
        self.class_names = tuple(class_names) if len(class_names) >= model.num_classes else \
            tuple(str(k) for k in range(model.num_classes))

    def counts(self) -> dict[str, Sequence[int]]:
        """Each site's images per class (asked of the pool once, when a conditional model needs them)."""
        if self._counts is None:
            self._counts = self._class_counts()
        return self._counts

    def labels(self, cid: str, n: int, g: torch.Generator) -> torch.Tensor | None:
        if not self.model.conditional:
            return None
        c = torch.zeros(self.model.num_classes, dtype=torch.float64)
        own = torch.as_tensor(list(self.counts()[cid]), dtype=torch.float64)[: len(c)]
        c[: len(own)] = own
        if c.sum() <= 0:  # a site with no class counts: classes in equal shares
            c[:] = 1.0
        return torch.multinomial(c, n, True, generator=g)

    def draw(self, state: ServerState, r: int, updates: Sequence[ClientUpdate]) -> tuple[Any, list[Record]]:
        from ..data import ImageSet
        ups = by_client(updates)
        shares = proportional_shares(self.n, [u.num_examples for u in ups])
        images, labels, drawn = [], [], {}
        for u, n in zip(ups, shares):
            drawn[u.client_id] = n
            if n == 0:
                continue
            g = torch_generator(self.seed, "server-correction", r, u.client_id)
            z = self.model.latents(n, g)
            y = self.labels(u.client_id, n, g)
            images.append(to_uint8(self.model.sample({**state.global_state, **u.weights}, z, y)))
            labels.append(np.zeros(n, dtype=np.int64) if y is None else y.numpy())
        data = ImageSet(np.concatenate(images), np.concatenate(labels), self.class_names, f"sites' samples, round {r}",
                        {"source": "sites", "round": r, "sites": drawn})
        return data, [{"round": r, "client": "server", "metric": "server-samples", "value": len(data), "sites": drawn}]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.n}


class ServerTrainer:
    """The server's own training (``fed.server-data``): after each aggregation, ``steps`` local
    steps of the global model on the server's images, through the model interface's ``train``
    -- what a client does, without strategy hooks. The images are ``images.draw(...)``'s: data the
    server holds (:class:`HeldImages`) or samples of the sites' updated models (:class:`SiteSamples`).
    The weights that travel go into the global model; the others (under ``fed.share = ["G"]``,
    the server's own discriminator) stay in :attr:`ServerState.own`, with the server's optimizer
    state, so both engines agree and a resumed run continues exactly. Data order and latents come
    from ``(run seed, "server-train", round)``.
    """

    def __init__(self, model: Any, images: HeldImages | SiteSamples, steps: int, batch_size: int, seed: int,
                 travel: set[str]):
        self.model, self.images, self.steps, self.batch_size = model, images, steps, batch_size
        self.seed, self.travel = seed, travel

    def train(self, state: ServerState, r: int, updates: Sequence[ClientUpdate] = ()) -> list[Record]:
        """Train the aggregated ``state`` in place; ``updates``: the round's valid updates (what
        :class:`SiteSamples` samples)."""
        data, recs = self.images.draw(state, r, updates)  # before loading: sampling uses the workspace
        g = state.global_state
        self.model.load({**g, **(state.own or {})}, state.own_opt)
        res = self.model.train(data, self.steps, self.batch_size, torch_generator(self.seed, "server-train", r))
        new = self.model.state()
        state.own_opt = self.model.opt_state()
        state.global_state = {k: (new[k] if k in self.travel else v) for k, v in g.items()}
        state.own = {k: new[k] for k in (state.own or {})}
        base = {"round": r, "client": "server"}
        return (recs + [{**base, "metric": k, "value": v} for k, v in res.losses.items()]
                + [{**base, "metric": "server-steps", "value": res.steps, "images": res.images}])

    def describe(self) -> dict[str, Any]:
        """What partition.json says of the server's data."""
        return {**self.images.describe(), "steps": self.steps, "batch_size": self.batch_size}


def build_server_trainer(cfg: Any, model: Any, strategy: Any, travel: set[str], shape: tuple[int, int],
                         class_counts: Callable[[], dict[str, Sequence[int]]] | None = None,
                         class_names: Sequence[str] = ()) -> ServerTrainer | None:
    """The :class:`ServerTrainer` of ``fed.server-data`` (None when it is empty): its images
    loaded here -- on the machine the server runs on -- and preprocessed like the sites'
    (``[data]``, ``[preprocess]``); ``shape`` is the sites' ``(channels, side)``. For
    ``"sites"`` (:class:`SiteSamples`), ``class_counts()`` gives each site's images per class
    (asked only for a conditional model) and ``class_names`` the sites' classes."""
    import dataclasses

    from ..config import SERVER_SITES, UserError, server_source
    spec = server_source(cfg.fed.server_data)
    if spec is None:
        return None
    if not strategy.aggregates:
        raise UserError(f"config key 'fed.server-data': fed.strategy = '{cfg.fed.strategy}' keeps no global model "
                        f"for the server to train")
    if spec[0] == SERVER_SITES:  # the strategies it cannot serve were refused with the config (_check_server_sites)
        n = cfg.fed.server_images or cfg.fed.server_steps * cfg.train.batch_size
        counts = class_counts or (lambda: {})
        return ServerTrainer(model, SiteSamples(model, n, cfg.run.seed, counts, class_names), cfg.fed.server_steps,
                             cfg.train.batch_size, cfg.run.seed, travel)
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
    return ServerTrainer(model, HeldImages(data, cfg.fed.server_data), cfg.fed.server_steps, cfg.train.batch_size,
                         cfg.run.seed, travel)
