"""The diffusion family (``model.family = "diffusion"``) behind the same interface as the GANs:
it trains end to end with FedAvg, FedProx and SCAFFOLD, under DP-SGD (reporting epsilon), class-
conditionally with guidance; it samples deterministically from its latents; a killed run resumes
bit-identical; bad ``[diffusion]`` values are clear config errors. Tiny: 16 px, an 8-channel
two-level UNet, 20 timesteps, 3 DDIM steps."""

import json
import os
import sys

import pytest
import torch
from conftest import kill_9_when
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError, build_config
from fedsynth.data import load_dataset, partition
from fedsynth.fed import build_in_process
from fedsynth.models import build_model, model_from_description

DIFF = ["model.family=diffusion", "diffusion.channels=[8, 8]", "diffusion.attention=[false, true]",
        "diffusion.norm-groups=4", "diffusion.timesteps=20", "diffusion.sampling-steps=3"]


@pytest.fixture
def tiny_d(tiny):
    return tiny + DIFF + ["eval.num-samples=32", "eval.per-site=false", "train.threads=1"]


def _run(overrides):
    cfg = build_config(overrides=overrides)
    data = load_dataset(cfg)
    return build_in_process(cfg, partition(data, cfg.partition.scheme, cfg.partition.clients, cfg.run.seed)).run()


def _model(overrides=()):
    cfg = build_config(overrides=["data.image-size=16", *DIFF, *overrides])
    return build_model(cfg, 16, 1, 2)


def test_fedavg_trains_end_to_end_and_records_how_it_sampled(tiny_d):
    res = _run(tiny_d)
    init = _model().state()
    g = res.global_state
    assert set(g) == set(init) and "G.ema_steps" in g and g["G.ema_steps"].dtype == torch.long
    assert int(g["G.ema_steps"]) == 2 * 2  # two rounds of two local steps, the clients' mean
    moved = [k for k in init if k.startswith("G.unet.") and not torch.equal(init[k], g[k])]
    assert len(moved) > 0.9 * sum(k.startswith("G.unet.") for k in init)
    # the EMA copy trails the UNet: it moved, but not as far
    key = "G.unet.conv_in.conv.weight"
    ema_key = key.replace("G.unet.", "G.ema.")
    assert 0 < (g[ema_key] - init[ema_key]).norm() < (g[key] - init[key]).norm()
    losses = [r["value"] for r in res.records if r["metric"] == "loss"]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    fd = [r for r in res.records if r["metric"] == "fd-random" and r["client"] == "global"]
    assert [r["round"] for r in fd] == [0, 1, 2]
    assert all(r["sampler"] == "ddim" and r["sampler-steps"] == 3 for r in fd)


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_hooks_change_local_training(tiny_d, strategy):
    """FedProx's proximal term and SCAFFOLD's correction reach the UNet's gradients."""
    over = tiny_d + ["eval.enabled=false", "fed.rounds=2"]
    ref = _run(over).global_state
    res = _run(over + [f"fed.strategy={strategy}", "fed.mu=10.0"])
    assert all(torch.isfinite(v).all() for v in res.global_state.values() if v.is_floating_point())
    changed = [k for k in ref if k.startswith("G.unet.") and not torch.equal(ref[k], res.global_state[k])]
    assert changed  # the hook altered training (identical to FedAvg otherwise)
    if strategy == "scaffold":
        ci = res.client_states["0"].strategy["scaffold_c"]   # control variates: the UNet's parameters only
        assert set(ci) == _model().parameter_keys() and any(v.abs().sum() > 0 for v in ci.values())


def test_norm_keys_are_the_groupnorm_layers_of_unet_and_ema():
    m = _model()
    groupnorms = {f"{name}.{p}" for name, mod in m.nets.named_modules() if isinstance(mod, torch.nn.GroupNorm)
                  for p in ("weight", "bias")}
    keys = m.norm_keys()
    assert keys == groupnorms and any(k.startswith("G.unet.") for k in keys) and any(k.startswith("G.ema.") for k in keys)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_a_function_of_the_latents(sampler):
    m = _model([f"diffusion.sampler={sampler}"])
    z = m.latents(4, torch.Generator().manual_seed(1))
    a = m.sample(None, z, batch=4)
    b = m.sample(None, z, batch=2)                     # another batching
    c = m.sample(None, z[[2, 3, 0, 1]], batch=4)       # another order
    assert a.shape == (4, 1, 16, 16) and a.abs().max() <= 1
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[[2, 3, 0, 1]], c, atol=1e-5)
    assert torch.equal(a, m.sample(None, z, batch=4))
    assert not torch.allclose(a[0], a[1])


def test_ddim_timesteps_are_the_ones_monai_steps_between():
    from fedsynth.models.diffusion import ddim_timesteps
    assert ddim_timesteps(1000, 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim_timesteps(20, 3) == [12, 6, 0]
    m = _model()
    for t, nxt in zip(ddim_timesteps(20, 3), ddim_timesteps(20, 3)[1:]):
        m.ddim.set_timesteps(3)  # what MONAI's step subtracts
        assert t - m.ddim.num_train_timesteps // m.ddim.num_inference_steps == nxt


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_v_prediction_steps_like_epsilon_given_the_exact_output(sampler):
    """With the true noise (epsilon) or the true v = sqrt(a) e - sqrt(1 - a) x0 as the UNet's
    output, one sampling step lands on the same sample: the two parameterisations differ only in
    what the network learns."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(3, 1, 16, 16, generator=g) * 1.6 - 0.8
    e = torch.randn(3, 1, 16, 16, generator=g)
    eps_m, v_m = (_model([f"diffusion.sampler={sampler}", f"diffusion.prediction={p}"]) for p in ("epsilon", "v"))
    for t in (15, 6, 0):
        tt = torch.full((3,), t)
        xt = eps_m.ddpm.add_noise(x0, e, tt)
        v = v_m.ddpm.get_velocity(x0, e, tt)
        if sampler == "ddpm":
            a, b = eps_m._ddpm_step(e, t, xt, None), v_m._ddpm_step(v, t, xt, None)
        else:
            for m in (eps_m, v_m):
                m.ddim.set_timesteps(3)
            a, b = eps_m.ddim.step(e, t, xt)[0], v_m.ddim.step(v, t, xt)[0]
        assert torch.allclose(a, b, atol=1e-5), t


def test_v_prediction_trains_towards_v(tiny_d):
    """The loss is measured against v (the default), not the noise: a v-model's first loss differs
    from an epsilon-model's on the same batch, and the run samples and scores as usual."""
    over = tiny_d + ["fed.rounds=1", "partition.clients=1", "eval.enabled=false"]
    eps_loss = [r["value"] for r in _run(over + ["diffusion.prediction=epsilon"]).records if r["metric"] == "loss"]
    res = _run(over)
    v_loss = [r["value"] for r in res.records if r["metric"] == "loss"]
    assert len(v_loss) == 1 and 0 < v_loss[0] < 10 and v_loss != eps_loss
    m = _model(["diffusion.prediction=v"])
    m.load(res.global_state)
    x = m.sample(None, m.latents(4, torch.Generator().manual_seed(0)))
    assert torch.isfinite(x).all() and x.abs().max() <= 1
    assert model_from_description(m.describe()).spec.prediction == "v"


def test_conditional_model_with_classifier_free_guidance(tiny_d):
    over = tiny_d + ["diffusion.conditional=true", "diffusion.guidance-scale=3.0", "eval.enabled=false",
                     "fed.rounds=1"]
    res = _run(over)
    cfg = build_config(overrides=over)
    m = build_model(cfg, 16, 1, 2)
    assert m.conditional and m.provenance() == {"sampler": "ddim", "sampler-steps": 3, "guidance": 3.0}
    st = res.global_state
    a, b = m.generate(st, 4, seed=0, label=0), m.generate(st, 4, seed=0, label=1)
    assert a.shape == (4, 1, 16, 16) and not torch.allclose(a, b)   # the label changes the samples
    plain = build_model(build_config(overrides=over + ["diffusion.guidance-scale=1.0"]), 16, 1, 2)
    assert not torch.allclose(plain.generate(st, 4, seed=0, label=0), a)  # guidance changes them too
    with pytest.raises(ValueError, match="class-conditional"):
        _model().generate(None, 2, seed=0, label=1)


def test_dp_sgd_on_the_unet_reports_epsilon(tiny_d):
    res = _run(tiny_d + ["privacy.dp-sgd=true", "privacy.dp-noise=1.0", "eval.enabled=false"])
    eps = [r for r in res.records if r["metric"] == "dp-epsilon"]
    assert len(eps) == 4 and all(r["value"] > 0 for r in eps)
    by_client = {}
    for r in eps:
        by_client.setdefault(r["client"], []).append(r["value"])
    assert all(v[1] > v[0] for v in by_client.values())   # the budget grows round by round


def test_dp_sgd_clips_each_example():
    """No noise: the UNet's gradient is the mean of per-example gradients clipped to the bound."""
    from fedsynth.privacy.dp import DPSGD
    m = _model()
    unet = m.G.unet
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 1, 16, 16, generator=g)
    t = torch.randint(0, 20, (4,), generator=g)
    m._dp_backward(DPSGD(1e-3, 0.0, g), unet, x, e, t, None)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in unet.parameters()))
    assert 0 < norm <= 1e-3 * (1 + 1e-5)


def test_checkpoint_description_round_trips():
    m = _model(["diffusion.conditional=true", "diffusion.schedule=cosine"])
    desc = json.loads(json.dumps(m.describe()))
    r = model_from_description(desc)
    assert r.describe() == m.describe() and set(r.state()) == set(m.state())
    r.load(m.state())
    z = m.latents(2, torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    assert torch.equal(r.sample(None, z, y), m.sample(None, z, y))


@pytest.mark.parametrize("override, message", [
    ("diffusion.attention=[true]", "one true/false per level"),
    ("diffusion.channels=[8, 10]", "multiple of 'diffusion.norm-groups'"),
    ("diffusion.channels=[8, 8, 8, 8, 8]", "fewer levels"),
    ("diffusion.channels=[]", "non-empty list of positive integers"),
    ("diffusion.sampling-steps=50", "exceeds 'diffusion.timesteps'"),
    ("diffusion.sampler=euler", "must be one of ddim, ddpm"),
    ("diffusion.beta-start=0.5", "start must be below the end"),
    ("diffusion.ema-decay=1.5", "must be <= 0.99999"),
    ("model.conditional=multiply", "diffusion.conditional = true"),
])
def test_bad_diffusion_values_are_clear_config_errors(override, message):
    over = ["data.image-size=16", *DIFF, "diffusion.attention=[false, true]", override]
    if "channels" in override:
        over.insert(-1, "diffusion.attention=[false, false, false, false, false]" if "8, 8, 8" in override
                    else "diffusion.attention=[false, false]")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_config(overrides=over)


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _final(run):
    ck = sorted((run / "checkpoints").glob("*.pt"))[-1]
    return torch.load(ck, weights_only=True)


@pytest.mark.timeout(600)
def test_kill_9_then_resume_is_bit_identical(tiny_d, tmp_path):
    """Killed after its first checkpoint: --resume gives the uninterrupted run's weights (UNet,
    EMA, its step count) and metrics, bit for bit."""
    over = tiny_d + ["fed.rounds=3", "fed.local-steps=10", "eval.enabled=false", "run.keep-checkpoints=3"]
    runner = CliRunner()
    res = runner.invoke(app, ["run", *_sets(over), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = out / "checkpoints" / "round-0001.pt"
    assert kill_9_when([sys.executable, "-m", "fedsynth", "run", *_sets(over), "--out", str(out)], env,
                       first.is_file), "the run ended before it could be killed"
    assert (out / "checkpoints" / "round-0001.pt").is_file() and not (out / "checkpoints" / "round-0003.pt").is_file()
    res = runner.invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    a, b = _final(tmp_path / "ref"), _final(out)
    assert b["round"] == 3 and set(a["global"]) == set(b["global"])
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
