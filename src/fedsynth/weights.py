"""Pretrained feature-network weights: where each library looks for them, and one checked
download (``fedsynth weights fetch NAME``).

fedsynth never downloads weights while it trains or evaluates. A connected machine runs
``fedsynth weights fetch inception`` once; an air-gapped site copies the file into the folder
that :func:`cache_dir` names. A download

* streams into a hidden temporary file beside the target, hashing as it goes;
* is refused if it is short (fewer bytes than the server announced or than pinned), or if its
  SHA-256 differs from the pinned one -- the temporary file is removed and nothing is stored;
* is moved into place with one atomic ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .config import UserError


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file and the folder its library reads it from."""

    name: str            # what `fedsynth weights fetch NAME` takes
    what: str            # one line for `fedsynth weights list`
    url: str
    filename: str        # the name the library looks for
    folder: str          # "torch-hub" ($TORCH_HOME/hub/checkpoints) or "xrv" (~/.torchxrayvision/models_data)
    sha256: Optional[str]  # pinned checksum; None where no published one could be checked (see `size`)
    size: Optional[int]    # bytes, where known


WEIGHTS: dict[str, WeightsFile] = {
    # The URL torch-fidelity (and so torchmetrics' FID) downloads from; torch.hub names the file
    # with the first 8 hex digits of its SHA-256 (6726825d). Full hash and size as pinned by
    # several independent projects that checked the file.
    "inception": WeightsFile(
        "inception", "FID Inception-v3 (TF 2015-12-05 weights, torch-fidelity port): metric fid",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        "weights-inception-2015-12-05-6726825d.pth", "torch-hub",
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", 95_628_359),
    # DINOv2 ViT-L/14 as FD-DINOv2 uses it (Stein et al. 2023); the file torch.hub.load would cache.
    "dinov2": WeightsFile(
        "dinov2", "DINOv2 ViT-L/14 (Oquab et al. 2023): metric fd-dinov2",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
        "dinov2_vitl14_pretrain.pth", "torch-hub", None, 1_217_586_395),
    # torchxrayvision's densenet121-res224-all (chest radiographs, 8 data sets).
    "xrv": WeightsFile(
        "xrv", "torchxrayvision DenseNet-121 res224-all (chest X-ray): metric fd-xrv",
        "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        "xrv", None, 28_382_008),
}


def cache_dir(folder: str) -> Path:
    """The folder a library reads cached weights from (the same rule as the library's own)."""
    if folder == "torch-hub":
        import torch.hub  # honours $TORCH_HOME and torch.hub.set_dir, like torch-fidelity and timm
        return Path(torch.hub.get_dir()) / "checkpoints"
    if folder == "xrv":  # torchxrayvision.utils.get_cache_dir()
        return Path("~/.torchxrayvision/models_data").expanduser()
    raise ValueError(f"unknown weights folder {folder!r}")


def spec(name: str) -> WeightsFile:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise UserError(f"unknown weights {name!r}: choose one of {', '.join(WEIGHTS)}") from None


def target_path(name: str) -> Path:
    w = spec(name)
    return cache_dir(w.folder) / w.filename


def cached(name: str) -> Optional[Path]:
    """The cached file of ``name`` if it is there, else ``None`` (no download, no hashing)."""
    p = target_path(name)
    return p if p.is_file() else None


def missing_message(name: str, key: str = "eval.feature-extractor") -> str:
    """One line naming the file, where it belongs and how to get it."""
    p = target_path(name)
    return (f"config key '{key}' is '{name}' but its weights are not on this machine: {p.name} "
            f"belongs in {p.parent}; run `fedsynth weights fetch {name}` on a connected machine "
            f"(or copy the file there)")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


ProgressFn = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)


def fetch(name: str, *, sha256: str = "", progress: Optional[ProgressFn] = None,
          timeout: float = 60.0, force: bool = False) -> tuple[Path, str, bool]:
    """Download ``name``'s weights into its library's cache, checked; returns
    ``(path, sha256, downloaded)``. ``downloaded`` is False when a file that passes the checks
    is already there.

    Parameters
    ----------
    sha256 : str, default ""
        Expected SHA-256 when the table pins none (or to override it). Empty: the pinned one.
    progress : callable, optional
        Called with (bytes so far, total bytes or None) while downloading.
    force : bool, default False
        Download even if a file is already in place.

    Raises
    ------
    UserError
        Network failure, a short download, a wrong size or a wrong checksum. Nothing is stored.
    """
    w = spec(name)
    want = (sha256 or w.sha256 or "").lower()
    dest = target_path(name)
    if dest.is_file() and not force:
        got = sha256_of(dest)
        if want and got != want:
            raise UserError(f"{dest} exists but its SHA-256 is {got[:16]}…, expected {want[:16]}…: "
                            f"remove it, or run `fedsynth weights fetch {name} --force`")
        return dest, got, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{w.filename}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                req = urllib.request.Request(w.url, headers={"User-Agent": "fedsynth"})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else w.size
                    while True:
                        block = resp.read(1 << 16)
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        n += len(block)
                        if progress:
                            progress(n, total)
            except UserError:
                raise
            except Exception as e:  # URLError, timeouts, http.client.IncompleteRead, resets
                raise UserError(f"download of {name} weights from {w.url} failed after {n} bytes: "
                                f"{type(e).__name__}: {e}") from None
            if total is not None and n != total:
                raise UserError(f"download of {name} weights is incomplete: {n} of {total} bytes; "
                                f"nothing was stored")
            if w.size is not None and n != w.size and not sha256:
                raise UserError(f"{name} weights have {n} bytes, expected {w.size}; nothing was stored")
            got = h.hexdigest()
            if want and got != want:
                raise UserError(f"{name} weights failed the checksum: SHA-256 {got[:16]}…, expected "
                                f"{want[:16]}…; nothing was stored")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        return dest, got, True
    finally:
        tmp.unlink(missing_ok=True)  # every failure, Ctrl-C included, leaves no partial file
