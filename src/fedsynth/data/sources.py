"""Data sources: image folders, DICOM, NIfTI, MedMNIST files, and small real samples.

Every source lists *entries* cheaply (a file and its label), then each entry is read and
prepared (:func:`fedsynth.data.preprocess.prepare`). A bad file stops the run with one line
naming it (exit 2), or with ``data.skip-bad = true`` is skipped and counted. The prepared
``ImageSet`` is cached on disk keyed by the file list (names, sizes, modification times) and
every parameter, so a second run does not redo the work; the cache is written atomically, so
nothing half-written is ever read back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Config, UserError
from ..utils import atomic_write_bytes, cache_dir, numpy_rng, plural
from .imageset import ImageSet
from .preprocess import BadImage, channels_of, prepare

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_EXT = {".dcm", ".dicom", ""}
NIFTI_EXT = (".nii", ".nii.gz")
CACHE_VERSION = 1


class DataError(UserError):
    """Bad input data: the message names the file."""


@dataclass
class Entry:
    file: str                                   # shown in errors and the summary
    label: str
    load: Callable[[], list[np.ndarray]]        # one file may hold several images
    unit: bool = False                          # arrays already scaled to [0, 1]
    stamp: str = ""                             # size + mtime, for the cache key
    ready: bool = False                         # arrays already prepared (volumes: uint8 (1, S, S, S))
    raw: str = ""                               # the raw size, for the summary (volumes)


# ------------------------------------------------------------------ readers


def read_image_file(path: Path) -> np.ndarray:
    """PNG/JPEG/TIFF/BMP, 8- or 16-bit, gray or RGB -> (H, W) or (H, W, 3) array."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.array(im)
                return arr.astype(np.uint16) if im.mode.startswith("I;16") else arr
            if im.mode in ("L", "RGB"):
                return np.asarray(im)
            if im.mode in ("1", "LA", "La"):
                return np.asarray(im.convert("L"))
            return np.asarray(im.convert("RGB"))  # P, RGBA, CMYK, YCbCr, ...
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"cannot read image ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt'})") from None


def read_dicom(path: Path, window: tuple[float, float]) -> tuple[list[np.ndarray], bool]:
    """DICOM -> list of frames in rescaled units (slope/intercept applied); optional window."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise BadImage(f"not a readable DICOM file ({e.__class__.__name__})") from None
    if "PixelData" not in ds:
        raise BadImage("DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder, truncated data
        raise BadImage(f"cannot decode DICOM pixel data ({str(e).splitlines()[0][:120]})") from None
    rgb = int(getattr(ds, "SamplesPerPixel", 1)) == 3
    arr = arr.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr + arr.min()   # MONOCHROME1: high values are dark
    frames = [arr] if (arr.ndim == 2 or (rgb and arr.ndim == 3)) else list(arr)
    center, width = window
    if width > 0:
        lo, hi = center - width / 2, center + width / 2
        return [np.clip((f - lo) / (hi - lo), 0, 1) for f in frames], True
    return frames, False


def read_nifti(path: Path, cfg: Config) -> list[np.ndarray]:
    """NIfTI volume -> axial slices in [0, 1] (scaled per volume), slice range and foreground filter."""
    import nibabel as nib
    try:
        vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as e:
        raise BadImage(f"cannot read NIfTI volume ({e.__class__.__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise BadImage(f"NIfTI volume has shape {vol.shape}, expected 3-D")
    if not np.all(np.isfinite(vol)):
        raise BadImage("NIfTI volume contains NaN or Inf")
    p = cfg.preprocess
    if p.rescale == "minmax":
        lo, hi = float(vol.min()), float(vol.max())
    else:
        lo, hi = (float(v) for v in np.quantile(vol, p.quantiles))
    unit = np.clip((vol - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(vol)
    z = vol.shape[2]
    a, b = cfg.data.slice_range
    out = []
    for k in range(int(np.floor(a * z)), int(np.ceil(b * z))):
        s = np.rot90(unit[:, :, k])            # radiological display orientation
        if (s > 0.1).mean() >= cfg.data.min_foreground:
            out.append(np.ascontiguousarray(s))
    return out


# ------------------------------------------------------------------ listing entries


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


# what each file source reads, to name the right data.source for a folder the configured one finds empty
_SOURCE_FILES = (("folder", "PNG/JPEG/TIFF image", lambda p: p.suffix.lower() in IMAGE_EXT),
                 ("dicom", "DICOM file", lambda p: p.suffix.lower() in (".dcm", ".dicom")),
                 ("nifti", "NIfTI file", lambda p: p.name.lower().endswith(NIFTI_EXT)))


def _source_hint(root: Path) -> str:
    """``": it holds 12 DICOM files; set data.source = dicom"`` for a folder that holds another
    source's files (the most common kind); empty where it holds none."""
    found: dict[str, tuple[str, int]] = {}
    for p in root.rglob("*"):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            for src, what, reads in _SOURCE_FILES:
                if reads(p):
                    found[src] = (what, found.get(src, (what, 0))[1] + 1)
                    break
    if not found:
        return ""
    src, (what, n) = max(found.items(), key=lambda kv: kv[1][1])
    return f": it holds {plural(n, what)}; set data.source = {src}"


def _labelled_files(root: Path, accept: Callable[[Path], bool], labels_csv: str, skip_bad: bool,
                    skipped: list) -> list[tuple[Path, str]]:
    """Files under ``root`` with labels from a CSV, from class subfolders, or one class."""
    if root.is_file():
        return [(root, "all")]
    if not root.is_dir():
        raise DataError(f"data path not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and accept(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"no usable files in {root}{_source_hint(root)}")
    if labels_csv:
        csv_path = Path(labels_csv)
        if not csv_path.is_file():
            raise DataError(f"labels CSV not found: {csv_path}")
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"file", "label"} <= set(rows[0]):
            raise DataError(f"{csv_path}: needs a header with columns 'file' and 'label'")
        labels = {(root / row["file"]).resolve(): str(row["label"]).strip() for row in rows}
        present = {p.resolve(): p for p in files}
        out = []
        for path, lab in labels.items():
            if path not in present:
                msg = f"{csv_path}: names a file that does not exist: {path}"
                if not skip_bad:
                    raise DataError(msg)
                skipped.append((str(path), "listed in the labels CSV but missing"))
                continue
            out.append((present[path], lab))
        for path, p in present.items():
            if path not in labels:
                if not skip_bad:
                    raise DataError(f"{p}: not listed in labels CSV {csv_path}")
                skipped.append((str(p), "not in the labels CSV"))
        return sorted(out)
    nested = [p for p in files if len(p.relative_to(root).parts) > 1]
    if not nested:
        return [(p, "all") for p in files]
    out = []
    for p in files:
        parts = p.relative_to(root).parts
        if len(parts) == 1:
            if not skip_bad:
                raise DataError(f"{p}: image outside the class subfolders of {root} "
                                f"(move it into one, or give data.labels-csv)")
            skipped.append((str(p), "outside the class subfolders"))
            continue
        out.append((p, parts[0]))
    return out


def list_entries(cfg: Config, skipped: list) -> list[Entry]:
    d = cfg.data
    src = d.source
    root = Path(d.path).expanduser() if d.path else None
    if d.dims == 3:
        return volume_entries(cfg, root, skipped)
    if src == "folder":
        pairs = _labelled_files(root, lambda p: p.suffix.lower() in IMAGE_EXT, d.labels_csv, d.skip_bad, skipped)
        return [Entry(str(p), lab, (lambda p=p: [read_image_file(p)]), stamp=_stamp(p)) for p, lab in pairs]
    if src == "dicom":
        pairs = _labelled_files(root, lambda p: p.suffix.lower() in DICOM_EXT, d.labels_csv, d.skip_bad, skipped)
        entries = []
        for p, lab in pairs:
            def load(p=p):
                frames, unit = read_dicom(p, d.window)
                return frames
            entries.append(Entry(str(p), lab, load, unit=d.window[1] > 0, stamp=_stamp(p)))
        return entries
    if src == "nifti":
        pairs = _labelled_files(root, lambda p: p.name.lower().endswith(NIFTI_EXT), d.labels_csv, d.skip_bad, skipped)
        return [Entry(str(p), lab, (lambda p=p: read_nifti(p, cfg)), unit=True, stamp=_stamp(p)) for p, lab in pairs]
    if src in ("sample-retina", "sample-ihc", "sample-ct"):
        return sample_entries(src, cfg.data.image_size)
    raise UserError(f"config key 'data.source': {src!r} is not a file source")


def volume_entries(cfg: Config, root: Path | None, skipped: list) -> list[Entry]:
    """``data.dims = 3``: one entry per NIfTI file, or per DICOM series (files grouped by
    ``SeriesInstanceUID``; class: the top-level subfolder when a series sits in
    ``<class>/<series>/``, else ``all``); each loads as one prepared cube."""
    from .volumes import dicom_series, prepare_volume, read_dicom_series, read_nifti_volume
    d, pre, size = cfg.data, cfg.preprocess, cfg.data.image_size
    if d.source == "nifti":
        pairs = _labelled_files(root, lambda p: p.name.lower().endswith(NIFTI_EXT), d.labels_csv, d.skip_bad, skipped)

        def load_nifti(p: Path) -> list[np.ndarray]:
            vol, spacing = read_nifti_volume(p)
            return [prepare_volume(vol, spacing, pre, size)]
        return [Entry(str(p), lab, (lambda p=p: load_nifti(p)), stamp=_stamp(p), ready=True) for p, lab in pairs]
    if d.source != "dicom":
        raise UserError(f"config key 'data.source': {d.source!r} reads 2-D images; data.dims = 3 takes "
                        f"nifti, dicom or a 3-D phantom (phantom-ct, phantom-mr)")
    if root is None or not root.exists():
        raise DataError(f"data path not found: {root}")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DICOM_EXT
        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"no DICOM files in {root}")
    out = []
    for uid, group in sorted(dicom_series(files).items(), key=lambda kv: str(kv[1][0])):
        group = sorted(group)
        first = group[0]
        rel = first.relative_to(root).parts if root.is_dir() else ()
        label = rel[0] if len(rel) >= 3 else "all"
        name = f"{first.parent} (series {uid[-24:]}, {len(group)} slices)"

        def load_series(group=group) -> list[np.ndarray]:
            vol, spacing, unit = read_dicom_series(group, d.window)
            return [prepare_volume(vol, spacing, pre, size, already_unit=unit)]
        out.append(Entry(name, label, load_series, stamp=";".join(_stamp(p) for p in group), ready=True))
    return out


# ------------------------------------------------------------------ samples shipped by packages


def _tiles(img: np.ndarray, tile: int, min_fg: float, label: str, name: str) -> list[Entry]:
    h, w = img.shape[:2]
    gray = img.mean(axis=2) if img.ndim == 3 else img
    out = []
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            if (gray[y:y + tile, x:x + tile] > 20).mean() >= min_fg:
                t = img[y:y + tile, x:x + tile]
                out.append(Entry(f"{name}[y={y},x={x}]", label, (lambda t=t: [t])))
    return out


def sample_entries(src: str, image_size: int) -> list[Entry]:
    """Small real images that installed packages ship: honest labels, correlated tiles."""
    tile = max(64, image_size)
    if src == "sample-retina":
        from skimage import data as skd
        return _tiles(skd.retina(), tile, 0.95, "retina-fundus", "skimage.data.retina")
    if src == "sample-ihc":
        from skimage import data as skd
        return _tiles(skd.immunohistochemistry(), tile, 0.0, "ihc-colon (IHC, not H&E)",
                      "skimage.data.immunohistochemistry")
    from pydicom.data import get_testdata_file
    out = []
    for name in ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"):
        p = get_testdata_file(name)
        if p is not None:
            out.append(Entry(f"pydicom:{name}", "ct", (lambda p=p: read_dicom(Path(p), (0.0, 0.0))[0])))
    return out


# ------------------------------------------------------------------ MedMNIST


def medmnist_file(cfg: Config) -> Path:
    d = cfg.data
    suffix = "" if d.medmnist_size == 28 else f"_{d.medmnist_size}"
    return Path(d.path).expanduser() / f"{d.medmnist_flag}{suffix}.npz"


def load_medmnist_arrays(cfg: Config) -> tuple[np.ndarray, np.ndarray, Path]:
    d = cfg.data
    path = medmnist_file(cfg)
    if not path.is_file():
        if d.medmnist_download:
            try:
                import medmnist
                info = medmnist.INFO[d.medmnist_flag]
                cls = getattr(medmnist, info["python_class"])
                cls(split=d.medmnist_split, download=True, root=str(path.parent), size=d.medmnist_size)
            except ImportError:
                raise DataError("data.medmnist-download needs the medmnist package: "
                                "pip install 'fedsynth[medmnist]'") from None
            except Exception as e:
                raise DataError(f"could not download MedMNIST '{d.medmnist_flag}' to {path.parent}: "
                                f"{str(e).splitlines()[0][:160]}") from None
        else:
            raise DataError(f"MedMNIST file not found: {path}. fedsynth does not download unless asked: "
                            f"put {path.name} (from the MedMNIST v2/v3 release) in {path.parent}, or set "
                            f"data.medmnist-download = true on a machine with internet access")
    try:
        with np.load(path) as z:
            ki, kl = f"{d.medmnist_split}_images", f"{d.medmnist_split}_labels"
            missing = [k for k in (ki, kl) if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing key '{missing[0]}' (has {', '.join(z.files)})")
            images, labels = z[ki], z[kl]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read MedMNIST file ({e.__class__.__name__})") from None
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = (labels.sum(axis=1) > 0).astype(np.int64)  # multi-label (ChestMNIST): any finding
    labels = labels.reshape(len(labels)).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels, path


# ------------------------------------------------------------------ assembling + cache


def _cache_key(cfg: Config, listing: list[str]) -> str:
    d = cfg.data
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"v": CACHE_VERSION, "source": d.source, "path": str(Path(d.path).expanduser().resolve()) if d.path else "",
                         "size": d.image_size, "max": d.max_images, "skip": d.skip_bad,
                         "csv": d.labels_csv, "window": d.window, "slices": d.slice_range,
                         "fg": d.min_foreground, "mm": [d.medmnist_flag, d.medmnist_split, d.medmnist_size],
                         "seed": cfg.run.seed, "pre": cfg.to_dict()["preprocess"],
                         **({"dims": d.dims} if d.dims != 2 else {})}, sort_keys=True).encode())
    if d.labels_csv and Path(d.labels_csv).is_file():
        h.update(Path(d.labels_csv).read_bytes())
    for line in listing:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _save_cache(path: Path, ds: ImageSet) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=ds.images, labels=ds.labels,
             meta=np.frombuffer(json.dumps({"class_names": list(ds.class_names), "name": ds.name,
                                            "provenance": ds.provenance}).encode(), dtype=np.uint8))
    atomic_write_bytes(path, buf.getvalue())


def _load_cache(path: Path) -> ImageSet | None:
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            prov = dict(meta["provenance"], cache="hit")
            return ImageSet(z["images"], z["labels"], tuple(meta["class_names"]), meta["name"], prov)
    except Exception:
        path.unlink(missing_ok=True)  # a damaged entry is rebuilt, never trusted
        return None


def load_source(cfg: Config, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """Read and prepare a non-phantom source (cached)."""
    d = cfg.data
    skipped: list[tuple[str, str]] = []
    if d.source == "medmnist":
        images, labels, path = load_medmnist_arrays(cfg)
        listing = [f"{path}:{_stamp(path)}"]
        entries = None
    else:
        entries = list_entries(cfg, skipped)
        if not entries:
            raise DataError(f"data source {d.source!r} at {d.path or '(built in)'} holds no images")
        listing = [f"{e.file}|{e.label}|{e.stamp}" for e in entries]
    key = _cache_key(cfg, listing)
    cache_path = cache_dir() / "data" / f"{key}.npz"
    if d.cache and cache_path.is_file():
        hit = _load_cache(cache_path)
        if hit is not None:
            return hit

    class_names: list[str]
    if entries is None:  # MedMNIST arrays
        idx = np.arange(len(images))
        if d.max_images and len(idx) > d.max_images:
            idx = np.sort(numpy_rng(cfg.run.seed, "max-images").choice(len(idx), d.max_images, replace=False))
        out_ch = _decide_channels(cfg, images[0], str(medmnist_file(cfg)))
        prepared, labs = [], []
        for n, i in enumerate(idx):
            prepared.append(prepare(images[i], cfg.preprocess, d.image_size, out_ch))
            labs.append(labels[i])
            if progress and n % 256 == 0:
                progress(n, len(idx))
        k = int(labels.max()) + 1 if len(labels) else 1
        class_names = [str(c) for c in range(k)]
        lab_arr = np.asarray(labs, np.int64)
        files = 1
    else:
        if d.max_images and len(entries) > d.max_images:
            keep = numpy_rng(cfg.run.seed, "max-images").choice(len(entries), d.max_images, replace=False)
            entries = [entries[i] for i in sorted(keep)]
        class_names = sorted({e.label for e in entries})
        index = {c: i for i, c in enumerate(class_names)}
        prepared, labs = [], []
        out_ch = None
        first_file = None
        raw_sizes: dict[str, int] = {}
        for n, e in enumerate(entries):
            try:
                arrays = e.load()
                if not arrays:
                    raise BadImage("no usable images (all slices filtered out?)")
                for a in arrays:
                    shape = "x".join(map(str, a.shape))
                    raw_sizes[shape] = raw_sizes.get(shape, 0) + 1
                    if e.ready:  # a volume, prepared by its reader
                        prepared.append(a)
                        labs.append(index[e.label])
                        continue
                    if out_ch is None:
                        out_ch, first_file = _decide_channels(cfg, a, e.file), e.file
                    elif cfg.preprocess.channels == "auto" and channels_of(_drop_alpha(a)) != out_ch:
                        raise BadImage(f"has {channels_of(_drop_alpha(a))} channel(s) but {first_file} has "
                                       f"{out_ch} (set preprocess.channels = 'gray' or 'rgb')")
                    prepared.append(prepare(a, cfg.preprocess, d.image_size, out_ch, already_unit=e.unit))
                    labs.append(index[e.label])
            except BadImage as ex:
                if not d.skip_bad:
                    raise DataError(f"{e.file}: {ex} (use data.skip-bad = true to skip bad files)") from None
                skipped.append((e.file, str(ex)))
            if progress and (n % 64 == 0 or n == len(entries) - 1):
                progress(n + 1, len(entries))
        if not prepared:
            raise DataError(f"no usable images in {d.path or d.source} ({len(skipped)} skipped)")
        lab_arr = np.asarray(labs, np.int64)
        used = np.unique(lab_arr)
        if len(used) < len(class_names):  # a class whose files were all skipped
            class_names = [class_names[i] for i in used]
            lab_arr = np.searchsorted(used, lab_arr)
        files = len(entries)
    if entries is None:
        raw_sizes = {"x".join(map(str, images.shape[1:])): len(images)}
    ds = ImageSet(np.stack(prepared), lab_arr, tuple(class_names), d.source,
                  {"source": d.source, "path": d.path, "files": files, "images": len(prepared),
                   "skipped": [{"file": f, "reason": r} for f, r in skipped], "cache": "miss",
                   "raw_sizes": dict(sorted(raw_sizes.items(), key=lambda kv: -kv[1])[:8]),
                   "raw_size_count": len(raw_sizes),  # how many sizes there were in all (8 are listed)
                   "preprocess": cfg.to_dict()["preprocess"]})
    if d.cache:
        _save_cache(cache_path, ds)
    return ds


def _drop_alpha(a: np.ndarray) -> np.ndarray:
    return a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a


def _decide_channels(cfg: Config, first: np.ndarray, name: str) -> int:
    mode = cfg.preprocess.channels
    if mode == "gray":
        return 1
    if mode == "rgb":
        return 3
    c = channels_of(_drop_alpha(first))
    if c not in (1, 3):
        raise DataError(f"{name}: {c} channels; set preprocess.channels = 'gray' or 'rgb'")
    return c
