"""Downstream utility: does synthetic data help a classifier?

A classifier (:mod:`.classifiers`) is trained three times -- on the real training images only,
on synthetic images only, and on both -- and each is scored on a held-out *real* test set
(accuracy and macro F1). Synthetic images come from the run's released model; a class-conditional
model generates them per class, as many per class as the real training set has (scaled to the
number asked for), so the synthetic set has the real one's class balance. An unconditional
model's images carry no labels, so no classifier can learn from them: both synthetic arms are
skipped, with the reason in the table.

``fedsynth utility`` writes ``RUN_DIR/utility/utility.json`` (one entry per classifier, so a
second classifier adds its rows beside the first's), ``utility.csv`` and ``utility.md``; the
run's ``report.html`` shows them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import UserError
from ..data import ImageSet
from ..utils import atomic_write_text, derive_seed
from .classifiers import build_classifier, default_lr, labelled, predict, scores, train_classifier

FORMAT = "fedsynth-utility/1"
ARMS = ("real", "synthetic", "real + synthetic")
UNCONDITIONAL = ("the run's model is unconditional (model.conditional = none): its images have no class "
                 "labels, so no classifier can be trained on them; train a class-conditional run "
                 "(model.conditional = multiply) to measure this")

# (arm, steps done, steps in all); total 0: a phase without steps (generating, scoring)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class UtilitySettings:
    """How the classifiers are trained (every field is recorded in ``utility.json``)."""

    classifier: str = "smallcnn"     # smallcnn or a backbone name (fedsynth.models.backbones)
    pretrained: bool = False         # ImageNet weights for a backbone, from its library's cache
    epochs: int = 5                  # passes over each arm's training set ...
    min_steps: int = 300             # ... but at least this many steps (a small set is not under-trained)
    batch_size: int = 64
    lr: float | None = None          # Adam's learning rate (None: classifiers.default_lr)
    augment: bool = True             # the study's crops, flips and rotations up to 45 degrees
    synthetic: int | None = None     # synthetic images (None: as many as real training images)
    seed: int = 0                    # every draw: classifier init, data order, augmentation, latents
    device: str = "cpu"
    seeds: int = 3                   # each arm is trained this many times (seeds seed, seed+1, ...) for an interval


def balanced_labels(counts: list[int], n: int) -> torch.Tensor:
    """``n`` labels with the class proportions of ``counts`` (largest remainder; exactly
    ``counts`` when ``n`` is their sum), class by class."""
    c = np.asarray(counts, dtype=np.float64)
    if n < 1 or c.sum() <= 0:
        raise UserError("--synthetic must be at least 1")
    share = c / c.sum() * n
    per = np.floor(share).astype(np.int64)
    rest = n - int(per.sum())
    per[np.argsort(-(share - per), kind="stable")[:rest]] += 1
    return torch.cat([torch.full((int(m),), k, dtype=torch.long) for k, m in enumerate(per)])


def shared_images(train: ImageSet, test: ImageSet) -> int:
    """How many of ``test``'s images are pixel for pixel also in ``train`` (a test set that is
    not held out scores memory, not generalisation)."""
    import hashlib
    seen = {hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in train.images}
    return sum(hashlib.blake2b(img.tobytes(), digest_size=16).digest() in seen for img in test.images)


def synthesize(model, state, labels: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """``n`` images from the released ``model`` (weights ``state``); a conditional model makes
    image i of class ``labels[i]``. Latents from ``seed``."""
    g = torch.Generator().manual_seed(derive_seed(seed, "utility", "latents"))
    z = model.latents(n, g)
    return model.sample(state, z, labels if model.conditional else None)


@dataclass
class UtilityResult:
    """One classifier's three arms: rows ``{"train", "images", "accuracy", "f1", ...}`` or
    ``{"train", "skipped": reason}``."""

    rows: list[dict]
    settings: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["| training data | images | accuracy | macro F1 | verdict |", "| --- | --- | --- | --- | --- |"]
        for r in self.rows:
            if r.get("skipped"):
                lines.append(f"| {r['train']} | – | skipped | skipped | |")
            else:
                lines.append(f"| {r['train']} | {r['images']} | {format_score(r, 'accuracy')} | "
                             f"{format_score(r, 'f1')} | {r.get('verdict', '')} |")
        return "\n".join(lines)


def _arms(real_train: ImageSet, synth_x: torch.Tensor | None, synth_y: torch.Tensor | None):
    """(arm, images, labels, real images, synthetic images) of each arm that has labels."""
    xr, yr = labelled(real_train)
    yield "real", xr, yr, len(xr), 0
    if synth_x is None or synth_y is None:
        return
    yield "synthetic", synth_x, synth_y, 0, len(synth_x)
    yield "real + synthetic", torch.cat([xr, synth_x]), torch.cat([yr, synth_y]), len(xr), len(synth_x)


def chance_level(test: ImageSet) -> dict[str, float]:
    """What a classifier that learned nothing scores on ``test``: always answering the most
    common class gives its share as accuracy and ``share / num_classes`` as macro F1 (F1 of that
    class, 0 for the others); guessing uniformly gives ``1 / num_classes``."""
    counts = np.asarray(test.class_counts(), dtype=np.float64)
    k = max(len(counts), 1)
    top = float(counts.max() / counts.sum()) if counts.sum() else 0.0
    f1_top = 2 * top / (top + 1) / k if top else 0.0
    return {"accuracy": max(top, 1 / k), "f1": f1_top, "classes": k}


def _interval_fields(values: list[float], key: str) -> dict[str, Any]:
    from ..metrics.intervals import mean_interval
    iv = mean_interval(values)
    return {key: iv.mean, f"{key}_low": iv.low if iv.known else None, f"{key}_high": iv.high if iv.known else None,
            f"{key}_seeds": [round(v, 6) for v in values]}


def verdicts(rows: list[dict[str, Any]], chance: dict[str, float]) -> dict[str, str]:
    """Per synthetic arm, what its accuracy interval says against the real-only arm's:
    ``helps``/``hurts`` when the intervals are apart, ``cannot tell`` when they overlap (or a
    single seed gives none); and ``at chance`` for any arm whose interval reaches the chance level."""
    from ..metrics.intervals import Interval
    def iv(r: dict[str, Any]) -> Interval:
        lo, hi = r.get("accuracy_low"), r.get("accuracy_high")
        return Interval(r["accuracy"], float("nan") if lo is None else lo, float("nan") if hi is None else hi,
                        len(r.get("accuracy_seeds", [])) or 1)
    by = {r["train"]: r for r in rows if not r.get("skipped")}
    out: dict[str, str] = {}
    real = by.get("real")
    for name, r in by.items():
        a = iv(r)
        note = ""
        if a.known and a.low <= chance["accuracy"] or not a.known and a.mean <= chance["accuracy"]:
            note = "at chance"
        if name != "real" and real is not None:
            b = iv(real)
            verdict = ("cannot tell" if a.overlaps(b) else
                       ("better than real only" if a.mean > b.mean else "worse than real only"))
            note = verdict + (f"; {note}" if note else "")
        if note:
            out[name] = note
    return out


def run_arms(real_train: ImageSet, real_test: ImageSet, synth_x: torch.Tensor | None,
             synth_y: torch.Tensor | None, s: UtilitySettings, progress: Progress | None = None,
             skipped: str = "") -> UtilityResult:
    """Train ``s.classifier`` on each arm ``s.seeds`` times (seeds ``s.seed``, ``s.seed + 1``, ...:
    a fresh network each time) and score it on ``real_test``: each row holds the mean accuracy and
    macro F1 with their 95 % t-intervals over the seeds (:mod:`fedsynth.metrics.intervals`) and
    the per-seed values; ``verdict`` compares each synthetic arm with the real one ("cannot tell"
    when the intervals overlap) and flags arms at the chance level. Without synthetic labels the
    synthetic arms are rows with ``skipped``."""
    k = real_train.num_classes
    xt, yt = labelled(real_test)
    lr = s.lr if s.lr is not None else default_lr(s.classifier, s.pretrained)
    rows = []
    for name, x, y, n_real, n_syn in _arms(real_train, synth_x, synth_y):
        t0 = time.perf_counter()
        got: dict[str, list[float]] = {}
        for i in range(s.seeds):
            seed = s.seed + i
            model = build_classifier(s.classifier, x.shape[1], x.shape[-1], k, s.pretrained,
                                     seed=derive_seed(seed, "utility", "init"))
            what = name if s.seeds == 1 else f"{name} (seed {i + 1}/{s.seeds})"
            step = (lambda done, total, what=what: progress(what, done, total)) if progress else None
            model = train_classifier(x, y, k, s.epochs, s.batch_size, derive_seed(seed, "utility", "train", name),
                                     lr, s.min_steps, model=model, augment=s.augment, device=s.device, on_step=step)
            if progress:
                progress(f"scoring {what}", 0, 0)
            for key, v in scores(predict(model, xt), yt, k).items():
                got.setdefault(key, []).append(float(v))
        fields: dict[str, Any] = {}
        for key, vals in got.items():
            fields.update(_interval_fields(vals, key))
        rows.append({"train": name, "images": len(x), "real_images": n_real, "synthetic_images": n_syn, **fields,
                     "seconds": round(time.perf_counter() - t0, 2)})
    for name in ARMS[len(rows):]:
        rows.append({"train": name, "skipped": skipped or UNCONDITIONAL})
    chance = chance_level(real_test)
    for name, v in verdicts(rows, chance).items():
        next(r for r in rows if r["train"] == name)["verdict"] = v
    settings = asdict(s)
    settings["lr"] = lr
    settings["chance"] = chance
    return UtilityResult(rows, settings)


def format_score(r: dict[str, Any], key: str) -> str:
    """``0.412 [0.380, 0.444]`` (mean and 95 % interval over seeds), or the bare value."""
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    if lo is None or hi is None:
        n = len(r.get(f"{key}_seeds", [])) or 1
        return f"{r[key]:.3f}" + (f" ({n} seed{'s' if n != 1 else ''})" if f"{key}_seeds" in r else "")
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def downstream_utility(real_train: ImageSet, real_test: ImageSet, synth_x: torch.Tensor, synth_y: torch.Tensor,
                       epochs: int = 5, seed: int = 0) -> UtilityResult:
    """Real only / synthetic only / real + synthetic with the small CNN, no augmentation, all
    scored on the real test split (the API before ``fedsynth utility``; the same numbers)."""
    k = real_train.num_classes
    xt, yt = labelled(real_test)
    rows = []
    for name, x, y, _, _ in _arms(real_train, synth_x, synth_y):
        model = train_classifier(x, y, k, epochs, seed=seed)
        rows.append({"train": name, "images": len(x), **scores(predict(model, xt), yt, k)})
    return UtilityResult(rows)


# ---------------------------------------------------------------------------- files
def table_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``utility.json``'s rows, one per classifier and arm, for the csv/markdown tables."""
    out = []
    for name, entry in doc.get("classifiers", {}).items():
        s = entry.get("settings", {})
        for r in entry.get("rows", []):
            out.append({"classifier": name, "pretrained": bool(s.get("pretrained")), "train": r["train"],
                        "images": r.get("images", ""), "accuracy": r.get("accuracy", ""), "f1": r.get("f1", ""),
                        "accuracy_low": r.get("accuracy_low", ""), "accuracy_high": r.get("accuracy_high", ""),
                        "seeds": len(r.get("accuracy_seeds", [])) or "", "verdict": r.get("verdict", ""),
                        "note": r.get("skipped", ""), "row": r})
    return out


def _markdown(doc: dict[str, Any]) -> str:
    lines = ["| classifier | training data | images | accuracy | macro F1 | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table_rows(doc):
        name = r["classifier"] + (" (pretrained)" if r["pretrained"] else "")
        if r["note"]:
            lines.append(f"| {name} | {r['train']} | – | skipped | skipped | |")
        else:
            lines.append(f"| {name} | {r['train']} | {r['images']} | {format_score(r['row'], 'accuracy')} | "
                         f"{format_score(r['row'], 'f1')} | {r['verdict']} |")
    notes = sorted({r["note"] for r in table_rows(doc) if r["note"]})
    test = {e.get("real_test", {}).get("images") for e in doc.get("classifiers", {}).values()}
    lines.append("")
    chance = sorted({round(e.get("settings", {}).get("chance", {}).get("accuracy", 0), 3)
                     for e in doc.get("classifiers", {}).values()} - {0})
    lines.append(f"Scored on the held-out real test set ({', '.join(str(t) for t in sorted(x for x in test if x))} "
                 "images): mean over seeds with its 95 % interval (Student t). "
                 + (f"Chance level (always the most common class): accuracy {', '.join(map(str, chance))}. "
                    if chance else "")
                 + "\"cannot tell\": the interval overlaps real only's." + "".join(f" Skipped: {n}." for n in notes))
    return "\n".join(lines) + "\n"


def _csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["classifier", "pretrained", "train", "images", "accuracy", "accuracy_low",
                             "accuracy_high", "f1", "seeds", "verdict", "note"], lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in table_rows(doc):
        w.writerow({**r, **({k: f"{r[k]:.6f}" for k in ("accuracy", "f1", "accuracy_low", "accuracy_high")
                             if r[k] not in ("", None)})})
    return buf.getvalue()


def read_utility(out_dir: str | Path) -> dict[str, Any]:
    """``OUT_DIR/utility.json``, or an empty document (none yet, or unreadable: then replaced)."""
    p = Path(out_dir) / "utility.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return {"format": FORMAT, "classifiers": {}}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {"format": FORMAT, "classifiers": {}}
    doc.setdefault("classifiers", {})
    return doc


def write_utility(out_dir: str | Path, key: str, entry: dict[str, Any],
                  tsne: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add (or replace) classifier ``key``'s entry in ``OUT_DIR/utility.json`` and rewrite
    ``utility.csv`` and ``utility.md`` from all entries, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = read_utility(out)
    doc["classifiers"][key] = {**entry, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if tsne is not None:
        doc["tsne"] = tsne
    atomic_write_text(out / "utility.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "utility.csv", _csv(doc))
    atomic_write_text(out / "utility.md", _markdown(doc))
    return doc


# ------------------------------------------------------------------ fedsynth utility, as functions

def check_options(run_dir: Path, classifier: str, pretrained: bool, epochs: int, min_steps: int, tsne_points: int,
                  synthetic: int | None, seeds: int, device: str) -> str:
    """``fedsynth utility``'s options checked before any data is read (a :class:`UserError`
    naming the option); returns the device to train on."""
    from ..config import check_output_path
    from ..train.device import resolve_device
    from ..weights import cached, missing_message
    from .classifiers import classifier_names
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.toml)")
    check_output_path(run_dir / "utility", "RUN_DIR")
    names = classifier_names()
    if classifier not in names:
        raise UserError(f"--classifier: unknown classifier {classifier!r}; choose from {', '.join(names)}")
    if pretrained:
        if classifier == "smallcnn":
            raise UserError("--pretrained: smallcnn has no pretrained weights; use a backbone")
        if cached(classifier) is None:
            raise UserError(f"--pretrained: {missing_message(classifier, None)}")
    for opt, v, low in (("--epochs", epochs, 1), ("--min-steps", min_steps, 0), ("--tsne-points", tsne_points, 0)):
        if v < low:
            raise UserError(f"{opt} must be at least {low}")
    if synthetic is not None and synthetic < 1:
        raise UserError("--synthetic must be at least 1")
    if seeds < 1:
        raise UserError("--seeds must be at least 1 (3 or more for an interval worth reading)")
    try:
        return str(resolve_device(device))
    except UserError as e:
        raise UserError(str(e).replace("config key 'run.device'", "--device")) from None


def real_set(option: str, source: str, size: int, channels: int, extra: list[str],
             load: Callable[[Any], ImageSet] | None = None) -> ImageSet:
    """A real image set for ``fedsynth utility``, prepared to the run's ``size``; a UserError
    naming ``option`` if it does not match the run (size, channels). ``load``: config -> ImageSet
    (default :func:`fedsynth.data.load_dataset`)."""
    from ..config import load_config
    from ..data import load_dataset
    from ..data.export import source_overrides
    try:
        cfg = load_config(None, source_overrides(source) + [f"data.image-size={size}"] + list(extra))
    except UserError as e:
        raise UserError(f"{option} {source}: {e}") from None
    data = (load or load_dataset)(cfg)
    if data.size != size:
        raise UserError(f"{option} {source}: images of {data.size} px, but the run's model makes {size} px "
                        f"(leave data.image-size out: the images are prepared to the run's size)")
    if data.channels != channels:
        fix = "gray" if channels == 1 else "rgb"
        raise UserError(f"{option} {source}: {data.channels}-channel images, but the run's model makes "
                        f"{channels}-channel ones (add --{option[7:]}-set preprocess.channels={fix})")
    if len(data) < 2:
        raise UserError(f"{option} {source}: {len(data)} image(s); a classifier needs at least two")
    return data


def utility_data(run_dir: Path, client: str | None, which: str | None, real_train: str, real_test: str,
                 train_set: list[str], test_set: list[str], classifier: str, pretrained: bool,
                 load: Callable[[Any], ImageSet] | None = None, warn: Callable[[str], None] = lambda m: None):
    """``(released, train, test)``: the run's released model (:func:`fedsynth.checkpoint.load_released`)
    and the real training and test sets, checked against it and each other; ``warn`` hears of
    test images that are also training images. The classifier is built once here, so that a
    bad one fails before the training starts."""
    from ..checkpoint import load_released
    from .released import images_only
    released = load_released(run_dir, client, which)
    model, state, run_classes = released
    images_only(model, "utility")
    desc = model.describe()
    size, channels = int(desc["image_size"]), int(desc["channels"])
    train = real_set("--real-train", real_train, size, channels, train_set, load)
    test = real_set("--real-test", real_test, size, channels, test_set, load)
    if tuple(test.class_names) != tuple(train.class_names):
        raise UserError(f"--real-test {real_test} has classes ({', '.join(test.class_names)}), --real-train "
                        f"{real_train} has ({', '.join(train.class_names)}): they must be the same")
    shared = shared_images(train, test)
    if shared == len(test):
        raise UserError("--real-test holds the same images as --real-train: hold out a test set "
                        "(a built-in phantom: --test-set run.seed=99)")
    if shared:
        warn(f"{shared} of the {len(test)} --real-test images are also in --real-train: "
             f"their scores measure memory, not generalisation")
    if model.conditional and tuple(run_classes) != tuple(train.class_names):
        raise UserError(f"--real-train {real_train} has classes ({', '.join(train.class_names)}), the run's "
                        f"model generates ({', '.join(run_classes)}): they must be the same, in the same order")
    build_classifier(classifier, channels, size, train.num_classes, pretrained)  # fails now, not after the data
    return released, train, test


@dataclass
class UtilityRun:
    """What ``fedsynth utility`` wrote: the result, its key in ``utility.json``, the folder, the t-SNE record."""

    result: UtilityResult
    key: str
    out: Path
    tsne: dict[str, Any] | None


def run_utility(run_dir: Path, released, train: ImageSet, test: ImageSet, settings: UtilitySettings,
                tsne_points: int, sources: dict[str, Any], client: str | None = None,
                show: Progress = lambda what, done, total: None,
                warn: Callable[[str], None] = lambda m: None) -> UtilityRun:
    """Train and score the three arms (:func:`run_arms`) with synthetic images from ``released``;
    the t-SNE figure of ``tsne_points`` real and synthetic images (0: none); write
    ``RUN_DIR/utility/`` (:func:`write_utility`) and rewrite the run's ``report.html``.
    ``sources``: ``real_train``/``real_test`` (names or paths) and ``train_set``/``test_set``
    (their overrides), as recorded."""
    from ..report.html import build_report
    from .tsne import run_tsne
    t0 = time.perf_counter()
    model, state, _ = released
    n_syn = settings.synthetic or len(train)
    show("generating synthetic images", 0, 0)
    if model.conditional:
        ys: torch.Tensor | None = balanced_labels(train.class_counts(), n_syn)
        xs = synthesize(model, state, ys, n_syn, settings.seed)
    else:  # no labels: images only for the t-SNE figure
        ys = None
        xs = synthesize(model, state, None, max(tsne_points, 2), settings.seed) if tsne_points else None
    result = run_arms(train, test, xs if ys is not None else None, ys, settings, show)
    tsne = None
    if tsne_points and xs is not None:
        show("t-SNE of real vs synthetic features", 0, 0)
        tsne = run_tsne(run_dir, train, xs, ys, settings.seed, tsne_points, warn)
    entry = {"settings": result.settings, "rows": result.rows,
             "real_train": {"source": sources["real_train"], "set": list(sources["train_set"]), "images": len(train),
                            "class_counts": train.class_counts()},
             "real_test": {"source": sources["real_test"], "set": list(sources["test_set"]), "images": len(test),
                           "class_counts": test.class_counts()},
             "class_names": list(train.class_names), "conditional": bool(model.conditional),
             "model": "global" if client is None else f"site {client}",
             "seconds": round(time.perf_counter() - t0, 1)}
    key = (settings.classifier + ("-pretrained" if settings.pretrained else "")
           + (f"-client-{client}" if client is not None else ""))
    out = run_dir / "utility"
    write_utility(out, key, entry, tsne)
    build_report(run_dir)
    return UtilityRun(result, key, out, tsne)
