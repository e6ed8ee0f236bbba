"""What a run shows in the terminal (rich): progress, one fixed line per round, tables.

A run prints a short legend, a header and then one line per round whose columns are fixed at
the start of the run (by the engine's :class:`fedsynth.fed.engine.RunPlan`), so they never move
and never depend on the number of sites::

    round    global  site mean  site worst  losses (mean)      train    eval
      0/3     30.12      30.12       30.39  —                      —    4.1s
      1/3     30.16      30.16       30.42  D 1.31  G 0.65      1.2s   13.4s

Each site's own numbers go to the run directory's ``log.txt`` (and ``metrics.jsonl``), not to
the screen. Bars live only while they move; long steps without progress of their own (loading
the feature network, the real-data statistics) show a spinner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

from ..utils import plural
from .meanings import PRDC_MEANING


Record = dict[str, Any]
MISSING = "—"   # a value that does not exist (not evaluated this round, no reference run, ...)
WIDTH = 80      # every line this module prints fits a terminal this wide


def seconds(s: float | None) -> str:
    """A duration for a narrow column: ``0.4s``, ``13.4s``, ``2m05s``, ``1h02m``."""
    if s is None:
        return MISSING
    if s < 99.95:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _number(v: float | None) -> str:
    if v is None:
        return MISSING
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"


def loss_label(metric: str) -> str:
    """``d-loss`` -> ``D``, ``g-loss`` -> ``G``, ``loss`` -> ``loss``."""
    return metric[:-5].upper() if metric.endswith("-loss") else metric


def is_loss(metric: str) -> bool:
    return metric == "loss" or metric.endswith("-loss")


def _mean(vals: Sequence[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


class RoundLine:
    """The per-round line: columns fixed by the run's plan, whatever the records of a round.

    Parameters
    ----------
    plan : fedsynth.fed.engine.RunPlan
        ``rounds``, ``clients``, ``metric``, ``scores`` ("global", "local" or ""), ``per_site``.
    """

    def __init__(self, plan: Any):
        self.plan = plan
        self.metric = plan.metric
        r = max(5, len(f"{plan.rounds}/{plan.rounds}"))
        cols: list[tuple[str, int]] = [("round", r)]
        if plan.scores == "global":
            cols.append(("global", 8))
            if plan.per_site:
                cols += [("site mean", 9), ("site worst", 10)]
        elif plan.scores == "local":
            cols += [("local mean", 10), ("local worst", 11)]
        cols += [("losses (mean)", -16), ("train", 7)] + ([("eval", 7)] if plan.scores else [])  # < 0: left
        self.cols = cols

    # ---- text
    def _row(self, cells: Sequence[str]) -> str:
        out = []
        for (_, w), c in zip(self.cols, cells):
            out.append(c.ljust(-w) if w < 0 else c.rjust(w))
        return "  ".join(out).rstrip()

    def header(self) -> str:
        return self._row([name for name, _ in self.cols])

    def legend(self) -> list[str]:
        """What the columns mean, in lines that fit the terminal."""
        p = self.plan
        lines = []
        if p.scores == "global":
            site = (f"; site mean / worst: against each of the {plural(p.clients, 'site')}' own data"
                    if p.per_site else "")
            lines.append(f"{p.metric} (lower is better). global: the global model against all "
                         f"sites' data{site}.")
        elif p.scores == "local":
            lines.append(f"{p.metric} (lower is better) of each site's own model against all sites' "
                         f"data: mean and worst over the {plural(p.clients, 'site')}.")
        else:
            lines.append("evaluation is off (eval.enabled = false): losses and training time only.")
        lines.append("losses: mean over the sites that trained. train / eval: seconds of the round "
                     "spent training (with aggregation) and evaluating (scores, sample grid)."
                     if p.scores else "losses: mean over the sites that trained. train: seconds of the round "
                     "spent training (with aggregation).")
        return [w for line in lines for w in _wrap(line)]

    def values(self, r: int, records: list[Record], timing: Record | None) -> list[str]:
        """The cells of round ``r``."""
        p, m = self.plan, self.metric
        cells = [f"{r}/{p.rounds}"]
        fd = [x for x in records if x["metric"] == m]
        if p.scores == "global":
            cells.append(_number(_mean([x["value"] for x in fd if x["client"] == "global"
                                        and x.get("real") == "union"])))
            if p.per_site:
                by = {x["metric"]: x["value"] for x in records if x["client"] == "global" and x.get("real") == "sites"}
                cells += [_number(by.get(f"{m}-sites-mean")), _number(by.get(f"{m}-sites-worst"))]
        elif p.scores == "local":
            own = [x["value"] for x in fd if x["client"] != "global" and x.get("real") == "union"]
            cells += [_number(_mean(own)), _number(max(own) if own else None)]
        losses: dict[str, list[float]] = {}
        for x in records:
            if is_loss(x["metric"]) and x["client"] not in ("global", "server"):  # the sites' (fed.server-data: not the server's)
                losses.setdefault(x["metric"], []).append(x["value"])
        text = "  ".join(f"{loss_label(k)} {_number(_mean(v))}" for k, v in sorted(losses.items()))
        cells.append(text or MISSING)
        t = timing or {}
        cells.append(seconds(t["train_s"]) if r > 0 and "train_s" in t else MISSING)
        if p.scores:
            cells.append(seconds(t["eval_s"]) if t.get("eval_s") else MISSING)
        return cells

    def line(self, r: int, records: list[Record], timing: Record | None = None) -> str:
        return self._row(self.values(r, records, timing))


def describe(x: Record) -> str:
    """Who was scored against what, in words: ``global model on site 0``, ``site 1's model on
    all sites``, ``site 0`` (a record with no ``real``, e.g. a loss)."""
    who, real = str(x["client"]), x.get("real")
    if who == "server":  # the server's own training (fed.server-data)
        return "the server"
    if who == "global":
        if real == "holdout":
            return "global model on held-out images"
        return "global model on all sites" if real in (None, "union", "global") else f"global model on site {real}"
    if real is None:
        return f"site {who}"
    where = {"union": "all sites", "holdout": "held-out images", who: "its data"}.get(real, f"site {real}")
    return f"site {who}'s model on {where}"


def _site_key(cid: Any) -> tuple:
    s = str(cid)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def _detail_key(x: Record) -> tuple:
    who, real = str(x["client"]), x.get("real")
    rank = (0 if real in (None, "union", "global", "holdout") else 1) if who == "global" else (2 if real in (None, who) else 3)
    return (rank, _site_key(real if who == "global" else who))


def _precise(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"


def details(r: int, records: list[Record]) -> list[str]:
    """Every value of round ``r``, one metric a line in a fixed order (losses, then scores;
    the global model, then each site), each named in words: for the run's ``log.txt``."""
    groups: dict[str, list[tuple[tuple, str]]] = {}
    for x in records:
        m, v = x["metric"], x.get("value")
        if m == "rejected":
            groups.setdefault(m, []).append((_site_key(x["client"]), f"site {x['client']}: {x.get('reason', '')}"))
        elif m == "bytes-sent" or not isinstance(v, (int, float)):
            continue
        elif "-sites-" in m:   # the global model's mean / worst / best over the sites
            base, stat = m.rsplit("-sites-", 1)
            order = {"mean": 0, "worst": 1, "best": 2}.get(stat, 3)
            groups.setdefault(f"{base} over sites", []).append(((order,), f"{stat} {_precise(v)}"))
        else:
            groups.setdefault(m, []).append((_detail_key(x), f"{describe(x)} {_precise(v)}"))
    names = sorted(groups, key=lambda m: (not is_loss(m), m))
    return [f"  round {r} {m}: " + "; ".join(t for _, t in sorted(groups[m], key=lambda e: e[0])) for m in names]


def _wrap(text: str, width: int = WIDTH - 1) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width) or [""]


class _Count(MofNCompleteColumn):
    """``12/60`` for a bar; nothing for a spinner (no total)."""

    def render(self, task):
        return super().render(task) if task.total is not None else Text("")


class _Eta(ProgressColumn):
    """``eta 0:01:02`` for a bar, from the mean time per step since the bar started, so it shows
    after the first round (rich's own estimate needs two updates within 30 s: never, for rounds
    longer than that); nothing for a spinner (no total). A bar that started part-way (a resumed
    run) gives its starting count as the ``done0`` field."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.remaining = TimeRemainingColumn()

    def render(self, task):
        if task.total is None:
            return Text("")
        done = task.completed - task.fields.get("done0", 0)
        if task.finished or not done or not task.elapsed:
            return Text.assemble("eta ", self.remaining.render(task))
        from datetime import timedelta
        left = task.elapsed / done * max(0.0, task.total - task.completed)
        return Text.assemble("eta ", Text(str(timedelta(seconds=int(left))), style="progress.remaining"))


# a long description is cut short (…) rather than wrapping the bars at 80 columns
PROGRESS_COLUMNS = (SpinnerColumn(), TextColumn("{task.description}", table_column=Column(
                        no_wrap=True, overflow="ellipsis", max_width=40)),
                    BarColumn(bar_width=16), _Count(table_column=Column(no_wrap=True)),
                    TimeElapsedColumn(table_column=Column(no_wrap=True)), _Eta())


class RichReporter:
    """The run's progress on a rich ``Progress`` (bars only while they move) and its story on
    ``console``: legend, header, one fixed line per round, warnings.

    Parameters
    ----------
    progress : rich.progress.Progress
        Shows the bars; make it ``transient`` so that none is left on screen at the end.
    console : rich.console.Console
        Where lines go (``progress.console`` prints them above the bars).
    prefix : str
        Put before the rounds bar's and the loading bar's description (a sweep: ``"fedprox (2/7) · "``).
    """

    def __init__(self, progress: Progress, console: Console, prefix: str = ""):
        self.p, self.c, self.prefix = progress, console, prefix
        self.layout: RoundLine | None = None
        self.round = 0
        self.rounds_task = self.step_task = self.wait_task = None
        self.waiting = False            # the spinner is up (a long step or an evaluation)
        self._log: Callable[[list[str]], None] | None = None
        self._pending: list[str] = []   # lines said before the log was attached

    # ---- lines (screen and log)
    def attach_log(self, write: Callable[[list[str]], None]) -> None:
        """Send every line (and each round's details) to ``write`` too, e.g. ``RunDir.log_lines``."""
        self._log = write
        if self._pending:
            write(self._pending)
            self._pending = []

    def log(self, lines: list[str]) -> None:
        if self._log is not None:
            self._log(lines)
        else:
            self._pending += lines

    def say(self, text: str, style: str = "") -> None:
        """Print ``text`` (plain, not markup) and log it."""
        self.c.print(text, style=style or None, highlight=False, markup=False)
        self.log([text])

    # ---- bars
    def _waiting(self, description: str) -> None:
        """A spinner with elapsed time for a step that reports no progress of its own."""
        if self.step_task is not None:
            self.p.update(self.step_task, visible=False)
        if self.wait_task is None:
            self.wait_task = self.p.add_task(description, total=None)
        self.p.reset(self.wait_task, total=None, description=description, visible=True)
        self.waiting = True

    def _hide(self, *tasks) -> None:
        for t in tasks:
            if t is not None:
                self.p.update(t, visible=False)
            if t is not None and t == self.wait_task:
                self.waiting = False

    def loading(self, description: str) -> Callable[[int, int], None]:
        """A progress callback ``(done, total)`` for loading the data, shown as a bar."""
        task = self.p.add_task(self.prefix + description, total=None)
        self.step_task = task

        def update(done: int, total: int) -> None:
            self.p.update(task, completed=done, total=total)
        return update

    def busy(self, what: str) -> None:
        self._waiting(what + "…")

    def run_start(self, plan: Any) -> None:
        for t in (self.step_task, self.wait_task):   # the loading bar and the set-up spinner: done
            if t is not None:
                self.p.remove_task(t)
        self.step_task = self.wait_task = None
        self.waiting = False
        self.layout = RoundLine(plan)
        for line in self.layout.legend():
            self.say(line, "dim")
        self.say(self.layout.header(), "bold")
        self.rounds_task = self.p.add_task(self.prefix + "rounds", total=plan.rounds, completed=plan.first - 1,
                                           done0=plan.first - 1)
        if 0 in plan.eval_rounds and plan.first == 1:
            self.round = 0
            self._waiting("round 0: evaluating the untrained model")

    def round_start(self, r: int, clients: Sequence[str], total_steps: int) -> None:
        self.round = r
        self._hide(self.wait_task)
        what = f"round {r}: training {plural(len(clients), 'site')}"
        if self.step_task is None:
            self.step_task = self.p.add_task(what, total=total_steps)
        self.p.reset(self.step_task, total=total_steps, description=what, visible=True)

    def step(self) -> None:
        if self.step_task is None:
            return
        if self.waiting:                        # training goes on after a site's evaluation
            self._hide(self.wait_task)
            self.waiting = False
            self.p.update(self.step_task, visible=True)
        self.p.advance(self.step_task)

    def evaluating(self, what: str) -> None:
        self._waiting(f"round {self.round}: evaluating {what}")

    def warning(self, text: str) -> None:
        self.c.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)
        self.log([f"warning: {text}"])

    def round_end(self, r: int, records: list[Record], timing: Record | None = None) -> None:
        self._hide(self.step_task, self.wait_task)
        if self.rounds_task is not None and r > 0:
            self.p.update(self.rounds_task, completed=r)
        if self.layout is not None:
            self.c.print(self.layout.line(r, records, timing), highlight=False, markup=False)
            self.log([self.layout.line(r, records, timing)] + details(r, records))

    def finish(self, remove: bool = False) -> None:
        """Take this run's bars off the screen (the run ended, stopped or failed); ``remove``
        drops them for good (a sweep's next variant brings its own)."""
        for t in (self.rounds_task, self.step_task, self.wait_task):
            if t is not None and t in self.p.task_ids:
                self.p.remove_task(t) if remove else self.p.update(t, visible=False)


class SweepReporter:
    """A sweep's progress: one bar over the variants, the running variants' rounds, and one
    line per finished variant with its final score (``summary(name)``).

    It implements :class:`fedsynth.sweep.SweepProgress`; :meth:`run_reporter` gives the
    :class:`RichReporter` of a variant run in this process (its bars, prefixed by its name;
    its lines go only to its run directory's ``log.txt``)."""

    def __init__(self, progress: Progress, console: Console, summary: Callable[[str], str]):
        self.p, self.c, self.summary = progress, console, summary
        self.total, self.count = 0, 0
        self.rounds_of: dict[str, int] = {}
        self.tasks: dict[str, Any] = {}
        self.overall = None

    def planned(self, todo: list[tuple[str, int]], reused: list[str]) -> None:
        self.total, self.rounds_of = len(todo), dict(todo)
        if reused:
            self.c.print(f"reusing {plural(len(reused), 'finished variant')}: {', '.join(reused)}", highlight=False,
                         markup=False)
        if todo:
            self.c.print(f"running {plural(len(todo), 'variant')}: {', '.join(n for n, _ in todo)}", highlight=False,
                         markup=False)
            self.overall = self.p.add_task("variants", total=len(todo))

    def started(self, name: str) -> None:
        self.count += 1
        self.tasks[name] = None

    def label(self, name: str) -> str:
        k = list(self.rounds_of).index(name) + 1 if name in self.rounds_of else self.count
        return f"{name} ({k}/{self.total})"

    def rounds(self, name: str, done: int, total: int) -> None:
        if self.tasks.get(name) is None:
            self.tasks[name] = self.p.add_task(f"{self.label(name)} rounds", total=total, done0=done)  # resumed: done
        self.p.update(self.tasks[name], completed=done)

    def run_reporter(self, name: str) -> RichReporter:
        return RichReporter(self.p, Console(quiet=True), prefix=f"{self.label(name)} · ")

    def finished(self, name: str, ok: bool, secs: float) -> None:
        t = self.tasks.pop(name, None)
        if t is not None:
            self.p.remove_task(t)
        if self.overall is not None:
            self.p.advance(self.overall)
        if ok:
            self.c.print(f"✓ {self.label(name)} in {seconds(secs)}: {self.summary(name)}", highlight=False,
                         markup=False)
        else:
            self.c.print(f"✗ {self.label(name)} failed after {seconds(secs)}", style="red", highlight=False,
                         markup=False)

    def finish(self) -> None:
        if self.overall is not None:
            self.p.remove_task(self.overall)


def summary_table(records: list[Record], metric: str, kid_metric: str, max_sites: int = 8) -> Table:
    """The first and last score of each model, named in words; with more than ``max_sites``
    sites the per-site rows give way to the sites' mean and worst (all in ``log.txt``)."""
    from .plots import fd_series
    fd, kid = fd_series(records, metric), fd_series(records, kid_metric)
    for stat in ("mean", "worst"):
        s = [v for v in fd_series(records, f"{metric}-sites-{stat}").values()]
        if s:
            fd[f"global sites {stat}"] = s[0]
            kid[f"global sites {stat}"] = next(iter(fd_series(records, f"{kid_metric}-sites-{stat}").values()), [])
    sites = {k for k in fd if not k.startswith("global")}
    t = Table(title=f"{metric} (lower is better)")
    for col in ("model, data", "before", "final", "change", kid_metric):
        t.add_column(col, justify="left" if col == "model, data" else "right")

    def order(s: str) -> tuple:
        return (not s.startswith("global"), s != "global", "sites" not in s, s)
    for w in sorted(fd, key=order):
        if len(sites) > max_sites and (w in sites or w.startswith("global on")):
            continue
        (_, v0), (r1, v1) = fd[w][0], fd[w][-1]
        change = f"{(v1 - v0) / v0 * 100:+.1f}%" if v0 else MISSING
        k = dict(kid.get(w, [])).get(r1)
        t.add_row(_row_name(w), f"{v0:.3f}", f"{v1:.3f} (r{r1})", change, MISSING if k is None else f"{k:.4f}")
    return t


def rescore_table(records: list[Record]) -> Table:
    """The global model's scores by a second feature network (``fedsynth rescore``), one row per
    rescored round: against all sites' training images, against their held-out images (when the
    run kept some), and its KID."""
    from .plots import rescored_rows
    metric, kid_metric, held, rows = rescored_rows(records)
    t = Table(title=f"{metric or 'fd'} of the global model (lower is better)")
    for col in ("round", "all sites", *(["held-out images"] if held else []), kid_metric or "kid"):
        t.add_column(col, justify="right")
    for r, union, holdout, k in rows:
        cells = [union] + ([holdout] if held else [])
        t.add_row(str(r), *(MISSING if v is None else f"{v:.3f}" for v in cells), MISSING if k is None else f"{k:.4f}")
    return t


def _row_name(series: str) -> str:
    if series == "global":
        return "global, all sites"
    if series == "global sites worst":  # the worst site of each round: not always the same site
        return "global, worst site each round"
    if series.startswith("global sites "):
        return f"global, {series.rsplit(' ', 1)[-1]} over sites"
    if series == "global on holdout":  # the sites' held-out images: never trained on
        return "global, held-out images"
    if series.startswith("global on "):
        return f"global, site {series[len('global on '):]}"
    if series.endswith(" on union"):
        return f"site {series[:-len(' on union')]}'s model, all sites"
    if series.endswith(" on holdout"):
        return f"site {series[:-len(' on holdout')]}'s model, held-out images"
    return f"site {series}'s model, its data"


def written(run_dir: Path, names: Sequence[str] = ("report.html", "metrics.jsonl", "log.txt", "fd.png",
                                                  "samples/", "checkpoints/")) -> list[str]:
    """Those of ``names`` that exist in ``run_dir`` (a folder, ``name/``, only if not empty)."""
    out = []
    for n in names:
        p = run_dir / n.rstrip("/")
        if (p.is_dir() and any(p.iterdir())) if n.endswith("/") else p.is_file():
            out.append(n)
    return out


def value(v: float | None, digits: int = 2) -> str:
    """A number for a table, or ``—`` when there is none (never ``nan``: e.g. a ratio to a
    reference run the sweep does not have)."""
    return MISSING if v is None or v != v else f"{v:.{digits}f}"


def prdc_note(res: dict[str, Any], k: int = 5) -> str | None:
    """Why precision/recall/density/coverage are 0 (``None`` when none is): the measured
    distances of :func:`fedsynth.metrics.prdc.prdc_scales` from ``res``."""
    zero = [m for m in ("precision", "recall", "density", "coverage") if res.get(m) == 0.0]
    if not zero:
        return None
    radius, near = res.get("knn-radius-real"), res.get("nearest-real-distance")
    measured = (f"; here the real balls' median radius is {radius:.3g} and a generated image lies a median "
                f"{near:.3g} from the nearest real one" if radius is not None and near is not None else "")
    return (f"{'/'.join(zero)} {'is' if len(zero) == 1 else 'are'} 0. In feature space, precision and density "
            f"count generated images inside a real image's {k}-nearest-neighbour ball, recall and coverage real "
            f"images matched by a generated one{measured}. A difference every generated image shares (blur, "
            f"noise, texture, too little variety) leaves them outside every ball, while the Fréchet distance "
            f"compares only means and covariances and can stay small.")


def partition_table(part: dict[str, Any]) -> Table:
    names = part["class_names"]
    t = Table(title=f"partition: {part.get('scheme', '')}", caption="images per site and class")
    t.add_column("site")
    t.add_column("images", justify="right")
    for c in names:
        t.add_column(str(c), justify="right")
    settings = any(info.get("settings") for info in part["clients"].values())
    if settings:  # [sites.<id>]: which site ran what
        t.add_column("own settings")
    for cid, info in part["clients"].items():
        t.add_row(cid, str(info["images"]), *(str(v) for v in info["class_counts"]),
                  *([site_settings(info.get("settings"))] if settings else []))
    server = part.get("server")
    if server:  # fed.server-data
        # its class counts under the sites' class names only where it has the same classes
        counts = list(server.get("class_counts", [])) if server.get("class_names", names) == names else []
        t.add_row("server", str(server["images"]), *(str(v) for v in (counts + [""] * len(names))[:len(names)]),
                  *([f"{server['steps']} steps a round"] if settings else []))
    return t


def site_settings(settings: dict[str, Any] | None) -> str:
    """A site's own settings in one line: ``model.ndf=32 train.batch-size=8`` (``-``: the run's)."""
    return " ".join(f"{k}={v}" for k, v in (settings or {}).items()) or "-"


def model_line(cfg: Any) -> str:
    """The run header's model line, in the run's own family's words (its config_line)."""
    from ..config import tomllib
    from .html import family_of
    tree = tomllib.loads(cfg.to_toml())
    return family_of(tree).config_line(tree)


def audit_lines(res: Any, n: int, out: Any) -> list[str]:
    """``fedsynth audit``'s lines (rich markup): the verdict and its statistics; for volumes the
    feature network and one line per plane; where the pictures are."""
    verdict = "[bold red]MEMORISATION SUSPECTED[/]" if res.flagged else "[green]no memorisation detected[/]"
    if not hasattr(res, "planes"):
        return [f"{verdict}: {res.nearer_train_fraction:.1%} of samples are nearer a training image than any held-out "
                f"image (≈50% expected); median distance ratio train/held-out {res.median_ratio:.3f}; diversity "
                f"ratio {res.diversity_ratio:.2f}; {res.distinct_nn_fraction:.1%} of training images are a sample's "
                f"nearest neighbour", f"closest pairs: {out / 'closest-pairs.png'}; PCA: {out / 'embedding-pca.png'}"]
    which = f" on {', '.join(res.flagged_planes)}" if res.flagged else " on any plane"
    return [f"{verdict}{which}: {n} generated volumes, nearest neighbours per plane in the feature space of "
            f"{res.extractor}, each volume {res.slices} slices per plane (≈50% nearer a training volume expected; "
            f"flagged above 75% or below a median ratio of 0.5)",
            *(f"  {p}: {r.nearer_train_fraction:.1%} nearer a training volume than any held-out one; median distance "
              f"ratio train/held-out {r.median_ratio:.3f}; diversity ratio {r.diversity_ratio:.2f}; "
              f"{r.distinct_nn_fraction:.1%} of training volumes are a nearest neighbour"
              f"{'  [red]flagged[/]' if r.flagged else ''}" for p, r in res.planes.items()),
            f"closest pairs ({res.telling_plane} plane; orthogonal mid-slices, generated over training): "
            f"{out / 'closest-pairs.png'}; PCA: {out / 'embedding-pca.png'}; per plane: {out / 'audit.json'}"]


def run_start_lines(cfg: Any, fed: Any, path: Any, threads: int, ready_s: float) -> list[str]:
    """What ``fedsynth run`` says as a run starts: where it writes, the data and its sites, the
    model in its family's words, the feature network and the threads."""
    info = fed.data_info
    ev = fed.evaluator
    item, side = ("volume", f"{info.get('size', '?')}³ voxels") if cfg.data.dims == 3 else \
        ("image", f"{info.get('size', '?')} px")
    images = plural(info["images"], item) if "images" in info else f"? {item}s"
    return [f"fedsynth run → {path}",
            f"  {cfg.data.source}: {images} of {side}, {plural(len(fed.pool.ids), 'site')} ({cfg.partition.scheme}), "
            f"strategy {cfg.fed.strategy}, {plural(cfg.fed.rounds, 'round')}",
            f"  model: {model_line(cfg)}",
            f"  features: {ev.extractor.name if ev else 'none (evaluation off)'}; "
            f"{threads_line(cfg.train.threads, threads)}; ready in {ready_s:.1f} s"]


def threads_line(asked: int, used: int) -> str:
    """``"2 threads"``; with ``train.threads = 0`` (all cores) on a machine already busier than its
    cores, the load too: other work shares those cores and every round takes longer."""
    import os
    text = plural(used, "thread") + (" (all cores)" if asked == 0 else "")
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return text
    cores = os.cpu_count() or 1
    if asked == 0 and load > cores:
        text += (f"; the machine is busy (load {load:.1f} on {plural(cores, 'core')}): "
                 f"set train.threads to share the cores")
    return text


# `fedsynth evaluate`'s numbers: (label, which way is better, what it says), by JSON key
_EVALUATED = {
    "precision": ("precision", "higher", PRDC_MEANING["precision"]),
    "recall": ("recall", "higher", PRDC_MEANING["recall"]),
    "density": ("density", "≈ 1", PRDC_MEANING["density"]),
    "coverage": ("coverage", "higher", PRDC_MEANING["coverage"]),
    "knn-radius-real": ("real 5-NN radius", "", "median distance of a real image to its 5th-nearest real one"),
    "nearest-real-distance": ("nearest real", "", "median distance of a generated image to its nearest real one"),
    "diversity_ratio": ("diversity ratio", "≈ 1", "spread of the generated images ÷ spread of the real ones"),
}


def evaluate_table(res: dict[str, Any], title: str) -> Table:
    """``fedsynth evaluate``'s numbers named in words, each with the way it is better and what it
    measures (the JSON written with -o keeps its keys)."""
    from ..registry import is_fd_metric, is_kid_metric
    what = "volumes" if "slices_real" in res else "images"
    t = Table(title=title, caption=f"features: {res.get('extractor', '?')}; {res.get('num_real', '?')} real and "
                                   f"{res.get('num_fake', '?')} generated {what}")
    for col, just in (("measure", "left"), ("value", "right"), ("better", "left"), ("what it says", "left")):
        t.add_column(col, justify=just, no_wrap=col == "value")  # type: ignore[arg-type]
    for k, v in res.items():
        if not isinstance(v, float):
            continue
        metric, _, plane = k.partition("-plane-")
        if plane:   # volumes: one plane's distance of the slices' features
            row = ((f"Fréchet distance, {plane} plane ({k})", "lower", f"Gaussians fitted to real and generated "
                    f"{plane} slices' features") if is_fd_metric(metric) else
                   (f"kernel distance, KID, {plane} plane ({k})", "lower", f"squared MMD of the {plane} slices' "
                    "features"))
        elif is_fd_metric(k) and what == "volumes":
            row = (f"Fréchet distance ({k})", "lower", "mean over the xy, yz and zx planes")
        elif is_kid_metric(k) and what == "volumes":
            row = (f"kernel distance, KID ({k})", "lower", "mean over the xy, yz and zx planes")
        elif is_fd_metric(k):
            row = (f"Fréchet distance ({k})", "lower", "distance between Gaussians fitted to real and generated "
                   "features")
        elif is_kid_metric(k):
            row = (f"kernel distance, KID ({k})", "lower", "squared MMD of the features (cubic kernel), unbiased; "
                   "about 0 at a match")
        elif k.startswith("swd"):
            row = (f"sliced Wasserstein ({k})", "lower", "distance of 7x7 patches, Laplacian pyramid, x1e3"
                   + ("; all levels" if k == "swd" else ""))
        else:
            row = _EVALUATED.get(k, (k, "", ""))
        t.add_row(row[0], f"{v:.4f}", row[1], row[2])
    return t


def utility_table(rows: list[dict[str, Any]], chance: dict[str, float], title: str,
                  score: Callable[[dict[str, Any], str], str]) -> Table:
    """``fedsynth utility``'s arms: images, accuracy and macro F1 (``score(row, key)``: the mean
    with its interval under it, so the table fits 80 columns), the verdict; the chance level last."""
    t = Table(title=title)
    for col, just in (("training data", "left"), ("images", "right"), ("accuracy", "right"), ("macro F1", "right"),
                      ("verdict", "left")):
        t.add_column(col, justify=just, no_wrap=col != "verdict")  # type: ignore[arg-type]
    for r in rows:
        if r.get("skipped"):
            t.add_row(r["train"], "—", "skipped", "skipped", "")
        else:  # the interval under the mean: the table fits 80 columns
            t.add_row(r["train"], str(r["images"]), score(r, "accuracy").replace(" [", "\n["),
                      score(r, "f1").replace(" [", "\n["), r.get("verdict", ""))
    t.add_row("chance level", "", f"{chance['accuracy']:.3f}", f"{chance['f1']:.3f}", "always the most common class",
              style="dim")
    return t


def print_fitting_table(console: Console, title: str, head: list[str], body: list[list[str]]) -> None:
    """One table of ``head`` and ``body`` rows (the first column a name, never cut or broken: the
    numbers' headers wrap instead); where it is too wide for this terminal, one small table per
    row instead, nothing cut."""
    from rich.measure import Measurement
    t = Table(title=title)
    for i, col in enumerate(head):
        t.add_column(col, no_wrap=True, justify="left" if i == 0 else "right")
    for b in body:
        t.add_row(*b)
    if Measurement.get(console, console.options.update_width(10**4), t).minimum <= console.width:
        console.print(t)
        return
    console.print(title, style="bold", highlight=False, markup=False)
    for b in body:
        v = Table(title=b[0], show_header=False, title_justify="left")
        v.add_column(no_wrap=False)
        v.add_column(justify="right", no_wrap=False)
        for col, cell in zip(head[1:], b[1:]):
            v.add_row(col, cell)
        console.print(v)


def stop_progress(progress: Progress) -> None:
    """Stop the bars and take them off the screen (an error or a stop is the last word)."""
    for t in progress.task_ids:
        progress.update(t, visible=False)
    progress.stop()
