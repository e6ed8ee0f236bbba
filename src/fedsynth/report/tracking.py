"""Experiment trackers as observers of a run: TensorBoard and MLflow (the optional extra
``pip install 'fedsynth[tracking]'``).

:func:`open_trackers` wraps the run directory in a :class:`TrackedRun`, the sink the round loop
writes to (:meth:`fedsynth.fed.engine.Federation.run`): every record, timing, sample grid and
checkpoint goes to the run directory first, exactly as without trackers, and is then shown to
each tracker. The loop has no branch for tracking; with no tracker configured the sink only
forwards.

- ``run.tensorboard = true``: TensorBoard event files in ``<run dir>/tensorboard/`` (written
  with ``torch.utils.tensorboard``, read by ``tensorboard --logdir``): every metric record as a
  scalar ``<metric>/<series>`` (``fd-random/global``, ``fd-random/client-0``, ``d-loss/client-1``,
  ``fd-random/global-on-0`` for the global model on site 0's data) at step = round, timings as
  ``timing/<field>/<client>``, the sample grids as the image ``samples``, the resolved config
  as the text ``config``. A resumed run purges the steps after its checkpoint (``purge_step``).
- ``run.mlflow-uri = "..."``: one MLflow run per run directory (its id is kept in
  ``<run dir>/mlflow.json``, so ``--resume`` continues the same MLflow run): the flattened
  config as parameters (``fed.rounds``, ...), the same metric keys per round (step = round),
  each sample grid as it is written, and at the end ``report.html``, ``config.toml``,
  ``metrics.jsonl``, ``timings.jsonl``, ``partition.json``, ``fd.png`` and ``checkpoints/`` as
  artifacts; the run ends FINISHED, FAILED or KILLED. MLflow 3 refuses its old file store
  (``file:``/plain paths) unless ``MLFLOW_ALLOW_FILE_STORE=true``; ``sqlite:///path.db`` is the
  local store it recommends. A new experiment in a ``sqlite:`` store keeps its artifacts in
  ``mlartifacts/`` beside the database file (MLflow's own default, ``./mlruns``, depends on
  the working directory).

Both libraries are imported only when a run enables them (``import fedsynth`` stays as fast);
a missing one is a :class:`~fedsynth.config.UserError` with the pip command, raised before any
data is loaded (:func:`check_trackers`). A tracker that fails in the middle of a run (a tracking
server gone) is dropped with one warning: the run and its directory go on.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from ..config import Config, UserError
from ..utils import atomic_write_text
from .rundir import RunDir

Record = dict[str, Any]

INSTALL = "pip install 'fedsynth[tracking]'"


def _wanted(cfg: Config) -> list[tuple[str, str, str]]:
    """(config key, import name, pip package) of each tracker the config enables."""
    out = []
    if cfg.run.tensorboard:
        out.append(("run.tensorboard", "tensorboard", "tensorboard"))
    if cfg.run.mlflow_uri:
        out.append(("run.mlflow-uri", "mlflow", "mlflow-skinny"))
    return out


def check_trackers(cfg: Config) -> None:
    """A :class:`UserError` naming the key and the pip command if an enabled tracker's package is
    missing (checked without importing it)."""
    for key, module, package in _wanted(cfg):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"config key '{key}' needs the {package} package, which is not installed: "
                            f"{INSTALL} (or pip install {package})")


def series_tag(r: Record) -> str:
    """``<metric>/<series>``: ``global`` (the global model on the union, or the sites' summary),
    ``global-on-<site>``, ``client-<id>`` (its own model on its own data; a client's loss), or
    ``client-<id>-on-union`` (the local baseline's model on everyone's data)."""
    who, real = str(r.get("client", "")), r.get("real")
    if who == "global":
        where = "global" if real in (None, "union", "global", "sites") else f"global-on-{real}"
    else:
        where = f"client-{who}" if real in (None, who) else f"client-{who}-on-{real}"
    return f"{r['metric']}/{where}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flatten(cfg: Config) -> dict[str, str]:
    """``{"fed.rounds": "20", "fed.share": '["G", "D"]', ...}``: the config as tracker parameters."""
    return {f"{section}.{key}": v if isinstance(v, str) else json.dumps(list(v) if isinstance(v, tuple) else v)
            for section, body in cfg.to_dict().items() for key, v in body.items()}


class Tracker:
    """What a tracker is shown; every method may be left as is."""

    name = "tracker"

    def scalars(self, records: list[Record]) -> None: ...
    def timings(self, records: list[Record]) -> None: ...
    def grid(self, round_: int, path: Path) -> None: ...
    def close(self, run: Path, status: str) -> None: ...


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg: Config, run: Path, resume_from: int | None):
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run hides what was written after its checkpoint (all of it, with no checkpoint:
        # the run starts over at round 0)
        purge = None if resume_from is None else resume_from + 1 if resume_from > 0 else 0
        self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=purge)
        if resume_from is None:
            toml = cfg.to_toml()
            self.writer.add_text("config", "\n".join("    " + line for line in toml.splitlines()), 0)

    def scalars(self, records):
        for r in records:
            if _number(r.get("value")):
                self.writer.add_scalar(series_tag(r), float(r["value"]), int(r["round"]))
        self.writer.flush()

    def timings(self, records):
        for r in records:
            for k, v in r.items():
                if k not in ("round", "client") and _number(v):
                    self.writer.add_scalar(f"timing/{k}/{r.get('client', '')}", float(v), int(r["round"]))
        self.writer.flush()

    def grid(self, round_, path):
        import numpy as np
        from PIL import Image
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8: the PNG the run directory holds
        self.writer.add_image("samples", pixels, round_, dataformats="HWC")
        self.writer.flush()

    def close(self, run, status):
        self.writer.close()


# files of the run directory logged as MLflow artifacts at the end (those that exist)
MLFLOW_FILES = ("report.html", "config.toml", "metrics.jsonl", "timings.jsonl", "partition.json", "nodes.json",
                "fd.png")


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg: Config, run: Path, resume_from: int | None):
        from mlflow.tracking import MlflowClient
        uri = cfg.run.mlflow_uri
        self.client = MlflowClient(tracking_uri=uri)
        state = run / "mlflow.json"
        old = json.loads(state.read_text()) if resume_from is not None and state.is_file() else {}
        if old.get("tracking_uri") == uri and old.get("run_id"):
            self.run_id = old["run_id"]  # --resume: the same MLflow run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(cfg.run.mlflow_experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            where = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in ./mlruns
                where = (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlartifacts").as_uri()
            exp_id = self.client.create_experiment(cfg.run.mlflow_experiment, artifact_location=where)
        made = self.client.create_run(exp_id, run_name=run.name, tags={"fedsynth.run_dir": str(run.resolve())})
        self.run_id = made.info.run_id
        from mlflow.entities import Param
        params = [Param(k, v) for k, v in flatten(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        atomic_write_text(state, json.dumps({"tracking_uri": uri, "experiment_id": exp_id, "run_id": self.run_id},
                                            indent=2) + "\n")

    def _metrics(self, items: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v, step in items]
        for i in range(0, len(ms), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def scalars(self, records):
        self._metrics([(series_tag(r), float(r["value"]), int(r["round"])) for r in records if _number(r.get("value"))])

    def timings(self, records):
        self._metrics([(f"timing/{k}/{r.get('client', '')}", float(v), int(r["round"]))
                       for r in records for k, v in r.items() if k not in ("round", "client") and _number(v)])

    def grid(self, round_, path):
        self.client.log_artifact(self.run_id, str(path), "samples")

    def close(self, run, status):
        try:
            for name in MLFLOW_FILES:
                if (run / name).is_file():
                    self.client.log_artifact(self.run_id, str(run / name))
            if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
                self.client.log_artifacts(self.run_id, str(run / "checkpoints"), "checkpoints")
        finally:
            self.client.set_terminated(self.run_id, status)


# config key -> tracker(cfg, run directory, resume_from: the checkpoint round a resume continues
# from, 0 when it starts over, None for a new run)
TRACKERS: dict[str, Callable[[Config, Path, "int | None"], Tracker]] = {
    "run.tensorboard": TensorBoardTracker,
    "run.mlflow-uri": MlflowTracker,
}


class TrackedRun:
    """The sink a run writes to: its :class:`RunDir`, then each tracker.

    Parameters
    ----------
    run_dir : RunDir
        Where everything is written first (atomically); trackers never replace it.
    trackers : list of Tracker
        Shown every record, timing and grid after the run directory has it.
    warn : callable
        Told once when a tracker fails mid-run and is dropped.
    """

    def __init__(self, run_dir: RunDir, trackers: list[Tracker], warn: Callable[[str], None] = lambda s: None):
        self.run_dir, self.trackers, self.warn = run_dir, list(trackers), warn

    def __getattr__(self, name: str) -> Any:  # path, records, timings, ...: the run directory's
        if name == "run_dir":
            raise AttributeError(name)
        return getattr(self.run_dir, name)

    def _tell(self, method: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker must not end a run: drop it, say so once
                self.trackers.remove(t)
                self.warn(f"{t.name} tracking stopped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"the run directory {self.run_dir.path} has everything")

    # the sink interface of fedsynth.fed.engine.Federation
    def log(self, records: list[Record]) -> None:
        self.run_dir.log(records)
        self._tell("scalars", records)

    def log_timing(self, records: list[Record]) -> None:
        self.run_dir.log_timing(records)
        self._tell("timings", records)

    def save_grid(self, round_: int, images: Any, nrow: int) -> Path:
        p = self.run_dir.save_grid(round_, images, nrow)
        self._tell("grid", round_, p)
        return p

    def save_checkpoint(self, round_: int, obj: dict[str, Any], keep: int) -> Path:
        return self.run_dir.save_checkpoint(round_, obj, keep)

    def plot(self, title: str) -> Path:
        return self.run_dir.plot(title)

    def close(self, status: str = "FINISHED") -> None:
        """End every tracker's run (``FINISHED``, ``FAILED`` or ``KILLED``), after the report."""
        self._tell("close", self.run_dir.path, status)
        self.trackers = []


def open_trackers(cfg: Config, run_dir: RunDir, resume_from: int | None = None,
                  warn: Callable[[str], None] = lambda s: None) -> TrackedRun:
    """The run's sink with the trackers ``cfg`` enables; a :class:`UserError` naming the key if
    one cannot start (package missing, a bad URI, a tracking server that does not answer).

    ``resume_from``: None for a new run; for ``--resume``, the round of the checkpoint it
    continues from (0: none readable, the run starts over)."""
    check_trackers(cfg)
    trackers: list[Tracker] = []
    for key, _, _ in _wanted(cfg):
        try:
            trackers.append(TRACKERS[key](cfg, run_dir.path, resume_from))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the library's own error, shown on one line
            for t in trackers:
                t.close(run_dir.path, "FAILED")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"config key '{key}': cannot start tracking: {first}") from None
    return TrackedRun(run_dir, trackers, warn)
