"""The run directory: ``runs/<NNNN>-<desc>/`` with everything a run writes.

Layout (written in this order)::

    config.toml            resolved configuration, written first
    partition.json         images and class histogram per client
    metrics.jsonl          one JSON object per line: round, client, metric, value, ...
                           (deterministic: same seed, same file)
    timings.jsonl          wall-clock seconds and images/s per client per round
    samples/round-XXXX.png sample grid from fixed latents
    checkpoints/round-XXXX.pt
    fd.png                 Frechet distance per client and global, per round

Every file is written atomically (temp file + rename): a killed run leaves the previous
complete version, never a half-written one.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_torch_save, atomic_write_bytes, atomic_write_text


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.]+", "-", text).strip("-").lower()[:60] or "run"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []

    @classmethod
    def create(cls, parent: str | Path, desc: str) -> "RunDir":
        """A new numbered directory ``parent/NNNN-desc`` (the number is one past the highest)."""
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            nums = [int(m.group(1)) for p in parent.iterdir() if (m := re.match(r"(\d{4,})-", p.name))]
            path = parent / f"{max(nums, default=-1) + 1:04d}-{_slug(desc)}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:  # another run took this number: try the next
                continue

    @classmethod
    def at(cls, path: str | Path) -> "RunDir":
        """Use exactly ``path`` (``--out DIR``); it must not hold an earlier run."""
        path = Path(path)
        if (path / "config.toml").exists():
            from ..config import UserError
            raise UserError(f"--out {path} already holds a run (config.toml exists); choose another directory")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def reopen(cls, path: str | Path, upto_round: int) -> "RunDir":
        """An existing run directory, its records cut back to ``upto_round`` (the last
        checkpoint): anything written after it belongs to the round that was lost."""
        rd = cls(Path(path))
        if (rd.path / "metrics.jsonl").is_file():
            rd.records = [r for r in read_metrics(rd.path) if r["round"] <= upto_round]
        if (rd.path / "timings.jsonl").is_file():
            rd.timings = [r for r in read_metrics(rd.path / "timings.jsonl") if r["round"] <= upto_round]
        rd.log([])
        rd.log_timing([])
        return rd

    # ---- files
    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        atomic_write_text(p, text)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def log(self, records: list[dict[str, Any]]) -> None:
        """Append metric records; the whole ``metrics.jsonl`` is replaced atomically."""
        self.records.extend(records)
        self.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))

    def log_timing(self, records: list[dict[str, Any]]) -> None:
        """Wall-clock measurements go to ``timings.jsonl``, apart from the (deterministic) metrics."""
        self.timings.extend(records)
        self.write_text("timings.jsonl", "".join(json.dumps(r) + "\n" for r in self.timings))

    def save_grid(self, round_: int, images: torch.Tensor, nrow: int) -> Path:
        from torchvision.utils import save_image
        buf = io.BytesIO()
        save_image(images, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
        p = self.path / "samples" / f"round-{round_:04d}.png"
        atomic_write_bytes(p, buf.getvalue())
        return p

    def plot(self, title: str) -> Path:
        """``fd.png``: the Frechet distance per client and global, per round, so far."""
        from .plots import plot_fd
        p = self.path / "fd.png"
        plot_fd(self.records, p, title=title)
        return p

    def save_checkpoint(self, round_: int, obj: dict[str, Any], keep: int) -> Path:
        d = self.path / "checkpoints"
        p = d / f"round-{round_:04d}.pt"
        atomic_torch_save(obj, p)
        old = sorted(d.glob("round-*.pt"))[:-keep]
        for q in old:
            q.unlink(missing_ok=True)
        return p


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
