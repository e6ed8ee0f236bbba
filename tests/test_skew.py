"""FBN and FedCAR (fed/skew.py): their aggregation by hand, and against the pooled data."""

import math
import random

import numpy as np
import pytest
import torch

from fedsynth.fed import ClientUpdate, FedAvg
from fedsynth.fed.skew import FBN, FedCAR, bn_layers, consensus_distances, fedcar_weights, pooled_bn_statistics
from fedsynth.metrics import FeatureStats


# ---------------------------------------------------------------- FBN

def test_pooled_bn_statistics_by_hand():
    # site a: mean 0, var 1, 1 image share; site b: mean 2, var 1, 3 shares
    # mean = 0.25*0 + 0.75*2 = 1.5; var = 1 + 0.25*(1.5)^2 + 0.75*(0.5)^2 = 1 + 0.5625 + 0.1875 = 1.75
    mean, var = pooled_bn_statistics([torch.tensor([0.0]), torch.tensor([2.0])],
                                     [torch.tensor([1.0]), torch.tensor([1.0])], [1, 3])
    assert mean.item() == pytest.approx(1.5) and var.item() == pytest.approx(1.75)


def _skewed_sites(seed=0):
    """Three sites' activations (N_k x 4 channels) around different means: label skew."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 4, generator=g, dtype=torch.float64) * s + c
            for n, s, c in ((50, 1.0, -2.0), (120, 0.5, 0.0), (80, 2.0, 3.0))]


def _bn_updates(sites, extra_key=True):
    ups = []
    for k, x in enumerate(sites):
        w = {"D.bn.running_mean": x.mean(0).float(), "D.bn.running_var": x.var(0, unbiased=False).float(),
             "D.bn.num_batches_tracked": torch.tensor(10 * (k + 1))}
        if extra_key:
            w["D.conv.weight"] = torch.full((2, 2), float(k))
        ups.append(ClientUpdate(f"c{k}", w, len(x)))
    return ups


def test_fbn_gives_the_pooled_datas_statistics_and_fedavg_underestimates_the_variance():
    """With each site's statistics computed exactly from its data, FBN's aggregate is the mean and
    variance of the union; FedAvg's variance (the mean within-site variance) is too small."""
    sites = _skewed_sites()
    pooled = torch.cat(sites)
    ups = _bn_updates(sites)
    glob = {k: torch.zeros_like(v) for k, v in ups[0].weights.items()}
    fbn, avg = FBN().aggregate(glob, ups), FedAvg().aggregate(glob, ups)
    true_var = pooled.var(0, unbiased=False)
    assert torch.allclose(fbn["D.bn.running_mean"].double(), pooled.mean(0), rtol=1e-6, atol=1e-6)
    assert torch.allclose(fbn["D.bn.running_var"].double(), true_var, rtol=1e-6)
    assert (avg["D.bn.running_var"].double() < 0.6 * true_var).all()   # the between-site spread is missing
    assert torch.equal(fbn["D.bn.running_mean"], avg["D.bn.running_mean"]) or torch.allclose(
        fbn["D.bn.running_mean"], avg["D.bn.running_mean"], rtol=1e-6)
    # everything else is FedAvg's, and the dtypes stay
    for k in ("D.conv.weight", "D.bn.num_batches_tracked"):
        assert torch.equal(fbn[k], avg[k]) and fbn[k].dtype == avg[k].dtype
    assert fbn["D.bn.running_var"].dtype == torch.float32


def test_fbn_matches_a_batchnorm_layer_that_saw_the_pooled_data():
    """A BatchNorm layer's cumulative running statistics (momentum None) over each site's data, one
    batch per site, aggregated by FBN with n/(n-1) undone, equal the statistics of one pass over the union."""
    sites = [x.float()[:, :, None, None] for x in _skewed_sites(1)]
    ups = []
    for k, x in enumerate(sites):
        bn = torch.nn.BatchNorm2d(4, momentum=None)
        bn.train()
        bn(x)
        n = len(x)
        ups.append(ClientUpdate(f"s{k}", {"bn.running_mean": bn.running_mean.clone(),
                                          "bn.running_var": bn.running_var * (n - 1) / n}, n))
    out = FBN().aggregate({k: torch.zeros(4) for k in ups[0].weights}, ups)
    union = torch.cat(sites)[:, :, 0, 0].double()
    assert torch.allclose(out["bn.running_var"].double(), union.var(0, unbiased=False), rtol=1e-5)


def test_fbn_is_order_free_identity_for_one_site_and_finds_the_layers():
    ups = _bn_updates(_skewed_sites(2))
    glob = {k: torch.zeros_like(v) for k, v in ups[0].weights.items()}
    ref = FBN().aggregate(glob, ups)
    for s in range(3):
        shuffled = ups[:]
        random.Random(s).shuffle(shuffled)
        out = FBN().aggregate(glob, shuffled)
        assert all(torch.equal(ref[k], out[k]) for k in ref)
    one = FBN().aggregate(glob, ups[:1])
    assert all(torch.allclose(one[k].double(), v.double(), rtol=1e-6) for k, v in ups[0].weights.items())
    assert bn_layers(["G.a.running_mean", "G.a.running_var", "G.b.running_mean", "G.gn.weight"]) == ["G.a"]
    assert FBN().aggregate(glob, []) is glob


def test_fbn_layers_kept_local_are_left_alone_and_robust_rules_see_second_moments():
    """A layer absent from the updates (fed.share keeps it at the sites) keeps the global value bit
    for bit; under a robust rule FBN still runs (the median of the raised statistics)."""
    from fedsynth.privacy.robust import RobustAggregation
    ups = _bn_updates(_skewed_sites(3))
    glob = {**{k: torch.rand(v.shape) if v.is_floating_point() else v for k, v in ups[0].weights.items()},
            "G.bn.running_mean": torch.rand(3), "G.bn.running_var": torch.rand(3)}
    out = FBN().aggregate(glob, ups)
    assert out["G.bn.running_var"] is glob["G.bn.running_var"]
    s = RobustAggregation(FBN(), "median", 0.2, 1, 0.0)
    s.setup(glob, {"D.conv.weight"}, 3)
    med = s.aggregate(glob, ups, rng=torch.Generator().manual_seed(0))
    assert torch.isfinite(med["D.bn.running_var"]).all() and (med["D.bn.running_var"] >= 0).all()


def test_fbn_is_refused_where_nothing_has_batchnorm_statistics():
    from fedsynth.config import UserError, load_config
    with pytest.raises(UserError, match="'fbn' aggregates the pooled data's BatchNorm statistics; the diffusion UNet"):
        load_config(None, ["model.family=diffusion", "fed.strategy=fbn"])


# ---------------------------------------------------------------- FedCAR

def test_fedcar_weights_by_hand():
    d, n = {"a": 0.0, "b": 1.0, "c": 3.0}, {"a": 1, "b": 1, "c": 2}
    # median distance 1, temperature 1: q ∝ n exp(-d) = [1, e^-1, 2 e^-3]; mix 1: w = q
    q = np.array([1.0, math.exp(-1), 2 * math.exp(-3)])
    assert list(fedcar_weights(d, n, 1.0, 1.0).values()) == pytest.approx((q / q.sum()).tolist())
    # mix 0.5: halfway between q and the sample shares [1/4, 1/4, 1/2]
    w = fedcar_weights(d, n, 1.0, 0.5)
    assert list(w.values()) == pytest.approx((0.5 * q / q.sum() + 0.5 * np.array([0.25, 0.25, 0.5])).tolist())
    assert sum(w.values()) == pytest.approx(1.0)
    assert fedcar_weights(d, n, 1.0, 0.0) == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})  # mix 0: FedAvg
    assert fedcar_weights({"a": 2.0, "b": 2.0}, {"a": 1, "b": 3}) == pytest.approx({"a": 0.25, "b": 0.75})
    nan = fedcar_weights({"a": 0.5, "b": 1.0, "c": float("nan")}, {"a": 1, "b": 1, "c": 1}, 1.0, 1.0)
    assert nan["c"] < nan["b"] < nan["a"]   # a wrecked generator gets the least


def test_consensus_distances_by_hand_in_one_dimension():
    """1-D features: site a ~ {-1, 1} (mean 0, var 1), site b ~ {3, 5} (mean 4, var 1), equal
    weights. The mixture has mean 2 and variance 1 + 4 = 5; FD(a) = (0-2)^2 + 1 + 5 - 2 sqrt(5)."""
    a, b = FeatureStats.of(np.array([[-1.0], [1.0]])), FeatureStats.of(np.array([[3.0], [5.0]]))
    d = consensus_distances({"a": a, "b": b}, {"a": 1, "b": 1})
    assert d["a"] == pytest.approx(4 + 1 + 5 - 2 * math.sqrt(5)) and d["b"] == pytest.approx(d["a"])
    d = consensus_distances({"a": a, "b": b}, {"a": 3, "b": 1})   # mean 1, var 1 + 0.75*1 + 0.25*9 = 4
    assert d["a"] == pytest.approx(1 + 1 + 4 - 2 * 2) and d["b"] == pytest.approx(9 + 1 + 4 - 2 * 2)
    assert consensus_distances({"a": a}, {"a": 5}) == pytest.approx({"a": 0.0})
    bad = FeatureStats.of(np.array([[np.nan], [1.0]]))   # a wrecked generator: out of the consensus
    d = consensus_distances({"a": a, "b": b, "x": bad}, {"a": 1, "b": 1, "x": 1})
    assert math.isnan(d["x"]) and d["a"] == pytest.approx(4 + 1 + 5 - 2 * math.sqrt(5))


def _tiny_model(tiny):
    from fedsynth.config import build_config
    from fedsynth.models import build_model
    cfg = build_config(overrides=tiny + ["fed.strategy=fedcar", "fed.fedcar-samples=32"])
    return cfg, build_model(cfg, cfg.data.image_size, 1, 2)


def test_fedcar_gives_a_site_whose_generator_is_wrecked_less_than_fedavg(tiny):
    """Three sites: two generators near the global one, one whose generator weights are noise. Its
    weight falls below its sample share; the weights are recorded; FedAvg's weights give FedAvg."""
    from fedsynth.fed.strategies import strategy_from_config
    cfg, model = _tiny_model(tiny)
    glob = model.state()
    s = strategy_from_config(cfg.fed, cfg.privacy)
    s.setup(glob, model.parameter_keys(), 3)
    s.attach(cfg, model)
    g, params = torch.Generator().manual_seed(0), model.parameter_keys()
    def near(scale):
        return {k: (v + scale * torch.randn(v.shape, generator=g) if k in params and k.startswith("G.") else v)
                for k, v in glob.items()}
    ups = [ClientUpdate("0", near(1e-3), 10), ClientUpdate("1", near(1e-3), 10), ClientUpdate("2", near(3.0), 10)]
    out = s.aggregate(glob, ups)
    recs = {(r["client"], r["metric"]): r["value"] for r in s.round_records(1, 1.0)}
    w = [recs[(c, "fedcar-weight")] for c in "012"]
    assert sum(w) == pytest.approx(1.0) and w[2] < 1 / 3 < min(w[0], w[1])
    assert recs[("2", "fedcar-distance")] > max(recs[("0", "fedcar-distance")], recs[("1", "fedcar-distance")])
    k = next(k for k in glob if k.startswith("G.") and glob[k].is_floating_point())
    expect = sum(wi * u.weights[k].double() for wi, u in zip(w, ups))
    assert torch.allclose(out[k].double(), expect, atol=1e-6)
    assert s.round_records(2, 1.0) == []   # recorded once
    # the same updates twice: the same weights, bit for bit (fixed latents and features)
    s.aggregate(glob, ups)
    again = {(r["client"], r["metric"]): r["value"] for r in s.round_records(1, 1.0)}
    assert again == recs


def test_fedcar_with_one_site_or_mix_zero_is_fedavg(tiny):
    cfg, model = _tiny_model(tiny)
    glob = model.state()
    ups = [ClientUpdate(str(i), {k: v + i if v.is_floating_point() else v for k, v in glob.items()}, 10 + i)
           for i in range(2)]
    s = FedCAR(samples=16, mix=0.0)
    s.attach(cfg, model)
    ref = FedAvg().aggregate(glob, ups)
    out = s.aggregate(glob, ups)
    assert all(torch.allclose(out[k].double(), ref[k].double(), atol=1e-6) for k in ref)
    assert FedCAR().aggregate(glob, ups[:1])  # one site: no sampling needed, no attach needed
    with pytest.raises(RuntimeError, match="attach"):
        FedCAR().aggregate(glob, ups)


@pytest.mark.parametrize("strategy", ["fbn", "fedcar"])
def test_a_tiny_run_of_each(tiny, strategy, tmp_path):
    import json

    from typer.testing import CliRunner

    from fedsynth.cli import app
    sets = [a for o in tiny + [f"fed.strategy={strategy}", "fed.fedcar-samples=32"] for a in ("--set", o)]
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), *sets])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    fds = [r["value"] for r in recs if r.get("metric") == "fd-random" and r.get("client") == "global"]
    assert fds and all(np.isfinite(fds))
    weights = [r for r in recs if r.get("metric") == "fedcar-weight"]
    assert bool(weights) == (strategy == "fedcar")
