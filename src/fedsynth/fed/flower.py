"""Flower adapters: the only module that imports ``flwr`` (Message API, flwr >= 1.41).

A thin layer around the in-process engine's own code, so both engines compute the same thing:

* ``client`` (:class:`flwr.clientapp.ClientApp`): each hospital node reads its *own* data from
  its node config (``data-path``, optional ``data-source``; never sent by the server) and trains
  as client ``client-id`` with :meth:`FederatedRun._train_client` -- the same hooks, DP, attacks
  and seeds ``(run seed, round, client)``. What must survive rounds on the node (optimizer
  state, local discriminator / BatchNorm, SCAFFOLD/FedDyn state) lives in ``context.state``.
  Evaluation happens where the data is: the node scores its local model and the global model
  against its own real images and sends back numbers (and, once, the mergeable moments of its
  real-image features).
* ``server`` (:class:`flwr.serverapp.ServerApp`): greets the nodes (client id, data shape,
  real-image moments), samples clients per round with the in-process engine's
  :func:`sample_clients`, sends the global G and D in one ArrayRecord, validates and
  aggregates the replies with the same :class:`Strategy` and :func:`validate_updates`, scores the
  global model against the *merged* moments, and writes a normal fedsynth run directory
  (config.toml, nodes.json, metrics.jsonl, timings.jsonl, samples/, checkpoints/, fd.png,
  report.html).

Messages per round: one ``train`` message per sampled node and its reply. The global model of
round r is evaluated on the nodes inside round r+1's ``train`` message (it is the model they
receive anyway), so an evaluated round costs no extra round trip; only the last round's global
model needs one ``evaluate`` message. The server polls for replies every 50 ms (Flower's
``Grid.send_and_receive`` sleeps 3 s between polls).

Run config (``[tool.flwr.app.config]`` of the app, or ``flwr run --run-config``):
``config-text`` (a fedsynth config sent with the run, as ``fedsynth deploy run`` does) or
``config-path`` (a fedsynth TOML on the SuperLink's machine), ``out`` (run directory),
``clients`` (nodes to wait for), ``connect-timeout``, ``round-timeout`` and ``poll-interval``
(seconds). Node config: ``data-path``,
``client-id``, ``data-source`` (default ``folder``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..config import UserError, build_config, load_config

# No torch at import: a node's ClientApp process that hands its work to the warm worker never
# needs it (Flower starts one such process per message).

POLL_S = 0.05  # how often the server asks the SuperLink for replies


def _natural(cid: str) -> tuple:
    """Client ids in the in-process engine's order: "2" before "10"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", cid) if p)


# ------------------------------------------------------------------ client (hospital node)

client = ClientApp()


def _dispatch(kind: str, req: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`fedsynth.fed.node.handle` in the node's warm worker if it has one, else here."""
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


def _answer(kind: str, msg: Message, context: Context) -> Message:
    """Flower message -> plain request -> :func:`_dispatch` -> Flower reply. Arrays travel as
    the NumPy arrays Flower stores (bit-exact both ways); the node's state between rounds stays
    in ``context.state`` (bytes)."""
    content = msg.content
    req: dict[str, Any] = {"config": dict(content["config"]), "node_config": dict(context.node_config),
                           "arrays": ({k: a.numpy() for k, a in content["arrays"].items()}
                                      if "arrays" in content else None),
                           "state": bytes(context.state["fedsynth"]["state"]) if "fedsynth" in context.state else None}
    res = _dispatch(kind, req)
    if res.get("state") is not None:
        context.state["fedsynth"] = ConfigRecord({"state": res["state"]})
    out: dict[str, Any] = {"meta": ConfigRecord(res["meta"])}
    if res.get("arrays") is not None:
        out["arrays"] = ArrayRecord(array_dict={k: Array(v if v.flags.c_contiguous else v.copy(order="C"))
                                                for k, v in res["arrays"].items()})  # (keeps 0-d arrays 0-d)
    if res.get("metrics") is not None:
        out["metrics"] = MetricRecord(res["metrics"])
    if res.get("stats") is not None:
        out["stats"] = ArrayRecord(array_dict={k: Array(np.asarray(v)) for k, v in res["stats"].items()})
    return Message(RecordDict(out), reply_to=msg)


@client.query()
def hello(msg: Message, context: Context) -> Message:
    """First contact: client id, data shape and classes, real-image feature moments."""
    return _answer("hello", msg, context)


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received global model (if asked), train locally, score the local model."""
    return _answer("train", msg, context)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model against this node's own data."""
    return _answer("evaluate", msg, context)


# ------------------------------------------------------------------ server

server = ServerApp()


def _exchange(grid: Grid, messages: list[Message], timeout: float, poll: float = POLL_S
              ) -> tuple[list[Message], list[int]]:
    """Push ``messages`` and poll for their replies every ``poll`` seconds, for at most
    ``timeout`` seconds. Returns the replies and the destination nodes that did not answer."""
    dst = [m.metadata.dst_node_id for m in messages]
    ids = list(grid.push_messages(messages))
    waiting = dict(zip(ids, dst))
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


def _say(text: str) -> None:
    print(f"[fedsynth] {text}", flush=True)


@server.main()
def main(grid: Grid, context: Context) -> None:
    try:
        _serve(grid, context)
    except UserError as e:
        _say(f"error: {e}")
        # an Exception (not SystemExit): Flower then flushes the logs and marks the run failed
        raise RuntimeError(f"fedsynth: {e}") from None


def _last_checkpoint(out: str, cfg) -> dict[str, Any]:
    """The newest checkpoint of a Flower run directory, checked against the config."""
    from pathlib import Path

    from ..checkpoint import load_checkpoint
    found = sorted((Path(out) / "checkpoints").glob("round-*.pt"))
    if not found:
        raise UserError(f"resume: {out}/checkpoints holds no checkpoint (was the run started?)")
    ck = load_checkpoint(found[-1])
    if "flower" not in ck:
        raise UserError(f"resume: {found[-1]} was not written by a Flower run; resume it with fedsynth run --resume")
    if ck["config"] != cfg.to_dict():
        raise UserError(f"resume: the config differs from the one {found[-1]} was written with "
                        f"(resume with the run directory's own config.toml)")
    return ck


def _serve(grid: Grid, context: Context) -> None:
    import torch

    from ..metrics import FeatureStats, build_extractor
    from ..models import build_gan
    from ..privacy.validation import validate_updates
    from ..report import RunDir
    from ..report.plots import plot_fd
    from ..utils import derive_seed, torch_generator
    from .engine import eval_rounds, model_spec, sample_clients, setup_strategy, strategy_for
    from .evaluation import Evaluator, RealStats, sites_summary
    from .node import dumps as _dumps
    from .node import loads as _loads
    from .strategies import ClientUpdate
    rc = context.run_config
    if str(rc.get("config-text", "")).strip():  # sent with the run by `fedsynth deploy run`
        import tomllib
        try:
            cfg = build_config(tomllib.loads(str(rc["config-text"])))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"run config 'config-text' is not valid TOML: {e}") from None
    else:
        cfg = load_config(str(rc["config-path"]))
    m, f = cfg.model, cfg.fed
    strategy = strategy_for(cfg)
    if not strategy.aggregates or strategy.sequential or f.strategy in ("ensemble", "centralized"):
        raise UserError(f"config key 'fed.strategy' = '{f.strategy}' cannot run over Flower (it pools data, "
                        f"never aggregates or passes one model from site to site); use it in-process")
    if f.ema > 0:
        raise UserError("config key 'fed.ema' is not supported over Flower yet; set it to 0")
    n_clients = int(rc["clients"])
    timeout = float(rc.get("round-timeout", 3600))
    poll = float(rc.get("poll-interval", POLL_S))
    extractor = None
    if cfg.eval.enabled:  # the nodes must use exactly the server's extractor
        extractor = build_extractor(cfg.eval.feature_extractor, cfg.eval.inception_weights)
        kind = "inception" if extractor.metric == "fid" else "random"
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, feature_extractor=kind))
    cfg_text = cfg.to_toml()
    ck = None
    if bool(rc.get("resume", False)):  # a new Flower run continues from the last checkpoint
        ck = _last_checkpoint(str(rc["out"]), cfg)
        run_key = str(ck["flower"]["run-key"])
        run_dir = RunDir.reopen(str(rc["out"]), upto_round=int(ck["round"]))
        if ck["flower"]["pending-global"] >= 0:  # these per-site scores belong to the round that was lost
            g = ck["flower"]["pending-global"]
            run_dir.records = [x for x in run_dir.records
                               if not (x["round"] == g and x["client"] == "global" and x.get("real") != "union")]
            run_dir.log([])
        _say(f"resuming after round {ck['round']} from {rc['out']}/checkpoints")
    else:
        import uuid
        run_key = uuid.uuid4().hex  # names the nodes' saved state for this run (not a random draw of the study)
        run_dir = RunDir.at(str(rc["out"]))
        run_dir.write_text("config.toml", cfg_text)

    # --- who is there
    _say(f"waiting for {n_clients} SuperNode(s)")
    deadline = time.monotonic() + float(rc.get("connect-timeout", 300))
    while len(list(grid.get_node_ids())) < n_clients:
        if time.monotonic() > deadline:
            raise UserError(f"only {len(list(grid.get_node_ids()))} of {n_clients} SuperNodes connected "
                            f"within connect-timeout = {rc.get('connect-timeout', 300)} s")
        time.sleep(POLL_S)
    nodes = sorted(grid.get_node_ids())
    hello = ConfigRecord({"fedsynth-config": cfg_text})
    replies, silent = _exchange(grid, [Message(RecordDict({"config": hello}), message_type="query", dst_node_id=n)
                                       for n in nodes], timeout)
    if silent:
        raise UserError(f"SuperNode(s) {silent} did not answer the greeting within {timeout:.0f} s")
    info: dict[str, dict[str, Any]] = {}
    stats: dict[str, FeatureStats] = {}
    for rep in replies:
        nid = rep.metadata.src_node_id
        if rep.has_error():
            raise UserError(f"SuperNode {nid} failed: {str(rep.error.reason).strip().splitlines()[-1][:300]}")
        meta = dict(rep.content["meta"])
        cid = str(meta["client-id"])
        if "error" in meta:
            raise UserError(f"client {cid} (SuperNode {nid}): {meta['error']}")
        if cid in info:
            raise UserError(f"client id '{cid}' is used by SuperNodes {info[cid]['node']} and {nid}; give each "
                            f"node its own --node-config client-id")
        info[cid] = {"node": nid, **meta}
        if "stats" in rep.content:
            stats[cid] = FeatureStats.from_npz_dict({k: a.numpy() for k, a in rep.content["stats"].items()})
            if meta["extractor"] != extractor.name:
                raise UserError(f"client {cid} extracts features with {meta['extractor']}, the server with "
                                f"{extractor.name}: install the same Inception weights everywhere (eval.inception-weights)")
    ids = sorted(info, key=_natural)
    if ck is not None and ck["flower"]["clients"] != ids:
        raise UserError(f"the checkpoint was written with clients {ck['flower']['clients']}, the nodes now are {ids}")
    for key in ("channels", "image-size"):
        seen = {cid: int(info[cid][key]) for cid in ids}
        if len(set(seen.values())) > 1:
            raise UserError(f"the nodes' images differ in {key}: {seen}; every site must preprocess to the same shape")
    channels, size = int(info[ids[0]]["channels"]), int(info[ids[0]]["image-size"])
    counts = {cid: np.array(json.loads(info[cid]["class-counts"])) for cid in ids}
    num_classes = max(len(c) for c in counts.values())
    counts = {cid: np.pad(c, (0, num_classes - len(c))) for cid, c in counts.items()}
    run_dir.write_json("nodes.json", {cid: {"node-id": info[cid]["node"], "images": int(info[cid]["num-examples"]),
                                            "classes": json.loads(info[cid]["class-names"]),
                                            "class-counts": counts[cid].tolist()} for cid in ids})
    listing = ", ".join(f"{c} ({info[c]['num-examples']} images)" for c in ids)
    _say(f"clients {listing}; {channels} channel(s), {size} px, {num_classes} class(es)")

    # --- the model and the strategy, as in-process
    spec = model_spec(cfg, size, channels, num_classes)
    gan = build_gan(spec, seed=derive_seed(cfg.run.seed, "init"))
    global_state = {k: v.detach().clone() for k, v in gan.state_dict().items()}
    travel = setup_strategy(cfg, strategy, gan, global_state, len(ids))
    # FedBN / partial sharing: some layers never leave the nodes, so the server holds no whole
    # generator; the nodes score the global model with their own layers, the server does not
    whole = set(global_state) <= travel
    if not whole:
        _say(f"{len(set(global_state) - travel)} tensor(s) stay on the nodes ({f.strategy}, fed.share): the global "
             f"model is scored per site only; no union score and no sample grids on the server")
    ev = None
    to_eval: set[int] = set()
    if cfg.eval.enabled:
        ev = Evaluator.from_stats(cfg.eval, extractor, {c: RealStats(stats[c], None) for c in ids}, counts,
                                  m.nz, cfg.run.seed, conditional=m.conditional != "none")
        to_eval = eval_rounds(f.rounds, cfg.eval.every)
    z_grid = torch.randn(cfg.eval.grid_size, m.nz, generator=torch_generator(cfg.run.seed, "grid-latents"))
    y_grid = torch.arange(cfg.eval.grid_size) * max(num_classes, 1) // cfg.eval.grid_size
    G = gan.G

    def load_G(state):
        G.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("G.")})
        return G

    def save_grid(r: int) -> None:
        if not whole:
            return
        G = load_G(global_state)
        G.eval()
        with torch.inference_mode():
            imgs = G(z_grid, y_grid)
        run_dir.save_grid(r, imgs, nrow=max(1, int(cfg.eval.grid_size ** 0.5)))

    def eval_union(r: int) -> list[dict[str, Any]]:
        if ev is None or not whole:
            return []
        return ev.evaluate(load_G(global_state), r, "global", None)

    by_node = {info[c]["node"]: c for c in ids}

    def messages(r: int, train: list[str], evaluate: list[str], eval_global: int, eval_local: bool) -> list[Message]:
        """Round ``r``'s messages: ``train`` to the sampled clients, ``evaluate`` to the others
        that must score the incoming global model. Weights and strategy state serialised once."""
        base = {"fedsynth-config": cfg_text, "round": r, "num-classes": num_classes, "run-key": run_key,
                "eval-global": eval_global, "strategy": _dumps(strategy.state_dict())}
        arrays, out = ArrayRecord(global_state), []
        for kind, cids in (("train", train), ("evaluate", evaluate)):
            for cid in cids:
                conf = ConfigRecord({**base, "eval-local": eval_local and kind == "train"})
                out.append(Message(RecordDict({"arrays": arrays, "config": conf}),
                                   message_type=kind, dst_node_id=info[cid]["node"]))
        return out

    def node_records(rep: Message) -> list[dict[str, Any]]:
        return json.loads(str(rep.content["meta"]["records"])) if "records" in rep.content["meta"] else []

    def per_site(recs: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
        site = [x for x in recs if x.get("client") == "global" and x.get("round") == r and x.get("real") in ids]
        return sites_summary(site, extractor, r) if cfg.eval.per_site and len(ids) > 1 else []

    accountant = None
    if cfg.privacy.client_dp:
        from ..privacy.dp import accountant as make_accountant
        accountant = make_accountant()
    pending_global = -1  # the round whose global model the nodes evaluate on receipt
    recs0: list[dict[str, Any]] = []
    first = 1
    if ck is not None:
        global_state = ck["global"]
        strategy.load_state_dict(ck["strategy"])
        pending_global, first = int(ck["flower"]["pending-global"]), int(ck["round"]) + 1
        if accountant is not None:
            accountant.history = list(ck["flower"]["accountant"])
    else:
        save_grid(0)
        if 0 in to_eval:
            recs0 = eval_union(0)
            pending_global = 0
    t_run = time.perf_counter()
    for r in range(first, f.rounds + 1):
        t0 = time.perf_counter()
        picked = sample_clients(ids, f.fraction, f.min_clients, cfg.run.seed, r)
        idle = [c for c in ids if c not in picked] if pending_global >= 0 else []  # every site scores the incoming model
        replies, silent = _exchange(grid, messages(r, picked, idle, pending_global, r in to_eval), timeout, poll)
        recs = list(recs0)
        recs0 = []
        updates, timings = [], []
        for nid in silent:
            recs.append({"round": r, "client": by_node[nid], "metric": "dropped", "value": 1,
                         "reason": f"no reply within round-timeout = {timeout:.0f} s"})
        for rep in sorted(replies, key=lambda x: _natural(by_node.get(x.metadata.src_node_id, "?"))):
            cid = by_node.get(rep.metadata.src_node_id, f"node-{rep.metadata.src_node_id}")
            if rep.has_error():
                recs.append({"round": r, "client": cid, "metric": "dropped", "value": 1,
                             "reason": str(rep.error.reason).strip().splitlines()[-1][:300]})
                continue
            meta = rep.content["meta"]
            if "error" in meta:
                raise UserError(f"client {cid}: {meta['error']}")
            recs += node_records(rep)
            if rep.metadata.message_type != "train" or cid not in picked:
                continue
            timings.append({**json.loads(str(meta["timing"])), "warm-worker": bool(meta.get("warm", False))})
            if meta["dropped"]:
                continue
            mr = rep.content["metrics"]
            updates.append(ClientUpdate(cid, rep.content["arrays"].to_torch_state_dict(), int(mr["num-examples"]),
                                        {"d-loss": float(mr["d-loss"]), "g-loss": float(mr["g-loss"])},
                                        int(mr["steps"]), _loads(bytes(meta["extra"]))))
        if pending_global >= 0:
            recs += per_site(recs, pending_global)
        if cfg.privacy.validate:
            updates, rejected = validate_updates(updates, global_state, travel, cfg.privacy.outlier_factor)
            recs += [{"round": r, "client": cid, "metric": "rejected", "value": 1, "reason": why} for cid, why in rejected]
            for cid, why in rejected:
                _say(f"round {r}: update of client {cid} rejected: {why}")
        if len(updates) >= f.min_clients:
            strategy.noise_generator = torch_generator(cfg.run.seed, "client-dp-noise", r)
            global_state = strategy.aggregate(global_state, updates)
            if accountant is not None:
                accountant.step(noise_multiplier=cfg.privacy.client_dp_noise, sample_rate=len(picked) / len(ids))
                recs.append({"round": r, "client": "server", "metric": "client-dp-epsilon",
                             "value": float(accountant.get_epsilon(cfg.privacy.dp_delta)), "delta": cfg.privacy.dp_delta})
        else:
            recs.append({"round": r, "client": "server", "metric": "round-skipped", "value": 1,
                         "reason": f"{len(updates)} valid update(s), fed.min-clients = {f.min_clients}"})
            _say(f"round {r} skipped: only {len(updates)} valid update(s)")
        pending_global = -1
        if r in to_eval:
            recs += eval_union(r)
            pending_global = r
        run_dir.log(recs)
        wall = time.perf_counter() - t0
        train_s = max((t["seconds"] for t in timings), default=0.0)
        run_dir.log_timing(timings + [{"round": r, "client": "server", "wall_s": wall, "max_client_train_s": train_s,
                                       "overhead_s": wall - train_s}])
        run_dir.save_checkpoint(r, {"format": "fedsynth-checkpoint/1", "round": r, "config": cfg.to_dict(),
                                    "model": {**spec.to_dict(), "class_names": json.loads(info[ids[0]]["class-names"])},
                                    "global": global_state, "ema": None, "strategy": strategy.state_dict(),
                                    "clients": {},  # each node keeps its own state (see fedsynth.fed.node)
                                    "flower": {"run-key": run_key, "pending-global": pending_global, "clients": ids,
                                               "accountant": list(accountant.history) if accountant else None}},
                                cfg.run.keep_checkpoints)
        if r in to_eval or not cfg.eval.enabled:
            save_grid(r)
        fd = [x["value"] for x in recs if x.get("client") == "global" and x.get("real") == "union"
              and x["metric"] == (extractor.metric if extractor else "")]
        _say(f"round {r}/{f.rounds}: {len(updates)}/{len(picked)} update(s) aggregated, {wall:.1f} s"
             + (f" (training {train_s:.1f} s)" if timings else "") + (f", global {extractor.metric} {fd[0]:.4g}" if fd else ""))
    if pending_global >= 0:  # the last round's global model, scored where the data is
        replies, _silent = _exchange(grid, messages(f.rounds, [], ids, pending_global, False), timeout, poll)
        recs = [x for rep in replies if not rep.has_error() for x in node_records(rep)]
        run_dir.log(recs + per_site(recs, pending_global))
    if cfg.eval.enabled:
        plot_fd(run_dir.records, run_dir.path / "fd.png", title=f"Flower · {f.strategy} · {len(ids)} client(s)")
    from ..report.html import build_report
    build_report(run_dir.path)
    _say(f"done: {f.rounds} rounds in {time.perf_counter() - t_run:.1f} s; run directory {run_dir.path}")
