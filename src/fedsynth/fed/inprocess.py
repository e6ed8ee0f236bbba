"""The in-process engine (the default): every client in this process, one after another.

:func:`build_in_process` turns a configuration and the sites' images into a
:class:`~fedsynth.fed.engine.Federation` over :class:`InProcessClients` -- model, evaluator
(each site's real statistics, cached) and strategy as the configuration says -- and
``Federation.run`` runs the rounds (:mod:`fedsynth.fed.engine`, the loop written once for both
engines). :func:`fedsynth.fed.run.in_process` loads and partitions the configured data first;
:func:`fedsynth.fed.run.run_experiment` adds the run directory and the report.

The pool holds the baselines too: ``local`` clients keep their own models, ``centralized`` is
one client holding all data, ``swt``/``cwt`` pass the weights from client to client,
``ensemble`` samples from the mixture of local generators.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..config import Config, UserError
from ..data import ImageSet
from ..models import build_model
from ..updates import State
from ..utils import numpy_rng, torch_generator
from .assembly import assemble
from .client import ClientResult, ClientState, SiteWorkspaces, client_round
from .engine import ClientPool, Federation, Record, Reporter, StopRun
from .evaluation import Evaluator, class_counts, holdout_statistics, sites_summary, site_statistics
from .release import MIXTURE, OWN


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
        self.stop_requested = False  # set by a Ctrl-C handler: the run stops at the next step
        self.parallel: Any = None  # fedsynth.fed.parallel.ParallelClients, started by the first parallel round

    # shape of the data the model is built for
    @property
    def first(self) -> ImageSet:
        return self.data[self.ids[0]]

    def num_classes(self) -> int:
        return max(d.num_classes for d in self.data.values())

    def image_shape(self) -> tuple[int, int]:
        return self.first.channels, self.first.size

    def class_counts(self) -> dict[str, list[int]]:
        return {cid: c.tolist() for cid, c in class_counts(self.data, self.num_classes()).items()}

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
                               on_step=self._on_step,
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
                self._on_step(s + 1)
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
        if fed.release.kind == MIXTURE:  # the mixture of the sites' generators, scored as one
            fed.reporter.evaluating("ensemble of local generators")
            feats = [self._ev(c.id).fake_features(c.weights, None, mask) for c, mask in self._mixture_masks()]
            return ev.score(np.concatenate(feats), r, "global", None) + own
        if fed.release.kind == OWN:  # each hospital's own model on everyone's data
            for cid, c in self.clients.items():
                recs += self._ev(cid).evaluate(c.weights, r, cid, None)
            return own + recs
        fed.reporter.evaluating("global model")
        state = fed.release.model(fed.server)
        feats = ev.fake_features(state, None)
        recs += ev.score(feats, r, "global", None)
        if self.cfg.eval.per_site and len(self.clients) > 1:
            site = []
            for cid in self.clients:
                site += ev.score(feats if not ev.conditional else ev.fake_features(state, cid), r, "global", cid)
            recs += site + sites_summary(site, ev.extractor, r)
        return recs + own

    def grid(self):
        if self.fed.release.one_model:
            return self.fed.evaluator.grid(self.fed.release.model(self.fed.server))
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

        if not self.fed.release.one_model:  # one block of rows per client's own model
            tiles = [pick([cid], label) for cid in sites for label in labels]
        else:
            tiles = [pick(sites[i % len(sites):] + sites[:i % len(sites)], label) for i, label in enumerate(labels)]
        return torch.cat(tiles)

    def realism_extremes(self):
        if not self.fed.release.one_model:  # the sites' models: scores not in z_eval's order
            return None
        return self.fed.evaluator.realism_extremes(self.fed.release.model(self.fed.server))

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
    proc = assemble(cfg, "in-process")  # device, threads, determinism: as the Flower server and nodes
    pool = InProcessClients(cfg, client_data, client_ids)
    first = pool.first
    model = build_model(cfg, first.size, first.channels, pool.num_classes())
    evaluator = None
    if cfg.eval.enabled:
        reporter = reporter or Reporter()
        reporter.busy(f"loading the feature network ({cfg.eval.feature_extractor})")
        extractor = proc.extractor(cfg)
        real, counts = pool.statistics(extractor, cfg, pool.num_classes(), reporter)
        held = None
        if holdout:
            reporter.busy("held-out statistics")
            ids = list(client_ids) if client_ids is not None else [str(k) for k in range(len(client_data))]
            held = {cid: holdout_statistics(train, *holdout[cid], extractor, cfg.eval, cfg.run.seed)
                    for cid, train in zip(ids, client_data)}
        evaluator = Evaluator(cfg.eval, extractor, real, counts, model, cfg.run.seed, held)
    return Federation(cfg, model, pool, evaluator, reporter, class_names=first.class_names)
