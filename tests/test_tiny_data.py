"""Folders of 1-3 images: a clear one-line error before anything is written, never a traceback."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError, load_config
from fedsynth.data import ImageSet
from fedsynth.fed.evaluation import Evaluator, RealStats, check_enough_images
from fedsynth.metrics import FeatureStats, build_extractor

runner = CliRunner()


def _folder(tmp_path, n):
    """``n`` 20x20 grey PNGs in one class folder."""
    d = tmp_path / f"imgs{n}"
    (d / "scans").mkdir(parents=True)
    for i in range(n):
        arr = (np.random.default_rng(i).random((20, 20)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / "scans" / f"{i}.png")
    return d


def _run(tiny, folder, clients, *extra):
    sets = tiny + ["data.source=folder", f'data.path="{folder}"', f"partition.clients={clients}",
                   "train.threads=1", *extra]
    return runner.invoke(app, ["run", "--out", "out", *[a for s in sets for a in ("--set", s)]])


@pytest.mark.parametrize("n, clients, where, need", [
    (1, 1, "site 0 has 1 of 1 image(s) over 1 site(s)", 2),
    (2, 2, "site 0 has 1, site 1 has 1 of 2 image(s) over 2 site(s)", 4),
    (3, 2, "has 1 of 3 image(s) over 2 site(s)", 4),
])
def test_too_few_images_to_evaluate_exit_2_before_anything_is_written(tiny, tmp_path, n, clients, where, need):
    res = _run(tiny, _folder(tmp_path, n), clients)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output  # a clean exit, not a crash
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: too few images to evaluate: ") and where in lines[0], lines[0]
    assert f"at least 2 of them per site, so at least {need} images here" in lines[0]
    assert "eval.enabled = false" in lines[0]
    assert not (tmp_path / "out").exists()  # no config.toml, no partition.json


def test_one_image_over_two_sites_is_a_split_error(tiny, tmp_path):
    res = _run(tiny, _folder(tmp_path, 1), 2)
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: cannot split 1 images among 2 clients (config key 'partition.clients')"], res.output
    assert not (tmp_path / "out").exists()


def test_one_image_trains_with_evaluation_off(tiny, tmp_path):
    res = _run(tiny, _folder(tmp_path, 1), 1, "eval.enabled=false")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out" / "checkpoints").glob("round-*.pt"))) >= 1


def test_two_images_on_one_site_are_enough_to_evaluate(tiny, tmp_path):
    res = _run(tiny, _folder(tmp_path, 2), 1, "fed.rounds=1", "eval.per-site=false")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    fd = [r for r in recs if r["metric"] == "fd-random" and r["client"] == "global"]
    assert [r["round"] for r in fd] == [0, 1] and all(r["num_real"] == 2 for r in fd)
    assert all(r["few_real"] is True for r in fd)  # the caveat travels with the number in the records


def test_enough_real_images_carry_no_few_real_flag(tiny, tmp_path):
    res = _run(tiny, _folder(tmp_path, 600), 1, "fed.rounds=1", "eval.per-site=false", "eval.holdout=0",
               "eval.num-samples=16")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    fd = [r for r in recs if r["metric"] == "fd-random" and r["client"] == "global"]
    assert fd and all(r["num_real"] == 600 and "few_real" not in r for r in fd)


def _parts(*sizes):
    return [ImageSet(np.zeros((n, 1, 16, 16), np.uint8), np.zeros(n, np.int64), ("a",), f"site{k}")
            for k, n in enumerate(sizes)]


def test_check_counts_the_pooled_site_for_centralized():
    cfg = load_config(None, ["partition.clients=2"])
    with pytest.raises(UserError, match="site 1 has 1 of 3"):
        check_enough_images(cfg, _parts(2, 1))
    check_enough_images(load_config(None, ["partition.clients=2", "fed.strategy=centralized"]), _parts(2, 1))
    check_enough_images(load_config(None, ["partition.clients=2", "eval.enabled=false"]), _parts(1, 1))


def test_evaluator_refuses_a_site_with_one_image_clearly():
    from fedsynth.models import build_model
    """Callers that do not check first (sweeps, the Flower server) get the same UserError,
    not numpy's covariance ValueError."""
    ext = build_extractor("random")
    gen = np.random.default_rng(0)
    real = {"0": RealStats(FeatureStats.of(gen.random((5, ext.dims))), None),
            "1": RealStats(FeatureStats.of(gen.random((1, ext.dims))), None)}
    counts = {"0": np.array([5]), "1": np.array([1])}
    with pytest.raises(UserError, match="site 1 has 1 of 6 image"):
        Evaluator(load_config().eval, ext, real, counts, build_model(load_config(), 16, 1, 1), seed=0)
