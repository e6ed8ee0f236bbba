"""One hospital node's work for a Flower message, in plain Python, NumPy and JSON (no ``flwr``).

:func:`handle` greets, trains or evaluates with the same code as the in-process engine: the
client's round is :func:`fedsynth.fed.client.client_round`. The run config arrives as TOML text,
the global weights and the strategy's state as NumPy arrays (the strategy's structure as JSON),
the node's own state from earlier rounds (optimizer, local layers, SCAFFOLD/FedDyn state, DP
accountant) as :mod:`fedsynth.serial` bytes -- nothing is ever unpickled. The ClientApp
(:mod:`fedsynth.fed.flower.client_app`) turns Flower messages into these requests and back, and
runs :func:`handle` in its own process or in the node's warm worker
(:mod:`fedsynth.fed.flower.worker`).

Requests: ``{"config": {...}, "node_config": {...}, "arrays": {name: ndarray} | None,
"strategy": {name: ndarray} | None, "state": bytes | None, "state-round": int | None}`` (the
context's state and the round it is of). The node's state after each round it trains is also
saved on its own disk (``<cache>/flower-state/<run key>/<client id>/``, the newest three
rounds), so that a restarted SuperNode, or a run resumed from the server's checkpoint -- a new
Flower run, with empty contexts -- continues exactly: the server names the round whose state it
expects (config ``state-round``, the last round whose reply it took). Answers: ``{"meta":
{...}, "arrays": ..., "extra": ..., "metrics": ..., "stats": ..., "state": ...}`` (absent =
nothing). A bad data folder or bad
input gives ``{"meta": {"client-id": ..., "error": "one line"}}``, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from ...config import Config, UserError, apply_overrides, build_config, check_site_overrides
from ...serial import UnsafeOrCorrupt, from_bytes, to_bytes, unpack
from ..client import ClientSetup, ClientState, check_shared, client_round, setup_strategy, site_init

KEEP_STATES = 3  # saved node states per run (the server's last checkpoint may be a round behind)


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """NumPy arrays as tensors, shapes kept (``np.ascontiguousarray`` alone makes a 0-d array 1-d)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v).reshape(np.shape(v))) for k, v in arrays.items()}


def arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}


class Node:
    """What a run needs on this node: the run config, this node's id, its own data (training
    and held-out split), its process settings (:func:`fedsynth.fed.assembly.assemble`), and --
    built on first use and kept -- the feature network and its data's real statistics.

    Built once per run: a warm worker keeps it across the run's messages (:class:`Nodes`), so a
    message neither reloads the data nor recomputes the statistics. :meth:`for_message` gives
    the view one message works with (its config record ``conf``, the reason its state was
    lost); everything else is shared with the run's other messages.
    """

    def __init__(self, req: dict[str, Any]):
        import tomllib

        from ...data import load_dataset
        nc = req["node_config"]
        for key in ("data-path", "client-id"):
            if key not in nc:
                raise UserError(f"node config has no '{key}' (flower-supernode --node-config "
                                f"'data-path=\"/data/site\" client-id=\"0\"')")
        self.cid, self.path = str(nc["client-id"]), str(nc["data-path"])
        self.conf = req["config"]
        self.lost = ""  # why the state the server expects was not found (StateLost), if it was not
        try:
            cfg: Config = build_config(tomllib.loads(str(self.conf["fedsynth-config"])))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"the server's config is not valid TOML: {e}") from None
        # this site's own settings: the run's [sites.<id>] tables, then the node's own config keys
        # section.key (flower-supernode --node-config 'model.ndf=32 train.batch-size=8'), which win
        own = {k: v for k, v in nc.items() if "." in str(k)}
        site = cfg.for_site(self.cid)
        mine = check_site_overrides(site, self.cid, own, "node config key '") if own else {}
        self.settings = {**cfg.site_overrides(self.cid), **mine}
        cfg = apply_overrides(site, mine)
        source = str(nc.get("data-source", "folder"))
        run = cfg.run
        if "device" in nc:  # the node's own hardware (node config device="cuda:1"), else the server's run.device
            from ...config import DEVICE_PATTERN
            run = dataclasses.replace(run, device=str(nc["device"]))
            if not DEVICE_PATTERN.fullmatch(run.device):
                raise UserError(f"node config 'device' must be auto, cpu, cuda, cuda:N or mps; got {run.device!r}")
        self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source, path=self.path), run=run)
        from ..assembly import assemble
        self.process = assemble(self.cfg, "node")  # device, threads, determinism: as the server and in-process
        try:
            self.data = load_dataset(self.cfg)
        except UserError as e:
            raise UserError(f"data-path {self.path}: {e}") from None
        # this site's held-out images: split here, exactly as in-process; only their statistics leave
        from ...fed.evaluation import holdout_check, split_holdout
        self.held = None
        if self.cfg.eval.enabled and self.cfg.eval.holdout > 0 and \
                holdout_check(self.cfg.eval.holdout, {self.cid: len(self.data)}) == "":
            self.data, *held = split_holdout(self.data, self.cfg.eval.holdout, self.cfg.run.seed, self.cid)
            self.held = tuple(held)
        self._kept: dict[str, Any] = {}  # built on first use, shared by every message's view

    def for_message(self, req: dict[str, Any]) -> "Node":
        """This run's node as one message sees it: that message's config record, no state lost
        yet. The data, feature network and statistics are shared, never copied."""
        import copy
        view = copy.copy(self)
        view.conf, view.lost = req["config"], ""
        return view

    def extractor(self):
        """The feature network the server chose (it sends a concrete kind, never ``auto``),
        built as every role builds it (:meth:`fedsynth.fed.assembly.Process.extractor`)."""
        if "extractor" not in self._kept:
            self._kept["extractor"] = self.process.extractor(self.cfg)
        return self._kept["extractor"]

    def statistics(self):
        """The real statistics of this site's training images (:func:`fedsynth.fed.evaluation.real_statistics`)."""
        if "real" not in self._kept:
            from ...fed.evaluation import real_statistics
            c = self.cfg
            self._kept["real"] = real_statistics(self.data, self.extractor(), c.eval.max_real, c.run.seed)
        return self._kept["real"]

    def setup(self, req: dict[str, Any], before: int) -> tuple[ClientSetup, ClientState, dict[str, torch.Tensor]]:
        """The model workspace, the strategy with the server's state, and this client as of
        the last round before ``before`` it trained (from the message's context, or the node's disk).

        Built afresh for every message, unlike the rest of the node: the model's weights,
        optimizer and buffers, the strategy's server state and the client's own state all come
        from the message (or the node's saved state); a workspace kept from the last message
        could carry something the message does not overwrite (a norm layer's statistics, a
        strategy's cached round state) into this round, and the in-process engine's weights
        would no longer be reproduced bit for bit."""
        from ...fed.strategies import strategy_from_config
        from ...models import build_model
        conf = self.conf
        model = build_model(self.cfg, self.data.size, self.data.channels, int(conf["num-classes"]))
        strategy = strategy_from_config(self.cfg.fed, self.cfg.privacy)
        start = tensors(req["arrays"])
        own = model.state()
        travel = setup_strategy(self.cfg, strategy, model, own, int(conf["num-clients"]))
        if "travel" in conf:  # what the server sends and expects back: this site's model must agree
            check_shared(self.cid, self.settings, own, travel, start, set(json.loads(str(conf["travel"]))))
        if req.get("strategy") is not None:
            strategy.load_state_dict(unpack(req["strategy"], str(conf["strategy"]), what="the server's 'strategy'"))
        setup = ClientSetup(self.cfg, model, strategy, [k for k in own if k not in travel], travel)
        c = setup.new_client(self.cid, self.data, site_init(own, start))
        try:
            saved = saved_state(self, req, before)
        except StateLost as e:
            saved, self.lost = None, str(e)
        if saved is not None:
            c.restore({"weights": None, **from_bytes(saved, what=f"node state of site {self.cid}")})
        return setup, c, start

    def evaluator(self, model):
        """An evaluator of ``model`` against this site's real statistics (as
        :func:`fedsynth.fed.evaluation.site_statistics` gives them in-process)."""
        from ...fed.evaluation import Evaluator, class_counts
        c = self.cfg
        counts = class_counts({self.cid: self.data}, int(self.conf["num-classes"]))
        return Evaluator(c.eval, self.extractor(), {self.cid: self.statistics()}, counts, model, c.run.seed)


def node_key(req: dict[str, Any]) -> tuple[str, str, str]:
    """Everything a :class:`Node` is built from: the run (``run-key``), the server's config text
    and this node's own config. (The message's other values -- round, num-classes, the state
    round -- are read per message, never kept.)"""
    conf = req.get("config", {})
    return (str(conf.get("run-key", "")), str(conf.get("fedsynth-config", "")),
            json.dumps(req.get("node_config", {}), sort_keys=True, default=str))


class Nodes:
    """The warm worker's :class:`Node`: kept while messages come with the same :func:`node_key`
    (the run's messages), rebuilt for another run or config. One is kept: a worker serves one
    SuperNode, which runs one run at a time. ``built`` counts the builds."""

    def __init__(self) -> None:
        self.key: tuple[str, str, str] | None = None
        self.node: Node | None = None
        self.built = 0

    def get(self, req: dict[str, Any]) -> Node:
        key = node_key(req)
        if self.node is None or key != self.key:
            self.node, self.key = None, None  # a build that fails leaves nothing behind
            self.node, self.key = Node(req), key
            self.built += 1
        else:
            self.node.process.apply()  # this process may have served another run's settings since
        return self.node.for_message(req)


def _state_dir(node: Node):
    from ...utils import cache_dir
    key = "".join(ch for ch in str(node.conf.get("run-key", "")) if ch.isalnum())
    return cache_dir() / "flower-state" / key / "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in node.cid)


def saved_state(node: Node, req: dict[str, Any], before: int) -> bytes | None:
    """This node's state between rounds, as of the last round whose reply the server took
    (``state-round`` in the request; 0: none yet, a fresh state). Flower's context keeps it while
    the SuperNode lives; a restarted SuperNode or a resumed run (empty contexts) finds it on the
    node's disk. A round the server never took -- the node was killed mid-round, or answered after
    the round timed out -- is not built upon: the in-process engine, and a replay, drop it too.
    Without ``state-round`` (a server of an earlier version) the newest state before ``before``.
    Raises :class:`StateLost` if the state the server expects is on neither."""
    conf = node.conf
    if "state-round" not in conf:
        if req.get("state") is not None:
            return req["state"]
        if not conf.get("run-key"):
            return None
        d = _state_dir(node)
        rounds = [r for r in sorted(int(p.stem.split("-")[1]) for p in d.glob("round-*.state")) if r < before]
        return (d / f"round-{rounds[-1]:04d}.state").read_bytes() if rounds else None
    want = int(conf["state-round"])
    if want <= 0:
        return None
    if req.get("state") is not None and req.get("state-round") == want:
        return req["state"]
    f = _state_dir(node) / f"round-{want:04d}.state" if conf.get("run-key") else None
    if f is not None and f.is_file():
        return f.read_bytes()
    raise StateLost(f"site {node.cid}: its state after round {want} (optimizer, strategy state, local layers) is "
                    f"not on this node's disk ({f.parent if f is not None else 'no run key'}); it restarts from a "
                    f"fresh state")


class StateLost(Exception):
    """The node's state of the round the server expects is gone (its disk was wiped, or the
    SuperNode runs with another cache folder)."""


def save_state(node: Node, round_: int, state: bytes) -> None:
    """Kept on the node's own disk (under its cache folder): optimizer and local-layer state,
    never images. Written atomically; the newest :data:`KEEP_STATES` rounds are kept."""
    from ...utils import atomic_write_bytes
    if not node.conf.get("run-key"):
        return
    d = _state_dir(node)
    atomic_write_bytes(d / f"round-{round_:04d}.state", state)
    for old in sorted(d.glob("round-*.state"))[:-KEEP_STATES]:
        old.unlink(missing_ok=True)


def _hello(node: Node) -> dict[str, Any]:
    """Who this node is, what its data looks like, and (if the run evaluates) the moments of its
    real images' features -- sums over images, never an image."""
    from ...registry import FAMILIES
    FAMILIES.load(node.cfg.model.family).pinned(node.cfg)  # what every site must hold identical (a frozen autoencoder)
    d = node.data
    meta: dict[str, Any] = {"client-id": node.cid, "num-examples": len(d), "channels": d.channels,
                            "image-size": d.size, "class-names": json.dumps(list(d.class_names)),
                            "class-counts": json.dumps(d.class_counts()), "settings": json.dumps(node.settings)}
    out: dict[str, Any] = {"meta": meta}
    if node.cfg.eval.enabled:
        ex = node.extractor()
        st = node.statistics().stats
        meta["extractor"] = ex.name
        out["stats"] = {k: np.asarray(v) for k, v in st.to_npz_dict().items()}
        if node.held is not None:  # the held-out images' moments (select, test, matched), never the images
            from ...fed.evaluation import holdout_statistics
            held = holdout_statistics(d, *node.held, ex, node.cfg.eval, node.cfg.run.seed)
            for split, rs in held.items():
                out[f"holdout-{split}"] = {k: np.asarray(v) for k, v in rs.stats.to_npz_dict().items()}
    return out


def _eval_global(node: Node, ev, state: dict[str, torch.Tensor], round_: int) -> list[dict[str, Any]]:
    """The global model of ``round_`` against this node's own data (per-site fairness). Before
    training (round 0) it is also this client's starting model, recorded as such."""
    feats = ev.fake_features(state, node.cid)
    recs = ev.score(feats, round_, "global", node.cid)
    if round_ == 0:
        recs += ev.score(feats, 0, node.cid, node.cid)
    return recs


def _train(node: Node, req: dict[str, Any]) -> dict[str, Any]:
    conf = node.conf
    r = int(conf["round"])
    setup, c, start = node.setup(req, before=r)
    eval_global, eval_local = int(conf["eval-global"]), bool(conf["eval-local"])
    ev = node.evaluator(setup.model) if eval_global >= 0 or eval_local else None
    recs: list[dict[str, Any]] = []
    if eval_global >= 0:  # the global model it receives is the last round's
        recs += _eval_global(node, ev, {**start, **c.local}, eval_global)
    res = client_round(setup, c, r, start, ev if eval_local else None)
    recs += res.records
    saved = c.saved()
    state = to_bytes({k: v for k, v in saved.items() if k != "weights"})
    save_state(node, r, state)
    meta: dict[str, Any] = {"client-id": node.cid, "timing": json.dumps(res.timing), "dropped": res.update is None,
                            "records": json.dumps(recs), **({"state-lost": node.lost} if node.lost else {})}
    if res.update is None:  # the node failed mid-round (simulated drop-out)
        return {"meta": meta, "state": state}
    up = res.update
    metrics = {"num-examples": up.num_examples, "steps": up.steps, **{k: float(v) for k, v in up.metrics.items()}}
    return {"meta": meta, "arrays": arrays(up.weights), "extra": arrays(up.extra), "metrics": metrics, "state": state}


def _evaluate(node: Node, req: dict[str, Any]) -> dict[str, Any]:
    """The global model against this node's own data (with its own local layers, if any)."""
    setup, c, start = node.setup(req, before=int(node.conf["round"]) + 1)
    recs = _eval_global(node, node.evaluator(setup.model), {**start, **c.local}, int(node.conf["eval-global"]))
    return {"meta": {"client-id": node.cid, "records": json.dumps(recs)}}


def handle(kind: str, req: dict[str, Any], nodes: Nodes | None = None) -> dict[str, Any]:
    """Answer one request: ``kind`` is ``hello``, ``train`` or ``evaluate``. ``nodes``: the warm
    worker's kept node (:class:`Nodes`), reused while the run's messages come; without it the
    node is built for this message alone (a fresh ``flwr-clientapp`` process)."""
    cid = str(req.get("node_config", {}).get("client-id", "?"))
    try:
        node = nodes.get(req) if nodes is not None else Node(req)
        if kind == "hello":
            return _hello(node)
        if kind == "train":
            return _train(node, req)
        if kind == "evaluate":
            return _evaluate(node, req)
        raise UserError(f"unknown request kind {kind!r}")
    except (UserError, UnsafeOrCorrupt) as e:
        return {"meta": {"client-id": cid, "error": str(e).splitlines()[0][:500]}}
