"""One hospital node's work for a Flower message, in plain Python and NumPy terms (no ``flwr``).

:func:`handle` greets, trains or evaluates, exactly as the in-process engine would for this
client: the run config arrives as text, the global weights as NumPy arrays, the node's state
from earlier rounds (optimizer, local layers, SCAFFOLD/FedDyn state) as bytes; the answer is
the same kinds of things. The ClientApp (:mod:`fedsynth.fed.flower`) turns Flower messages into
these requests and back, and runs :func:`handle` either in its own process or -- when the node
was started with ``fedsynth deploy supernode`` -- in the node's warm worker
(:mod:`fedsynth.fed.worker`), which has torch imported already.

Requests: ``{"config": {...}, "node_config": {...}, "arrays": {name: ndarray} | None,
"state": bytes | None}``. The node's state after each round it trains is also saved on its own
disk (``<cache>/flower-state/<run key>/<client id>/``, the newest three rounds), so that a run
resumed from the server's checkpoint -- a new Flower run, with empty contexts -- continues
exactly. Answers: ``{"meta": {...}, "arrays": ..., "metrics": ..., "stats": ...,
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

    def extractor(self):
        """The feature network the server chose (it sends ``random`` or ``inception``, never ``auto``)."""
        from ..metrics import build_extractor
        return build_extractor(self.cfg.eval.feature_extractor, self.cfg.eval.inception_weights)

    def evaluator(self, num_classes: int):
        from .evaluation import Evaluator
        c = self.cfg
        return Evaluator(c.eval, self.extractor(), {self.cid: self.data}, c.model.nz, c.run.seed,
                         conditional=c.model.conditional != "none", num_classes=num_classes)


KEEP_STATES = 3  # saved node states per run (the server's last checkpoint may be a round behind)


def _state_dir(node: "_Node"):
    from ..utils import cache_dir
    key = "".join(ch for ch in str(node.conf.get("run-key", "")) if ch.isalnum())
    return cache_dir() / "flower-state" / key / "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in node.cid)


def _saved_state(node: "_Node", req: dict[str, Any], before: int) -> bytes | None:
    """This node's state between rounds: Flower's context keeps it for the run; a resumed run
    (a new Flower run, empty contexts) finds it on the node's disk, as of the last round before
    ``before`` that this node trained (a round the server lost may have been trained already)."""
    if req.get("state") is not None:
        return req["state"]
    if not node.conf.get("run-key"):
        return None
    d = _state_dir(node)
    rounds = [r for r in sorted(int(p.stem.split("-")[1]) for p in d.glob("round-*.pt")) if r < before]
    return (d / f"round-{rounds[-1]:04d}.pt").read_bytes() if rounds else None


def _save_state(node: "_Node", round_: int, state: bytes) -> None:
    """Kept on the node's own disk (under its cache folder): optimizer and local-layer state,
    never images. Written atomically; the newest :data:`KEEP_STATES` rounds are kept."""
    from ..utils import atomic_write_bytes
    if not node.conf.get("run-key"):
        return
    d = _state_dir(node)
    atomic_write_bytes(d / f"round-{round_:04d}.pt", state)
    for old in sorted(d.glob("round-*.pt"))[:-KEEP_STATES]:
        old.unlink(missing_ok=True)


def _hello(node: _Node) -> dict[str, Any]:
    """Who this node is, what its data looks like, and (if the run evaluates) the moments of its
    real images' features -- sums over images, never an image."""
    from .evaluation import real_statistics
    d = node.data
    meta: dict[str, Any] = {"client-id": node.cid, "num-examples": len(d), "channels": d.channels,
                            "image-size": d.size, "class-names": json.dumps(list(d.class_names)),
                            "class-counts": json.dumps(d.class_counts())}
    out: dict[str, Any] = {"meta": meta}
    if node.cfg.eval.enabled:
        ex = node.extractor()
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
    saved_bytes = _saved_state(node, req, before=r)
    if saved_bytes is not None:
        saved = loads(saved_bytes)
        c.opt_state, c.local, c.strategy = saved["opt_state"], saved["local"], saved["strategy"]
    start = _tensors(req["arrays"])
    recs: list[dict[str, Any]] = []
    ev = node.evaluator(k) if int(conf["eval-global"]) >= 0 or bool(conf["eval-local"]) else None
    if int(conf["eval-global"]) >= 0:  # the global model it receives is the last round's
        recs += _eval_global(node, engine, ev, {**start, **c.local}, int(conf["eval-global"]))
    up, train_recs, timing = engine._train_client(r, c, start)
    recs += train_recs
    state = dumps({"opt_state": c.opt_state, "local": c.local, "strategy": c.strategy})
    _save_state(node, r, state)
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
    saved = _saved_state(node, req, before=int(node.conf["round"]) + 1)
    local = loads(saved)["local"] if saved is not None else {}
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
