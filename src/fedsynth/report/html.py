"""One self-contained HTML report per run (images embedded as base64; no network, no scripts).

Sections: run and extractor, configuration, partition, metric curves (Frechet distance per
client and global, KID, losses, per-site fairness), sample grids per round, final tables.
Every number says which feature extractor produced it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text
from .plots import fd_series
from .rundir import read_metrics


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_file(p: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()


def _curves(records: list[dict[str, Any]]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..registry import is_fd_metric, kid_metric as kid_of
    fd_metric = next((r["metric"] for r in records if is_fd_metric(r["metric"])), None)
    kid_metric = kid_of(fd_metric) if fd_metric else None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), dpi=100)
    panels = [(axes[0, 0], fd_metric, "per client (own data) and global (union)", lambda k: not k.startswith("global on")),
              (axes[0, 1], kid_metric, "KID", lambda k: not k.startswith("global on")),
              (axes[1, 1], fd_metric, "fairness: global model on each site's data", lambda k: k.startswith("global"))]
    for ax, metric, title, keep in panels:
        if metric is None:
            continue
        for name, pts in sorted(fd_series(records, metric).items()):
            if not keep(name):
                continue
            style = dict(color="black", lw=2.2) if name == "global" else dict(lw=1.1)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=2.5, label=name, **style)
        ax.set_title(f"{metric}: {title}", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == fd_metric:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    ax = axes[1, 0]
    for m in ("d-loss", "g-loss"):
        for name, pts in sorted(fd_series(records, m).items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if m == "d-loss" else "--", lw=1, label=f"{m} {name}")
    ax.set_title("local training losses (mean per round)", fontsize=9)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _final_table(records: list[dict[str, Any]]) -> str:
    from ..registry import is_fd_metric, is_kid_metric
    fd = [r for r in records if is_fd_metric(r["metric"]) or is_kid_metric(r["metric"])]
    if not fd:
        return "<p>No evaluation records.</p>"
    last = max(r["round"] for r in fd)
    rows = {}
    for r in fd:
        if r["round"] in (0, last):
            key = (str(r["client"]), str(r.get("real", "")))
            rows.setdefault(key, {})[(r["round"], r["metric"].startswith("kid"))] = (r["value"], r.get("extractor", ""))
    out = ["<table><tr><th>model</th><th>scored on</th><th>Fréchet distance before</th>"
           f"<th>Fréchet distance round {last}</th><th>KID round {last}</th><th>extractor</th></tr>"]
    for (who, real), v in sorted(rows.items(), key=lambda kv: (kv[0][0] == "global", kv[0])):
        f0, f1, k1 = v.get((0, False)), v.get((last, False)), v.get((last, True))
        ext = (f1 or f0 or k1 or (None, ""))[1]
        cell = lambda x, fmt: format(x[0], fmt) if x else "–"  # noqa: E731
        out.append(f"<tr><td>{html.escape(who)}</td><td>{html.escape(real)}</td><td>{cell(f0, '.3f')}</td>"
                   f"<td>{cell(f1, '.3f')}</td><td>{cell(k1, '.4f')}</td><td><code>{html.escape(ext)}</code></td></tr>")
    spread = {r["metric"]: r["value"] for r in records if r["round"] == last and r.get("real") == "sites"}
    out.append("</table>")
    if spread:
        items = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(spread.items()) if not k.startswith("kid"))
        out.append(f"<p><b>Spread across sites</b> (global model on each site's own data, round {last}): {html.escape(items)}</p>")
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:.8em;font-size:.8em;overflow:auto;max-height:24em}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0}.grids img{width:250px;image-rendering:pixelated}
figcaption{font-size:.8em;color:#555}.note{color:#555;font-size:.85em}"""


def build_report(run_dir: str | Path, max_grids: int = 12) -> Path:
    """Write ``RUN_DIR/report.html`` and return its path."""
    run = Path(run_dir)
    records = read_metrics(run)
    config = (run / "config.toml").read_text() if (run / "config.toml").is_file() else ""
    part = json.loads((run / "partition.json").read_text()) if (run / "partition.json").is_file() else {}
    extractors = sorted({r["extractor"] for r in records if r.get("extractor")})
    ext_note = ("Fréchet distances named <code>fd-random</code> use a frozen, seeded, never-trained network: "
                "comparable between fedsynth runs, not with published FIDs." if any("random" in e for e in extractors)
                else "FID uses the standard Inception-v3 weights.")
    parts_html = ""
    if part:
        names = part.get("class_names", [])
        parts_html = ("<table><tr><th>client</th><th>images</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in names)
                      + "</tr>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{v['images']}</td>"
                                          + "".join(f"<td>{c}</td>" for c in v["class_counts"]) + "</tr>"
                                          for k, v in part.get("clients", {}).items()) + "</table>")
        skipped = part.get("data", {}).get("skipped", [])
        if skipped:
            parts_html += f"<p>{len(skipped)} bad file(s) skipped.</p>"
    grids = sorted((run / "samples").glob("round-*.png")) if (run / "samples").is_dir() else []
    if len(grids) > max_grids:
        step = (len(grids) - 1) / (max_grids - 1)
        grids = [grids[round(i * step)] for i in range(max_grids)]
    grids_html = "".join(f'<figure><img src="{_img_file(g)}" alt="{g.stem}"><figcaption>{g.stem}</figcaption></figure>'
                         for g in grids)
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedsynth report: {html.escape(run.name)}</title>
<style>{CSS}</style></head><body>
<h1>fedsynth report: {html.escape(run.name)}</h1>
<p>Feature extractor(s): {", ".join(f"<code>{html.escape(e)}</code>" for e in extractors) or "none"}. <span class="note">{ext_note}</span></p>
<h2>Final results</h2>{_final_table(records)}
<h2>Curves</h2><img src="{_curves(records)}" alt="metric curves" style="max-width:100%">
<h2>Samples (fixed latents)</h2><div class="grids">{grids_html or "<p>No sample grids.</p>"}</div>
<h2>Partition</h2>{parts_html or "<p>No partition summary.</p>"}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
</body></html>"""
    path = run / "report.html"
    atomic_write_text(path, body)
    return path
