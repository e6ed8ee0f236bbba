"""Replay: re-run a recorded federation in this process, with the participation it had.

A Flower run with real faults -- a hospital's SuperNode that crashed mid-round, a reply that
came too late or did not parse -- records, per round, which sampled clients took no part and
why (``metrics.jsonl``: ``dropped`` / ``rejected``), and which node was which client
(``nodes.json``). :func:`replay_config` turns those into the run's own configuration with the
drop-outs forced through ``faults.dropout-schedule`` -- the hook the in-process engine already
has for simulated drop-outs -- so the replay runs the same loop, the same ``client_round`` and
``server_round``; clients are sampled from the run seed, as they were. Every random draw derives
from the run seed, round and client, and each node built on its state of the last round the
server took (``state-round``), so the replay's global weights equal the recorded ones bit for
bit (same device and library versions), and :func:`compare_checkpoints` checks that.

Anyone holding the sites' images can thus check a real run afterwards: ``fedsynth run --replay
RUN_DIR --sites SITES`` (``SITES/client-<id>/``, as ``fedsynth data split`` writes them).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any, Callable

from ..config import Config, UserError, build_config
from .engine import Federation, Reporter
from .inprocess import build_in_process

#: Records that mean "this sampled client's update was not used in this round".
MISSED = ("dropped", "rejected")


def missed_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every (round, client) of a run directory whose update the server did not use, with the
    recorded reason: the ``dropped`` and ``rejected`` records of ``metrics.jsonl``, rounds >= 1."""
    from ..report.compare import load_run
    return [{"round": int(r["round"]), "client": str(r["client"]), "why": str(r.get("reason", ""))}
            for r in load_run(run_dir).records
            if r["metric"] in MISSED and r["round"] >= 1 and r.get("client") not in ("server", None)]


def clients_of(run_dir: str | Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The run's client ids in order, and each one's own settings: from ``nodes.json`` (a Flower
    run), else ``partition.json`` (an in-process run)."""
    for name in ("nodes.json", "partition.json"):
        f = Path(run_dir) / name
        if f.is_file():
            info = json.loads(f.read_text(encoding="utf-8"))
            clients = info if name == "nodes.json" else info.get("clients", {})
            ids = sorted(clients, key=_order)
            return ids, {c: dict(clients[c].get("settings", {})) for c in ids}
    raise UserError(f"--replay {run_dir}: neither nodes.json nor partition.json there: which clients took part "
                    f"is unknown")


def _order(cid: str) -> tuple:
    """Client ids in the engines' order: "2" before "10"."""
    import re
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", cid) if p)


def replay_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
                  ) -> tuple[Config, list[str], list[dict[str, Any]]]:
    """The run's own ``config.toml``, each site's own settings as ``[sites.<id>]`` tables, and
    the recorded drop-outs forced (``faults.dropout-schedule``); with the client ids and the
    missed rounds. ``overrides``: hardware keys only (``run.device``, ``train.threads``)."""
    run_dir = Path(run_dir)
    f = run_dir / "config.toml"
    if not f.is_file():
        raise UserError(f"--replay {run_dir}: no config.toml there (not a run directory)")
    tree = tomllib.loads(f.read_text(encoding="utf-8"))
    if tree.get("fed", {}).get("secure-aggregation", False):
        raise UserError(f"--replay {run_dir}: the run used secure aggregation, whose aggregate is quantised inside "
                        f"Flower's SecAgg+ protocol; one process cannot reproduce it bit for bit")
    ids, settings = clients_of(run_dir)
    missed = missed_rounds(run_dir)
    faults = tree.setdefault("faults", {})
    faults["dropout-schedule"] = sorted(set(faults.get("dropout-schedule", [])) | {f"{m['round']}:{m['client']}"
                                                                               for m in missed})
    sites = tree.setdefault("sites", {})
    for cid, own in settings.items():
        for key, value in own.items():
            section, name = key.split(".", 1)
            sites.setdefault(cid, {}).setdefault(section, {})[name] = value
    if not sites:
        tree.pop("sites")
    return build_config(tree, overrides), ids, missed


def replay_engine(ids: list[str], sites: str | Path) -> Callable[[Config, Reporter], Federation]:
    """The in-process engine over the sites' own folders ``sites/client-<id>/``."""
    def build(cfg: Config, reporter: Reporter) -> Federation:
        from ..data import load_dataset
        parts = []
        for cid in ids:
            path = Path(sites) / f"client-{cid}"
            if not path.is_dir():
                raise UserError(f"--sites {sites}: no folder client-{cid} for site {cid} (the run's sites are "
                                f"{', '.join(ids)})")
            try:
                parts.append(load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
                    cfg.data, source="folder", path=str(path)))))
            except UserError as e:
                raise UserError(f"site {cid} ({path}): {e}") from None
        from ..data import summary
        from .evaluation import holdout_for
        parts, held, notice = holdout_for(cfg, parts)  # each site's held-out images, split as its node split them
        if held is not None:
            held = {ids[int(k)]: v for k, v in held.items()}
        fed = build_in_process(cfg, parts, reporter, client_ids=ids, holdout=held)
        if notice:
            fed.notes.append(notice)
        info = {"scheme": "replay", **summary(parts, parts[0].class_names), "replay-of-sites": str(sites)}
        info["clients"] = dict(zip(ids, info["clients"].values()))  # summary() numbers them 0, 1, ...
        for cid, own in cfg.sites:
            if cid in info["clients"]:
                info["clients"][cid]["settings"] = dict(own)
        fed.description = ("partition.json", info)
        fed.data_info = {"images": sum(len(d) for d in parts), "size": parts[0].size}
        return fed
    return build


def compare_checkpoints(recorded: str | Path, replayed: str | Path) -> list[dict[str, Any]]:
    """Per round whose checkpoint both run directories kept: whether the global weights are
    bit-identical, and the largest difference. Empty if they share no checkpoint round."""
    import torch

    from ..checkpoint import read_checkpoint_file

    def rounds(d: Path) -> dict[int, Path]:
        return {int(p.stem.split("-")[1]): p for p in (d / "checkpoints").glob("round-*.pt")}
    a, b = rounds(Path(recorded)), rounds(Path(replayed))
    out = []
    for r in sorted(set(a) & set(b)):
        ga = read_checkpoint_file(str(a[r]), "recorded checkpoint")["global"]
        gb = read_checkpoint_file(str(b[r]), "replayed checkpoint")["global"]
        same = set(ga) == set(gb) and all(torch.equal(ga[k], gb[k]) for k in ga)
        diff = max((float((ga[k].double() - gb[k].double()).abs().max()) for k in ga if k in gb
                    and ga[k].shape == gb[k].shape and ga[k].numel()), default=0.0)
        out.append({"round": r, "identical": same, "max-abs-diff": diff, "tensors": len(ga)})
    return out
