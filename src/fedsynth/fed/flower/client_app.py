"""The Flower ClientApp: each hospital node's side of a Flower run (imports ``flwr``, not torch).

Flower starts one ``flwr-clientapp`` process per message. This module turns the message into a
plain request (the config, this node's own node config, NumPy arrays, the node's state bytes)
and hands it to :func:`fedsynth.fed.flower.node.handle` -- in the node's warm worker when
``fedsynth deploy supernode`` started one (torch already imported there), else in this process --
then turns the answer into a Flower reply. The node reads its *own* data from its node config
(``data-path``, optional ``data-source``; never sent by the server); what must survive rounds on
the node lives in ``context.state`` (bytes in :mod:`fedsynth.serial` format, never a pickle).

With ``fed.secure-aggregation`` a round's ``train`` messages are SecAgg+ messages: Flower's
``secaggplus_mod`` (through :func:`.secagg.secure_mod`) answers the protocol's stages and masks
the node's update, which :func:`.secagg.fit_reply` hands it in Flower's legacy FitRes form. A
node started with ``--node-config 'secure-aggregation=true'`` answers no other train message:
the hospital, not only the run's config, decides that its update never leaves unmasked.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import secagg
from .records import from_record, to_record

# SecAgg+ messages go through Flower's secaggplus_mod (fed.secure-aggregation); the others pass untouched
client = ClientApp(mods=[secagg.secure_mod])


def _dispatch(kind: str, req: dict[str, Any]) -> dict[str, Any]:
    """Run the node's work in its warm worker if it has one, else here."""
    path = os.environ.get("FEDSYNTH_NODE_WORKER", "")
    if path:
        from .worker import WorkerUnavailable, request
        try:
            res = request(path, kind, req)
            res["meta"]["warm"] = True
            return res
        except WorkerUnavailable as e:
            print(f"[fedsynth] warm worker unavailable, answering in this process: {e}", file=sys.stderr)
    from .node import handle
    res = handle(kind, req)
    res["meta"]["warm"] = False
    return res


def _run(kind: str, config: dict[str, Any], arrays: dict[str, np.ndarray] | None,
         strategy: dict[str, np.ndarray] | None, context: Context) -> dict[str, Any]:
    """A plain request -> :func:`_dispatch`; the node's state kept in Flower's context."""
    kept = context.state["fedsynth"] if "fedsynth" in context.state else None
    req: dict[str, Any] = {"config": config, "node_config": dict(context.node_config), "arrays": arrays,
                           "strategy": strategy, "state": bytes(kept["state"]) if kept is not None else None,
                           "state-round": int(kept["round"]) if kept is not None and "round" in kept else None}
    res = _dispatch(kind, req)
    if res.get("state") is not None:
        context.state["fedsynth"] = ConfigRecord({"state": res["state"], "round": int(config.get("round", 0))})
    return res


def _answer(kind: str, msg: Message, context: Context) -> Message:
    """Flower message -> plain request -> :func:`_dispatch` -> Flower reply. Arrays travel
    packed into one Flower Array per dtype (:mod:`.records`; bit-exact both ways)."""
    content = msg.content

    def arrays_of(name: str) -> dict[str, np.ndarray] | None:
        return from_record(content[name], f"the server's field '{name}'") if name in content else None
    res = _run(kind, dict(content["config"]), arrays_of("arrays"), arrays_of("strategy"), context)
    out: dict[str, Any] = {"meta": ConfigRecord(res["meta"])}
    for name in ("arrays", "extra", "stats", "holdout-select", "holdout-test", "holdout-matched"):
        if res.get(name) is not None:
            out[name] = to_record(res[name])
    if res.get("metrics") is not None:
        out["metrics"] = MetricRecord(res["metrics"])
    return Message(RecordDict(out), reply_to=msg)


def _answer_secure(msg: Message, context: Context) -> Message:
    """A secure round's train request (SecAgg+'s collect-masked-vectors stage): the same node
    work, answered as the FitRes that ``secaggplus_mod`` masks before anything leaves."""
    conf, start, strategy = secagg.train_request(msg.content)
    res = _run("train", conf, start, strategy, context)
    return secagg.fit_reply(msg, conf, start, res)


@client.query()
def hello(msg: Message, context: Context) -> Message:
    """First contact: client id, data shape and classes, real-image feature moments."""
    return _answer("hello", msg, context)


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received global model (if asked), train locally, score the local model."""
    if secagg.is_secure(msg):  # a secure round: secaggplus_mod called this and masks what it returns
        return _answer_secure(msg, context)
    if "fitins.parameters" in msg.content.array_records:  # a secure-round request outside the protocol
        raise RuntimeError("a secure-aggregation train request without SecAgg+'s records: refused (nothing "
                           "would mask the update)")
    if str(context.node_config.get("secure-aggregation", "")).lower() == "true":  # the hospital's own rule
        cid = str(context.node_config.get("client-id", "?"))
        return Message(RecordDict({"meta": ConfigRecord({"client-id": cid, "error": (
            "this node sends its update only through secure aggregation (its node config says "
            "secure-aggregation=true), and this run does not use it: set fed.secure-aggregation = true")})}),
            reply_to=msg)
    return _answer("train", msg, context)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model against this node's own data."""
    return _answer("evaluate", msg, context)
