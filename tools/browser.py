"""Look at a report the way a reader does: in headless Chromium, at a given window width.

Test and documentation tooling, outside the installed package (run from the repository root).

:func:`check_report` loads ``report.html`` unchanged inside an ``<iframe>`` of a small probe
page (nothing is injected into the report) and reports, once every image has finished loading,
how many images there are, which failed to decode or take no space, and whether the page is
wider than the window (a horizontal scroll bar on a phone). :func:`screenshot` saves a PNG of
the page at a width. Both run the ``chromium`` binary (Debian: ``apt-get install chromium``).

Regenerate the documentation's screenshots from a run directory::

    python -m tools.browser RUN_DIR docs/images
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PROBE = """<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
{frames}
<script>
function inspect(frame) {{
  const doc = frame.contentDocument, win = frame.contentWindow;
  const imgs = Array.from(doc.images);
  if (imgs.some(i => !i.complete)) return null;
  const names = els => els.map(e => e.alt || (e.tagName.toLowerCase() + (e.className ? "." + e.className : "")));
  // elements reaching past the window's right edge, unless a scrolling box holds them
  const scrolls = e => e.closest(".scroll, pre");
  const wide = Array.from(doc.body.querySelectorAll("*")).filter(
    e => e.getBoundingClientRect().right > win.innerWidth + 1 && !scrolls(e) && e.getBoundingClientRect().width > 0);
  return {{width: win.innerWidth, images: imgs.length,
          broken: names(imgs.filter(i => !(i.naturalWidth > 0 && i.naturalHeight > 0))),
          hidden: names(imgs.filter(i => !(i.getBoundingClientRect().width > 0))),
          wider_than_window: names(wide).slice(0, 10),
          page_width: doc.documentElement.scrollWidth, page_height: doc.documentElement.scrollHeight,
          title: doc.title}};
}}
const frames = Array.from(document.querySelectorAll("iframe"));
let loaded = 0;
function poll() {{
  const seen = frames.map(inspect);
  if (seen.some(s => s === null)) {{ setTimeout(poll, 25); return; }}
  document.body.setAttribute("data-result", JSON.stringify(seen));
}}
frames.forEach(f => f.addEventListener("load", () => {{ if (++loaded === frames.length) poll(); }}));
</script></body></html>"""
FRAME = '<iframe src="{src}" style="border:0;display:block;width:{width}px;height:{height}px"></iframe>'


def chromium() -> str | None:
    """The Chromium binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="fedsynth-chromium-") as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--no-first-run", "--disable-extensions", "--mute-audio",
                               f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def check_report(report: str | Path, widths: tuple[int, ...] = (1280, 420), height: int = 900,
                 timeout: float = 60) -> list[dict[str, Any]]:
    """Load ``report`` once per width (side by side in one Chromium) and return, per width, what
    the probe page saw once every image had finished loading (see the module doc)."""
    report = Path(report).resolve()
    with tempfile.TemporaryDirectory(prefix="fedsynth-probe-", dir=report.parent) as tmp:
        probe = Path(tmp) / "probe.html"
        frames = "\n".join(FRAME.format(src="../" + report.name, width=w, height=height) for w in widths)
        probe.write_text(PROBE.format(frames=frames))
        res = _run(["--allow-file-access-from-files", f"--window-size={max(widths) + 40},{height * len(widths)}",
                    "--virtual-time-budget=30000", "--dump-dom", probe.as_uri()], timeout)
    m = re.search(r'data-result="([^"]*)"', res.stdout)
    if not m:
        raise RuntimeError(f"the probe page reported nothing (chromium exit {res.returncode}): "
                           f"{res.stderr.strip()[-500:]}")
    import html
    return json.loads(html.unescape(m.group(1)))


def screenshot(report: str | Path, out: str | Path, width: int, height: int, timeout: float = 60) -> Path:
    """A PNG of ``report``'s first ``height`` CSS pixels at window ``width``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _run(["--force-device-scale-factor=1", f"--window-size={width},{height}", f"--screenshot={out}",
                Path(report).resolve().as_uri()], timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr.strip()[-500:]}")
    return out


def docs_screenshots(run_dir: str | Path, folder: str | Path, wide: int = 1280, narrow: int = 420) -> list[Path]:
    """``report-wide.png`` and ``report-narrow.png`` of ``RUN_DIR/report.html``: each the whole
    page, as tall as it is at that width."""
    report = Path(run_dir) / "report.html"
    out = []
    for name, seen in zip(("report-wide.png", "report-narrow.png"), check_report(report, (wide, narrow))):
        if seen["broken"] or seen["hidden"] or seen["wider_than_window"]:
            raise RuntimeError(f"{report} at {seen['width']} px does not show well: {seen}")
        path = screenshot(report, Path(folder) / name, seen["width"], seen["page_height"])
        from PIL import Image  # a 256-colour palette: a third of the bytes, no visible change here
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
        out.append(path)
    return out


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tools.browser RUN_DIR FOLDER")
    for p in docs_screenshots(sys.argv[1], sys.argv[2]):
        print(f"wrote {p}")
