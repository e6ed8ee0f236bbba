"""What a run shows in the terminal (issue 19, part 3), tested on synthetic records where possible.

Each test names the defect it guards against; on the code before the fix each of them fails
(cryptic ``0=``/``global-on-0=`` labels in an order that changed after round 0, a line that
wrapped at 80 columns with 4 sites, no losses or times, silent set-up, a leftover
"evaluating global model" bar, "1 rounds", files listed that were never written, ``nan`` ratios).
"""

import io
import json
import random
import re
from datetime import timedelta

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from fedsynth.fed.engine import RunPlan
from fedsynth.report.terminal import (MISSING, PROGRESS_COLUMNS, RichReporter, RoundLine, SweepReporter, details,
                                      plural, prdc_note, seconds, value, written)

runner = CliRunner()
M = "fd-random"


def _records(r: int, sites: int, scale: float = 1.0, losses: bool = True) -> list[dict]:
    """A round's records as the in-process engine writes them (global, per site, summaries,
    each site's own model, losses), values chosen so every column is distinguishable."""
    g = {"round": r, "client": "global", "extractor": "x"}
    out = [{**g, "real": "union", "metric": M, "value": 30.0 * scale},
           {**g, "real": "union", "metric": "kid-random", "value": 0.2}]
    site = [{**g, "real": str(k), "metric": M, "value": (31.0 + k) * scale} for k in range(sites)]
    vals = [x["value"] for x in site]
    out += site + [{**g, "real": "sites", "metric": f"{M}-sites-{s}", "value": v}
                   for s, v in (("mean", sum(vals) / sites), ("worst", max(vals)), ("best", min(vals)))]
    for k in range(sites):
        if losses and r > 0:
            out += [{"round": r, "client": str(k), "metric": "d-loss", "value": 1.25},
                    {"round": r, "client": str(k), "metric": "g-loss", "value": 0.75},
                    {"round": r, "client": str(k), "metric": "bytes-sent", "value": 123456}]
        out.append({"round": r, "client": str(k), "real": str(k), "metric": M, "value": 40.0 + k})
    return out


def _plan(sites: int, rounds: int = 20, scores: str = "global", per_site: bool = True) -> RunPlan:
    return RunPlan(rounds=rounds, first=1, clients=sites, metric=M if scores else "", scores=scores,
                   per_site=per_site and scores == "global", eval_rounds=frozenset(range(rounds + 1)))


TIMING = {"train_s": 1.2, "eval_s": 13.4, "wall_s": 14.8}


@pytest.mark.parametrize("sites", [2, 4, 16])
@pytest.mark.parametrize("scores", ["global", "local", ""])
def test_round_line_fits_80_columns_whatever_the_number_of_sites(sites, scores):
    """Defect: with 4 sites at 80 columns every round wrapped (one label=value pair per site)."""
    for rounds in (3, 100, 1000):
        line = RoundLine(_plan(sites, rounds, scores))
        recs = _records(rounds, sites, scale=10.0)  # FID-sized values, hundreds
        if scores == "local":
            recs += [{"round": rounds, "client": str(k), "real": "union", "metric": M, "value": 312.5 + k}
                     for k in range(sites)]
        texts = [line.header(), line.line(rounds, recs, {"train_s": 125.0, "eval_s": 3700.0}),
                 line.line(0, _records(0, sites), {"eval_s": 4.0})] + line.legend()
        assert all(len(t) <= 80 for t in texts), max(texts, key=len)
        assert all(str(k) + "=" not in texts[1] for k in range(sites))  # no `0=`/`global-on-0=` labels


def test_round_line_order_is_fixed_across_rounds():
    """Defect: round 0 listed global first, later rounds listed the sites first."""
    line = RoundLine(_plan(4, 3))
    r0 = line.values(0, _records(0, 4), {"eval_s": 9.0})
    recs = _records(1, 4)
    shuffled = random.Random(0).sample(recs, len(recs))
    r1 = line.values(1, recs, TIMING)
    assert line.values(1, shuffled, TIMING) == r1          # the records' order does not matter
    assert [name for name, _ in line.cols] == ["round", "global", "site mean", "site worst", "losses (mean)",
                                              "train", "eval"]
    assert r0 == ["0/3", "30.00", "32.50", "34.00", MISSING, MISSING, "9.0s"]
    assert r1 == ["1/3", "30.00", "32.50", "34.00", "D 1.25  G 0.75", "1.2s", "13.4s"]


def test_round_line_shows_losses_and_the_time_split_and_dashes_for_rounds_not_evaluated():
    """Defects: no losses, no round time, no sign that evaluation takes most of it."""
    line = RoundLine(_plan(2, 10))
    recs = [r for r in _records(3, 2) if not r["metric"].startswith(("fd", "kid"))]  # eval.every > 1
    cells = line.values(3, recs, {"train_s": 0.9})
    assert cells == ["3/10", MISSING, MISSING, MISSING, "D 1.25  G 0.75", "0.9s", MISSING]
    off = RoundLine(_plan(2, 10, scores=""))
    assert [n for n, _ in off.cols] == ["round", "losses (mean)", "train"]
    assert "evaluation is off" in " ".join(off.legend())


def test_details_for_the_log_name_every_value_in_a_fixed_order():
    a, b = details(1, _records(1, 3)), details(1, list(reversed(_records(1, 3))))
    assert a == b and a[0].startswith("  round 1 d-loss: site 0 1.2500; site 1")
    fd = next(x for x in a if x.startswith(f"  round 1 {M}:"))
    assert fd.index("global model on all sites") < fd.index("global model on site 0") < fd.index("site 0's model on its data")
    assert any(f"{M} over sites: mean 32.000; worst 33.000; best 31.000" in x for x in a)
    assert not any("bytes-sent" in x for x in a)


@pytest.mark.parametrize("n,word,text", [(1, "round", "1 round"), (2, "round", "2 rounds"), (0, "image", "0 images"),
                                         (1, "site", "1 site"), (16, "site", "16 sites")])
def test_plurals(n, word, text):
    """Defect: "1 rounds"."""
    assert plural(n, word) == text


def test_seconds_and_missing_values():
    assert [seconds(0.44), seconds(13.4), seconds(125), seconds(3725)] == ["0.4s", "13.4s", "2m05s", "1h02m"]
    assert value(float("nan")) == MISSING and value(None) == MISSING and value(1.234) == "1.23"


def _reporter():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False)
    progress = Progress(*PROGRESS_COLUMNS, console=console, transient=True, auto_refresh=False)
    return RichReporter(progress, console), progress, buf


def _visible(progress):
    return [t.description for t in progress.tasks if t.visible]


def test_no_bar_is_left_over_and_long_steps_show_a_spinner():
    """Defects: a long silence after "computing real-data statistics…"; a leftover
    "evaluating global model 4/4" bar after the run."""
    rep, progress, buf = _reporter()
    update = rep.loading("loading phantom-xray")
    update(10, 10)
    rep.busy("real-data statistics: site 0 (1/4)")
    assert _visible(progress) == ["real-data statistics: site 0 (1/4)…"]
    spinner = next(t for t in progress.tasks if t.visible)
    assert spinner.total is None                                 # a spinner with elapsed time, not a bar
    rep.run_start(_plan(4, 1))
    assert "round 0: evaluating the untrained model" in _visible(progress)
    rep.round_end(0, _records(0, 4), {"eval_s": 2.0})
    rep.round_start(1, ["0", "1", "2", "3"], 4)
    rep.step()
    rep.evaluating("site 0's model")
    assert "round 1: evaluating site 0's model" in _visible(progress)
    assert "round 1: training 4 sites" not in _visible(progress)
    rep.step()                                                   # site 1 trains: the bar is back
    assert "round 1: training 4 sites" in _visible(progress)
    rep.evaluating("global model")
    rep.round_end(1, _records(1, 4), TIMING)
    assert _visible(progress) == ["rounds"]
    rep.finish()
    assert _visible(progress) == []
    out = buf.getvalue()
    assert "round    global  site mean  site worst" in out and "  1/1     30.00" in out


@pytest.mark.parametrize("first", [1, 3])
def test_the_rounds_bar_has_an_eta_after_the_first_round(first):
    """Defect: the ETA appeared only after 2 rounds (never for rounds over 30 s). A resumed run's
    estimate counts only the rounds done since it resumed."""
    from dataclasses import replace
    clock = [0.0]
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    progress = Progress(*PROGRESS_COLUMNS, console=console, transient=True, auto_refresh=False,
                        get_time=lambda: clock[0])
    rep = RichReporter(progress, console)
    rep.run_start(replace(_plan(2, rounds=10), first=first))
    eta = PROGRESS_COLUMNS[-1]
    task = next(t for t in progress.tasks if t.description == "rounds")
    assert "-:--:--" in eta.render(task).plain   # nothing measured yet
    clock[0] = 40.0                                              # the first round took 40 s
    rep.round_end(first, _records(first, 2), TIMING)
    assert eta.render(task).plain == f"eta {timedelta(seconds=40 * (10 - first))}"


def test_lines_said_before_the_log_is_attached_reach_it():
    rep, _, _ = _reporter()
    rep.warning("round 1: client 3 dropped out")
    got: list[str] = []
    rep.attach_log(got.extend)
    rep.run_start(_plan(2, 1))
    assert got[0] == "warning: round 1: client 3 dropped out" and any(x.startswith("round ") for x in got)


def test_set_up_announces_its_steps_and_round_end_gets_the_time_split(tiny, tmp_path):
    """Defects: nothing moved between "computing real-data statistics…" and round 0 (now: the
    feature network, then each site's statistics); no round time, no sign that evaluation
    dominates it (now: the engine measures both -- the sites' scoring of their local models
    counts as evaluation -- and keeps them in timings.jsonl)."""
    from fedsynth.config import build_config
    from fedsynth.data import load_dataset, partition
    from fedsynth.fed import Reporter, build_in_process
    from fedsynth.report import RunDir

    class Recorder(Reporter):
        def __init__(self):
            self.ends, self.evals, self.busy_with, self.plan = [], [], [], None

        def busy(self, what):
            self.busy_with.append(what)

        def run_start(self, plan):
            self.plan = plan

        def evaluating(self, what):
            self.evals.append(what)

        def round_end(self, r, records, timing=None):
            self.ends.append((r, timing))

    cfg = build_config(overrides=tiny + ["fed.rounds=1", "fed.local-steps=2", "data.num-images=48"])
    rec = Recorder()
    fed = build_in_process(cfg, partition(load_dataset(cfg), "iid", 2, 0), rec)
    assert rec.busy_with[0].startswith("loading the feature network")
    assert [c.split(" (")[0] for c in rec.busy_with[1:]] == ["real-data statistics: site 0",
                                                             "real-data statistics: site 1"]
    rd = RunDir.create(tmp_path / "r", "x")
    fed.run(rd)
    assert rec.plan.scores == "global" and rec.plan.per_site and rec.plan.metric == M
    (r0, t0), (r1, t1) = rec.ends
    assert (r0, r1) == (0, 1) and "train_s" not in t0 and t0["eval_s"] > 0
    assert t1["train_s"] > 0 and t1["eval_s"] > 0 and t1["wall_s"] >= t1["train_s"] + t1["eval_s"] - 1e-6
    assert rec.evals == ["global model", "site 0's model", "site 1's model", "global model"]
    server = [t for t in rd.timings if t["client"] == "server"]
    assert [t["round"] for t in server] == [0, 1] and server[1]["eval_s"] == t1["eval_s"]
    sites = [t for t in rd.timings if t["client"] != "server"]
    assert all(t["eval_seconds"] > 0 for t in sites) and sum(t["eval_seconds"] for t in sites) <= t1["eval_s"]


def test_written_lists_only_what_exists(tmp_path):
    """Defect: with eval.enabled=false the run listed fd.png and samples/, never written."""
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "report.html").write_text("")
    (tmp_path / "samples").mkdir()                 # an empty folder is not a result
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "round-0001.pt").write_bytes(b"x")
    assert written(tmp_path) == ["report.html", "metrics.jsonl", "checkpoints/"]


def test_cli_run_with_evaluation_off_says_only_what_is_true(tiny, tmp_path):
    """Defects: "1 rounds", a list of files that do not exist, bars left on screen."""
    from fedsynth.cli import app
    args = ["run", *[a for o in tiny + ["fed.rounds=1", "eval.enabled=false", "fed.local-steps=2",
                                        "data.num-images=48"] for a in ("--set", o)], "--out", str(tmp_path / "r")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 round" in res.output and "1 rounds" not in res.output and "2 sites" in res.output
    done = res.output[res.output.index("done in"):].replace("\n", " ")
    assert "metrics.jsonl" in done and "checkpoints/" in done and "log.txt" in done
    assert "fd.png" not in done and "samples/" in done  # evaluation off: the final model's grid all the same
    assert not re.search(r"━ *\d+/\d+", res.output)              # no bar left behind
    assert "(lower is better)" not in res.output                   # no score table without scores
    line = next(x for x in res.output.splitlines() if x.lstrip().startswith("1/1"))
    assert re.fullmatch(r" *1/1  D \d\.\d\d  G \d\.\d\d +\d+\.\ds", line)  # losses, training time
    log = (tmp_path / "r" / "log.txt").read_text()
    assert line.strip() in log and "round 1 d-loss: site 0" in log


def test_sweep_reporter_shows_each_variant_and_its_result():
    """Defect: `sweep` showed no progress."""
    buf = io.StringIO()
    console = Console(file=buf, width=80)
    progress = Progress(*PROGRESS_COLUMNS, console=console, transient=True, auto_refresh=False)
    view = SweepReporter(progress, console, lambda name: f"final global model {M} 1.234 (round 2)")
    view.planned([("fedavg", 2), ("local", 2)], ["centralized"])
    view.started("fedavg")
    view.rounds("fedavg", 1, 2)
    assert [t.description for t in progress.tasks if t.visible] == ["variants", "fedavg (1/2) rounds"]
    view.finished("fedavg", True, 12.0)
    view.started("local")
    rep = view.run_reporter("local")
    assert rep.prefix == "local (2/2) · "
    view.finished("local", False, 3.0)
    view.finish()
    out = buf.getvalue()
    assert "reusing 1 finished variant: centralized" in out and "running 2 variants: fedavg, local" in out
    assert f"✓ fedavg (1/2) in 12.0s: final global model {M} 1.234 (round 2)" in out
    assert "✗ local (2/2) failed after 3.0s" in out
    assert list(progress.tasks) == []


def test_sweep_tables_say_dash_not_nan_for_missing_ratios(tmp_path):
    """Defect: "ratio to centralized: nan" when the sweep has no centralized variant."""
    from fedsynth.sweep import summarise_variants, write_tables
    runs = [{"variant": v, "seed": 0, "run": v, "overrides": "", "round": 2, "metric": M, "extractor": "x",
             "global_fd": fd, "last_k": 3, "last_k_median": fd, "real": "union", "global_is": "global model",
             "client_fd_mean": 3.0, "wall_s": 1.0, "eval_s": float("nan")}
            for v, fd in (("fedavg", 1.5), ("fedprox", float("nan")))]  # fedprox: never scored
    rows = summarise_variants(runs, ["fedavg", "fedprox"])
    write_tables(rows, runs, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| fedavg | 1 | 1.5 (1 seed) | 1.5 (1 seed) | 1 (reference) | reference | best |" in md
    assert "| fedprox | 1 | — | — | — | — (fedavg) | — |" in md and "nan" not in md.lower()
    assert "nan" not in (tmp_path / "results.csv").read_text().lower()


def test_prdc_zero_beside_a_small_frechet_distance_is_explained():
    """Defect: `fedsynth evaluate` printed precision/recall/density/coverage 0.0000 beside a good
    Frechet distance with no word of why. The reason, measured: every generated feature lies
    farther from the nearest real one than the real features' 5-NN radius."""
    from fedsynth.metrics.prdc import prdc, prdc_scales
    from fedsynth.metrics.stats import FeatureStats, fd_from_stats
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 64)) / 8              # real features vary along few directions
    away = rng.normal(size=64)
    away /= np.linalg.norm(away)
    real = rng.normal(size=(300, 3)) @ basis
    fake = rng.normal(size=(300, 3)) @ basis + 2 * away   # the same spread, all shifted off it alike
    fd = fd_from_stats(FeatureStats.of(real), FeatureStats.of(fake))
    untrained = fd_from_stats(FeatureStats.of(real), FeatureStats.of(rng.normal(size=(300, 64))))
    p, s = prdc(real, fake), prdc_scales(real, fake)
    assert p == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert fd < 0.1 * untrained                          # a small distance next to an untrained model's
    assert s["nearest-real-distance"] > 3 * s["knn-radius-real"]
    note = prdc_note({**p, **s})
    assert note is not None and "are 0" in note
    assert f"{s['knn-radius-real']:.3g}" in note and "means and covariances" in note
    assert prdc_note({"precision": 0.5, "recall": 0.4, "density": 0.3, "coverage": 0.2}) is None


def test_resumed_log_keeps_the_lines_before(tmp_path):
    from fedsynth.report import RunDir
    rd = RunDir.create(tmp_path, "x")
    rd.log_lines(["first"])
    (rd.path / "metrics.jsonl").write_text(json.dumps({"round": 0, "client": "g", "metric": "m", "value": 1}) + "\n")
    again = RunDir.reopen(rd.path, 0)
    again.log_lines(["second"])
    assert (rd.path / "log.txt").read_text() == "first\nsecond\n"


def test_threads_line_says_the_load_when_all_cores_are_asked_for_on_a_busy_machine(monkeypatch):
    import os

    from fedsynth.report.terminal import threads_line
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    assert threads_line(0, 2) == ("2 threads (all cores); the machine is busy (load 5.0 on 2 cores): "
                                  "set train.threads to share the cores")
    assert threads_line(1, 1) == "1 thread"  # a thread count the user chose: no advice
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert threads_line(0, 2) == "2 threads (all cores)"
