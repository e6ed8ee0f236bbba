"""Rewrite the headline result of README.md and docs/index.md from a finished run directory.

    .venv/bin/python docs/refresh_headline.py runs/0000-phantom-xray-fedavg-2c-64px

Between the markers ``<!-- headline:start -->`` and ``<!-- headline:end -->`` of each page it
writes the figures, the table "Fréchet distance before training / after the last round / change"
and one line naming the command, the machine and the date that produced them; it copies the run's
``fd.png`` and its last sample grid to ``docs/images/default-fd.png`` and
``docs/images/default-samples.png``. Nothing outside the markers changes.

- The command is rebuilt from the run's ``config.toml``: ``fedsynth run`` plus one ``--set`` per
  key that differs from the default.
- The machine is this machine (CPU model, cores, memory, torch version) unless ``--machine`` says
  otherwise: run the script where the run ran, or pass ``--machine``.
- The date is the day ``config.toml`` was written; the duration is the wall-clock time from
  ``config.toml`` (written first) to ``report.html`` (written last), so it leaves out the
  start-up before the run directory existed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import textwrap
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
PAGES = {"README.md": "docs/images/", "docs/index.md": "images/"}  # page -> its path to docs/images


def _fedsynth():
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)  # this checkout's fedsynth
    import fedsynth.config as config
    import fedsynth.registry as registry
    return config, registry


def command_of(run: Path) -> str:
    """``fedsynth run`` plus a ``--set`` for every key of the run's config.toml that differs from
    the default (the run directory itself is not part of the command)."""
    config, _ = _fedsynth()
    cfg, default = config.load_config(run / "config.toml"), config.Config()
    sets = []
    for r in config.key_reference():
        name = r["key"].replace("-", "_")
        value = getattr(getattr(cfg, r["section"]), name)
        if value != getattr(getattr(default, r["section"]), name):
            if isinstance(value, str):
                try:  # a bare word stays bare; text that would parse as TOML is quoted
                    config.tomllib.loads(f"v = {value}")
                    literal = json.dumps(value)
                except config.tomllib.TOMLDecodeError:
                    literal = value
            else:
                literal = json.dumps(list(value) if isinstance(value, tuple) else value)
            sets.append("--set " + shlex.quote(f"{r['section']}.{r['key']}={literal}"))
    return " ".join(["fedsynth run", *sets])


def this_machine() -> str:
    """CPU model, cores, memory and torch version of the machine running this script."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    try:
        from importlib.metadata import version
        torch = f", torch {version('torch')}"
    except Exception:  # noqa: BLE001 - informational only
        torch = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}{torch}, CPU execution"


def headline(run: Path) -> dict:
    """The numbers of the table, read from ``metrics.jsonl``: per series (``site k`` = that
    site's model on its own data, ``global`` = global model on the union, ``global on k`` =
    global model on site k's data) the value at round 0 and at the last evaluated round."""
    _, registry = _fedsynth()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fd = [r for r in records if registry.is_fd_metric(r["metric"])]
    if not fd:
        raise SystemExit(f"error: {run}/metrics.jsonl has no Fréchet-distance record (was eval.enabled false?)")
    metric = fd[0]["metric"]
    series: dict[str, dict[int, float]] = {}
    for r in fd:
        if r["metric"] != metric:
            continue
        who, real = str(r["client"]), str(r.get("real", r["client"]))
        if who == "global":
            name = "global" if real in ("union", "global") else "held-out" if real == "holdout" else f"global on {real}"
        elif real == who:
            name = f"site {who}"
        else:
            continue  # a site's own model on the union (the local baseline)
        series.setdefault(name, {})[r["round"]] = r["value"]
    last = max(r for s in series.values() for r in s)
    clients = sorted((n for n in series if n.startswith("site ")), key=lambda n: (len(n), n))
    return {"metric": metric, "extractor": fd[0].get("extractor", ""), "last": last,
            "series": series, "clients": clients}


def _change(v0: float, v1: float) -> str:
    pct = (v1 - v0) / v0 * 100
    return f"{pct:+.1f} %".replace("-", "−")


def render(run: Path, prefix: str, machine: str) -> str:
    """The block between the markers, with image paths relative to the page (``prefix``)."""
    h = headline(run)
    s, last, metric = h["series"], h["last"], h["metric"]
    rows = ["| model | Fréchet distance before training | after round {0} | change |".format(last),
            "| --- | --- | --- | --- |"]
    for n in h["clients"]:
        if 0 in s[n] and last in s[n]:
            label = f"{n} (its local model, on its own data)" if n == h["clients"][0] else n
            rows.append(f"| {label} | {s[n][0]:.3f} | {s[n][last]:.3f} | {_change(s[n][0], s[n][last])} |")
    if "global" in s and 0 in s["global"] and last in s["global"]:
        g = s["global"]
        rows.append(f"| **global model, on the union of all sites' data** | **{g[0]:.3f}** | "
                    f"**{g[last]:.3f}** | **{_change(g[0], g[last])}** |")
    if "held-out" in s and 0 in s["held-out"] and last in s["held-out"]:
        g = s["held-out"]
        rows.append(f"| **global model, on the sites' held-out images (never trained on)** | **{g[0]:.3f}** | "
                    f"**{g[last]:.3f}** | **{_change(g[0], g[last])}** |")
    fair = [n for n in sorted(s) if n.startswith("global on ") and 0 in s[n] and last in s[n]]
    if fair:
        ids = " / ".join(f"site {n[len('global on '):]}'s" for n in fair)
        rows.append(f"| global model on {ids} data (fairness) | "
                    + " / ".join(f"{s[n][0]:.3f}" for n in fair) + " | "
                    + " / ".join(f"{s[n][last]:.3f}" for n in fair) + " | "
                    + " / ".join(_change(s[n][0], s[n][last]) for n in fair) + " |")
    made = dt.datetime.fromtimestamp((run / "config.toml").stat().st_mtime)
    took = ""
    if (run / "report.html").is_file():
        took = f", {(run / 'report.html').stat().st_mtime - (run / 'config.toml').stat().st_mtime:.0f} s"
    what = ("`fd-random` features (a frozen random network: compare between fedsynth runs, not with "
            "published FIDs)" if "random" in metric else f"`{metric}` features")
    said = (f"Measured with `{command_of(run)}` on {machine}, {made:%Y-%m-%d}{took}. Fréchet distance "
            f"on {what}; lower is better.")
    lines = [
        START,
        "<p>",
        f'<img src="{prefix}default-fd.png" width="48%" align="top" alt="Fréchet distance per round">',
        f'<img src="{prefix}default-samples.png" width="40%" align="top" alt="samples of the global model after '
        f'round {last}">',
        "</p>",
        "",
        *rows,
        "",
        *textwrap.wrap(said, 100, break_long_words=False, break_on_hyphens=False),
    ]
    lines.append(END)
    return "\n".join(lines)


def refresh(run: Path, root: Path = ROOT, machine: str | None = None) -> list[Path]:
    """Rewrite the marked block of every page under ``root`` and copy the figures; return the
    files written."""
    run = Path(run)
    if not (run / "metrics.jsonl").is_file() or not (run / "config.toml").is_file():
        raise SystemExit(f"error: {run} is not a finished run directory (no metrics.jsonl/config.toml)")
    grids = sorted((run / "samples").glob("round-*.png"))
    if not (run / "fd.png").is_file() or not grids:
        raise SystemExit(f"error: {run} has no fd.png or samples/round-*.png")
    machine = machine or this_machine()
    written = []
    for page, prefix in PAGES.items():
        path = root / page
        text = path.read_text(encoding="utf-8")
        if text.count(START) != 1 or text.count(END) != 1:
            raise SystemExit(f"error: {path} must hold exactly one {START} ... {END} block")
        a, b = text.index(START), text.index(END) + len(END)
        new = text[:a] + render(run, prefix, machine) + text[b:]
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    images = root / "docs" / "images"
    for src, dst in ((run / "fd.png", images / "default-fd.png"), (grids[-1], images / "default-samples.png")):
        shutil.copyfile(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)
        written.append(dst)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run directory (runs/NNNN-...)")
    p.add_argument("--machine", help="describe the machine the run ran on (default: this machine)")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests: a copy of the pages
    args = p.parse_args(argv)
    for path in refresh(args.run_dir, args.root, args.machine):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
