"""`fedsynth rescore`: a finished run scored again with another feature network, exactly as it
scored itself, its numbers in rescore.jsonl and in report.html; bad input exits 2 in one line."""

import json

import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import load_config
from fedsynth.metrics.features import effnet_unavailable, trained_network_command

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import TINY
    out = tmp_path_factory.mktemp("rescore") / "run"
    sets = [a for o in TINY + ["fed.rounds=3", "eval.per-site=false", "run.keep-checkpoints=3"] for a in ("--set", o)]
    res = runner.invoke(app, ["run", "--out", str(out), *sets])
    assert res.exit_code == 0, res.output
    return out


def test_rescoring_with_the_runs_own_network_gives_its_own_numbers_and_a_report_table(run, wide_cli):
    res = runner.invoke(app, ["rescore", str(run), "--extractor", "random"])
    assert res.exit_code == 0, res.output
    own = {(r["round"], r.get("real"), r["metric"]): r["value"]
           for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["client"] == "global"}
    again = [json.loads(x) for x in (run / "rescore.jsonl").read_text().splitlines()]
    fd = {(r["round"], r.get("real")): r["value"] for r in again if r["client"] == "global" and r["metric"] == "fd-random"}
    assert {k[0] for k in fd} == {1, 2, 3}  # the last eval.last-k = 3 evaluated rounds, all kept
    assert all(v == own[(r, real, "fd-random")] for (r, real), v in fd.items())  # the same images, latents, code
    said = " ".join(res.output.split())  # the table's title wraps to the table's width
    assert "fd-random of the global model (lower is better)" in said and "rescore.jsonl" in said
    page = (run / "report.html").read_text()
    assert "Scored again with" in page and "fedsynth rescore" in page and "round 3</td>" in page


@pytest.mark.parametrize("args, message", [
    (["rescore", "nowhere"], "nowhere is not a run directory"),
    (["rescore", "RUN", "--extractor", "inceptionish"], "--extractor 'inceptionish': choose from"),
    (["rescore", "RUN", "--last-k", "0"], "--last-k must be at least 1, got 0"),
])
def test_bad_input_is_one_line_and_exit_2(run, args, message):
    res = runner.invoke(app, [str(run) if a == "RUN" else a for a in args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


@pytest.mark.skipif(bool(effnet_unavailable()), reason="effnet-lite0 cannot be built here")
def test_a_run_on_random_features_names_the_rescore_command(run):
    assert trained_network_command(load_config(str(run / "config.toml")), run) == f"fedsynth rescore {run}"


def test_only_evaluated_rounds_are_rescored(tmp_path):
    """With eval.every = 2 the last evaluations are rounds 2 and 4, not the unscored rounds between."""
    from conftest import TINY
    out = tmp_path / "run"
    sets = [a for o in TINY + ["fed.rounds=4", "eval.every=2", "eval.per-site=false", "run.keep-checkpoints=5"]
            for a in ("--set", o)]
    assert runner.invoke(app, ["run", "--out", str(out), *sets]).exit_code == 0
    res = runner.invoke(app, ["rescore", str(out), "--extractor", "random"])
    assert res.exit_code == 0, res.output
    again = [json.loads(x) for x in (out / "rescore.jsonl").read_text().splitlines()]
    assert {r["round"] for r in again if r["metric"] == "fd-random"} == {2, 4}


@pytest.mark.skipif(bool(effnet_unavailable()), reason="effnet-lite0 cannot be built here")
def test_a_sweep_on_auto_features_is_rescored_with_the_trained_network():
    from fedsynth.sweep import second_network
    assert second_network("auto", "auto") == "effnet-lite0" and second_network("auto", "random") == "effnet-lite0"
    assert second_network("auto", "effnet-lite0") == "" and second_network("none", "auto") == ""
