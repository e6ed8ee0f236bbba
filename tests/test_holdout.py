"""Held-out real images per site: the seeded split, the exact merge of the sites' held-out
moments, the best round chosen without the reported images, and the clear errors."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError

runner = CliRunner()
HELD = ["eval.holdout=0.5"]  # 32 images per site: 16 held out (8 select the best round, 8 are reported)


def _site(n=40, seed=0):
    from fedsynth.data import ImageSet
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8), rng.integers(0, 2, n), ("a", "b"), "s")


def test_split_is_seeded_disjoint_and_complete():
    from fedsynth.fed.evaluation import split_holdout
    d = _site(40)
    train, sel, test = split_holdout(d, 0.25, 7, "0")
    assert (len(train), len(sel), len(test)) == (30, 5, 5)
    rows = lambda s: {x.tobytes() for x in s.images}  # noqa: E731
    assert not (rows(train) & rows(sel)) and not (rows(train) & rows(test)) and not (rows(sel) & rows(test))
    assert rows(train) | rows(sel) | rows(test) == rows(d)
    again = split_holdout(d, 0.25, 7, "0")
    assert all(np.array_equal(a.images, b.images) for a, b in zip((train, sel, test), again))
    other = split_holdout(d, 0.25, 8, "0")[2]
    assert not np.array_equal(other.images, test.images)


def test_holdout_check_notice_and_error():
    from fedsynth.fed.evaluation import holdout_check
    assert holdout_check(0.1, {"0": 1000, "1": 500}) == ""
    assert holdout_check(0.0, {"0": 3}) is None
    notice = holdout_check(0.1, {"0": 1000, "1": 32})
    assert "held-out evaluation off: site 1 has 32 images" in notice and "at least 10" in notice
    with pytest.raises(UserError, match=r"'eval.holdout' = 0.9 leaves site 1 \(1 image\) without a training image"):
        holdout_check(0.9, {"0": 100, "1": 1})


def test_held_out_statistics_merge_exactly_across_sites():
    from fedsynth.fed.evaluation import Evaluator, holdout_statistics, site_statistics, split_holdout
    from fedsynth.metrics import FeatureStats, build_extractor
    from fedsynth.config import load_config
    from fedsynth.models import build_model
    cfg = load_config(None, ["data.image-size=16", "model.nz=8", "model.ngf=8", "model.ndf=8",
                             "eval.num-samples=8", "eval.feature-extractor=random"])
    ex = build_extractor("random")
    sites = {"0": _site(40, 1), "1": _site(60, 2)}
    split = {cid: split_holdout(d, 0.5, 0, cid) for cid, d in sites.items()}
    held = {cid: holdout_statistics(tr, sel, te, ex, cfg.eval, 0) for cid, (tr, sel, te) in split.items()}
    real, counts = site_statistics({c: s[0] for c, s in split.items()}, ex, cfg.eval, 0, 2)
    ev = Evaluator(cfg.eval, ex, real, counts, build_model(cfg, 16, 1, 2), 0, held)
    for k, name in ((2, "test"), (1, "select")):
        feats = torch.cat([ex.extract(split[c][k].batch()).double() for c in ("0", "1")]).numpy()
        whole = FeatureStats.of(feats)
        assert ev.holdout[name].n == len(feats) == 25  # 10 + 15 of the 20 + 30 held out
        np.testing.assert_allclose(ev.holdout[name].mean, whole.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ev.holdout[name].cov, whole.cov, rtol=0, atol=1e-12)


def _records(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_best_round_is_chosen_without_the_reported_images(tiny, tmp_path, monkeypatch):
    """The test half of each site's held-out images is replaced by other images in a second run:
    the reported distances change, the selection scores and the best round do not."""
    from fedsynth.config import load_config
    from fedsynth.fed import evaluation
    from fedsynth.fed.run import run_experiment
    cfg = load_config(None, tiny + HELD + ["fed.rounds=3", "train.threads=1"])
    first = run_experiment(cfg, tmp_path / "a")
    real_split = evaluation.split_holdout

    def other_test_images(data, share, seed, site):
        train, sel, test = real_split(data, share, seed, site)
        return train, sel, type(test)(255 - test.images, test.labels, test.class_names, test.name, dict(test.provenance))
    monkeypatch.setattr(evaluation, "split_holdout", other_test_images)
    second = run_experiment(cfg, tmp_path / "b")
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")

    def pick(recs, metric, real):
        return {r["round"]: r["value"] for r in recs if r["metric"] == metric and r.get("real") == real
                and r["client"] == "global"}
    sel_a, sel_b = pick(a, "selection-score", "holdout-select"), pick(b, "selection-score", "holdout-select")
    assert sel_a == sel_b and set(sel_a) == {0, 1, 2, 3}
    rep_a, rep_b = pick(a, "fd-random", "holdout"), pick(b, "fd-random", "holdout")
    assert all(rep_a[r] != rep_b[r] for r in rep_a)                # the reported images did change
    best = min((r for r in sel_a if r > 0), key=lambda r: (sel_a[r], r))
    for run in (tmp_path / "a", tmp_path / "b"):
        ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        assert ck["round"] == best and ck["best"]["round"] == best
    assert first.federation.best == second.federation.best
    gap = pick(a, "memorisation-gap", "holdout")
    assert set(gap) == {0, 1, 2, 3} and all(np.isfinite(v) for v in gap.values())


def test_round_option_picks_best_last_or_a_kept_round(tiny, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(run), *[a for o in tiny + HELD + ["fed.rounds=3"]
                                                          for a in ("--set", o)]])
    assert res.exit_code == 0, res.output
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["round"]
    out = runner.invoke(app, ["generate", "--checkpoint", str(run), "-n", "2", "-o", str(tmp_path / "g1")])
    assert out.exit_code == 0 and f"model: best round {best} (lowest held-out selection score" in out.output
    out = runner.invoke(app, ["generate", "--checkpoint", str(run), "--round", "last", "-n", "2", "-o",
                              str(tmp_path / "g2")])
    assert out.exit_code == 0 and "model: last round 3" in out.output
    out = runner.invoke(app, ["generate", "--checkpoint", str(run), "--round", "1", "-n", "2", "-o", str(tmp_path / "g3")])
    assert out.exit_code == 2 and "--round 1: round 1 was not kept" in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_a_holdout_that_leaves_a_site_without_training_images_is_refused(tiny, tmp_path):
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), *[a for o in tiny + [
        "data.num-images=4", "eval.holdout=0.9"] for a in ("--set", o)]])
    assert res.exit_code == 2 and "'eval.holdout' = 0.9 leaves site" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


def test_tiny_sites_run_without_holdout_and_say_so(tiny, tmp_path):
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), *[a for o in tiny for a in ("--set", o)]])
    assert res.exit_code == 0 and "held-out evaluation off: site 0 has 32 images" in res.output
    assert not any(r.get("real") == "holdout" for r in _records(tmp_path / "r"))
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()


def test_each_sites_own_model_is_scored_on_the_held_out_images(tiny, tmp_path):
    """The `local` baseline (no global model) is held to the same held-out images as a federated
    run: each site's own model gets held-out records, and the sweep judges the run by their mean."""
    from fedsynth.sweep import score_series
    run = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(run), *[a for o in tiny + HELD + ["fed.strategy=local"]
                                                          for a in ("--set", o)]])
    assert res.exit_code == 0, res.output
    recs = _records(run)
    held = {(r["client"], r["round"]): r["value"] for r in recs if r["metric"] == "fd-random" and r.get("real") == "holdout"}
    assert set(held) == {(c, r) for c in ("0", "1") for r in (0, 1, 2)}
    assert not any(r["client"] == "global" for r in recs if r["metric"] == "fd-random")
    series, what, real = score_series(recs)
    assert real == "holdout" and what == "mean of local models on the held-out images"
    assert series == [(r, (held[("0", r)] + held[("1", r)]) / 2) for r in (0, 1, 2)]
    assert not (run / "checkpoints" / "best.pt").exists()  # no global model: no best round to keep
