"""What ``fedsynth run`` does around :func:`fedsynth.fed.run.run_experiment`, as functions: its
options checked and turned into a config (a new run, ``--resume``, ``--replay``), the note on
the smallest site's few real images, a clean stop on the first Ctrl-C, and the hint to score a
finished run with the trained feature network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, UserError, load_config


@dataclass
class RunInputs:
    """A run's config; for a replay also its engine and ``(sites, missed site rounds)``."""

    cfg: Config
    engine: Any = None
    replayed: tuple[list[str], list[Any]] | None = None


def run_inputs(config: Path | None, overrides: list[str], out: Path | None, resume: Path | None,
               replay: Path | None, sites: Path | None) -> RunInputs:
    """The config ``fedsynth run`` trains with: ``config`` + ``overrides``; a resumed run's own
    ``config.toml`` (the directory claimed, so no live run holds it); a replayed run's, with its
    recorded misses forced and the in-process engine over the ``sites``' folders
    (:mod:`fedsynth.fed.replay`). A :class:`UserError` for options that do not go together."""
    from ..config import EXTEND_KEYS, HARDWARE_KEYS, parse_override
    if (replay is None) != (sites is None):
        raise UserError("--replay and --sites go together: the recorded run, and the folder of the sites' images")
    if replay is not None:
        from .replay import replay_config, replay_engine
        if config is not None or resume is not None or any(parse_override(t)[0] not in HARDWARE_KEYS
                                                           for t in overrides):
            raise UserError("--replay takes no --config, --resume, or --set other than "
                            f"{', '.join(HARDWARE_KEYS)}: the recorded run's own config.toml is used")
        cfg, ids, missed = replay_config(replay, overrides)
        return RunInputs(cfg, replay_engine(ids, sites), (ids, missed))
    if resume is not None:
        allowed = HARDWARE_KEYS + EXTEND_KEYS
        if config is not None or out is not None or any(parse_override(t)[0] not in allowed for t in overrides):
            raise UserError("--resume takes no --config, --out, or --set other than "
                            f"{', '.join(allowed)}: the run's own config.toml is used (fed.rounds: more "
                            f"rounds for a finished run)")
        if not resume.exists():
            raise UserError(f"--resume {resume}: does not exist")
        if not (resume / "config.toml").is_file():
            raise UserError(f"--resume {resume}: not a run directory (no config.toml)")
        from ..report.rundir import claim_for_resume
        claim_for_resume(resume)  # refused while a live run holds the directory
        config = resume / "config.toml"
    return RunInputs(load_config(config, overrides))


def smallest_site_note(cfg: Config, fed: Any) -> str | None:
    """A caution when the smallest site holds too few real images (volumes: slices) for a
    stable score in the run's feature network (:func:`fedsynth.metrics.stats.few_real_note`)."""
    ev = fed.evaluator
    if ev is None or fed.description is None:
        return None
    from ..metrics.stats import few_real_note
    sizes = {cid: c.get("images", 0) for cid, c in fed.description[1].get("clients", {}).items()}
    if not sizes:
        return None
    cid = min(sizes, key=lambda k: sizes[k])
    ext = ev.extractor  # volumes: each plane's block of features, one row per slice
    if hasattr(ext, "plane_dims"):
        from ..metrics.planes import slice_indices
        rows = sizes[cid] * len(slice_indices(cfg.data.image_size, ext.slices))
    else:
        rows = sizes[cid]
    return few_real_note(rows, getattr(ext, "plane_dims", getattr(ext, "dims", None)),
                         f"site {cid}'s data" if len(sizes) > 1 else "") or None


def request_stop(fed: Any) -> bool:
    """Ask the run to stop after the current step; True if that was asked already (a second
    Ctrl-C: the caller aborts at once)."""
    if fed.pool.stop_requested:
        return True
    fed.pool.stop_requested = True
    return False


def rescore_hint(cfg: Config, outcome: Any) -> str | None:
    """The command that scores a finished run's last rounds with the trained feature network
    (fd-effnet) too, where the run scored itself with another one; else None."""
    from ..metrics.features import trained_network_command
    cmd = trained_network_command(cfg, outcome.run_dir.path)
    fed = outcome.federation
    if cmd and fed is not None and fed.evaluator is not None and fed.evaluator.extractor.kind != "effnet-lite0":
        return cmd
    return None
