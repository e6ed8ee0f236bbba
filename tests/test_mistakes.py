"""The mistakes a new user makes, all in one place: each ends with exit code 2, no traceback, and
(for fedsynth's own checks) exactly one line starting with ``error:`` that names the key, option,
file or path at fault. Output paths are checked before any work starts, and nothing is left
half-written. Click's own usage errors (a missing option, a typo in a command) keep Click's
usage box; for them the exit code, the message and the absence of a traceback are checked.

Every case runs in-process (CliRunner) and fails before any training: the whole file takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsynth.cli import app

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A working directory with the things mistakes are made of."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "bad.toml").write_text("[fed]\nrounds = -1\n")
    (tmp_path / "site.toml").write_text("[sites.1.model]\nndf = 4\n")  # D travels by default
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"garbage")
    (tmp_path / "x.pt").write_bytes(b"nope")
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.dcm").write_bytes(b"garbage")  # never read: a folder source looks for images
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("x")
    run = tmp_path / "arun"  # enough of a run directory for `report`
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    (run / "report.html").mkdir()  # ...whose report cannot be written: a folder has its name
    return tmp_path


# (id, arguments, words the one-line message must hold); {t} is the test's folder
ONE_LINE = [
    # configuration
    ("unknown key", ["run", "--set", "fed.roundz=3"], ["fed.roundz", "did you mean 'fed.rounds'"]),
    ("unknown section", ["run", "--set", "fedd.rounds=3"], ["fedd.rounds", "did you mean 'fed.rounds'"]),
    ("not a number", ["run", "--set", "fed.rounds=abc"], ["fed.rounds"]),
    ("too few clients", ["run", "--set", "partition.clients=0"], ["partition.clients"]),
    ("bad image size", ["run", "--set", "data.image-size=100"], ["data.image-size"]),
    ("no section", ["run", "--set", "rounds=3"], ["rounds", "section.key"]),
    ("bad config file", ["run", "--config", "{t}/bad.toml"], ["fed.rounds"]),
    ("missing config file", ["run", "--config", "{t}/missing.toml"], ["missing.toml"]),
    ("site override of a shared part", ["run", "--config", "{t}/site.toml", "--dry-run"], ["sites.1.model.ndf"]),
    ("broken image", ["run", "--set", "data.source=folder", "--set", 'data.path="{t}/imgs"',
                      "--set", "run.out-dir={t}/runs"], ["broken.png"]),
    ("dicom source, PNG folder", ["run", "--set", "data.source=dicom", "--set", 'data.path="{t}/imgs"',
                                  "--set", "run.out-dir={t}/runs"], ["/imgs: it holds 1 PNG/JPEG/TIFF image;",
                                                                    "set data.source = folder"]),
    ("folder source, DICOM folder", ["run", "--set", "data.source=folder", "--set", 'data.path="{t}/scans"',
                                     "--set", "run.out-dir={t}/runs"], ["/scans: it holds 1 DICOM file;",
                                                                       "set data.source = dicom"]),
    # resume
    ("resume nothing", ["run", "--resume", "{t}/nowhere"], ["--resume", "nowhere", "does not exist"]),
    ("resume a non-run", ["run", "--resume", "{t}/empty"], ["--resume", "not a run directory"]),
    ("resume with --out", ["run", "--resume", "{t}/empty", "--out", "{t}/o"], ["--resume takes no"]),
    # generate, evaluate, audit, utility, report
    ("no images", ["generate", "--checkpoint", "nowhere", "--images", "0", "-o", "{t}/g"], ["--images must be at least 1"]),
    ("garbage checkpoint", ["generate", "--checkpoint", "{t}/x.pt", "-o", "{t}/g"], ["x.pt"]),
    ("missing checkpoint", ["generate", "--checkpoint", "{t}/nowhere", "-o", "{t}/g"], ["nowhere"]),
    ("generate into a full folder", ["generate", "--checkpoint", "{t}/x.pt", "-o", "{t}/full"], ["not empty"]),
    ("evaluate without fake", ["evaluate", "phantom-ct"], ["give either FAKE"]),
    ("audit a garbage checkpoint", ["audit", "--checkpoint", "{t}/x.pt", "--train", "phantom-ct", "--held",
                                    "phantom-ct", "-o", "{t}/a"], ["x.pt"]),
    ("utility on a non-run", ["utility", "{t}/empty", "--real-train", "phantom-ct", "--real-test", "phantom-ct"],
     ["not a run directory"]),
    ("report on a non-run", ["report", "{t}/empty"], ["not a run directory"]),
    # sweep, compare
    ("sweep bad variant", ["sweep", "-o", "{t}/sw", "--variant", "a: fed.strategy=fedavg", "--variant",
                           "b: fed.roundz=2"], ["fed.roundz"]),
    ("sweep unknown preset", ["sweep", "--preset", "nosuch", "-o", "{t}/sw"], ["nosuch"]),
    ("sweep nothing", ["sweep", "-o", "{t}/sw"], ["nothing to sweep"]),
    ("sweep no jobs", ["sweep", "-o", "{t}/sw", "--preset", "strategies", "--jobs", "0"], ["--jobs"]),
    ("compare a missing run", ["compare", "{t}/nope", "-o", "{t}/c"], ["nope"]),
    ("compare a missing baseline", ["compare", "{t}/arun", "--baseline", "{t}/nope", "-o", "{t}/c"], ["nope"]),
    # data
    ("unknown phantom", ["data", "preview", "nope", "-o", "{t}/m.png"], ["unknown data set 'nope'"]),
    ("tiny preview", ["data", "preview", "phantom-ct", "--size", "8", "-o", "{t}/m.png"], ["--size"]),
    ("montage is a folder", ["data", "inspect", "phantom-ct", "--montage", "{t}/empty"], ["--montage", "folder"]),
    ("inspect nothing", ["data", "inspect", "{t}/nowhere"], ["nowhere"]),
    ("split into a full folder", ["data", "split", "phantom-ct", "-k", "2", "-o", "{t}/full",
                                  "-s", "data.num-images=8", "-s", "data.image-size=16"], ["not empty"]),
    # deploy, weights
    ("deploy bad config", ["deploy", "run", "--config", "{t}/bad.toml"], ["fed.rounds"]),
    ("deploy missing config", ["deploy", "run", "--config", "{t}/missing.toml"], ["missing.toml"]),
    ("negative nodes", ["deploy", "certs", "-o", "{t}/c", "--nodes", "-1"], ["--nodes"]),
    ("unknown weights", ["weights", "fetch", "resnet"], ["unknown weights 'resnet'"]),
    ("sha256 for two", ["weights", "fetch", "inception", "xrv", "--sha256", "ab"], ["--sha256"]),
]

# output paths that cannot be created: a parent that is a file, a virtual file system (/proc)
OUTPUTS = [
    ("run", ["run", "--out", "{bad}", "--set", "fed.rounds=1"], "--out"),
    ("sweep", ["sweep", "-o", "{bad}", "--preset", "strategies"], "--out"),
    ("generate", ["generate", "--checkpoint", "{t}/x.pt", "-o", "{bad}"], "--out"),
    ("compare", ["compare", "{t}/arun", "-o", "{bad}"], "--out"),
    ("evaluate", ["evaluate", "phantom-ct", "phantom-ct", "-n", "8", "--size", "16", "-o", "{bad}/e.json"], "--out"),
    ("audit", ["audit", "--checkpoint", "{t}/x.pt", "--train", "phantom-ct", "--held", "phantom-ct", "-o", "{bad}"],
     "--out"),
    ("data preview", ["data", "preview", "phantom-ct", "-o", "{bad}/p.png"], "--out"),
    ("data inspect", ["data", "inspect", "phantom-ct", "--montage", "{bad}/m.png"], "--montage"),
    ("data split", ["data", "split", "phantom-ct", "-k", "2", "-o", "{bad}"], "--out"),
    ("deploy certs", ["deploy", "certs", "-o", "{bad}", "--nodes", "1"], "--out"),
    ("deploy keygen", ["deploy", "keygen", "-o", "{bad}", "--name", "hospital-a"], "--out"),
    ("deploy run", ["deploy", "run", "-o", "{bad}"], "--out"),
    ("deploy run audit", ["deploy", "run", "--audit-dir", "{bad}", "-o", "{t}/fresh"], "--audit-dir"),
]
BAD_PARENTS = {"file parent": ("{t}/afile/out", "afile is a file, not a folder"),
               "proc": ("/proc/fedsynth-test/out", "cannot write in /proc")}

# Click's usage errors: exit 2 and the message, in Click's usage box
USAGE = [
    ("typo", ["rn"], "Did you mean 'run'?"),
    ("sub-command typo", ["data", "inspekt"], "Did you mean 'inspect'?"),
    ("missing option", ["generate", "-o", "x"], "--checkpoint"),
    ("missing argument", ["deploy", "register"], "PUBLIC_KEY"),
    ("not an integer", ["generate", "--checkpoint", "x", "-o", "y", "--images", "many"], "--images"),
]


def _fill(args: list[str], **names: str) -> list[str]:
    return [a.format(**names) for a in args]


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    assert res.output.startswith("error: "), repr(res.output[:200])  # no blank line before it
    lines = res.output.rstrip("\n").splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("args,words", [c[1:] for c in ONE_LINE], ids=[c[0] for c in ONE_LINE])
def test_a_mistake_is_one_line_and_exit_2(files, args, words):
    line = _one_error_line(runner.invoke(app, _fill(args, t=str(files))))
    for w in words:
        assert w in line, (w, line)
    assert not (files / "runs").exists()  # nothing written


@pytest.mark.parametrize("parent", list(BAD_PARENTS), ids=list(BAD_PARENTS))
@pytest.mark.parametrize("args,option", [c[1:] for c in OUTPUTS], ids=[c[0] for c in OUTPUTS])
def test_an_output_path_that_cannot_be_made_is_one_line_before_any_work(files, args, option, parent):
    bad, why = BAD_PARENTS[parent]
    bad = bad.format(t=files)
    before = sorted(p.name for p in files.rglob("*"))
    line = _one_error_line(runner.invoke(app, _fill(args, t=str(files), bad=bad)))
    assert line.startswith(f"error: {option} {bad}") and why in line, line
    assert sorted(p.name for p in files.rglob("*")) == before  # nothing half-written, no probe left behind


def test_run_without_out_in_a_folder_it_cannot_write(files, monkeypatch):
    """`fedsynth run` without --out writes runs/ under the working directory: a working directory
    where it cannot names run.out-dir, the folder and why."""
    monkeypatch.chdir("/proc")
    line = _one_error_line(runner.invoke(app, ["run", "--set", "fed.rounds=1"]))
    assert line == "error: run.out-dir runs: cannot write in /proc (No such file or directory)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder: permissions cannot be tested as root")
def test_a_folder_without_write_permission(files):
    ro = files / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = _one_error_line(runner.invoke(app, ["data", "split", "phantom-ct", "-k", "2", "-o", str(ro / "s")]))
        assert f"no permission to write in {ro}" in line
    finally:
        ro.chmod(0o755)


def test_report_into_a_run_whose_report_cannot_be_written(files):
    line = _one_error_line(runner.invoke(app, ["report", str(files / "arun")]))
    assert "report.html" in line and "it is a folder" in line


def test_a_file_system_error_no_check_foresaw_is_one_line(files, monkeypatch):
    """A disk that fills up mid-command: one line naming the file, exit 2 (the safety net)."""
    import fedsynth.data as data

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(files / "m.png"))
    monkeypatch.setattr(data, "make_phantom", full)
    line = _one_error_line(runner.invoke(app, ["data", "preview", "phantom-ct", "-o", str(files / "m.png")]))
    assert line == f"error: {files / 'm.png'}: No space left on device"


@pytest.mark.parametrize("args,words", [c[1:] for c in USAGE], ids=[c[0] for c in USAGE])
def test_a_usage_mistake_is_exit_2_without_a_traceback(args, words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert words in res.output and res.output.count("Did you mean") <= 1
