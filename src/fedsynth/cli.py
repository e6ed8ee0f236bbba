"""The ``fedsynth`` command line (Typer + rich)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from .config import Config, UserError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated GANs for medical image synthesis.")
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect built-in and local data.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    first = str(msg).strip().splitlines()[0] if str(msg).strip() else "error"
    err_console.print(f"[bold red]error:[/] {first}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


class RichReporter:
    """Two bars: rounds (with ETA) and the current round's local steps."""

    def __init__(self, progress: Progress, metric_console: Console):
        self.p, self.c = progress, metric_console
        self.rounds_task = None
        self.step_task = None

    def run_start(self, rounds: int) -> None:
        self.rounds_task = self.p.add_task("rounds", total=rounds)
        self.step_task = self.p.add_task("", total=1, visible=False)

    def round_start(self, r: int, clients, total_steps: int) -> None:
        self.p.update(self.step_task, description=f"round {r}: clients {', '.join(clients)}",
                      completed=0, total=total_steps, visible=True)

    def step(self) -> None:
        self.p.advance(self.step_task)

    def evaluating(self, what: str) -> None:
        if self.step_task is not None:
            self.p.update(self.step_task, description=f"evaluating {what}")
        else:
            self.c.print(f"[dim]computing {what}…[/]")

    def round_end(self, r: int, records) -> None:
        if self.rounds_task is not None and r > 0:
            self.p.advance(self.rounds_task)
        fd = [x for x in records if x["metric"] in ("fid", "fd-random")]
        if fd:
            parts = [f"{x['client']}={x['value']:.2f}" for x in fd]
            self.c.print(f"round {r:>3}  {fd[0]['metric']}: " + "  ".join(parts), highlight=False)


def _summary_table(records: list[dict[str, Any]], metric: str, kid_metric: str) -> Table:
    fd = [r for r in records if r["metric"] == metric]
    kid = {(r["client"], r["round"]): r["value"] for r in records if r["metric"] == kid_metric}
    who = sorted({r["client"] for r in fd}, key=lambda s: (s == "global", s))
    t = Table(title=f"{metric} per participant (lower is better)")
    for col in ("model", "before training", "final", "change", f"final {kid_metric}"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for w in who:
        pts = sorted((r["round"], r["value"]) for r in fd if r["client"] == w)
        (r0, v0), (r1, v1) = pts[0], pts[-1]
        change = (v1 - v0) / v0 * 100 if v0 else float("nan")
        name = "global (union of clients)" if w == "global" else f"client {w}"
        t.add_row(name, f"{v0:.3f}", f"{v1:.3f} (r{r1})", f"{change:+.1f}%",
                  f"{kid.get((w, r1), float('nan')):.4f}")
    return t


def _describe(cfg: Config) -> str:
    if cfg.run.name:
        return cfg.run.name
    n = 1 if cfg.fed.strategy == "centralized" else cfg.partition.clients
    return f"{cfg.data.dataset}-{cfg.fed.strategy}-{n}c-{cfg.data.image_size}px"


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/NNNN-desc)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train a GAN federatedly (or a baseline) and evaluate it; writes a run directory."""
    try:
        cfg = load_config(config, set_)
    except UserError as e:
        _fail(str(e))
    if dry_run:
        console.print(cfg.to_toml(), highlight=False, markup=False)
        return

    from .data import load_dataset, partition
    from .fed import FederatedRun
    from .report import RunDir
    from .utils import set_torch_threads

    threads = set_torch_threads(cfg.train.threads)
    run_dir = None
    try:
        t0 = time.perf_counter()
        with console.status("generating data…"):
            data = load_dataset(cfg)
            parts = partition(data, cfg.partition.scheme, cfg.partition.clients, cfg.run.seed)
            engine = FederatedRun(cfg, parts)
        run_dir = RunDir.at(out) if out else RunDir.create(cfg.run.out_dir, _describe(cfg))
        run_dir.write_text("config.toml", cfg.to_toml())  # resolved config first
        run_dir.write_json("partition.json", {
            "scheme": cfg.partition.scheme, "class_names": list(data.class_names),
            "clients": {str(k): {"images": len(p), "class_counts": p.class_counts()}
                        for k, p in enumerate(parts)}})
        console.print(f"[bold]fedsynth[/] run → [cyan]{run_dir.path}[/]  "
                      f"({cfg.data.dataset}, {len(data)} images {data.size}px, "
                      f"{cfg.partition.clients} clients {cfg.partition.scheme}, strategy {cfg.fed.strategy}, "
                      f"{cfg.fed.rounds} rounds; features: {engine.extractor.name}; "
                      f"{threads} threads; data {time.perf_counter() - t0:.1f}s)", highlight=False)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            engine.reporter = RichReporter(progress, progress.console)
            result = engine.run(run_dir)
    except UserError as e:
        if run_dir is not None and not (run_dir.path / "metrics.jsonl").exists():
            shutil.rmtree(run_dir.path, ignore_errors=True)
        _fail(str(e))
    except KeyboardInterrupt:
        where = f"; completed rounds are in {run_dir.path}" if run_dir else ""
        err_console.print(f"interrupted{where}")
        raise typer.Exit(130)
    console.print(_summary_table(result.records, engine.extractor.metric, engine.extractor.kid_metric))
    console.print(f"done in {result.seconds:.0f}s. Results: [cyan]{run_dir.path}[/] "
                  f"(metrics.jsonl, fd.png, samples/, checkpoints/)", highlight=False)


@data_app.command("preview")
def data_preview(
    name: str = typer.Argument(..., help="phantom-xray, phantom-ct or phantom-histo"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(32, "--n", help="Number of images."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a montage PNG of a built-in data set, one row per class."""
    from .data import PHANTOMS, make_phantom
    from .report.montage import save_class_montage
    if name not in PHANTOMS:
        _fail(f"unknown data set {name!r}; choose from {', '.join(PHANTOMS)}")
    if not 16 <= size <= 256 or n < 1:
        _fail("--size must be 16-256 and --n at least 1")
    data = make_phantom(name, max(n * 4, 64), size, seed)
    save_class_montage(data, out, per_class=max(1, n // data.num_classes))
    console.print(f"wrote {out}")


def main() -> None:
    try:
        app()
    except UserError as e:  # any user error that escaped a command
        err_console.print(f"[bold red]error:[/] {str(e).splitlines()[0]}")
        sys.exit(2)


if __name__ == "__main__":
    main()
