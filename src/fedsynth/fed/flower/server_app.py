"""The Flower ServerApp: the in-process engine's round loop with SuperNodes as the clients.

The server greets the nodes (client id, data shape, the moments of their real-image features),
then runs :class:`fedsynth.fed.engine.Federation` -- the same loop, ``server_round`` and
evaluation as in-process -- through :func:`fedsynth.fed.run.run_experiment`, with
:class:`FlowerClients` as its pool: a round sends one ``train`` message per sampled node (global
weights and the strategy's state as ArrayRecords, everything else as JSON/config values) and
turns the replies into the clients' updates. Nodes run :func:`fedsynth.fed.client.client_round`
(:mod:`.node`). Nothing from a node is unpickled: a reply that does not parse is rejected for
that round and recorded, the round goes on.

Evaluation happens where the data is: the nodes score their local model after training, and
the global model of round r inside round r+1's ``train`` message (it is the model they receive
anyway), so an evaluated round costs no extra round trip; only the last round's global model
needs one ``evaluate`` message. The server scores the global model against the *merged*
moments. Replies are polled every 50 ms (Flower's ``Grid.send_and_receive`` sleeps 3 s).

Run config (``[tool.flwr.app.config]`` of the app, or ``flwr run --run-config``):
``config-text`` (a fedsynth config sent with the run, as ``fedsynth deploy run`` does) or
``config-path`` (a fedsynth TOML on the SuperLink's machine), ``out`` (run directory),
``clients`` (nodes to wait for), ``connect-timeout``, ``round-timeout`` and ``poll-interval``
(seconds), ``resume``, ``audit-dir`` (a folder: every reply the server receives is written there,
tensors as ``.npz`` and the rest as JSON, for checking what left the sites).

With ``fed.secure-aggregation`` the pool is :class:`SecureFlowerClients`: each round's training
runs Flower's SecAgg+ (:mod:`.secagg`), and the server sees only the weighted mean of the updates.

Node config: ``data-path``, ``client-id``, ``data-source`` (default
``folder``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from ...config import UserError, build_config, load_config
from ...registry import is_fd_metric
from ..engine import ClientPool
from . import secagg
from .records import from_record, is_packed, to_record

POLL_S = 0.05  # how often the server asks the SuperLink for replies

server = ServerApp()


def _natural(cid: str) -> tuple:
    """Client ids in the in-process engine's order: "2" before "10"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", cid) if p)


def _say(text: str) -> None:
    print(f"[fedsynth] {text}", flush=True)


def exchange(grid: Grid, messages: list[Message], timeout: float, poll: float = POLL_S,
             origin: dict[str, int] | None = None) -> tuple[list[Message], list[int]]:
    """Push ``messages`` and poll for their replies every ``poll`` seconds, for at most
    ``timeout`` seconds. Returns the replies and the destination nodes that did not answer;
    ``origin`` (if given) gets each message's destination node by message id: the SuperLink
    itself answers for a node it counts as offline ("Node Unavailable"), from its own id."""
    dst = [m.metadata.dst_node_id for m in messages]
    ids = list(grid.push_messages(messages))
    waiting = dict(zip(ids, dst))
    if origin is not None:
        origin.update(waiting)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(waiting)))
        for m in got:
            waiting.pop(m.metadata.reply_to_message_id, None)
        replies += got
        if waiting:
            time.sleep(poll)
    return replies, list(waiting.values())


class PollingGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls every ``poll`` seconds (Flower's sleeps 3 s;
    SecAgg+ calls it four times a round), noting each error reply in :attr:`errors` (node id,
    last line) and, with an ``audit`` folder, writing every reply there (:func:`write_audit`)."""

    def __init__(self, grid: Grid, poll: float = POLL_S, audit: str = ""):
        self.grid, self.poll, self.audit = grid, poll, audit
        self.errors: list[tuple[int, str]] = []
        self.count = 0

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        got = list(self.grid.pull_messages(message_ids))
        for m in got:
            self.count += 1
            if m.has_error():
                self.errors.append((m.metadata.src_node_id, _error_line(m)))
            if self.audit:
                write_audit(self.audit, self.count, m)
        return got

    def send_and_receive(self, messages, *, timeout=None):
        replies, _silent = exchange(self, list(messages), float("inf") if timeout is None else timeout, self.poll)
        return replies


def message_arrays(msg: Message) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor in a message (ArrayRecords, and ``.npy`` bytes inside ConfigRecords, as
    SecAgg+ sends its masked vectors) and every other value, keyed ``record/name[/index]``."""
    from flwr.common import bytes_to_ndarray
    arrays: dict[str, np.ndarray] = {}
    other: dict[str, Any] = {"type": msg.metadata.message_type, "src-node": msg.metadata.src_node_id}
    if msg.has_error():
        other["error"] = str(msg.error.reason)
        return arrays, other

    def npy(b: Any) -> bool:
        return isinstance(b, bytes) and b[:6] == b"\x93NUMPY"
    for name, rec in msg.content.items():
        if isinstance(rec, ArrayRecord) and is_packed(rec):  # fedsynth's own replies: the named tensors
            arrays.update((f"{name}/{k}", a) for k, a in from_record(rec).items())
            continue
        for key, v in rec.items():
            at = f"{name}/{key}"
            if isinstance(rec, ArrayRecord):
                arrays[at] = v.numpy() if v.dtype else bytes_to_ndarray(v.data)  # legacy arrays carry .npy bytes
            elif npy(v):
                arrays[at] = bytes_to_ndarray(v)
            elif isinstance(v, list) and v and all(npy(x) for x in v):
                arrays.update((f"{at}/{i}", bytes_to_ndarray(x)) for i, x in enumerate(v))
            elif isinstance(v, bytes) or (isinstance(v, list) and any(isinstance(x, bytes) for x in v)):
                other[at] = f"<{len(v)} bytes>" if isinstance(v, bytes) else f"<list of {len(v)}>"
            else:
                other[at] = v
    return arrays, other


def write_audit(folder: str, k: int, msg: Message) -> None:
    """``<folder>/<k>-<type>-node<id>.npz`` (its tensors) and ``.json`` (everything else): what
    the server received, for an officer to check (run config ``audit-dir``)."""
    import io
    from pathlib import Path

    from ...utils import atomic_write_bytes
    arrays, other = message_arrays(msg)
    stem = Path(folder) / f"{k:06d}-{msg.metadata.message_type}-node{msg.metadata.src_node_id}"
    buf = io.BytesIO()
    np.savez(buf, **{a.replace("/", "|"): v for a, v in arrays.items()})
    atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(other, default=str).encode())


def _error_line(rep: Message) -> str:
    return str(rep.error.reason).strip().splitlines()[-1][:300] if str(rep.error.reason).strip() else "failed"


def parse_records(content: RecordDict, cid: str) -> list[dict[str, Any]]:
    """A node's metric records (JSON in its ``meta``); ``ValueError`` if they do not parse."""
    meta = content["meta"]
    if "records" not in meta:
        return []
    return records_from_json(str(meta["records"]), cid)


def records_from_json(text: str, cid: str) -> list[dict[str, Any]]:
    """A node's metric records, sent as JSON; ``ValueError`` if they do not parse."""
    recs = json.loads(text)
    if not isinstance(recs, list) or not all(isinstance(x, dict) and {"round", "metric", "value"} <= set(x)
                                             for x in recs):
        raise ValueError("field 'records' is not a list of metric records")
    return [{**x, "client": str(x.get("client", cid))} for x in recs]


def parse_train_reply(content: RecordDict, cid: str):
    """``(records, timing, update or None)`` from a node's ``train`` reply. Tensors come only
    from ArrayRecords (NumPy, read without pickle), everything else from JSON or config
    values; anything missing or of the wrong kind raises ``ValueError``/``KeyError``/``TypeError``
    naming the field -- the caller rejects the client for the round."""
    from ...updates import ClientUpdate
    from .node import tensors
    meta = content["meta"]
    recs = parse_records(content, cid)
    timing = json.loads(str(meta["timing"]))
    if not isinstance(timing, dict):
        raise ValueError("field 'timing' is not a JSON object")
    timing["warm-worker"] = bool(meta.get("warm", False))
    if bool(meta["dropped"]):
        return recs, timing, None
    for name, kind in (("arrays", ArrayRecord), ("extra", ArrayRecord), ("metrics", MetricRecord)):
        if name not in content:
            raise ValueError(f"field '{name}' is missing")
        if not isinstance(content[name], kind):
            raise ValueError(f"field '{name}' is not a {kind.__name__}")
    mr = content["metrics"]
    metrics = {k: float(v) for k, v in mr.items() if k not in ("num-examples", "steps")}
    arrays, extra = (tensors(from_record(content[f], f"client {cid}: field '{f}'")) for f in ("arrays", "extra"))
    return recs, timing, ClientUpdate(cid, arrays, int(mr["num-examples"]), metrics, int(mr["steps"]), extra)


class FlowerClients(ClientPool):
    """The clients of a :class:`fedsynth.fed.engine.Federation`, on SuperNodes.

    Greets the nodes on construction; the rest of the :class:`fedsynth.fed.engine.ClientPool`
    interface moves the loop's requests and results between processes. The layers a node keeps
    never reach the server (``kept_local`` stays the base class's ``None``).
    """

    remote = True

    def __init__(self, grid: Grid, cfg: Any, n_clients: int, timeout: float, connect_timeout: float,
                 poll: float = POLL_S):
        import uuid
        self.flower_grid = grid if isinstance(grid, PollingGrid) else PollingGrid(grid, poll)
        self.cfg, self.timeout, self.poll = cfg, timeout, poll
        self.cfg_text = cfg.to_toml()
        self.run_key = uuid.uuid4().hex  # names the nodes' saved state (not a random draw of the study)
        self.pending = -1  # the round whose global model the nodes score on receipt
        # per client, the last round whose train reply the server took: the node builds on its state
        # of that round (a round it trained but the server never took -- killed mid-round, too late --
        # is not built upon), from Flower's context or, after a restart, from its own disk
        self.trained: dict[str, int] | None = {}  # None: resumed from a checkpoint that did not keep it
        self._greet(n_clients, connect_timeout)

    # ---- who is there
    def _greet(self, n_clients: int, connect_timeout: float) -> None:
        from ...metrics import FeatureStats
        from ..evaluation import HOLDOUT_SPLITS
        grid = self.flower_grid
        _say(f"waiting for {n_clients} SuperNode(s)")
        deadline = time.monotonic() + connect_timeout
        while len(list(grid.get_node_ids())) < n_clients:
            if time.monotonic() > deadline:
                raise UserError(f"only {len(list(grid.get_node_ids()))} of {n_clients} SuperNodes connected "
                                f"within connect-timeout = {connect_timeout:g} s")
            time.sleep(POLL_S)
        # run-key: a warm node keeps what it builds for this run (its data, statistics) across its messages
        hello = ConfigRecord({"fedsynth-config": self.cfg_text, "run-key": self.run_key})
        replies, silent = exchange(grid, [Message(RecordDict({"config": hello}), message_type="query", dst_node_id=n)
                                          for n in sorted(grid.get_node_ids())], self.timeout)
        if silent:
            raise UserError(f"SuperNode(s) {silent} did not answer the greeting within {self.timeout:.0f} s")
        info: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, Any] = {}
        self.holdout: dict[str, dict[str, Any]] = {}
        for rep in replies:
            nid = rep.metadata.src_node_id
            if rep.has_error():
                raise UserError(f"SuperNode {nid} failed: {_error_line(rep)}")
            meta = dict(rep.content["meta"])
            cid = str(meta["client-id"])
            if "error" in meta:
                raise UserError(f"site {cid} (SuperNode {nid}): {meta['error']}")
            if cid in info:
                raise UserError(f"client id '{cid}' is used by SuperNodes {info[cid]['node']} and {nid}; give each "
                                f"node its own --node-config client-id")
            info[cid] = {"node": nid, **meta}
            if "stats" in rep.content:
                self.stats[cid] = FeatureStats.from_npz_dict(from_record(rep.content["stats"],
                                                                         f"site {cid}: field 'stats'"))
            if "holdout-test" in rep.content:  # the node's held-out images' moments
                self.holdout[cid] = {split: FeatureStats.from_npz_dict(
                    from_record(rep.content[f"holdout-{split}"], f"site {cid}: field 'holdout-{split}'"))
                    for split in HOLDOUT_SPLITS}
        self.info = info
        self.ids = sorted(info, key=_natural)
        self.by_node = {info[c]["node"]: c for c in self.ids}
        for key in ("channels", "image-size"):
            seen = {cid: int(info[cid][key]) for cid in self.ids}
            if len(set(seen.values())) > 1:
                raise UserError(f"the nodes' images differ in {key}: {seen}; every site must preprocess to the same shape")
        self.channels, self.size = int(info[self.ids[0]]["channels"]), int(info[self.ids[0]]["image-size"])
        counts = {cid: np.array(json.loads(info[cid]["class-counts"])) for cid in self.ids}
        self.num_classes = max(len(c) for c in counts.values())
        self.counts = {cid: np.pad(c, (0, self.num_classes - len(c))) for cid, c in counts.items()}
        self.class_names = json.loads(info[self.ids[0]]["class-names"])
        # which site runs what: [sites.<id>] of the run, then the node's own config keys
        self.settings = {cid: json.loads(str(info[cid].get("settings", "{}"))) for cid in self.ids}
        missing = [cid for cid, _ in self.cfg.sites if cid not in info]
        if missing:
            raise UserError(f"config key 'sites.{missing[0]}': no SuperNode has client-id \"{missing[0]}\" "
                            f"(the nodes are sites {', '.join(self.ids)})")
        listing = ", ".join(f"{c} ({info[c]['num-examples']} images)" for c in self.ids)
        _say(f"sites {listing}; {self.channels} channel(s), {self.size} px, {self.num_classes} class(es)")

    def check_extractor(self, name: str) -> None:
        for cid in self.ids:
            if cid in self.stats and self.info[cid]["extractor"] != name:
                raise UserError(f"site {cid} extracts features with {self.info[cid]['extractor']}, the server "
                                f"with {name}: install the same Inception weights everywhere (eval.inception-weights)")

    def describe(self) -> dict[str, Any]:
        """nodes.json: which SuperNode is which client, with its images and classes."""
        return {cid: {"node-id": self.info[cid]["node"], "images": int(self.info[cid]["num-examples"]),
                      "classes": json.loads(self.info[cid]["class-names"]), "class-counts": self.counts[cid].tolist(),
                      **({"settings": self.settings[cid]} if self.settings.get(cid) else {})}
                for cid in self.ids}

    # ---- the pool interface
    def bind(self, fed) -> None:
        self.fed = fed
        # FedBN / partial sharing: some layers never leave the nodes, so the server holds no whole
        # generator; the nodes score the global model with their own layers, the server does not
        self.whole = set(fed.init) <= fed.travel
        self.travel_json = json.dumps(sorted(fed.travel))  # each node checks that its own model sends exactly these
        if not self.whole:
            _say(f"{len(set(fed.init) - fed.travel)} tensor(s) stay on the nodes ({self.cfg.fed.strategy}, "
                 f"fed.share): the global model is scored per site only; no union score and no sample grids")

    def num_images(self, cid: str) -> int:
        return int(self.info[cid]["num-examples"])

    def class_counts(self) -> dict[str, list[int]]:
        return {cid: self.counts[cid].tolist() for cid in self.ids}

    def image_shape(self) -> tuple[int, int]:
        return self.channels, self.size

    def _request(self, r: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Round ``r``'s train/evaluate request besides the weights: the strategy's tensors, and
        the config values (the strategy's structure as JSON)."""
        from ...serial import pack
        tensors, skeleton = pack(self.fed.strategy.state_dict())
        return tensors, {"fedsynth-config": self.cfg_text, "round": r, "num-classes": self.num_classes,
                         "num-clients": len(self.ids), "run-key": self.run_key, "eval-global": self.pending,
                         "strategy": json.dumps(skeleton), "travel": self.travel_json}

    def _messages(self, r: int, train: list[str], evaluate: list[str], eval_local: bool) -> list[Message]:
        """Round ``r``'s messages: ``train`` to the sampled clients, ``evaluate`` to the others
        that must score the incoming global model. Weights and strategy state serialised once."""
        from .node import arrays
        tensors, base = self._request(r)
        weights, strategy = to_record(arrays(self.fed.server.global_state)), to_record(arrays(tensors))
        out = []
        for kind, cids in (("train", train), ("evaluate", evaluate)):
            for cid in cids:
                conf = ConfigRecord({**base, "eval-local": eval_local and kind == "train", **self._state_round(cid)})
                out.append(Message(RecordDict({"arrays": weights, "strategy": strategy, "config": conf}),
                                   message_type=kind, dst_node_id=self.info[cid]["node"]))
        return out

    def _state_round(self, cid: str) -> dict[str, int]:
        """The round whose node state client ``cid`` builds on (none sent: its newest before this round)."""
        return {"state-round": self.trained.get(cid, 0)} if self.trained is not None else {}

    def _site_summary(self, recs: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
        from ..evaluation import sites_summary
        if r < 0 or self.fed.evaluator is None or not (self.cfg.eval.per_site and len(self.ids) > 1):
            return []
        site = [x for x in recs if x.get("client") == "global" and x.get("round") == r and x.get("real") in self.ids]
        return sites_summary(site, self.fed.evaluator.extractor, r)

    def train(self, r, ids, start, evaluate):
        idle = [c for c in self.ids if c not in ids] if self.pending >= 0 else []  # every site scores the incoming model
        origin: dict[str, int] = {}
        replies, silent = exchange(self.flower_grid, self._messages(r, ids, idle, evaluate), self.timeout, self.poll,
                                   origin)
        results, recs = self._collect(r, ids, replies, silent, origin)
        recs += self._site_summary(recs + [x for res in results for x in res.records], self.pending)
        self.pending = -1
        return results, recs

    def _collect(self, r: int, ids: list[str], replies: list[Message], silent: list[int],
                 origin: dict[str, int] | None = None):
        """Results and records from round ``r``'s replies (``train`` from ``ids``, ``evaluate`` from
        the others); ``origin``: each message's destination node by id (see :func:`exchange`)."""
        from ..client import ClientResult
        recs: list[dict[str, Any]] = [{"round": r, "client": self.by_node[nid], "metric": "dropped", "value": 1,
                                       "reason": f"no reply within round-timeout = {self.timeout:.0f} s"}
                                      for nid in silent]
        results = []
        def node(rep: Message) -> int:
            return (origin or {}).get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)
        for rep in sorted(replies, key=lambda x: _natural(self.by_node.get(node(x), "?"))):
            cid = self.by_node.get(node(rep), f"node-{node(rep)}")
            if rep.has_error():
                recs.append({"round": r, "client": cid, "metric": "dropped", "value": 1, "reason": _error_line(rep)})
                continue
            meta = rep.content["meta"]
            if "error" in meta:
                raise UserError(f"site {cid}: {meta['error']}")
            try:
                if rep.metadata.message_type != "train" or cid not in ids:
                    recs += parse_records(rep.content, cid)
                    continue
                node_recs, timing, update = parse_train_reply(rep.content, cid)
                if self.trained is not None:
                    self.trained[cid] = r
                if "state-lost" in meta:
                    why = str(meta["state-lost"])[:300]
                    recs.append({"round": r, "client": cid, "metric": "state-lost", "value": 1, "reason": why})
                    _say(f"round {r}: {why}")
            except (KeyError, TypeError, ValueError) as e:  # a reply that does not parse: this client sits out
                why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                recs.append({"round": r, "client": cid, "metric": "rejected", "value": 1,
                             "reason": f"malformed reply from SuperNode {rep.metadata.src_node_id}: {why}"})
                _say(f"round {r}: reply of site {cid} rejected: {why}")
                continue
            results.append(ClientResult(cid, update, node_recs, timing))
        return results, recs

    def evaluate_global(self, r):
        self.pending = r  # the nodes score it when they receive it
        ev, state = self.fed.evaluator, self.fed.release.model(self.fed.server)
        if not self.whole or state is None:
            return []
        return ev.evaluate(state, r, "global", None)

    def grid(self):
        return self.fed.evaluator.grid(self.fed.release.model(self.fed.server)) if self.whole else None

    def finish(self):
        if self.pending < 0:  # the last round's global model, scored where the data is
            return []
        replies, _silent = exchange(self.flower_grid, self._messages(self.cfg.fed.rounds, [], self.ids, False),
                                    self.timeout, self.poll)
        recs: list[dict[str, Any]] = []
        for rep in replies:
            cid = self.by_node.get(rep.metadata.src_node_id, "?")
            try:
                recs += [] if rep.has_error() else parse_records(rep.content, cid)
            except (KeyError, TypeError, ValueError) as e:
                recs.append({"round": self.pending, "client": cid, "metric": "rejected", "value": 1,
                             "reason": f"malformed reply: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"})
        return recs + self._site_summary(recs, self.pending)

    # ---- checkpoints
    def state_dict(self):
        return {"clients": {},  # each node keeps its own state on its own disk (see .node)
                "flower": {"run-key": self.run_key, "pending-global": self.pending, "clients": list(self.ids),
                           **({"trained": dict(self.trained)} if self.trained is not None else {})}}

    def load_state_dict(self, ck):
        if "flower" not in ck:
            raise UserError("resume: the checkpoint was not written by a Flower run; resume it with fedsynth run --resume")
        if ck["flower"]["clients"] != self.ids:
            raise UserError(f"the checkpoint was written with clients {ck['flower']['clients']}, the nodes now are {self.ids}")
        self.run_key, self.pending = str(ck["flower"]["run-key"]), int(ck["flower"]["pending-global"])
        kept = ck["flower"].get("trained")
        self.trained = {str(c): int(r) for c, r in kept.items()} if kept is not None else None

    def resumable_records(self, records, ck):
        """The per-site scores of the pending global model belong to the round that was lost:
        the nodes send them again."""
        g = int(ck["flower"]["pending-global"]) if ck is not None else -1
        return [x for x in records if not (x["round"] == g and x["client"] == "global" and x.get("real") != "union")]


class SecureFlowerClients(FlowerClients):
    """:class:`FlowerClients` whose rounds run Flower's SecAgg+ (``fed.secure-aggregation``): the
    server learns only the weighted mean of the sampled nodes' updates (:mod:`.secagg`).

    Each participant's update carries that mean, with the node's own image count, step count
    and losses -- as ``SecAggPlusWorkflow`` hands a legacy strategy one result per node with the
    aggregate as their parameters -- so ``server_round`` and the strategy (one whose aggregation
    is a function of the mean; the configuration refuses the others) run unchanged.
    """

    def bind(self, fed) -> None:
        from ..engine import sample_clients
        super().bind(fed)
        per_round = len(sample_clients(self.ids, self.cfg.fed.fraction, self.cfg.fed.min_clients, 0, 1))
        if per_round < 2:
            raise UserError(f"secure aggregation needs at least 2 clients per round, this run samples {per_round} of "
                            f"{len(self.ids)}: raise fed.fraction or fed.min-clients (or add nodes)")
        if per_round == 2:
            _say("warning: secure aggregation over 2 clients per round: each learns the other's update from the "
                 "mean, and Flower 1.42 derives its masks from 32-bit seeds (docs/deployment.md); use 3 or more")
        g = fed.server.global_state
        self.keys = sorted(fed.travel)
        self.scales = secagg.scales({k: str(g[k].numpy().dtype) for k in self.keys})
        counts = [int(self.info[c]["num-examples"]) for c in self.ids]
        self.max_weight = float(max(counts)) if self.cfg.fed.weighted else 1.0

    def train(self, r, ids, start, evaluate):
        import torch
        from flwr.common import parameters_to_ndarrays

        from ...utils import derive_seed
        from .node import arrays
        recs: list[dict[str, Any]] = []
        results: list[Any] = []
        idle = [c for c in self.ids if c not in ids] if self.pending >= 0 else []
        if idle:  # the sites that sit this round out score the incoming global model
            origin: dict[str, int] = {}
            replies, silent = exchange(self.flower_grid, self._messages(r, [], idle, False), self.timeout, self.poll,
                                       origin)
            results, recs = self._collect(r, [], replies, silent, origin)
        strategy_tensors, base = self._request(r)
        weights = arrays(start)
        strategy = arrays(strategy_tensors)
        base.update({"eval-local": bool(evaluate), "secagg-keys": json.dumps(self.keys),
                     "secagg-scales": json.dumps([self.scales[k] for k in self.keys]),
                     "secagg-weighted": bool(self.cfg.fed.weighted), "secagg-max-weight": self.max_weight,
                     "secagg-clipping-range": float(self.cfg.fed.secagg_clipping_range)})
        instructions = {self.info[c]["node"]: secagg.fit_instructions(
            {**base, "secagg-seed": derive_seed(self.cfg.run.seed, "secagg-rounding", r, c) % 2 ** 32,
             **self._state_round(c)},
            weights, strategy) for c in ids}
        grid = self.flower_grid
        grid.errors.clear()
        relay = secagg.run_secure_round(grid, r, instructions, self.max_weight,
                                        float(self.cfg.fed.secagg_clipping_range), self.timeout)
        failed = dict(grid.errors)
        answered = {p.node_id for p, _ in relay.results}
        for nid in sorted(set(instructions) - answered):
            recs.append({"round": r, "client": self.by_node[nid], "metric": "dropped", "value": 1,
                         "reason": failed.get(nid, "left the secure aggregation (no reply, or the protocol halted)")})
        mean = None
        if relay.results:
            try:
                vec = parameters_to_ndarrays(relay.results[0][1].parameters)
                mean = {k: torch.from_numpy(np.array(v)) for k, v in
                        secagg.decode(vec, weights, self.keys, self.scales).items()}  # (keeps 0-d tensors 0-d)
            except ValueError as e:
                recs.append({"round": r, "client": "server", "metric": "rejected", "value": 1,
                             "reason": f"secure aggregate: {e}"})
        if mean is not None:
            recs.append({"round": r, "client": "server", "metric": "secagg-clients", "value": len(relay.results)})
            for proxy, fitres in sorted(relay.results, key=lambda x: _natural(self.by_node[x[0].node_id])):
                results.append(self._secure_result(r, self.by_node[proxy.node_id], fitres, mean, recs))
                if self.trained is not None:
                    self.trained[self.by_node[proxy.node_id]] = r
        recs += self._site_summary(recs + [x for res in results for x in res.records], self.pending)
        self.pending = -1
        return results, recs

    @staticmethod
    def _secure_result(r: int, cid: str, fitres, mean, recs: list[dict[str, Any]]):
        """Client ``cid``'s result: the secure mean as its update (its own contribution is inside
        it and cannot be taken out), its scalars from the FitRes metrics."""
        from ...updates import ClientUpdate
        from ..client import ClientResult
        m = dict(fitres.metrics)
        try:
            node_recs = records_from_json(str(m.pop("records")), cid)
            timing = json.loads(str(m.pop("timing")))
            if not isinstance(timing, dict):
                raise ValueError("field 'timing' is not a JSON object")
            timing["warm-worker"] = bool(m.pop("warm", False))
            n, steps = int(m.pop("num-examples")), int(m.pop("steps"))
            losses = {k: float(v) for k, v in m.items() if k != "client-id"}
        except (KeyError, TypeError, ValueError) as e:
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            recs.append({"round": r, "client": cid, "metric": "rejected", "value": 1,
                         "reason": f"malformed metrics (its update is inside the secure sum): {why}"})
            node_recs, timing, n, steps, losses = [], {"round": r, "client": cid}, int(fitres.num_examples), 1, {}
        return ClientResult(cid, ClientUpdate(cid, mean, n, losses, steps, {}), node_recs, timing)


class _Progress:
    """One line per round on the server's output (``flwr run --stream`` shows it)."""

    def __init__(self, rounds: int):
        self.rounds, self.t0 = rounds, time.perf_counter()

    def busy(self, what): ...
    def run_start(self, plan): ...
    def round_start(self, r, clients, total_steps): self.t0 = time.perf_counter()  # noqa: E704
    def step(self): ...
    def evaluating(self, what): ...

    def warning(self, text):
        _say(text)

    def round_end(self, r, records, timing=None):
        if r == 0:
            return
        fd = [x for x in records if x.get("client") == "global" and x.get("real") == "union"
              and is_fd_metric(x["metric"])]
        n = sum(1 for x in records if x["metric"] == "bytes-sent")
        _say(f"round {r}/{self.rounds}: {n} update(s), {time.perf_counter() - self.t0:.1f} s"
             + (f", global {fd[0]['metric']} {fd[0]['value']:.4g}" if fd else ""))


@server.main()
def main(grid: Grid, context: Context) -> None:
    try:
        _serve(grid, context)
    except UserError as e:
        _say(f"error: {e}")
        # an Exception (not SystemExit): Flower then flushes the logs and marks the run failed
        raise RuntimeError(f"fedsynth: {e}") from None


def _config(rc) -> Any:
    if str(rc.get("config-text", "")).strip():  # sent with the run by `fedsynth deploy run`
        import tomllib
        try:
            return build_config(tomllib.loads(str(rc["config-text"])))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"run config 'config-text' is not valid TOML: {e}") from None
    return load_config(str(rc["config-path"]))


def server_setup(cfg: Any) -> tuple[Any, Any, Any]:
    """The server's process, as the in-process engine and the nodes set theirs up
    (:func:`fedsynth.fed.assembly.assemble`: device, threads -- it trains too, ``fed.server-data``,
    so its float sums must be the in-process engine's -- determinism, the feature network).
    Returns ``(cfg, process, extractor or None)``; ``cfg`` names the extractor's concrete kind
    (never ``auto``), which the nodes then build."""
    from ...registry import STRATEGIES
    from ..assembly import assemble
    why = STRATEGIES[cfg.fed.strategy].flower
    if why:
        raise UserError(f"config key 'fed.strategy' = '{cfg.fed.strategy}' cannot run over Flower ({why}); "
                        f"use it in-process")
    proc = assemble(cfg, "server")
    extractor = None
    if cfg.eval.enabled:  # the nodes must use exactly the server's extractor
        extractor = proc.extractor(cfg)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, feature_extractor=extractor.kind))
    return cfg, proc, extractor


def _serve(grid: Grid, context: Context) -> None:
    from ...models import build_model
    from ..run import run_experiment
    from ..engine import Federation
    from ..evaluation import Evaluator, RealStats
    rc = context.run_config
    cfg, _proc, extractor = server_setup(_config(rc))

    def engine(cfg, reporter) -> Federation:
        poll = float(rc.get("poll-interval", POLL_S))
        pool = (SecureFlowerClients if cfg.fed.secure_aggregation else FlowerClients)(
            PollingGrid(grid, poll, str(rc.get("audit-dir", ""))), cfg, int(rc["clients"]),
            float(rc.get("round-timeout", 3600)), float(rc.get("connect-timeout", 300)), poll)
        model = build_model(cfg, pool.size, pool.channels, pool.num_classes)
        ev, notes = None, []
        if extractor is not None:
            pool.check_extractor(extractor.name)
            held = None
            if pool.holdout and set(pool.holdout) == set(pool.ids):  # every site kept held-out images
                held = {c: {split: RealStats(st, None) for split, st in pool.holdout[c].items()} for c in pool.ids}
            elif cfg.eval.holdout > 0:
                notes.append("held-out evaluation off: not every site has enough images to keep "
                             f"eval.holdout = {cfg.eval.holdout} of them out of training")
            ev = Evaluator(cfg.eval, extractor, {c: RealStats(pool.stats[c], None) for c in pool.ids}, pool.counts,
                           model, cfg.run.seed, held)
        fed = Federation(cfg, model, pool, ev, reporter, class_names=pool.class_names)
        fed.notes += notes
        fed.description = ("nodes.json", pool.describe())
        return fed

    resume = bool(rc.get("resume", False))
    t0 = time.perf_counter()

    def started(run_dir, fed, first):
        if resume:
            _say(f"resuming after round {first - 1} from {run_dir.path}/checkpoints")
    out = run_experiment(cfg, str(rc["out"]), _Progress(cfg.fed.rounds), resume=str(rc["out"]) if resume else None,
                         engine=engine, on_start=started)
    _say(f"done: {cfg.fed.rounds} round{'' if cfg.fed.rounds == 1 else 's'} in {time.perf_counter() - t0:.1f} s; run directory {out.run_dir.path}")
