"""Clients of a round trained at the same time (``fed.parallel-clients = K``).

:class:`ParallelClients` keeps ``K`` worker processes (``spawn``: no state inherited by accident).
Each builds the same model workspace and strategy as this process from the run's config, once,
and then runs :func:`fedsynth.fed.client.client_round` for the clients it is handed -- the same
code as the sequential pool, with the same seeds, so every client's result is bit-identical to
running it here. The pool collects results in the order of the round's client list, so
aggregation sees them in the same order too.

What travels between our own processes: the clients' images once, at start, as shared-memory
tensors (no copy per worker); per client and round the global weights, the client's saved state
and the strategy's state (CPU tensors in dicts), and back its :class:`ClientResult`, its new saved
state and its full weights (the parent scores the local model, when asked, from those). Nothing
from outside the run is ever unpickled.

Devices: with several CUDA devices and ``run.device`` = ``auto`` or ``cuda``, worker ``i`` uses
``cuda:i`` (mod the count); otherwise every worker uses ``run.device``. On a CPU each worker
uses as many threads as this process: the CPU's convolution and batch-norm results depend on the
thread count, and the same count is what makes the results identical to sequential ones (so K
workers oversubscribe the cores; see docs/performance.md for what that costs).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from ..data import ImageSet
from .client import ClientResult, ClientState, client_round

_worker: dict[str, Any] = {}  # this worker process's workspace (set once by _init)


def _init(cfg_toml: str, shared: dict[str, tuple], num_classes: int, init: dict[str, torch.Tensor],
          num_clients: int, threads: int, counter: Any, devices: list[str]) -> None:
    import tomllib

    from ..config import build_config
    from ..models import build_model
    from .client import SiteWorkspaces, setup_strategy
    from .strategies import strategy_from_config
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    torch.set_num_threads(threads)
    cfg = build_config(tomllib.loads(cfg_toml))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device=devices[i % len(devices)]))
    from ..train.device import set_deterministic
    set_deterministic(cfg.run.deterministic)
    data = {cid: ImageSet(images.numpy(), labels, names, name) for cid, (images, labels, names, name) in shared.items()}
    first = next(iter(data.values()))
    model = build_model(cfg, first.size, first.channels, num_classes)
    strategy = strategy_from_config(cfg.fed, cfg.privacy)
    travel = setup_strategy(cfg, strategy, model, init, num_clients)
    sites = SiteWorkspaces(cfg, model, strategy, travel, init,  # each site's setup, as in the parent
                           lambda site: build_model(site, first.size, first.channels, num_classes))
    _worker.update(data=data, sites=sites)


def _client(r: int, cid: str, start: dict[str, torch.Tensor] | None, saved: dict[str, Any],
            strategy_state: dict[str, Any]) -> tuple[ClientResult, dict[str, Any], dict[str, torch.Tensor] | None]:
    setup = _worker["sites"].setup(cid)
    setup.strategy.load_state_dict(strategy_state)  # the server's state as of this round
    c = ClientState(cid, _worker["data"][cid])
    c.restore(saved)
    res = client_round(setup, c, r, start)
    return res, c.saved(), setup.model.state() if res.update is not None else None


def worker_devices(cfg: Any, k: int) -> list[str]:
    """The device of each worker (see the module docstring)."""
    if cfg.run.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(min(k, torch.cuda.device_count()))]
    return [cfg.run.device]


class ParallelClients:
    """``k`` worker processes that run clients' rounds for an in-process pool.

    Parameters
    ----------
    cfg : Config
    data : dict of client id -> ImageSet
    num_classes : int
    init : State
        The initial weights (the workers set their strategy up from them, as the server did).
    k : int
        Number of worker processes.
    """

    def __init__(self, cfg: Any, data: dict[str, ImageSet], num_classes: int, init: dict[str, torch.Tensor], k: int):
        import torch.multiprocessing as tmp  # registers the shared-memory tensor reductions
        ctx = tmp.get_context("spawn")
        shared = {cid: (torch.from_numpy(np.ascontiguousarray(d.images)).clone().share_memory_(), d.labels,
                        d.class_names, d.name) for cid, d in data.items()}
        self.k = k
        self.executor = ProcessPoolExecutor(
            k, mp_context=ctx, initializer=_init,
            initargs=(cfg.to_toml(), shared, num_classes, init, len(data), torch.get_num_threads(),
                      ctx.Value("i", 0), worker_devices(cfg, k)))

    def run(self, r: int, clients: list[ClientState], start: dict[str, torch.Tensor] | None,
            strategy_state: dict[str, Any]):
        """Submit every client's round; yields ``(client, result, full weights)`` in the order of
        ``clients`` (each client's saved state is updated as its result arrives)."""
        futures = [self.executor.submit(_client, r, c.id, start, c.saved(), strategy_state) for c in clients]
        try:
            for c, fut in zip(clients, futures):
                res, saved, full = fut.result()
                c.restore(saved)
                yield c, res, full
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
