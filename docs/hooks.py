"""MkDocs hook: the configuration reference, generated from the config dataclasses at build time.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``; this hook replaces it
with one table per section built from :func:`fedsynth.config.key_reference` (each field's
``metadata["help"]``, type, default and allowed values) and each section class's docstring. The
reference therefore cannot go stale: a key added to ``src/fedsynth/config.py`` appears in the
next build, and ``tests/test_docs.py`` checks that every key is on the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "<!-- config-reference -->"
SRC = Path(__file__).resolve().parent.parent / "src"


def _cell(text: str) -> str:
    """Table-safe Markdown: escape the pipe and the emphasis characters of a help text."""
    for ch in ("\\", "|", "*", "_"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace("\n", " ")


def config_reference() -> str:
    """The generated Markdown: one ``## [section]`` heading and table per config section."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))  # this checkout's fedsynth, not whatever is installed
    import inspect

    from fedsynth.config import SECTIONS, key_reference

    rows = key_reference()
    out = []
    for section, cls in SECTIONS.items():
        out += [f"## `[{section}]`", "", inspect.cleandoc(cls.__doc__ or ""), "",
                "| key | default | what it does | type, allowed values |", "| --- | --- | --- | --- |"]
        for r in rows:
            if r["section"] == section:
                kind = r["type"] + (f": {r['allowed']}" if r["allowed"] else "")
                out.append(f"| `{section}.{r['key']}` | `{r['default']}` | {_cell(r['help'])} | {kind} |")
        out.append("")
    return "\n".join(out)


SITE_MARKER = "<!-- site-keys -->"


def site_keys_list() -> str:
    """The keys a site may set for itself ([sites.<id>]), from the same metadata."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from fedsynth.config import key_reference
    rows = [r for r in key_reference() if r["site"]]
    return "\n".join(f"- `{r['section']}.{r['key']}`" + (f" (*{r['site']}*)" if r["site"] != "yes" else "")
                     + f": {_cell(r['help'])}" for r in rows) + "\n"


PRESETS_MARKER = "<!-- sweep-presets -->"


def presets_list() -> str:
    """Every built-in sweep (``fedsynth sweep --preset NAME``) from the registry of presets,
    with its variants and its base settings."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from fedsynth.sweep import PRESETS
    out = []
    for name, p in PRESETS.items():
        names = [v[0] for v in p["variants"]]
        shown = ", ".join(names[:8]) + (f", … ({len(names)} in all)" if len(names) > 8 else "")
        out.append(f"- `{name}`: {shown}; base: `{' '.join(p['base']) or '(the defaults)'}`")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if PRESETS_MARKER in markdown:
        markdown = markdown.replace(PRESETS_MARKER, presets_list())
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_reference())
    if SITE_MARKER in markdown:
        markdown = markdown.replace(SITE_MARKER, site_keys_list())
    return markdown
