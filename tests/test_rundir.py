"""One run per directory: exclusive creation, a lock while a run is live, none after it died."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time


import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError
from fedsynth.report import RunDir
from fedsynth.report.rundir import LOCK_NAME, RunDirBusy, lock_run_dir, release_run_dir

FORK = multiprocessing.get_context("fork")


def _try_at(path, barrier, q):
    barrier.wait()
    try:
        RunDir.at(path)
        q.put("won")
        time.sleep(0.5)  # keep the lock while the other process tries
    except UserError as e:
        q.put(str(e))


@pytest.mark.parametrize("existing", [False, True])
def test_two_processes_racing_for_one_out_dir_exactly_one_wins(tmp_path, existing):
    """RunDir.at from two processes released by one barrier, 10 times: one gets the directory,
    the other a clear refusal -- whether the directory is new or an existing empty one."""
    for i in range(10):
        path = tmp_path / f"run-{i}"
        if existing:
            path.mkdir()
        barrier, q = FORK.Barrier(2), FORK.Queue()
        procs = [FORK.Process(target=_try_at, args=(path, barrier, q)) for _ in range(2)]
        for p in procs:
            p.start()
        got = sorted(q.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(30)
        assert got[1] == "won", got
        assert got[0].startswith(f"--out {path} is in use by another live run (pid "), got


def test_lock_is_held_for_the_process_life_and_reentrant_in_it(tmp_path):
    rd = RunDir.create(tmp_path / "runs", "x")
    lock_run_dir(rd.path)  # the owner may take it again (a run, then its resume, in one session)
    q = FORK.Queue()

    def other():
        release_run_dir(rd.path)  # forget the lock inherited through fork: act as a stranger
        try:
            lock_run_dir(rd.path)
            q.put("locked")
        except RunDirBusy as e:
            q.put(e.holder)
    p = FORK.Process(target=other)
    p.start()
    assert q.get(timeout=30) == f"pid {os.getpid()}"
    p.join(30)


def test_out_dir_refusals(tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.toml").write_text("")
    with pytest.raises(UserError, match=r"already holds a run \(config.toml exists\).*--resume"):
        RunDir.at(run)
    half = tmp_path / "half"
    half.mkdir()
    (half / "partition.json").write_text("{}")
    with pytest.raises(UserError, match=r"is not empty \(partition.json\): a half-created run"):
        RunDir.at(half)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        RunDir.at(f)
    # an empty directory, or one holding only the lock file of a dead run, is taken
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_NAME).write_text("pid 999999\n")
    assert RunDir.at(empty).path == empty
    assert (empty / LOCK_NAME).read_text() == f"pid {os.getpid()}\n"


def test_create_numbers_directories_and_locks_them(tmp_path):
    a, b = RunDir.create(tmp_path, "x"), RunDir.create(tmp_path, "x")
    assert (a.path.name, b.path.name) == ("0000-x", "0001-x")
    assert (a.path / LOCK_NAME).is_file() and (b.path / LOCK_NAME).is_file()


def test_removed_and_recreated_dir_is_locked_afresh(tmp_path):
    import shutil
    d = tmp_path / "d"
    RunDir.at(d)
    shutil.rmtree(d)  # what the CLI does when a run fails before its first metrics
    RunDir.at(d)
    q = FORK.Queue()

    def other():
        release_run_dir(d)
        try:
            lock_run_dir(d)
            q.put("locked")
        except RunDirBusy:
            q.put("busy")
    p = FORK.Process(target=other)
    p.start()
    assert q.get(timeout=30) == "busy"
    p.join(30)


WORKER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    from pathlib import Path
    root, me, tries, sets = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    from fedsynth.cli import app
    import fedsynth.data, fedsynth.fed, fedsynth.report.html  # warm: the race is not import time

    def cli(args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app(args)
                code = 0
            except SystemExit as e:
                code = e.code or 0
        return code, err.getvalue()

    args = [a for s in sets for a in ("--set", s)]
    res = {"ref": cli(["run", "--out", str(root / f"ref-{me}"), *args])}
    for i in range(tries):
        (root / f"ready-{i}-{me}").touch()  # a barrier between the two processes
        while not all((root / f"ready-{i}-{w}").exists() for w in "ab"):
            time.sleep(0.0002)
        res[i] = cli(["run", "--out", str(root / f"race-{i}"), *args])
    print(json.dumps(res))
""")


def test_two_cli_runs_on_one_out_exactly_one_runs(tmp_path, tiny):
    """Two `fedsynth run --out SAME` processes (different seeds), released together by a barrier,
    10 times: one runs to the end (exit 0), the other exits 2 with one clear line, and the
    directory holds the winner's run only -- config.toml, partition.json, metrics.jsonl and
    checkpoints identical to the same seed's run alone."""
    tries = 10
    (tmp_path / "worker.py").write_text(WORKER)
    # evaluation off: its feature network costs ~10 s of CPU per run here; losses are logged all the same
    sets = {w: tiny + ["train.threads=1", f"run.seed={s}", "eval.enabled=false"] for w, s in (("a", 1), ("b", 2))}
    procs = {w: subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path), w, str(tries),
                                  json.dumps(sets[w])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in "ab"}
    res = {}
    for w, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        res[w] = json.loads(out.strip().splitlines()[-1])
    for w in "ab":
        assert res[w]["ref"][0] == 0, res[w]["ref"][1]
    winners, kinds = [], []
    for i in range(tries):
        (ca, ea), (cb, eb) = res["a"][str(i)], res["b"][str(i)]
        assert sorted((ca, cb)) == [0, 2], (i, ca, ea, cb, eb)
        win, lose_err = ("a", eb) if ca == 0 else ("b", ea)
        winners.append(win)
        d, ref = tmp_path / f"race-{i}", tmp_path / f"ref-{win}"
        lines = lose_err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --out {d} "), lose_err
        assert "in use by another live run" in lines[0] or "already holds a run" in lines[0], lines[0]
        kinds.append("busy" if "in use" in lines[0] else "exists")
        for name in ("config.toml", "partition.json", "metrics.jsonl"):
            assert (d / name).read_bytes() == (ref / name).read_bytes(), (i, name)
        cks = sorted(p.name for p in (d / "checkpoints").iterdir())
        assert cks == sorted(p.name for p in (ref / "checkpoints").iterdir()), i
        last = torch.load(d / "checkpoints" / cks[-1], weights_only=True)
        assert last["config"]["run"]["seed"] == {"a": 1, "b": 2}[win]
    res0 = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "race-0")])
    assert res0.exit_code == 0 and "complete (2 of 2 rounds)" in " ".join(res0.output.split()), res0.output
    print("winners:", "".join(winners), "losers said:", kinds)


def test_resume_refused_while_the_run_lives_and_allowed_after_kill_9(tmp_path, tiny):
    out = tmp_path / "run"
    sets = [a for s in tiny + ["fed.rounds=100000", "train.threads=1", "eval.enabled=false"] for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "run", "--out", str(out), *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("round-*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never checkpointed"
            time.sleep(0.05)
        runner = CliRunner()
        res = runner.invoke(app, ["run", "--resume", str(out)])
        assert res.exit_code == 2, res.output
        assert res.output.strip() == (f"error: --resume {out}: a live run (pid {proc.pid}) is still writing this "
                                      f"directory; wait for it to finish or stop it first")
        res = runner.invoke(app, ["run", "--out", str(out), *sets])
        assert res.exit_code == 2, res.output
        assert res.output.strip() == (f"error: --out {out} is in use by another live run (pid {proc.pid}); "
                                      f"choose another directory")
        assert proc.poll() is None  # it was live all along
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # the OS dropped the killed run's lock with its process: another process can take it at once
    lock_run_dir(out)
    release_run_dir(out)


def test_a_sweep_never_deletes_a_variant_a_live_run_is_writing(tmp_path, tiny):
    from fedsynth.sweep import run_sweep
    d = tmp_path / "sw" / "a"
    d.mkdir(parents=True)
    (d / "config.toml").write_text("")  # unfinished: the sweep would delete and redo it
    ready, q = FORK.Event(), FORK.Queue()

    def live_run():
        release_run_dir(d)
        lock_run_dir(d)
        ready.set()
        q.get(timeout=60)  # hold the lock until told to stop
    p = FORK.Process(target=live_run)
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(UserError, match=rf"variant a: {d} is in use by a live run \(pid {p.pid}\)"):
            run_sweep(None, tiny, [("a", ["fed.strategy=fedavg"])], tmp_path / "sw", lambda cfg, out: None)
        assert (d / "config.toml").is_file()
    finally:
        q.put("stop")
        p.join(30)
