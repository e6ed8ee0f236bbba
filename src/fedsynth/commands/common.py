"""What the CLI's commands share: the Typer/Click plumbing (help kept and reflowed, one
suggestion per typo, a file-system error as one line), the consoles, the one-line error with
exit code 2, and loading data with a progress bar. :mod:`fedsynth.cli` and the command groups
here (:mod:`.data`, :mod:`.weights`, :mod:`.deploy`) import it; the library never does."""

from __future__ import annotations

import inspect
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from ..config import Config


def _keep_argument_help() -> None:
    """Keep ``typer.Argument(help=...)`` on screen with Click 8.5+.

    Click 8.5 gave ``click.Argument`` a ``help`` of its own: Typer sets the help and then calls
    Click's constructor, which sets it back to None, so every argument (evaluate's REAL and FAKE,
    report's RUN_DIR, ...) lost its help line. Setting it again after the constructor is a no-op
    with an older Click.
    """
    from typer.core import TyperArgument
    init = TyperArgument.__init__
    if getattr(init, "_keeps_help", False):
        return

    def __init__(self, *args: Any, help: Optional[str] = None, **kwargs: Any) -> None:
        init(self, *args, help=help, **kwargs)
        self.help = help

    __init__._keeps_help = True  # type: ignore[attr-defined]
    TyperArgument.__init__ = __init__  # type: ignore[method-assign]


_keep_argument_help()


def _reflow(help: Optional[str]) -> Optional[str]:
    """A docstring as help: prose paragraphs become one line each (rich wraps them to the
    terminal), a paragraph with indented lines (an "Examples:" block) stays as written.

    Typer dedents the text after the summary as one block (inspect.cleandoc, which measures the
    indent from its second line on), so an Examples block right after the summary would lose its
    indent; an empty paragraph before it keeps it (cleandoc drops the blank line again)."""
    if not help:
        return help
    def block(p: str) -> bool:
        return any(ln.startswith(" ") for ln in p.splitlines())
    paragraphs = [p if block(p) else " ".join(p.split("\n")) for p in inspect.cleandoc(help).split("\n\n")]
    if len(paragraphs) > 1 and block(paragraphs[1]):
        paragraphs.insert(1, "")
    return "\n\n".join(paragraphs)


class _Group(TyperGroup):
    """A command group that suggests one command for a typo and shows its commands' help reflowed.

    Click 8.2+ adds "Did you mean 'run'?" to its own error and Typer appended the same again;
    Typer's suggestion is kept only for an older Click that makes none. Typer's rich help keeps
    the docstrings' line breaks after the first paragraph, so they are reflowed here (_reflow).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _reflow(self.help)
        for command in self.commands.values():
            if not isinstance(command, TyperGroup):  # a sub-group reflows its own
                command.help = _reflow(command.help)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as e:
            if getattr(e, "possibilities", None) or not self.suggest_commands:
                raise
        return super().resolve_command(ctx, args)  # raises again, with Typer's suggestion

    def invoke(self, ctx: click.Context) -> Any:
        """A file-system error that no check caught (a disk that filled up, a folder made
        read-only during a run) ends the command with one line naming the path, exit 2."""
        try:
            return super().invoke(ctx)
        except OSError as e:
            if ctx.parent is not None or isinstance(e, (BrokenPipeError,)):
                raise
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")


def typer_group(help: str) -> typer.Typer:
    """A command group: -h as well as --help, help for no arguments, one suggestion per typo."""
    return typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False, help=help,
                       context_settings={"help_option_names": ["-h", "--help"]})


console = Console()
err_console = Console(stderr=True)


def quiet(c: Console | None = None) -> bool:
    """No live bars when output is not a terminal (a pipe, a file, a CI log): there they leave
    only blank lines behind; the lines a command prints are the same either way."""
    return not (c or console).is_terminal


def fail(msg: str, code: int = 2) -> None:
    """End the command with one line ``error: MSG`` (its first line) on stderr, exit ``code``."""
    first = str(msg).strip().splitlines()[0] if str(msg).strip() else "error"
    # the message is text, not rich markup: "known in [fed]: ..." must keep its [fed]
    err_console.print(f"[bold red]error:[/] {escape(first)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def load_with_progress(cfg: Config):
    """Load (and prepare, or read from cache) the configured data, with a progress bar."""
    from ..data import load_dataset
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True, disable=quiet()) as progress:
        task = progress.add_task(f"loading {cfg.data.source}", total=None)
        data = load_dataset(cfg, lambda done, total: progress.update(task, completed=done, total=total))
    skipped = data.provenance.get("skipped", [])
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} bad file(s)[/] (listed in partition.json), "
                          f"e.g. {skipped[0]['file']}: {skipped[0]['reason']}", highlight=False)
    return data


def old_n() -> Any:
    """``--n``, the old spelling of ``--images``: hidden, still accepted (scripts and notes use it)."""
    return typer.Option(None, "--n", hidden=True, help="Old spelling of --images.")
