"""The ``fedsynth`` command line (Typer + rich)."""

from __future__ import annotations

import json
import re
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
    from .report import fd_series
    fd, kid = fd_series(records, metric), fd_series(records, kid_metric)
    t = Table(title=f"{metric} per participant (lower is better)")
    for col in ("model", "before training", "final", "change", f"final {kid_metric}"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for w in sorted(fd, key=lambda s: (s == "global", s)):
        (r0, v0), (r1, v1) = fd[w][0], fd[w][-1]
        change = (v1 - v0) / v0 * 100 if v0 else float("nan")
        name = "global (union of clients)" if w == "global" else f"client {w}"
        t.add_row(name, f"{v0:.3f}", f"{v1:.3f} (r{r1})", f"{change:+.1f}%",
                  f"{dict(kid.get(w, [])).get(r1, float('nan')):.4f}")
    return t


def _load_with_progress(cfg: Config):
    """Load (and prepare, or read from cache) the configured data, with a progress bar."""
    from .data import load_dataset
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"loading {cfg.data.source}", total=None)
        data = load_dataset(cfg, lambda done, total: progress.update(task, completed=done, total=total))
    skipped = data.provenance.get("skipped", [])
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} bad file(s)[/] (listed in partition.json), "
                          f"e.g. {skipped[0]['file']}: {skipped[0]['reason']}", highlight=False)
    return data


def _partition_table(part: dict[str, Any]) -> Table:
    names = part["class_names"]
    t = Table(title=f"partition: {part.get('scheme', '')}")
    t.add_column("client")
    t.add_column("images", justify="right")
    for c in names:
        t.add_column(str(c), justify="right")
    for cid, info in part["clients"].items():
        t.add_row(cid, str(info["images"]), *(str(v) for v in info["class_counts"]))
    return t


def _source_overrides(source: str) -> list[str]:
    """A phantom/sample name, or a path whose kind is guessed from its contents."""
    from .config import SOURCES
    if source in SOURCES:
        return [f"data.source={source}"]
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(f"no such data source or path: {source}")
    if p.is_file() and p.suffix == ".npz":
        import re
        m = re.fullmatch(r"(.+?)(?:_(64|128|224))?\.npz", p.name)
        size = m.group(2) or "28"
        return ["data.source=medmnist", f'data.path="{p.parent}"', f"data.medmnist-flag={m.group(1)}",
                f"data.medmnist-size={size}"]
    names = [q.name.lower() for q in ([p] if p.is_file() else p.rglob("*")) if q.is_file()]
    if any(n.endswith((".nii", ".nii.gz")) for n in names):
        kind = "nifti"
    elif any(n.endswith((".dcm", ".dicom")) for n in names):
        kind = "dicom"
    else:
        kind = "folder"
    return [f"data.source={kind}", f'data.path="{p}"']


def _describe(cfg: Config) -> str:
    if cfg.run.name:
        return cfg.run.name
    n = 1 if cfg.fed.strategy == "centralized" else cfg.partition.clients
    return f"{cfg.data.source}-{cfg.fed.strategy}-{n}c-{cfg.data.image_size}px"


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

    from .data import load_dataset, partition_for, summary
    from .fed import FederatedRun
    from .report import RunDir
    from .utils import set_torch_threads

    threads = set_torch_threads(cfg.train.threads)
    run_dir = None
    try:
        t0 = time.perf_counter()
        data = _load_with_progress(cfg)
        parts = partition_for(cfg, data)
        engine = FederatedRun(cfg, parts)
        run_dir = RunDir.at(out) if out else RunDir.create(cfg.run.out_dir, _describe(cfg))
        run_dir.write_text("config.toml", cfg.to_toml())  # resolved config first
        part = {"scheme": cfg.partition.scheme, **summary(parts, data.class_names),
                "data": data.provenance}
        run_dir.write_json("partition.json", part)
        console.print(_partition_table(part))
        console.print(f"[bold]fedsynth[/] run → [cyan]{run_dir.path}[/]  "
                      f"({cfg.data.source}, {len(data)} images {data.size}px, "
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


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., help="A phantom or sample name, or a folder/file path."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Data/preprocess overrides, e.g. preprocess.clahe=0.02."),
    montage: Optional[Path] = typer.Option(None, "--montage", help="Write a montage PNG here."),
) -> None:
    """Counts, classes, raw sizes, intensity statistics and a montage of a data source."""
    import numpy as np
    try:
        cfg = load_config(None, _source_overrides(source) + list(set_))
        data = _load_with_progress(cfg)
    except UserError as e:
        _fail(str(e))
    prov = data.provenance
    console.print(f"{source}: {len(data)} images, {data.channels} channel(s), prepared to {data.size}px",
                  highlight=False, soft_wrap=True)
    t = Table()
    t.add_column("class")
    t.add_column("images", justify="right")
    for name, n in zip(data.class_names, data.class_counts()):
        t.add_row(str(name), str(n))
    console.print(t)
    x = data.images.astype(np.float32)
    per_ch = ", ".join(f"ch{c}: mean {x[:, c].mean():.1f} std {x[:, c].std():.1f} "
                       f"min {x[:, c].min():.0f} max {x[:, c].max():.0f}" for c in range(data.channels))
    console.print(f"intensity (prepared, 0-255): {per_ch}", highlight=False)
    if prov.get("raw_sizes"):
        console.print("raw sizes (HxW[xC]: files): " + ", ".join(f"{k}: {v}" for k, v in prov["raw_sizes"].items()),
                      highlight=False)
    if prov.get("skipped"):
        console.print(f"skipped: {len(prov['skipped'])} file(s)")
    if prov.get("cache"):
        console.print(f"cache: {prov['cache']}")
    from .report.montage import save_class_montage
    out = montage or Path(f"{Path(source).name or 'data'}-montage.png")
    save_class_montage(data, out, per_class=8)
    console.print(f"montage: {out}")


@data_app.command("split")
def data_split(
    source: str = typer.Argument(..., help="A phantom or sample name, or a folder/file path."),
    clients: int = typer.Option(..., "--clients", "-k", help="Number of clients."),
    scheme: str = typer.Option("iid", "--scheme", help="iid | label-skew | by-label | dirichlet | quantity-skew"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: one sub-folder per client."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Other overrides, e.g. partition.majority=0.9."),
) -> None:
    """Write one folder per client (client-K/<class>/NNNNNN.png): what each hospital node reads."""
    import tempfile
    from PIL import Image
    from .data import partition_for, summary
    try:
        cfg = load_config(None, _source_overrides(source) + list(set_)
                          + [f"partition.clients={clients}", f"partition.scheme={scheme}"])
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty")
        data = _load_with_progress(cfg)
        parts = partition_for(cfg, data)
    except UserError as e:
        _fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # write everything into a temporary folder, then rename: never half-written
        safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", str(c)) or f"class{i}" for i, c in enumerate(data.class_names)]
        for k, part in enumerate(parts):
            for i, (img, lab) in enumerate(zip(part.images, part.labels)):
                d = tmp / f"client-{k}" / safe[lab]
                d.mkdir(parents=True, exist_ok=True)
                arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                Image.fromarray(arr).save(d / f"{i:06d}.png")
        info = {"scheme": scheme, **summary(parts, data.class_names), "data": data.provenance}
        (tmp / "partition.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    console.print(_partition_table(info))
    console.print(f"wrote {len(parts)} client folders to {out}")


def main() -> None:
    try:
        app()
    except UserError as e:  # any user error that escaped a command
        err_console.print(f"[bold red]error:[/] {str(e).splitlines()[0]}")
        sys.exit(2)


if __name__ == "__main__":
    main()
