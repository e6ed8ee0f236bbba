"""The run directory: ``runs/<NNNN>-<desc>/`` with everything a run writes.

Layout (written in this order)::

    config.toml            resolved configuration, written first
    partition.json         images and class histogram per client
    metrics.jsonl          one JSON object per line: round, client, metric, value, ...
                           (deterministic: same seed, same file)
    timings.jsonl          wall-clock seconds and images/s per client per round; per round a
                           "server" record: seconds training (train_s), evaluating (eval_s), all (wall_s)
    log.txt                what `fedsynth run` printed, plus every site's values per round
    samples/real.png       real images from the sites, laid out like the sample grids (in-process)
    samples/round-XXXX.png sample grid from fixed latents
    samples/realism.png    the last round's most (top row) and least realistic samples
    checkpoints/round-XXXX.pt
    fd.png                 Fréchet distance per client and global, per round

Every file is written atomically (temp file + rename): a killed run leaves the previous
complete version, never a half-written one.

One run owns one directory. Creating it is exclusive (``mkdir`` without ``exist_ok``, or, for an
existing empty ``--out``, a claim made under the lock below), and a directory that already holds
anything is refused. While a run is live it holds an advisory lock, ``fcntl.flock`` on the
file ``.lock`` inside the directory, for the rest of its process's life; the OS drops it when the
process ends, however it ends (even ``kill -9``), so a lock never outlives its run. A second run
-- a new one with the same ``--out``, or ``--resume`` -- is refused while the lock is held.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import atomic_torch_save, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # imported where used: `fedsynth --help` need not load torch
    import torch


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.]+", "-", text).strip("-").lower()[:60] or "run"


LOCK_NAME = ".lock"

# Locks this process holds, by resolved directory: held for the process's life (the OS releases
# them when it ends). A process may reopen a directory it already owns (a run, then its resume,
# in one Python session); every other process is refused.
_HELD: dict[str, int] = {}


class RunDirBusy(Exception):
    """Another live process holds this run directory's lock."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is in use by a live run ({holder})")
        self.path, self.holder = path, holder


def lock_run_dir(path: str | Path) -> None:
    """Take ``path/.lock`` for the rest of this process's life, or raise :class:`RunDirBusy`.

    ``flock`` is advisory and tied to the open file: it needs no clean-up, and a killed
    process's lock vanishes with the process. The lock file itself is never removed (removing
    it would let two processes lock two different files of the same name)."""
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        try:
            if os.path.samestat(os.fstat(_HELD[key]), os.stat(path / LOCK_NAME)):
                return
        except OSError:
            pass
        release_run_dir(path)  # the directory was removed and made again: lock the new one
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): exclusivity rests on mkdir alone
        _HELD[key] = fd
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            for _ in range(40):  # the holder writes its pid just after it locks
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                if holder:
                    break
                time.sleep(0.005)
        finally:
            os.close(fd)
        raise RunDirBusy(path, holder or "process id not written yet") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    _HELD[key] = fd


def release_run_dir(path: str | Path) -> None:
    """Give up this process's lock on ``path`` early (a library caller done with a run)."""
    fd = _HELD.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the file releases the flock


def _lock_or_fail(path: str | Path, option: str, busy: str) -> None:
    """:func:`lock_run_dir`, its failures as one-line :class:`UserError`s naming ``option``."""
    from ..config import UserError
    try:
        lock_run_dir(path)
    except RunDirBusy as e:
        raise UserError(f"{option} {path}{busy.format(holder=e.holder)}") from None
    except OSError as e:
        raise UserError(f"{option} {path}: cannot lock the directory: {e}") from None


def claim_for_resume(path: str | Path) -> None:
    """Lock an existing run directory to continue it; a :class:`UserError` if a live run has it."""
    _lock_or_fail(path, "--resume", ": a live run ({holder}) is still writing this directory; "
                                    "wait for it to finish or stop it first")


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []
        self.log_text: list[str] = []

    @classmethod
    def create(cls, parent: str | Path, desc: str) -> "RunDir":
        """A new numbered directory ``parent/NNNN-desc`` (the number is one past the highest),
        created exclusively and locked."""
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            nums = [int(m.group(1)) for p in parent.iterdir() if (m := re.match(r"(\d{4,})-", p.name))]
            path = parent / f"{max(nums, default=-1) + 1:04d}-{_slug(desc)}"
            try:
                path.mkdir()
            except FileExistsError:  # another run took this number: try the next
                continue
            try:
                lock_run_dir(path)
            except RunDirBusy:  # an --out naming this very path got in first: it is theirs
                continue
            return cls(path)

    @classmethod
    def at(cls, path: str | Path) -> "RunDir":
        """Use exactly ``path`` (``--out DIR``): created, or an existing empty directory; in both
        cases claimed under its lock, so of two runs started together exactly one gets it."""
        from ..config import UserError
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise UserError(f"--out {path} exists and is not a directory") from None
        _lock_or_fail(path, "--out", " is in use by another live run ({holder}); choose another directory")
        held = _contents(path)
        if held:
            release_run_dir(path)
            if "config.toml" in held:
                raise UserError(f"--out {path} already holds a run (config.toml exists); choose another "
                                f"directory, or continue it with --resume {path}")
            raise UserError(f"--out {path} is not empty ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}): "
                            f"a half-created run or other files; choose another directory")
        return cls(path)

    @classmethod
    def reopen(cls, path: str | Path, upto_round: int) -> "RunDir":
        """An existing run directory, its records cut back to ``upto_round`` (the last
        checkpoint): anything written after it belongs to the round that was lost. Refused while
        another live process holds the directory's lock."""
        claim_for_resume(path)
        rd = cls(Path(path))
        if (rd.path / "metrics.jsonl").is_file():
            rd.records = [r for r in read_metrics(rd.path) if r["round"] <= upto_round]
        if (rd.path / "timings.jsonl").is_file():
            rd.timings = [r for r in read_metrics(rd.path / "timings.jsonl") if r["round"] <= upto_round]
        if (rd.path / "log.txt").is_file():
            rd.log_text = rd.path.joinpath("log.txt").read_text().splitlines()
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

    def log_lines(self, lines: list[str]) -> None:
        """Append human-readable lines to ``log.txt`` (the whole file replaced atomically)."""
        self.log_text.extend(lines)
        self.write_text("log.txt", "".join(line + "\n" for line in self.log_text))

    def save_grid(self, round_: int, images: torch.Tensor, nrow: int) -> Path:
        """``samples/round-XXXX.png``: the sample grid of round ``round_``."""
        return self.save_image_grid(f"round-{round_:04d}", images, nrow)

    def save_image_grid(self, name: str, images: torch.Tensor, nrow: int) -> Path:
        """``samples/NAME.png``: images in [-1, 1] as a grid of ``nrow`` per row, 1 px apart; volumes
        as their three orthogonal mid-slices side by side (half as many per row)."""
        from torchvision.utils import save_image
        if images.ndim == 5:
            from .montage import orthogonal_slices
            images, nrow = orthogonal_slices(images), max(1, round(nrow / 2))
        buf = io.BytesIO()
        save_image(images, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
        p = self.path / "samples" / f"{name}.png"
        atomic_write_bytes(p, buf.getvalue())
        return p

    def plot(self, title: str) -> Path:
        """``fd.png``: the Fréchet distance per client and global, per round, so far."""
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

    def save_best(self, round_: int, obj: dict[str, Any]) -> Path:
        """``checkpoints/best.pt``: the best round by the held-out selection score, kept beside
        the newest rounds (written atomically; a later better round replaces it)."""
        p = self.path / "checkpoints" / "best.pt"
        atomic_torch_save(obj, p)
        return p


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
