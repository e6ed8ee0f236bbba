"""Pretrained weights (feature networks and discriminator backbones): where each library looks
for them, and one checked download (``fedsynth weights fetch NAME...``).

fedsynth never downloads weights while it trains or evaluates. A connected machine runs
``fedsynth weights fetch inception resnet18`` once; an air-gapped site copies the files into the
folders that :func:`cache_dir` names (the libraries' own caches):

* ``torch-hub``: ``$TORCH_HOME/hub/checkpoints/`` (torchvision, torch-fidelity). torch.hub names
  each file with the first hex digits of its SHA-256 (``resnet18-f37072fd.pth``); that prefix
  is checked, as torch.hub's own ``check_hash`` does, where no full hash is pinned.
* ``hf-hub``: the Hugging Face hub cache timm reads (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), in the hub's layout
  ``models--timm--NAME/snapshots/<commit>/model.safetensors`` plus ``refs/main``. The hub
  publishes each large file's SHA-256 (its ``X-Linked-Etag`` header) and the commit
  (``X-Repo-Commit``); the download is checked against that hash.
* ``xrv``: torchxrayvision's folder.

A download

* streams into a hidden temporary file beside the target, hashing as it goes;
* is refused if it is short (fewer bytes than the server announced or than pinned), or if its
  SHA-256 differs from the pinned one -- the temporary file is removed and nothing is stored;
* is moved into place with one atomic ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
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
    folder: str          # "torch-hub" ($TORCH_HOME/hub/checkpoints), "hf-hub" (timm) or "xrv"
    sha256: Optional[str]  # pinned checksum; None where no published one could be checked (see `size`)
    size: Optional[int]    # bytes, where known
    repo: Optional[str] = None  # hf-hub: the model repository ("timm/deit_tiny_patch16_224.fb_in1k")


def _tv(name: str, what: str, filename: str) -> WeightsFile:
    """A torchvision ImageNet checkpoint; the file name carries torch.hub's SHA-256 prefix
    (tests check that these agree with torchvision's weights enums)."""
    return WeightsFile(name, what, "https://download.pytorch.org/models/" + filename, filename,
                       "torch-hub", None, None)


def _timm(name: str, what: str, repo: str) -> WeightsFile:
    """A timm checkpoint on the Hugging Face hub (the source timm itself prefers)."""
    return WeightsFile(name, what, f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
                       "model.safetensors", "hf-hub", None, None, repo)


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
    # discriminator / classifier backbones (fedsynth.models.backbones; model.d-pretrained)
    "resnet18": _tv("resnet18", "ResNet-18 ImageNet (torchvision IMAGENET1K_V1): backbone", "resnet18-f37072fd.pth"),
    "resnet50": _tv("resnet50", "ResNet-50 ImageNet (torchvision IMAGENET1K_V2): backbone", "resnet50-11ad3fa6.pth"),
    "vit_b_16": _tv("vit_b_16", "ViT-B/16 ImageNet (torchvision IMAGENET1K_V1): backbone", "vit_b_16-c867db91.pth"),
    "swin_t": _tv("swin_t", "Swin-T ImageNet (torchvision IMAGENET1K_V1): backbone", "swin_t-704ceda3.pth"),
    "deit_tiny": _timm("deit_tiny", "DeiT-Tiny/16 ImageNet (timm fb_in1k): backbone",
                       "timm/deit_tiny_patch16_224.fb_in1k"),
    "levit_128s": _timm("levit_128s", "LeViT-128S ImageNet (timm fb_dist_in1k): backbone",
                        "timm/levit_128s.fb_dist_in1k"),
}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub's own rule,
    which it evaluates once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cache_dir(folder: str) -> Path:
    """The folder a library reads cached weights from (the same rule as the library's own)."""
    if folder == "torch-hub":
        import torch.hub  # honours $TORCH_HOME and torch.hub.set_dir, like torch-fidelity and timm
        return Path(torch.hub.get_dir()) / "checkpoints"
    if folder == "hf-hub":
        return hf_cache_dir()
    if folder == "xrv":  # torchxrayvision.utils.get_cache_dir()
        return Path("~/.torchxrayvision/models_data").expanduser()
    raise ValueError(f"unknown weights folder {folder!r}")


def spec(name: str) -> WeightsFile:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise UserError(f"unknown weights {name!r}: choose one of {', '.join(WEIGHTS)}") from None


def _hf_repo_dir(w: WeightsFile) -> Path:
    return hf_cache_dir() / ("models--" + str(w.repo).replace("/", "--"))


def target_path(name: str) -> Path:
    """Where ``name``'s file is (or belongs). For hub files, whose snapshot folder is named by
    a commit only known once downloaded: the cached file, else the repository's cache folder."""
    w = spec(name)
    if w.folder == "hf-hub":
        return cached(name) or _hf_repo_dir(w)
    return cache_dir(w.folder) / w.filename


def cached(name: str) -> Optional[Path]:
    """The cached file of ``name`` if it is there, else ``None`` (no download, no hashing)."""
    w = spec(name)
    if w.folder == "hf-hub":
        from huggingface_hub import try_to_load_from_cache  # timm's dependency; reads the cache only
        found = try_to_load_from_cache(str(w.repo), w.filename, cache_dir=hf_cache_dir())
        return Path(found) if isinstance(found, str) and os.path.isfile(found) else None
    p = cache_dir(w.folder) / w.filename
    return p if p.is_file() else None


def missing_message(name: str, key: Optional[str] = "eval.feature-extractor") -> str:
    """One line naming the file, where it belongs and how to get it (``key``: the config key
    that asked for it, or None)."""
    w = spec(name)
    if w.folder == "hf-hub":
        where = f"{w.filename} of {w.repo} belongs in {_hf_repo_dir(w)}/snapshots/<commit>/ (with refs/main)"
    else:
        p = target_path(name)
        where = f"{p.name} belongs in {p.parent}"
    who = f"config key '{key}' is '{name}' but its weights are" if key else f"the ImageNet weights of '{name}' are"
    return (f"{who} not on this machine: {where}; "
            f"run `fedsynth weights fetch {name}` on a connected machine (or copy the file there)")


def hash_prefix(filename: str) -> str:
    """The SHA-256 prefix torch.hub writes into a checkpoint's name (``resnet18-f37072fd.pth``:
    ``f37072fd``), or "" (the rule of ``torch.hub.download_url_to_file``'s callers)."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", filename)
    return m.group(1) if m else ""


def expected_sha256(name: str, sha256: str = "") -> str:
    """What a file must hash to: the user's, else the pinned one, else torch.hub's prefix from
    the file name (a prefix: a digest passes if it starts with it), else "" (unchecked)."""
    w = spec(name)
    return (sha256 or w.sha256 or (hash_prefix(w.filename) if w.folder == "torch-hub" else "")).lower()


def _hash_ok(got: str, want: str) -> bool:
    return not want or (got == want if len(want) == 64 else got.startswith(want))


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
        Expected SHA-256 when the table pins none (or to override it). Empty: the pinned one,
        else torch.hub's prefix in the file name, else (hub files) the hash the hub publishes.
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
    if w.folder == "hf-hub":
        return _fetch_hf(w, sha256, progress, timeout, force)
    want = expected_sha256(name, sha256)
    dest = target_path(name)
    if dest.is_file() and not force:
        got = sha256_of(dest)
        if not _hash_ok(got, want):
            raise UserError(f"{dest} exists but its SHA-256 is {got[:16]}…, expected {want[:16]}…: "
                            f"remove it, or run `fedsynth weights fetch {name} --force`")
        return dest, got, False
    got = _download(w, w.url, dest, want, bool(sha256), progress, timeout)
    return dest, got, True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # keep the hub's own headers: do not follow
        return None


def _hub_metadata(w: WeightsFile, timeout: float) -> tuple[str, str]:
    """(commit, SHA-256) of a hub file, from the headers of a HEAD request to its resolve URL
    (what huggingface_hub's ``get_hf_file_metadata`` reads)."""
    req = urllib.request.Request(w.url, method="HEAD", headers={"User-Agent": "fedsynth"})
    try:
        resp = urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout)
        headers = resp.headers
        resp.close()
    except urllib.error.HTTPError as e:  # a 3xx redirect to the CDN lands here, with its headers
        if not 300 <= e.code < 400:
            raise UserError(f"the hub refused {w.url}: HTTP {e.code}") from None
        headers = e.headers
    except Exception as e:
        raise UserError(f"cannot reach {w.url}: {type(e).__name__}: {e}") from None
    commit = headers.get("X-Repo-Commit", "")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise UserError(f"{w.url} gave no commit (X-Repo-Commit header): is this the Hugging Face hub?")
    return commit, etag.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", etag) else ""


def _fetch_hf(w: WeightsFile, sha256: str, progress, timeout: float, force: bool) -> tuple[Path, str, bool]:
    if not force and (have := cached(w.name)) is not None:
        got = sha256_of(have)
        if not _hash_ok(got, (sha256 or w.sha256 or "").lower()):
            raise UserError(f"{have} exists but its SHA-256 is {got[:16]}…: remove it, or run "
                            f"`fedsynth weights fetch {w.name} --force`")
        return have, got, False
    commit, published = _hub_metadata(w, timeout)
    want = (sha256 or w.sha256 or published).lower()
    if not want:
        raise UserError(f"the hub published no SHA-256 for {w.url}: pass --sha256")
    repo_dir = _hf_repo_dir(w)
    dest = repo_dir / "snapshots" / commit / w.filename
    got = _download(w, w.url, dest, want, bool(sha256), progress, timeout)
    # refs/main names the snapshot huggingface_hub (and so timm) reads; written last, atomically
    refs = repo_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".main.", dir=refs)
    with os.fdopen(fd, "w") as f:
        f.write(commit)
    os.replace(tmp, refs / "main")
    return dest, got, True


def _download(w: WeightsFile, url: str, dest: Path, want: str, user_sha: bool,
              progress: Optional[ProgressFn], timeout: float) -> str:
    """Stream ``url`` into a temporary file beside ``dest``, check it, move it into place."""
    name = w.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{w.filename}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "fedsynth"})
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
                raise UserError(f"download of {name} weights from {url} failed after {n} bytes: "
                                f"{type(e).__name__}: {e}") from None
            if total is not None and n != total:
                raise UserError(f"download of {name} weights is incomplete: {n} of {total} bytes; "
                                f"nothing was stored")
            if w.size is not None and n != w.size and not user_sha:
                raise UserError(f"{name} weights have {n} bytes, expected {w.size}; nothing was stored")
            got = h.hexdigest()
            if not _hash_ok(got, want):
                raise UserError(f"{name} weights failed the checksum: SHA-256 {got[:16]}…, expected "
                                f"{want[:16]}…; nothing was stored")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        return got
    finally:
        tmp.unlink(missing_ok=True)  # every failure, Ctrl-C included, leaves no partial file
