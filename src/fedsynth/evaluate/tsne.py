"""t-SNE of real vs synthetic images' features, as the histopathology study shows them.

Each image becomes one point: its features from the run's own feature network (the one its
Fréchet distances were computed with), embedded in two dimensions by scikit-learn's
:class:`sklearn.manifold.TSNE` (van der Maaten & Hinton 2008), seeded. Synthetic points that
mingle with real ones in every region suggest the generator covers the real distribution; an
island of synthetic points suggests an artefact, a real region without synthetic points a mode
the generator misses. Distances between far-apart clusters mean little in t-SNE.

It is computed by ``fedsynth utility``, where the real images are, not at the end of every run:
the points are per-image features of real images, which a federated server never holds (over
Flower it receives only merged feature moments), and a few hundred points cost ~3 s of CPU.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..utils import atomic_write_bytes, derive_seed

# the feature network a run's Fréchet distance records name -> the eval.feature-extractor value
KIND_OF_METRIC = {"fid": "inception", "fd-effnet": "effnet-lite0", "fd-dinov2": "dinov2", "fd-xrv": "xrv",
                  "fd-random": "random"}


def pick(n: int, k: int, seed: int, what: str) -> np.ndarray:
    """At most ``k`` of ``n`` indices, a seeded random subset in increasing order."""
    rng = np.random.default_rng(derive_seed(seed, "tsne", what))
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def embed(real_features: np.ndarray, fake_features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates ``(n_real + n_fake, 2)`` of both feature sets together (real first).

    Features are standardised per dimension first (a network's dimensions differ in scale by
    orders of magnitude); PCA initialisation, perplexity 30 (fewer for tiny sets: it must stay
    below the number of points), ``random_state`` from ``seed``.
    """
    from sklearn.manifold import TSNE
    x = np.concatenate([real_features, fake_features]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=derive_seed(seed, "tsne", "embed") % 2**32)
    return tsne.fit_transform(x)


MARKERS = "o^sDvP*Xh<>p"


def figure(points: np.ndarray, n_real: int, real_labels: Sequence[int] | None, fake_labels: Sequence[int] | None,
           class_names: Sequence[str], title: str) -> bytes:
    """The scatter plot as PNG bytes: real (blue) and synthetic (orange); one marker per class
    when both sides carry labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.2, 5.2), dpi=100)
    real, fake = points[:n_real], points[n_real:]
    by_class = real_labels is not None and fake_labels is not None and 1 < len(class_names) <= len(MARKERS)
    colours = {"real": "tab:blue", "synthetic": "tab:orange"}
    handles = [Line2D([], [], ls="", marker="o", color=colours["real"], label=f"real ({len(real)})"),
               Line2D([], [], ls="", marker="o", color=colours["synthetic"], label=f"synthetic ({len(fake)})")]
    for side, pts, labels in (("real", real, real_labels), ("synthetic", fake, fake_labels)):
        if by_class:
            lab = np.asarray(labels)
            for k in range(len(class_names)):
                sel = lab == k
                ax.scatter(pts[sel, 0], pts[sel, 1], s=12, marker=MARKERS[k], color=colours[side], alpha=0.55,
                           linewidths=0)
        else:
            ax.scatter(pts[:, 0], pts[:, 1], s=12, color=colours[side], alpha=0.55, linewidths=0)
    if by_class:
        handles += [Line2D([], [], ls="", marker=MARKERS[k], color="0.35", label=str(c))
                    for k, c in enumerate(class_names)]
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(handles)),
              frameon=False, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_tsne(real: torch.Tensor, fake: torch.Tensor, extractor, path, seed: int = 0, points: int = 300,
               real_labels: torch.Tensor | None = None, fake_labels: torch.Tensor | None = None,
               class_names: Sequence[str] = ()) -> dict[str, Any]:
    """Embed at most ``points`` real and ``points`` synthetic images (seeded subsets) with
    ``extractor`` (a :class:`fedsynth.metrics.FeatureExtractor`), write the figure to ``path``
    atomically and return what ``utility.json`` records about it."""
    import time
    t0 = time.perf_counter()
    ir, jf = pick(len(real), points, seed, "real"), pick(len(fake), points, seed, "synthetic")
    fr = extractor.extract(real[ir]).double().numpy()
    ff = extractor.extract(fake[jf]).double().numpy()
    xy = embed(fr, ff, seed)
    rl = real_labels[ir].tolist() if real_labels is not None else None
    fl = fake_labels[jf].tolist() if fake_labels is not None else None
    title = f"t-SNE of {extractor.kind} features: real vs synthetic"
    atomic_write_bytes(path, figure(xy, len(ir), rl, fl, list(class_names), title))
    return {"file": str(getattr(path, "name", path)), "extractor": extractor.name, "kind": extractor.kind,
            "real": len(ir), "synthetic": len(jf), "seed": seed, "seconds": round(time.perf_counter() - t0, 2)}


def run_extractor(run_dir, warn=lambda message: None):
    """The run's own feature network (the one its Fréchet distance records name; else its
    ``eval.feature-extractor``). Where that network is not available on this machine, ``warn``
    says so and the random network is used."""
    from ..config import UserError, load_config
    from ..metrics import build_extractor
    from ..registry import is_fd_metric
    from ..report.rundir import read_metrics
    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    metric = next((r["metric"] for r in records if is_fd_metric(r["metric"])), None)
    cfg = load_config(run_dir / "config.toml", [])
    kind = KIND_OF_METRIC.get(metric or "", cfg.eval.feature_extractor)
    try:
        return build_extractor(kind, cfg.eval.inception_weights)
    except UserError as e:  # the run's network is gone from this machine: say so, use the random one
        warn(f"t-SNE: the run's feature network is not available here ({e}); using the random network")
        return build_extractor("random")


def run_tsne(run_dir, train, xs: torch.Tensor, ys: torch.Tensor | None, seed: int, points: int,
             warn=lambda message: None) -> dict[str, Any]:
    """``RUN_DIR/utility/tsne.png`` of real images ``train`` (an ImageSet) vs synthetic ``xs``
    (labels ``ys`` or None) in the run's own feature network (:func:`run_extractor`)."""
    run_dir = Path(run_dir)
    ext = run_extractor(run_dir, warn)
    yr = torch.from_numpy(train.labels) if ys is not None else None
    (run_dir / "utility").mkdir(exist_ok=True)
    return write_tsne(train.batch(), xs, ext, run_dir / "utility" / "tsne.png", seed, points, yr, ys,
                      train.class_names if ys is not None else ())
