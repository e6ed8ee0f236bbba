"""What a run shows in the terminal (rich): progress bars, per-round lines, tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

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
        from .plots import series_name
        from ..registry import is_fd_metric
        fd = [x for x in records if is_fd_metric(x["metric"])]
        if fd:
            parts = [f"{series_name(x).replace(' ', '-')}={x['value']:.2f}" for x in fd]
            self.c.print(f"round {r:>3}  {fd[0]['metric']}: " + "  ".join(parts), highlight=False)


def summary_table(records: list[dict[str, Any]], metric: str, kid_metric: str) -> Table:
    from .plots import fd_series
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


def partition_table(part: dict[str, Any]) -> Table:
    names = part["class_names"]
    t = Table(title=f"partition: {part.get('scheme', '')}")
    t.add_column("client")
    t.add_column("images", justify="right")
    for c in names:
        t.add_column(str(c), justify="right")
    for cid, info in part["clients"].items():
        t.add_row(cid, str(info["images"]), *(str(v) for v in info["class_counts"]))
    return t
