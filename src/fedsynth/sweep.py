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
    # strategies on phantom-histo with a label-skew split over 4 clients, 3 seeds (21 runs): 1,200 tiles
    # and 10 rounds of 2 local epochs; 53 min at --jobs 2 on the 2-core machine with the test suite
    # sharing it, half of it the fd-effnet rescoring; the global model scored every 2nd round so the
    # median of the last 3 evaluations covers rounds 6-10
    "strategies": {
        "base": ["data.source=phantom-histo", "data.image-size=32", "data.num-images=1200",
                 "partition.clients=4", "partition.scheme=label-skew", "partition.majority=0.9",
                 "fed.rounds=10", "fed.local-epochs=2", "eval.every=2", "eval.num-samples=500"],
        "variants": [
            ("fedavg", ["fed.strategy=fedavg"]),
            ("fedprox", ["fed.strategy=fedprox", "fed.mu=0.01"]),
            ("fedbn", ["fed.strategy=fedbn"]),
            ("share-G", ["fed.strategy=fedavg", 'fed.share=["G"]']),
            ("fedadam", ["fed.strategy=fedadam"]),
            ("local", ["fed.strategy=local"]),
            ("centralized", ["fed.strategy=centralized"]),
        ],
        "seeds": 3,
    },
}


def _study_variants() -> list[tuple[str, list[str]]]:
    """Modality x aggregation period (same total epochs), plus local and centralized references;
    every round scored (the global model and each site's own model: the study's protocol)."""
    out = []
    for mod in ("xray", "ct", "histo"):
        for period in (1, 3, 5):
            out.append((f"{mod}-period{period}", [f"data.source=phantom-{mod}", f"fed.local-epochs={period}",
                                                  f"fed.rounds={15 // period}"]))
        for base in ("local", "centralized"):
            out.append((f"{mod}-{base}", [f"data.source=phantom-{mod}", f"fed.strategy={base}",
                                          "fed.local-epochs=1", "fed.rounds=15"]))
    return out


# The FedAvg-DCGAN study's grid (its seed 000), scaled to this 2-core machine: 32 px, 2 clients, 15 local
# epochs in total, 3 seeds (45 runs, 67 min at --jobs 2 beside another sweep: 1,200 images, 540 a site
# after the held-out share, 17 local steps an epoch, 255 over the 15 epochs). fed.min-local-steps = 0:
# its floor of 30 steps a round would give period 1
# 450 steps and periods 3 and 5 255, and the study compares periods at the same number of epochs. Every
# round is scored, the global model and each site's own model (eval.local-every = 1: the study's protocol).
PRESETS["study"] = {
    "base": ["data.image-size=32", "data.num-images=1200", "partition.clients=2", "eval.num-samples=500",
             "eval.per-site=false", "eval.every=1", "eval.local-every=1", "fed.min-local-steps=0"],
    "variants": _study_variants(),
    "seeds": 3,
}
# The study's 128 px x-ray slice: period 1 vs period 5 (the study found that 128 px with period 5 did not
# converge), 3 seeds. 128 px costs ~16x a 32 px image, so 400 images (180 a site after the held-out share)
# and 200 samples per score; batch 16 and fed.min-local-steps = 0 give both periods the same 180 local
# steps over the 15 epochs (the floor of 30 steps a round would give period 1 five times period 5's).
PRESETS["study-128"] = {
    "base": ["data.source=phantom-xray", "data.image-size=128", "data.num-images=400", "partition.clients=2",
             "eval.num-samples=200", "eval.per-site=false", "eval.every=1", "eval.local-every=1",
             "fed.min-local-steps=0", "train.batch-size=16"],
    "variants": [(f"xray128-period{p}", [f"fed.local-epochs={p}", f"fed.rounds={15 // p}"]) for p in (1, 5)],
    "seeds": 3,
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

# Label skew, the methods built for it beside FedAvg, FedBN and pooling: the `strategies` setting
# (phantom-histo 32 px, 1,200 tiles, 10 rounds of 2 local epochs, the global model scored every 2nd
# round) over two splits -- 90 % of each of 4 sites' images from one class ("skew-"), and
# Dirichlet(0.1) class shares over 6 sites, drawn until every site has 100 images so each can hold
# 10 out ("dir-") -- each split with its own centralized reference (the held-out images are each
# split's sites'), 3 seeds: 42 runs, 81 min at --jobs 2 with other work sharing the cores; and the
# server-side methods below on the skew split (9 runs).
_SKEW_METHODS = [
    ("fedavg", ["fed.strategy=fedavg"]),
    ("fedbn", ["fed.strategy=fedbn"]),
    ("fbn", ["fed.strategy=fbn"]),
    ("fixbn", ["fed.strategy=fixbn"]),
    ("fedcar", ["fed.strategy=fedcar"]),
    ("conditional", ["fed.strategy=fedavg", "model.conditional=multiply", "model.d-conditioning=projection"]),
    ("centralized", ["fed.strategy=centralized"]),
]
_SKEW_SPLITS = [
    ("skew", ["partition.clients=4", "partition.scheme=label-skew", "partition.majority=0.9"]),
    ("dir", ["partition.clients=6", "partition.scheme=dirichlet", "partition.alpha=0.1", "partition.min-size=100"]),
]
# On the skew split only, the two server-side methods: the server's correction step on samples of the
# sites' updated models (FedAvg + fed.server-data = "sites", 50 server steps a round), and FedAdam over 20
# rounds with a constant and a cosine-decayed server learning rate (FedAdam collapsed after round 10).
_SKEW_SERVER_METHODS = [
    ("fedavg-sites", ["fed.strategy=fedavg", "fed.server-data=sites"]),
    ("fedadam-20", ["fed.strategy=fedadam", "fed.rounds=20"]),
    ("fedadam-cosine-20", ["fed.strategy=fedadam", "fed.server-lr-decay=cosine", "fed.rounds=20"]),
]
PRESETS["label-skew"] = {
    "base": PRESETS["strategies"]["base"][:3] + ["fed.rounds=10", "fed.local-epochs=2", "eval.every=2",
                                                 "eval.num-samples=500"],
    "variants": [(f"{split}-{name}", [*split_sets, *sets])
                 for split, split_sets in _SKEW_SPLITS for name, sets in _SKEW_METHODS]
    + [(f"skew-{name}", [*_SKEW_SPLITS[0][1], *sets]) for name, sets in _SKEW_SERVER_METHODS],
    "seeds": 3,
}

# The label-skew methods with the diffusion family: FedAvg and the two methods that came closest to
# pooling in the GAN family's `label-skew` sweep (the class-conditional model and FedCAR), beside the
# diffusion family's own centralized reference, on its 4-site split (90 % of each site's tiles from one
# class) and 1,200 tiles, 3 seeds (12 runs). A diffusion round costs ~13x a GAN round here, so 6 rounds
# of 1 local epoch, scored at rounds 2, 4 and 6 (the median of the last 3) on 250 samples, and FedCAR
# samples 128 images per site and round. A run took 8 (centralized) to 22 (FedCAR) min with 2 at a time
# and other work beside them: 12 runs, 100 min, so the Dirichlet split (12 more) did not fit beside it.
_DIFFUSION_SKEW_METHODS = [
    ("fedavg", ["fed.strategy=fedavg"]),
    ("fedcar", ["fed.strategy=fedcar", "fed.fedcar-samples=128"]),
    ("conditional", ["fed.strategy=fedavg", "diffusion.conditional=true"]),
    ("centralized", ["fed.strategy=centralized"]),
]
PRESETS["label-skew-diffusion"] = {
    "base": PRESETS["strategies"]["base"][:3] + ["model.family=diffusion", "fed.rounds=6", "fed.local-epochs=1",
                                                 "eval.every=2", "eval.num-samples=250", "eval.per-site=false"],
    "variants": [(f"{split}-{name}", [*split_sets, *sets])
                 for split, split_sets in _SKEW_SPLITS[:1] for name, sets in _DIFFUSION_SKEW_METHODS],
    "seeds": 3,
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
                        label="global" if name == "global" else f"site {name}")
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
    return _save(fig, out / "study-grid.png")


def _save(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure (tight layout) and close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
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


def score_series(recs: list[dict[str, Any]], metric: str | None = None) -> tuple[list[tuple[int, float]], str, str]:
    """The curve a run is judged by, ``[(round, value), ...]``, with what it is and its real
    images: the global model against the held-out images when the run kept some (``real =
    "holdout"``), else against the union of the sites' training images; without a global model
    (``local``), the mean over sites of each site's own model on the same images. ``metric``: which
    Frechet distance (default: the run's first)."""
    fd = [r for r in recs if is_fd_metric(r["metric"]) and (metric is None or r["metric"] == metric)]
    if not fd:
        return [], "", ""
    metric = fd[0]["metric"]
    fd = [r for r in fd if r["metric"] == metric]
    for real in ("holdout", "union"):
        glob = {r["round"]: r["value"] for r in fd if r["client"] == "global" and r.get("real") == real}
        if glob:
            return sorted(glob.items()), "global model", real
    for real in ("holdout", "union"):
        by_round: dict[int, list[float]] = {}
        for r in fd:
            if r["client"] != "global" and r.get("real") == real:
                by_round.setdefault(r["round"], []).append(r["value"])
        if by_round:
            where = "the held-out images" if real == "holdout" else "the union"
            return sorted((k, sum(v) / len(v)) for k, v in by_round.items()), f"mean of local models on {where}", real
    return [], "", ""


def summarise(run: Path, last_k: int = 3) -> dict[str, Any]:
    """One run's row: its final value and the median of its last ``last_k`` evaluations (the
    number a sweep compares: one evaluation swings, the median of the last few much less), the
    same with the second feature network where the run was scored with it (``rescore.jsonl``),
    the mean per-site distance, wall and evaluation seconds."""
    from .metrics.intervals import median_last
    recs = read_metrics(run)
    fd = [r for r in recs if is_fd_metric(r["metric"])]
    series, global_is, real = score_series(recs)
    last = max(r["round"] for r in fd)
    at_last = [r for r in fd if r["round"] == last and r["metric"] == fd[0]["metric"]]
    own = [r["value"] for r in at_last if r["client"] != "global" and r.get("real") == r["client"]]
    wall, evals = run_seconds(run)
    vals = [v for _, v in series]
    row = {"round": last, "metric": fd[0]["metric"], "extractor": fd[0]["extractor"],
           "global_fd": vals[-1] if vals else float("nan"), "last_k": last_k,
           "last_k_median": median_last(vals, last_k), "real": real,
           "global_is": global_is, "client_fd_mean": sum(own) / len(own) if own else float("nan"),
           "wall_s": wall, "eval_s": evals}
    second = rescored(run)
    if second:
        sv = [v for _, v in score_series(second)[0]]
        row.update(second_metric=second[0]["metric"], second_final=sv[-1] if sv else float("nan"),
                   second_last_k_median=median_last(sv, last_k), second_s=sum(r["value"] for r in second if r["metric"] == "rescore-seconds"))
    return row


def rescored(run: Path) -> list[dict[str, Any]]:
    """The records of a run re-scored with a second feature network (``rescore.jsonl``; empty if none)."""
    p = run / "rescore.jsonl"
    if not p.is_file():
        return []
    import json
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


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


def _processes(items: list[tuple[str, list[str], Path]], jobs: int, started: Callable[[str], None] = lambda n: None,
               poll: Callable[[str], None] = lambda n: None,
               finished: Callable[[str, bool, float], None] = lambda n, ok, s: None) -> list[str]:
    """Run each ``(name, argv, log file)`` as its own process, at most ``jobs`` at a time, calling
    ``started``, ``poll`` (about five times a second while it runs) and ``finished``; return the
    names of those that failed."""
    import subprocess
    import time
    queue, running, failed = list(items), [], []
    while queue or running:
        while queue and len(running) < jobs:
            name, argv, log = queue.pop(0)
            started(name)
            with open(log, "w") as f:  # the child keeps its own handle
                running.append((name, subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT), time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            name, proc, t0 = item
            poll(name)
            if proc.poll() is not None:
                running.remove(item)
                finished(name, proc.returncode == 0, time.perf_counter() - t0)
                if proc.returncode != 0:
                    failed.append(name)
    return failed


def _rescore_argv(run: Path, extractor: str, last_k: int) -> list[str]:
    """``fedsynth rescore`` of one run, as a child process's command line."""
    import sys
    return [sys.executable, "-m", "fedsynth", "rescore", str(run), "--extractor", extractor, "--last-k", str(last_k)]


def _run_parallel(todo: list[tuple[str, Any]], out: Path, jobs: int, progress: SweepProgress,
                  rescore: str = "") -> None:
    """Each variant in its own ``fedsynth run`` process, at most ``jobs`` at a time, with the
    cores shared out (train.threads) so they do not oversubscribe; with ``rescore``, the same
    process then scores it with the second feature network (``fedsynth rescore``), so the
    rescoring is spread over the jobs too."""
    import dataclasses
    import os
    import shlex
    import sys
    threads = max(1, (os.cpu_count() or 1) // jobs)
    items, rounds = [], {}
    for name, cfg in todo:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        toml = out / f".{name.replace('/', '-')}.toml"
        atomic_write_text(toml, cfg.to_toml())
        argv = [sys.executable, "-m", "fedsynth", "run", "--config", str(toml), "--out", str(out / name)]
        if rescore:  # one shell line, no user text in it: every part is quoted
            argv = ["sh", "-c", f"{shlex.join(argv)} && {shlex.join(_rescore_argv(out / name, rescore, cfg.eval.last_k))}"]
        items.append((name, argv, out / f".{name.replace('/', '-')}.log"))
        rounds[name] = cfg.fed.rounds
    failed = _processes(items, jobs, progress.started,
                        lambda name: progress.rounds(name, rounds_done(out / name), rounds[name]), progress.finished)
    if failed:
        raise UserError(f"variant(s) failed: {', '.join(failed)} (see {out}/.<name>.log)")


def _rescore_parallel(runs: list[tuple[str, Any]], out: Path, jobs: int, extractor: str) -> None:
    """``fedsynth rescore`` of each finished run, at most ``jobs`` processes at a time (each uses
    its run's own train.threads, which a parallel sweep shared out)."""
    failed = _processes([(rel, _rescore_argv(out / rel, extractor, cfg.eval.last_k),
                          out / f".{rel.replace('/', '-')}.rescore.log") for rel, cfg in runs], jobs)
    if failed:
        raise UserError(f"rescoring failed: {', '.join(failed)} (see {out}/.<name>.rescore.log)")


def sweep_runs(cfgs: list[tuple[str, Any, list[str]]], seeds: int) -> list[tuple[str, int, str, Any]]:
    """``(variant, seed, run folder relative to the sweep, config)`` for every variant and seed:
    with one seed the run is ``<variant>/`` (as before seeds existed), with several it is
    ``<variant>/seed-<s>/`` for ``s = run.seed, run.seed + 1, ...`` (the seed drives the partition,
    the initialisation and every sample: every random draw derives from it)."""
    import dataclasses
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    out = []
    for name, cfg, _ in cfgs:
        for i in range(seeds):
            if seeds == 1:
                out.append((name, cfg.run.seed, name, cfg))
                continue
            s = cfg.run.seed + i
            out.append((name, s, f"{name}/seed-{s}", dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=s))))
    return out


def run_sweep(base_config: str | None, base_sets: list[str], variants: list[tuple[str, list[str]]],
              out: Path, run_one: Callable[[Any, Path], None], jobs: int = 1,
              progress: SweepProgress | None = None, seeds: int = 1, reference: str | None = None,
              rescore: str = "") -> list[dict[str, Any]]:
    """Run (or reuse) every variant with ``seeds`` seeds, ``jobs`` runs at a time; return one
    summary row per variant (:func:`summarise_variants`). ``rescore``: a second feature network
    (e.g. ``effnet-lite0``) that scores each run's last ``eval.last-k`` evaluations after it
    finished (:func:`fedsynth.fed.rescore.rescore_run`)."""
    import time
    progress = progress or SweepProgress()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise UserError(f"variant names must be unique: {names}")
    if reference is not None and reference not in names:
        raise UserError(f"--reference {reference!r} is not a variant of this sweep ({', '.join(names)})")
    cfgs = [(n, load_config(base_config, list(base_sets) + o), o) for n, o in variants]  # validate all first
    if rescore:
        import dataclasses
        # the checkpoints of the last k evaluated rounds stay on disk (evaluated every eval.every rounds)
        cfgs = [(n, dataclasses.replace(c, run=dataclasses.replace(c.run, keep_checkpoints=max(
            c.run.keep_checkpoints, (c.eval.last_k - 1) * c.eval.every + 1))), o) for n, c, o in cfgs]
    runs = sweep_runs(cfgs, seeds)
    todo = []
    for _, _, rel, cfg in runs:
        d = out / rel
        if not _finished(d, cfg.fed.rounds):
            if d.exists():
                from .report.rundir import RunDirBusy, lock_run_dir
                try:  # never delete a directory a live run (another sweep) is writing
                    lock_run_dir(d)
                except RunDirBusy as e:
                    raise UserError(f"variant {rel}: {d} is in use by a live run ({e.holder}); "
                                    f"wait for it or use another --out") from None
                shutil.rmtree(d)
            todo.append((rel, cfg))
    progress.planned([(n, c.fed.rounds) for n, c in todo], [rel for _, _, rel, _ in runs if rel not in dict(todo)])
    if jobs > 1:
        _run_parallel(todo, out, jobs, progress, rescore)
    else:
        for name, cfg in todo:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            progress.started(name)
            t0 = time.perf_counter()
            try:
                run_one(cfg, out / name)
            except BaseException:
                progress.finished(name, False, time.perf_counter() - t0)
                raise
            progress.finished(name, True, time.perf_counter() - t0)
    missing = [(rel, cfg) for _, _, rel, cfg in runs if rescore and not rescored(out / rel)]
    if missing and jobs > 1:  # runs finished before (a resumed sweep): rescored ``jobs`` at a time
        _rescore_parallel(missing, out, jobs, rescore)
    elif missing:
        from .fed.rescore import rescore_run
        for rel, cfg in missing:
            rescore_run(out / rel, rescore, cfg.eval.last_k)
    run_rows = []
    for name, seed, rel, cfg in runs:
        overrides = next(o for n, _, o in cfgs if n == name)
        run_rows.append({"variant": name, "seed": seed, "run": rel, "overrides": "; ".join(overrides),
                         **summarise(out / rel, cfg.eval.last_k)})
    rows = summarise_variants(run_rows, names, reference)
    write_tables(rows, run_rows, out)
    results_figure(rows, out)
    if seeds == 1:
        study_figure(out)
    if seeds == 1:
        from .report.compare import build_compare  # compare/compare.html: the variants side by side
        build_compare([out / name for name in names], out / "compare", title=f"sweep {out.name}")
    else:
        band_figure({name: [out / rel for v, _, rel, _ in runs if v == name] for name in names}, out)
    return rows


def band_figure(groups: dict[str, list[Path]], out: Path) -> Path | None:
    """``curves.png``: per variant, the geometric mean over seeds of the curve it is scored by,
    with the 95 % t-interval of the mean log per round as a band (not one line per seed): on the
    log axis a plain t-interval of three distances often reaches below zero."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .report.plots import draw_band, seed_band
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
    metric = real = ""
    for i, (name, dirs) in enumerate(groups.items()):
        series = []
        for d in dirs:
            recs = read_metrics(d)
            ser, _, real = score_series(recs)
            metric = metric or next((r["metric"] for r in recs if is_fd_metric(r["metric"])), "")
            series.append(ser)
        band = seed_band(series, geometric=True)
        if band:
            draw_band(ax, band, plt.cm.tab10(i % 10), f"{name} ({len(dirs)} seeds)")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} ({'held-out' if real == 'holdout' else 'training'} images)", fontsize=9)
    ax.set_title(f"{out.name}: geometric mean over seeds, band: 95 % interval per round (log scale)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "curves.png")


def second_network(choice: str, first: str) -> str:
    """The second feature network of a sweep (``--second-network``): ``auto`` is effnet-lite0
    when it can be built here and the runs do not already use it; ``none`` (or "") is off."""
    from .registry import EXTRACTORS
    if choice in ("", "none"):
        return ""
    if choice == "auto":  # the runs' own "auto" is Inception or the random network, never effnet-lite0
        from .metrics.features import effnet_unavailable
        return "" if effnet_unavailable() or first == "effnet-lite0" else "effnet-lite0"
    if choice not in EXTRACTORS.names() or choice == "auto":
        raise UserError(f"--second-network {choice!r}: choose from auto, none, "
                        + ", ".join(n for n in EXTRACTORS.names() if n != "auto"))
    return choice


def reference_of(name: str, names: list[str], reference: str | None) -> str:
    """The variant ``name`` is compared with: ``reference`` if given, else its centralized run
    (:func:`centralized_reference`), else the sweep's first variant."""
    return reference or centralized_reference(name, names) or names[0]


def summarise_variants(run_rows: list[dict[str, Any]], names: list[str], reference: str | None = None) -> list[dict[str, Any]]:
    """One row per variant over its seeds: the mean and 95 % t-interval of the runs' median of the
    last k evaluations (``score``) and of their final values (``final``); the paired per-seed
    ratio to the reference variant with its interval (``ratio``, :func:`paired_ratio_interval`)
    and the verdict: ``better`` / ``worse`` when the interval excludes 1, else ``cannot tell``;
    ``tied_with_best``: the interval of the paired ratio to the best variant contains 1. With a
    second feature network, the same score in it (``second``)."""
    from .metrics.intervals import geometric_interval, mean_interval, paired_ratio_interval
    by: dict[str, list[dict[str, Any]]] = {n: [r for r in run_rows if r["variant"] == n] for n in names}

    def per_seed(name: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in by[name] if key in r and r[key] == r[key]}

    def interval(vals: list[float]):
        return mean_interval(vals) if vals else None

    def paired(a: str, b: str, key: str = "last_k_median"):
        x, y = per_seed(a, key), per_seed(b, key)
        common = sorted(set(x) & set(y))
        if not common or any(x[s] <= 0 or y[s] <= 0 for s in common):
            return None
        return paired_ratio_interval([x[s] for s in common], [y[s] for s in common])

    rows = []
    for name in names:
        rs = by[name]
        first = rs[0]
        scores = list(per_seed(name, "last_k_median").values())
        row = {"variant": name, "seeds": len(rs), "metric": first["metric"], "extractor": first["extractor"],
               "real": first["real"], "global_is": first["global_is"], "round": first["round"], "last_k": first["last_k"],
               "score": interval(scores),
               "score_geo": geometric_interval(scores) if scores and min(scores) > 0 else None,
               "final": interval(list(per_seed(name, "global_fd").values())),
               "client_fd_mean": interval(list(per_seed(name, "client_fd_mean").values())),
               "wall_s": sum(r["wall_s"] for r in rs) / len(rs), "eval_s": sum(r["eval_s"] for r in rs) / len(rs),
               "second": interval(list(per_seed(name, "second_last_k_median").values())),
               "second_metric": first.get("second_metric", ""),
               "second_s": sum(r.get("second_s", 0.0) for r in rs) / len(rs)}
        ref = reference_of(name, names, reference)
        row["reference"] = ref
        row["ratio"] = None if ref == name else paired(name, ref)
        row["verdict"] = ("reference" if ref == name else "—" if row["ratio"] is None
                          else "cannot tell" if row["ratio"].contains(1.0)
                          else "better" if row["ratio"].mean < 1 else "worse")
        rows.append(row)
    # the best of each group that shares a reference (a sweep over two splits, each with its own
    # centralized run, ranks within a split: their held-out images differ)
    best_of: dict[str, str | None] = {}
    for ref in dict.fromkeys(r["reference"] for r in rows):
        scored = [r for r in rows if r["reference"] == ref and r["score"] is not None]
        best_of[ref] = min(scored, key=lambda r: r["score"].mean)["variant"] if scored else None
    for r in rows:
        best = best_of[r["reference"]]
        ratio = paired(r["variant"], best) if best and r["variant"] != best else None
        r["best"] = best
        r["tied_with_best"] = r["variant"] == best or (ratio is not None and ratio.contains(1.0))
        # the old flat columns (one seed: the values themselves), for scripts that read them
        r["global_fd"] = r["final"].mean if r["final"] else float("nan")
        r["ratio_to_centralized"] = r["ratio"].mean if r["ratio"] is not None and r["reference"].endswith(
            "centralized") else float("nan")
    return rows


def rank_agreement_of(rows: list[dict[str, Any]]):
    """Kendall's tau between the variants' mean scores in the two feature networks (None without a second)."""
    from .metrics.intervals import rank_agreement
    pairs = [(r["score"].mean, r["second"].mean) for r in rows if r["score"] is not None and r["second"] is not None]
    if not pairs:
        return None
    return rank_agreement([a for a, _ in pairs], [b for _, b in pairs])


def results_figure(rows: list[dict[str, Any]], out: Path) -> Path:
    """Each variant's score (median of its last k evaluations; the geometric mean over seeds with
    the 95 % interval of the mean log as an error bar), log scale, the reference dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 1.5), 3.6), dpi=110)
    geo = [r.get("score_geo") for r in rows]
    vals = [g.mean if g else float("nan") for g in geo]
    err = [[v - g.low if g and g.known else 0 for v, g in zip(vals, geo)],
           [g.high - v if g and g.known else 0 for v, g in zip(vals, geo)]]
    ax.bar(range(len(rows)), vals, yerr=err, capsize=3,
           color=["0.55" if r["verdict"] == "reference" else "tab:blue" for r in rows])
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_yscale("log")
    seeds = max(r["seeds"] for r in rows)
    ax.set_ylabel(f"{rows[0]['metric']}, median of last {rows[0]['last_k']}", fontsize=9)
    ref = next((v for v, r in zip(vals, rows) if r["variant"] == rows[0]["reference"]), None)
    if ref:
        ax.axhline(ref, ls="--", color="0.4", lw=1)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{out.name}: {seeds} seed{'s' if seeds != 1 else ''}"
                 + (", geometric mean and 95 % interval" if seeds > 1 else ""), fontsize=9)
    return _save(fig, out / "results.png")


MISSING = "—"  # a number that does not exist (e.g. no centralized reference): never "nan"


def _num(v: float, digits: int) -> str:
    return MISSING if v != v else f"{v:.{digits}f}"


def _iv(iv: Any, digits: int = 3) -> str:
    return MISSING if iv is None else iv.format(digits)


def variant_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The sweep's table (header, rows of text): what the terminal, results.md and compare show."""
    k, metric = rows[0]["last_k"], rows[0]["metric"]
    against = "held-out images" if rows[0]["real"] == "holdout" else "training images"
    head = ["variant", "seeds", f"{metric} median of last {k} ({against})", f"final {metric}",
            "ratio to reference (paired)", "vs reference", "vs best"]
    second = rows[0].get("second_metric")
    if second:
        head.append(f"{second} median of last {k}")
    body = []
    for r in rows:
        best = MISSING if r["score"] is None or not r["best"] else "best" if r["variant"] == r["best"] else \
            "cannot tell" if r["tied_with_best"] else "worse"
        line = [r["variant"], str(r["seeds"]), _iv(r["score"]), _iv(r["final"]),
                "1 (reference)" if r["verdict"] == "reference" else _iv(r["ratio"], 2),
                r["verdict"] if r["verdict"] == "reference" else f"{r['verdict']} ({r['reference']})", best]
        if second:
            line.append(_iv(r["second"]))
        body.append(line)
    return head, body


def identical_variants(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of variants whose scores are equal to the last bit (summary over the same seeds): two
    settings that trained the same model, which a sweep should say rather than rank."""
    def key(r: dict[str, Any]) -> tuple | None:
        if r["score"] is None or r["final"] is None:
            return None
        return (r["seeds"], *(repr(float(getattr(r[k], f))) for k in ("score", "final") for f in ("mean", "low", "high")))
    keys = [key(r) for r in rows]
    return [(rows[i]["variant"], rows[j]["variant"]) for i in range(len(rows)) for j in range(i + 1, len(rows))
            if keys[i] is not None and keys[i] == keys[j]]


def table_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The lines under the table: what the numbers are, the tie with the best, the rank agreement."""
    seeds, k = max(r["seeds"] for r in rows), rows[0]["last_k"]
    notes = [f"Each run is scored by the median of its last {k} evaluations of the {rows[0]['global_is']} "
             f"(extractor {rows[0]['extractor']}; lower is better)"
             + ("; against each site's held-out images, never trained on." if rows[0]["real"] == "holdout" else
                "; against the images it trained on (no held-out images in these runs).")]
    for r in rows:
        if r["global_is"] != rows[0]["global_is"]:
            notes.append(f"{r['variant']}: scored as the {r['global_is']} (it has no global model).")
    if seeds > 1:
        notes.append(f"Over {seeds} seeds: mean [95 % Student-t interval]. The ratio to the reference pairs the runs "
                     "seed by seed (geometric mean of the per-seed ratios, interval on the log ratios): "
                     "`cannot tell` when the interval contains 1.")
    else:
        notes.append("One seed: no interval, so no conclusion; run with --seeds 3 or more.")
    groups = list(dict.fromkeys(r.get("reference") for r in rows))
    for ref in groups:
        group = [r for r in rows if r.get("reference") == ref]
        tied = [r["variant"] for r in group if r["tied_with_best"] and r["variant"] != r["best"]]
        if group[0]["best"]:
            among = f" among the variants compared with {ref}" if len(groups) > 1 else ""
            notes.append(f"Lowest mean{among}: {group[0]['best']}; "
                         + (f"cannot be told apart from it (paired ratio interval contains 1): {', '.join(tied)}."
                            if tied else "every other variant is told apart from it."))
    if len({r["round"] for r in rows}) > 1:
        notes.append(f"The variants end at different rounds ({', '.join(sorted({str(r['round']) for r in rows}, key=int))}): "
                     f"where their rounds differ in length (local epochs), their last {k} evaluations cover different "
                     f"stages of training, so compare their final values (results.csv: global_fd), or evaluate them "
                     f"at the same epochs.")
    for a, b in identical_variants(rows):
        notes.append(f"{a} and {b} scored exactly the same, seed by seed: what separates them changed nothing in "
                     f"training (for example fed.min-local-steps raising both to the same local steps a round).")
    agree = rank_agreement_of(rows)
    if agree is not None:
        cost = sum(r["second_s"] * r["seeds"] for r in rows)
        notes.append(f"Rank agreement of the two feature networks over the variants (Kendall tau): {agree.format()}; "
                     f"scoring the last {k} evaluations with {rows[0]['second_metric']} took {cost:.0f} s in all.")
    return notes


def write_tables(rows: list[dict[str, Any]], run_rows: list[dict[str, Any]], out: Path) -> None:
    """``results.csv`` (one line per run: variant, seed, final value, median of the last k, ...)
    and ``results.md`` (one line per variant with its intervals, then the runs' cost)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in run_rows for k in r)))
    w.writeheader()
    w.writerows([{k: "" if isinstance(v, float) and v != v else v for k, v in r.items()} for r in run_rows])
    atomic_write_text(out / "results.csv", buf.getvalue())
    head, body = variant_table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    lines += [""] + table_notes(rows)
    rounds = sorted({r["round"] for r in rows})
    lines.append(f"Last evaluated round: {', '.join(map(str, rounds))}.")
    lines += ["", "Cost (mean per run):", "", "| variant | wall s | evaluation s |", "| --- | --- | --- |"]
    lines += [f"| {r['variant']} | {_num(r['wall_s'], 0)} | {_num(r['eval_s'], 0)} |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def seed_runs(path: Path) -> list[Path]:
    """The seeded runs of a sweep variant's folder (``seed-<s>/``), in seed order; [] for a run directory."""
    runs = [p for p in path.glob("seed-*") if (p / "metrics.jsonl").is_file() and p.name[5:].isdigit()]
    return sorted(runs, key=lambda p: int(p.name[5:]))


def compare_over_seeds(paths: list[Path], out: Path, reference: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """``fedsynth compare`` of settings run with several seeds: each path is a folder of seeded
    runs (a sweep variant's ``<variant>/``) or one run directory. Returns the variant rows
    (:func:`summarise_variants`, the variant named by its folder) and the HTML section (table,
    notes and the band figure ``out/curves.png``); writes ``out/seeds.md``."""
    import base64
    import html
    names, run_rows, groups = [], [], {}
    for p in paths:
        name = p.name
        if name in names:
            raise UserError(f"two settings are named {name!r}; compare folders with distinct names")
        names.append(name)
        runs = seed_runs(p) or [p]
        groups[name] = runs
        for r in runs:
            seed = int(r.name[5:]) if r.name.startswith("seed-") and r.name[5:].isdigit() else \
                load_config(str(r / "config.toml")).run.seed
            last_k = load_config(str(r / "config.toml")).eval.last_k if (r / "config.toml").is_file() else 3
            run_rows.append({"variant": name, "seed": seed, "run": str(r), **summarise(r, last_k)})
    if reference is not None and reference not in names:
        reference = None
    rows = summarise_variants(run_rows, names, reference)
    out.mkdir(parents=True, exist_ok=True)
    fig = band_figure(groups, out)
    head, body = variant_table(rows)
    notes = table_notes(rows)
    atomic_write_text(out / "seeds.md", "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                                                  + ["| " + " | ".join(b) + " |" for b in body] + [""] + notes) + "\n")
    esc = html.escape
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in b) + "</tr>" for b in body) + "</table>"
    img = f'<img alt="curves over seeds" src="data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}">' \
        if fig else ""
    section = (f"<h2>Over seeds</h2><div class=\"wide\">{table}</div>"
               + "".join(f"<p class=\"note\">{esc(n)}</p>" for n in notes) + img)
    return rows, section


def sweep_plan(preset: str | None, sets: list[str], variants: list[str], grid: list[str],
               seeds: int | None) -> tuple[list[str], list[tuple[str, list[str]]], int]:
    """``fedsynth sweep``'s options as ``(base overrides, variants, seeds)``: a preset's base and
    variants first, then ``--variant`` texts and the ``--grid`` product; seeds default to the
    preset's, else 1. A :class:`UserError` for an unknown preset or nothing to sweep."""
    base, out = list(sets), []
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[preset]["base"] + base
        out += PRESETS[preset]["variants"]
        seeds = seeds if seeds is not None else PRESETS[preset].get("seeds", 1)
    out += [parse_variant(v) for v in variants]
    if grid:
        out += grid_variants(grid)
    if not out:
        raise UserError("nothing to sweep: give --preset, --variant or --grid")
    return base, out, seeds or 1


def compare_runs(run_dirs: list[Path], out: Path, baseline: Path | None = None, title: str = "",
                 warn: Callable[[str], None] = lambda message: None) -> tuple[Path, list[dict[str, Any]] | None]:
    """``fedsynth compare``: ``OUT/compare.html`` of run directories side by side; folders of
    seeded runs (a sweep's ``<variant>/``) add means, intervals and paired ratios
    (:func:`compare_over_seeds`), whose variant rows come back with the page (else None), and are
    drawn as one curve each, the band of their seeds."""
    from .report.compare import build_compare
    of = {p: seed_runs(p) for p in run_dirs}  # each folder's seed-* runs (none: a run directory)
    seeded = {p.name: seeds for p, seeds in of.items() if seeds}
    section, rows = "", None
    if seeded:
        rows, section = compare_over_seeds(list(run_dirs), out, baseline.name if baseline else None)
    runs = [r for p in run_dirs for r in (of[p] or [p])]
    return build_compare(runs, out, None if seeded else baseline, title, section, warn=warn,
                         settings=seeded or None), rows
