"""Server optimisers (FedAdam, FedYogi, FedAvgM): bias correction by hand, against torch's Adam,
and their state across a checkpoint."""

import math

import pytest
import torch

from fedsynth.config import load_config
from fedsynth.fed import ClientUpdate
from fedsynth.fed.strategies import strategy_from_config
from fedsynth.fed.strategies import FedAdam, FedAvgM, FedYogi, build_strategy


def _ups(v):
    """Two equal clients that both end the round at ``v``: the average is ``v``."""
    return [ClientUpdate(f"c{i}", {"p": torch.tensor([v]), "bn.running_mean": torch.tensor([v])}, 1)
            for i in range(2)]


def _setup(s, g):
    s.setup(g, {"p"}, num_clients=2)
    return s


G0 = {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_first_step_is_the_same_with_or_without_bias_correction(cls):
    # t = 1: lr_1 = 0.1 * sqrt(1 - 0.99) / (1 - 0.9) = 0.1 * 0.1 / 0.1 = 0.1 exactly the plain lr
    # m = 0.1 * 2 = 0.2, v = 0.01 * 4 = 0.04 -> step = 0.1 * 0.2 / (0.2 + 1e-3)
    for bc in (False, True):
        s = _setup(cls(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=bc), G0)
        out = s.aggregate(G0, _ups(2.0))
        assert out["p"].item() == pytest.approx(0.1 * 0.2 / 0.201, rel=1e-6)  # float32 weights
        assert s.t == 1


def test_fedadam_second_step_bias_corrected_by_hand():
    w1 = 0.1 * 0.2 / 0.201                       # after the first step (above)
    s = _setup(FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True), G0)
    g1 = s.aggregate(G0, _ups(2.0))
    g2 = s.aggregate(g1, _ups(w1 + 1.0))           # delta = 1
    m = 0.9 * 0.2 + 0.1 * 1.0                     # 0.28
    v = 0.99 * 0.04 + 0.01 * 1.0                  # 0.0496
    lr2 = 0.1 * math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)   # 0.1 * sqrt(0.0199) / 0.19 = 0.074246...
    assert lr2 == pytest.approx(0.0742461, rel=1e-5)
    assert g2["p"].item() == pytest.approx(w1 + lr2 * m / (math.sqrt(v) + 1e-3), rel=1e-6)
    assert g2["bn.running_mean"].item() == pytest.approx(w1 + 1.0)   # buffers averaged, never optimised
    # without the correction the second step is larger (m has warmed up faster than v)
    plain = _setup(FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=False), G0)
    p2 = plain.aggregate(plain.aggregate(G0, _ups(2.0)), _ups(w1 + 1.0))
    assert p2["p"].item() == pytest.approx(w1 + 0.1 * m / (math.sqrt(v) + 1e-3), rel=1e-6)


def test_fedyogi_second_step_bias_corrected_by_hand():
    w1 = 0.1 * 0.2 / 0.201
    s = _setup(FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True), G0)
    g2 = s.aggregate(s.aggregate(G0, _ups(2.0)), _ups(w1 + 1.0))
    m = 0.28
    v = 0.04 - 0.01 * 1.0 * (-1.0)                 # yogi: v - (1-b2) d^2 sign(v - d^2), sign(0.04 - 1) = -1: 0.05
    lr2 = 0.1 * math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    assert g2["p"].item() == pytest.approx(w1 + lr2 * m / (math.sqrt(v) + 1e-3), rel=1e-6)


def test_fedadam_with_bias_correction_is_torch_adam_on_the_pseudo_gradient():
    """An independent reference: with tau -> 0, bias-corrected FedAdam is Adam (Kingma & Ba) on
    the gradient ``-(mean(w_i) - w_g)``; torch.optim.Adam implements that."""
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn(6, generator=gen, dtype=torch.float64) * 0.01 for _ in range(8)]
    g = {"p": torch.zeros(6, dtype=torch.float64)}
    s = FedAdam(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-12, bias_correction=True)
    s.setup(g, {"p"}, num_clients=1)
    ref = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.01, betas=(0.9, 0.99), eps=1e-12)
    for d in deltas:
        g = s.aggregate(g, [ClientUpdate("a", {"p": g["p"] + d}, 1)])
        opt.zero_grad()
        ref.grad = -d.clone()
        opt.step()
        # torch adds eps to sqrt(v_hat), ours tau to sqrt(v): they differ by ~tau / sqrt(v) ~ 1e-9
        assert torch.allclose(g["p"], ref.detach(), rtol=1e-7, atol=0)


def test_fedadam_without_bias_correction_differs_from_torch_adam():
    # the same sequence, uncorrected: the steps of rounds 2.. are larger (lr m / sqrt(v) > lr m_hat / sqrt(v_hat))
    s = FedAdam(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-12, bias_correction=False)
    g = {"p": torch.zeros(1, dtype=torch.float64)}
    s.setup(g, {"p"}, num_clients=1)
    for _ in range(5):
        g = s.aggregate(g, [ClientUpdate("a", {"p": g["p"] + 1.0}, 1)])
    # constant delta 1: step t = lr (1 - 0.9^t) / sqrt(1 - 0.99^t)
    expect = sum(0.01 * (1 - 0.9 ** t) / math.sqrt(1 - 0.99 ** t) for t in range(1, 6))
    assert g["p"].item() == pytest.approx(expect, rel=1e-9)
    assert expect > 5 * 0.01 * 1.4   # 7.5 lr: 1.5x bias-corrected Adam's 5 lr (test above)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAvgM])
def test_state_dict_resumes_exactly(cls):
    """Three rounds straight = two rounds, a checkpoint, a fresh strategy, the third round."""
    vals = [2.0, -1.0, 0.5]
    a = _setup(cls(lr=0.05, bias_correction=True), G0)
    ga = G0
    for v in vals:
        ga = a.aggregate(ga, _ups(v))
    b = _setup(cls(lr=0.05, bias_correction=True), G0)
    gb = G0
    for v in vals[:2]:
        gb = b.aggregate(gb, _ups(v))
    state = b.state_dict()
    assert state["t"] == 2
    c = _setup(cls(lr=0.05, bias_correction=True), G0)
    c.load_state_dict(state)
    gc = c.aggregate(gb, _ups(vals[2]))
    assert torch.equal(ga["p"], gc["p"])


def test_old_checkpoint_without_step_counter_loads():
    s = FedAdam()
    s.load_state_dict({"m": {}, "v": {}})
    assert s.t == 0


def test_defaults_and_config_reach_the_strategy():
    cfg = load_config(None, ["fed.strategy=fedyogi", "fed.server-lr=0.02", "fed.server-bias-correction=false"])
    s = strategy_from_config(cfg.fed, cfg.privacy)
    assert isinstance(s, FedYogi) and s.lr == 0.02 and s.bias_correction is False
    s = strategy_from_config(load_config(None, ["fed.strategy=fedadam"]).fed)
    assert (s.lr, s.bias_correction) == (1e-2, True)  # the defaults the server-lr sweep chose
    assert load_config().fed.server_bias_correction is True and FedYogi().bias_correction is True
    assert build_strategy("fedavgm").lr == 0.3 and build_strategy("fedyogi").lr == 1e-2
