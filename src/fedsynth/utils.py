"""Small shared helpers: seed derivation and atomic file writes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `fedsynth --help` need not load it
    import torch


def derive_seed(run_seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends only on the run seed and ``parts``.

    Every random draw in fedsynth is seeded as ``derive_seed(seed, "purpose", round, client)``,
    so one draw never shifts another, and a resumed run repeats the uninterrupted one exactly.
    """
    text = "/".join([str(run_seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def torch_generator(run_seed: int, *parts: Any) -> "torch.Generator":
    import torch
    g = torch.Generator()
    g.manual_seed(derive_seed(run_seed, *parts))
    return g


def numpy_rng(run_seed: int, *parts: Any) -> np.random.Generator:
    return np.random.default_rng(derive_seed(run_seed, *parts))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once the folder is synced
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def cache_dir() -> Path:
    """fedsynth's on-disk cache (prepared data sets, real-data statistics): $FEDSYNTH_CACHE,
    else ~/.cache/fedsynth."""
    return Path(os.environ.get("FEDSYNTH_CACHE", Path.home() / ".cache" / "fedsynth"))


def first_time(text: str) -> bool:
    """True the first time ``text`` is asked about with this cache (:func:`cache_dir`), False after:
    advice worth reading once, not on every run. True too where the cache cannot be written."""
    import hashlib
    mark = cache_dir() / "shown" / hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    if mark.is_file():
        return False
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    except OSError:
        pass
    return True


def set_torch_threads(threads: int) -> int:
    """Set intra-op threads (0: all cores); returns the number in use."""
    import torch
    n = threads if threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


class atomic_folder:
    """``with atomic_folder(out) as tmp:`` write into ``tmp``; on success it becomes ``out``
    (which must not exist, or be empty), on any error it is removed: never half-written."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        return self.tmp

    def __exit__(self, kind, value, tb) -> None:
        import shutil
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.exists():
            self.out.rmdir()
        self.tmp.rename(self.out)


def save_png(image: np.ndarray, path: Path) -> None:
    """One uint8 image ``(C, H, W)``, C = 1 or 3, as a PNG file."""
    from PIL import Image
    Image.fromarray(image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "round")`` -> ``"1 round"``; ``plural(2, "round")`` -> ``"2 rounds"``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
