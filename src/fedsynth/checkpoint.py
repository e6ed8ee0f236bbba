"""Reading fedsynth checkpoints back: the generator a run released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import UserError
from .models import ModelSpec, build_gan


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if p.is_dir():  # a run directory: its newest checkpoint
        cks = sorted((p / "checkpoints").glob("round-*.pt"))
        if not cks:
            raise UserError(f"no checkpoints in {p / 'checkpoints'}")
        p = cks[-1]
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {p}: {e.__class__.__name__}") from None
    if not isinstance(ck, dict) or ck.get("format") != "fedsynth-checkpoint/1":
        raise UserError(f"{p} is not a fedsynth checkpoint")
    return ck


def load_generator(path: str | Path, client: str | None = None) -> tuple[torch.nn.Module, ModelSpec, list[str]]:
    """The released generator: the global model (its EMA if the run kept one), or ``client``'s
    own model for runs without a global model (``local``, ``ensemble``)."""
    ck = load_checkpoint(path)
    model = dict(ck["model"])
    names = model.pop("class_names", [])
    try:
        spec = ModelSpec(**model)
    except TypeError:
        raise UserError(f"{path}: unknown model description (written by another fedsynth version?)") from None
    if client is not None:
        c = ck["clients"].get(client)
        if c is None:
            raise UserError(f"client {client!r} not in checkpoint (has {', '.join(ck['clients'])})")
        state = c["weights"] or {**ck["global"], **c.get("local", {})}
    else:
        state = ck.get("ema") or ck.get("global")
        if state is None:
            raise UserError(f"{path}: this run has no global model (strategy "
                            f"{ck['config']['fed']['strategy']}); pass --client ID")
    gan = build_gan(spec, seed=0)
    try:
        gan.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model the checkpoint describes "
                        f"(written by another fedsynth version?): {str(e).splitlines()[0][:160]}") from None
    gan.G.eval()
    return gan.G, spec, names
