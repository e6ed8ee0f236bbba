"""The round loop, written once for both engines.

One round of :class:`Federation`::

    sample clients (seeded) -> the clients' rounds (client_round, wherever the clients are)
    -> server_round (validate, aggregate, wrappers' accounting, EMA)
    -> [evaluate: the global model against the union (merged moments) and each site]
    -> records, timings, sample grid, checkpoint (atomic) -> progress

Where the clients are is a :class:`ClientPool`: the in-process engine's
(:class:`fedsynth.fed.inprocess.InProcessClients`, built by
:func:`fedsynth.fed.inprocess.build_in_process`) runs every client in this process in turn; the
Flower adapter's (:mod:`fedsynth.fed.flower.server_app`) sends the same work to hospital nodes.
Both run :func:`fedsynth.fed.client.client_round` for each client and this loop on the server.

Randomness: model init, client sampling, data order and latents all derive from
``(run seed, purpose, round, client)``, so two runs with one seed give identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..checkpoint import FORMAT as CHECKPOINT_FORMAT
from ..checkpoint import read_checkpoint_file
from ..config import EXTEND_KEYS, Config, UserError, without_hardware
from ..models import GenerativeModel
from ..train.device import to_device
from ..updates import State
from ..utils import numpy_rng
from .client import ClientResult, ClientState, local_steps, setup_strategy, workload_notes
from .evaluation import Evaluator
from .release import Release
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

    def class_counts(self) -> dict[str, list[int]]:
        """Each client's images per class (what a Flower node reports when it connects):
        ``fed.server-data = "sites"`` draws a conditional model's labels from them."""
        raise NotImplementedError

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
        self.release = Release.of(self.strategy)  # what the rounds score and draw as the run's model
        init = model.state()
        if cfg.fed.init_from:
            init = load_init(cfg.fed.init_from, init)
        self.init = init
        self.travel = setup_strategy(cfg, self.strategy, model, init, len(pool.ids))
        self.local_keys = [k for k in init if k not in self.travel]
        self.server = ServerState(init if self.strategy.aggregates else None)
        # fed.server-data: the server trains the global model on data of its own after each aggregation
        # (or, "sites", on samples of the sites' updated models)
        self.server_trainer = build_server_trainer(cfg, model, self.strategy, self.travel, pool.image_shape(),
                                                   pool.class_counts, self.class_names)
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
        return RunPlan(rounds=cfg.fed.rounds, first=self.start_round, clients=len(self.pool.ids),
                       metric=ev.extractor.metric if ev is not None else "",
                       scores="" if ev is None else self.release.scores,
                       per_site=bool(ev is not None and self.release.one_model and cfg.eval.per_site
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
