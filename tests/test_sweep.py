from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.sweep import _split_values, grid_variants, parse_variant

runner = CliRunner()


def test_value_splitting_keeps_lists_and_quotes():
    assert _split_values('a,b,["G", "D"],"x,y"') == ["a", "b", '["G", "D"]', '"x,y"']


def test_grid_is_a_cartesian_product():
    v = grid_variants(["fed.strategy=fedavg,local", "fed.local-epochs=1,3"])
    assert [n for n, _ in v] == ["strategy-fedavg_local-epochs-1", "strategy-fedavg_local-epochs-3",
                                 "strategy-local_local-epochs-1", "strategy-local_local-epochs-3"]
    assert v[1][1] == ["fed.strategy=fedavg", "fed.local-epochs=3"]


def test_parse_variant():
    assert parse_variant('share-G: fed.strategy=fedavg; fed.share=["G"]') == \
        ("share-G", ["fed.strategy=fedavg", 'fed.share=["G"]'])


def test_sweep_runs_tables_and_resumes(tiny, tmp_path):
    base = [a for o in tiny + ["fed.rounds=1"] for a in ("--set", o)]
    args = ["sweep", "--out", str(tmp_path / "sw"), *base, "--variant", "fedavg: fed.strategy=fedavg",
            "--variant", 'shareG: fed.share=["G"]', "--variant", "local: fed.strategy=local",
            "--variant", "centralized: fed.strategy=centralized", "--second-network", "none"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "sw" / "results.md").read_text()
    assert "| centralized" in md and "| 1 (reference) |" in md and "mean of local models on the union" in md
    assert "One seed: no interval, so no conclusion" in md
    assert (tmp_path / "sw" / "results.png").stat().st_size > 1000
    page = (tmp_path / "sw" / "compare" / "compare.html").read_text()  # the variants side by side
    assert "Baseline: <b>centralized</b>" in page and all(f"<td>{v}" in page for v in ("fedavg", "shareG", "local"))
    stamp = (tmp_path / "sw" / "fedavg" / "metrics.jsonl").stat().st_mtime_ns
    again = runner.invoke(app, args)           # finished variants are not run again
    assert again.exit_code == 0
    assert (tmp_path / "sw" / "fedavg" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_sweep_validates_every_variant_before_running(tmp_path):
    res = runner.invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--variant", "a: fed.strategy=fedavg",
                              "--variant", "b: fed.roundz=2"])
    assert res.exit_code == 2 and "fed.roundz" in res.output
    assert not (tmp_path / "sw" / "a").exists()


def test_parallel_jobs_and_presets_validate(tiny, tmp_path):
    from fedsynth.config import load_config
    from fedsynth.sweep import PRESETS
    for name, p in PRESETS.items():
        for vname, over in p["variants"]:
            load_config(None, p["base"] + over)  # every preset variant is a valid config
    base = [a for o in tiny + ["fed.rounds=1"] for a in ("--set", o)]
    res = runner.invoke(app, ["sweep", "--out", str(tmp_path / "sw"), *base, "--jobs", "2", "--seeds", "2",
                              "--second-network", "none", "--grid", "fed.strategy=fedavg,local"])
    assert res.exit_code == 0, res.output
    assert "strategy-fedavg" in (tmp_path / "sw" / "results.md").read_text()
    assert all((tmp_path / "sw" / v / f"seed-{s}" / "report.html").is_file() for v in ("strategy-fedavg", "strategy-local")
               for s in (0, 1))  # seeded runs spread over the jobs
    assert all(p["seeds"] == 3 for n, p in PRESETS.items() if n in ("study", "study-128", "strategies"))


def test_a_preset_runs_through_the_cli_with_user_overrides(tmp_path):
    small = ["data.image-size=16", "data.num-images=96", "model.nz=16", "model.ngf=8", "model.ndf=8",
             "fed.rounds=1", "fed.local-epochs=1", "eval.num-samples=32", "eval.kid-subset-size=16",
             "eval.kid-subsets=2", "eval.grid-size=4", "fed.min-local-steps=0"]
    res = runner.invoke(app, ["sweep", "--preset", "noniid", "--out", str(tmp_path / "sw"), "--second-network", "none",
                              *[a for o in small for a in ("--set", o)]])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "sw" / "results.md").read_text()
    assert all(f"| majority-{m} |" in md for m in (60, 70, 80, 90))
    bad = runner.invoke(app, ["sweep", "--preset", "nosuch", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "nosuch" in bad.output


def test_each_family_is_compared_with_its_own_centralized_run():
    from fedsynth.sweep import PRESETS, centralized_reference
    names = [n for n, _ in PRESETS["gan-vs-diffusion"]["variants"]]
    assert {centralized_reference(n, names) for n in names if n.startswith("gan-")} == {"gan-centralized"}
    assert centralized_reference("diffusion-fedavg-label-skew", names) == "diffusion-centralized"
    assert centralized_reference("fedavg", ["fedavg", "centralized"]) == "centralized"
    assert centralized_reference("fedavg", ["fedavg", "local"]) is None


def _sweep_args(tiny, out, seeds="2"):
    base = [a for o in tiny + ["fed.rounds=1", "train.threads=1"] for a in ("--set", o)]
    return ["sweep", "--out", str(out), *base, "--seeds", seeds, "--second-network", "none",
            "--variant", "fedavg: fed.strategy=fedavg", "--variant", "centralized: fed.strategy=centralized"]


def _table(out):
    """results.md without its cost part, and results.csv without the seconds (which differ between runs)."""
    import csv
    md = (out / "results.md").read_text().split("Cost (mean per run)")[0]
    rows = [{k: v for k, v in r.items() if k not in ("wall_s", "eval_s")} for r in csv.DictReader(open(out / "results.csv"))]
    return md, rows


def test_two_seed_sweep_killed_midway_resumes_to_the_same_table(tiny, tmp_path):
    import os
    import sys

    from conftest import kill_9_when
    whole = runner.invoke(app, _sweep_args(tiny, tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    md, rows = _table(tmp_path / "whole")
    assert [(r["variant"], r["seed"]) for r in rows] == [("fedavg", "0"), ("fedavg", "1"), ("centralized", "0"),
                                                         ("centralized", "1")]
    assert "| fedavg" in md and "| 2 |" in md and "Over 2 seeds: mean [95 % Student-t interval]" in md
    assert (tmp_path / "whole" / "curves.png").stat().st_size > 1000  # the band figure
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the same BLAS threads: the same last digits
    killed = kill_9_when([sys.executable, "-m", "fedsynth", *_sweep_args(tiny, cut)], env,
                         lambda: (cut / "fedavg" / "seed-1" / "config.toml").is_file())
    assert killed and not (cut / "results.md").exists()
    again = runner.invoke(app, _sweep_args(tiny, cut))
    assert again.exit_code == 0, again.output
    assert "reusing 1 finished variant: fedavg/seed-0" in again.output
    assert _table(cut) == (md, rows)
    # compare of the seeded variants: the same intervals as the sweep's table, the band, every run's curves
    cmp = runner.invoke(app, ["compare", str(cut / "fedavg"), str(cut / "centralized"), "-o", str(tmp_path / "cmp")])
    assert cmp.exit_code == 0, cmp.output
    assert (tmp_path / "cmp" / "seeds.md").read_text().splitlines()[2:4] == md.splitlines()[2:4]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<h2>Over seeds</h2>" in page and (tmp_path / "cmp" / "curves.png").is_file()


def test_seeds_must_be_positive(tmp_path):
    res = runner.invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--seeds", "0", "--variant", "a: fed.rounds=1"])
    assert res.exit_code == 2 and "--seeds must be at least 1, got 0" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_variant_summary_intervals_and_paired_ratios():
    from fedsynth.metrics.intervals import mean_interval, paired_ratio_interval
    from fedsynth.sweep import summarise_variants
    runs = [{"variant": v, "seed": s, "metric": "fd-random", "extractor": "random", "real": "holdout",
             "global_is": "global model", "round": 5, "last_k": 3, "last_k_median": x, "global_fd": x * 1.1,
             "client_fd_mean": float("nan"), "wall_s": 1.0, "eval_s": 0.5}
            for v, xs in (("a", [2.0, 3.0, 2.5]), ("b", [2.1, 2.9, 2.6]), ("centralized", [1.0, 1.4, 1.2]))
            for s, x in enumerate(xs)]
    rows = {r["variant"]: r for r in summarise_variants(runs, ["a", "b", "centralized"])}
    assert rows["a"]["score"] == mean_interval([2.0, 3.0, 2.5])
    assert rows["a"]["ratio"] == paired_ratio_interval([2.0, 3.0, 2.5], [1.0, 1.4, 1.2])
    assert rows["a"]["reference"] == "centralized" and rows["a"]["verdict"] == "worse"
    assert rows["centralized"]["verdict"] == "reference" and rows["centralized"]["best"] == "centralized"
    assert not rows["a"]["tied_with_best"]
    tied = {r["variant"]: r for r in summarise_variants(runs, ["a", "b"])}  # no centralized: the first is the reference
    assert tied["b"]["reference"] == "a" and tied["b"]["verdict"] == "cannot tell" and tied["b"]["tied_with_best"]


def test_variants_with_their_own_centralized_runs_are_ranked_within_their_group():
    """Two splits, each with its own centralized run (their held-out images differ): each variant
    is compared with its own split's reference and best, and the notes say so per split."""
    from fedsynth.sweep import summarise_variants, table_notes
    scores = {"skew-fedavg": [2.0, 3.0, 2.5], "skew-centralized": [1.0, 1.4, 1.2],
              "dir-fedavg": [0.5, 0.6, 0.55], "dir-centralized": [0.9, 1.0, 0.95]}
    runs = [{"variant": v, "seed": s, "metric": "fd-random", "extractor": "random", "real": "holdout",
             "global_is": "global model", "round": 5, "last_k": 3, "last_k_median": x, "global_fd": x,
             "client_fd_mean": float("nan"), "wall_s": 1.0, "eval_s": 0.5}
            for v, xs in scores.items() for s, x in enumerate(xs)]
    rows = {r["variant"]: r for r in summarise_variants(runs, list(scores))}
    assert rows["skew-fedavg"]["reference"] == "skew-centralized" and rows["skew-fedavg"]["best"] == "skew-centralized"
    assert rows["dir-fedavg"]["reference"] == "dir-centralized" and rows["dir-centralized"]["best"] == "dir-fedavg"
    assert rows["dir-fedavg"]["verdict"] == "better" and not rows["skew-fedavg"]["tied_with_best"]
    notes = table_notes(list(rows.values()))
    assert "Lowest mean among the variants compared with skew-centralized: skew-centralized; every other" in " ".join(notes)
    assert "Lowest mean among the variants compared with dir-centralized: dir-fedavg;" in " ".join(notes)


def test_second_network_rescores_the_last_k_evaluations_and_ranks_agree(tiny, tmp_path):
    """Re-scored with the run's own network, the last k evaluations come out exactly as the run
    recorded them; the table carries the second column and Kendall's tau of the two."""
    import json
    base = [a for o in tiny + ["fed.rounds=2", "eval.per-site=false"] for a in ("--set", o)]
    res = runner.invoke(app, ["sweep", "--out", str(tmp_path / "sw"), *base, "--second-network", "random",
                              "--grid", "fed.local-epochs=1,2,3"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "sw" / "local-epochs-1"
    own = {(r["round"], r["metric"]): r["value"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if r["client"] == "global" and r.get("real") == "union"}
    again = [json.loads(x) for x in (run / "rescore.jsonl").read_text().splitlines()]
    scored = {(r["round"], r["metric"]): r["value"] for r in again if r["client"] == "global" and r.get("real") == "union"}
    assert {k[0] for k in scored} == {1, 2} and all(scored[k] == own[k] for k in scored if k[1] == "fd-random")
    md = (tmp_path / "sw" / "results.md").read_text()
    assert md.count("fd-random median of last 3") == 2
    assert "Rank agreement of the two feature networks over the variants (Kendall tau): +1.00" in md


def test_a_resumed_parallel_sweep_rescores_its_finished_runs_in_parallel(tiny, tmp_path):
    """Runs finished without a second network are rescored by `fedsynth rescore` processes when the
    sweep is run again with one and --jobs 2; the table then carries the second network's column."""
    base = [a for o in tiny + ["fed.rounds=2", "eval.per-site=false"] for a in ("--set", o)]
    args = ["sweep", "--out", str(tmp_path / "sw"), *base, "--grid"]
    assert runner.invoke(app, [*args, "fed.local-epochs=1,2", "--second-network", "none"]).exit_code == 0
    assert not list((tmp_path / "sw").glob("*/rescore.jsonl"))
    # a third variant is new: its own job runs it and then rescores it
    res = runner.invoke(app, [*args, "fed.local-epochs=1,2,3", "--second-network", "random", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "sw").glob("*/rescore.jsonl"))) == 3
    assert "fd-random median of last 3" in (tmp_path / "sw" / "results.md").read_text()


def test_variants_that_trained_the_same_model_are_named():
    from fedsynth.metrics.intervals import mean_interval
    from fedsynth.sweep import identical_variants

    def row(name, scores, finals):
        return {"variant": name, "seeds": len(scores), "score": mean_interval(scores), "final": mean_interval(finals)}
    rows = [row("epochs-1", [3.1, 2.7, 4.0], [3.0, 2.5, 4.4]), row("epochs-2", [3.1, 2.7, 4.0], [3.0, 2.5, 4.4]),
            row("epochs-3", [3.1, 2.7, 4.0000001], [3.0, 2.5, 4.4])]
    assert identical_variants(rows) == [("epochs-1", "epochs-2")]
    assert identical_variants([row("a", [1.0], [1.0]), row("b", [1.0], [1.0])]) == [("a", "b")]  # one seed: NaN interval


def test_variants_ending_at_different_rounds_are_warned_about_their_last_k():
    from fedsynth.metrics.intervals import mean_interval
    from fedsynth.sweep import table_notes
    rows = [{"variant": v, "seeds": 2, "score": mean_interval([1.0, 2.0]), "final": mean_interval([1.0, 2.0]),
             "round": r, "last_k": 3, "global_is": "global model", "extractor": "x", "real": "holdout",
             "best": "p1", "tied_with_best": True, "second": None} for v, r in (("p1", 15), ("p5", 3))]
    notes = " ".join(table_notes(rows))
    assert "The variants end at different rounds (3, 15)" in notes and "compare their final values" in notes
