"""The round loop, written once, and the in-process engine (the default).

One round of :class:`Federation`::

    sample clients (seeded) -> the clients' rounds (client_round, wherever the clients are)
    -> server_round (validate, aggregate, wrappers' accounting, EMA)
    -> [evaluate: the global model against the union (merged moments) and each site]
    -> records, timings, sample grid, checkpoint (atomic) -> progress

Where the clients are is a :class:`ClientPool`: :class:`InProcessClients` runs every client
in this process in turn (baselines included: ``local`` clients keep their own models,
``centralized`` is one client holding all data, ``swt``/``cwt`` pass the weights from client to
client, ``ensemble`` samples from the mixture of local generators); the Flower adapter's pool
(:mod:`fedsynth.fed.flower.server_app`) sends the same work to hospital nodes. Both run
:func:`fedsynth.fed.client.client_round` for each client and this loop on the server.

Randomness: model init, client sampling, data order and latents all derive from
``(run seed, purpose, round, client)``, so two runs with one seed give identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import FORMAT as CHECKPOINT_FORMAT
from ..checkpoint import read_checkpoint_file
from ..config import EXTEND_KEYS, Config, UserError, without_hardware
from ..data import ImageSet
from ..metrics import build_extractor
from ..models import GenerativeModel, build_model
from ..train.device import set_deterministic, to_device
from ..updates import State
from ..utils import numpy_rng, torch_generator
from .client import (ClientResult, ClientState, SiteWorkspaces, client_round, local_steps, setup_strategy,
                     workload_notes)
from .evaluation import Evaluator, holdout_statistics, sites_summary, site_statistics
from .server import ServerState, build_server_trainer, server_round
from .strategies import strategy_from_config

Record = dict[str, Any]
PLOT_EVERY = 5  # fd.png is redrawn every this many rounds and at the last (a plot costs ~0.5 s of CPU)


class StopRun(Exception):
    """Raised at a step boundary after a stop was requested (Ctrl-C): the round in progress is
    dropped; the last checkpoint is the consistent state to resume from."""


@dataclass(frozen=True)
class RunPlan:
    """What a reporter needs to lay out a run's progress before the first round ends.

    ``scores`` says which Frechet distances the rounds will carry: ``"global"`` (the released
    model against the union of the sites' data, plus each site's when ``per_site``), ``"local"``
    (no global model: each site's own model against the union) or ``""`` (evaluation off)."""

    rounds: int                   # the last round
    first: int                    # the first round this process trains (> 1 after a resume)
    clients: int                  # number of sites
    metric: str = ""              # the Frechet distance's name, e.g. "fid" or "fd-random"
    scores: str = ""              # "global", "local" or "" (see above)
    per_site: bool = False        # the global model is scored on each site too (mean / worst)
    eval_rounds: frozenset[int] = frozenset()


class Reporter:
    """Progress hooks. The default does nothing; the CLI draws rich progress bars.

    ``busy`` announces a long step that reports no progress of its own (loading the feature
    network, the sites' real-data statistics); ``evaluating`` one part of a round's evaluation
    (the next ``step`` means training goes on). ``round_end`` gets the round's records and its
    timing: the ``"server"`` record of ``timings.jsonl`` (``train_s``, ``eval_s``, ``wall_s``)."""

    def busy(self, what: str) -> None: ...
    def run_start(self, plan: RunPlan) -> None: ...
    def round_start(self, round_: int, clients: Sequence[str], total_steps: int) -> None: ...
    def step(self) -> None: ...
    def evaluating(self, what: str) -> None: ...
    def round_end(self, round_: int, records: list[Record], timing: Record | None = None) -> None: ...
    def warning(self, text: str) -> None: ...


class MemorySink:
    """Where a run's results go when it has no run directory: the records, in memory."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def log(self, records: list[Record]) -> None:
        self.records.extend(records)

    def log_timing(self, records: list[Record]) -> None: ...
    def save_checkpoint(self, round_: int, obj: dict[str, Any], keep: int) -> None: ...
    def save_best(self, round_: int, obj: dict[str, Any]) -> None: ...
    def save_grid(self, round_: int, images: torch.Tensor, nrow: int) -> None: ...
    def save_image_grid(self, name: str, images: torch.Tensor, nrow: int) -> None: ...
    def plot(self, title: str) -> None: ...


@dataclass
class RunResult:
    records: list[Record]
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


def local_eval_rounds(rounds: int, every: int) -> set[int]:
    """The rounds whose sites score their own local models: every ``every``-th and the last."""
    out = {rounds}
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


def round_clients(cfg: Config, strategy: Any, ids: Sequence[str], r: int) -> list[str]:
    """The clients of round ``r``: seeded sampling, or for single weight transfer one block of
    rounds per client."""
    if strategy.sequential and not strategy.cyclic:
        per = math.ceil(cfg.fed.rounds / len(ids))
        return [ids[min((r - 1) // per, len(ids) - 1)]]
    return sample_clients(ids, cfg.fed.fraction, cfg.fed.min_clients, cfg.run.seed, r)


def load_init(path: str, template: State) -> State:
    """Global weights from a fedsynth checkpoint (or a bare state dict), checked against the model."""
    obj = read_checkpoint_file(path, "config key 'fed.init-from'")
    state = obj.get("global") if isinstance(obj, dict) and "global" in obj else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
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


class ClientPool:
    """Where the clients are. The loop asks a pool to run the sampled clients' rounds and to
    score models where the data is; everything else happens in :class:`Federation`."""

    ids: list[str]
    whole: bool = True   # the server holds every weight (no layer stays on the nodes unseen)
    remote: bool = False  # clients in other processes: the server logs its round time and overhead

    def bind(self, fed: "Federation") -> None:
        """Called once the model, strategy and initial weights exist."""

    def train(self, r: int, ids: list[str], start: State | None, evaluate: bool) -> tuple[list[ClientResult], list[Record]]:
        """Round ``r`` of clients ``ids`` from the global weights ``start``; with ``evaluate``
        they score their local models. Returns their results and any other records."""
        raise NotImplementedError

    def evaluate_global(self, r: int) -> list[Record]:
        """Scores of round ``r``'s released model(s) against the union and each site."""
        raise NotImplementedError

    def grid(self) -> torch.Tensor | None:
        """The sample grid of the released model(s), or None if the server cannot draw one."""
        raise NotImplementedError

    def real_grid(self) -> torch.Tensor | None:
        """A grid of real images from the sites, laid out like :meth:`grid` (for the report's
        comparison), or None where the server holds no images (Flower: none leave a site)."""
        return None

    def realism_extremes(self) -> torch.Tensor | None:
        """The released model's most and least realistic evaluation samples of the last scored
        round (:meth:`Evaluator.realism_extremes`), or None where the server cannot draw them."""
        return None

    def num_images(self, cid: str) -> int:
        """Images client ``cid`` trains on."""
        raise NotImplementedError

    def steps(self, cid: str) -> int:
        """Local steps client ``cid`` takes this round (for progress; with its ``[sites.<id>]`` settings)."""
        return local_steps(self.fed.cfg.for_site(cid), self.fed.strategy, self.num_images(cid))

    def image_shape(self) -> tuple[int, int]:
        """``(channels, side)`` of the sites' images (what server-held data must match)."""
        raise NotImplementedError

    def kept_local(self, updates: list) -> dict[str, tuple[State, int]] | None:
        """The kept-local layers of these clients, where the server may see them (in-process)."""
        return None

    def finish(self) -> list[Record]:
        """Records still owed after the last round (e.g. scores the nodes send later)."""
        return []

    def resumable_records(self, records: list[Record], ck: dict[str, Any] | None) -> list[Record]:
        """The records of a resumed run directory that stay (the lost round's are already cut)."""
        return records

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Federation:
    """One federated run: the model, the strategy, the server's state and the round loop.

    Parameters
    ----------
    cfg : Config
        The validated run configuration.
    model : GenerativeModel
        The server's workspace (initial weights from the run seed; samples for evaluation).
    pool : ClientPool
        Where the clients train.
    evaluator : Evaluator, optional
        Scores models (None: evaluation off).
    """

    def __init__(self, cfg: Config, model: GenerativeModel, pool: ClientPool, evaluator: Evaluator | None,
                 reporter: Reporter | None = None, class_names: Sequence[str] = ()):
        self.cfg, self.model, self.pool, self.evaluator = cfg, model, pool, evaluator
        self.reporter = reporter or Reporter()
        self.class_names = list(class_names)
        self.strategy = strategy_from_config(cfg.fed, cfg.privacy)
        init = model.state()
        if cfg.fed.init_from:
            init = load_init(cfg.fed.init_from, init)
        self.init = init
        self.travel = setup_strategy(cfg, self.strategy, model, init, len(pool.ids))
        self.local_keys = [k for k in init if k not in self.travel]
        self.server = ServerState(init if self.strategy.aggregates else None)
        # fed.server-data: the server trains the global model on data of its own after each aggregation
        self.server_trainer = build_server_trainer(cfg, model, self.strategy, self.travel, pool.image_shape())
        if self.server_trainer is not None:
            self.server.own = {k: init[k].clone() for k in self.local_keys}
        self.start_round = 1
        self.best: dict[str, Any] | None = None  # the best round by the held-out selection score
        self.notes: list[str] = []  # shown once as the run starts (e.g. held-out evaluation turned off)
        self.sink: Any = MemorySink()
        self.description: tuple[str, dict[str, Any]] | None = None  # (file, contents) describing the clients
        self.data_info: dict[str, Any] = {}
        pool.bind(self)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, r: int) -> dict[str, Any]:
        """Everything a resume needs: every random draw derives from (seed, round, client).
        Device-independent: every tensor on the CPU (a no-op for a CPU run)."""
        return to_device({"format": CHECKPOINT_FORMAT, "round": r, "config": self.cfg.to_dict(),
                          "model": {**self.model.describe(), "class_names": self.class_names},
                          "global": self.server.global_state, "ema": self.server.ema_state,
                          "strategy": self.strategy.state_dict(), "best": self.best, **self.server.training_state(),
                          **self.pool.state_dict()}, "cpu")

    def restore(self, ck: dict[str, Any]) -> None:
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise UserError("not a fedsynth checkpoint")
        if without_hardware(ck["config"], EXTEND_KEYS) != without_hardware(self.cfg.to_dict(), EXTEND_KEYS):
            # run.device may change, and fed.rounds may grow (a finished run extended)
            raise UserError("the checkpoint was written with a different configuration")
        self.server = ServerState(ck["global"], ck.get("ema"))
        self.server.load_training_state(ck)
        self.strategy.load_state_dict(ck.get("strategy", {}))
        self.pool.load_state_dict(ck)
        self.start_round = ck["round"] + 1
        self.best = ck.get("best")

    # ------------------------------------------------------------------ the run
    def run(self, sink: Any = None) -> RunResult:
        """Train all rounds; records, grids, checkpoints and plots go to ``sink`` (a
        :class:`fedsynth.report.RunDir`, or a :class:`fedsynth.report.tracking.TrackedRun` that
        also shows them to experiment trackers) if given."""
        cfg, ev = self.cfg, self.evaluator
        self.sink = sink or MemorySink()
        t_start = time.perf_counter()
        rounds = cfg.fed.rounds
        to_eval = eval_rounds(rounds, cfg.eval.every) if ev is not None else set()
        local_eval = local_eval_rounds(rounds, cfg.eval.local_every)
        title = f"{cfg.data.source} · {cfg.fed.strategy} · {len(self.pool.ids)} site{'s' if len(self.pool.ids) != 1 else ''}"
        if self.start_round == 1 and ev is not None:  # real images beside the sample grids, once
            real = self.pool.real_grid()
            if real is not None:
                self.sink.save_image_grid("real", real, nrow=self._grid_nrow())
        if self.start_round == 1:  # before the header: the notes are not a round's
            for text in self.notes:
                self.reporter.warning(text)
            for text in workload_notes(cfg, self.strategy, {i: self.pool.num_images(i) for i in self.pool.ids}):
                self.reporter.warning(text)
        self.reporter.run_start(self.plan(to_eval))
        if self.start_round == 1 and 0 in to_eval:  # round 0: the model before any training
            t0 = time.perf_counter()
            recs = self.pool.evaluate_global(0)
            self._end_round(0, recs, [], {"eval_s": time.perf_counter() - t0}, t0, to_eval, title)

        for r in range(self.start_round, rounds + 1):
            t0 = time.perf_counter()
            ids = round_clients(cfg, self.strategy, self.pool.ids, r)
            self.reporter.round_start(r, ids, sum(self.pool.steps(i) for i in ids))
            results, recs = self.pool.train(r, ids, self.server.global_state, r in to_eval and r in local_eval)
            for res in results:
                recs += res.records
                if res.update is None:
                    self.reporter.warning(f"round {r}: site {res.client_id} dropped out")
            updates = [res.update for res in results if res.update is not None]
            out = server_round(cfg, self.strategy, self.server, r, updates, self.travel,
                               len(ids) / len(self.pool.ids), self.pool.kept_local(updates), self.server_trainer)
            for w in out.warnings:
                self.reporter.warning(w)
            recs += out.records
            timings = [res.timing for res in results]
            # the clients scored their local models inside their rounds: evaluation, not training
            client_eval = [t.get("eval_seconds", 0.0) for t in timings]
            client_eval_s = max(client_eval, default=0.0) if self.pool.remote else sum(client_eval)  # remote: in parallel
            trained = time.perf_counter()
            server: Record = {"train_s": trained - t0 - client_eval_s, "eval_s": client_eval_s}
            if r in to_eval:
                recs += self.pool.evaluate_global(r)
                server["eval_s"] += time.perf_counter() - trained
            if self.pool.remote:  # what the round cost beyond the slowest client's training
                train_s = max((t.get("seconds", 0.0) for t in timings), default=0.0)
                server.update(max_client_train_s=train_s, overhead_s=time.perf_counter() - t0 - train_s)
            self._end_round(r, recs, timings, server, t0, to_eval, title)

        if self.start_round <= rounds:
            last = self.pool.finish()
            if last:
                self.sink.log(last)
                self.sink.plot(title)
        return RunResult(list(self.sink.records), self.server.global_state, getattr(self.pool, "clients", {}),
                         rounds, time.perf_counter() - t_start, ev.extractor.metric if ev else "",
                         ev.extractor.name if ev else "")

    def _grid_nrow(self) -> int:
        return int(math.ceil(math.sqrt(self.cfg.eval.grid_size)))

    def plan(self, to_eval: set[int]) -> RunPlan:
        """The run's layout for the reporter: which scores the rounds will carry."""
        ev, cfg = self.evaluator, self.cfg
        released = self.server.released is not None or self.strategy.name == "ensemble"
        return RunPlan(rounds=cfg.fed.rounds, first=self.start_round, clients=len(self.pool.ids),
                       metric=ev.extractor.metric if ev is not None else "",
                       scores="" if ev is None else ("global" if released else "local"),
                       per_site=bool(ev is not None and self.server.released is not None and cfg.eval.per_site
                                     and len(self.pool.ids) > 1),
                       eval_rounds=frozenset(to_eval))

    def _select(self, r: int, recs: list[Record]) -> bool:
        """Whether round ``r`` is the best so far by its held-out *selection* score (the half of
        the held-out images that is never reported); ties keep the earlier round."""
        sel = [x["value"] for x in recs if x["metric"] == "selection-score" and x["client"] == "global"]
        if not sel or not math.isfinite(sel[0]) or (self.best is not None and sel[0] >= self.best["value"]):
            return False
        self.best = {"round": r, "value": float(sel[0]), "score": "selection-score"}
        return True

    def _end_round(self, r: int, recs: list[Record], timings: list[Record], server: Record, t0: float,
                   to_eval: set[int], title: str) -> None:
        """Records, sample grid, plot, timings and checkpoint of round ``r``, each written
        atomically. ``server`` is the round's timing record (``train_s``, ``eval_s``): the grid
        and the plot count as evaluation; ``wall_s`` is the whole round."""
        self.sink.log(recs)
        if r in to_eval:
            t = time.perf_counter()
            grid = self.pool.grid()
            if grid is not None:
                self.sink.save_grid(r, grid, nrow=self._grid_nrow())
            if r == self.cfg.fed.rounds:  # the last round: its most and least realistic samples
                extremes = self.pool.realism_extremes()
                if extremes is not None:
                    self.sink.save_image_grid("realism", extremes, nrow=len(extremes) // 2)
            if r % PLOT_EVERY == 0 or r == self.cfg.fed.rounds:  # fd.png: redrawn every few rounds, not every one
                self.sink.plot(title)
            server["eval_s"] = server.get("eval_s", 0.0) + time.perf_counter() - t
        server = {"round": r, "client": "server", **server, "wall_s": time.perf_counter() - t0}
        self.sink.log_timing(timings + [server])
        if r > 0:
            better = self._select(r, recs)
            ck = self.checkpoint(r)
            self.sink.save_checkpoint(r, ck, self.cfg.run.keep_checkpoints)
            if better:
                self.sink.save_best(r, ck)
        self.reporter.round_end(r, recs, server)


class InProcessClients(ClientPool):
    """Every client in this process, one after another, on one model workspace.

    Parameters
    ----------
    cfg : Config
    client_data : list[ImageSet]
        One data set per client (already partitioned); ``centralized`` pools them.
    client_ids : list of str, optional
        Default ``"0", "1", ...``.
    """

    def __init__(self, cfg: Config, client_data: list[ImageSet], client_ids: Sequence[str] | None = None):
        from ..registry import STRATEGIES
        self.cfg = cfg
        if STRATEGIES.load(cfg.fed.strategy).pools_data:
            if cfg.sites:
                raise UserError(f"config key 'sites.{cfg.sites[0][0]}': fed.strategy = '{cfg.fed.strategy}' pools every "
                                f"site's images in one client, so no site trains with settings of its own")
            client_data = [ImageSet.concat(client_data, "pooled")]
            ids = ["pooled"]
        else:
            ids = list(client_ids) if client_ids is not None else [str(k) for k in range(len(client_data))]
        self.ids = ids
        self.data = dict(zip(ids, client_data))
        self.clients: dict[str, ClientState] = {}
        self.stop_requested = False
        self.on_step = self._on_step
        self.parallel: Any = None  # fedsynth.fed.parallel.ParallelClients, started by the first parallel round

    # shape of the data the model is built for
    @property
    def first(self) -> ImageSet:
        return self.data[self.ids[0]]

    def num_classes(self) -> int:
        return max(d.num_classes for d in self.data.values())

    def image_shape(self) -> tuple[int, int]:
        return self.first.channels, self.first.size

    def statistics(self, extractor, cfg: Config, num_classes: int, reporter: Reporter | None = None):
        """Each site's real-data statistics, one site after another (``reporter.busy`` for each)."""
        real, counts = {}, {}
        for k, (cid, d) in enumerate(self.data.items()):
            if reporter is not None:
                reporter.busy(f"real-data statistics: site {cid} ({k + 1}/{len(self.data)}, {len(d)} images)")
            r, c = site_statistics({cid: d}, extractor, cfg.eval, cfg.run.seed, num_classes)
            real.update(r)
            counts.update(c)
        return real, counts

    def bind(self, fed: Federation) -> None:
        self.fed = fed
        first = self.first
        # each site's configuration and model workspace ([sites.<id>]; one workspace per architecture)
        self.sites = SiteWorkspaces(self.cfg, fed.model, fed.strategy, fed.travel, fed.init,
                                    lambda site: build_model(site, first.size, first.channels, self.num_classes()))
        self.clients = {cid: self.sites.new_client(cid, d) for cid, d in self.data.items()}
        unknown = set(self.cfg.faults.attackers) - set(self.clients)
        if unknown:
            raise UserError(f"config key 'faults.attackers' names unknown client(s) {sorted(unknown)}; "
                            f"clients are {', '.join(self.clients)}")

    def num_images(self, cid: str) -> int:
        return self.clients[cid].n

    def _on_step(self, _step: int) -> None:
        self.fed.reporter.step()
        if self.stop_requested:
            raise StopRun()

    # ---- the clients' rounds
    def train(self, r, ids, start, evaluate):
        if min(self.cfg.fed.parallel_clients, len(ids)) > 1 and not self.fed.strategy.sequential:
            return self._train_parallel(r, ids, start, evaluate), []
        results = []
        for cid in ids:
            res = client_round(self.sites.setup(cid), self.clients[cid], r, start, self.fed.evaluator if evaluate else None,
                               on_step=lambda s: self.on_step(s),
                               on_evaluate=lambda cid=cid: self.fed.reporter.evaluating(f"site {cid}'s model"))
            results.append(res)
            if res.update is not None:
                start = self.fed.strategy.next_start(start, res.update)  # the next client of swt/cwt continues
        return results, []

    def _train_parallel(self, r, ids, start, evaluate) -> list[ClientResult]:
        """``fed.parallel-clients`` > 1: the clients' rounds in worker processes
        (:mod:`fedsynth.fed.parallel`), results in the order of ``ids``; the local models are
        scored here, from the weights the workers return, exactly as :func:`client_round` would."""
        from .parallel import ParallelClients
        if self.parallel is None:
            self.parallel = ParallelClients(self.cfg, self.data, self.num_classes(), self.fed.init,
                                            self.cfg.fed.parallel_clients)
        ev = self.fed.evaluator if evaluate else None
        results = []
        for c, res, full in self.parallel.run(r, [self.clients[i] for i in ids], start, self.fed.strategy.state_dict()):
            if ev is not None and full is not None:
                res.records += self._ev(c.id).evaluate(full, r, c.id, c.id)
            for s in range(res.timing.get("steps", max(1, self.steps(c.id) // 2))):  # progress, and a stop
                self.on_step(s + 1)
            results.append(res)
        return results

    def finish(self):
        if self.parallel is not None:
            self.parallel.close()
            self.parallel = None
        return []

    def kept_local(self, updates):
        if not self.fed.local_keys:
            return None
        # only the sites whose kept layers have the server's architecture can be averaged into it
        init = self.fed.init
        def fits(local: State) -> bool:
            return set(local) == set(self.fed.local_keys) and all(v.shape == init[k].shape for k, v in local.items())
        out = {u.client_id: (self.clients[u.client_id].local, self.clients[u.client_id].n) for u in updates
               if fits(self.clients[u.client_id].local)}
        return out or None

    # ---- evaluation and grids
    def _ev(self, cid: str) -> Evaluator:
        """The evaluator drawing with site ``cid``'s own workspace (its architecture)."""
        return self.fed.evaluator.for_model(self.sites.setup(cid).model)

    def _own_model(self, c: ClientState) -> State:
        return c.weights if c.weights is not None else {**self.fed.server.global_state, **c.local}

    def _mixture_masks(self) -> list[tuple[ClientState, torch.Tensor]]:
        """Ensemble: each fixed latent is assigned to a client, with probability ~ its data."""
        n = torch.tensor([float(c.n) for c in self.clients.values()], dtype=torch.float64)
        pick = torch.multinomial(n, self.cfg.eval.num_samples, True,
                                 generator=torch_generator(self.cfg.run.seed, "ensemble-mixture"))
        return [(c, pick == i) for i, c in enumerate(self.clients.values())]

    def evaluate_global(self, r):
        ev, fed = self.fed.evaluator, self.fed
        own: list[Record] = []
        if r == 0:  # each hospital's starting model on its own data
            for cid, c in self.clients.items():
                own += self._ev(cid).evaluate(self._own_model(c), 0, cid, cid)
        recs: list[Record] = []
        if fed.strategy.name == "ensemble":
            fed.reporter.evaluating("ensemble of local generators")
            feats = [self._ev(c.id).fake_features(c.weights, None, mask) for c, mask in self._mixture_masks()]
            return ev.score(np.concatenate(feats), r, "global", None) + own
        if fed.server.released is None:  # local baseline: each hospital's model on everyone's data
            for cid, c in self.clients.items():
                recs += self._ev(cid).evaluate(c.weights, r, cid, None)
            return own + recs
        fed.reporter.evaluating("global model")
        state = fed.server.released
        feats = ev.fake_features(state, None)
        recs += ev.score(feats, r, "global", None)
        if self.cfg.eval.per_site and len(self.clients) > 1:
            site = []
            for cid in self.clients:
                site += ev.score(feats if not ev.conditional else ev.fake_features(state, cid), r, "global", cid)
            recs += site + sites_summary(site, ev.extractor, r)
        return recs + own

    def grid(self):
        ev, released = self.fed.evaluator, self.fed.server.released
        if released is not None:
            return ev.grid(released)
        return torch.cat([self._ev(c.id).grid(c.weights) for c in self.clients.values()])  # one block of rows per client

    def real_grid(self):
        """Real images laid out like :meth:`grid`: ``eval.grid-size`` images drawn in turn from
        each site (seeded), or one block per site where the grid has one per client's model. For a
        conditional model, tile ``i`` shows the class the sample grid draws there (blank if no
        site has one left)."""
        ev, sites = self.fed.evaluator, list(self.data)
        perms = {cid: numpy_rng(self.cfg.run.seed, "real-grid", cid).permutation(len(d)) for cid, d in self.data.items()}
        used: dict[str, set[int]] = {cid: set() for cid in sites}
        labels = ev.y_grid.tolist() if ev.conditional else [None] * self.cfg.eval.grid_size

        def pick(order: list[str], label: int | None) -> torch.Tensor:
            for cid in order:
                d = self.data[cid]
                k = next((int(k) for k in perms[cid] if int(k) not in used[cid]
                          and (label is None or d.labels[k] == label)), None)
                if k is not None:
                    used[cid].add(k)
                    return d.batch(np.array([k]))
            first = self.first
            return torch.full((1, *first.images.shape[1:]), -1.0)

        if self.fed.server.released is None:  # one block of rows per client's own model
            tiles = [pick([cid], label) for cid in sites for label in labels]
        else:
            tiles = [pick(sites[i % len(sites):] + sites[:i % len(sites)], label) for i, label in enumerate(labels)]
        return torch.cat(tiles)

    def realism_extremes(self):
        released = self.fed.server.released
        if released is None or self.fed.strategy.name == "ensemble":  # scores not in z_eval's order
            return None
        return self.fed.evaluator.realism_extremes(released)

    # ---- checkpoints
    def state_dict(self):
        return {"clients": {cid: c.saved() for cid, c in self.clients.items()}}

    def load_state_dict(self, ck):
        for cid, saved in ck["clients"].items():
            self.clients[cid].restore(saved)


def build_in_process(cfg: Config, client_data: list[ImageSet], reporter: Reporter | None = None,
                     client_ids: Sequence[str] | None = None,
                     holdout: dict[str, tuple[ImageSet, ImageSet]] | None = None) -> Federation:
    """A :class:`Federation` of in-process clients: model, evaluator (real statistics computed
    per client, cached) and strategy as the configuration says. ``holdout``: each site's
    held-out ``(select, test)`` images by site id (:func:`fedsynth.fed.evaluation.holdout_for`)."""
    if cfg.fed.secure_aggregation:
        raise UserError("config key 'fed.secure-aggregation' = true needs the Flower deployment (fedsynth deploy "
                        "run): in one process the server trains every client itself, so no update is hidden from "
                        "it; leave the key false here")
    set_deterministic(cfg.run.deterministic)
    pool = InProcessClients(cfg, client_data, client_ids)
    first = pool.first
    model = build_model(cfg, first.size, first.channels, pool.num_classes())
    evaluator = None
    if cfg.eval.enabled:
        reporter = reporter or Reporter()
        reporter.busy(f"loading the feature network ({cfg.eval.feature_extractor})")
        extractor = build_extractor(cfg.eval.feature_extractor, cfg.eval.inception_weights, dims=cfg.data.dims,
                                    slices=cfg.eval.volume_slices).to(model.device)
        if cfg.train.channels_last:
            extractor = extractor.to(memory_format=torch.channels_last)
        real, counts = pool.statistics(extractor, cfg, pool.num_classes(), reporter)
        held = None
        if holdout:
            reporter.busy("held-out statistics")
            ids = list(client_ids) if client_ids is not None else [str(k) for k in range(len(client_data))]
            held = {cid: holdout_statistics(train, *holdout[cid], extractor, cfg.eval, cfg.run.seed)
                    for cid, train in zip(ids, client_data)}
        evaluator = Evaluator(cfg.eval, extractor, real, counts, model, cfg.run.seed, held)
    return Federation(cfg, model, pool, evaluator, reporter, class_names=first.class_names)


class FederatedRun:
    """The in-process engine as one object: ``FederatedRun(cfg, client_data).run(run_dir)``."""

    def __init__(self, cfg: Config, client_data: list[ImageSet], reporter: Reporter | None = None,
                 client_ids: Sequence[str] | None = None,
                 holdout: dict[str, tuple[ImageSet, ImageSet]] | None = None):
        self.fed = build_in_process(cfg, client_data, reporter, client_ids, holdout)
        self.cfg = cfg

    @property
    def reporter(self) -> Reporter:
        return self.fed.reporter

    @reporter.setter
    def reporter(self, value: Reporter) -> None:
        self.fed.reporter = value

    @property
    def stop_requested(self) -> bool:
        return self.fed.pool.stop_requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self.fed.pool.stop_requested = value

    @property
    def _on_step(self):
        return self.fed.pool.on_step

    @_on_step.setter
    def _on_step(self, fn) -> None:
        self.fed.pool.on_step = fn

    @property
    def global_state(self) -> State | None:
        return self.fed.server.global_state

    @property
    def strategy(self):
        return self.fed.strategy

    @property
    def model(self) -> GenerativeModel:
        return self.fed.model

    @property
    def evaluator(self) -> Evaluator | None:
        return self.fed.evaluator

    @property
    def extractor(self):
        return self.fed.evaluator.extractor if self.fed.evaluator else build_extractor(
            self.cfg.eval.feature_extractor, self.cfg.eval.inception_weights, dims=self.cfg.data.dims,
            slices=self.cfg.eval.volume_slices)

    @property
    def clients(self) -> dict[str, ClientState]:
        return self.fed.pool.clients

    def restore(self, ck: dict[str, Any]) -> None:
        self.fed.restore(ck)

    def run(self, run_dir: Any = None) -> RunResult:
        return self.fed.run(run_dir)
