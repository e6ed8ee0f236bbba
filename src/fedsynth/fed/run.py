"""A run, from a configuration to a finished run directory: the one library entry point
(``fedsynth.fed.run``; the Flower ServerApp uses it too, so it lives inside ``fed``).

:func:`run_experiment` is what ``fedsynth run``, ``fedsynth sweep``, the experiments and the
Flower server (:mod:`fedsynth.fed.flower.server_app`) call::

    config -> engine (its clients: in-process from the data, or Flower nodes)
           -> run directory (created exclusively; or reopened to resume from its newest
              readable checkpoint) -> config.toml, partition.json / nodes.json, run.json
           -> the rounds (metrics.jsonl, timings.jsonl, samples/, checkpoints/, fd.png), written to
              the run directory and shown to the experiment trackers the config enables
              (TensorBoard, MLflow: fedsynth.report.tracking)
           -> report.html (then the trackers' runs end)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Config, UserError, check_output_path
from ..report import RunDir
from .engine import Federation, Reporter, RunResult, StopRun
from .inprocess import build_in_process


@dataclass
class Outcome:
    run_dir: RunDir | None
    result: RunResult | None        # None when a resumed run was already complete
    federation: Federation | None
    resumed_from: int = 0           # the round of the checkpoint a resume continued from
    skipped: tuple = ()             # checkpoints a resume could not read: (path, reason)


def describe(cfg: Config) -> str:
    """The default run-directory name: data, strategy, clients, size (or ``run.name``)."""
    if cfg.run.name:
        return cfg.run.name
    n = 1 if cfg.fed.strategy == "centralized" else cfg.partition.clients
    return f"{cfg.data.source}-{cfg.fed.strategy}-{n}c-{cfg.data.image_size}px"


def in_process(progress: Callable[[int, int], None] | None = None) -> Callable[[Config, Reporter], Federation]:
    """The default engine: load and partition the configured data, every client in this process."""
    def build(cfg: Config, reporter: Reporter) -> Federation:
        from ..data import load_dataset, partition_for
        from .evaluation import check_enough_images, holdout_for
        data = load_dataset(cfg, progress)
        parts = partition_for(cfg, data)
        parts, held, notice = holdout_for(cfg, parts)  # each site's held-out images never train
        check_enough_images(cfg, parts)  # before anything is written
        fed = build_in_process(cfg, parts, reporter, holdout=held)
        if notice:  # shown with the run's other notes, once it starts
            fed.notes.append(notice)
        info = partition_info(cfg.partition.scheme, parts, data)
        for cid, settings in cfg.sites:  # which site ran what ([sites.<id>])
            if cid in info["clients"]:
                info["clients"][cid]["settings"] = dict(settings)
        if fed.server_trainer is not None:  # fed.server-data
            info["server"] = fed.server_trainer.describe()
        fed.description = ("partition.json", info)
        fed.data_info = {"images": len(data), "size": data.size, "skipped": data.provenance.get("skipped", [])}
        if held:
            info["holdout"] = {cid: {"select": len(s), "test": len(t)} for cid, (s, t) in held.items()}
        return fed
    return build


def run_experiment(cfg: Config, out: str | Path | None = None, reporter: Reporter | None = None,
                   resume: str | Path | None = None,
                   engine: Callable[[Config, Reporter], Federation] | None = None,
                   on_start: Callable[[RunDir, Federation, int], None] | None = None) -> Outcome:
    """Run ``cfg`` into a run directory and write its report.

    Parameters
    ----------
    out : path, optional
        The run directory (must not hold a run); default ``run.out-dir/NNNN-<describe(cfg)>``.
    resume : path, optional
        Continue this run directory from its newest readable checkpoint (``cfg`` must be its
        own ``config.toml``).
    engine : callable, optional
        ``(cfg, reporter) -> Federation``: where the clients are (default :func:`in_process`).
    on_start : callable, optional
        ``(run_dir, federation, first_round)``, once the directory is ready (the CLI prints
        the partition and a header here).
    """
    reporter = reporter or Reporter()
    from ..registry import FAMILIES
    cfg = FAMILIES.load(cfg.model.family).pinned(cfg)  # e.g. the frozen autoencoder's hash, before anything is written
    from ..report.tracking import check_trackers, open_trackers
    check_trackers(cfg)  # a tracker's missing package: an error before any data is loaded
    if resume is None:  # a run directory that cannot be made: an error before any data is loaded
        check_output_path(out or cfg.run.out_dir, "--out" if out else "run.out-dir")
    skipped: list = []
    ck = None
    if resume is not None:
        from ..checkpoint import latest_checkpoint
        from ..report.rundir import claim_for_resume
        claim_for_resume(resume)  # refused while a live run holds the directory
        try:
            ck, skipped = latest_checkpoint(resume)
        except UserError as e:
            if "no checkpoints" not in str(e):
                raise
            reporter.warning(f"{resume} has no checkpoint yet (the run stopped before its first round ended): "
                             f"starting again from round 1")
        for p, why in skipped:
            reporter.warning(f"skipped checkpoint {p.name}: {why}")
        if ck is not None and ck["round"] > cfg.fed.rounds:
            raise UserError(f"fed.rounds={cfg.fed.rounds}: {resume} has already done {ck['round']} rounds "
                            f"(a resume can add rounds, not take them away)")
        if ck is not None and ck["round"] >= cfg.fed.rounds:
            return Outcome(RunDir(Path(resume)), None, None, ck["round"], tuple(skipped))
    fed = (engine or in_process())(cfg, reporter)
    first = 1
    if resume is not None:
        if ck is not None:
            fed.restore(ck)
            first = ck["round"] + 1
        run_dir = RunDir.reopen(resume, ck["round"] if ck is not None else -1)  # no checkpoint: start over
        run_dir.records = fed.pool.resumable_records(run_dir.records, ck)
        run_dir.log([])
    else:
        run_dir = RunDir.at(out) if out else RunDir.create(cfg.run.out_dir, describe(cfg))
        run_dir.write_text("config.toml", cfg.to_toml())
        if fed.description is not None:
            run_dir.write_json(*fed.description)

    def forget() -> None:  # a new run that recorded nothing leaves no directory behind
        if resume is None and not (run_dir.path / "metrics.jsonl").exists():
            shutil.rmtree(run_dir.path, ignore_errors=True)

    session = start_session(run_dir, first, "Flower (SuperNodes)" if fed.pool.remote else "in-process")
    if resume is not None:
        extend_rounds(cfg, run_dir, session, reporter)
    try:
        sink = open_trackers(cfg, run_dir, None if resume is None else first - 1, reporter.warning)
    except UserError:
        forget()
        raise
    if on_start is not None:
        on_start(run_dir, fed, first)
    try:
        result = fed.run(sink)
    except BaseException as e:
        sink.close("KILLED" if isinstance(e, (KeyboardInterrupt, StopRun)) else "FAILED")
        if isinstance(e, UserError):
            forget()
        raise
    end_session(run_dir, session, cfg.fed.rounds, result.seconds)
    if fed.evaluator is None:
        final_grid(cfg, run_dir)
    from ..report.html import build_report
    try:
        build_report(run_dir.path)
    except BaseException:
        sink.close("FAILED")
        raise
    sink.close("FINISHED")
    return Outcome(run_dir, result, fed, first - 1, tuple(skipped))


def extend_rounds(cfg: Config, run_dir: RunDir, session: dict[str, Any], reporter: Reporter) -> None:
    """A resume with more rounds (``--resume DIR --set fed.rounds=N``): config.toml gets the new
    number, and run.json's session says from how many rounds to how many."""
    from ..config import load_config
    old = load_config(run_dir.path / "config.toml").fed.rounds
    if old == cfg.fed.rounds:
        return
    run_dir.write_text("config.toml", load_config(run_dir.path / "config.toml",
                                                  [f"fed.rounds={cfg.fed.rounds}"]).to_toml())
    session["sessions"][-1]["rounds_extended"] = {"from": old, "to": cfg.fed.rounds}
    run_dir.write_json("run.json", session)
    reporter.warning(f"extending the run from {old} to {cfg.fed.rounds} rounds (recorded in config.toml and run.json)")


def final_grid(cfg: Config, run_dir: RunDir) -> None:
    """With evaluation off no round draws a sample grid: draw the released model's from the last
    checkpoint (``eval.grid-size`` images, seeded from the run seed), so the report still shows
    what the run made. A run without a global model (``local``, ``ensemble``) draws client 0's."""
    import math

    from ..checkpoint import load_released
    from ..utils import derive_seed
    try:
        model, state, _ = load_released(run_dir.path)
    except UserError:
        try:
            model, state, _ = load_released(run_dir.path, sorted(_clients_of(run_dir))[0])
        except (UserError, IndexError):
            return
    n = cfg.eval.grid_size
    x = model.generate(state, n, derive_seed(cfg.run.seed, "final-grid") % (2**31))
    run_dir.save_grid(cfg.fed.rounds, x, nrow=int(math.ceil(math.sqrt(n))))


def _clients_of(run_dir: RunDir) -> list[str]:
    try:
        return list(json.loads((run_dir.path / "partition.json").read_text()).get("clients", {}))
    except (OSError, ValueError):
        return []


def partition_info(scheme: str, parts: list, data: Any) -> dict[str, Any]:
    """What partition.json holds: scheme, images and class histogram per client, data provenance."""
    from ..data import summary
    return {"scheme": scheme, **summary(parts, data.class_names), "data": data.provenance}


def start_session(run_dir: RunDir, first_round: int, engine: str) -> dict[str, Any]:
    """Add this process's session to ``run.json`` (what ran, where, when: the report's summary
    header). A resume appends a session; a run.json that does not parse is started afresh."""
    import datetime
    import platform

    import torch

    from .. import __version__
    info: dict[str, Any] = {}
    try:
        info = json.loads((run_dir.path / "run.json").read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(info, dict) or not isinstance(info.get("sessions"), list):
        info = {"sessions": []}
    session = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "first_round": first_round, "engine": engine, "fedsynth": __version__, "torch": torch.__version__,
               "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
               "torch_threads": torch.get_num_threads()}
    info["fedsynth"] = __version__
    info["sessions"].append(session)
    run_dir.write_json("run.json", info)
    return info


def end_session(run_dir: RunDir, info: dict[str, Any], last_round: int, seconds: float) -> None:
    """Mark the session started by :func:`start_session` finished."""
    import datetime
    info["sessions"][-1].update(finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                last_round=last_round, seconds=round(seconds, 1))
    run_dir.write_json("run.json", info)
