"""``fedsynth data``: preview, inspect and split data sources."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..config import UserError, check_output_path, load_config
from ..registry import SOURCES
from ..report.terminal import partition_table
from .common import console, fail, load_with_progress, old_n, typer_group

data_app = typer_group("Inspect built-in and local data.")


@data_app.command("preview")
def data_preview(
    name: str = typer.Argument(..., help="A built-in phantom: " + " | ".join(
        n for n in SOURCES if SOURCES[n].kind == "phantom") + " (volumes: see --dims)"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    images: int = typer.Option(32, "--images", "-n", help="Number of images in the montage."),
    size: int = typer.Option(64, "--size", help="Image side in pixels (volumes: voxels)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantom generator."),
    dims: int = typer.Option(2, "--dims", help="3: volumes (phantom-ct, phantom-mr), each shown as its three "
                             "orthogonal mid-slices (axial, coronal, sagittal)."),
    n: Optional[int] = old_n(),
) -> None:
    """Write a montage PNG of a built-in data set, one row per class.

    Examples:
      fedsynth data preview phantom-histo -o histo.png
      fedsynth data preview phantom-ct -n 16 --size 128 -o ct.png
      fedsynth data preview phantom-ct --dims 3 -n 4 --size 32 -o ct3d.png"""
    from ..data import PHANTOMS, PHANTOMS3D, preview_set
    from ..report.montage import save_class_montage
    n = images if n is None else n
    dims = 3 if name == "phantom-mr" else dims
    known = PHANTOMS3D if dims == 3 else PHANTOMS
    if dims not in (2, 3) or name not in known:
        fail(f"unknown {'3-D ' if dims == 3 else ''}data set {name!r}; choose from {', '.join(known)}")
    if not 16 <= size <= 256 or n < 1:
        fail("--size must be 16-256 and --images at least 1")
    try:
        check_output_path(out, "--out", folder=False, example="montage.png")
    except UserError as e:
        fail(str(e))
    data = preview_set(name, n, size, seed, dims)
    save_class_montage(data, out, per_class=max(1, n // data.num_classes))
    console.print(f"wrote {out}")


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., help="A phantom or sample name, or a folder/file path."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Data/preprocess overrides, e.g. preprocess.clahe=0.02."),
    montage: Optional[Path] = typer.Option(None, "--montage", "--out", "-o",
                                           help="Write a montage PNG (8 images per class) to this file."),
) -> None:
    """Counts, classes, raw sizes and intensity statistics of a data source; a montage with --montage.

    Nothing is written unless --montage names a file (prepared data may be cached, as for a run).

    Examples:
      fedsynth data inspect phantom-ct
      fedsynth data inspect /data/cxr --montage cxr.png
      fedsynth data inspect sample-ct -s preprocess.clahe=0.02"""
    from ..data import class_meaning
    try:
        if montage is not None:
            check_output_path(montage, "--montage", folder=False, example="montage.png")
        from ..data.export import source_overrides
        cfg = load_config(None, source_overrides(source) + list(set_))
        data = load_with_progress(cfg)
    except UserError as e:
        fail(str(e))
    prov = data.provenance
    console.print(f"{source}: {len(data)} images, {data.channels} channel(s), prepared to {data.size}px",
                  highlight=False, soft_wrap=True)
    t = Table()
    t.add_column("class")
    t.add_column("images", justify="right")
    for name, n in zip(data.class_names, data.class_counts()):
        t.add_row(str(name), str(n))
    console.print(t)
    meaning = class_meaning(cfg.data.source, cfg.data.dims)
    if meaning:
        console.print(f"classes: {meaning}", highlight=False)
    per_ch = ", ".join(f"ch{c}: mean {st['mean']:.1f} std {st['std']:.1f} min {st['min']:.0f} max {st['max']:.0f}"
                       for c, st in enumerate(data.intensity_stats()))
    console.print(f"intensity (prepared, 0-255): {per_ch}", highlight=False)
    if prov.get("raw_sizes"):
        more = int(prov.get("raw_size_count", 0) or 0) - len(prov["raw_sizes"])
        console.print("raw sizes (HxW[xC]: files; the most common first): "
                      + ", ".join(f"{k}: {v}" for k, v in prov["raw_sizes"].items())
                      + (f" … and {more} more" if more > 0 else ""),
                      highlight=False)
    if prov.get("skipped"):
        console.print(f"skipped: {len(prov['skipped'])} file(s)")
    if prov.get("cache"):
        console.print(f"cache: {prov['cache']}")
    if montage is None:
        console.print("montage: not written (add --montage FILE.png to write one)")
        return
    from ..report.montage import save_class_montage
    montage.parent.mkdir(parents=True, exist_ok=True)
    save_class_montage(data, montage, per_class=8)
    console.print(f"montage: {montage}")


@data_app.command("split")
def data_split(
    source: str = typer.Argument(..., help="A phantom or sample name, or a folder/file path."),
    clients: int = typer.Option(..., "--clients", "-k", help="Number of sites."),
    scheme: str = typer.Option("iid", "--scheme", help="iid | label-skew | by-label | dirichlet | quantity-skew"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: one sub-folder per site (client-<id>/)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Other overrides, e.g. partition.majority=0.9."),
) -> None:
    """Write one folder per client (client-K/<class>/NNNNNN.png): what each hospital node reads.

    Examples:
      fedsynth data split phantom-xray -k 2 -o sites -s data.image-size=32
      fedsynth data split /data/cxr -k 4 --scheme dirichlet -o sites"""
    from ..data import partition_for
    from ..data.export import source_overrides, write_site_folders
    from ..fed.run import partition_info
    try:
        cfg = load_config(None, source_overrides(source) + list(set_)
                          + [f"partition.clients={clients}", f"partition.scheme={scheme}"])
        check_output_path(out, "--out")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty")
        data = load_with_progress(cfg)
        parts = partition_for(cfg, data)
        info = partition_info(scheme, parts, data)
        write_site_folders(parts, data.class_names, out, info)
    except UserError as e:
        fail(str(e))
    console.print(partition_table(info))
    console.print(f"wrote {len(parts)} site folders to {out}")
