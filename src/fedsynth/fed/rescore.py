"""A finished run scored again with a second feature network, from its kept checkpoints.

Sweeps score each run's last ``eval.last-k`` evaluations with a trained network (``fd-effnet``)
beside the run's own (``fd-random``), so every sweep table carries both and their rank
agreement. The run is rebuilt exactly as it ran (its ``config.toml``: the same data, partition,
held-out images and fixed latents), with only the feature network changed, and each kept
checkpoint is scored by the run's own evaluation code (:meth:`ClientPool.evaluate_global`).
The records go to ``rescore.jsonl`` beside ``metrics.jsonl``; the run's own files are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..config import UserError, load_config
from ..utils import atomic_write_text


def check_rescore(run: Path, extractor: str, last_k: int | None) -> None:
    """``UserError`` naming what is wrong: not a run directory, a feature network that does not
    exist (or ``auto``, which names none), ``last_k`` below 1."""
    from ..config import feature_network
    if not (run / "metrics.jsonl").is_file() or not (run / "config.toml").is_file():
        raise UserError(f"{run} is not a run directory (no metrics.jsonl and config.toml)")
    feature_network(extractor)
    if last_k is not None and last_k < 1:
        raise UserError(f"--last-k must be at least 1, got {last_k}")


def rescore_run(run: str | Path, extractor: str, last_k: int | None = None) -> list[dict[str, Any]]:
    """Score the run's kept checkpoints among its last ``last_k`` evaluated rounds (default: the
    run's ``eval.last-k``) with ``extractor``; write and return the records (the seconds it took
    as a ``rescore-seconds`` record)."""
    from ..checkpoint import read_checkpoint_file
    from ..report import read_metrics
    from .engine import Reporter
    from .run import in_process
    from .server import ServerState
    run = Path(run)
    check_rescore(run, extractor, last_k)
    t0 = time.perf_counter()
    cfg = load_config(str(run / "config.toml"))
    last_k = last_k or cfg.eval.last_k
    from ..registry import is_fd_metric
    evaluated = sorted({r["round"] for r in read_metrics(run) if r["round"] > 0 and is_fd_metric(r["metric"])})
    rounds = [r for r in evaluated[-last_k:] if (run / "checkpoints" / f"round-{r:04d}.pt").is_file()]
    if not rounds:
        raise UserError(f"{run}: none of the last {last_k} evaluated rounds has a checkpoint to score")
    from ..utils import set_torch_threads
    set_torch_threads(cfg.train.threads)  # as the run itself (a sweep's parallel jobs share the cores out)
    cfg2 = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, feature_extractor=extractor))
    fed = in_process()(cfg2, Reporter())
    records: list[dict[str, Any]] = []
    for r in rounds:
        ck = read_checkpoint_file(run / "checkpoints" / f"round-{r:04d}.pt")
        fed.server = ServerState(ck["global"], ck.get("ema"))
        fed.server.load_training_state(ck)
        fed.pool.load_state_dict(ck)
        records += fed.pool.evaluate_global(r)
    fed.pool.finish()
    records.append({"round": rounds[-1], "client": "server", "metric": "rescore-seconds",
                    "value": time.perf_counter() - t0, "extractor": extractor, "rounds": rounds})
    atomic_write_text(run / "rescore.jsonl", "".join(json.dumps(x) + "\n" for x in records))
    return records

