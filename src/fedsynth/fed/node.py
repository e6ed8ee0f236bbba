"""One hospital node's work for a Flower message, in plain Python and NumPy terms (no ``flwr``).

:func:`handle` greets, trains or evaluates, exactly as the in-process engine would for this
client: the run config arrives as text, the global weights as NumPy arrays, the node's state
from earlier rounds (optimizer, local layers, SCAFFOLD/FedDyn state) as bytes; the answer is
the same kinds of things. The ClientApp (:mod:`fedsynth.fed.flower`) turns Flower messages into
these requests and back, and runs :func:`handle` either in its own process or -- when the node
was started with ``fedsynth deploy supernode`` -- in the node's warm worker
(:mod:`fedsynth.fed.worker`), which has torch imported already.

Requests: ``{"config": {...}, "node_config": {...}, "arrays": {name: ndarray} | None,
"state": bytes | None}``. Answers: ``{"meta": {...}, "arrays": ..., "metrics": ..., "stats": ...,
"state": ...}`` (absent = nothing). A bad data folder or bad images give
``{"meta": {"client-id": ..., "error": "one line naming the path"}}``, never a traceback.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np
import torch

from ..config import Config, UserError, build_config
from ..utils import set_torch_threads


def dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}  # what ArrayRecord.to_torch_state_dict does


def _arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


class _Node:
    """What one message needs on the node: the run config, this node's id and its own data."""

    def __init__(self, req: dict[str, Any]):
        import tomllib

        from ..data import load_dataset
        nc = req["node_config"]
        for key in ("data-path", "client-id"):
            if key not in nc:
                raise UserError(f"node config has no '{key}' (flower-supernode --node-config "
                                f"'data-path=\"/data/site\" client-id=\"0\"')")
        self.cid, self.path = str(nc["client-id"]), str(nc["data-path"])
        self.conf = req["config"]
        cfg: Config = build_config(tomllib.loads(str(self.conf["fedsynth-config"])))
        set_torch_threads(cfg.train.threads or 1)
        source = str(nc.get("data-source", "folder"))
        self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source, path=self.path))
        try:
            self.data = load_dataset(self.cfg)
        except UserError as e:
            raise UserError(f"data-path {self.path}: {e}") from None

    def engine(self, num_classes: int):
        from .engine import FederatedRun
        cfg = dataclasses.replace(self.cfg, eval=dataclasses.replace(self.cfg.eval, enabled=False))
        return FederatedRun(cfg, [self.data], client_ids=[self.cid], num_classes=num_classes)

    def evaluator(self, num_classes: int):
        from ..metrics import build_extractor
        from .evaluation import Evaluator
        c = self.cfg
        return Evaluator(c.eval, build_extractor(c.eval.feature_extractor, c.eval.inception_weights),
                         {self.cid: self.data}, c.model.nz, c.run.seed,
                         conditional=c.model.conditional != "none", num_classes=num_classes)


def _hello(node: _Node) -> dict[str, Any]:
    """Who this node is, what its data looks like, and (if the run evaluates) the moments of its
    real images' features -- sums over images, never an image."""
    from ..metrics import build_extractor
    from .evaluation import real_statistics
    d = node.data
    meta: dict[str, Any] = {"client-id": node.cid, "num-examples": len(d), "channels": d.channels,
                            "image-size": d.size, "class-names": json.dumps(list(d.class_names)),
                            "class-counts": json.dumps(d.class_counts())}
    out: dict[str, Any] = {"meta": meta}
    if node.cfg.eval.enabled:
        ex = build_extractor(node.cfg.eval.feature_extractor, node.cfg.eval.inception_weights)
        st = real_statistics(d, ex, node.cfg.eval.max_real, node.cfg.run.seed).stats
        meta["extractor"] = ex.name
        out["stats"] = {k: np.asarray(v) for k, v in st.to_npz_dict().items()}
    return out


def _eval_global(node: _Node, engine, ev, state: dict[str, torch.Tensor], round_: int) -> list[dict[str, Any]]:
    """The global model of ``round_`` against this node's own data (per-site fairness). Before
    training (round 0) it is also this client's starting model, recorded as such."""
    feats = ev.fake_features(engine._load_G(state), node.cid)
    recs = ev.score(feats, round_, "global", node.cid)
    if round_ == 0:
        recs += ev.score(feats, 0, node.cid, node.cid)
    return recs


def _train(node: _Node, req: dict[str, Any]) -> dict[str, Any]:
    conf = node.conf
    r, k = int(conf["round"]), int(conf["num-classes"])
    engine = node.engine(k)
    engine.strategy.load_state_dict(loads(bytes(conf["strategy"])))
    c = engine.clients[node.cid]
    if req.get("state") is not None:
        saved = loads(req["state"])
        c.opt_state, c.local, c.strategy = saved["opt_state"], saved["local"], saved["strategy"]
    start = _tensors(req["arrays"])
    recs: list[dict[str, Any]] = []
    ev = node.evaluator(k) if int(conf["eval-global"]) >= 0 or bool(conf["eval-local"]) else None
    if int(conf["eval-global"]) >= 0:  # the global model it receives is the last round's
        recs += _eval_global(node, engine, ev, {**start, **c.local}, int(conf["eval-global"]))
    up, train_recs, timing = engine._train_client(r, c, start)
    recs += train_recs
    state = dumps({"opt_state": c.opt_state, "local": c.local, "strategy": c.strategy})
    meta: dict[str, Any] = {"client-id": node.cid, "timing": json.dumps(timing), "dropped": up is None}
    if up is None:  # the node failed mid-round (simulated drop-out)
        return {"meta": {**meta, "records": json.dumps(recs)}, "state": state}
    if bool(conf["eval-local"]):
        recs += ev.evaluate(engine.trainer.gan.G, r, node.cid, node.cid)
    metrics = {"num-examples": up.num_examples, "steps": up.steps, **{k: float(v) for k, v in up.metrics.items()}}
    return {"meta": {**meta, "records": json.dumps(recs), "extra": dumps(up.extra)},
            "arrays": _arrays(up.weights), "metrics": metrics, "state": state}


def _evaluate(node: _Node, req: dict[str, Any]) -> dict[str, Any]:
    """The global model against this node's own data (with its own local layers, if any)."""
    k = int(node.conf["num-classes"])
    engine = node.engine(k)
    local = loads(req["state"])["local"] if req.get("state") is not None else {}
    recs = _eval_global(node, engine, node.evaluator(k), {**_tensors(req["arrays"]), **local},
                        int(node.conf["eval-global"]))
    return {"meta": {"client-id": node.cid, "records": json.dumps(recs)}}


def handle(kind: str, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one request: ``kind`` is ``hello``, ``train`` or ``evaluate``."""
    cid = str(req.get("node_config", {}).get("client-id", "?"))
    try:
        node = _Node(req)
        if kind == "hello":
            return _hello(node)
        if kind == "train":
            return _train(node, req)
        if kind == "evaluate":
            return _evaluate(node, req)
        raise ValueError(f"unknown request kind {kind!r}")
    except UserError as e:
        return {"meta": {"client-id": cid, "error": str(e).splitlines()[0][:500]}}
