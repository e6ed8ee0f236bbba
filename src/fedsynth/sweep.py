"""Sweeps: many runs that differ in a few keys, and one table comparing them.

Each variant is a name and a list of ``--set`` overrides on top of a base config. Runs go to
``OUT/<variant>/`` (normal run directories); a variant whose run finished is not run again,
so an interrupted sweep resumes where it stopped. The results table (``results.csv``,
``results.md``) holds, per variant, the final global Frechet distance (for ``local``, where no
global model exists, the mean over clients of each hospital's own model on the union), its
ratio to the ``centralized`` variant if present, and the mean per-client distance.
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
from pathlib import Path
from typing import Any, Callable

from .config import UserError, load_config
from .report import RunDir, read_metrics
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
        return any(r["round"] == rounds and r["metric"] in ("fid", "fd-random") for r in read_metrics(run))
    except (OSError, ValueError):
        return False


def summarise(run: Path) -> dict[str, Any]:
    recs = read_metrics(run)
    fd = [r for r in recs if r["metric"] in ("fid", "fd-random")]
    last = max(r["round"] for r in fd)
    at_last = [r for r in fd if r["round"] == last]
    glob = [r["value"] for r in at_last if r["client"] == "global" and r.get("real") == "union"]
    on_union = [r["value"] for r in at_last if r["client"] != "global" and r.get("real") == "union"]
    own = [r["value"] for r in at_last if r["client"] != "global" and r.get("real") == r["client"]]
    g = glob[0] if glob else (sum(on_union) / len(on_union) if on_union else float("nan"))
    return {"round": last, "metric": fd[0]["metric"], "extractor": fd[0]["extractor"],
            "global_fd": g, "global_is": "global model" if glob else "mean of local models on the union",
            "client_fd_mean": sum(own) / len(own) if own else float("nan")}


def run_sweep(base_config: str | None, base_sets: list[str], variants: list[tuple[str, list[str]]],
              out: Path, run_one: Callable[[Any, Path], None]) -> list[dict[str, Any]]:
    """Run (or reuse) every variant; return one row per variant."""
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise UserError(f"variant names must be unique: {names}")
    cfgs = [(n, load_config(base_config, list(base_sets) + o), o) for n, o in variants]  # validate all first
    rows = []
    for name, cfg, overrides in cfgs:
        d = out / name
        if not _finished(d, cfg.fed.rounds):
            if d.exists():
                shutil.rmtree(d)
            run_one(cfg, d)
        rows.append({"variant": name, "overrides": "; ".join(overrides), **summarise(d)})
    ref = next((r["global_fd"] for r in rows if r["variant"] == "centralized"), None)
    for r in rows:
        r["ratio_to_centralized"] = r["global_fd"] / ref if ref else float("nan")
    write_tables(rows, out)
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    metric = rows[0]["metric"]
    lines = [f"| variant | final global {metric} | ratio to centralized | mean client {metric} (own data) | global is |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['global_fd']:.3f} | {r['ratio_to_centralized']:.2f} | "
                     f"{r['client_fd_mean']:.3f} | {r['global_is']} |")
    lines.append("")
    lines.append(f"Round {rows[0]['round']}; extractor: {rows[0]['extractor']}.")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
