"""The ``fedsynth`` command line is consistent: every defect of issue 19's CLI list has a test here.

Help screens are rendered by Typer with rich, wrapped to the terminal width; ``_help`` asks for a
wide one so that a phrase is never split across lines.
"""

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from fedsynth.commands import deploy as deploy_commands
from fedsynth.cli import app

runner = CliRunner()
WIDE = {"TERMINAL_WIDTH": "240", "COLUMNS": "240"}


def _help(*path: str, flag: str = "--help") -> str:
    res = runner.invoke(app, [*path, flag], env=WIDE)
    assert res.exit_code == 0, res.output
    return res.output


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    """Every command and sub-app below ``group``, as (path, click command)."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


@pytest.fixture(autouse=True)
def flower_calls(monkeypatch):
    """The Flower commands a test asked for; none runs (the real one replaces this process)."""
    calls = []
    monkeypatch.setattr(deploy_commands, "_exec_flower", lambda name, args, env=None: calls.append([name, *args]))
    return calls


ROOT = typer.main.get_command(app)
TREE = [((), ROOT), *_commands(ROOT)]
LEAVES = [(p, c) for p, c in TREE if not isinstance(c, click.Group)]
IDS = [" ".join(("fedsynth", *p)) for p, _ in TREE]


# --- --version, -h ------------------------------------------------------------------------------

def test_version_prints_the_package_version():
    from importlib.metadata import version
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"fedsynth {version('fedsynth')}"


@pytest.mark.parametrize("path", [p for p, _ in TREE], ids=IDS)
def test_dash_h_is_help_on_every_command(path):
    short, long = _help(*path, flag="-h"), _help(*path)
    assert "Usage:" in short and short == long


# --- messages -----------------------------------------------------------------------------------

def test_a_typo_gets_one_suggestion():
    res = runner.invoke(app, ["rn"])
    assert res.exit_code == 2
    assert res.output.count("Did you mean") == 1 and "'run'" in res.output
    sub = runner.invoke(app, ["data", "inspekt"])
    assert sub.exit_code == 2 and sub.output.count("Did you mean") == 1 and "'inspect'" in sub.output


def test_an_unknown_key_names_its_section():
    res = runner.invoke(app, ["run", "--dry-run", "--set", "fed.roundz=3"])
    assert res.exit_code == 2
    assert "known in [fed]: strategy" in res.output  # rich markup used to swallow "[fed]"


def test_brackets_in_help_text_are_shown():
    """Help is rich markup: a lowercase [tag] vanished from register's own help."""
    assert "[superlink.CONNECTION]" in _help("deploy", "register")


# --- flags and names ----------------------------------------------------------------------------

MEANINGS = {"config": "-c", "set_": "-s", "out": "-o", "clients": "-k", "images": "-n"}


def test_the_same_short_flag_means_the_same_everywhere():
    meaning_of: dict[str, set[str]] = {}
    for path, cmd in LEAVES:
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            for flag in p.opts + p.secondary_opts:
                if len(flag) == 2:
                    meaning_of.setdefault(flag, set()).add(p.name)
            if p.name in MEANINGS and not p.hidden:
                assert MEANINGS[p.name] in p.opts, f"{' '.join(path)} --{p.name} lacks {MEANINGS[p.name]}"
    clashes = {f: names for f, names in meaning_of.items() if len(names) > 1 and f != "-o"}
    assert not clashes, clashes
    # -o is "where the output goes" (a folder, a file, a montage): one meaning, several names
    assert meaning_of["-o"] <= {"out", "montage"}


def test_counts_say_what_they_count():
    """--n was an image count in one command and -n a node count in another."""
    for path, cmd in LEAVES:
        names = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        if "--n" in names:
            assert names["--n"].hidden, f"{' '.join(path)}: --n is only a hidden alias of --images"
        if "--nodes" in names:
            assert "-n" not in names["--nodes"].opts


@pytest.mark.parametrize("args", [
    ["data", "preview", "phantom-ct", "--size", "32"],
])
@pytest.mark.parametrize("count", [["--images", "6"], ["-n", "6"], ["--n", "6"]])
def test_the_image_count_and_its_old_spelling_both_work(tmp_path, args, count):
    res = runner.invoke(app, [*args, *count, "-o", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.png").is_file()


def test_a_bad_image_count_names_the_option():
    res = runner.invoke(app, ["generate", "--checkpoint", "nowhere", "--images", "0", "-o", "x"])
    assert res.exit_code == 2 and "--images must be at least 1" in res.output


# --- help text ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path,cmd", TREE, ids=IDS)
def test_every_parameter_has_help(path, cmd):
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help"
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        assert (getattr(p, "help", None) or "").strip(), f"{' '.join(path)}: {p.name} has no help"


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_shows_examples(path):
    text = _help(*path)
    assert "Examples:" in text
    assert "  fedsynth " + " ".join(path) in text  # indented under "Examples:"
    examples = dict(LEAVES)[path].help.split("Examples:")[1].splitlines()
    assert max(map(len, examples)) <= 76, "an example wraps in an 80-column terminal"


def test_argument_help_is_shown():
    """click 8.5 wiped Typer's argument help: evaluate's REAL/FAKE showed none."""
    text = _help("evaluate")
    assert "Real images: a phantom/sample name or a path." in text
    assert "Generated images" in text


def test_evaluate_size_says_its_default():
    lines = _help("evaluate").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("│ --size"))
    end = next(i for i in range(start + 1, len(lines)) if "--" in lines[i])  # the next option
    block = " ".join(lines[start:end])
    assert "the checkpoint's image size, else 64" in block and "[default:" not in block


# --- the Flower pass-through commands -----------------------------------------------------------

@pytest.mark.parametrize("command,flower", [
    ("superlink", ["flower-superlink", "--help"]),
    ("supernode", ["flower-supernode", "--help"]),
    ("register", ["flwr", "supernode", "register", "--help"]),
])
def test_deploy_pass_through_help_points_to_flowers_own(flower_calls, command, flower):
    text = _help("deploy", command)
    assert "--flower-help" in text and " ".join(flower) in text
    res = runner.invoke(app, ["deploy", command, "--flower-help"])
    assert res.exit_code == 0, res.output
    assert flower_calls == [flower]


def test_supernode_declares_its_own_option():
    """--no-warm-worker was fished out of the pass-through arguments, so help did not list it."""
    cmd = dict(LEAVES)[("deploy", "supernode")]
    assert any("--no-warm-worker" in p.opts for p in cmd.params)
    assert "--no-warm-worker" in _help("deploy", "supernode")


def test_register_takes_the_readmes_arguments(flower_calls):
    text = _help("deploy", "register")
    assert re.search(r"deploy register \[OPTIONS\] PUBLIC_KEY \[CONNECTION\]", text)
    assert runner.invoke(app, ["deploy", "register", "certs/keys/node0.pub"]).exit_code == 0
    assert runner.invoke(app, ["deploy", "register", "hospital-a.pub", "prod", "--name", "a"]).exit_code == 0
    assert flower_calls == [["flwr", "supernode", "register", "certs/keys/node0.pub"],
                     ["flwr", "supernode", "register", "hospital-a.pub", "prod", "--name", "a"]]
    missing = runner.invoke(app, ["deploy", "register"])
    assert missing.exit_code == 2 and "PUBLIC_KEY" in missing.output


def test_superlink_passes_every_option_through(flower_calls):
    args = ["--insecure", "--database", "state.db", "--port", "18000"]
    assert runner.invoke(app, ["deploy", "superlink", *args]).exit_code == 0
    assert flower_calls == [["flower-superlink", *args]]
