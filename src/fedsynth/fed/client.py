"""One client's round, the same code in every engine.

:func:`client_round` is what a hospital does with the global weights it receives: start from
them (plus the layers it keeps local, or from its own model where the strategy never
aggregates), train local steps with its own optimizer state and the strategy's hooks (under
DP-SGD if configured), update its strategy state, and send the weights that travel. The
in-process engine calls it for each sampled client; a Flower node calls it for the one client
it is (:mod:`fedsynth.fed.flower.node`).

Randomness: data order, latents, drop-outs, attacks and DP noise all derive from
``(run seed, purpose, round, client id)``, so a client's round is the same in any process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..data import ImageSet
from ..models import GenerativeModel
from ..train import steps_per_epoch
from ..updates import ClientUpdate, State, shared_keys
from ..utils import numpy_rng, plural, torch_generator

Record = dict[str, Any]


@dataclass
class ClientState:
    """Everything a client keeps between rounds (it stays on its site)."""

    id: str
    data: ImageSet
    opt_state: dict[str, Any] | None = None
    weights: State | None = None        # whole model, when the strategy keeps models local
    local: State = field(default_factory=dict)   # keys that never travel (own D, own BN)
    strategy: dict[str, Any] = field(default_factory=dict)  # SCAFFOLD's c_i, FedDyn's g_i
    dp_history: list = field(default_factory=list)         # DP-SGD accountant steps so far

    @property
    def n(self) -> int:
        return len(self.data)

    def saved(self) -> dict[str, Any]:
        """What a checkpoint (or a Flower node's disk) keeps of this client: never images."""
        return {"opt_state": self.opt_state, "weights": self.weights, "local": self.local,
                "strategy": self.strategy, "dp_history": self.dp_history}

    def restore(self, saved: dict[str, Any]) -> None:
        self.opt_state, self.weights, self.local = saved["opt_state"], saved["weights"], saved["local"]
        self.strategy, self.dp_history = saved["strategy"], list(saved.get("dp_history", []))


@dataclass
class ClientSetup:
    """What every client round of a run shares within one process: the configuration, the
    model workspace, the strategy (with the server's state as last received) and the keys
    that never leave a site."""

    cfg: Any
    model: GenerativeModel
    strategy: Any
    local_keys: list[str]
    # the keys that travel, where the site's model differs from the server's ([sites.<id>]): the
    # global weights it receives also hold the server's own versions of the kept layers
    travel: set[str] | None = None

    def new_client(self, cid: str, data: ImageSet, init: State) -> ClientState:
        """A client before its first round: the initial weights of the keys it keeps."""
        c = ClientState(cid, data, local={k: init[k].clone() for k in self.local_keys})
        if not self.strategy.aggregates:
            c.weights = {k: v.clone() for k, v in init.items()}
        return c


@dataclass
class ClientResult:
    """A client's round: its update (``None`` if it dropped out), records and timing."""

    client_id: str
    update: ClientUpdate | None
    records: list[Record]
    timing: dict[str, Any]


def travel_keys(cfg: Any, strategy: Any, model: GenerativeModel, keys: Any) -> set[str]:
    """The weights of ``model`` that travel: those ``fed.share`` names, minus the normalisation
    layers of a strategy that keeps them local (FedBN)."""
    travel = shared_keys(list(keys), cfg.fed.share)
    if strategy.keeps_norm_local:
        travel -= model.norm_keys()
    return travel


def setup_strategy(cfg: Any, strategy: Any, model: GenerativeModel, init: State, num_clients: int) -> set[str]:
    """Set ``strategy`` up for ``model`` and return the weights that travel (:func:`travel_keys`)."""
    from ..config import UserError
    travel = travel_keys(cfg, strategy, model, init)
    if not travel and strategy.aggregates:
        raise UserError(f"config key 'fed.share' = {list(cfg.fed.share)} matches no weights: nothing would travel")
    strategy.setup(init, model.parameter_keys() & travel, num_clients)
    strategy.attach(cfg, model)
    return travel


def check_shared(cid: str, settings: dict[str, Any], own: State, own_travel: set[str], reference: State,
                 travel: set[str]) -> None:
    """A site whose own settings (``settings``: its overrides) build a model must still send
    exactly the shared weights everyone else sends: the same keys, shapes and dtypes as the
    server's ``reference`` (its :data:`travel` keys). Raises a :class:`UserError` naming the site."""
    from ..config import UserError
    what = ", ".join(f"{k} = {v!r}" for k, v in settings.items()) or "the run's settings"
    bad = ""
    if own_travel != travel:
        k = sorted(own_travel ^ travel)[0]
        bad = f"'{k}' {'is missing here' if k in travel else 'would travel only from this site'}"
    else:
        for k in sorted(travel):
            a, b = own[k], reference[k]
            scalar = a.numel() == b.numel() == 1  # a 0-d buffer may arrive as shape (1,) (Flower's arrays)
            if (tuple(a.shape) != tuple(b.shape) and not scalar) or a.dtype != b.dtype:
                bad = f"'{k}' is {tuple(a.shape)} {a.dtype} here, {tuple(b.shape)} {b.dtype} on the server"
                break
    if bad:
        raise UserError(f"site {cid}: its settings ({what}) change the weights that travel: {bad}. Every site "
                        f"must build the shared part (fed.share) the same way; a site may change only what stays on it")


def site_init(own: State, init: State) -> State:
    """A site's starting weights for its own model: the run's initial weights wherever they fit
    (same key, shape and dtype -- also a ``fed.init-from`` checkpoint), else the site model's own."""
    return {k: (init[k] if k in init and init[k].shape == v.shape and init[k].dtype == v.dtype else v).clone()
            for k, v in own.items()}


class SiteWorkspaces:
    """The clients' set-ups in one process: each site's configuration (``[sites.<id>]``), on one
    model workspace per distinct model and training setup, so memory grows with the number of
    architectures, not of sites. A site that changes only its batch size, local epochs or DP keys
    shares the run's workspace (``model``).

    Parameters
    ----------
    cfg : Config
        The run's configuration.
    model : GenerativeModel
        The run's (the server's) workspace.
    build : callable
        ``site config -> GenerativeModel`` for a site whose model or training setup differs.
    """

    def __init__(self, cfg: Any, model: GenerativeModel, strategy: Any, travel: set[str], init: State,
                 build: Callable[[Any], GenerativeModel]):
        self.cfg, self.model, self.strategy, self.travel, self.init, self.build = cfg, model, strategy, travel, init, build
        self._models: dict[Any, GenerativeModel] = {self._key(cfg): model}
        self._setups: dict[str, ClientSetup] = {}
        self._inits: dict[str, State] = {}
        self.local_keys = [k for k in init if k not in travel]

    @staticmethod
    def _key(cfg: Any) -> Any:
        # what a workspace is built from: the model and its training setup, less the keys a client
        # round reads from its own setup (batch size, optimizer reset)
        import dataclasses
        return cfg.model, dataclasses.replace(cfg.train, batch_size=0, reset_optimizer=False), cfg.autoencoder

    def setup(self, cid: str) -> ClientSetup:
        if cid not in self._setups:
            site = self.cfg.for_site(cid)
            key = self._key(site)
            if key not in self._models:
                from ..config import UserError
                try:
                    self._models[key] = self.build(site)
                except UserError as e:
                    raise UserError(f"site {cid}: {e}") from None
            model = self._models[key]
            if model is self.model:
                self._setups[cid] = ClientSetup(site, model, self.strategy, self.local_keys)
                self._inits[cid] = self.init
            else:
                own = model.state()
                own_travel = travel_keys(site, self.strategy, model, own)
                check_shared(cid, self.cfg.site_overrides(cid), own, own_travel, self.init, self.travel)
                self._setups[cid] = ClientSetup(site, model, self.strategy, [k for k in own if k not in own_travel],
                                                own_travel)
                self._inits[cid] = site_init(own, self.init)
        return self._setups[cid]

    def new_client(self, cid: str, data: ImageSet) -> ClientState:
        return self.setup(cid).new_client(cid, data, self._inits[cid])

    def models(self) -> list[GenerativeModel]:
        return list(self._models.values())


def local_steps(cfg: Any, strategy: Any, n: int) -> int:
    """Local steps of a client with ``n`` images this round."""
    if strategy.local_steps is not None:
        return strategy.local_steps
    if cfg.fed.local_steps > 0:
        return cfg.fed.local_steps
    return max(cfg.fed.local_epochs * steps_per_epoch(n, cfg.train.batch_size), cfg.fed.min_local_steps)


def workload_notes(cfg: Any, strategy: Any, sizes: dict[str, int]) -> list[str]:
    """What a user should know before the rounds start about how much each client trains: sites
    whose data is repeated to reach ``fed.min-local-steps``, and settings that give so few
    steps a round that the model is unlikely to learn. ``sizes``: images per client."""
    if strategy.local_steps is not None or not sizes:  # the strategy fixes it (FedSGD: 1 step)
        return []
    from ..config import MIN_LOCAL_STEPS
    notes = []
    site = {cid: cfg.for_site(cid) for cid in sizes}  # a site may set its own batch size and epochs
    bss = {cid: site[cid].train.batch_size for cid in sizes}
    per_epoch = {cid: steps_per_epoch(n, bss[cid]) for cid, n in sizes.items()}
    steps = {cid: local_steps(site[cid], strategy, n) for cid, n in sizes.items()}
    def who(cids: list[str]) -> str:
        return f"site {cids[0]}" if len(cids) == 1 else f"{len(cids)} sites (e.g. site {cids[0]})"

    if cfg.fed.local_steps == 0:
        floored = sorted((cid for cid in sizes if steps[cid] > site[cid].fed.local_epochs * per_epoch[cid]), key=str)
        if floored:
            cid = floored[0]
            notes.append(f"{who(floored)}: {plural(sizes[cid], 'image')} at batch {bss[cid]} is "
                         f"{plural(per_epoch[cid], 'step')} per epoch; each round trains {steps[cid]} local "
                         f"steps (≈{steps[cid] / per_epoch[cid]:.0f} epochs, fed.min-local-steps)")
    few = sorted((cid for cid in sizes if steps[cid] < MIN_LOCAL_STEPS), key=str)
    if few:
        cid = few[0]
        key = "fed.local-steps" if cfg.fed.local_steps > 0 else "fed.min-local-steps"
        notes.append(f"{who(few)} train{'s' if len(few) == 1 else ''} only {plural(steps[cid], 'local step')} "
                     f"per round ({sizes[cid]} images, batch {bss[cid]}): a {'GAN' if cfg.model.family == 'gan' else 'model'} learns little from so "
                     f"few; "
                     f"set {key} to {MIN_LOCAL_STEPS} or more")
    return notes


def fails(cfg: Any, r: int, cid: str) -> bool:
    """Simulated drop-out: scheduled (``faults.dropout-schedule``) or drawn from the run seed."""
    f = cfg.faults
    return f"{r}:{cid}" in f.dropout_schedule or (
        f.dropout > 0 and numpy_rng(cfg.run.seed, "dropout", r, cid).random() < f.dropout)


def attack(cfg: Any, r: int, up: ClientUpdate, start: State) -> None:
    """Simulated malicious client: rewrite what it sends (its own state is unchanged)."""
    kind, s = cfg.faults.attack, cfg.faults.attack_scale
    g = torch_generator(cfg.run.seed, "attack", r, up.client_id)
    for k, v in up.weights.items():
        if not v.is_floating_point():
            continue
        d = v - start[k]
        if kind == "scale":
            up.weights[k] = start[k] + s * d
        elif kind == "sign-flip":
            up.weights[k] = start[k] - s * d
        elif kind == "random":
            up.weights[k] = start[k] + s * (d.std() + 1e-8) * torch.randn(v.shape, generator=g)
        elif kind == "nan":
            up.weights[k] = torch.full_like(v, float("nan"))


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def client_round(setup: ClientSetup, c: ClientState, r: int, start: State | None,
                 evaluator: Any = None, on_step: Callable[[int], None] | None = None,
                 on_evaluate: Callable[[], None] | None = None) -> ClientResult:
    """Client ``c``'s round ``r`` from the global weights ``start``.

    Parameters
    ----------
    evaluator : fedsynth.fed.evaluation.Evaluator, optional
        If given, the local model is scored against the client's own data after training.
    on_step : callable, optional
        Called after every local step (progress; may raise to stop the run).
    on_evaluate : callable, optional
        Called before the local model is scored (progress). The timing's ``eval_seconds`` is
        that scoring's wall-clock time, apart from the training's ``seconds``.
    """
    cfg, model, strategy = setup.cfg, setup.model, setup.strategy
    if c.weights is not None:
        start = c.weights
    elif setup.local_keys:
        start = {**(start if setup.travel is None else {k: start[k] for k in setup.travel}), **c.local}
    model.load(start, None if cfg.train.reset_optimizer else c.opt_state)
    hooks = strategy.client_hooks(c.strategy, start, r) if c.weights is None else []
    steps = local_steps(cfg, strategy, c.n)
    base = {"round": r, "client": c.id}
    gen = torch_generator(cfg.run.seed, "train", r, c.id)
    if fails(cfg, r, c.id):  # dies halfway through: its work and state changes are lost
        model.train(c.data, max(1, steps // 2), cfg.train.batch_size, gen, on_step=on_step, hooks=hooks)
        why = "simulated drop-out (faults.dropout-schedule / faults.dropout)"
        return ClientResult(c.id, None, [{**base, "metric": "dropped", "value": 1, "reason": why}],
                            {**base, "dropped": True})
    dp = None
    if cfg.privacy.dp_sgd:
        from ..privacy.dp import DPSGD
        dp = DPSGD(cfg.privacy.dp_clip, cfg.privacy.dp_noise, torch_generator(cfg.run.seed, "dp-noise", r, c.id))
    res = model.train(c.data, steps, cfg.train.batch_size, gen, on_step=on_step, hooks=hooks, dp=dp)
    c.opt_state = model.opt_state()
    new = model.state()
    extra: State = {}
    if c.weights is not None:
        c.weights = new
    else:
        extra = strategy.after_local(c.strategy, start, new, res.steps, model.learning_rates())
        c.local = {k: new[k] for k in setup.local_keys}
    sent = {k: v for k, v in new.items() if k not in c.local} if c.weights is None else {}
    up = ClientUpdate(c.id, sent, c.n, dict(res.losses), res.steps, extra)
    if cfg.faults.attack != "none" and c.id in cfg.faults.attackers and c.weights is None:
        attack(cfg, r, up, start)
    prov = {"precision": model.precision} if model.precision != "fp32" else {}  # fp32 is implied
    recs = [{**base, "metric": k, "value": v, **prov} for k, v in res.losses.items()]
    recs.append({**base, "metric": "bytes-sent", "value": state_bytes(sent) + state_bytes(extra)})
    if dp is not None:
        from ..privacy.dp import account_dp_sgd
        q = min(1.0, cfg.train.batch_size / c.n)
        c.dp_history, eps = account_dp_sgd(c.dp_history, cfg.privacy.dp_noise, q, res.private_steps,
                                           cfg.privacy.dp_delta)
        recs.append({**base, "metric": "dp-epsilon", "value": eps, "delta": cfg.privacy.dp_delta})
    timing = {**base, "steps": res.steps, "images": res.images, "seconds": res.seconds,
              "images_per_s": res.images / max(res.seconds, 1e-9)}
    if evaluator is not None:
        if on_evaluate is not None:
            on_evaluate()
        t0 = time.perf_counter()
        recs += evaluator.for_model(model).evaluate(None, r, c.id, c.id)  # this site's own workspace
        timing["eval_seconds"] = time.perf_counter() - t0
    return ClientResult(c.id, up, recs, timing)
