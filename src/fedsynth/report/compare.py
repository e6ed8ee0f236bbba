"""Several runs side by side: ``fedsynth compare RUN_DIR...`` and every sweep's ``compare/``.

One self-contained HTML page (``compare.html``, images embedded, no scripts, no network) and one
PNG per figure, written to an output folder::

    compare.html             the page
    compare.csv              the final-metric table (value and ratio to the baseline per metric)
    figures/<metric>.png     the runs' curves of one metric overlaid (one file per feature network)
    bands.csv                settings run with several seeds: the band drawn per round

Runs of one setting with different seeds (``settings``, as ``fedsynth compare`` passes a sweep
variant's ``seed-*`` folders) are drawn as one curve: per round, the mean over the seeds with its
95 % Student-t interval as a shaded band, or where the axis is logarithmic the geometric mean with
the interval of the mean log (:func:`fedsynth.report.plots.seed_band`, the band of a sweep's
``curves.png``). A run that is one seed keeps a plain line; each seed's own curve is on the page
under a collapsed section.

What is drawn for a run and a metric (its *headline series*): the global model's value (on the
union of the sites' data, or the sites' summary for ``*-sites-*`` metrics); for a run with no
global model (the ``local`` baseline), the mean over clients of their own models on the union;
for per-client numbers such as losses, the mean over clients. This is the number
:mod:`fedsynth.sweep` tables too.

Fréchet distances and KIDs from different feature networks are different quantities: runs
whose records name different extractors for one metric are drawn on separate axes, each axis
names its network, and a ratio to the baseline is given only where the baseline used the same
network.

The baseline (the denominator of every ratio) is ``--baseline``; by default the first run whose
``fed.strategy`` is ``centralized`` (all data pooled: the reference a federated run is measured
against), else the first run given.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..config import UserError
from ..registry import is_fd_metric, is_kid_metric
from .plots import draw_band, seed_band
from ..utils import atomic_write_bytes, atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Record = dict[str, Any]
Series = list[tuple[int, float]]


@dataclass
class Run:
    """One run directory as compare reads it."""

    path: Path
    label: str                          # legend and table name (unique among the compared runs)
    records: list[Record]
    config: dict[str, Any] = field(default_factory=dict)
    grid: Path | None = None             # the last samples/round-NNNN.png

    @property
    def strategy(self) -> str:
        return str(self.config.get("fed", {}).get("strategy", "?"))

    def setting(self, section: str, key: str) -> Any:
        if (section, key) == ("model", "family"):  # a config without it predates the families: a GAN
            return self.config.get("model", {}).get("family", "gan")
        return self.config.get(section, {}).get(key, "?")


def load_run(path: str | Path) -> Run:
    """Read a run directory; a :class:`UserError` naming the path if it is not one."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such run directory")
    if not p.is_dir():
        raise UserError(f"{p} is not a run directory (not a folder)")
    m = p / "metrics.jsonl"
    if not m.is_file():
        raise UserError(f"{p} is not a run directory (no metrics.jsonl)")
    records = []
    for i, line in enumerate(m.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{m} line {i} is not valid JSON") from None
        if not isinstance(r, dict) or not {"round", "metric", "value"} <= r.keys() \
                or not isinstance(r["round"], int) or isinstance(r["round"], bool):
            raise UserError(f"{m} line {i} is not a metric record (needs an integer round, a metric and a value)")
        records.append(r)
    if not records:
        raise UserError(f"{m} is empty: the run has recorded nothing yet")
    config: dict[str, Any] = {}
    if (p / "config.toml").is_file():
        try:
            config = tomllib.loads((p / "config.toml").read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{p / 'config.toml'} is not valid TOML: {e}") from None
    grids = sorted((p / "samples").glob("round-*.png")) if (p / "samples").is_dir() else []
    return Run(p, p.name, records, config, grids[-1] if grids else None)


def _unique_labels(runs: list[Run]) -> None:
    """Label each run by its folder name; runs whose names collide get parent folders added."""
    for depth in range(2, 8):
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.label] = counts.get(r.label, 0) + 1
        clash = [r for r in runs if counts[r.label] > 1]
        if not clash:
            return
        for r in clash:
            r.label = "/".join(r.path.resolve().parts[-depth:])


@dataclass
class Setting:
    """Runs of one setting with different seeds, drawn as one curve (a band when there are two
    or more); a run given alone is a setting of one run."""

    label: str
    runs: list[int]                       # indices into the compared runs, in seed order
    seeded: bool = False                  # given as runs over seeds (labelled with its number of seeds)


def group_settings(runs: Sequence[Run], settings: Mapping[str, Sequence[str | Path]] | None) -> list[Setting]:
    """The runs grouped by ``settings`` (name -> run directories), in the order of their first run;
    a run in no setting is a setting of its own, labelled as the run."""
    where: dict[Path, str] = {}
    for name, dirs in (settings or {}).items():
        for d in dirs:
            where[Path(d).resolve()] = name
    out: dict[str, Setting] = {}
    for i, r in enumerate(runs):
        name = where.get(r.path.resolve())
        key = f"\0{i}" if name is None else name      # a lone run never merges with a named setting
        out.setdefault(key, Setting(r.label if name is None else name, [], name is not None)).runs.append(i)
    return list(out.values())


def choose_baseline(runs: Sequence[Run], baseline: str | Path | None = None) -> int:
    """Index of the baseline run: ``baseline`` if given, else the first ``centralized`` run, else 0."""
    if baseline is not None:
        want = Path(baseline).resolve()
        for i, r in enumerate(runs):
            if r.path.resolve() == want:
                return i
        raise UserError(f"--baseline {baseline} is not one of the compared runs")
    return next((i for i, r in enumerate(runs) if r.strategy == "centralized"), 0)


# ------------------------------------------------------------------ series


def _is_global_view(r: Record) -> bool:
    return str(r.get("client")) == "global" and str(r.get("real", "union")) in ("union", "global", "sites")


def headline(records: list[Record], metric: str) -> tuple[Series, str]:
    """The one series compare draws for ``metric`` and what it is (see the module docstring)."""
    recs = [r for r in records if r["metric"] == metric and _is_number(r["value"])]
    glob = [r for r in recs if _is_global_view(r)]
    if glob:
        return sorted((int(r["round"]), float(r["value"])) for r in glob), "global model"
    union = [r for r in recs if str(r.get("real", "")) == "union"]
    pick, what = (union, "mean of local models on the union") if union else (recs, "mean over sites")
    by_round: dict[int, list[float]] = {}
    for r in pick:
        by_round.setdefault(int(r["round"]), []).append(float(r["value"]))
    return [(k, sum(v) / len(v)) for k, v in sorted(by_round.items())], what


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _metric_order(metric: str) -> tuple:
    """FD first, then KID, their site summaries, other scores, losses, bytes."""
    if is_fd_metric(metric):
        rank = 0
    elif is_kid_metric(metric):
        rank = 1
    elif "-sites-" in metric:
        rank = 2 + (metric.startswith(("kid", "kid-")))
    elif metric.endswith("loss"):
        rank = 5
    elif metric.startswith("bytes"):
        rank = 6
    else:
        rank = 4
    return rank, metric


@dataclass
class Panel:
    """One axis: a metric as measured with one feature network, and the runs that have it."""

    metric: str
    extractor: str                          # "" for metrics without a feature network
    series: dict[int, tuple[Series, str]]   # run index -> (series, what it is)

    @property
    def key(self) -> str:
        if not self.extractor:
            return self.metric
        return f"{self.metric}@{self.extractor}"


def panels(runs: Sequence[Run]) -> list[Panel]:
    """Every (metric, feature network) found in the runs, with each run's headline series."""
    found: dict[tuple[str, str], Panel] = {}
    for i, run in enumerate(runs):
        by: dict[tuple[str, str], list[Record]] = {}
        for r in run.records:
            by.setdefault((str(r["metric"]), str(r.get("extractor", ""))), []).append(r)
        for (metric, ext), recs in by.items():
            ser, what = headline(recs, metric)
            if ser:
                found.setdefault((metric, ext), Panel(metric, ext, {})).series[i] = (ser, what)
    return [found[k] for k in sorted(found, key=lambda k: (_metric_order(k[0]), k[1]))]


def extractor_conflicts(ps: list[Panel], runs: Sequence[Run]) -> list[str]:
    """One sentence per kind of distance (Fréchet, KID) that the runs measured with different
    feature networks, so that some runs share no axis."""
    out = []
    for kind, test in (("Fréchet distances", is_fd_metric), ("KIDs", is_kid_metric)):
        group = [p for p in ps if test(p.metric)]
        having = set().union(*(p.series for p in group)) if group else set()
        if len(group) < 2 or all(set(p.series) == having for p in group):
            continue
        parts = "; ".join(f"{', '.join(runs[i].label for i in sorted(p.series))}: {p.metric} with "
                          f"{p.extractor or 'an unnamed network'}" for p in group)
        out.append(f"The runs' {kind} come from different feature networks ({parts}). Distances from "
                   f"different networks are not comparable: they are drawn on separate axes, and a ratio is "
                   f"given only against a baseline measured with the same network.")
    return out


# ------------------------------------------------------------------ figures

_FILE_CHARS = re.compile(r"[^A-Za-z0-9.=-]+")


def _figure_name(p: Panel, taken: set[str]) -> str:
    base = _FILE_CHARS.sub("-", p.metric).strip("-") or "metric"
    if p.extractor:
        base += "_" + _FILE_CHARS.sub("-", p.extractor.split("(")[0]).strip("-")
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name + ".png"


def network(extractor: str) -> str:
    """The feature network's short name: ``random-conv-v1(seed=0,...)`` -> ``random-conv-v1``."""
    return extractor.split("(")[0]


def _ylabel(p: Panel) -> str:
    """The y label names the metric and, for a distance, the feature network that measured it."""
    if is_fd_metric(p.metric):
        what = "FID" if p.metric == "fid" else "Fréchet distance"
    elif is_kid_metric(p.metric):
        what = "KID"
    else:
        what = p.metric
    if p.extractor:
        what += f"\n({network(p.extractor)} features)"
    return what


def _colors(n: int, base: int) -> list[Any]:
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    out, k = [], 0
    for i in range(n):
        if i == base:
            out.append("black")
        else:
            out.append(cmap(k % cmap.N))
            k += 1
    return out


def log_axis(p: Panel) -> bool:
    """Distances spanning a decade or more go on a log axis (as in report.html); a narrow range
    stays linear."""
    values = [y for ser, _ in p.series.values() for _, y in ser]
    return (p.metric == "fid" or p.metric.startswith(("fd-", "fid-"))) and bool(values) and min(values) > 0 \
        and max(values) / min(values) >= 10


@dataclass
class Band:
    """One setting's curve over its seeds in one panel (:func:`fedsynth.report.plots.seed_band`)."""

    setting: Setting
    seeds: list[int]                      # the runs that have the panel's metric
    geometric: bool                       # geometric mean and interval of the mean log (log axis)
    points: list                          # [(round, Interval)]

    @property
    def statistic(self) -> str:
        return "geometric mean" if self.geometric else "mean"


def panel_bands(p: Panel, settings: Sequence[Setting]) -> list[Band]:
    """The band of every setting with two or more seeds in the panel: per round that all of them
    evaluated, their mean with its 95 % interval, geometric where the panel's axis is logarithmic."""
    geometric = log_axis(p)
    out = []
    for s in settings:
        seeds = [i for i in s.runs if i in p.series]
        if len(seeds) >= 2:
            out.append(Band(s, seeds, geometric, seed_band([p.series[i][0] for i in seeds], geometric)))
    return out


def band_caption(p: Panel, bands: Sequence[Band], named: bool = True) -> str:
    """What a panel's bands are, naming the metric and its feature network (unless not ``named``):
    ``fd-random (random-conv-v1 features): geometric mean over 3 seeds, 95 % interval per round``."""
    if not bands:
        return ""
    ns = sorted({len(b.seeds) for b in bands})
    seeds = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    what = f"{bands[0].statistic} over {seeds} seeds, 95 % interval per round (band)"
    return f"{p.metric}{f' ({network(p.extractor)} features)' if p.extractor else ''}: {what}" if named else what


def plot_panel(p: Panel, runs: Sequence[Run], base: int, settings: Sequence[Setting] | None = None,
               bands: Sequence[Band] = ()) -> bytes:
    """One PNG: the headline series of one metric; the baseline thick and black. Each setting of
    two or more seeds is one curve with its band (``bands``: :func:`panel_bands` of ``settings``);
    every other run a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    settings = list(settings) if settings is not None else [Setting(r.label, [i]) for i, r in enumerate(runs)]
    drawn = [s for s in settings if any(i in p.series for i in s.runs)]
    base_at = next((k for k, s in enumerate(settings) if base in s.runs), -1)
    colors = _colors(len(settings), base_at)
    bands = {id(b.setting): b for b in bands}
    ncol = 1 if len(drawn) <= 2 else 2
    legend_rows = math.ceil(len(drawn) / ncol)
    fig, ax = plt.subplots(figsize=(6.4, 3.5 + 0.2 * legend_rows), dpi=100)
    for k in sorted(range(len(settings)), key=lambda k: (k != base_at, k)):
        s, is_base = settings[k], k == base_at
        seeds = [i for i in s.runs if i in p.series]
        if not seeds:
            continue
        what = p.series[seeds[0]][1]
        label = s.label + (" (baseline)" if is_base else "") + (f" [{what}]" if what != "global model" else "")
        style = dict(marker="o", ms=3, lw=2.4 if is_base else 1.4, zorder=5 if is_base else 3)
        if id(s) in bands:
            draw_band(ax, bands[id(s)].points, colors[k], f"{label} ({len(seeds)} seeds)", **style)
        else:
            ser = p.series[seeds[0]][0]
            label += " (1 seed)" if s.seeded else ""
            ax.plot([x for x, _ in ser], [y for _, y in ser], color=colors[k], label=label, **style)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_ylabel(p), fontsize=9)
    if log_axis(p):
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    title = "\n".join(textwrap.wrap(p.metric + (f"   features: {p.extractor}" if p.extractor else ""), 80))
    if bands:
        title += "\n" + band_caption(p, list(bands.values()), named=False)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------ the table


def final_values(p: Panel) -> dict[int, tuple[int, float]]:
    """Each run's last (round, value) of the panel's headline series."""
    return {i: ser[-1] for i, (ser, _) in p.series.items() if ser}


def table_rows(runs: Sequence[Run], ps: list[Panel], base: int) -> list[dict[str, Any]]:
    """One row per run: its final value of every panel and the ratio to the baseline's."""
    rows = []
    for i, run in enumerate(runs):
        row: dict[str, Any] = {"run": run.label, "path": str(run.path), "strategy": run.strategy,
                               "baseline": i == base}
        for p in ps:
            fin = final_values(p)
            v = fin.get(i)
            b = fin.get(base)
            row[p.key] = v[1] if v else float("nan")
            row[f"{p.key} round"] = v[0] if v else ""
            row[f"{p.key} / baseline"] = v[1] / b[1] if v and b and b[1] != 0 else float("nan")
        rows.append(row)
    return rows


def _fmt(v: float) -> str:
    if not _is_number(v):
        return "–"
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4f}" if a < 1 else f"{v:.3f}" if a < 100 else f"{v:.1f}"


def _fmt_ratio(x: float) -> str:
    return f"{x:.3f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.3g}"


def _table_html(runs: Sequence[Run], ps: list[Panel], rows: list[dict[str, Any]], base: int) -> str:
    def name(metric: str) -> str:  # fd-random-sites-worst -> fd-random / (sites worst)
        head, _, tail = metric.partition("-sites-")
        return html.escape(head) + (f"<br>(sites {html.escape(tail)})" if tail else "")
    head = "".join(f'<th title="{html.escape(p.extractor)}">{name(p.metric)}<br>'
                   f'<span class=note>{html.escape(network(p.extractor))}</span></th>' for p in ps)
    out = [f"<table><tr><th>run</th><th>strategy</th>{head}</tr>"]
    for i, row in enumerate(rows):
        cells = []
        for p in ps:
            v, ratio, rnd = row[p.key], row[f"{p.key} / baseline"], row[f"{p.key} round"]
            if not _is_number(v):
                cells.append("<td>–</td>")
                continue
            tip = f' title="round {rnd}"'
            r = f" <span class=ratio>({_fmt_ratio(ratio)}×)</span>" if i != base and _is_number(ratio) else ""
            cells.append(f"<td{tip}>{_fmt(v)}{r}</td>")
        name = html.escape(row["run"]) + (" <b>(baseline)</b>" if i == base else "")
        out.append(f"<tr><td>{name}</td><td>{html.escape(row['strategy'])}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _write_bands(drawn_bands: Sequence[tuple[Panel, Sequence[Band]]], runs: Sequence[Run], path: Path) -> bool:
    """``bands.csv``: every band drawn (per panel, :func:`panel_bands`), one line per setting,
    metric and round (mean, interval low and high, the number of seeds and their runs); False,
    and no file, where none is drawn."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "metric", "extractor", "statistic", "seeds", "runs", "round", "mean", "low", "high"])
    drawn = False
    for p, bands in drawn_bands:
        for b in bands:
            for rnd, iv in b.points:
                drawn = True
                w.writerow([b.setting.label, p.metric, p.extractor, b.statistic, len(b.seeds),
                            ";".join(runs[i].label for i in b.seeds), rnd, repr(iv.mean), repr(iv.low), repr(iv.high)])
    if drawn:
        atomic_write_text(path, buf.getvalue())
    elif path.exists():
        path.unlink()  # a stale one from an earlier compare into the same folder
    return drawn


def _write_csv(runs: Sequence[Run], ps: list[Panel], base: int, path: Path) -> None:
    """The table in long form: one line per run and metric (metric, extractor, round, value, ratio)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "path", "strategy", "baseline", "metric", "extractor", "series", "round", "value",
                "ratio_to_baseline"])
    for p in ps:
        fin = final_values(p)
        b = fin.get(base)
        for i, (rnd, v) in sorted(fin.items()):
            ratio = v / b[1] if b and b[1] != 0 else float("nan")
            w.writerow([runs[i].label, str(runs[i].path), runs[i].strategy, i == base, p.metric, p.extractor,
                        p.series[i][1], rnd, repr(v), repr(ratio)])
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------ the page

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.82em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}th{white-space:nowrap}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}.wide{overflow-x:auto}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}.figs img{width:100%}
.grids{display:flex;flex-wrap:wrap;gap:14px}.grids figure{margin:0}.grids img{width:260px;image-rendering:pixelated}
figcaption{font-size:.8em;color:#555;max-width:260px;overflow-wrap:anywhere}figcaption.band{max-width:none}.note{color:#555;font-size:.85em;font-weight:normal}
.ratio{color:#555}.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _runs_table(runs: Sequence[Run], base: int) -> str:
    cols = [("model", "model", "family"), ("strategy", "fed", "strategy"), ("data", "data", "source"), ("px", "data", "image-size"),
            ("clients", "partition", "clients"), ("split", "partition", "scheme"), ("rounds", "fed", "rounds"),
            ("local epochs", "fed", "local-epochs"), ("seed", "run", "seed")]
    out = ["<table><tr><th>run</th>" + "".join(f"<th>{c}</th>" for c, _, _ in cols) + "<th>folder</th></tr>"]
    for i, r in enumerate(runs):
        name = html.escape(r.label) + (" <b>(baseline)</b>" if i == base else "")
        out.append(f"<tr><td>{name}</td>" + "".join(f"<td>{html.escape(str(r.setting(s, k)))}</td>" for _, s, k in cols)
                   + f"<td><code>{html.escape(str(r.path))}</code></td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _data_differs(runs: Sequence[Run]) -> str:
    keys = [("data", "source"), ("data", "image-size"), ("data", "path")]
    differ = [f"{s}.{k}" for s, k in keys if len({str(r.setting(s, k)) for r in runs}) > 1]
    if not differ:
        return ""
    return (f"The runs differ in {', '.join(differ)}: their distances are measured against different real "
            f"images, so compare them with care.")


def build_compare(run_dirs: Sequence[str | Path], out: str | Path, baseline: str | Path | None = None,
                  title: str = "", seeds_html: str = "", warn: Callable[[str], None] | None = None,
                  settings: Mapping[str, Sequence[str | Path]] | None = None) -> Path:
    """Write ``out/compare.html`` (and ``compare.csv``, ``figures/*.png``, ``bands.csv`` where a
    band is drawn); return the page's path.

    Parameters
    ----------
    run_dirs : paths
        Run directories (each with a non-empty ``metrics.jsonl``), in the order to show them.
    out : path
        Output folder (created; files already there are replaced).
    baseline : path, optional
        The run every ratio divides by; added in front if it is not among ``run_dirs``. Default:
        the first ``centralized`` run, else the first run.
    seeds_html : str, optional
        A section shown first: the settings compared over seeds (means, intervals, paired
        ratios; written by ``fedsynth compare`` for folders of seeded runs).
    warn : callable, optional
        Gets each caveat the page shows above its tables (runs on different data, distances from
        different feature networks, different model families), e.g. to print it too.
    settings : mapping, optional
        Runs of one setting with different seeds: name -> run directories (among ``run_dirs``).
        Each figure draws one curve per setting, the mean over its seeds (the geometric mean on a
        log axis) with its 95 % interval per round as a band; runs in no setting keep a line.
    """
    if not run_dirs:
        raise UserError("compare needs at least one run directory")
    paths = [Path(p) for p in run_dirs]
    if baseline is not None and Path(baseline).resolve() not in {p.resolve() for p in paths}:
        paths.insert(0, Path(baseline))
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise UserError(f"{p} is given twice")
        seen[p.resolve()] = p
    runs = [load_run(p) for p in paths]
    _unique_labels(runs)
    base = choose_baseline(runs, baseline)
    out = Path(out)
    ps = panels(runs)
    groups = group_settings(runs, settings)
    for g in groups if settings else ():  # a seed's run is named within its setting: fedavg/seed-1
        for i in g.runs if g.seeded else ():
            runs[i].label = g.label if runs[i].path.name == g.label else f"{g.label}/{runs[i].path.name}"
    banded = any(len(g.runs) > 1 for g in groups)
    taken: set[str] = set()
    figs = []
    alone = len(runs) == 1  # the baseline alone: nothing to overlay or divide by
    drawn_bands = []
    for p in ps if not alone else ():
        bands = panel_bands(p, groups)
        png = plot_panel(p, runs, base, groups, bands)
        name = _figure_name(p, taken)
        atomic_write_bytes(out / "figures" / name, png)
        figs.append((p, name, png, band_caption(p, bands)))
        drawn_bands.append((p, bands))
    _write_bands(drawn_bands, runs, out / "bands.csv")
    rows = table_rows(runs, ps, base)
    _write_csv(runs, ps, base, out / "compare.csv")

    warnings = extractor_conflicts(ps, runs)
    if alone:
        warnings.append(f"Only one run ({runs[0].label}), so it is its own baseline: no curves are overlaid and no "
                        f"ratios given (its curves are in {runs[0].path / 'report.html'}); give two or more runs.")
    if (d := _data_differs(runs)):
        warnings.append(d)
    families = sorted({str(r.setting("model", "family")) for r in runs})
    if len(families) > 1:
        warnings.append(f"The runs train different model families ({', '.join(families)}): compare their distances "
                        f"on the same feature network and data only.")
    for w in warnings if warn is not None else ():
        warn(w)
    warn_html = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)
    why = ("chosen with --baseline" if baseline is not None else
           "the centralized run (all data pooled)" if runs[base].strategy == "centralized" else
           "the first run given (no centralized run among them)")
    figs_html = "".join(f'<figure style="margin:0"><img src="{_data_uri(png)}" alt="{html.escape(p.metric)} per round">'
                        + (f'<figcaption class="band">{html.escape(cap)}; a run of one seed: a line. The numbers: '
                           f'<code>bands.csv</code>.</figcaption>' if cap else "") + '</figure>'
                        for p, _, png, cap in figs)
    per_seed = band_note = ""
    if banded and figs:  # each seed's own curve, out of the way
        per_seed = ('<details><summary>Each seed\'s curve</summary><div class="figs">' + "".join(
            f'<figure style="margin:0"><img src="{_data_uri(plot_panel(p, runs, base))}" '
            f'alt="{html.escape(p.metric)} per round, each seed"></figure>' for p, _, _, _ in figs) + "</div></details>")
        band_note = ('<p class="note">Runs of one setting with different seeds are one curve: per round the mean over '
                     'the seeds, shaded: its 95 % Student-t interval; on a log axis the geometric mean and the '
                     'interval of the mean log. A run of one seed is a line.</p>')
    grids_html = "".join(
        f'<figure><img src="{_data_uri(r.grid.read_bytes())}" alt="samples of {html.escape(r.label)}">'
        f'<figcaption>{html.escape(r.label)}{" (baseline)" if i == base else ""}: {html.escape(r.grid.stem)}</figcaption></figure>'
        if r.grid else f"<figure><figcaption>{html.escape(r.label)}: no sample grids</figcaption></figure>"
        for i, r in enumerate(runs))
    title = title or (f"{len(groups)} settings ({len(runs)} runs) compared" if banded else f"{len(runs)} runs compared")
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedsynth compare: {html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>fedsynth compare: {html.escape(title)}</h1>
<p>Baseline: <b>{html.escape(runs[base].label)}</b> ({why}). Ratios are a run's final value divided by the
baseline's final value of the same metric and feature network; for Fréchet distance and KID lower is better,
so a ratio below 1 beats the baseline. <span class="note">Drawn per run: the global model (on the union of the
sites' data); for runs without one (local), the mean of the hospitals' own models on the union; losses and other
per-client numbers: the mean over clients.</span></p>
{warn_html}
{seeds_html}
<h2>Runs</h2><div class="wide">{_runs_table(runs, base)}</div>
<h2>Final metrics</h2><p class="note">Each run's last evaluated round (hover a cell for it); under each metric, the
feature network that measured it; in brackets the ratio to the baseline, missing where the baseline has no
value of that metric (a centralized run has no per-site scores) or measured it with another network. Also in
<code>compare.csv</code>.</p><div class="wide">{_table_html(runs, ps, rows, base)}</div>
<h2>Curves</h2>{band_note}<div class="figs">{figs_html or ("<p>Not drawn: one run.</p>" if alone else "<p>No metric curves.</p>")}</div>{per_seed}
<h2>Samples (each run's last grid, fixed latents)</h2><div class="grids">{grids_html}</div>
</body></html>"""
    page = out / "compare.html"
    atomic_write_text(page, body)
    return page
