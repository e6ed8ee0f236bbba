"""The documentation: the MkDocs site builds with --strict (a broken link, a missing anchor, a page
outside the navigation or an unresolved API reference fails), the generated configuration
reference lists every key, the README stays one screen with working links, and
docs/refresh_headline.py writes the headline from a run directory."""

import dataclasses
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsynth.config import SECTIONS, Config, key_reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# One screen: a 1080p terminal or editor shows about 60 lines, and so does a browser window of
# the README rendered on a code host (its table and figures take the height of the lines they
# replace). The rest belongs in docs/.
README_MAX_LINES = 60


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_site_builds_strict_with_the_api_reference_and_no_third_party_requests(site):
    assert (site / "index.html").is_file()
    fed = (site / "api" / "fed.html").read_text()
    for name in ("run_experiment", "Federation", "client_round", "server_round"):
        assert f'id="fedsynth.fed.' in fed and name in fed, name  # mkdocstrings rendered the module
    assert ":func:" not in fed  # the reST roles became Markdown (docs/griffe_rst.py)
    for page in site.rglob("*.html"):
        text = page.read_text()
        for host in ("fonts.googleapis.com", "unpkg.com", "cdn.jsdelivr.net"):
            assert host not in text, f"{page.name} loads from {host}"


def test_config_reference_page_lists_every_key_with_its_default(site):
    page = (site / "configuration.html").read_text()
    ref = {(r["section"], r["key"]): r for r in key_reference()}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            row = re.search(rf"<td><code>{section}\.{key}</code></td>\s*<td><code>(.*?)</code></td>", page)
            assert row, f"{section}.{key} missing from the configuration reference"
            assert html.unescape(row.group(1)) == ref[(section, key)]["default"]


def test_key_reference_is_complete_and_its_defaults_rebuild_the_default_config():
    from fedsynth.config import tomllib
    ref = key_reference()
    assert [(r["section"], r["key"]) for r in ref] == [
        (s, f.name.replace("_", "-")) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert all(r["help"] and r["type"] for r in ref)
    for cls in SECTIONS.values():  # each section's own docstring heads its table
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(")
    tree: dict = {}
    for r in ref:
        tree.setdefault(r["section"], {})[r["key"]] = tomllib.loads(f"v = {r['default']}")["v"]
    from fedsynth.config import build_config
    assert build_config(tree) == Config()


def test_readme_fits_one_screen_and_keeps_the_ci_test_command():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README has {len(lines)} lines; move detail to docs/"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q\n" in ci
    assert ".venv/bin/python -m pytest -q" in lines  # the README's test command, as CI runs it
    assert not re.search(r"^#+ .*\(issues? \d", README.read_text() + "".join(
        p.read_text() for p in (ROOT / "docs").rglob("*.md")), re.M), "a heading names an issue number"


def test_every_relative_link_in_the_readme_resolves():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    relative = [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert len(relative) >= 10
    for t in relative:
        assert (ROOT / t.split("#")[0]).exists(), f"README links to {t}, which does not exist"


def _refresh_module():
    spec = importlib.util.spec_from_file_location("refresh_headline", ROOT / "docs" / "refresh_headline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_refresh_headline_rewrites_only_the_marked_block(tmp_path):
    mod = _refresh_module()
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    from fedsynth.config import build_config
    (run / "config.toml").write_text(build_config(overrides=["fed.rounds=3", "data.source=phantom-ct"]).to_toml())
    ext = "random-conv-v1(seed=0,dims=480,input=64)"
    recs = []
    for rnd, vals in ((0, {"0": 30.0, "1": 32.0, "g": 31.0, "g0": 30.5, "g1": 31.5}),
                      (3, {"0": 3.0, "1": 8.0, "g": 6.2, "g0": 6.0, "g1": 6.4})):
        recs += [{"round": rnd, "client": "0", "real": "0", "metric": "fd-random", "value": vals["0"]},
                 {"round": rnd, "client": "1", "real": "1", "metric": "fd-random", "value": vals["1"]},
                 {"round": rnd, "client": "global", "real": "union", "metric": "fd-random", "value": vals["g"]},
                 {"round": rnd, "client": "global", "real": "union", "metric": "kid-random", "value": 0.1},
                 {"round": rnd, "client": "global", "real": "0", "metric": "fd-random", "value": vals["g0"]},
                 {"round": rnd, "client": "global", "real": "1", "metric": "fd-random", "value": vals["g1"]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "extractor": ext}) + "\n" for r in recs))
    (run / "fd.png").write_bytes(b"fd-curve")
    (run / "samples" / "round-0000.png").write_bytes(b"first")
    (run / "samples" / "round-0003.png").write_bytes(b"last")
    root = tmp_path / "repo"
    (root / "docs" / "images").mkdir(parents=True)
    shutil.copy(README, root / "README.md")
    shutil.copy(ROOT / "docs" / "index.md", root / "docs" / "index.md")
    before = {p: (root / p).read_text() for p in ("README.md", "docs/index.md")}

    mod.refresh(run, root, machine="test machine")
    for page, prefix in (("README.md", "docs/images/"), ("docs/index.md", "images/")):
        text = (root / page).read_text()
        a, b = text.index(mod.START), text.index(mod.END)
        old = before[page]
        assert text[:a] == old[:old.index(mod.START)] and text[b:] == old[old.index(mod.END):]
        block = text[a:b]
        assert "| site 0 (its local model, on its own data) | 30.000 | 3.000 | −90.0 % |" in block
        assert "| site 1 | 32.000 | 8.000 | −75.0 % |" in block
        assert "| **global model, on the union of all sites' data** | **31.000** | **6.200** | **−80.0 %** |" in block
        assert "| 30.500 / 31.500 | 6.000 / 6.400 |" in block
        assert "after round 3" in block
        assert "`fedsynth run --set data.source=phantom-ct --set fed.rounds=3` on test machine" in " ".join(
            block.split())
        if page == "README.md":
            assert len(text.splitlines()) <= README_MAX_LINES  # still one screen once refreshed
        assert f'src="{prefix}default-fd.png"' in block and f'src="{prefix}default-samples.png"' in block
    assert (root / "docs" / "images" / "default-fd.png").read_bytes() == b"fd-curve"
    assert (root / "docs" / "images" / "default-samples.png").read_bytes() == b"last"


# What user docs must not say: they speak of the product, not of how it was made.
FORBIDDEN = {
    "an issue number": (r"\bissues? #?\d+|(?<![\w/.-])#\d{2,}\b", re.I),  # owner/repo#N (upstream) is fine
    "a commit hash": (r"`[0-9a-f]{7,40}`|\([0-9a-f]{7,40}\)|\b(?:commits?|main|branch) (?:at )?[0-9a-f]{7,40}\b", 0),
    "dated work-in-progress text": (r"\btoday(?:'s)?\b|\bthat day(?:'s)?\b|\b(?:previous|new|helper|earlier|last) "
                                    r"sessions?\b|\bthis branch\b|\bTODO\b|\bFIXME\b|\bWIP\b|\bwork in progress\b", re.I),
}


def _user_docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _forbidden_in(text: str) -> list[tuple[int, str, str]]:
    return [(i, what, m.group(0)) for i, line in enumerate(text.splitlines(), 1)
            for what, (pattern, flags) in FORBIDDEN.items() for m in re.finditer(pattern, line, flags)]


def test_user_docs_name_no_issue_commit_or_work_in_progress():
    found = [f"{p.relative_to(ROOT)}:{i}: {what}: {hit!r}" for p in _user_docs() for i, what, hit in
             _forbidden_in(p.read_text())]
    assert not found, "user docs speak of the product, not of its making:\n" + "\n".join(found)


@pytest.mark.parametrize("text,bad", [
    ("the defaults of issue 18", True), ("fixed in #7570", True), ("upstream flwrlabs/flower#7570", False),
    ("fedsynth as of `f325998`", True), ("before (d79bb90)", True), ("its base commit d4a9c9b", True),
    ("with today's code", True), ("the defaults of that day", True), ("The previous session's adapter", True),
    ("TODO: later", True), ("SHA-256 `1ee66fabd639a639…`", False), ("one entry per session", False),
    ("weights-inception-2015-12-05-6726825d.pth", False), ("measured on 2026-11-30", False),
])
def test_the_docs_check_catches_what_it_should(text, bad):
    assert bool(_forbidden_in(text)) == bad, text


def test_the_home_page_lists_every_page():
    """docs/index.md's "What is where" table links every page of the site."""
    index = (ROOT / "docs" / "index.md").read_text()
    table = index.split("## What is where", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(([\w-]+\.md)", table))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= linked, f"missing from the home page's table: {sorted(pages - linked)}"


def test_every_sweep_preset_is_on_the_runs_page_and_in_the_help(site):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.sweep import PRESETS
    page = (site / "runs.html").read_text()
    text = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
    for name in PRESETS:
        assert f"<code>{name}</code>:" in page, name
        assert name in text, name
