"""Reading fedsynth checkpoints back: for a resume, and the generator a run released.

A checkpoint is a ``torch.save`` file of plain containers, numbers, strings and tensors, read
with ``torch.load(weights_only=True)``: loading one never runs code from the file (a crafted
pickle is refused with a clear error), so a checkpoint from anywhere is safe to open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import UserError
from .models import GenerativeModel, model_from_description
from .serial import UnsafeOrCorrupt, read_torch_file

FORMAT = "fedsynth-checkpoint/1"


def read_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Any:
    """The contents of a checkpoint file, read without unpickling anything but tensors and
    plain containers. Any failure is a :class:`UserError` naming ``what`` and the file."""
    p = Path(path).expanduser()
    try:
        return read_torch_file(p)
    except FileNotFoundError:
        raise UserError(f"{what}: checkpoint not found: {p}") from None
    except UnsafeOrCorrupt as e:
        raise UserError(f"{what}: cannot read checkpoint {p}: {e}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, or a run directory's newest readable checkpoint."""
    return pick_checkpoint(path, "last" if Path(path).expanduser().is_dir() else None)[0]


def pick_checkpoint(path: str | Path, which: str | None = None) -> tuple[dict[str, Any], str]:
    """The checkpoint ``which`` of a run directory, and a line saying which it is: ``best`` (the
    default: the best round by the held-out selection score, ``checkpoints/best.pt``; the last
    round where the run kept no held-out images), ``last`` (the newest readable round) or a round
    number that was kept. A checkpoint file is itself (``which`` must then be left out)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        if which is not None:
            raise UserError(f"--round {which}: give a run directory, not a checkpoint file, to pick a round")
        ck = _checked(read_checkpoint_file(p), p)
        return ck, f"checkpoint {p.name} (round {ck['round']})"
    which = which or "best"
    d = p / "checkpoints"
    best = d / "best.pt"
    if which == "best" and best.is_file():
        ck = _checked(read_checkpoint_file(best), best)
        return ck, f"best round {ck['round']} (lowest held-out selection score; --round last for the last)"
    if which in ("best", "last"):
        ck, _skipped = latest_checkpoint(p)
        why = " (this run kept no held-out images to select a best round by)" if which == "best" else ""
        return ck, f"last round {ck['round']}{why}"
    if not which.isdigit():
        raise UserError(f"--round must be best, last or a round number, got {which!r}")
    r = int(which)
    kept = sorted(int(q.stem.split("-")[1]) for q in d.glob("round-*.pt") if q.stem.split("-")[1].isdigit())
    if r in kept:
        ck = _checked(read_checkpoint_file(d / f"round-{r:04d}.pt"), d / f"round-{r:04d}.pt")
        return ck, f"round {r}"
    if best.is_file():
        ck = _checked(read_checkpoint_file(best), best)
        if ck["round"] == r:
            return ck, f"round {r} (the best round)"
        kept_text = f"best (round {ck['round']}), " + ", ".join(map(str, kept))
    else:
        kept_text = ", ".join(map(str, kept)) or "none"
    raise UserError(f"--round {r}: round {r} was not kept in {d} (kept: {kept_text}; run.keep-checkpoints "
                    f"sets how many of the newest rounds stay)")


def _checked(ck: Any, p: Path) -> dict[str, Any]:
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise UserError(f"{p} is not a fedsynth checkpoint")
    return ck


def latest_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The newest checkpoint of ``run_dir`` that reads back whole, and the newer ones skipped
    (path, reason): a truncated newest file (a full disk, a cut copy) falls back to the round
    before it."""
    d = Path(run_dir).expanduser() / "checkpoints"
    found = sorted(d.glob("round-*.pt"))
    if not found:
        raise UserError(f"no checkpoints in {d}")
    skipped: list[tuple[Path, str]] = []
    for p in reversed(found):
        try:
            ck = read_checkpoint_file(p)
        except UserError as e:
            skipped.append((p, str(e).split(": ", 2)[-1]))
            continue
        if isinstance(ck, dict) and ck.get("format") == FORMAT:
            return ck, skipped
        skipped.append((p, "not a fedsynth checkpoint"))
    raise UserError(f"no readable checkpoint in {d}: " + "; ".join(f"{p.name}: {why}" for p, why in skipped))


class Released(tuple):
    """``(model, weights, class names)`` with ``.which``: the line saying which checkpoint it is."""

    which: str = ""


def load_released(path: str | Path, client: str | None = None, which: str | None = None) -> Released:
    """The model a run released, as ``(model, weights, class names)``: the global model (its EMA
    if the run kept one), or ``client``'s own model for runs without one (``local``, ``ensemble``);
    of the checkpoint ``which`` (:func:`pick_checkpoint`: by default the best round)."""
    ck, line = pick_checkpoint(path, which)
    desc = dict(ck["model"])
    names = desc.pop("class_names", [])
    try:
        model = model_from_description(desc)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: unknown model description (written by another fedsynth version?): {e}") from None
    if client is not None:
        c = ck.get("clients", {}).get(client)
        if c is None:
            raise UserError(f"site {client!r} not in checkpoint (has {', '.join(ck.get('clients', {}))})")
        state = c["weights"] or {**ck["global"], **c.get("local", {})}
    else:
        state = ck.get("ema") or ck.get("global")
        if state is None:
            raise UserError(f"{path}: this run has no global model (strategy "
                            f"{ck['config']['fed']['strategy']}); pass --client ID")
    try:
        model.load(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model the checkpoint describes "
                        f"(written by another fedsynth version?): {str(e).splitlines()[0][:160]}") from None
    out = Released((model, state, names))
    out.which = line
    return out
