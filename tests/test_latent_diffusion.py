"""Latent diffusion: stage 1 (the autoencoder family) trains federated like any model; stage 2
(the latent-diffusion family) trains a UNet on the latents of a frozen autoencoder that every
site must hold identical (a hash pinned in config.toml, checked per site), and only the UNet's
weights travel. 2-D and 3-D, resume and DP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY, kill_9_when

from fedsynth.config import UserError, load_config
from fedsynth.fed.run import run_experiment

QUIET = ["eval.enabled=false"]  # mechanics, not scores: seconds per run
AE = ["model.family=autoencoder", "autoencoder.channels=[8, 8]"]
UNET = ["diffusion.channels=[8, 8]", "diffusion.attention=[false, false]"]
VOLUMES = ["data.dims=3", "data.source=phantom-ct", "data.num-images=12", "train.batch-size=4"]


def _cfg(*over):
    return load_config(None, [*TINY, *over])


def _run(out, *over):
    return run_experiment(_cfg(*over), out=out)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Two stage-1 runs (2-D, 16 px): the autoencoder every site holds, and one trained from
    another seed (a site that holds the wrong file)."""
    root = tmp_path_factory.mktemp("stage1")
    for name, seed in (("ae", 0), ("other", 1)):
        run_experiment(_cfg(*AE, *QUIET, f"run.seed={seed}"), out=root / name)
    return root


def _weights(run, which="round-0002.pt"):
    return torch.load(run / "checkpoints" / which, weights_only=True)


def test_stage_two_sends_only_the_unet_and_pins_the_autoencoder(tmp_path, stage1):
    from fedsynth.checkpoint import load_released
    from fedsynth.models.autoencoder import autoencoder_sha256
    ae_state = _weights(stage1 / "ae")["global"]
    _run(tmp_path / "ld", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}", *UNET, *QUIET)
    cfg = load_config(tmp_path / "ld" / "config.toml")
    assert cfg.autoencoder.sha256 == autoencoder_sha256(ae_state)  # pinned before the run was written
    ck = _weights(tmp_path / "ld")
    assert ck["model"]["autoencoder"]["sha256"] == cfg.autoencoder.sha256
    keys = set(ck["global"])
    assert keys and all(k.startswith(("G.unet.", "G.ema.", "G.ema_steps")) for k in keys), sorted(keys)[:5]
    sent = [json.loads(x) for x in (tmp_path / "ld" / "metrics.jsonl").read_text().splitlines()]
    sent = [r["value"] for r in sent if r["metric"] == "bytes-sent"]
    assert sent and set(sent) == {sum(v.numel() * v.element_size() for v in ck["global"].values())}
    # the released model samples images through the frozen decoder
    model, state, _ = load_released(tmp_path / "ld")
    x = model.generate(state, 3, seed=0)
    assert x.shape == (3, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert not any(k.startswith("autoencoder") for k in model.state())


def test_a_site_with_another_autoencoder_is_refused_by_name(tmp_path, stage1):
    with pytest.raises(UserError, match=r"site 1: the frozen autoencoder .* has sha256 .*not the run's"):
        _run(tmp_path / "ld", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}", *UNET, *QUIET,
             f"sites.1.autoencoder.path={stage1 / 'other'}")
    # the same file kept at another path is the same autoencoder: accepted
    import shutil
    shutil.copytree(stage1 / "ae" / "checkpoints", tmp_path / "copy" / "checkpoints")
    _run(tmp_path / "ok", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}", *UNET, *QUIET,
         f"sites.1.autoencoder.path={tmp_path / 'copy'}")
    assert (tmp_path / "ok" / "checkpoints" / "round-0002.pt").is_file()


def test_an_agreed_hash_checks_the_servers_copy_too(tmp_path, stage1):
    with pytest.raises(UserError, match="not the run's"):
        _run(tmp_path / "ld", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}",
             f"autoencoder.sha256={'0' * 64}", *UNET, *QUIET)


def test_stage_two_refuses_what_is_not_a_matching_autoencoder(tmp_path, stage1):
    with pytest.raises(UserError, match="needs config key 'autoencoder.path'"):
        _cfg("model.family=latent-diffusion")
    gan = tmp_path / "gan"
    _run(gan, *QUIET)
    with pytest.raises(UserError, match="is not an autoencoder"):
        _run(tmp_path / "a", "model.family=latent-diffusion", f"autoencoder.path={gan}", *UNET, *QUIET)
    with pytest.raises(UserError, match="the autoencoder was trained on"):
        _run(tmp_path / "b", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}", *UNET, *QUIET,
             "data.image-size=32")
    with pytest.raises(UserError, match="no such file"):
        _run(tmp_path / "c", "model.family=latent-diffusion", f"autoencoder.path={tmp_path / 'nowhere.pt'}", *UNET)


def test_stage_one_config_errors():
    with pytest.raises(UserError, match="adversarial-weight = 0 with DP-SGD"):
        _cfg(*AE, "autoencoder.adversarial-weight=0.1", "privacy.dp-sgd=true")
    with pytest.raises(UserError, match="multiple of 'autoencoder.norm-groups'"):
        _cfg(*AE, "autoencoder.channels=[8, 12]")
    with pytest.raises(UserError, match="'fixbn' freezes BatchNorm"):
        _cfg(*AE, "fed.strategy=fixbn")


def _images(n=32, size=16, dims=2, seed=0):
    from fedsynth.data import ImageSet
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((n, 1, *(size,) * dims), generator=g) * 80).to(torch.uint8)
    x[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] += 150  # a bright square to learn
    return ImageSet(x.numpy(), torch.zeros(n, dtype=torch.long).numpy(), ("all",), "test")


def test_the_autoencoder_learns_to_reconstruct_and_its_latent_scale_follows():
    from fedsynth.models.autoencoder import AutoencoderModel, AutoencoderSpec
    m = AutoencoderModel(AutoencoderSpec(image_size=16, widths=(8, 8)), lr=3e-3)
    data = _images()
    first = m.train(data, 5, 8, torch.Generator().manual_seed(0)).losses["recon-loss"]
    for _ in range(5):
        last = m.train(data, 10, 8, torch.Generator().manual_seed(1)).losses["recon-loss"]
    assert last < 0.6 * first, (first, last)
    assert float(m.G.latent_sq) != 1.0  # the running second moment moved from its start


def test_the_patch_discriminator_trains_beside_the_autoencoder():
    from fedsynth.models.autoencoder import AutoencoderModel, AutoencoderSpec
    m = AutoencoderModel(AutoencoderSpec(image_size=16, widths=(8, 8), adversarial_weight=0.1))
    r = m.train(_images(), 3, 8, torch.Generator().manual_seed(0))
    assert set(r.losses) == {"recon-loss", "kl-loss", "d-loss", "g-loss"}
    assert any(k.startswith("D.") for k in m.parameter_keys())
    from fedsynth.models.autoencoder import autoencoder_sha256
    s = m.state()
    changed = {**s, **{k: v + 1 for k, v in s.items() if k.startswith("D.") and v.is_floating_point()}}
    assert autoencoder_sha256(changed) == autoencoder_sha256(s)  # the discriminator is not part of the hash


def test_dp_sgd_on_the_autoencoder_noises_every_step():
    from fedsynth.models.autoencoder import AutoencoderModel, AutoencoderSpec
    from fedsynth.privacy.dp import DPSGD
    m = AutoencoderModel(AutoencoderSpec(image_size=16, widths=(8, 8)))
    before = m.state()
    r = m.train(_images(8), 2, 4, torch.Generator().manual_seed(0),
                dp=DPSGD(1.0, 1.0, torch.Generator().manual_seed(1)))
    assert r.private_steps == 2
    assert any(not torch.equal(before[k], v) for k, v in m.state().items())


@pytest.mark.timeout(600)
def test_volumes_latent_diffusion_resumes_bit_identical_after_kill_9(tmp_path):
    """3-D: a stage-1 run on chest CT volumes, then a stage-2 run killed mid-way and resumed gives
    the uninterrupted run's weights and records, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = lambda over: [a for o in over for a in ("--set", o)]  # noqa: E731
    base = [*TINY, *VOLUMES]
    cmd = [sys.executable, "-m", "fedsynth", "run"]
    subprocess.run(cmd + sets([*base, *AE, *QUIET]) + ["--out", str(tmp_path / "ae")], check=True, env=env,
                   capture_output=True)
    over = [*base, "model.family=latent-diffusion", f"autoencoder.path={tmp_path / 'ae'}", *UNET,
            "fed.rounds=3", *QUIET, "fed.local-steps=15"]
    ld = cmd + sets(over)
    subprocess.run(ld + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    assert kill_9_when(ld + ["--out", str(out)], env, lambda: (out / "checkpoints" / "round-0001.pt").is_file(),
                       timeout=300)  # killed while it ran
    res = subprocess.run(cmd + ["--resume", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    a, b = _weights(tmp_path / "ref", "round-0003.pt"), _weights(out, "round-0003.pt")
    assert a["model"]["dims"] == 3
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    losses = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                          if r["metric"] == "loss"]
    assert losses(tmp_path / "ref") == losses(out)


def test_volume_latents_sample_volumes():
    """The 3-D forms directly: an autoencoder on 16^3 volumes, a UNet on its 8^3 latents, and
    the sampled volumes decoded back to 16^3 in [-1, 1]."""
    from fedsynth.models.autoencoder import AutoencoderModel, AutoencoderSpec
    from fedsynth.models.diffusion import DiffusionSpec
    from fedsynth.models.latent import LatentDiffusionModel
    ae = AutoencoderModel(AutoencoderSpec(image_size=16, widths=(8, 8), dims=3))
    vols = _images(8, 16, dims=3)
    ae.train(vols, 2, 4, torch.Generator().manual_seed(0))
    spec = DiffusionSpec(image_size=8, channels=3, widths=(8, 8), attention=(False, False), dims=3,
                         sampling_steps=2, clip_sample=False)
    m = LatentDiffusionModel(spec, ae.frozen(), ae.describe(), "x" * 64)
    r = m.train(vols, 2, 4, torch.Generator().manual_seed(0))
    assert r.steps == 2 and r.losses["loss"] > 0
    z = m.latents(2, torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, 8, 8, 8)
    x = m.sample(None, z)
    assert x.shape == (2, 1, 16, 16, 16) and x.abs().max() <= 1


def test_pixel_space_diffusion_trains_on_volumes_too():
    from fedsynth.models.diffusion import DiffusionModel, DiffusionSpec
    m = DiffusionModel(DiffusionSpec(image_size=8, channels=1, widths=(8, 8), attention=(False, False), dims=3,
                                     sampling_steps=2))
    assert m.train(_images(4, 8, dims=3), 2, 2, torch.Generator().manual_seed(0)).steps == 2
    x = m.sample(None, m.latents(2, torch.Generator().manual_seed(0)))
    assert x.shape == (2, 1, 8, 8, 8) and x.abs().max() <= 1


def test_class_conditional_latent_diffusion_samples_each_class(tmp_path, stage1):
    """The UNet's label embedding and classifier-free guidance work on latents as on pixels: a
    conditional stage-2 run's released model draws images of a class asked for."""
    from fedsynth.checkpoint import load_released
    _run(tmp_path / "ld", "model.family=latent-diffusion", f"autoencoder.path={stage1 / 'ae'}", *UNET, *QUIET,
         "diffusion.conditional=true", "diffusion.guidance-scale=2.0")
    model, state, names = load_released(tmp_path / "ld")
    assert model.conditional and len(names) >= 2
    a, b = model.generate(state, 2, seed=0, label=0), model.generate(state, 2, seed=0, label=1)
    assert a.shape == b.shape == (2, 1, 16, 16) and not torch.equal(a, b)  # the same latents, another class
