"""Sweeps: many runs that differ in a few keys, and one table comparing them.

Each variant is a name and a list of ``--set`` overrides on top of a base config. Runs go to
``OUT/<variant>/`` (normal run directories); a variant whose run finished is not run again,
so an interrupted sweep resumes where it stopped. The results table (``results.csv``,
``results.md``) holds, per variant, the final global Frechet distance (for ``local``, where no
global model exists, the mean over clients of each hospital's own model on the union), its
ratio to the ``centralized`` variant if present, and the mean per-client distance.
``compare/compare.html`` shows the variants' curves, final metrics and last sample grids side by
side (:mod:`fedsynth.report.compare`, the page ``fedsynth compare`` writes).
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
from pathlib import Path
from typing import Any, Callable

from .config import UserError, load_config
from .registry import is_fd_metric
from .report import read_metrics
from .utils import atomic_write_text

PRESETS: dict[str, dict[str, Any]] = {
    # issue 4: strategies on phantom-histo with a label-skew split over 4 clients
    "strategies": {
        "base": ["data.source=phantom-histo", "data.image-size=32", "data.num-images=2000",
                 "partition.clients=4", "partition.scheme=label-skew", "partition.majority=0.9",
                 "fed.rounds=15", "fed.local-epochs=2", "eval.every=5"],
        "variants": [
            ("fedavg", ["fed.strategy=fedavg"]),
            ("fedprox", ["fed.strategy=fedprox", "fed.mu=0.01"]),
            ("fedbn", ["fed.strategy=fedbn"]),
            ("share-G", ["fed.strategy=fedavg", 'fed.share=["G"]']),
            ("fedadam", ["fed.strategy=fedadam"]),
            ("local", ["fed.strategy=local"]),
            ("centralized", ["fed.strategy=centralized"]),
        ],
    },
}


def _study_variants() -> list[tuple[str, list[str]]]:
    """Modality x aggregation period (same total epochs), plus local and centralized references."""
    out = []
    for mod in ("xray", "ct", "histo"):
        for period in (1, 3, 5):
            out.append((f"{mod}-period{period}", [f"data.source=phantom-{mod}", f"fed.local-epochs={period}",
                                                  f"fed.rounds={15 // period}", f"eval.every={1}"]))
        for base in ("local", "centralized"):
            out.append((f"{mod}-{base}", [f"data.source=phantom-{mod}", f"fed.strategy={base}",
                                          "fed.local-epochs=1", "fed.rounds=15", "eval.every=3"]))
    return out


# issue 8: the studies' grids, scaled to this 2-core machine. Each client needs a few hundred
# local steps before a DCGAN escapes its discriminator's early dominance, so data and epochs are
# chosen for >= 300 steps per client.
# FedAvg-DCGAN study: 32 px, 2,000 images over 2 clients, 15 local epochs in total
PRESETS["study"] = {
    "base": ["data.image-size=32", "data.num-images=2000", "partition.clients=2", "eval.num-samples=500",
             "eval.per-site=false"],
    "variants": _study_variants(),
}
# issue 14: heterogeneous hospitals on phantom-histo (4 clients, label skew): one shared generator
# with every site's discriminator alike, with two sites on a narrower group-normalised one, and with
# a server that trains on its own (differently seeded) phantom after each aggregation
PRESETS["hetero"] = {
    "base": ["data.source=phantom-histo", "data.image-size=32", "data.num-images=2000", "partition.clients=4",
             "partition.scheme=label-skew", 'fed.share=["G"]', "fed.rounds=15", "fed.local-epochs=2",
             "eval.every=5"],
    "variants": [
        ("same-D", []),
        ("own-D", ["sites.2.model.ndf=8", "sites.2.model.d-norm=group", "sites.2.train.batch-size=16",
                   "sites.3.model.ndf=8", "sites.3.model.d-norm=group", "sites.3.train.batch-size=16"]),
        ("server-data", ["fed.server-data=phantom-histo", "fed.server-steps=30", "fed.server-images=500"]),
    ],
}
PRESETS["clients"] = {
    "base": ["data.source=phantom-ct", "data.image-size=32", "data.num-images=3000", "partition.scheme=by-label",
             "fed.rounds=12", "fed.local-epochs=3", "eval.every=4", "eval.num-samples=500"],
    "variants": [(f"clients-{k}", [f"partition.clients={k}"]) for k in (3, 5, 7, 10)],
}
PRESETS["noniid"] = {
    "base": ["data.source=phantom-xray", "data.image-size=32", "data.num-images=1200", "partition.clients=6",
             "partition.scheme=label-skew", "fed.rounds=12", "fed.local-epochs=5", "eval.every=4",
             "eval.num-samples=500"],
    "variants": [(f"majority-{int(m * 100)}", [f"partition.majority={m}"]) for m in (0.6, 0.7, 0.8, 0.9)],
}

# issue 18: the server learning rate of FedAdam/FedYogi/FedAvgM, under the `strategies` preset's
# label skew, scaled to ~15 CPU-minutes on one core: 300 images and 250 local steps per client,
# evaluation only before training and at the end.
PRESETS["server-lr"] = {
    "base": ["data.source=phantom-histo", "data.image-size=32", "data.num-images=1200", "partition.clients=4",
             "partition.scheme=label-skew", "partition.majority=0.9", "fed.rounds=10", "fed.local-steps=25",
             "eval.every=0", "eval.num-samples=300", "eval.per-site=false"],
    "variants": [("fedavg", ["fed.strategy=fedavg"])]
    + [(f"{s}-lr{lr}", [f"fed.strategy={s}", f"fed.server-lr={lr}", "fed.server-bias-correction=true"])
       for s in ("fedadam", "fedyogi") for lr in ("1e-3", "1e-2", "3e-2", "1e-1")]
    + [("fedadam-lr1e-2-nobc", ["fed.strategy=fedadam", "fed.server-lr=1e-2", "fed.server-bias-correction=false"])]
    + [(f"fedavgm-lr{lr}", ["fed.strategy=fedavgm", f"fed.server-lr={lr}", "fed.server-momentum=0.9"])
       for lr in ("0.1", "0.3", "1.0")],
}

# issue 15: the two families side by side on the built-in chest phantoms at 32 px: GAN and diffusion,
# FedAvg over an IID and a label-skew split, and each family's centralized reference (all data pooled
# in one client, so the split does not change it: one run per family). Variant names group as
# "<family>-...": each ratio is to its own family's centralized run. The same data, rounds and local
# epochs for both families; the diffusion model samples with its defaults (DDIM, 20 steps).
PRESETS["gan-vs-diffusion"] = {
    "base": ["data.source=phantom-xray", "data.image-size=32", "data.num-images=1000", "partition.clients=2",
             "partition.majority=0.9", "fed.rounds=6", "eval.every=3", "eval.num-samples=250",
             "eval.per-site=false"],
    "variants": [(f"{fam}-{name}", [f"model.family={fam}", *sets])
                 for fam in ("gan", "diffusion")
                 for name, sets in (("fedavg-iid", ["fed.strategy=fedavg", "partition.scheme=iid"]),
                                    ("fedavg-label-skew", ["fed.strategy=fedavg", "partition.scheme=label-skew"]),
                                    ("centralized", ["fed.strategy=centralized"]))],
}


def centralized_reference(name: str, names: list[str]) -> str | None:
    """The variant whose final distance ``name``'s is divided by: ``centralized`` if the sweep has
    one, else the ``<group>-centralized`` variant whose group prefixes ``name`` (the
    ``gan-vs-diffusion`` preset: ``gan-fedavg-iid`` -> ``gan-centralized``)."""
    if "centralized" in names:
        return "centralized"
    groups = [n[: -len("centralized")] for n in names if n.endswith("-centralized")]
    match = max((g for g in groups if name.startswith(g)), key=len, default=None)
    return None if match is None else match + "centralized"


def study_figure(out: Path) -> Path | None:
    """The FedAvg-DCGAN study's figure: rows = modality, columns = aggregation period; per-client
    and global Frechet distance per epoch, with the local-only (dashed) and centralized (dotted)
    global references."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .report import fd_series
    mods, periods = ("xray", "ct", "histo"), (1, 3, 5)
    if not (out / "xray-period1" / "metrics.jsonl").is_file():
        return None
    fig, axes = plt.subplots(3, 3, figsize=(11, 9), dpi=100, sharex=True, squeeze=False)
    for i, mod in enumerate(mods):
        refs = {}
        for base in ("local", "centralized"):
            p = out / f"{mod}-{base}"
            if (p / "metrics.jsonl").is_file():
                ser = fd_series(read_metrics(p))
                refs[base] = ser.get("global") or [(r, sum(v) / len(v)) for r, v in _mean_by_round(
                    [s for k, s in ser.items() if k.endswith("on union")]).items()]
        for j, period in enumerate(periods):
            ax = axes[i, j]
            p = out / f"{mod}-period{period}"
            if not (p / "metrics.jsonl").is_file():
                continue
            for name, pts in sorted(fd_series(read_metrics(p)).items()):
                if name.startswith("global on"):
                    continue
                xs = [r * period for r, _ in pts]  # x axis in local epochs
                ax.plot(xs, [v for _, v in pts], "-o" if name == "global" else "-", ms=2,
                        color="black" if name == "global" else None, lw=2 if name == "global" else 1,
                        label="global" if name == "global" else f"client {name}")
            for base, style in (("local", "--"), ("centralized", ":")):
                if refs.get(base):
                    ax.plot([r for r, _ in refs[base]], [v for _, v in refs[base]], style, color="gray", lw=1, label=base)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"aggregation every {period} epoch(s)", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"phantom-{mod}\nFréchet distance", fontsize=9)
            if i == 2:
                ax.set_xlabel("local epochs")
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "study-grid.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _mean_by_round(series: list[list[tuple[int, float]]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for s in series:
        for r, v in s:
            out.setdefault(r, []).append(v)
    return dict(sorted(out.items()))


def _split_values(text: str) -> list[str]:
    """``a,b,[1, 2],"x,y"`` -> ['a', 'b', '[1, 2]', '"x,y"'] (commas inside [] or quotes kept)."""
    out, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def grid_variants(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["fed.strategy=fedavg,fedprox", "fed.local-epochs=1,3"]`` -> the cartesian product."""
    axes = []
    for g in grid:
        if "=" not in g:
            raise UserError(f"--grid expects key=v1,v2,..., got {g!r}")
        key, vals = g.split("=", 1)
        axes.append([(key.strip(), v) for v in _split_values(vals)])
    out = []
    for combo in itertools.product(*axes):
        name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in combo)
        name = "".join(c if c.isalnum() or c in "-_." else "" for c in name)
        out.append((name, [f"{k}={v}" for k, v in combo]))
    return out


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'share-G: fed.strategy=fedavg; fed.share=["G"]'`` -> (name, overrides)."""
    if ":" not in text:
        raise UserError(f"--variant expects 'name: key=value; key=value', got {text!r}")
    name, rest = text.split(":", 1)
    return name.strip(), [s.strip() for s in rest.split(";") if s.strip()]


def _finished(run: Path, rounds: int) -> bool:
    try:
        return any(r["round"] == rounds and is_fd_metric(r["metric"]) for r in read_metrics(run))
    except (OSError, ValueError):
        return False


def summarise(run: Path) -> dict[str, Any]:
    recs = read_metrics(run)
    fd = [r for r in recs if is_fd_metric(r["metric"])]
    last = max(r["round"] for r in fd)
    at_last = [r for r in fd if r["round"] == last]
    glob = [r["value"] for r in at_last if r["client"] == "global" and r.get("real") == "union"]
    on_union = [r["value"] for r in at_last if r["client"] != "global" and r.get("real") == "union"]
    own = [r["value"] for r in at_last if r["client"] != "global" and r.get("real") == r["client"]]
    g = glob[0] if glob else (sum(on_union) / len(on_union) if on_union else float("nan"))
    wall, evals = run_seconds(run)
    return {"round": last, "metric": fd[0]["metric"], "extractor": fd[0]["extractor"],
            "global_fd": g, "global_is": "global model" if glob else "mean of local models on the union",
            "client_fd_mean": sum(own) / len(own) if own else float("nan"), "wall_s": wall, "eval_s": evals}


def run_seconds(run: Path) -> tuple[float, float]:
    """The run's wall-clock and evaluation seconds over its rounds (``timings.jsonl``'s server
    records; NaN where the run has none)."""
    import json
    path = run / "timings.jsonl"
    if not path.is_file():
        return float("nan"), float("nan")
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    server = {r["round"]: r for r in rows if r.get("client") == "server"}  # a resumed round counts once
    if not server:
        return float("nan"), float("nan")
    return (sum(r.get("wall_s", 0.0) for r in server.values()), sum(r.get("eval_s", 0.0) for r in server.values()))


class SweepProgress:
    """What a sweep reports while it runs (the default reports nothing; the CLI draws bars).

    ``planned`` comes first with the variants to run and those already finished (reused);
    then, per variant run, ``started``, ``rounds`` (parallel runs only: polled from the run
    directory's checkpoints; a run in this process reports its own rounds) and ``finished``."""

    def planned(self, todo: list[tuple[str, int]], reused: list[str]) -> None: ...
    def started(self, name: str) -> None: ...
    def rounds(self, name: str, done: int, total: int) -> None: ...
    def finished(self, name: str, ok: bool, seconds: float) -> None: ...


def rounds_done(run: Path) -> int:
    """The newest checkpointed round of a run directory (0 if none yet)."""
    d = run / "checkpoints"
    rounds = [int(p.stem.split("-")[1]) for p in d.glob("round-*.pt") if p.stem.split("-")[1].isdigit()] \
        if d.is_dir() else []
    return max(rounds, default=0)


def _run_parallel(todo: list[tuple[str, Any]], out: Path, jobs: int, progress: SweepProgress) -> None:
    """Each variant in its own ``fedsynth run`` process, at most ``jobs`` at a time, with the
    cores shared out (train.threads) so they do not oversubscribe."""
    import dataclasses
    import os
    import subprocess
    import sys
    import time
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: list[tuple[str, subprocess.Popen, Any, float]] = []
    queue = list(todo)
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            name, cfg = queue.pop(0)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
            toml = out / f".{name}.toml"
            atomic_write_text(toml, cfg.to_toml())
            progress.started(name)
            log = open(out / f".{name}.log", "w")
            running.append((name, subprocess.Popen([sys.executable, "-m", "fedsynth", "run", "--config", str(toml),
                                                    "--out", str(out / name)], stdout=log, stderr=subprocess.STDOUT),
                            cfg, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            name, proc, cfg, t0 = item
            progress.rounds(name, rounds_done(out / name), cfg.fed.rounds)
            if proc.poll() is not None:
                running.remove(item)
                progress.finished(name, proc.returncode == 0, time.perf_counter() - t0)
                if proc.returncode != 0:
                    failed.append(name)
    if failed:
        raise UserError(f"variant(s) failed: {', '.join(failed)} (see {out}/.<name>.log)")


def run_sweep(base_config: str | None, base_sets: list[str], variants: list[tuple[str, list[str]]],
              out: Path, run_one: Callable[[Any, Path], None], jobs: int = 1,
              progress: SweepProgress | None = None) -> list[dict[str, Any]]:
    """Run (or reuse) every variant, ``jobs`` at a time; return one row per variant."""
    import time
    progress = progress or SweepProgress()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise UserError(f"variant names must be unique: {names}")
    cfgs = [(n, load_config(base_config, list(base_sets) + o), o) for n, o in variants]  # validate all first
    todo = []
    for name, cfg, _ in cfgs:
        d = out / name
        if not _finished(d, cfg.fed.rounds):
            if d.exists():
                from .report.rundir import RunDirBusy, lock_run_dir
                try:  # never delete a directory a live run (another sweep) is writing
                    lock_run_dir(d)
                except RunDirBusy as e:
                    raise UserError(f"variant {name}: {d} is in use by a live run ({e.holder}); "
                                    f"wait for it or use another --out") from None
                shutil.rmtree(d)
            todo.append((name, cfg))
    progress.planned([(n, c.fed.rounds) for n, c in todo], [n for n, _, _ in cfgs if n not in dict(todo)])
    if jobs > 1:
        _run_parallel(todo, out, jobs, progress)
    else:
        for name, cfg in todo:
            progress.started(name)
            t0 = time.perf_counter()
            try:
                run_one(cfg, out / name)
            except BaseException:
                progress.finished(name, False, time.perf_counter() - t0)
                raise
            progress.finished(name, True, time.perf_counter() - t0)
    rows = []
    for name, cfg, overrides in cfgs:
        rows.append({"variant": name, "overrides": "; ".join(overrides), **summarise(out / name)})
    fd = {r["variant"]: r["global_fd"] for r in rows}
    for r in rows:
        ref = fd.get(centralized_reference(r["variant"], list(fd)) or "")
        r["ratio_to_centralized"] = r["global_fd"] / ref if ref else float("nan")
    write_tables(rows, out)
    results_figure(rows, out)
    study_figure(out)
    from .report.compare import build_compare  # compare/compare.html: the variants side by side
    build_compare([out / name for name, _, _ in cfgs], out / "compare", title=f"sweep {out.name}")
    return rows


def results_figure(rows: list[dict[str, Any]], out: Path) -> Path:
    """Final global Frechet distance per variant (log scale), the centralized reference dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 1.5), 3.6), dpi=110)
    vals = [r["global_fd"] for r in rows]
    ax.bar(range(len(rows)), vals, color=["0.55" if r["variant"].endswith("centralized") else "tab:blue" for r in rows])
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(f"final global {rows[0]['metric']}", fontsize=9)
    ref = next((r["global_fd"] for r in rows if r["variant"] == "centralized"), None)
    if ref:
        ax.axhline(ref, ls="--", color="0.4", lw=1)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{out.name}: round {rows[0]['round']}", fontsize=9)
    fig.tight_layout()
    path = out / "results.png"
    fig.savefig(path)
    plt.close(fig)
    return path


MISSING = "—"  # a number that does not exist (e.g. no centralized reference): never "nan"


def _num(v: float, digits: int) -> str:
    return MISSING if v != v else f"{v:.{digits}f}"


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows([{k: "" if isinstance(v, float) and v != v else v for k, v in r.items()} for r in rows])  # NaN: empty
    atomic_write_text(out / "results.csv", buf.getvalue())
    metric = rows[0]["metric"]
    lines = [f"| variant | final global {metric} | ratio to centralized | mean client {metric} (own data) | global is "
             "| wall s | eval s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {_num(r['global_fd'], 3)} | {_num(r['ratio_to_centralized'], 2)} | "
                     f"{_num(r['client_fd_mean'], 3)} | {r['global_is']} | {_num(r.get('wall_s', float('nan')), 0)} | "
                     f"{_num(r.get('eval_s', float('nan')), 0)} |")
    lines.append("")
    if any(r["ratio_to_centralized"] != r["ratio_to_centralized"] for r in rows):
        lines.append(f"{MISSING}: no `centralized` variant in this sweep, so no ratio to it.")
    rounds = sorted({r["round"] for r in rows})
    lines.append(f"Each run's last evaluated round ({', '.join(map(str, rounds))}); extractor: {rows[0]['extractor']}.")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
