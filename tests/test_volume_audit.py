"""The memorisation audit of volumes (issue 26 item 6): nearest neighbours in the random
network's feature space, per plane; a copying generator is flagged on every plane, a sampler of
new volumes on none; `fedsynth audit` on a tiny 3-D run writes the per-plane JSON. 16³ volumes."""

import json

import pytest
import torch
from test_volume_gan import VOL, _sets
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.data.phantoms3d import make_volume_phantom
from fedsynth.metrics import RandomConvFeatures
from fedsynth.privacy import volume_memorisation_audit
from fedsynth.privacy.audit import plane_embeddings


@pytest.fixture(scope="module")
def sets():
    train = make_volume_phantom("phantom-ct", 12, 16, seed=0).batch()
    held = make_volume_phantom("phantom-ct", 12, 16, seed=1).batch()
    return train, held


def test_a_copying_generator_is_flagged_on_every_plane_and_a_new_one_on_none(sets):
    train, held = sets
    noise = 0.02 * torch.randn(24, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    copies = train[torch.arange(24) % 12] + noise
    fresh = make_volume_phantom("phantom-ct", 24, 16, seed=2).batch()     # held-out-like volumes
    bad, good = volume_memorisation_audit(copies, train, held), volume_memorisation_audit(fresh, train, held)
    assert set(bad.planes) == set(good.planes) == {"xy", "yz", "zx"}
    assert bad.flagged and bad.flagged_planes == ["xy", "yz", "zx"]
    for r in bad.planes.values():
        assert r.nearer_train_fraction > 0.95 and r.median_ratio < 0.4
        assert all(train_j == fake_i % 12 for fake_i, train_j, _ in r.closest)   # each copy finds its source
    assert not good.flagged and good.flagged_planes == []
    for r in good.planes.values():
        assert r.nearer_train_fraction < 0.75 and r.median_ratio > 0.8
    assert "random-conv-v1" in bad.extractor and bad.slices == 8


def test_plane_embeddings_are_the_slices_features_in_order(sets):
    """A volume's row on a plane is its slices' 2-D features, concatenated in slice order."""
    vols = sets[0][:2]
    ext = RandomConvFeatures()
    rows = plane_embeddings(vols, ext, slices=4)
    assert {p: tuple(r.shape) for p, r in rows.items()} == {p: (2, 4 * 480) for p in ("xy", "yz", "zx")}
    idx = [2, 6, 10, 14]                                                    # 4 evenly spaced of 16
    want_yz = torch.cat([ext.extract(vols[1:2, :, :, :, i]) for i in idx], dim=1).double()
    assert torch.allclose(rows["yz"][1:2], want_yz, atol=1e-5)


def test_the_audit_command_on_a_tiny_3d_run(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", *_sets(VOL + ["fed.rounds=1", "fed.local-steps=1", "eval.enabled=false"]),
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["audit", "--checkpoint", str(tmp_path / "run"), "--train", "phantom-ct",
                              "--held", "phantom-ct", "--train-set", "data.num-images=8",
                              "--held-set", "data.num-images=8", "--held-set", "run.seed=9",
                              "-n", "8", "--out", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "nearest neighbours per plane in the feature space of random-conv-v1" in out
    assert all(f"{p}: " in out for p in ("xy", "yz", "zx"))
    a = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert a["space"] == "features per plane" and a["feature_network"].startswith("random-conv-v1")
    assert set(a["planes"]) == {"xy", "yz", "zx"} and a["generated"] == 8 and a["train_volumes"] == 8
    for p in a["planes"].values():
        assert {"nearer_train_fraction", "median_ratio", "memorisation_flagged", "diversity_ratio", "closest"} <= set(p)
    assert a["memorisation_flagged"] == any(p["memorisation_flagged"] for p in a["planes"].values())
    assert (tmp_path / "a" / "closest-pairs.png").is_file() and (tmp_path / "a" / "embedding-pca.png").is_file()
    # the trained network's space instead of the random one's, when asked; a network that does not exist: exit 2
    res = runner.invoke(app, ["audit", "--checkpoint", str(tmp_path / "run"), "--train", "phantom-ct",
                              "--held", "phantom-ct", "--train-set", "data.num-images=8", "--held-set", "data.num-images=8",
                              "--held-set", "run.seed=9", "-n", "8", "--out", str(tmp_path / "b"),
                              "--extractor", "effnet-lite0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "audit.json").read_text())["feature_network"].startswith("effnet-lite0")
    res = runner.invoke(app, ["audit", "--checkpoint", str(tmp_path / "run"), "--train", "phantom-ct",
                              "--held", "phantom-ct", "--out", str(tmp_path / "c"), "--extractor", "nosuch"])
    assert res.exit_code == 2 and "nosuch" in res.output and "effnet-lite0" in res.output
