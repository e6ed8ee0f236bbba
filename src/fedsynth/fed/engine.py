"""The in-process federated engine (the default: every client in this process, in turn).

One round::

    sample clients (seeded) -> each: load global weights + its optimizer state,
    train local epochs/steps, [evaluate its local model on its own data], share its weights
    -> strategy.aggregate(global, updates) -> [evaluate global on the union]
    -> metrics.jsonl, sample grid, checkpoint

Baselines run through the same loop: ``local`` (clients keep their own weights, nothing is
aggregated) and ``centralized`` (one client holding all data: federation of one).

Randomness: model init, client sampling, data order and latents all derive from
``(run seed, purpose, round, client)``, so two runs with one seed give identical weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..config import Config
from ..data import ImageSet
from ..metrics import build_extractor
from ..models import build_gan
from ..report import RunDir, plot_fd
from ..train import LocalTrainer, OptimConfig, build_loss, steps_per_epoch
from ..utils import derive_seed, numpy_rng, torch_generator
from .evaluation import Evaluator
from .strategies import ClientUpdate, State, build_strategy


class Reporter:
    """Progress hooks. The default does nothing; the CLI draws rich progress bars."""

    def run_start(self, rounds: int) -> None: ...
    def round_start(self, round_: int, clients: Sequence[str], total_steps: int) -> None: ...
    def step(self) -> None: ...
    def evaluating(self, what: str) -> None: ...
    def round_end(self, round_: int, records: list[dict[str, Any]]) -> None: ...


@dataclass
class ClientState:
    """Everything a client keeps between rounds (stays on its site)."""

    id: str
    data: ImageSet
    opt_state: dict[str, Any] | None = None
    weights: State | None = None        # only when the strategy keeps models local

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
    summary: dict[str, Any] = field(default_factory=dict)


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

    def __init__(self, cfg: Config, client_data: list[ImageSet], reporter: Reporter | None = None):
        self.cfg = cfg
        self.run_dir: RunDir | None = None
        self.reporter = reporter or Reporter()
        seed = cfg.run.seed
        if cfg.fed.strategy == "centralized":
            client_data = [ImageSet.concat(client_data, "pooled")]
            ids = ["pooled"]
        else:
            ids = [str(k) for k in range(len(client_data))]
        self.clients = {cid: ClientState(cid, d) for cid, d in zip(ids, client_data)}
        first = client_data[0]
        m = cfg.model
        self.model_spec = {"arch": m.arch, "image_size": first.size, "channels": first.channels,
                           "nz": m.nz, "ngf": m.ngf, "ndf": m.ndf, "class_names": list(first.class_names)}
        gan = build_gan(m.arch, first.size, first.channels, m.nz, m.ngf, m.ndf,
                        seed=derive_seed(seed, "init"))
        t = cfg.train
        self.trainer = LocalTrainer(gan, build_loss(t.loss), OptimConfig(t.lr_g, t.lr_d, (t.beta1, t.beta2)))
        self.strategy = build_strategy(cfg.fed.strategy, cfg.fed.weighted)
        self.global_state: State | None = self.trainer.weights()
        if not self.strategy.aggregates:
            for c in self.clients.values():
                c.weights = {k: v.clone() for k, v in self.global_state.items()}
            self.global_state = None
        self.extractor = build_extractor(cfg.eval.feature_extractor, cfg.eval.inception_weights)
        self.evaluator: Evaluator | None = None

    # ------------------------------------------------------------------ helpers
    def _steps(self, c: ClientState) -> int:
        f = self.cfg.fed
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

    def _save_grid(self, round_: int) -> None:
        if self.run_dir is None or self.evaluator is None:
            return
        ev, G = self.evaluator, self.trainer.gan.G
        if self.global_state is not None:
            G.load_state_dict({k[2:]: v for k, v in self.global_state.items() if k.startswith("G.")})
            imgs = ev.generate(G, ev.z_grid)
        else:  # local baseline: one block of rows per client
            blocks = []
            for c in self.clients.values():
                G.load_state_dict({k[2:]: v for k, v in c.weights.items() if k.startswith("G.")})
                blocks.append(ev.generate(G, ev.z_grid))
            imgs = torch.cat(blocks)
        self.run_dir.save_grid(round_, imgs, nrow=int(np.ceil(np.sqrt(len(ev.z_grid)))))

    def _evaluate_global(self, round_: int) -> list[dict[str, Any]]:
        if self.global_state is None:
            return []
        self.reporter.evaluating("global model")
        self.trainer.gan.load_state_dict(self.global_state)
        return self.evaluator.evaluate(self.trainer.gan.G, round_, "global", None)

    def checkpoint(self, round_: int) -> dict[str, Any]:
        return {
            "format": "fedsynth-checkpoint/1",
            "round": round_,
            "config": self.cfg.to_dict(),
            "model": self.model_spec,
            "global": self.global_state,
            "clients": {cid: {"opt_state": c.opt_state, "weights": c.weights}
                        for cid, c in self.clients.items()},
        }

    # ------------------------------------------------------------------ the run
    def run(self, run_dir: RunDir | None = None) -> RunResult:
        """Train all rounds; records, grids, checkpoints and plots go to ``run_dir`` if given."""
        cfg, seed = self.cfg, self.cfg.run.seed
        self.run_dir = run_dir
        self._records: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        rounds = cfg.fed.rounds
        to_eval = eval_rounds(rounds, cfg.eval.every)
        self.reporter.evaluating("real-data statistics")
        self.evaluator = Evaluator(cfg.eval, self.extractor,
                                   {cid: c.data for cid, c in self.clients.items()},
                                   cfg.model.nz, seed)
        self.reporter.run_start(rounds)

        # round 0: the initial model, before any training
        recs = self._evaluate_global(0)
        for cid, c in self.clients.items():
            self.trainer.gan.load_state_dict(c.weights if c.weights is not None else self.global_state)
            recs += self.evaluator.evaluate(self.trainer.gan.G, 0, cid, cid)
        self._log(recs)
        self._save_grid(0)
        self.reporter.round_end(0, recs)

        for r in range(1, rounds + 1):
            ids = sample_clients(list(self.clients), cfg.fed.fraction, cfg.fed.min_clients, seed, r)
            self.reporter.round_start(r, ids, sum(self._steps(self.clients[i]) for i in ids))
            updates, recs, timings = [], [], []
            for cid in ids:
                c = self.clients[cid]
                start = c.weights if c.weights is not None else self.global_state
                opt = None if cfg.train.reset_optimizer else c.opt_state
                self.trainer.load(start, opt)
                res = self.trainer.train(c.data, self._steps(c), cfg.train.batch_size,
                                         torch_generator(seed, "train", r, cid),
                                         on_step=lambda _s: self.reporter.step())
                c.opt_state = self.trainer.opt_state()
                weights = self.trainer.weights()
                if c.weights is not None:
                    c.weights = weights
                updates.append(ClientUpdate(cid, weights, c.n, {"d-loss": res.d_loss, "g-loss": res.g_loss}))
                base = {"round": r, "client": cid}
                recs += [{**base, "metric": "d-loss", "value": res.d_loss},
                         {**base, "metric": "g-loss", "value": res.g_loss}]
                timings.append({**base, "steps": res.steps, "images": res.images,
                                "seconds": res.seconds, "images_per_s": res.images / max(res.seconds, 1e-9)})
                if r in to_eval:
                    self.reporter.evaluating(f"client {cid}")
                    recs += self.evaluator.evaluate(self.trainer.gan.G, r, cid, cid)
            if self.strategy.aggregates:
                self.global_state = self.strategy.aggregate(self.global_state, updates)
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
