"""One self-contained HTML report per run (images embedded as base64; no network, no scripts).

Sections, top to bottom: a summary of the run (what ran, on what, how long, which version);
the final results as named rows (change since the untrained model and the ratio to the global
model's score); curves with labelled axes (matplotlib); real images beside the generated sample
grids at full resolution (click a grid to enlarge it: a CSS-only toggle, no script); the most
and least realistic samples; downstream utility and the t-SNE figure (when ``fedsynth utility``
has written ``utility/utility.json``); one line per metric saying what it measures; the
partition; the configuration, collapsed. Every number names the feature network that produced it, and the text
about that network comes from the records, never from the configuration's wishes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..registry import is_fd_metric, is_kid_metric
from ..utils import atomic_write_text
from .meanings import PRDC_MEANING, ZERO_INSIDE
from .plots import fd_series, rescored_rows
from .rundir import read_metrics

esc = html.escape

# what each feature network's records mean, by the metric name its records carry
NETWORKS = {
    "fd-random": ("a frozen, seeded, never-trained convolutional network (<code>fd-random</code>, not FID)",
                  "Comparable between fedsynth runs that name the same extractor, not with published FIDs; "
                  "random features mostly see intensity and texture statistics."),
    "fid": ("the standard FID Inception-v3 (ImageNet-trained)",
            "FID: comparable with published values computed with the same numbers of images."),
    "fd-effnet": ("ImageNet-trained EfficientNet-Lite0's pooled features (<code>fd-effnet</code>)",
                  "A trained network, but not Inception: comparable between fedsynth runs, not with published FIDs."),
    "fd-dinov2": ("DINOv2 ViT-L/14 features (<code>fd-dinov2</code>, FD-DINOv2 as in Stein et al. 2023)",
                  "Comparable with published FD-DINOv2 values at the same numbers of images."),
    "fd-xrv": ("torchxrayvision's chest-radiograph DenseNet-121 (<code>fd-xrv</code>), a medical feature space",
               "Comparable between runs that use the same weights; there are no published reference values."),
}


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or v != v:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------- what the run was
def _read_json(p: Path) -> dict[str, Any]:
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_jsonl(p: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; none if it is missing or unreadable (a report is written
    for any run directory)."""
    try:
        recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    return [r for r in recs if isinstance(r, dict) and "metric" in r and "round" in r]


def family_of(cfg: dict[str, Any]) -> Any:
    """The model family class of a run's parsed config (its words for pages and headers); the
    base class, with neutral words, for a family this installation does not know."""
    from ..models.base import GenerativeModel
    from ..registry import FAMILIES
    try:
        return FAMILIES.load(str(cfg.get("model", {}).get("family", "gan")))
    except (KeyError, ImportError):
        return GenerativeModel


def _read_config(run: Path) -> tuple[str, dict[str, Any]]:
    p = run / "config.toml"
    if not p.is_file():
        return "", {}
    text = p.read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return text, tomllib.loads(text)
    except ValueError:
        return text, {}


def _summary(run: Path, cfg: dict[str, Any], part: dict[str, Any], nodes: dict[str, Any], records: list[dict[str, Any]],
             timings: list[dict[str, Any]], fd_metric: str | None) -> str:
    g = lambda sec, key, default="–": cfg.get(sec, {}).get(key, default)  # noqa: E731
    info = _read_json(run / "run.json")
    sessions = [s for s in info.get("sessions", []) if isinstance(s, dict)]
    if part.get("clients"):
        sites = {k: v.get("images", 0) for k, v in part["clients"].items()}
    else:
        sites = {k: v.get("images", 0) for k, v in nodes.items() if isinstance(v, dict)}
    strategy = str(g("fed", "strategy"))
    rounds_done = max((r["round"] for r in records), default=0)
    rounds = g("fed", "rounds", rounds_done)
    if sessions:
        started = sessions[0].get("started", "")
        date = started.replace("T", " ").replace("+00:00", " UTC")
        secs = [s.get("seconds") for s in sessions]
        duration = _seconds(sum(x for x in secs if isinstance(x, (int, float)))) if any(
            isinstance(x, (int, float)) for x in secs) else "unfinished"
        if len(sessions) > 1:
            duration += f" over {len(sessions)} sessions (resumed)"
        last = sessions[-1]
        version = str(info.get("fedsynth", last.get("fedsynth", "–")))
        where = (f"{last.get('engine', '–')}; {last.get('machine', '')}, torch {last.get('torch', '?')}, "
                 f"{_plural(int(last.get('torch_threads', 0) or 0), 'thread')}")
    else:
        cfg_file = run / "config.toml"
        date = (datetime.fromtimestamp(cfg_file.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                if cfg_file.is_file() else "–")
        duration, version, where = "– (no run.json)", "– (no run.json)", "–"
    train_s = sum(t.get("seconds", 0.0) for t in timings if t.get("client") not in ("server", None))
    source = g("data", "source")
    images = part.get("data", {}).get("count") or sum(sites.values())
    data = f"{esc(str(source))}, {_plural(int(images), 'image')}" if images else esc(str(source))
    site_list = ", ".join(f"site {esc(k)} ({v:,})" for k, v in sites.items()) if sites else "–"
    if strategy == "centralized":
        site_text = f"1 (pooled: {site_list})"
    else:
        site_text = f"{len(sites) or g('partition', 'clients')}: {site_list}"
    evaluated = g("eval", "enabled", True)
    e = g("fed", "local-epochs", "?")
    epochs = _plural(e, "local epoch") if isinstance(e, int) else f"{e} local epochs"
    every = g("eval", "every", "?")
    every_text = "every round" if every == 1 else f"every {every} rounds"
    rows = [
        ("strategy", esc(strategy) + (f" (fraction {g('fed', 'fraction')})" if g("fed", "fraction", 1.0) not in (1, 1.0, "–") else "")),
        ("sites", site_text + (f"; split {esc(str(part.get('scheme')))}" if part.get("scheme") else "")),
        ("rounds", (f"{rounds_done} of {rounds}" if rounds_done != rounds else f"{rounds}") + f"; {epochs} per round"),
        ("data", f"{data}, {g('data', 'image-size')} px"),
        ("model", f"{esc(family_of(cfg).config_line(cfg))}; batch {g('train', 'batch-size')}"),
        ("evaluation", (f"{esc(fd_metric)}, {g('eval', 'num-samples')} generated images per score, every "
                        f"{every_text[6:]}") if evaluated and fd_metric else
         ("on, but no scores recorded yet" if evaluated else "off (eval.enabled = false)")),
        ("duration", duration + (f"; local training {_seconds(train_s)} of it" if train_s and sessions else "")),
        ("started", esc(date)),
        ("seed", str(g("run", "seed"))),
        ("fedsynth", esc(version) + (f" ({esc(where)})" if where != "–" else "")),
    ]
    cells = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in rows)
    return f'<dl class="summary">{cells}</dl>'


# ---------------------------------------------------------------------------- tables
def _row_name(who: str, real: str) -> tuple[str, str]:
    """(model, scored on) in words, for a record's ``client`` and ``real``."""
    data = "all sites (union)" if real in ("union", "global") else f"site {real}'s data"
    if real == "holdout":
        return (f"{'global model' if who == 'global' else f'site {who}'}, held-out images",
                "each site's held-out images (never trained on)")
    if who == "global":
        return ("global model" if real in ("union", "global") else f"global on site {real}'s data"), data
    if who == "pooled":
        return "centralized model (pooled data)", ("all data" if real in ("pooled", "union") else data)
    if real == who:
        return f"site {who}", data
    return f"site {who} on all sites", data


def _by_round(records: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        if r["metric"] == metric:
            out.setdefault((str(r["client"]), str(r.get("real", r["client"]))), {})[r["round"]] = r["value"]
    return out


def _change(v0: float | None, v1: float | None) -> str:
    if v0 is None or v1 is None or not v0:
        return "–"
    if v0 > 0 and v1 / v0 >= 10:  # +2,400% reads worse than ×25
        return f"×{v1 / v0:.0f}"
    return f"{(v1 - v0) / abs(v0) * 100:+.1f}%"


FEATURE_DIMS = {"fid": 2048, "fd-effnet": 1280, "fd-dinov2": 1024, "fd-xrv": 1024}


def _few_real(records: list[dict[str, Any]], fd_metric: str) -> str:
    """A warning above the results when a distance rests on few real images (the smallest set
    scored against; :func:`fedsynth.metrics.stats.few_real_note`)."""
    import re

    from ..metrics.stats import few_real_note
    scored = [r for r in records if r["metric"] == fd_metric and isinstance(r.get("num_real"), int)]
    if not scored:
        return ""
    low = min(scored, key=lambda r: r["num_real"])
    m = re.search(r"dims=(\d+)", str(low.get("extractor", "")))
    dims = int(m.group(1)) if m else FEATURE_DIMS.get(fd_metric)
    who = low.get("real", "")
    where = "" if who in ("union", "global") or len({r.get("real") for r in scored}) == 1 else f"site {who}'s data"
    note = few_real_note(low["num_real"], dims, where)
    return f"<p class=warn><b>Few real images</b>: {esc(note)}.</p>" if note else ""


def _final_table(records: list[dict[str, Any]], fd_metric: str, kid_metric: str, maker: str = "model") -> str:
    fd, kid = _by_round(records, fd_metric), _by_round(records, kid_metric)
    last = max(max(v) for v in fd.values())
    base = fd.get(("global", "union"), {}).get(last)

    def order(key: tuple[str, str]) -> tuple:
        who, real = key
        return (who != "global", real not in ("union", "global", "holdout"), real != "holdout", who == real, len(who),
                who, len(real), real)

    head = (f"<tr><th>model</th><th class=opt>scored on</th><th>before training</th><th>round {last}</th>"
            f"<th>change</th>{'<th>÷ global</th>' if base else ''}<th>{esc(kid_metric)} round {last}</th></tr>")
    rows = []
    for key in sorted(fd, key=order):
        vals = fd[key]
        model, data = _row_name(*key)
        v0, v1 = vals.get(0), vals.get(last)
        r1 = last if v1 is not None else max(vals)
        v1 = vals[r1]
        final = _fmt(v1) + (f" <span class=note>(round {r1})</span>" if r1 != last else "")
        ratio = ""
        if base:
            ratio = "<td>1 (baseline)</td>" if key == ("global", "union") else f"<td>{v1 / base:.2f}×</td>"
        k1 = kid.get(key, {}).get(r1)
        cls = ' class="main"' if key == ("global", "union") else ""
        rows.append(f"<tr{cls}><td>{esc(model)}</td><td class=opt>{esc(data)}</td><td>{_fmt(v0)}</td><td>{final}</td>"
                    f"<td>{_change(v0, v1)}</td>{ratio}<td>{_fmt(k1, 4)}</td></tr>")
    note = ("<p class=note><b>change</b>: the final score against the same model's score before training "
            f"(round 0, the untrained {esc(maker)}); negative is better. ")
    if base:
        note += ("<b>÷ global</b>: the final score divided by the global model's final score on all sites "
                 f"({_fmt(base)}), the run's headline number: above 1 means that model, or that site, fares worse. ")
    note += ("Rows <i>site k</i> are site k's own model right after its local training, scored on its own data; "
             "<i>global on site k's data</i> is the released model scored on one site (fairness). "
             "Scores of different rows use different numbers of real images, which biases a Fréchet distance: "
             "compare a row with itself over rounds first.</p>")
    return f"<div class=scroll><table>{head}{''.join(rows)}</table></div>{note}"


def _global_table(records: list[dict[str, Any]], fd_metric: str, kid_metric: str) -> str:
    """The global model's other numbers: spread across sites, KID, realism."""
    last = max((r["round"] for r in records if r["metric"] == fd_metric), default=0)
    rows: list[tuple[str, str, dict[int, float], int]] = []
    for metric, digits in ((fd_metric, 3), (kid_metric, 4)):
        for suffix, label in (("-sites-mean", "mean over the sites' data"), ("-sites-worst", "worst site"),
                              ("-sites-best", "best site")):
            vals = {r["round"]: r["value"] for r in records if r["metric"] == metric + suffix}
            if vals:
                rows.append((f"{metric}, {label}", "lower is better", vals, digits))
    for metric, label, how in (("memorisation-gap", "memorisation gap: held-out minus training distance (as many "
                                "images each)", "near 0: no sign of copying; clearly above 0: closer to its training "
                                "images than to unseen ones"),
                               ("selection-score", "selection score (the other half of the held-out images)",
                                "lower is better; picks the best round, never reported as the model's quality"),
                               ("realism-mean", "realism score, mean", "higher is more realistic"),
                               ("realism-median", "realism score, median", "higher is more realistic"),
                               ("realism-inside", "share of samples inside the real manifold (R ≥ 1)",
                                f"higher is better; inside: in some real image's neighbourhood, as precision counts; "
                                f"{ZERO_INSIDE}")):
        vals = {r["round"]: r["value"] for r in records if r["metric"] == metric and r.get("client") == "global"}
        if vals:
            rows.append((label, how, vals, 3))
    if not rows:
        return ""
    out = [f"<div class=scroll><table><tr><th>global model</th><th class=opt></th><th>before training</th>"
           f"<th>round {last}</th><th>change</th></tr>"]
    for label, how, vals, digits in rows:
        v0, v1 = vals.get(0), vals.get(last, vals[max(vals)])
        if label.startswith("share"):
            cells = f"<td>{'–' if v0 is None else f'{v0:.0%}'}</td><td>{v1:.0%}</td>"
        else:
            cells = f"<td>{_fmt(v0, digits)}</td><td>{_fmt(v1, digits)}</td>"
        out.append(f"<tr><td>{esc(label)}</td><td class='note opt'>{how}</td>{cells}<td>{_change(v0, v1)}</td></tr>")
    out.append("</table></div>")
    best = best_round(records)
    if best is not None:
        out.append(f"<p class=note><b>Best round: {best}</b>, by the selection score on half of the held-out images "
                   "(the distances reported against held-out images use the other half). It is kept as "
                   "<code>checkpoints/best.pt</code> beside the newest rounds, and <code>generate</code>, "
                   "<code>evaluate</code>, <code>utility</code> and <code>audit</code> use it unless given "
                   "<code>--round last</code> or a round number.</p>")
    return "".join(out)


def best_round(records: list[dict[str, Any]]) -> int | None:
    """The best round by the held-out selection score (lowest; ties: the earlier), as the run
    chose it for ``checkpoints/best.pt``; None where the run kept no held-out images."""
    sel = [(r["value"], r["round"]) for r in records if r["metric"] == "selection-score"
           and r.get("client") == "global" and r["round"] > 0]
    return min(sel)[1] if sel else None


# ---------------------------------------------------------------------------- curves
def _curves(records: list[dict[str, Any]], fd_metric: str | None, kid_metric: str | None,
            loss_labels: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """(caption, PNG) per panel: one figure each, so a narrow screen stacks them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9})
    out: list[tuple[str, bytes]] = []

    def label_of(name: str) -> str:
        if name == "global":
            return "global model (all sites)"
        if name == "global on holdout":
            return "global model (held-out images)"
        if name.startswith("global on "):
            return f"global on site {name[10:]}'s data"
        if name.endswith(" on union"):
            return f"site {name[:-9]} on all sites"
        if name.endswith(" on holdout"):
            return f"site {name[:-11]} on held-out images"
        if name == "pooled":
            return "centralized (pooled)"
        return f"site {name}"

    def panel(title: str, ylabel: str, series: dict[str, list[tuple[int, float]]], log: bool = False,
              caption: str = "", mark: int | None = None) -> None:
        if not series:
            return
        fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=100)
        if mark is not None:
            ax.axvline(mark, color="tab:green", lw=1.2, ls=":", label=f"best round ({mark})")
        for name in sorted(series, key=lambda s: (s != "global", s)):
            pts = series[name]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if name == "global":
                ax.plot(xs, ys, "-o", color="black", lw=2.4, ms=4, label=label_of(name), zorder=2, alpha=0.75)
            else:
                ax.plot(xs, ys, "--" if name.endswith(" on union") else ":" if name.endswith(" on holdout") else "-",
                        marker=".", lw=1.4, alpha=0.9,
                        label=label_of(name), zorder=3)  # above the global line: never hidden under it
        _finish(ax, title, ylabel, log)
        out.append((caption or title, _fig_png(fig)))
        plt.close(fig)

    def _finish(ax, title: str, ylabel: str, log: bool) -> None:
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if log and ys and min(ys) > 0 and max(ys) / min(ys) > 5:  # a log axis only where values span decades
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_ylabel(ylabel.replace("log scale, ", ""))
        ax.grid(alpha=0.3, which="both")
        handles = ax.get_legend_handles_labels()[0]
        if handles:  # below the plot: it never hides a curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2 if len(handles) > 1 else 1,
                      frameon=False)
        ax.figure.tight_layout()

    if fd_metric:
        fd = fd_series(records, fd_metric)
        best = best_round(records)
        drawn = {k: v for k, v in fd.items() if not k.startswith("global on") or k == "global on holdout"}
        dashed = (" (dashed: a site's own model against all sites)" if any(k.endswith(" on union") for k in drawn)
                  else "")
        panel(f"Fréchet distance ({fd_metric}) per model", f"{fd_metric} (log scale, lower is better)", drawn, log=True,
              caption="Fréchet distance of each model against its data: the global model (black) against all sites' "
                      "training images and against their held-out images (when the run kept some), each site's "
                      f"model against its own data{dashed}."
                      + (f" Dotted: the best round ({best}), chosen by the held-out selection score." if best else ""),
              mark=best)
        gap = fd_series(records, "memorisation-gap")
        panel("Memorisation signal", "held-out minus training distance", gap,
              caption="The global model's distance to held-out images minus its distance to as many training "
                      "images, per round: a gap that grows clearly above 0 means the model is closer to the images "
                      "it trained on than to unseen ones of the same sites.")
        site = {k: v for k, v in fd.items() if k.startswith("global") and k != "global on holdout"}
        if len(site) > 1:
            panel("Fairness: the global model on each site's data", f"{fd_metric} (log scale, lower is better)",
                  site, log=True, caption="The released global model scored against each site's own images.")
    if kid_metric:
        kid = fd_series(records, kid_metric)
        panel(f"{_kid_name(kid_metric)} ({kid_metric})", f"{kid_metric} (lower is better)",
              {k: v for k, v in kid.items() if not k.startswith("global on")},
              caption="KID per model, on the same features as the Fréchet distance.")
    realism = {m: sorted((r["round"], r["value"]) for r in records if r["metric"] == m and r.get("client") == "global")
               for m in ("realism-mean", "realism-median", "realism-inside")}
    if realism["realism-mean"]:
        fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=100)
        for m, style in (("realism-mean", "-o"), ("realism-median", "--s")):
            ax.plot(*zip(*realism[m]), style, ms=4, lw=1.8, label=m.replace("realism-", "realism score, "))
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax2 = ax.twinx()
        ax2.plot(*zip(*realism["realism-inside"]), "-^", color="tab:green", ms=4, lw=1.2,
                 label="inside the real manifold (right axis)")
        ax2.set_ylabel("share of samples with R ≥ 1")
        ax2.set_ylim(-0.02, 1.02)
        ax2.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        _finish(ax, "Realism of the global model's samples", "realism score R (higher is more realistic)", False)
        ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        fig.tight_layout()
        out.append(("Realism score of the global model's evaluation samples against all sites' real images "
                    "(dotted line: R = 1, the edge of the real manifold).", _fig_png(fig)))
        plt.close(fig)
    # the family's own losses (the GAN's two, the diffusion model's one), and any other one recorded
    labels = dict(loss_labels or {})
    for r in records:
        m = r["metric"]
        if (m == "loss" or m.endswith("-loss")) and m not in labels:
            labels[m] = m
    losses = {m: fd_series(records, m) for m in labels}
    losses = {m: v for m, v in losses.items() if v}
    if losses:
        fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=100)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        styles = ("-", "--", ":", "-.")
        names = sorted({n for v in losses.values() for n in v}, key=lambda s: (len(s), s))
        for i, name in enumerate(names):
            for j, m in enumerate(losses):
                pts = losses[m].get(name)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[j % len(styles)], marker=".", lw=1.3,
                            color=colors[i % len(colors)],
                            label=f"{label_of(name)}" + (f": {labels[m]}" if len(losses) > 1 else ""))
        kinds = [f"{labels[m]} ({['solid', 'dashed', 'dotted', 'dash-dotted'][j % 4]})" if len(losses) > 1
                 else labels[m] for j, m in enumerate(losses)]
        _finish(ax, "Local training " + ("losses" if len(losses) > 1 else labels[next(iter(losses))]),
                "loss (mean over a round's steps)", False)
        out.append((f"{', '.join(kinds).capitalize()}{' losses' if len(losses) > 1 else ''} of each site's local "
                    "training, the mean over each round's steps.", _fig_png(fig)))
        plt.close(fig)
    return out


# ---------------------------------------------------------------------------- images
def _zoomable(data: bytes, alt: str, target: int = 540) -> str:
    """An image at its own resolution (small grids shown at an integer multiple, crisp); a click
    toggles a full-window view (a hidden checkbox and CSS: no script). Enlarged, a small grid is
    again an integer multiple of its width (CSS ``round()``, where the browser has it), so every
    cell of a 32 px grid gets the same number of screen pixels."""
    w, h = _png_size(data)
    scale = max(1, target // w)
    cls = ' class="px"' if scale > 1 else ""
    return (f'<label class="zoom" title="click to enlarge"><input type="checkbox">'
            f'<img{cls} src="{_data_uri(data)}" alt="{esc(alt)}" width="{w * scale}" height="{h * scale}" '
            f'style="aspect-ratio:{w}/{h};--w:{w}px;--r:{w / h:.6f}"></label>')


def _pick_rounds(rounds: list[int], k: int) -> list[int]:
    """At most ``k`` of ``rounds``, evenly spaced by round number, always the first and last."""
    if len(rounds) <= k:
        return rounds
    lo, hi = rounds[0], rounds[-1]
    picked: list[int] = []
    for i in range(k):
        t = lo + (hi - lo) * i / (k - 1)
        best = min((r for r in rounds if r not in picked), key=lambda r: (abs(r - t), r))
        picked.append(best)
    return sorted(picked)


def _samples(run: Path, records: list[dict[str, Any]], evaluated: bool, flower: bool, conditional: bool,
             max_grids: int) -> str:
    samples = run / "samples"
    grids = {int(p.stem[6:]): p for p in sorted(samples.glob("round-*.png"))} if samples.is_dir() else {}
    if not grids:
        return ("<p>Evaluation was off (<code>eval.enabled = false</code>): no sample grids were drawn.</p>"
                if not evaluated else "<p>No sample grids yet.</p>")
    rounds = sorted(grids)
    last = rounds[-1]
    real = samples / "real.png"
    rows = "rows: one class each; " if conditional else ""
    parts = ['<div class="grids">']
    if real.is_file():
        parts.append(f"<figure>{_zoomable(real.read_bytes(), 'real images')}<figcaption><b>Real images</b> from the "
                     f"sites, in turn ({rows}the same layout as the samples)</figcaption></figure>")
    parts.append(f"<figure>{_zoomable(grids[last].read_bytes(), f'samples, round {last}')}<figcaption><b>Generated, "
                 f"round {last}</b> (the final model; fixed latents, the same every round)</figcaption></figure></div>")
    if not real.is_file() and not evaluated:
        parts.append("<p class=note>Evaluation was off (<code>eval.enabled = false</code>): the final model's "
                     "samples only, drawn once the run ended; no scores, no real-image grid.</p>")
    elif not real.is_file():
        why = ("over Flower the server holds no images: they never leave the sites" if flower
               else "this run directory has no <code>samples/real.png</code> (written by runs since the report "
                    "gained it)")
        parts.append(f"<p class=note>No real-image grid: {why}.</p>")
    earlier = _pick_rounds(rounds, max_grids + 1)[:-1] if len(rounds) > 1 else []
    earlier = [r for r in earlier if r != last]
    if earlier:
        shown = f"{len(earlier)} of {len(rounds) - 1} earlier evaluated rounds, evenly spaced"
        parts.append(f"<h3>Over training</h3><p class=note>{shown}; the same latents in every grid, so differences "
                     f"come from the model alone. Click a grid to enlarge it.</p><div class=\"grids\">")
        for r in earlier:
            parts.append(f"<figure>{_zoomable(grids[r].read_bytes(), f'samples, round {r}')}"
                         f"<figcaption>round {r}{' (before training)' if r == 0 else ''}</figcaption></figure>")
        parts.append("</div>")
    return "".join(parts)


def _realism_section(run: Path, records: list[dict[str, Any]], evaluated: bool, flower: bool) -> str:
    recs = [r for r in records if r["metric"] == "realism-mean" and r.get("client") == "global"]
    path = run / "samples" / "realism.png"
    if not recs:
        if not evaluated:
            return ""
        why = ("over Flower the real features stay on the sites, and the score needs them" if flower else
               "no realism records (a local-baseline run has no global model; older runs did not score it)")
        return f"<h2 id=realism>Most and least realistic samples</h2><p class=note>No realism score: {why}.</p>"
    last = max(r["round"] for r in recs)
    at = {r["metric"]: r["value"] for r in records if r["round"] == last and r["metric"].startswith("realism-")}
    n = recs[-1].get("num_fake", "the")
    body = ""
    if path.is_file():
        data = path.read_bytes()
        k = (_png_size(data)[0] - 1) // max(1, (_png_size(data)[1] - 1) // 2)
        body = (f"<figure>{_zoomable(data, 'most and least realistic samples')}<figcaption>Top row: the {k} most "
                f"realistic of the global model's {n} evaluation samples at round {last}; bottom row: the {k} least "
                f"realistic (worst last).</figcaption></figure>")
    return (f"<h2 id=realism>Most and least realistic samples</h2>{body}<p>At round {last} the mean realism "
            f"score is {at.get('realism-mean', float('nan')):.3f} (median {at.get('realism-median', float('nan')):.3f}); "
            f"{at.get('realism-inside', 0):.0%} of the samples lie inside the real manifold (R ≥ 1: in some real "
            f"image's neighbourhood, as precision counts; higher is better"
            f"{'; ' + ZERO_INSIDE if at.get('realism-inside', 0) < 0.05 else ''}).</p>")


# ---------------------------------------------------------------------------- downstream utility
def _utility_section(run: Path) -> str:
    """``fedsynth utility``'s results (``utility/utility.json``) and its t-SNE figure, if the
    command has run on this run directory; empty otherwise."""
    doc = _read_json(run / "utility" / "utility.json")
    entries = doc.get("classifiers") if isinstance(doc.get("classifiers"), dict) else {}
    if not entries:
        return ""
    rows, tests, notes, seeds = [], set(), set(), set()
    for name, e in entries.items():
        if not isinstance(e, dict):
            continue
        s = e.get("settings", {})
        test = e.get("real_test", {})
        tests.add(f"{esc(str(test.get('source', '?')))} ({_plural(int(test.get('images', 0) or 0), 'image')})")
        label = esc(str(s.get("classifier", name))) + (" <span class=note>(pretrained)</span>" if s.get("pretrained") else "")
        how = (f"{s.get('epochs', '?')} epoch{'' if s.get('epochs') == 1 else 's'}, at least {s.get('min_steps', '?')} steps, "
               f"{'augmented' if s.get('augment') else 'no augmentation'}")
        for r in e.get("rows", []):
            if not isinstance(r, dict):
                continue
            if r.get("skipped"):
                notes.add(str(r["skipped"]))
                cells = "<td>–</td><td>skipped</td><td>skipped</td><td></td>"
            else:
                def score(k: str) -> str:  # the mean, its interval over seeds below it
                    lo, hi = r.get(f"{k}_low"), r.get(f"{k}_high")
                    return _fmt(r.get(k)) + (f"<br><span class=note>[{_fmt(lo)}, {_fmt(hi)}]</span>"
                                             if lo is not None and hi is not None else "")
                cells = (f"<td>{int(r.get('images', 0)):,}</td><td>{score('accuracy')}</td>"
                         f"<td>{score('f1')}</td><td>{esc(str(r.get('verdict', '')))}</td>")
            rows.append(f"<tr><td>{label}</td><td class=opt>{esc(how)}</td><td>{esc(str(r.get('train', '?')))}</td>"
                        f"{cells}</tr>")
        chance = s.get("chance")
        if isinstance(chance, dict):
            rows.append(f"<tr class=note><td>{label}</td><td class=opt></td><td>chance level</td><td></td>"
                        f"<td>{_fmt(chance.get('accuracy'))}</td><td>{_fmt(chance.get('f1'))}</td>"
                        f"<td>always the most common class</td></tr>")
        seeds.add(int(s.get("seeds", 1) or 1))
    table = ("<div class=scroll><table><tr><th>classifier</th><th class=opt>training</th><th>trained on</th>"
             "<th>images</th><th>accuracy</th><th>macro F1</th><th>verdict</th></tr>" + "".join(rows) + "</table></div>")
    text = (f"<p>A classifier trained on the real training images only, on the run's synthetic images only, and on "
            f"both, each scored on held-out real images: {', '.join(sorted(tests))}. Synthetic data is useful if "
            f"<i>synthetic</i> comes near <i>real</i>, or <i>real + synthetic</i> beats it. Each arm was trained "
            f"{' or '.join(_plural(n, 'time') for n in sorted(seeds))} with different seeds: the mean, with its 95 % "
            f"interval (Student t) below it; <i>cannot tell</i> where a synthetic arm's interval overlaps the "
            f"real-only arm's, <i>at chance</i> where an interval reaches the chance level.</p>")
    if notes:
        text += "".join(f"<p class=note>Skipped: {esc(n)}.</p>" for n in sorted(notes))
    tsne = doc.get("tsne") if isinstance(doc.get("tsne"), dict) else {}
    png = run / "utility" / "tsne.png"
    fig = ""
    if tsne and png.is_file():
        data = png.read_bytes()
        w, h = _png_size(data)
        fig = (f'<figure><img src="{_data_uri(data)}" alt="t-SNE of real and synthetic features" width="{w}" '
               f'height="{h}" style="max-width:100%;height:auto"><figcaption>t-SNE (scikit-learn, seeded) of '
               f"{tsne.get('real', '?')} real training and {tsne.get('synthetic', '?')} synthetic images' features "
               f"from the run's feature network (<code>{esc(str(tsne.get('kind', '?')))}</code>): synthetic points "
               f"mixed with real ones everywhere suggest the model covers the real data; synthetic islands "
               f"suggest artefacts, real regions without synthetic points missed modes.</figcaption></figure>")
    return f"<h2 id=utility>Downstream utility</h2>{text}{table}{fig}"


# ---------------------------------------------------------------------------- explanations
def _kid_name(kid_metric: str) -> str:
    """KID is the *Kernel Inception* Distance only on Inception features; on others, a kernel distance."""
    return "Kernel inception distance (KID)" if kid_metric == "kid" else "Kernel distance (KID on other features)"


def _explanations(fd_metric: str | None, kid_metric: str | None, has_realism: bool, family: Any = None) -> str:
    items = []
    if fd_metric:
        items.append(("Fréchet distance", f"<code>{esc(fd_metric)}</code>",
                      "The distance between Gaussians fitted (mean and covariance) to the real and the generated "
                      "images' features; 0 when they match, lower is better. It is biased upwards when few images "
                      "are scored, so compare values computed from the same numbers of images."))
    if kid_metric:
        items.append((_kid_name(kid_metric), f"<code>{esc(kid_metric)}</code>",
                      "The squared maximum mean discrepancy between real and generated features with a cubic "
                      "polynomial kernel, averaged over random subsets; unbiased, so usable with few images; 0 at a "
                      "match (small negative values are noise)."))
    if has_realism:
        items.append(("Realism score", "<code>realism-*</code>",
                      "Per generated sample (Kynkäänniemi et al. 2019): the largest ratio, over real images, of that "
                      "image's distance to its 3rd-nearest real neighbour to the sample's distance from it, after "
                      "dropping the real images with the widest neighbourhoods (the half most likely to be outliers). "
                      "R ≥ 1 means the sample lies in some real image's neighbourhood; higher is more typical."))
    items.append(("Precision, recall, density, coverage", "<code>fedsynth evaluate</code>",
                  f"Precision: {PRDC_MEANING['precision']}; recall: {PRDC_MEANING['recall']}; density: "
                  f"{PRDC_MEANING['density']}; coverage: {PRDC_MEANING['coverage']} (Naeem et al. 2020; a ball's "
                  "radius is its real image's distance to its 5th-nearest real neighbour). Higher is better; "
                  "density is best near 1. "
                  "They can be 0 beside a small Fréchet distance: on homogeneous images the balls are small "
                  "next to the distance between two typical images, so a small artefact on every generated image "
                  "(noise, a texture, a shifted intensity) puts each one just outside all of them, while the "
                  "features' means and covariances, all that a Fréchet distance compares, barely move. Measured "
                  "(<code>benchmarks/prdc_vs_fd.py</code>, 500 x-ray phantoms at 64 px): pixel noise of s.d. 0.05 "
                  "on real images moves fd-random only from 0.015 (two real sets) to 0.020, but precision from "
                  "0.98 to 0.06 (s.d. 0.1: 0.080 and 0.000). Read them as a per-sample test of fine detail, not "
                  "as a contradiction of the distance."))
    if family is not None and family.loss_labels:
        items.append(("Losses", ", ".join(f"<code>{esc(m)}</code>" for m in family.loss_labels), esc(family.loss_help)))
    return "<dl class=metrics>" + "".join(f"<dt>{a} <span class=note>{b}</span></dt><dd>{c}</dd>" for a, b, c in items) + "</dl>"


def _settings(v: dict[str, Any]) -> str:
    """A site's own settings ([sites.<id>], or its node config): ``model.ndf=32 ...``; ``-``: the run's."""
    return esc(" ".join(f"{k}={x}" for k, x in (v.get("settings") or {}).items()) or "-")


def _partition(part: dict[str, Any], nodes: dict[str, Any]) -> str:
    if part:
        names = part.get("class_names", [])
        clients = part.get("clients", {})
        own = any(isinstance(v, dict) and v.get("settings") for v in clients.values())
        server = part.get("server")
        rows = [(f"site {esc(k)}", v["images"], v["class_counts"], _settings(v)) for k, v in clients.items()]
        if server:  # fed.server-data
            same = server.get("class_names", names) == names  # else its counts are not the sites' classes
            rows.append((f"server ({esc(str(server.get('source', '')))}, {server.get('steps', 0)} steps a round)",
                         server["images"], server.get("class_counts", []) if same else ["–"] * len(names), "-"))
        out = ("<div class=scroll><table><tr><th>site</th><th>images</th>"
               + "".join(f"<th>{esc(str(c))}</th>" for c in names) + ("<th>own settings</th>" if own else "") + "</tr>"
               + "".join(f"<tr><td>{who}</td><td>{n:,}</td>" + "".join(f"<td>{c:,}</td>" if isinstance(c, int) else
                                                                        f"<td>{c}</td>" for c in counts)
                         + (f"<td>{st}</td>" if own else "") + "</tr>" for who, n, counts, st in rows)
               + "</table></div>")
        skipped = part.get("data", {}).get("skipped", [])
        if skipped:
            out += f"<p>{_plural(len(skipped), 'bad file')} skipped.</p>"
        return out
    if nodes:
        return ("<div class=scroll><table><tr><th>site</th><th>SuperNode</th><th>images</th><th>classes</th>"
                "<th>own settings</th></tr>"
                + "".join(f"<tr><td>site {esc(k)}</td><td>{esc(str(v.get('node-id', '')))}</td><td>{v.get('images', 0):,}</td>"
                          f"<td>{esc(', '.join(f'{c}: {n}' for c, n in zip(v.get('classes', []), v.get('class-counts', []))))}</td>"
                          f"<td>{_settings(v)}</td></tr>"
                          for k, v in nodes.items() if isinstance(v, dict)) + "</table></div>")
    return "<p>No partition summary.</p>"


CSS = """*{box-sizing:border-box}
@media (max-width:700px){.scroll::before{content:"scroll sideways for more columns →";display:block;font-size:.8em;color:#777;margin:.2em 0}}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .7em}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1.2em 1.2em 3em;max-width:1140px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.55em;margin:.2em 0 .4em;overflow-wrap:anywhere}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.25em;margin-top:1.8em}
h3{font-size:1.02em;margin:1.2em 0 .3em}
.lede{font-size:1.05em;margin:.2em 0 1em}
nav{font-size:.9em;margin:.4em 0 1em}nav a{margin-right:.9em;color:#0b5cad;text-decoration:none;white-space:nowrap}
.summary{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.5em 1.2em;margin:0;padding:.8em 1em;background:#f5f6f8;border-radius:8px}
.summary div{min-width:0}.summary dt{font-size:.75em;text-transform:uppercase;letter-spacing:.04em;color:#666}
.summary dd{margin:0;font-size:.92em;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.88em;margin:.3em 0}td,th{border:1px solid #d5d5d5;padding:4px 9px;text-align:right;white-space:nowrap}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}th{background:#f1f2f4}
tr.main td{font-weight:600;background:#fbfbe8}td:first-child{white-space:normal;min-width:9em}
td.note{white-space:normal;text-align:left;min-width:12em;max-width:30em}table.num td:nth-child(2){text-align:right}
@media (max-width:640px){.opt{display:none}table{font-size:.8em}td,th{padding:3px 4px}th{white-space:normal}td:first-child{min-width:7em}
 body{padding:.8em .7em 2em}}
code{font-size:.9em;overflow-wrap:anywhere}pre{background:#f6f6f6;padding:.8em;font-size:.8em;overflow:auto;max-height:30em}
.note{color:#5a5a5a;font-size:.88em}
.curves{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:1em}
.curves img{width:100%;height:auto}
figure{margin:0;max-width:100%}figcaption{font-size:.85em;color:#444;margin-top:.3em;max-width:540px}
.grids{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.grids img,figure>.zoom img{max-width:100%;height:auto;display:block;background:#000}
img.px{image-rendering:pixelated}
@media (max-width:1140px){img.px{image-rendering:auto}}
.zoom{cursor:zoom-in;display:block}.zoom input{position:absolute;opacity:0;width:0;height:0;pointer-events:none}
.zoom input:checked+img{position:fixed;inset:0;width:100vw!important;height:100vh!important;max-width:none;object-fit:contain;
 background:rgba(15,15,15,.94);padding:2vmin;z-index:10;cursor:zoom-out}
@media (min-width:700px) and (min-height:600px){.zoom input:checked+img.px{image-rendering:pixelated}
@supports (width:round(down,9px,2px)){.zoom input:checked+img.px{height:auto!important;margin:auto;padding:0;
 box-shadow:0 0 0 100vmax rgba(15,15,15,.97);width:max(round(down,min(96vw,calc(96vh*var(--r))),var(--w)),
 min(var(--w),96vw,calc(96vh*var(--r))))!important}}}
dl.metrics dt{font-weight:600;margin-top:.7em}dl.metrics dd{margin:.15em 0 0 1.2em}
details summary{cursor:pointer;font-weight:600;margin:.4em 0}"""


def _trained_network_note(run: Path, fd_metric: str) -> str:
    """The run scored again with a second feature network (``rescore.jsonl``, written by
    ``fedsynth rescore``): the global model's scores per rescored round. Where there is none and
    the run used another network than the trained one, the one command that adds it
    (:func:`fedsynth.metrics.features.trained_network_command`)."""
    again = _read_jsonl(run / "rescore.jsonl")
    metric, kid_metric, held, scored = rescored_rows(again)
    if metric:
        ext = next((r.get("extractor", "") for r in again if r["metric"] == metric), "")
        what = NETWORKS.get(metric, (f"<code>{esc(metric)}</code>", ""))[0]
        head = (f"<tr><th>global model</th><th>{esc(metric)}, all sites</th>"
                + (f"<th>{esc(metric)}, held-out images</th>" if held else "")
                + (f"<th>{esc(kid_metric)}</th>" if kid_metric else "") + "</tr>")
        rows = "".join(
            f"<tr><td>round {r}</td><td>{_fmt(union)}</td>" + (f"<td>{_fmt(holdout)}</td>" if held else "")
            + (f"<td>{_fmt(k, 4)}</td>" if kid_metric else "") + "</tr>"
            for r, union, holdout, k in scored)
        return (f"<h3>Scored again with {what}</h3><p class=note>By <code>fedsynth rescore</code>: the same real "
                f"and held-out images and the same fixed latents as above, only the feature network changed "
                f"(<code>{esc(ext)}</code>); lower is better. Its numbers compare with other fedsynth runs scored "
                f"by the same network, not with the random network's above.</p>"
                f"<div class=scroll><table class=num>{head}{rows}</table></div>")
    if fd_metric == "fd-effnet":
        return ""
    from ..config import load_config
    from ..metrics.features import trained_network_command
    try:
        cmd = trained_network_command(load_config(str(run / "config.toml")), run)
    except Exception:  # a report is written for any run directory, even one whose config no longer loads
        return ""
    if not cmd:
        return ""
    return (f"<p class=note>{esc(fd_metric)} uses a frozen random network: it ranks a run against itself over rounds, "
            "not against published numbers. To add the last rounds' scores in a trained network to this page "
            "(fd-effnet, EfficientNet-Lite0 ImageNet features; ~30 s of CPU per 1,000 samples, so not part of "
            f"every run): <code>{esc(cmd)}</code></p>")


def build_report(run_dir: str | Path, max_grids: int = 4) -> Path:
    """Write ``RUN_DIR/report.html`` and return its path.

    ``max_grids``: at most this many sample grids from rounds before the last (evenly spaced);
    the last round's grid is always shown, beside the real images when the run saved them.
    """
    run = Path(run_dir)
    records = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    timings = read_metrics(run / "timings.jsonl") if (run / "timings.jsonl").is_file() else []
    config, cfg = _read_config(run)
    part = _read_json(run / "partition.json")
    nodes = _read_json(run / "nodes.json")
    flower = bool(nodes) or any(s.get("engine", "").startswith("Flower")
                                for s in _read_json(run / "run.json").get("sessions", []) if isinstance(s, dict))
    evaluated = bool(cfg.get("eval", {}).get("enabled", True))
    fd_metric = next((r["metric"] for r in records if is_fd_metric(r["metric"])), None)
    kid_metric = next((r["metric"] for r in records if is_kid_metric(r["metric"])), None)
    extractors = sorted({r["extractor"] for r in records if r.get("extractor")})
    family = family_of(cfg)
    conditional = str(cfg.get("model", {}).get("conditional", "none")) not in ("none", "", "false", "False") or \
        bool(cfg.get("diffusion", {}).get("conditional", False)) and family.family == "diffusion"

    if fd_metric:
        what, caveat = NETWORKS.get(fd_metric, (f"<code>{esc(fd_metric)}</code>", ""))
        ext_html = (f"<p>Every score below comes from {what}: <code>{', '.join(esc(e) for e in extractors)}</code>. "
                    f"<span class=note>{caveat}</span></p>")
        results = ext_html + _few_real(records, fd_metric) + _final_table(records, fd_metric, kid_metric or "",
                                                                         family.maker) + _global_table(records, fd_metric, kid_metric or "")
        results += _trained_network_note(run, fd_metric)
        glob = _by_round(records, fd_metric).get(("global", "union"), {})
        if glob:
            r1 = max(glob)
            headline = (f"Global model: {esc(fd_metric)} {_fmt(glob.get(0))} before training → <b>{_fmt(glob[r1])}</b> "
                        f"at round {r1} ({_change(glob.get(0), glob[r1])}).")
        else:
            headline = f"Scored with {esc(fd_metric)} (no global model: every site keeps its own)."
    elif not evaluated:
        results = ("<p>Evaluation was off (<code>eval.enabled = false</code>): no feature network ran, so there are "
                   "no distances and no realism scores; only the training losses and the final model's samples "
                   "below.</p>")
        headline = "Evaluation was off: training losses only."
    else:
        results = "<p>No evaluation records yet.</p>"
        headline = "No evaluation records yet."

    curves = _curves(records, fd_metric, kid_metric, family.loss_labels)
    curves_html = "".join(f'<figure><img src="{_data_uri(png)}" alt="{esc(cap)}" width="620" height="440">'
                          f"<figcaption>{esc(cap)}</figcaption></figure>" for cap, png in curves)
    strategy = cfg.get("fed", {}).get("strategy", "")
    n_sites = len(part.get("clients", {})) or len(nodes) or cfg.get("partition", {}).get("clients", "?")
    lede = (f"{esc(family.title[0].upper() + family.title[1:])}, {esc(str(strategy))} over {_plural(int(n_sites), 'site') if str(n_sites).isdigit() else n_sites} on {esc(str(cfg.get('data', {}).get('source', '?')))} "
            f"images. {headline}")
    has_realism = any(r["metric"] == "realism-mean" for r in records)
    sections = [("results", "Results"), ("curves", "Curves"), ("samples", "Samples")]
    if has_realism or (evaluated and fd_metric):
        sections.append(("realism", "Realism"))
    utility = _utility_section(run)
    if utility:
        sections.append(("utility", "Downstream utility"))
    sections += [("metrics", "What the numbers mean"), ("partition", "Partition"), ("config", "Configuration")]
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in sections)
    n_lines = len(config.splitlines())
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedsynth report: {esc(run.name)}</title><style>{CSS}</style></head><body>
<h1>fedsynth run {esc(run.name)}</h1>
<p class=lede>{lede}</p>
{_summary(run, cfg, part, nodes, records, timings, fd_metric)}
<nav>{nav}</nav>
<h2 id=results>Final results</h2>{results}
<h2 id=curves>Curves</h2><div class=curves>{curves_html or "<p>No records to plot yet.</p>"}</div>
<h2 id=samples>Samples</h2>{_samples(run, records, evaluated, flower, conditional, max_grids)}
{_realism_section(run, records, evaluated, flower)}
{utility}
<h2 id=metrics>What the numbers mean</h2>{_explanations(fd_metric, kid_metric, has_realism, family)}
<h2 id=partition>Partition</h2>{_partition(part, nodes)}
<h2 id=config>Configuration</h2>
<details><summary>config.toml ({n_lines} lines): the resolved configuration this run used</summary><pre>{esc(config)}</pre></details>
</body></html>"""
    path = run / "report.html"
    atomic_write_text(path, body)
    return path


def report_so_far(run_dir: Path) -> Path | None:
    """report.html of a stopped run, from what it recorded (None when it recorded nothing, or
    when it cannot be written: a report is a courtesy there, the stop is the news)."""
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    try:
        return build_report(run_dir)
    except (OSError, ValueError, KeyError):
        return None
