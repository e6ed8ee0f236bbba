"""Figures of a run: Fréchet distance per site and for the global model; the band of a curve
measured over seeds, which ``fedsynth compare`` and the sweeps' ``curves.png`` draw."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..registry import is_fd_metric, is_kid_metric
from ..utils import atomic_write_bytes

if TYPE_CHECKING:
    from ..metrics.intervals import Interval


def series_name(r: dict[str, Any]) -> str:
    """``global`` (global model on the union), a client id (its model on its own data),
    ``<id> on union`` (a client's own model on everyone's data: the local baseline) or ``<id> on
    holdout`` (the same on the sites' held-out images)."""
    who, real = str(r["client"]), str(r.get("real", r["client"]))
    if who == "global":
        return "global" if real in ("union", "global") else f"global on {real}"
    if real == who:
        return who
    return f"{who} on holdout" if real == "holdout" else f"{who} on union"


def rescored_rows(records: list[dict[str, Any]]) -> tuple[str, str, bool, list[tuple]]:
    """The global model's scores by a second feature network (``rescore.jsonl``, written by
    ``fedsynth rescore``): its Fréchet metric ("" if there are none), its KID metric ("" if none),
    whether it was scored against held-out images, and one ``(round, all sites, held-out, KID)``
    per rescored round (None where a value is missing)."""
    fd = [r for r in records if r.get("client") == "global" and is_fd_metric(r["metric"])]
    if not fd:
        return "", "", False, []
    metric = fd[0]["metric"]
    fd = [r for r in fd if r["metric"] == metric]
    kid = next((r["metric"] for r in records if is_kid_metric(r["metric"])), "")
    by = {(r["round"], r.get("real"), r["metric"]): r["value"] for r in records if r.get("client") == "global"}
    rows = [(n, by.get((n, "union", metric)), by.get((n, "holdout", metric)), by.get((n, "union", kid)))
            for n in sorted({r["round"] for r in fd})]
    return metric, kid, any(r.get("real") == "holdout" for r in fd), rows


def fd_series(records: list[dict[str, Any]], metric: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Fréchet-distance (or ``metric``) values per series, sorted by round."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if (metric is None and is_fd_metric(r["metric"])) or r["metric"] == metric:
            out.setdefault(series_name(r), []).append((r["round"], r["value"]))
    return {k: sorted(v) for k, v in out.items()}


def seed_band(series: Sequence[Sequence[tuple[int, float]]], geometric: bool,
              level: float = 0.95) -> list[tuple[int, Interval]]:
    """One curve measured over seeds, ``[(round, Interval), ...]``: per round that every series
    (one per seed) has, the mean over the seeds with its ``level`` Student-t interval
    (:func:`~fedsynth.metrics.intervals.mean_interval`), or with ``geometric`` the geometric mean
    with the interval of the mean log (:func:`~fedsynth.metrics.intervals.geometric_interval`,
    symmetric on a log axis, never below 0). With one series the intervals are unknown (a plain
    line). ``[]`` where ``geometric`` meets a value that is not positive."""
    from ..metrics.intervals import geometric_interval, mean_interval  # scipy: only when a band is drawn
    per_round: dict[int, list[float]] = {}
    for s in series:
        for r, v in s:
            per_round.setdefault(int(r), []).append(float(v))
    rounds = sorted(r for r, v in per_round.items() if len(v) == len(series))
    if geometric and any(v <= 0 for r in rounds for v in per_round[r]):
        return []
    stat = geometric_interval if geometric else mean_interval
    return [(r, stat(per_round[r], level)) for r in rounds]


def draw_band(ax: Any, band: Sequence[tuple[int, Interval]], color: Any, label: str, **line: Any) -> None:
    """``band`` (:func:`seed_band`) on a matplotlib axis: the mean as a line (``line``: more
    ``ax.plot`` options), the interval shaded in the same colour where every round's is known."""
    rounds = [r for r, _ in band]
    ax.plot(rounds, [iv.mean for _, iv in band], color=color, label=label, **{"ls": "-", "lw": 1.6, **line})
    if band and all(iv.known for _, iv in band):
        ax.fill_between(rounds, [iv.low for _, iv in band], [iv.high for _, iv in band], color=color, alpha=0.18,
                        lw=0, zorder=1)  # under every line


def plot_fd(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """One curve per site plus the global model (thick, black), like the study's figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fd = [r for r in records if is_fd_metric(r["metric"])]
    if not fd:
        return None
    metric = fd[0]["metric"]
    extractor = fd[0].get("extractor", "")
    series = {k: v for k, v in fd_series(fd).items() if not k.startswith("global on")}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name in sorted(series, key=lambda s: (s == "global", s)):
        pts = sorted(series[name])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if name == "global":
            ax.plot(xs, ys, "-o", color="black", lw=2.2, ms=3.5, label="global model", zorder=5)
        elif name.endswith("on union"):
            ax.plot(xs, ys, "--", lw=1.0, alpha=0.8, label=f"site {name.removesuffix(' on union')} on all sites")
        elif name.endswith("on holdout"):
            ax.plot(xs, ys, ":", lw=1.2, alpha=0.9, label=f"site {name.removesuffix(' on holdout')} on held-out images")
        else:
            ax.plot(xs, ys, "-", lw=1.2, marker=".", alpha=0.85, label=f"site {name}")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    label = "FID" if metric == "fid" else "Fréchet distance (random features)"
    ax.set_ylabel(label)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or label, fontsize=10)
    ax.text(0.99, 0.01, f"extractor: {extractor}", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=6, color="0.4")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
