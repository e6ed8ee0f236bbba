"""The in-process federated engine (the default: every client in this process, in turn).

One round::

    sample clients (seeded) -> each: start from the global weights (plus the keys it keeps
    local) and its own optimizer state, train local epochs/steps with the strategy's hooks,
    [evaluate its local model on its own data], send the keys that travel
    -> strategy.aggregate(global, updates) -> [evaluate the global model on the union]
    -> metrics.jsonl, sample grid, checkpoint

Baselines run through the same loop: ``local`` (clients keep their own weights) and
``centralized`` (one client holding all data: a federation of one). ``swt``/``cwt`` pass the
weights from client to client; ``ensemble`` samples from the mixture of local generators.

Randomness: model init, client sampling, data order and latents all derive from
``(run seed, purpose, round, client)``, so two runs with one seed give identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import Config, UserError
from ..data import ImageSet
from ..metrics import build_extractor
from ..models import ModelSpec, build_gan, norm_keys
from ..report import RunDir, plot_fd
from ..train import LocalTrainer, OptimConfig, build_loss, steps_per_epoch
from ..utils import derive_seed, numpy_rng, torch_generator
from .evaluation import Evaluator, sites_summary
from .strategies import ClientUpdate, State, build_strategy, shared_keys, weighted_average


class StopRun(Exception):
    """Raised at a step boundary after a stop was requested (Ctrl-C): the round in progress is
    dropped; the last checkpoint is the consistent state to resume from."""


class Reporter:
    """Progress hooks. The default does nothing; the CLI draws rich progress bars."""

    def run_start(self, rounds: int) -> None: ...
    def round_start(self, round_: int, clients: Sequence[str], total_steps: int) -> None: ...
    def step(self) -> None: ...
    def evaluating(self, what: str) -> None: ...
    def round_end(self, round_: int, records: list[dict[str, Any]]) -> None: ...
    def warning(self, text: str) -> None: ...


@dataclass
class ClientState:
    """Everything a client keeps between rounds (stays on its site)."""

    id: str
    data: ImageSet
    opt_state: dict[str, Any] | None = None
    weights: State | None = None        # whole model, when the strategy keeps models local
    local: State = field(default_factory=dict)   # keys that never travel (own D, own BN)
    strategy: dict[str, Any] = field(default_factory=dict)  # SCAFFOLD's c_i, FedDyn's g_i

    @property
    def n(self) -> int:
        return len(self.data)


@dataclass
class RunResult:
    records: list[dict[str, Any]]
    global_state: State | None
    client_states: dict[str, ClientState]
    rounds: int
    seconds: float
    metric: str
    extractor: str


def eval_rounds(rounds: int, every: int) -> set[int]:
    """Round 0 (before training), every ``every`` rounds, and always the last round."""
    out = {0, rounds}
    if every > 0:
        out.update(range(every, rounds + 1, every))
    return out


def sample_clients(ids: Sequence[str], fraction: float, min_clients: int, seed: int, round_: int) -> list[str]:
    k = len(ids)
    m = min(k, max(min_clients, int(round(fraction * k))))
    if m == k:
        return list(ids)
    pick = numpy_rng(seed, "sample-clients", round_).choice(k, m, replace=False)
    return [ids[i] for i in sorted(pick)]


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def load_init(path: str, template: State) -> State:
    """Global weights from a fedsynth checkpoint (or a bare state dict), checked against the model."""
    try:
        obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"config key 'fed.init-from': cannot read checkpoint {path}: {e.__class__.__name__}") from None
    state = obj.get("global") if isinstance(obj, dict) and "global" in obj else obj
    if not isinstance(state, dict) or state is None:
        raise UserError(f"config key 'fed.init-from': {path} holds no global weights")
    missing = set(template) - set(state)
    if missing:
        raise UserError(f"config key 'fed.init-from': {path} lacks {len(missing)} weight(s) of this "
                        f"model, e.g. '{sorted(missing)[0]}' (different architecture or options?)")
    for k, v in template.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(f"config key 'fed.init-from': {path}: '{k}' has shape {tuple(state[k].shape)}, "
                            f"this model needs {tuple(v.shape)}")
    return {k: state[k].to(v.dtype).clone() for k, v in template.items()}


def model_spec(cfg: Config, image_size: int, channels: int, num_classes: int) -> ModelSpec:
    """The GAN a config describes, for data of this size, channel count and number of classes."""
    m = cfg.model
    return ModelSpec(m.arch, image_size, channels, m.nz, m.ngf, m.ndf, m.g_norm, m.d_norm, m.spectral_norm,
                     num_classes, m.conditional, m.d_conditioning)


def strategy_for(cfg: Config):
    """The strategy ``[fed]`` names, with its parameters."""
    f, pv = cfg.fed, cfg.privacy
    strategy = build_strategy(f.strategy, f.weighted, f.mu, f.dyn_alpha, f.server_lr, f.server_momentum,
                              f.server_beta1, f.server_beta2, f.server_tau, f.server_bias_correction)
    if pv.robust != "none":
        strategy.robust = {"name": pv.robust, "trim": pv.trim, "byzantine": pv.byzantine, "clip_norm": pv.clip_norm}
    if pv.client_dp:
        strategy.client_dp = {"clip": pv.client_dp_clip, "noise": pv.client_dp_noise}
    return strategy


def setup_strategy(cfg: Config, strategy, gan: torch.nn.Module, init: State, n_clients: int) -> set[str]:
    """Set ``strategy`` up for ``gan`` and return the weights that travel: those ``fed.share``
    names, minus the normalisation layers of a strategy that keeps them local (FedBN)."""
    travel = shared_keys(list(init), cfg.fed.share)
    if strategy.keeps_norm_local:
        travel -= norm_keys(gan)
    if not travel and strategy.aggregates:
        raise UserError(f"config key 'fed.share' = {list(cfg.fed.share)} matches no weights: nothing would travel")
    strategy.setup(init, {k for k, _ in gan.named_parameters()} & travel, n_clients)
    return travel


def _g_only(state: State) -> State:
    return {k[2:]: v for k, v in state.items() if k.startswith("G.")}


class FederatedRun:
    """Runs one configured experiment in this process.

    Parameters
    ----------
    cfg : Config
        The validated run configuration.
    client_data : list[ImageSet]
        One data set per client (already partitioned).
    reporter : Reporter, optional
        Progress hooks.
    """

    def __init__(self, cfg: Config, client_data: list[ImageSet], reporter: Reporter | None = None,
                 client_ids: Sequence[str] | None = None, num_classes: int | None = None):
        self.cfg = cfg
        self.run_dir: RunDir | None = None
        self.reporter = reporter or Reporter()
        seed, f, t = cfg.run.seed, cfg.fed, cfg.train
        if f.strategy == "centralized":
            client_data = [ImageSet.concat(client_data, "pooled")]
            ids = ["pooled"]
        else:  # a Flower node passes its own id: seeds derive from it, as in-process
            ids = list(client_ids) if client_ids is not None else [str(k) for k in range(len(client_data))]
        self.clients = {cid: ClientState(cid, d) for cid, d in zip(ids, client_data)}
        first = client_data[0]
        num_classes = num_classes or max(d.num_classes for d in client_data)
        self.spec = model_spec(cfg, first.size, first.channels, num_classes)
        self.model_spec = {**self.spec.to_dict(), "class_names": list(first.class_names)}
        gan = build_gan(self.spec, seed=derive_seed(seed, "init"))
        loss = build_loss(t.loss, t.n_critic, t.gp_lambda, t.diffaugment, t.aux_weight)
        self.trainer = LocalTrainer(gan, loss, OptimConfig(t.lr_g, t.lr_d, (t.beta1, t.beta2)), t.channels_last)
        self.strategy = strategy_for(cfg)
        init = self.trainer.weights()
        if f.init_from:
            init = load_init(f.init_from, init)
        travel = setup_strategy(cfg, self.strategy, gan, init, len(self.clients))
        self.local_keys = [k for k in init if k not in travel]
        self.global_state: State | None = init
        for c in self.clients.values():
            c.local = {k: init[k].clone() for k in self.local_keys}
        if not self.strategy.aggregates:
            for c in self.clients.values():
                c.weights = {k: v.clone() for k, v in init.items()}
            self.global_state = None
        self.ema_state: State | None = None
        pv = cfg.privacy
        self.accountants: dict[str, Any] = {}
        if pv.dp_sgd or pv.client_dp:
            from ..privacy.dp import accountant
            self.accountants = {cid: accountant() for cid in (list(self.clients) if pv.dp_sgd else [])}
            if pv.client_dp:
                self.accountants["server"] = accountant()
        unknown = set(cfg.faults.attackers) - set(self.clients)
        if unknown:
            raise UserError(f"config key 'faults.attackers' names unknown client(s) {sorted(unknown)}; "
                            f"clients are {', '.join(self.clients)}")
        self.start_round = 1
        self.stop_requested = False
        self.extractor = build_extractor(cfg.eval.feature_extractor, cfg.eval.inception_weights)
        if t.channels_last:
            self.extractor = self.extractor.to(memory_format=torch.channels_last)
        self.evaluator: Evaluator | None = None
        self._records: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    def _steps(self, c: ClientState) -> int:
        f = self.cfg.fed
        if self.strategy.local_steps is not None:
            return self.strategy.local_steps
        if f.local_steps > 0:
            return f.local_steps
        return f.local_epochs * steps_per_epoch(c.n, self.cfg.train.batch_size)

    def _log(self, records: list[dict[str, Any]]) -> None:
        if self.run_dir is not None:
            self.run_dir.log(records)
        else:
            self._records.extend(records)

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.run_dir.records if self.run_dir is not None else self._records

    def _eval_state(self) -> State | None:
        """The global generator used for evaluation and samples (EMA if enabled)."""
        return self.ema_state if self.ema_state is not None else self.global_state

    def _load_G(self, state: State) -> torch.nn.Module:
        G = self.trainer.gan.G
        G.load_state_dict(_g_only(state))
        return G

    def _mixture_masks(self) -> list[tuple[ClientState, torch.Tensor]]:
        """Ensemble: each fixed latent is assigned to a client, with probability ~ its data."""
        n = torch.tensor([float(c.n) for c in self.clients.values()], dtype=torch.float64)
        pick = torch.multinomial(n, self.cfg.eval.num_samples, True,
                                 generator=torch_generator(self.cfg.run.seed, "ensemble-mixture"))
        return [(c, pick == i) for i, c in enumerate(self.clients.values())]

    def _save_grid(self, round_: int) -> None:
        if self.run_dir is None or self.evaluator is None:
            return
        ev = self.evaluator
        if self._eval_state() is not None:
            imgs = ev.grid(self._load_G(self._eval_state()))
        else:  # local / ensemble: one block of rows per client
            imgs = torch.cat([ev.grid(self._load_G(c.weights)) for c in self.clients.values()])
        self.run_dir.save_grid(round_, imgs, nrow=int(math.ceil(math.sqrt(len(ev.z_grid)))))

    def _evaluate_global(self, round_: int) -> list[dict[str, Any]]:
        ev = self.evaluator
        if self.strategy.name == "ensemble":
            self.reporter.evaluating("ensemble of local generators")
            feats = [ev.fake_features(self._load_G(c.weights), None, mask) for c, mask in self._mixture_masks()]
            return ev.score(np.concatenate(feats), round_, "global", None)
        if self._eval_state() is None:  # local baseline: each hospital's model on everyone's data
            recs = []
            for cid, c in self.clients.items():
                recs += ev.evaluate(self._load_G(c.weights), round_, cid, None)
            return recs
        self.reporter.evaluating("global model")
        G = self._load_G(self._eval_state())
        feats = ev.fake_features(G, None)
        recs = ev.score(feats, round_, "global", None)
        if self.cfg.eval.per_site and len(self.clients) > 1:
            recs += self._per_site(G, round_, None if ev.conditional else feats)
        return recs

    def _per_site(self, G: torch.nn.Module, round_: int, feats: np.ndarray | None) -> list[dict[str, Any]]:
        """Fairness: the global model on each client's own data, and the spread across sites.
        An unconditional model's samples do not depend on the site: one feature pass serves all."""
        ev, recs = self.evaluator, []
        for cid in self.clients:
            f = feats if feats is not None else ev.fake_features(G, cid)
            recs += ev.score(f, round_, "global", cid)
        return recs + sites_summary(recs, self.extractor, round_)

    def checkpoint(self, round_: int) -> dict[str, Any]:
        return {
            "format": "fedsynth-checkpoint/1",
            "round": round_,
            "config": self.cfg.to_dict(),
            "model": self.model_spec,
            "global": self.global_state,
            "ema": self.ema_state,
            "strategy": self.strategy.state_dict(),
            "clients": {cid: {"opt_state": c.opt_state, "weights": c.weights, "local": c.local,
                              "strategy": c.strategy} for cid, c in self.clients.items()},
            "accountants": {k: list(a.history) for k, a in self.accountants.items()},
        }

    def restore(self, ck: dict[str, Any]) -> None:
        """Continue from a checkpoint: everything random derives from (seed, round, client),
        so weights, optimizer, strategy and accountant state are all a resume needs."""
        if ck.get("format") != "fedsynth-checkpoint/1":
            raise UserError("not a fedsynth checkpoint")
        if ck["config"] != self.cfg.to_dict():
            raise UserError("the checkpoint was written with a different configuration")
        self.global_state, self.ema_state = ck["global"], ck.get("ema")
        self.strategy.load_state_dict(ck.get("strategy", {}))
        for cid, st in ck["clients"].items():
            c = self.clients[cid]
            c.opt_state, c.weights, c.local, c.strategy = st["opt_state"], st["weights"], st["local"], st["strategy"]
        for k, hist in ck.get("accountants", {}).items():
            self.accountants[k].history = list(hist)
        self.start_round = ck["round"] + 1

    # ------------------------------------------------------------------ one client
    def _fails(self, r: int, cid: str) -> bool:
        f = self.cfg.faults
        return f"{r}:{cid}" in f.dropout_schedule or (
            f.dropout > 0 and numpy_rng(self.cfg.run.seed, "dropout", r, cid).random() < f.dropout)

    def _on_step(self, _step: int) -> None:
        self.reporter.step()
        if self.stop_requested:
            raise StopRun()

    def _attack(self, r: int, up: ClientUpdate, start: State) -> None:
        """Simulated malicious client: rewrite what it sends (its own state is unchanged)."""
        kind, s = self.cfg.faults.attack, self.cfg.faults.attack_scale
        g = torch_generator(self.cfg.run.seed, "attack", r, up.client_id)
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

    def _train_client(self, r: int, c: ClientState, start: State) -> tuple[ClientUpdate | None, list[dict[str, Any]], dict]:
        cfg = self.cfg
        if c.weights is not None:
            start = c.weights
        elif self.local_keys:
            start = {**start, **c.local}
        opt = None if cfg.train.reset_optimizer else c.opt_state
        self.trainer.load(start, opt)
        hooks = self.strategy.client_hooks(c.strategy, start) if c.weights is None else []
        steps = self._steps(c)
        base = {"round": r, "client": c.id}
        if self._fails(r, c.id):  # dies halfway through: its work and state changes are lost
            self.trainer.train(c.data, max(1, steps // 2), cfg.train.batch_size,
                               torch_generator(cfg.run.seed, "train", r, c.id), on_step=self._on_step, hooks=hooks)
            return None, [{**base, "metric": "dropped", "value": 1}], {**base, "dropped": True}
        dp = None
        if cfg.privacy.dp_sgd:
            from ..privacy.dp import DPSGD
            dp = DPSGD(cfg.privacy.dp_clip, cfg.privacy.dp_noise, torch_generator(cfg.run.seed, "dp-noise", r, c.id))
        res = self.trainer.train(c.data, steps, cfg.train.batch_size,
                                 torch_generator(cfg.run.seed, "train", r, c.id),
                                 on_step=self._on_step, hooks=hooks, dp=dp)
        c.opt_state = self.trainer.opt_state()
        new = self.trainer.weights()
        extra = {}
        if c.weights is not None:
            c.weights = new
        else:
            extra = self.strategy.after_local(c.strategy, start, new, res.steps,
                                              {"G": cfg.train.lr_g, "D": cfg.train.lr_d})
            c.local = {k: new[k] for k in self.local_keys}
        sent = {k: v for k, v in new.items() if k not in c.local} if c.weights is None else {}
        up = ClientUpdate(c.id, sent, c.n, {"d-loss": res.d_loss, "g-loss": res.g_loss}, res.steps, extra)
        if cfg.faults.attack != "none" and c.id in cfg.faults.attackers and c.weights is None:
            self._attack(r, up, start)
        recs = [{**base, "metric": "d-loss", "value": res.d_loss},
                {**base, "metric": "g-loss", "value": res.g_loss},
                {**base, "metric": "bytes-sent", "value": state_bytes(sent) + state_bytes(extra)}]
        if dp is not None:
            acc = self.accountants[c.id]
            q = min(1.0, cfg.train.batch_size / c.n)
            for _ in range(res.steps * self.trainer.loss.n_critic):
                acc.step(noise_multiplier=cfg.privacy.dp_noise, sample_rate=q)
            recs.append({**base, "metric": "dp-epsilon", "value": float(acc.get_epsilon(cfg.privacy.dp_delta)),
                         "delta": cfg.privacy.dp_delta})
        timing = {**base, "steps": res.steps, "images": res.images, "seconds": res.seconds,
                  "images_per_s": res.images / max(res.seconds, 1e-9)}
        return up, recs, timing

    def _round_clients(self, r: int) -> list[str]:
        ids, f = list(self.clients), self.cfg.fed
        if self.strategy.sequential and not self.strategy.cyclic:  # swt: one block of rounds per client
            per = math.ceil(f.rounds / len(ids))
            return [ids[min((r - 1) // per, len(ids) - 1)]]
        return sample_clients(ids, f.fraction, f.min_clients, self.cfg.run.seed, r)

    # ------------------------------------------------------------------ the run
    def run(self, run_dir: RunDir | None = None) -> RunResult:
        """Train all rounds; records, grids, checkpoints and plots go to ``run_dir`` if given."""
        cfg, seed = self.cfg, self.cfg.run.seed
        self.run_dir = run_dir
        t_start = time.perf_counter()
        rounds = cfg.fed.rounds
        to_eval = eval_rounds(rounds, cfg.eval.every) if cfg.eval.enabled else set()
        if cfg.eval.enabled:
            self.reporter.evaluating("real-data statistics")
            self.evaluator = Evaluator(cfg.eval, self.extractor,
                                       {cid: c.data for cid, c in self.clients.items()},
                                       cfg.model.nz, seed, conditional=cfg.model.conditional != "none")
        self.reporter.run_start(rounds)

        if self.start_round == 1 and cfg.eval.enabled:  # round 0: the model before any training
            recs = self._evaluate_global(0) if self.strategy.aggregates or self.strategy.name == "ensemble" else []
            for cid, c in self.clients.items():
                start = c.weights if c.weights is not None else {**self.global_state, **c.local}
                recs += self.evaluator.evaluate(self._load_G(start), 0, cid, cid)
            if not self.strategy.aggregates and self.strategy.name != "ensemble":
                recs += self._evaluate_global(0)
            self._log(recs)
            self._save_grid(0)
            self.reporter.round_end(0, recs)

        for r in range(self.start_round, rounds + 1):
            ids = self._round_clients(r)
            self.reporter.round_start(r, ids, sum(self._steps(self.clients[i]) for i in ids))
            updates, recs, timings = [], [], []
            start = self.global_state
            for cid in ids:
                up, rec, timing = self._train_client(r, self.clients[cid], start)
                recs += rec
                timings.append(timing)
                if up is None:
                    self.reporter.warning(f"round {r}: client {cid} dropped out")
                    continue
                updates.append(up)
                if r in to_eval:
                    self.reporter.evaluating(f"client {cid}")
                    recs += self.evaluator.evaluate(self.trainer.gan.G, r, cid, cid)
                if self.strategy.sequential:  # the next client starts where this one ended
                    start = {**start, **up.weights}
            if self.strategy.aggregates and cfg.privacy.validate and not self.strategy.sequential:
                from ..privacy.validation import validate_updates
                shared = set(self.global_state) - set(self.local_keys)
                updates, rejected = validate_updates(updates, self.global_state, shared, cfg.privacy.outlier_factor)
                for cid, reason in rejected:
                    recs.append({"round": r, "client": cid, "metric": "rejected", "value": 1, "reason": reason})
                    self.reporter.warning(f"round {r}: update of client {cid} rejected: {reason}")
            aggregate = self.strategy.aggregates
            if aggregate and len(updates) < cfg.fed.min_clients:
                aggregate = False
                recs.append({"round": r, "client": "server", "metric": "round-skipped", "value": 1,
                             "reason": f"{len(updates)} valid update(s), fed.min-clients = {cfg.fed.min_clients}"})
                self.reporter.warning(f"round {r} skipped: only {len(updates)} valid update(s)")
            if aggregate:
                self.strategy.noise_generator = torch_generator(seed, "client-dp-noise", r)
                self.global_state = self.strategy.aggregate(self.global_state, updates)
                if cfg.privacy.client_dp:
                    acc = self.accountants["server"]
                    acc.step(noise_multiplier=cfg.privacy.client_dp_noise, sample_rate=len(ids) / len(self.clients))
                    recs.append({"round": r, "client": "server", "metric": "client-dp-epsilon",
                                 "value": float(acc.get_epsilon(cfg.privacy.dp_delta)), "delta": cfg.privacy.dp_delta})
                if self.local_keys and updates:  # evaluation only: the clients' mean of what they keep local
                    ups = sorted(u.client_id for u in updates)
                    self.global_state.update(weighted_average(
                        [self.clients[i].local for i in ups], [self.clients[i].n for i in ups]))
                if cfg.fed.ema > 0:
                    b = cfg.fed.ema
                    prev = self.ema_state or self.global_state
                    self.ema_state = {k: (b * prev[k].double() + (1 - b) * v.double()).to(v.dtype)
                                      if v.is_floating_point() else v.clone()
                                      for k, v in self.global_state.items()}
            if r in to_eval:
                recs += self._evaluate_global(r)
                self._save_grid(r)
            self._log(recs)
            if self.run_dir is not None:
                self.run_dir.log_timing(timings)
                self.run_dir.save_checkpoint(r, self.checkpoint(r), cfg.run.keep_checkpoints)
            if self.run_dir is not None and r in to_eval:
                plot_fd(self.records, self.run_dir.path / "fd.png",
                        title=f"{cfg.data.source} · {cfg.fed.strategy} · {len(self.clients)} client(s)")
            self.reporter.round_end(r, recs)

        return RunResult(self.records, self.global_state, self.clients, rounds,
                         time.perf_counter() - t_start, self.extractor.metric, self.extractor.name)
