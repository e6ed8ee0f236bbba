"""The ``fedsynth`` command line (Typer + rich)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.progress import Progress

from .commands.common import console, err_console, fail, load_with_progress, old_n, quiet, typer_group
from .commands.data import data_app
from .commands.deploy import deploy_app
from .commands.weights import weights_app
from .config import Config, UserError, check_output_path, load_config
from .registry import BACKBONES, EXTRACTORS, FEATURE_NETWORKS
from .report.terminal import (PROGRESS_COLUMNS, RichReporter, audit_lines, evaluate_table, partition_table, plural,
                              prdc_note, print_fitting_table, rescore_table, run_start_lines, stop_progress,
                              summary_table, utility_table, written)
from .sweep import PRESETS as _PRESETS

PRESET_NAMES = tuple(_PRESETS)

app = typer_group("Federated generative models (GANs, diffusion models) for medical image synthesis.")
app.add_typer(data_app, name="data")
app.add_typer(deploy_app, name="deploy")
app.add_typer(weights_app, name="weights")


def _version() -> str:
    """fedsynth's version from the installed package's metadata (the source tree's if not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fedsynth")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def _print_version(value: bool) -> None:
    if value:
        console.print(f"fedsynth {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                       help="Print fedsynth's version and exit.")) -> None:
    """Federated generative models (GANs, diffusion models) for medical image synthesis."""


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/NNNN-desc)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
    replay: Optional[Path] = typer.Option(None, "--replay", help="Re-run this recorded run (e.g. a Flower run) in "
                                          "this process with the participation it had, and check that the global "
                                          "weights come out bit-identical; needs --sites."),
    sites: Optional[Path] = typer.Option(None, "--sites", help="With --replay: the folder holding each site's "
                                         "images as client-<id>/ (as fedsynth data split writes them)."),
) -> None:
    """Train a generative model (a GAN, or a diffusion model) federatedly, or a baseline; evaluate it; write a run directory.

    Examples:
      fedsynth run                            # the default: 2 sites, x-rays
      fedsynth run -s fed.strategy=local      # baseline: each hospital alone
      fedsynth run -s model.family=diffusion  # a diffusion model (MONAI UNet)
      fedsynth run -c examples/quick.toml -s fed.rounds=4 -o runs/quick
      fedsynth run --dry-run -s partition.clients=3   # the resolved config
      fedsynth run --resume runs/quick
      fedsynth run --replay runs/flower-demo --sites sites -o runs/check"""
    from .fed.launch import request_stop, rescore_hint, run_inputs, smallest_site_note
    try:
        inputs = run_inputs(config, set_, out, resume, replay, sites)
    except UserError as e:
        fail(str(e))
    cfg, engine = inputs.cfg, inputs.engine
    if inputs.replayed is not None:
        ids, missed = inputs.replayed
        console.print(f"replaying {replay}: {plural(len(ids), 'site')}, {plural(cfg.fed.rounds, 'round')}, "
                      f"{plural(len(missed), 'missed site round')} forced", highlight=False)
    if dry_run:
        console.print(cfg.to_toml(), highlight=False, markup=False)
        return

    from .fed.engine import StopRun
    from .fed.run import in_process, run_experiment
    from .report.html import report_so_far
    from .fed.assembly import threads_for
    from .utils import first_time

    threads = threads_for(cfg, "in-process")  # what build_in_process sets (fed/assembly.py)
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    with Progress(*PROGRESS_COLUMNS, console=console, transient=True, disable=quiet()) as progress:
        reporter = RichReporter(progress, progress.console)

        def started(run_dir, fed, first):
            state.update(run_dir=run_dir, fed=fed)
            reporter.attach_log(run_dir.log_lines)
            info = fed.data_info
            if info.get("skipped"):
                err_console.print(f"[yellow]skipped {len(info['skipped'])} bad file(s)[/] (listed in partition.json), "
                                  f"e.g. {info['skipped'][0]['file']}: {info['skipped'][0]['reason']}", highlight=False)
            if first > 1:
                reporter.say(f"resuming {run_dir.path} after round {first - 1}")
            for line in run_start_lines(cfg, fed, run_dir.path, threads, time.perf_counter() - t0):
                reporter.say(line)
            ev = fed.evaluator
            if ev is not None and getattr(ev.extractor, "notice", "") and first_time(ev.extractor.notice):
                reporter.say(ev.extractor.notice + " (shown once)", "dim")  # the features line names it every run
            if first == 1 and fed.description is not None:
                console.print(partition_table(fed.description[1]))
            note = smallest_site_note(cfg, fed)
            if note:
                reporter.warning(note)
            signal.signal(signal.SIGINT, lambda *_: _stop(fed))

        def _stop(fed):  # first Ctrl-C: finish the current step, then stop cleanly
            if request_stop(fed):
                raise KeyboardInterrupt
            # on the bars' own console: a line above them, not glued to them
            reporter.say("stopping after the current step (Ctrl-C again to abort at once)…", "yellow")

        import signal
        previous = signal.getsignal(signal.SIGINT)
        try:
            out_ = run_experiment(cfg, out, reporter, resume,
                                  engine or in_process(reporter.loading(f"loading {cfg.data.source}")), on_start=started)
        except UserError as e:
            stop_progress(progress)
            fail(str(e))
        except (KeyboardInterrupt, StopRun):
            stop_progress(progress)
            rd = state.get("run_dir")
            if rd is None:
                err_console.print("stopped before the run directory was made: nothing written")
                raise typer.Exit(130)
            report = report_so_far(rd.path)
            err_console.print(f"stopped. Rounds up to the last checkpoint are kept: continue with "
                              f"fedsynth run --resume {rd.path}" + (f"; the report so far: {report} (rewrite it "
                              f"any time with fedsynth report {rd.path})" if report else ""),
                              highlight=False, markup=False)
            raise typer.Exit(130)
        finally:
            signal.signal(signal.SIGINT, previous)
        reporter.finish()
    if out_.result is None:
        console.print(f"{resume} is complete ({out_.resumed_from} of {plural(cfg.fed.rounds, 'round')}); "
                      f"nothing to resume (more rounds: --resume {resume} --set fed.rounds=N)", highlight=False,
                      markup=False)
        return
    result, run_dir = out_.result, out_.run_dir
    if result.metric and any(r["metric"] == result.metric for r in result.records):
        ev = out_.federation.evaluator.extractor
        console.print(summary_table(result.records, ev.metric, ev.kid_metric))
    done = (f"done in {time.perf_counter() - t0:.0f} s (the rounds {result.seconds:.0f} s of it: report.html's "
            f"duration). Results in {run_dir.path}: {', '.join(written(run_dir.path))}")
    console.print(done, highlight=False, markup=False)
    run_dir.log_lines([done])
    cmd = rescore_hint(cfg, out_)
    if cmd:
        console.print(f"to score the last rounds with a trained feature network (fd-effnet) too: {cmd}",
                      highlight=False, markup=False)
    if replay is not None:
        _check_replay(replay, run_dir.path)


def _check_replay(recorded: Path, replayed: Path) -> None:
    """The replay's global weights against the recorded run's, per checkpoint both kept; exit 1 if any differ."""
    from .fed.replay import compare_checkpoints
    rows = compare_checkpoints(recorded, replayed)
    if not rows:
        fail(f"{recorded} and {replayed} kept no checkpoint of the same round: nothing to compare", code=1)
    for row in rows:
        word = "bit-identical" if row["identical"] else f"DIFFERENT (max |difference| {row['max-abs-diff']:.3g})"
        console.print(f"round {row['round']}: global weights {word} to {recorded} ({row['tensors']} tensors)",
                      highlight=False)
    if not all(row["identical"] for row in rows):
        fail("the replay does not reproduce the recorded run (same data, device and library versions?)", code=1)


def _run_quietly(cfg: Config, out: Path, reporter: RichReporter) -> None:
    """One run of a sweep: the same entry point as `fedsynth run`; its bars on the sweep's
    display, its lines in its own log.txt."""
    from .fed.run import run_experiment
    try:
        run_experiment(cfg, out, reporter, on_start=lambda rd, fed, first: reporter.attach_log(rd.log_lines))
    finally:
        reporter.finish(remove=True)


@app.command()
def sweep(
    out: Path = typer.Option(..., "--out", "-o", help="Sweep folder: one run directory per variant + results."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A built-in sweep: " + ", ".join(PRESET_NAMES)
                                         + " (docs: Running a study, Sweeps)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Base TOML config."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Base overrides for every variant."),
    grid: List[str] = typer.Option([], "--grid", "-g", help="key=v1,v2,... (cartesian product over --grid)."),
    variant: List[str] = typer.Option([], "--variant", help="'name: key=value; key=value' (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once (separate processes; cores shared out)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Run every variant with this many seeds (run.seed, "
                                        "run.seed + 1, ...); tables give the mean over seeds with a 95 % interval "
                                        "(default: the preset's, else 1)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="The variant the others are compared with "
                                            "(default: centralized if present, else the first)."),
    rescore: str = typer.Option("auto", "--second-network", help="A second feature network that scores each run's "
                                "last eval.last-k evaluations (auto: effnet-lite0 when installed; none: off)."),
) -> None:
    """Run several configurations and print one comparison table (resumable).

    Examples:
      fedsynth sweep --preset strategies -o runs/sweep-strategies
      fedsynth sweep -o ep -g fed.local-epochs=1,3 -s fed.rounds=5 --seeds 3
      fedsynth sweep -o runs/prox --variant 'prox: fed.strategy=fedprox' -j 2"""
    from .report.terminal import SweepReporter, seconds
    from .sweep import run_sweep, second_network, summarise, sweep_plan
    from .utils import set_torch_threads
    try:
        if jobs < 1:
            raise UserError("--jobs must be at least 1")
        if seeds is not None and seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        check_output_path(out, "--out")
        base, variants, seeds = sweep_plan(preset, set_, variant, grid, seeds)
        base_cfg = load_config(config, base)
        set_torch_threads(base_cfg.train.threads)
        second = second_network(rescore, base_cfg.eval.feature_extractor)
        t0 = time.perf_counter()

        def final(name: str) -> str:
            row = summarise(out / name)
            return f"final {row['global_is']} {row['metric']} {row['global_fd']:.3f} (round {row['round']})"
        with Progress(*PROGRESS_COLUMNS, console=console, transient=True, disable=quiet()) as progress:
            view = SweepReporter(progress, progress.console, final)
            try:
                rows = run_sweep(str(config) if config else None, base, variants, out,
                                 lambda cfg, d: _run_quietly(cfg, d, view.run_reporter(str(d.relative_to(out)))),
                                 jobs=jobs, progress=view, seeds=seeds, reference=reference, rescore=second)
            finally:
                view.finish()
    except UserError as e:
        fail(str(e))
    _print_variants(rows, f"sweep {out} ({seconds(time.perf_counter() - t0)})")
    figures = [out / f for f in ("results.png", "curves.png", "study-grid.png") if (out / f).exists()]
    console.print(f"side by side: {out / 'compare' / 'compare.html'}; tables: {out / 'results.csv'}, "
                  f"{out / 'results.md'}" + (f"; figures: {', '.join(map(str, figures))}" if figures else ""),
                  highlight=False, markup=False)


def _print_variants(rows: list[dict[str, Any]], title: str) -> None:
    """The variants' table over seeds (:func:`fedsynth.sweep.variant_table`) and its notes."""
    from .sweep import table_notes, variant_table
    print_fitting_table(console, title, *variant_table(rows))
    for line in table_notes(rows):
        console.print(line, highlight=False, markup=False)


def _say_model(released) -> None:
    """Which model a command drew from: printed after the checks, so that an error stays the only line."""
    console.print(f"model: {released.which}", highlight=False, markup=False)


@app.command()
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint file or a run directory."),
    round_: Optional[str] = typer.Option(None, "--round", help="Which checkpoint of a run directory: best (default: "
                                         "the best round by the held-out selection score), last, or a kept round "
                                         "number."),
    images: int = typer.Option(64, "--images", "-n", help="Number of images to generate."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNG files (created)."),
    label: Optional[int] = typer.Option(None, "--label", help="Class to generate (conditional models)."),
    client: Optional[str] = typer.Option(None, "--client", help="Use this site's own model (local runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the latent vectors: the same seed gives the same images."),
    spacing: float = typer.Option(0.0, "--spacing", help="Volumes: voxel size in mm written to the NIfTI files "
                                  "(0: the voxel size of the run's data where known, else 1 mm)."),
    n: Optional[int] = old_n(),
) -> None:
    """Write N generated images as PNG files (volumes: NIfTI files with their voxel size).

    Examples:
      fedsynth generate --checkpoint runs/quick -o synth/
      fedsynth generate --checkpoint runs/cond -n 100 --label 1 -o class1/
      (runs/cond: a run with model.conditional=multiply)"""
    from .evaluate.released import generate as draw, write_generated
    n = images if n is None else n
    try:
        if n < 1:
            raise UserError("--images must be at least 1")
        check_output_path(out, "--out")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty")
        released, x = draw(checkpoint, client, round_, n, seed, label)
    except UserError as e:
        fail(str(e))
    _say_model(released)
    volumes = write_generated(x, out, spacing, checkpoint)
    names = released[2]
    what = f"class {label} ({names[label]})" if label is not None and names else ("volumes" if volumes else "images")
    console.print(f"wrote {n} {what} to {out}")


@app.command()
def evaluate(
    real: str = typer.Argument(..., help="Real images: a phantom/sample name or a path."),
    fake: Optional[str] = typer.Argument(None, help="Generated images (a path), or use --checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Generate from this checkpoint instead."),
    round_: Optional[str] = typer.Option(None, "--round", help="Which checkpoint of a run directory: best (default: "
                                         "the best round by the held-out selection score), last, or a kept round "
                                         "number."),
    images: Optional[int] = typer.Option(None, "--images", "-n", show_default=False,
                                         help="Images per set, at most (default 1000; volumes: 64)."),
    size: Optional[int] = typer.Option(None, "--size", show_default=False,
                                       help="Image side in pixels (default: the checkpoint's image size, else 64)."),
    extractor: str = typer.Option("auto", "--extractor", help="Feature network: " + " | ".join(EXTRACTORS.names())
                                  + " (as eval.feature-extractor; volumes: on slices along the three axes)."),
    inception_weights: str = typer.Option("", "--inception-weights", help="Local FID Inception weights file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the numbers as JSON here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image subsets, the KID subsets and (with --checkpoint) "
                             "the generated images."),
    n: Optional[int] = old_n(),
) -> None:
    """Fréchet distance, KID, precision/recall/density/coverage and sliced Wasserstein distance.

    Between two image sets, or between a checkpoint's samples and a data set. A checkpoint that
    makes volumes is scored as a run scores volumes: Fréchet distance and KID per plane (xy, yz,
    zx) of the slices' features, and their mean.

    Examples:
      fedsynth evaluate phantom-xray --checkpoint runs/quick
      fedsynth evaluate /data/real_pngs /data/fake_pngs --size 64 -o fd.json"""
    from .evaluate.released import score_images
    n = images if n is None else n
    try:
        if (fake is None) == (checkpoint is None):
            raise UserError("give either FAKE (a path) or --checkpoint")
        if out is not None:
            check_output_path(out, "--out", folder=False, example="numbers.json")
        scores = score_images(real, fake, checkpoint, round_, n, size, extractor, inception_weights, seed,
                              load_with_progress)
    except UserError as e:
        fail(str(e))
    if scores.released is not None:
        _say_model(scores.released)
    if getattr(scores.extractor, "notice", ""):  # --extractor auto: say which network it picked, and how to get another
        console.print(scores.extractor.notice, style="dim", highlight=False, markup=False)
    res = scores.numbers
    console.print(evaluate_table(res, f"{res['fake']} vs {real}"))
    for c in scores.caveats:
        err_console.print(f"[yellow]warning:[/] {escape(c)}", highlight=False)
    note = prdc_note(res)
    if note:
        console.print(note, style="dim", highlight=False, markup=False)
    if out:
        from .utils import atomic_write_text
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
        console.print(f"wrote {out}")


@app.command()
def audit(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint file or a run directory."),
    round_: Optional[str] = typer.Option(None, "--round", help="Which checkpoint of a run directory: best (default: "
                                         "the best round by the held-out selection score), last, or a kept round "
                                         "number."),
    train: str = typer.Option(..., "--train", help="The images the model was trained on (name or path)."),
    held: str = typer.Option(..., "--held", help="Held-out images of the same distribution (name or path)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the audit (JSON, closest pairs, PCA plot)."),
    images: int = typer.Option(500, "--images", "-n", help="Number of images to generate and audit."),
    train_set: List[str] = typer.Option([], "--train-set", help="Overrides for reading --train (e.g. data.num-images=64)."),
    held_set: List[str] = typer.Option([], "--held-set", help="Overrides for reading --held (e.g. run.seed=99)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated images and of the audit's sampling."),
    extractor: str = typer.Option("random", "--extractor", help="Volumes: the 2-D feature network their slices go "
                                  "through: " + " | ".join(FEATURE_NETWORKS) + "."),
    n: Optional[int] = old_n(),
) -> None:
    """Memorisation (nearest training vs held-out image), diversity and a PCA plot. Volumes are
    compared per plane (xy, yz, zx) in a feature network's space of their slices (--extractor).

    Examples:
      fedsynth audit --checkpoint runs/quick --train phantom-xray \\
          --held phantom-xray --held-set run.seed=99 -o audit/"""
    from .evaluate.released import audit as audit_released
    n = images if n is None else n
    try:
        check_output_path(out, "--out")
        released, res = audit_released(checkpoint, round_, train, held, train_set, held_set, n, seed, out,
                                       load_with_progress, extractor)
    except UserError as e:
        fail(str(e))
    _say_model(released)
    for line in audit_lines(res, n, out):
        console.print(line, highlight=False)


@app.command()
def utility(
    run_dir: Path = typer.Argument(..., help="A run directory: its released model makes the synthetic images."),
    real_train: str = typer.Option(..., "--real-train", help="Real training images: a phantom/sample name or a path."),
    real_test: str = typer.Option(..., "--real-test", help="Held-out real test images (name or path), the "
                                  "same classes as --real-train."),
    classifier: str = typer.Option("smallcnn", "--classifier", help="smallcnn, or a backbone: "
                                   + " | ".join(BACKBONES.names()) + "."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start the backbone from ImageNet weights in its "
                                    "library's cache (`fedsynth weights fetch NAME`; never downloads)."),
    epochs: int = typer.Option(5, "--epochs", help="Passes over each training set."),
    min_steps: int = typer.Option(300, "--min-steps", help="...but at least this many steps, so a small real set "
                                  "is not under-trained beside a large one."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", show_default=False, help="Synthetic images "
                                            "(default: as many as real training images), per class in the real "
                                            "training set's proportions."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="The study's random crops, flips and "
                                 "rotations up to 45 degrees while training."),
    train_set: List[str] = typer.Option([], "--train-set", help="Overrides for reading --real-train "
                                        "(e.g. data.num-images=200)."),
    test_set: List[str] = typer.Option([], "--test-set", help="Overrides for reading --real-test (e.g. run.seed=99: "
                                       "other phantoms than the training ones)."),
    tsne_points: int = typer.Option(300, "--tsne-points", help="Real and synthetic images (each) in the t-SNE "
                                    "figure; 0: no figure."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda or cuda:N."),
    client: Optional[str] = typer.Option(None, "--client", help="Use this site's own model (runs without a "
                                         "global one: local, ensemble)."),
    round_: Optional[str] = typer.Option(None, "--round", help="Which checkpoint of a run directory: best (default: "
                                         "the best round by the held-out selection score), last, or a kept round "
                                         "number."),
    seed: int = typer.Option(0, "--seed", help="Seed of every draw: synthetic latents, classifier weights, "
                             "data order, augmentations, the t-SNE subsets."),
    seeds: int = typer.Option(3, "--seeds", help="Train each arm this many times (seeds SEED, SEED+1, ...): the "
                              "table gives the mean and its 95 % interval; fewer than 3 give no conclusion."),
) -> None:
    """Train a classifier on real, synthetic and real + synthetic images; score it on real ones.

    Each arm is trained --seeds times and scored (accuracy, macro F1: mean and 95 % interval) on the
    held-out --real-test images, beside the chance level (always answering the most common class); a
    synthetic arm whose interval overlaps the real-only arm's reads "cannot tell". A class-conditional
    run generates its images per class, with the real training set's class balance; an unconditional
    run's images have no labels, so its synthetic arms are skipped (the table says why). Writes
    RUN_DIR/utility/ (utility.json, utility.csv, utility.md; each classifier adds its rows), a t-SNE
    figure of real vs synthetic features (utility/tsne.png) and a section of report.html.

    Examples:
      fedsynth utility runs/cond --real-train phantom-ct \\
          --real-test phantom-ct --test-set run.seed=99
      fedsynth utility runs/cond --real-train /data/train \\
          --real-test /data/test --classifier resnet18 --pretrained"""
    from .evaluate.utility import UtilitySettings, check_options, format_score, run_utility, utility_data

    def warn(message: str) -> None:
        err_console.print(f"[yellow]{message}[/]", highlight=False)
    try:
        dev = check_options(run_dir, classifier, pretrained, epochs, min_steps, tsne_points, synthetic, seeds, device)
        released, train, test = utility_data(run_dir, client, round_, real_train, real_test, train_set, test_set,
                                             classifier, pretrained, load_with_progress, warn)
    except UserError as e:
        fail(str(e))
    _say_model(released)

    settings = UtilitySettings(classifier, pretrained, epochs, min_steps, augment=augment, synthetic=synthetic,
                               seed=seed, device=dev, seeds=seeds)
    t0 = time.perf_counter()
    with Progress(*PROGRESS_COLUMNS, console=console, transient=True, disable=quiet()) as progress:
        tasks: dict[str, Any] = {}

        def show(what: str, done: int, total: int) -> None:
            if what not in tasks:
                for t in tasks.values():
                    progress.update(t, visible=False)
                tasks[what] = progress.add_task(what if total else what + "…", total=total or None)
            progress.update(tasks[what], completed=done)

        sources = {"real_train": real_train, "train_set": train_set, "real_test": real_test, "test_set": test_set}
        done = run_utility(run_dir, released, train, test, settings, tsne_points, sources, client, show, warn)
    title = f"downstream utility: {done.key} on {len(test)} held-out real images ({real_test}), {plural(seeds, 'seed')}"
    console.print(utility_table(done.result.rows, done.result.settings["chance"], title, format_score))
    console.print(("mean over seeds [95 % interval]; \"cannot tell\": the interval overlaps real only's"
                   if seeds >= 2 else "1 seed: no interval, so no arm can be told from another (use --seeds 3)"),
                  highlight=False, markup=False, style="dim")
    if not released[0].conditional:
        console.print(f"synthetic arms skipped: {done.result.rows[-1]['skipped']}", highlight=False, markup=False,
                      soft_wrap=True)
    files = "utility.json, utility.csv, utility.md" + (", tsne.png" if done.tsne else "")
    console.print(f"done in {time.perf_counter() - t0:.0f} s. Wrote {done.out}/: {files}; report: "
                  f"{run_dir / 'report.html'}", highlight=False, markup=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """(Re)write RUN_DIR/report.html: one self-contained page with everything about a run.

    Examples:
      fedsynth report runs/quick"""
    from .report.html import build_report
    if not (run_dir / "metrics.jsonl").is_file():
        fail(f"{run_dir} is not a run directory (no metrics.jsonl)")
    try:
        check_output_path(run_dir / "report.html", "RUN_DIR", folder=False)
    except UserError as e:
        fail(str(e))
    console.print(f"wrote {build_report(run_dir)}")


@app.command()
def rescore(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    extractor: str = typer.Option("effnet-lite0", "--extractor", help="The feature network to score with: "
                                  + " | ".join(FEATURE_NETWORKS) + "."),
    last_k: Optional[int] = typer.Option(None, "--last-k", help="Score the kept checkpoints among this many last "
                                         "evaluated rounds (default: the run's eval.last-k)."),
) -> None:
    """Score a finished run again with another feature network (default: the trained offline
    EfficientNet-Lite0, fd-effnet), exactly as the run scored itself: the same real and held-out
    images and the same fixed latents, for each kept checkpoint among its last evaluated rounds.

    Writes RUN_DIR/rescore.jsonl (the run's own files stay as they were) and adds the scores to
    its report.html.

    Examples:
      fedsynth rescore runs/quick"""
    from .fed.rescore import check_rescore, rescore_run
    from .report.html import build_report
    try:
        check_rescore(run_dir, extractor, last_k)
        check_output_path(run_dir / "rescore.jsonl", "RUN_DIR", folder=False)
        with console.status(f"scoring {run_dir} with {extractor}…"):
            records = rescore_run(run_dir, extractor, last_k)
    except UserError as e:
        fail(str(e))
    console.print(rescore_table(records))
    console.print(f"wrote {run_dir / 'rescore.jsonl'} and {build_report(run_dir)}", highlight=False, markup=False)


@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories to compare, in the order to show them."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="The run every ratio divides by (added if not "
                                            "listed; default: the first centralized run, else the first run)."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Folder for compare.html, compare.csv and "
                             "figures/ (created; files there are replaced)."),
    title: str = typer.Option("", "--title", help="Page title (default: the number of runs)."),
) -> None:
    """Compare runs side by side: curves per metric, a final-metric table, sample grids.

    Writes OUT/compare.html (one self-contained page), OUT/compare.csv (each run's final value
    of every metric and its ratio to the baseline) and OUT/figures/*.png (the runs' curves of
    one metric overlaid, per feature network: distances from different networks are never
    drawn on one axis). Sweeps write one for their variants (SWEEP/compare/). A folder of
    seeded runs (a sweep's SWEEP/<variant>/ with seed-*/) is one setting: its curve is the mean
    over the seeds with a shaded 95 % interval (OUT/bands.csv), and OUT/seeds.md compares the
    settings with intervals and paired ratios.

    Examples:
      fedsynth compare runs/0001-fedavg runs/0002-local -o runs/cmp
      fedsynth compare runs/sw/fedavg runs/sw/fedprox --baseline runs/sw/local
      fedsynth compare runs/a runs/b --title 'FedAvg vs FedProx'"""
    from .sweep import compare_runs
    try:
        check_output_path(out, "--out")
        page, rows = compare_runs(list(run_dirs), out, baseline, title,
                                  warn=lambda w: err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False))
    except UserError as e:
        fail(str(e))
    if rows:
        _print_variants(rows, "over seeds")
    console.print(f"wrote {page} (and {out / 'compare.csv'}" + (f", {out / 'figures'}/" if (out / "figures").is_dir()
                                                                 else "")
                  + (f", {out / 'seeds.md'}, {out / 'curves.png'}" if rows else "") + ")", highlight=False)


def main() -> None:
    try:
        app()
    except UserError as e:  # any user error that escaped a command
        err_console.print(f"[bold red]error:[/] {escape(str(e).splitlines()[0])}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
