"""The volumetric DCGAN (data.dims = 3) behind the GAN family's interface: shapes, conditioning,
folded sampling; a killed 3-D run resumes bit-identical; 16-voxel cubes, 4-channel networks."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import kill_9_when
from fedsynth.config import build_config
from fedsynth.models import Discriminator, Generator, build_model, model_from_description

VOL = ["data.dims=3", "data.source=phantom-ct", "data.image-size=16", "data.num-images=16", "model.nz=8",
       "model.ngf=4", "model.ndf=4", "train.batch-size=4", "train.threads=1", "eval.num-samples=8",
       "eval.kid-subsets=3", "eval.kid-subset-size=16", "eval.grid-size=4", "eval.feature-extractor=random",
       "eval.volume-slices=4", "fed.min-local-steps=0"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize("g_cond,d_cond", [("none", "none"), ("multiply", "projection"), ("concat", "acgan")])
def test_volumetric_networks_shapes(g_cond, d_cond):
    G = Generator(16, 1, 8, 4, num_classes=2, conditional=g_cond, dims=3)
    D = Discriminator(16, 1, 4, num_classes=2, conditional=d_cond, dims=3)
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 1])
    x = G(z, y)
    assert x.shape == (3, 1, 16, 16, 16) and x.abs().max() <= 1
    out = D(x, y)
    logit = out[0] if d_cond == "acgan" else out
    assert logit.shape == (3,)
    if d_cond == "acgan":
        assert out[1].shape == (3, 2)
    assert isinstance(G.net[0], torch.nn.ConvTranspose3d) and isinstance(D.features[0], torch.nn.Conv3d)


def test_gan_model_on_volumes_trains_samples_and_round_trips():
    cfg = build_config(overrides=VOL)
    model = build_model(cfg, 16, 1, 2)
    assert model.describe()["dims"] == 3
    from fedsynth.data import load_dataset
    data = load_dataset(cfg)
    before = model.state()
    r = model.train(data, 2, 4, torch.Generator().manual_seed(0))
    assert r.steps == 2 and set(r.losses) == {"d-loss", "g-loss"}
    after = model.state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    z = model.latents(3, torch.Generator().manual_seed(1))
    folded = model.sample(None, z)                                  # BatchNorm folded into the convolutions
    model.gan.G.eval()
    with torch.no_grad():
        plain = model.gan.G(z)
    assert folded.shape == (3, 1, 16, 16, 16) and torch.allclose(folded, plain, atol=1e-5)
    again = model_from_description(model.describe())               # what a checkpoint rebuilds
    again.load(after)
    assert torch.equal(again.sample(None, z), folded)


@pytest.mark.timeout(600)
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    """A 3-D run killed after its first checkpoint: --resume gives the uninterrupted run's
    weights and metrics (per-plane records included), bit for bit."""
    over = VOL + ["fed.rounds=3", "fed.local-steps=12", "eval.every=0", "eval.per-site=false", "run.keep-checkpoints=3"]
    # both runs in processes with one BLAS thread: the float64 moments of 1,440-d rows are summed
    # in another order by a multi-threaded BLAS (last-digit differences)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "fedsynth", "run", *_sets(over), "--out", str(tmp_path / "ref")],
                   check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    first = out / "checkpoints" / "round-0001.pt"
    assert kill_9_when([sys.executable, "-m", "fedsynth", "run", *_sets(over), "--out", str(out)], env,
                       first.is_file), "the run ended before it could be killed"
    assert not (out / "checkpoints" / "round-0003.pt").is_file()
    res = subprocess.run([sys.executable, "-m", "fedsynth", "run", "--resume", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    def final(run):
        return torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    a, b = final(tmp_path / "ref"), final(out)
    assert b["round"] == 3 and a["model"]["dims"] == 3 and set(a["global"]) == set(b["global"])
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    text = (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert '"plane": "yz"' in text and text == (out / "metrics.jsonl").read_text()


@pytest.mark.parametrize("extra", [
    ["fed.strategy=scaffold"],
    ["fed.strategy=fedbn", "fed.ema=0.5"],
    ["privacy.dp-sgd=true", "model.d-norm=group", "privacy.dp-noise=0.5"],
])
def test_strategies_ema_and_dp_sgd_train_volumes(extra):
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    cfg = build_config(overrides=VOL + ["fed.rounds=1", "fed.local-steps=2", "eval.enabled=false", *extra])
    data = load_dataset(cfg)
    res = build_in_process(cfg, partition_for(cfg, data)).run()
    assert all(torch.isfinite(v.float()).all() for v in res.global_state.values())
    if "privacy.dp-sgd=true" in extra:
        assert any(r["metric"] == "dp-epsilon" and r["value"] > 0 for r in res.records)


def test_generate_writes_nifti_with_the_voxel_size_and_preview_shows_slices(tmp_path):
    import nibabel as nib
    import numpy as np
    from typer.testing import CliRunner

    from fedsynth.cli import app
    runner = CliRunner()
    over = VOL + ["fed.rounds=1", "fed.local-steps=1", "eval.enabled=false"]
    res = runner.invoke(app, ["run", *_sets(over), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "--checkpoint", str(tmp_path / "run"), "-n", "2", "-o", str(tmp_path / "g")])
    assert res.exit_code == 0 and "wrote 2 volumes" in res.output, res.output
    img = nib.load(str(tmp_path / "g" / "000001.nii.gz"))
    assert img.shape == (16, 16, 16) and img.get_data_dtype() == np.uint8
    assert np.allclose(img.header.get_zooms(), 400 / 16)          # the chest phantom's 400 mm field of view
    from fedsynth.data.volumes import read_nifti_volume            # read back into the radiological axes
    from fedsynth.models import model_from_description
    ck = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    model = model_from_description(ck["model"])
    x = model.generate(ck["global"], 2, 0)[1, 0]
    want = ((x.clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert np.array_equal(read_nifti_volume(tmp_path / "g" / "000001.nii.gz")[0], want)
    res = runner.invoke(app, ["data", "preview", "phantom-mr", "-n", "2", "--size", "16", "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 1000, res.output
    res = runner.invoke(app, ["evaluate", "phantom-ct", "--checkpoint", str(tmp_path / "run"), "-n", "4",
                              "--extractor", "random", "-o", str(tmp_path / "scores.json")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "xy plane" in said and "zx plane" in said and "generated volumes" in said
    import json
    got = json.loads((tmp_path / "scores.json").read_text())
    planes = [got[f"fd-random-plane-{p}"] for p in ("xy", "yz", "zx")]
    assert got["fd-random"] == pytest.approx(np.mean(planes)) and got["num_real"] == got["num_fake"] == 4
    assert got["slices_real"] == 4 * 16 and "2.5d" in got["extractor"]            # every slice of every volume
    res = runner.invoke(app, ["utility", str(tmp_path / "run"), "--real-train", "phantom-ct", "--real-test", "phantom-ct"])
    assert res.exit_code == 2 and "works on 2-D images" in " ".join(res.output.split())


def test_a_volume_run_scores_64_volumes_unless_told_otherwise(tmp_path):
    """1,000 volumes (the images' default) would take minutes per evaluation; what a user sets stays."""
    from fedsynth.config import load_config
    vol = ["data.dims=3", "data.source=phantom-ct"]
    assert load_config(None, vol).eval.num_samples == 64
    assert load_config(None, vol + ["eval.num-samples=500"]).eval.num_samples == 500
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\ndims = 3\nsource = \"phantom-mr\"\n[eval]\nnum-samples = 12\n")
    assert load_config(toml).eval.num_samples == 12
    assert load_config(None, ["data.dims=2"]).eval.num_samples == 1000
