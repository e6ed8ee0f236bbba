"""``fedsynth compare``: runs side by side (curves per metric, final table with ratios, grids).

The run directories are written by hand (metrics.jsonl, config.toml, sample grids) so every
expected number is known; the sweep test (tests/test_sweep.py) covers pages made from real runs.
"""

import base64
import csv
import io
import json

import numpy as np
import pytest
import tomli_w
from PIL import Image
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.report.compare import Panel, _ylabel, build_compare, headline

runner = CliRunner()
RANDOM = "random-conv-v1(seed=0,dims=480,input=64)"
EFFNET = "effnet-lite0-imagenet(efficientnet-lite0-57934424.pth,sha256=0123456789ab,input=224)"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="png")
    return buf.getvalue()


def make_run(path, strategy, fd, extractor=RANDOM, loss=(1.0, 0.5)):
    """A run directory: global (or, for local, per-client-on-union) FD per round, losses per client."""
    path.mkdir(parents=True)
    metric = "fd-effnet" if extractor == EFFNET else "fd-random"
    recs = []
    for rnd, v in enumerate(fd):
        if strategy == "local":  # no global model: each client's own model on the union
            recs += [{"round": rnd, "client": c, "real": "union", "metric": metric, "value": v + d,
                      "extractor": extractor} for c, d in (("0", -1.0), ("1", 1.0))]
        else:
            recs.append({"round": rnd, "client": "global", "real": "union", "metric": metric, "value": v,
                         "extractor": extractor})
            recs.append({"round": rnd, "client": "0", "real": "0", "metric": metric, "value": 99.0,
                         "extractor": extractor})  # a client's own score: not the headline
        if rnd:
            recs += [{"round": rnd, "client": c, "metric": "d-loss", "value": x} for c, x in zip("01", loss)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path / "config.toml").write_text(tomli_w.dumps({"fed": {"strategy": strategy, "rounds": len(fd) - 1},
                                                     "data": {"source": "phantom-xray", "image-size": 16}}))
    (path / "samples").mkdir()
    for rnd in range(len(fd)):
        (path / "samples" / f"round-{rnd:04d}.png").write_bytes(_png(10 * rnd + len(strategy)))
    return path


def _csv(out):
    return list(csv.DictReader((out / "compare.csv").open()))


def test_page_table_ratios_figures_and_last_grids(tmp_path):
    a = make_run(tmp_path / "fedavg", "fedavg", [40.0, 20.0, 10.0])
    b = make_run(tmp_path / "local", "local", [40.0, 30.0, 16.0])
    c = make_run(tmp_path / "central", "centralized", [40.0, 10.0, 5.0])
    page = build_compare([a, b, c], tmp_path / "cmp")
    text = page.read_text()
    rows = {(r["run"], r["metric"]): r for r in _csv(tmp_path / "cmp")}
    # the default baseline is the centralized run, wherever it is in the list
    assert "Baseline: <b>central</b> (the centralized run" in text
    assert rows[("central", "fd-random")]["baseline"] == "True"
    assert float(rows[("fedavg", "fd-random")]["ratio_to_baseline"]) == pytest.approx(10.0 / 5.0)
    # local: the mean of the clients' models on the union (15 and 17 -> 16)
    assert rows[("local", "fd-random")]["series"] == "mean of local models on the union"
    assert float(rows[("local", "fd-random")]["value"]) == pytest.approx(16.0)
    assert float(rows[("local", "fd-random")]["ratio_to_baseline"]) == pytest.approx(16.0 / 5.0)
    assert rows[("fedavg", "d-loss")]["series"] == "mean over sites"
    assert float(rows[("fedavg", "d-loss")]["value"]) == pytest.approx(0.75)
    assert rows[("fedavg", "fd-random")]["extractor"] == RANDOM and rows[("fedavg", "fd-random")]["round"] == "2"
    assert "2.000×" in text and "3.200×" in text
    # one figure per metric, the feature network named on the page and in the distance's axis label
    figs = sorted(p.name for p in (tmp_path / "cmp" / "figures").iterdir())
    assert figs == ["d-loss.png", "fd-random_random-conv-v1.png"]
    assert all((tmp_path / "cmp" / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figs)
    assert RANDOM in text
    # each run's LAST grid, side by side
    for run in (a, b, c):
        last, first = (base64.b64encode((run / "samples" / f"round-{k:04d}.png").read_bytes()).decode() for k in (2, 0))
        assert last in text and first not in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")  # self-contained


def test_axis_label_names_the_feature_network():
    assert _ylabel(Panel("fd-random", RANDOM, {})) == "Fréchet distance\n(random-conv-v1 features)"
    assert _ylabel(Panel("kid-effnet", EFFNET, {})) == "KID\n(effnet-lite0-imagenet features)"
    assert _ylabel(Panel("fid", "inception-v3-fid(w.pth)", {})).startswith("FID\n(inception-v3-fid")
    assert _ylabel(Panel("d-loss", "", {})) == "d-loss"


def test_runs_with_different_feature_networks_are_not_overlaid(tmp_path):
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0], extractor=RANDOM)
    b = make_run(tmp_path / "b", "fedavg", [4.0, 2.0], extractor=EFFNET)
    c = make_run(tmp_path / "c", "fedprox", [40.0, 30.0], extractor=RANDOM)
    text = build_compare([a, b, c], tmp_path / "cmp").read_text()
    assert "Baseline: <b>a</b> (the first run given" in text
    figs = sorted(p.name for p in (tmp_path / "cmp" / "figures").iterdir())
    assert "fd-random_random-conv-v1.png" in figs and "fd-effnet_effnet-lite0-imagenet.png" in figs
    assert "not comparable" in text
    rows = {(r["run"], r["metric"]): r for r in _csv(tmp_path / "cmp")}
    assert float(rows[("c", "fd-random")]["ratio_to_baseline"]) == pytest.approx(1.5)
    assert rows[("b", "fd-effnet")]["ratio_to_baseline"] == "nan"  # the baseline has no effnet distance


def test_same_metric_name_but_another_network_instance_is_split_too(tmp_path):
    """fd-random at another input size is another network: separate axes, no ratio."""
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0])
    b = make_run(tmp_path / "b", "fedavg", [40.0, 10.0], extractor=RANDOM.replace("input=64", "input=128"))
    build_compare([a, b], tmp_path / "cmp")
    fd = [r for r in _csv(tmp_path / "cmp") if r["metric"] == "fd-random"]
    assert {r["extractor"] for r in fd} == {RANDOM, RANDOM.replace("input=64", "input=128")}
    assert next(r for r in fd if r["run"] == "b")["ratio_to_baseline"] == "nan"
    assert len(list((tmp_path / "cmp" / "figures").glob("fd-random*.png"))) == 2


def test_baseline_option_and_labels(tmp_path):
    a = make_run(tmp_path / "x" / "run", "fedavg", [40.0, 20.0])
    b = make_run(tmp_path / "y" / "run", "centralized", [40.0, 10.0])
    c = make_run(tmp_path / "z", "fedprox", [40.0, 8.0])
    build_compare([a, b], tmp_path / "cmp", baseline=c)  # not listed: added, first
    rows = {(r["run"], r["metric"]): r for r in _csv(tmp_path / "cmp")}
    assert rows[("z", "fd-random")]["baseline"] == "True"
    # two folders named "run": labelled with their parents so the legend tells them apart
    assert float(rows[("x/run", "fd-random")]["ratio_to_baseline"]) == pytest.approx(20.0 / 8.0)
    assert float(rows[("y/run", "fd-random")]["ratio_to_baseline"]) == pytest.approx(10.0 / 8.0)


def test_headline_prefers_the_global_model():
    recs = [{"round": 1, "client": "global", "real": "0", "metric": "fd-random", "value": 7.0},
            {"round": 1, "client": "global", "real": "union", "metric": "fd-random", "value": 3.0},
            {"round": 1, "client": "0", "real": "0", "metric": "fd-random", "value": 1.0}]
    assert headline(recs, "fd-random") == ([(1, 3.0)], "global model")


def test_cli_writes_the_page(tmp_path):
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0])
    b = make_run(tmp_path / "b", "centralized", [40.0, 10.0])
    res = runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp_path / "out"), "--title", "A vs B"])
    assert res.exit_code == 0, res.output
    assert "fedsynth compare: A vs B" in (tmp_path / "out" / "compare.html").read_text()


@pytest.mark.parametrize("case,message", [
    ("missing", "no such run directory"),
    ("file", "is not a run directory (not a folder)"),
    ("no-metrics", "is not a run directory (no metrics.jsonl)"),
    ("empty", "is empty: the run has recorded nothing yet"),
    ("garbage", "line 2 is not valid JSON"),
])
def test_bad_input_names_the_path_and_exits_2(tmp_path, case, message):
    good = make_run(tmp_path / "good", "fedavg", [40.0, 20.0])
    bad = tmp_path / case
    if case == "file":
        bad.write_text("x")
    elif case != "missing":
        bad.mkdir()
        if case == "empty":
            (bad / "metrics.jsonl").write_text("\n")
        elif case == "garbage":
            (bad / "metrics.jsonl").write_text('{"round": 0, "metric": "x", "value": 1}\n{oops\n')
    res = runner.invoke(app, ["compare", str(good), str(bad), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert message in res.output and case in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out" / "compare.html").exists()


def test_a_run_given_twice_or_a_foreign_baseline_is_refused(tmp_path):
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0])
    res = runner.invoke(app, ["compare", str(a), str(a)])
    assert res.exit_code == 2 and "given twice" in res.output
    res = runner.invoke(app, ["compare", str(a), "--baseline", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope: no such run directory" in res.output


def test_one_run_alone_draws_no_baseline_only_panels_and_says_why(tmp_path, wide_cli):
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0])
    res = runner.invoke(app, ["compare", str(a), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"warning: Only one run (a), so it is its own baseline: no curves are overlaid and no ratios given " \
           f"(its curves are in {a / 'report.html'})" in text and "figures" not in text
    assert not (tmp_path / "out" / "figures").exists()
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "Only one run (a)" in page and "Not drawn: one run." in page
    table = page.split("<h2>Final metrics")[1].split("<h2>Curves")[0]
    assert "20.0" in table and "class=ratio" not in table                     # the value, no ratio beside it


def test_compare_names_the_model_family_and_prints_its_warnings(tmp_path):
    a = make_run(tmp_path / "a", "fedavg", [40.0, 20.0])
    b = make_run(tmp_path / "b", "fedavg", [40.0, 10.0])
    (b / "config.toml").write_text(tomli_w.dumps({"fed": {"strategy": "fedavg", "rounds": 1},
                                                  "data": {"source": "phantom-ct", "image-size": 16},
                                                  "model": {"family": "diffusion"}}))
    res = runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: The runs differ in data.source" in text
    assert "warning: The runs train different model families (diffusion, gan)" in text  # a's: the default
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "<th>model</th>" in page and "<td>diffusion</td>" in page


def test_seeded_settings_are_one_curve_with_the_interval_band(tmp_path, monkeypatch):
    """Folders of seeded runs (a sweep variant's seed-*/) are drawn as one curve per setting: the
    geometric mean over the seeds on a log axis, the mean on a linear one, with the interval
    helpers' 95 % band; a setting of one seed and a plain run keep a line."""
    import matplotlib.axes

    from fedsynth.metrics.intervals import geometric_interval, mean_interval
    from fedsynth.report import compare as cmp

    fds = {0: [40.0, 12.0, 3.0], 1: [42.0, 15.0, 4.0], 2: [39.0, 11.0, 2.5]}
    for s, fd in fds.items():
        make_run(tmp_path / "fedavg" / f"seed-{s}", "fedavg", fd, loss=(1.0 + s, 0.5))
    make_run(tmp_path / "local" / "seed-0", "local", [40.0, 30.0, 20.0])        # a setting of one seed
    central = make_run(tmp_path / "central", "centralized", [40.0, 10.0, 2.0])  # a plain run directory
    drawn_bands, drawn_lines = [], []  # (axis, label, data) as compare's figures draw them
    real_band, real_plot = cmp.draw_band, matplotlib.axes.Axes.plot

    def band(ax, points, color, label, **kw):
        drawn_bands.append((ax, label, points))
        return real_band(ax, points, color, label, **kw)

    def plot(ax, *args, **kw):
        drawn_lines.append((ax, kw.get("label", ""), list(args[1]) if len(args) > 1 else None))
        return real_plot(ax, *args, **kw)
    monkeypatch.setattr(cmp, "draw_band", band)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    res = runner.invoke(app, ["compare", str(tmp_path / "fedavg"), str(tmp_path / "local"), str(central),
                              "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    # the axes' titles are set after the curves: read them now (the figures of the page, not each seed's)
    bands = [(ax.get_title(), label, pts) for ax, label, pts in drawn_bands]
    lines = {(ax.get_title().split()[0], label): ys for ax, label, ys in drawn_lines
             if "95 % interval" in ax.get_title() and not label.startswith("_")}

    # one band per panel, for fedavg's 3 seeds: the helper's intervals on the same values, round by round
    fd_band = next(points for title, label, points in bands if title.startswith("fd-random"))
    want = [geometric_interval([fds[s][r] for s in range(3)]) for r in range(3)]  # log axis: 2 ... 42
    assert [r for r, _ in fd_band] == [0, 1, 2] and [iv for _, iv in fd_band] == want
    assert all(iv.known and iv.low < iv.mean < iv.high for iv in want)
    loss_band = next(points for title, label, points in bands if title.startswith("d-loss"))
    assert [iv for _, iv in loss_band] == [mean_interval([(1.0 + s + 0.5) / 2 for s in range(3)])] * 2  # linear
    assert {label for _, label, _ in bands} == {"fedavg (3 seeds)", "fedavg [mean over sites] (3 seeds)"}
    # the same numbers in bands.csv, only for the band
    rows = list(csv.DictReader((tmp_path / "out" / "bands.csv").open()))
    fd_rows = [r for r in rows if r["metric"] == "fd-random"]
    assert [(r["setting"], r["statistic"], r["seeds"], r["extractor"]) for r in fd_rows] == \
        [("fedavg", "geometric mean", "3", RANDOM)] * 3
    assert fd_rows[0]["runs"] == "fedavg/seed-0;fedavg/seed-1;fedavg/seed-2"
    assert [(float(r["mean"]), float(r["low"]), float(r["high"])) for r in fd_rows] == \
        [(iv.mean, iv.low, iv.high) for iv in want]
    assert {r["statistic"] for r in rows if r["metric"] == "d-loss"} == {"mean"}
    # one seed and a plain run: a line each, their own values
    assert lines[("fd-random", "local [mean of local models on the union] (1 seed)")] == [40.0, 30.0, 20.0]
    assert lines[("fd-random", "central (baseline)")] == [40.0, 10.0, 2.0]
    assert not any(label.startswith("fedavg/seed") for metric, label in lines if metric == "fd-random")
    # the caption says what the band is and names the metric and its feature network
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "fd-random (random-conv-v1 features): geometric mean over 3 seeds, 95 % interval per round" in page
    assert "d-loss: mean over 3 seeds, 95 % interval per round" in page
    assert "<details><summary>Each seed's curve</summary>" in page                # each seed's own lines, collapsed
    figs = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert figs == ["d-loss.png", "fd-random_random-conv-v1.png"]
