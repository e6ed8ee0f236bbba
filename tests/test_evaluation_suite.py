"""Issue 5: metrics beyond FD, audits, and the generate / evaluate / audit / report commands."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.data import make_phantom
from fedsynth.metrics import prdc, sliced_wasserstein
from fedsynth.privacy import memorisation_audit

runner = CliRunner()


def test_prdc_same_distribution_vs_collapsed():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    same = prdc(real, rng.normal(size=(300, 8)))
    collapsed = prdc(real, rng.normal(size=(300, 8)) * 0.05)
    assert same["precision"] > 0.85 and same["recall"] > 0.85 and 0.7 < same["density"] < 1.3
    assert collapsed["recall"] < 0.1 and collapsed["coverage"] < same["coverage"]


def test_swd_separates_modalities_and_is_seeded():
    a = make_phantom("phantom-xray", 120, 32, seed=0).batch()
    b = make_phantom("phantom-xray", 120, 32, seed=1).batch()
    c = make_phantom("phantom-ct", 120, 32, seed=0).batch()
    same, other = sliced_wasserstein(a, b), sliced_wasserstein(a, c)
    assert other["swd"] > 3 * same["swd"] and set(same) == {"swd-32px", "swd-16px", "swd"}
    assert sliced_wasserstein(a, b) == same


def test_memorisation_audit_flags_copies_and_not_new_samples():
    train = make_phantom("phantom-histo", 64, 32, seed=0).batch()
    held = make_phantom("phantom-histo", 64, 32, seed=1).batch()
    fresh = make_phantom("phantom-histo", 200, 32, seed=2).batch()
    copies = train[torch.arange(200) % 64] + 0.02 * torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bad, good = memorisation_audit(copies, train, held), memorisation_audit(fresh, train, held)
    assert bad.flagged and bad.nearer_train_fraction > 0.95 and bad.median_ratio < 0.2
    assert not good.flagged and 0.3 < good.nearer_train_fraction < 0.7


def test_memorisation_audit_closest_pairs_index_the_training_set_given():
    """With more training than held-out images the audit compares an equal-sized random subset; the
    closest pairs still name each copy's source in the training set the caller gave (the picture of
    closest pairs shows those images)."""
    train = make_phantom("phantom-histo", 96, 32, seed=0).batch()
    held = make_phantom("phantom-histo", 32, 32, seed=1).batch()
    src = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    copies = train[src] + 0.01 * torch.randn(len(src), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = memorisation_audit(copies, train, held)
    assert len(res.closest) == 8
    for fake_i, train_j, _ in res.closest:
        assert train_j == int(src[fake_i])       # the copied image itself, not a subset position


@pytest.fixture
def conditional_run(tiny, tmp_path):
    args = ["run"] + [a for o in tiny + ["model.conditional=multiply", "model.d-conditioning=projection",
                                          "data.source=phantom-ct"] for a in ("--set", o)] + ["--out", str(tmp_path / "run")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return tmp_path / "run"


def test_report_is_self_contained_and_names_the_extractor(conditional_run):
    html = (conditional_run / "report.html").read_text()
    assert "random-conv-v1" in html and "fd-random" in html and "data:image/png;base64," in html
    for section in ("Final results", "Curves", "Samples", "Partition", "Configuration"):
        assert section in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert runner.invoke(app, ["report", str(conditional_run)]).exit_code == 0


def test_generate_writes_pngs_for_a_requested_class(conditional_run, tmp_path):
    res = runner.invoke(app, ["generate", "--checkpoint", str(conditional_run), "--n", "5", "--label", "2",
                              "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "g").glob("*.png"))) == 5 and "shoulders" in res.output
    bad = runner.invoke(app, ["generate", "--checkpoint", str(conditional_run), "--n", "5", "--label", "7",
                              "--out", str(tmp_path / "g2")])
    assert bad.exit_code == 2 and "--label 7" in bad.output


def test_evaluate_checkpoint_and_two_folders(conditional_run, tmp_path):
    res = runner.invoke(app, ["evaluate", "phantom-ct", "--checkpoint", str(conditional_run), "--n", "40",
                              "--extractor", "random", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "e.json").read_text())
    assert {"fd-random", "kid-random", "precision", "recall", "density", "coverage", "swd", "extractor"} <= set(out)
    runner.invoke(app, ["generate", "--checkpoint", str(conditional_run), "--n", "30", "--out", str(tmp_path / "g")])
    two = runner.invoke(app, ["evaluate", "phantom-ct", str(tmp_path / "g"), "--n", "30", "--size", "16",
                              "--extractor", "random"])
    assert two.exit_code == 0, two.output


def test_audit_command(conditional_run, tmp_path):
    res = runner.invoke(app, ["audit", "--checkpoint", str(conditional_run), "--train", "phantom-ct",
                              "--held", "phantom-ct", "--train-set", "data.num-images=64",
                              "--held-set", "data.num-images=64", "--held-set", "run.seed=9",
                              "--n", "50", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert {"nearer_train_fraction", "memorisation_flagged", "diversity_ratio"} <= set(a)
    assert (tmp_path / "a" / "closest-pairs.png").is_file() and (tmp_path / "a" / "embedding-pca.png").is_file()


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"nope")
    res = runner.invoke(app, ["generate", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "x.pt" in res.output


def test_evaluate_names_its_numbers_and_warns_on_few_images(wide_cli):
    """Each number in words with the way it is better; few real images and a cut --images are
    said, as is what could not be computed."""
    res = runner.invoke(app, ["evaluate", "phantom-ct", "phantom-ct", "-n", "4", "--size", "16", "--extractor",
                              "random"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Fréchet distance (fd-random)" in out and "lower" in out and "kernel distance, KID" in out
    assert "warning: the distances rest on 4 real images (fewer than the 480 feature dimensions" in out
    assert "precision, recall, density and coverage need more than 5 images" in out
