"""Resume falls back past unreadable checkpoints, and a run killed before its first checkpoint
starts round 1 again from the initial weights -- the uninterrupted run's result, bit for bit."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import kill_9_when
from typer.testing import CliRunner

from fedsynth.cli import app


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _final(run):
    ck = sorted((run / "checkpoints").glob("*.pt"))[-1]
    return torch.load(ck, weights_only=True)


def test_resume_skips_a_truncated_newest_checkpoint(tiny, tmp_path):
    over = tiny + ["fed.rounds=3", "run.keep-checkpoints=3", "eval.every=0"]
    runner = CliRunner()
    assert runner.invoke(app, ["run", *_sets(over), "--out", str(tmp_path / "ref")]).exit_code == 0
    res = runner.invoke(app, ["run", *_sets(over), "--out", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    newest = tmp_path / "cut" / "checkpoints" / "round-0003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a full disk, a copy cut short
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps at the terminal width
    assert "skipped checkpoint round-0003.pt" in text and "after round 2" in text
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "cut")
    assert b["round"] == 3 and all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()


@pytest.mark.timeout(900)
def test_kill_9_before_the_first_checkpoint_then_resume(tiny, tmp_path):
    """Killed during round 1 (round 0's evaluation logged, no checkpoint yet): --resume starts
    round 1 again from the initial weights; nothing is logged twice."""
    over = tiny + ["fed.rounds=2", "fed.local-steps=150", "eval.every=0"]   # round 1 takes seconds: time to kill it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fedsynth", "run", *_sets(over)]
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    kill_9_when(cmd + ["--out", str(out)], env, lambda: (out / "metrics.jsonl").is_file(), timeout=120)
    assert (out / "metrics.jsonl").is_file() and not list((out / "checkpoints").glob("*.pt"))
    assert {json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()} == {0}
    res = subprocess.run([sys.executable, "-m", "fedsynth", "run", "--resume", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    a, b = _final(tmp_path / "ref"), _final(out)
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
