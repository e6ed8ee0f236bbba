"""Every strategy and every GAN variant runs end to end on a tiny config."""

import numpy as np
import pytest
import torch

from fedsynth.config import UserError, build_config
from fedsynth.data import load_dataset, partition_for
from fedsynth.fed import build_in_process
from fedsynth.fed.strategies import STRATEGIES
from fedsynth.models import ModelSpec, build_gan


def _run(overrides, run_dir=None):
    cfg = build_config(overrides=overrides)
    data = load_dataset(cfg)
    return build_in_process(cfg, partition_for(cfg, data)).run(run_dir)


def _fd(res, who="global"):
    return [r["value"] for r in res.records if r["metric"] == "fd-random" and r["client"] == who
            and r["real"] in ("union", who)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_end_to_end(tiny, strategy):
    res = _run(tiny + [f"fed.strategy={strategy}", "partition.clients=3", "data.num-images=72"])
    fds = [r["value"] for r in res.records if r["metric"] == "fd-random"]
    assert fds and all(np.isfinite(fds))
    if strategy not in ("local",):
        assert len(_fd(res)) == 3  # rounds 0, 1, 2
    if res.global_state is not None:
        assert all(torch.isfinite(v.double()).all() for v in res.global_state.values())


@pytest.mark.parametrize("variant", [
    ["train.loss=hinge"],
    ["train.loss=hinge", "model.spectral-norm=true"],
    ["train.loss=wgan-gp", "model.d-norm=group", "train.n-critic=2"],
    ["model.g-norm=group", "model.d-norm=group"],
    ["model.conditional=multiply"],
    ["model.conditional=concat", "model.d-conditioning=projection"],
    ["model.conditional=multiply", "model.d-conditioning=acgan"],
    ["train.diffaugment=color,translation,cutout"],
    ["fed.ema=0.5"],
    ["data.image-size=32", "data.source=phantom-histo"],
])
def test_every_variant_runs_end_to_end(tiny, variant):
    res = _run(tiny + variant)
    assert all(np.isfinite(_fd(res)))
    assert all(np.isfinite(r["value"]) for r in res.records if r["metric"] in ("d-loss", "g-loss"))


def test_same_seed_same_weights_for_stateful_strategies(tiny):
    for s in ("scaffold", "fedadam", "feddyn"):
        a, b = _run(tiny + [f"fed.strategy={s}"]), _run(tiny + [f"fed.strategy={s}"])
        assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state), s


def test_share_g_keeps_discriminators_local_and_halves_traffic(tiny):
    full = _run(tiny)
    g_only = _run(tiny + ['fed.share=["G"]'])
    sent = lambda res: [r["value"] for r in res.records if r["metric"] == "bytes-sent"]  # noqa: E731
    G = build_gan(ModelSpec(image_size=16, channels=1, nz=16, ngf=8, ndf=8))
    g_bytes = sum(v.numel() * v.element_size() for k, v in G.state_dict().items() if k.startswith("G."))
    all_bytes = sum(v.numel() * v.element_size() for v in G.state_dict().values())
    assert set(sent(g_only)) == {g_bytes} and set(sent(full)) == {all_bytes}
    c0, c1 = g_only.client_states["0"].local, g_only.client_states["1"].local
    assert set(c0) == {k for k in G.state_dict() if k.startswith("D.")}
    assert not torch.equal(c0["D.head.weight"], c1["D.head.weight"])   # each keeps its own D


def test_fedbn_keeps_norm_layers_local(tiny):
    res = _run(tiny + ["fed.strategy=fedbn"])
    c0, c1 = res.client_states["0"].local, res.client_states["1"].local
    assert c0 and all("running_mean" in k or "weight" in k or "bias" in k or "num_batches" in k or "running_var" in k for k in c0)
    assert not torch.equal(c0["G.net.1.running_mean"], c1["G.net.1.running_mean"])


def test_fedsgd_takes_one_step(tiny, tmp_path):
    from fedsynth.report import RunDir
    rd = RunDir.create(tmp_path / "r", "x")
    _run(tiny + ["fed.strategy=fedsgd"], rd)
    assert {t["steps"] for t in rd.timings if t["client"] != "server"} == {1}


def test_swt_visits_each_client_once_in_blocks(tiny, tmp_path):
    from fedsynth.report import RunDir
    rd = RunDir.create(tmp_path / "r", "x")
    _run(tiny + ["fed.strategy=swt", "fed.rounds=4"], rd)
    order = [t["client"] for t in rd.timings if t["client"] != "server"]
    assert order == ["0", "0", "1", "1"]
    rd2 = RunDir.create(tmp_path / "r", "y")
    _run(tiny + ["fed.strategy=cwt"], rd2)
    assert [t["client"] for t in rd2.timings if t["client"] != "server"] == ["0", "1", "0", "1"]


def test_init_from_a_checkpoint_and_mismatch(tiny, tmp_path):
    from fedsynth.report import RunDir
    rd = RunDir.create(tmp_path / "r", "pre")
    pre = _run(tiny + ["fed.strategy=centralized"], rd)
    ck = sorted((rd.path / "checkpoints").glob("*.pt"))[-1]
    fine = build_in_process(build_config(overrides=tiny + [f'fed.init-from="{ck}"', "fed.rounds=1"]),
                            partition_for(build_config(overrides=tiny), load_dataset(build_config(overrides=tiny)))).server
    assert all(torch.equal(fine.global_state[k], pre.global_state[k]) for k in pre.global_state)
    with pytest.raises(UserError, match="fed.init-from.*lacks|fed.init-from.*shape"):
        cfg = build_config(overrides=tiny + [f'fed.init-from="{ck}"', "model.ngf=4"])
        build_in_process(cfg, partition_for(cfg, load_dataset(cfg)))


def test_conditional_generator_uses_the_label():
    gan = build_gan(ModelSpec(image_size=16, channels=1, nz=8, ngf=4, ndf=4, num_classes=3,
                              g_conditioning="multiply", d_conditioning="projection"), seed=0)
    z = torch.randn(4, 8)
    gan.G.eval()
    a, b = gan.G(z, torch.zeros(4, dtype=torch.long)), gan.G(z, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)
    assert gan.D(a, torch.zeros(4, dtype=torch.long)).shape == (4,)
    ac = build_gan(ModelSpec(image_size=16, channels=1, nz=8, ngf=4, ndf=4, num_classes=3,
                             g_conditioning="concat", d_conditioning="acgan"), seed=0)
    logit, aux = ac.D(a)
    assert logit.shape == (4,) and aux.shape == (4, 3)


@pytest.mark.parametrize("size", [128, 256])
def test_large_architectures(size):
    gan = build_gan(ModelSpec(image_size=size, channels=3, nz=8, ngf=2, ndf=2), seed=0)
    x = gan.G(torch.randn(2, 8))
    assert x.shape == (2, 3, size, size) and gan.D(x).shape == (2,)


def test_d_conditioning_needs_conditional_g():
    with pytest.raises(UserError, match="model.d-conditioning"):
        build_config(overrides=["model.d-conditioning=projection"])
