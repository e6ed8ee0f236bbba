"""Flower adapters: the only module that imports ``flwr`` (Message API, flwr >= 1.41).

A thin layer around the in-process engine's own code, so both engines compute the same thing:

* ``client`` (:class:`flwr.clientapp.ClientApp`): each hospital node reads its *own* data from
  the folder in its node config (``data-path``; never sent by the server) and trains as client
  ``client-id`` with :meth:`FederatedRun._train_client` -- the same hooks, DP, attacks and seeds
  ``(run seed, round, client)``. What must survive rounds on the node (optimizer state, local
  discriminator / BatchNorm, SCAFFOLD/FedDyn state) lives in ``context.state``.
* ``server`` (:class:`flwr.serverapp.ServerApp`): sends the global G and D in one ArrayRecord,
  validates the replies and aggregates them with the same :class:`Strategy` and
  :func:`validate_updates`, and writes a normal fedsynth run directory (config.toml,
  metrics.jsonl with losses and rejections, samples/ from fixed latents, checkpoints/,
  report.html).

Run config (``[tool.flwr.app.config]`` of the app, or ``flwr run --run-config``):
``config-path`` (a fedsynth TOML on the server), ``out`` (run directory), ``channels``,
``num-classes``, ``clients`` (nodes to wait for). Node config: ``data-path``, ``client-id``.

Current limits: every node trains every round (no client sampling across nodes); evaluation
(federated FD from merged statistics) runs in-process only.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..config import Config, build_config, load_config
from ..utils import set_torch_threads


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _config_from_text(text: str) -> Config:
    import tomllib
    return build_config(tomllib.loads(text))


# ------------------------------------------------------------------ client (hospital node)

client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    from ..data import load_dataset
    from .engine import FederatedRun
    conf = msg.content["config"]
    cfg = _config_from_text(str(conf["fedsynth-config"]))
    set_torch_threads(cfg.train.threads or 1)
    r = int(conf["round"])
    cid = str(context.node_config["client-id"])
    path = str(context.node_config["data-path"])
    data_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="folder", path=path),
                                   eval=dataclasses.replace(cfg.eval, enabled=False))
    data = load_dataset(data_cfg)
    engine = FederatedRun(data_cfg, [data], client_ids=[cid], num_classes=int(conf["num-classes"]))
    engine.strategy.load_state_dict(_loads(bytes(conf["strategy"])))
    c = engine.clients[cid]
    if "fedsynth" in context.state:
        saved = _loads(bytes(context.state["fedsynth"]["state"]))
        c.opt_state, c.local, c.strategy = saved["opt_state"], saved["local"], saved["strategy"]
    start = msg.content["arrays"].to_torch_state_dict()
    up, recs, _timing = engine._train_client(r, c, start)
    context.state["fedsynth"] = ConfigRecord({"state": _dumps({"opt_state": c.opt_state, "local": c.local,
                                                              "strategy": c.strategy})})
    if up is None:  # the node failed mid-round (simulated drop-out)
        return Message(RecordDict({"meta": ConfigRecord({"client-id": cid, "dropped": True})}), reply_to=msg)
    metrics = {"num-examples": up.num_examples, "steps": up.steps, **{k: float(v) for k, v in up.metrics.items()}}
    return Message(RecordDict({"arrays": ArrayRecord(up.weights), "metrics": MetricRecord(metrics),
                               "meta": ConfigRecord({"client-id": cid, "dropped": False,
                                                     "extra": _dumps(up.extra)})}), reply_to=msg)


# ------------------------------------------------------------------ server

server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    from ..models import build_gan
    from ..privacy.validation import validate_updates
    from ..report import RunDir
    from ..utils import derive_seed
    from .engine import model_spec, strategy_for
    from .strategies import ClientUpdate, shared_keys
    rc = context.run_config
    cfg = load_config(str(rc["config-path"]))
    m, f = cfg.model, cfg.fed
    spec = model_spec(cfg, cfg.data.image_size, int(rc["channels"]), int(rc["num-classes"]))
    gan = build_gan(spec, seed=derive_seed(cfg.run.seed, "init"))
    global_state = {k: v.detach().clone() for k, v in gan.state_dict().items()}
    strategy = strategy_for(cfg)
    travel = shared_keys(global_state, f.share)
    n_clients = int(rc["clients"])
    strategy.setup(global_state, {k for k, _ in gan.named_parameters()} & travel, n_clients)
    run_dir = RunDir.at(str(rc["out"]))
    run_dir.write_text("config.toml", cfg.to_toml())
    # sample grids need no data: the same fixed latents as the in-process engine's grids
    from ..utils import torch_generator
    z_grid = torch.randn(cfg.eval.grid_size, m.nz, generator=torch_generator(cfg.run.seed, "grid-latents"))
    y_grid = torch.arange(cfg.eval.grid_size) * max(spec.num_classes, 1) // cfg.eval.grid_size

    def save_grid(r: int) -> None:
        gan.load_state_dict(global_state)
        gan.G.eval()
        with torch.inference_mode():
            imgs = gan.G(z_grid, y_grid)
        run_dir.save_grid(r, imgs, nrow=max(1, int(cfg.eval.grid_size ** 0.5)))
    save_grid(0)
    deadline = time.time() + 120
    while len(list(grid.get_node_ids())) < n_clients and time.time() < deadline:
        time.sleep(0.2)
    nodes = sorted(grid.get_node_ids())[:n_clients]
    for r in range(1, f.rounds + 1):
        content = RecordDict({"arrays": ArrayRecord(global_state),
                              "config": ConfigRecord({"fedsynth-config": cfg.to_toml(), "round": r,
                                                      "num-classes": int(rc["num-classes"]),
                                                      "strategy": _dumps(strategy.state_dict())})})
        replies = grid.send_and_receive([Message(content=content, message_type="train", dst_node_id=n)
                                         for n in nodes])
        updates, recs = [], []
        for rep in replies:
            if rep.has_error():
                recs.append({"round": r, "client": f"node-{rep.metadata.src_node_id}", "metric": "dropped", "value": 1,
                             "reason": str(rep.error.reason)[:200]})
                continue
            meta = rep.content["meta"]
            cid = str(meta["client-id"])
            if meta["dropped"]:
                recs.append({"round": r, "client": cid, "metric": "dropped", "value": 1})
                continue
            mr = rep.content["metrics"]
            updates.append(ClientUpdate(cid, rep.content["arrays"].to_torch_state_dict(), int(mr["num-examples"]),
                                        {"d-loss": float(mr["d-loss"]), "g-loss": float(mr["g-loss"])},
                                        int(mr["steps"]), _loads(bytes(meta["extra"]))))
            recs += [{"round": r, "client": cid, "metric": k, "value": float(mr[k])} for k in ("d-loss", "g-loss")]
        if cfg.privacy.validate:
            updates, rejected = validate_updates(updates, global_state, travel, cfg.privacy.outlier_factor)
            recs += [{"round": r, "client": cid, "metric": "rejected", "value": 1, "reason": why} for cid, why in rejected]
        if len(updates) >= f.min_clients:
            global_state = strategy.aggregate(global_state, updates)
        else:
            recs.append({"round": r, "client": "server", "metric": "round-skipped", "value": 1})
        run_dir.log(recs)
        run_dir.save_checkpoint(r, {"format": "fedsynth-checkpoint/1", "round": r, "config": cfg.to_dict(),
                                    "model": {**spec.to_dict(), "class_names": []}, "global": global_state,
                                    "ema": None, "strategy": strategy.state_dict(), "clients": {}},
                                cfg.run.keep_checkpoints)
        save_grid(r)
    from ..report.html import build_report
    build_report(run_dir.path)
