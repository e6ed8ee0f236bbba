"""Robust aggregation and client-level DP wrap any strategy (no attributes injected into it)."""

import pytest
import torch

from fedsynth.fed.strategies import FedAdam, FedAvg, Scaffold
from fedsynth.privacy.dp import ClientLevelDP, client_dp_average
from fedsynth.privacy.robust import RobustAggregation, robust_average
from fedsynth.updates import ClientUpdate


def _ups(values):
    return [ClientUpdate(str(i), {"p": torch.tensor([v])}, 10) for i, v in enumerate(values)]


def test_robust_wrapper_replaces_the_mean_of_any_strategy():
    g = {"p": torch.tensor([0.0])}
    ups = _ups([1.0, 2.0, 3.0, 100.0])
    assert RobustAggregation(FedAvg(), "median").aggregate(g, ups)["p"].item() == \
        robust_average("median", ups, g)["p"].item() == 2.5
    adam = RobustAggregation(FedAdam(lr=1.0), "median")  # the median is the pseudo-gradient's mean
    adam.setup(g, {"p"}, 4)
    plain = FedAdam(lr=1.0)
    plain.setup(g, {"p"}, 4)
    assert adam.aggregate(g, ups)["p"].item() == pytest.approx(plain.aggregate(g, _ups([2.5]))["p"].item())
    assert adam.name == "fedadam" and adam.aggregates  # everything else is the inner strategy's


def test_client_dp_wrapper_takes_its_generator_and_accounts():
    g = {"p": torch.tensor([0.0])}
    ups = _ups([1.0, 3.0])
    s = ClientLevelDP(Scaffold(), clip=0.5, noise=1.0, delta=1e-5)
    s.setup(g, {"p"}, 4)
    for u in ups:
        u.extra = {"p": torch.tensor([0.0])}
    out = s.aggregate(g, ups, rng=torch.Generator().manual_seed(3))
    ref = client_dp_average(ups, g, 0.5, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out["p"], ref["p"])
    with pytest.raises(ValueError, match="generator"):
        s.aggregate(g, ups)
    e1 = s.round_records(1, 0.5)[-1]["value"]
    e2 = s.round_records(2, 0.5)[-1]["value"]
    assert 0 < e1 < e2
    state = s.state_dict()
    t = ClientLevelDP(Scaffold(), clip=0.5, noise=1.0, delta=1e-5)
    t.setup(g, {"p"}, 4)
    t.load_state_dict(state)  # a resumed run reports the same epsilon
    assert t.round_records(3, 0.5)[-1]["value"] == s.round_records(3, 0.5)[-1]["value"]
