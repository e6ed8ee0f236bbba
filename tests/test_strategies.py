import random

import pytest
import torch

from fedsynth.fed import ClientUpdate, FedAvg, weighted_average
from fedsynth.fed.strategies import STRATEGIES as STRATEGY_NAMES


def test_weighted_average_hand_computed():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(20)}
    out = weighted_average([a, b], [1, 3])
    # (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5.0];  (10 + 60) / 4 = 17.5 -> 18 (rounded, stays integer)
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 18


def test_fedavg_weights_by_sample_count_or_not():
    ups = [ClientUpdate("a", {"w": torch.tensor([0.0])}, 100),
           ClientUpdate("b", {"w": torch.tensor([1.0])}, 300)]
    assert FedAvg(weighted=True).aggregate({}, ups)["w"].item() == pytest.approx(0.75)
    assert FedAvg(weighted=False).aggregate({}, ups)["w"].item() == pytest.approx(0.5)


def _random_updates(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate(f"c{k}", {"G.w": torch.randn(5, 3, generator=g),
                                   "D.bn.running_var": torch.rand(4, generator=g),
                                   "D.bn.num_batches_tracked": torch.tensor(k * 7)},
                         num_examples=10 + 13 * k) for k in range(n)]


def test_client_order_does_not_matter_bitwise():
    ups = _random_updates(6)
    ref = FedAvg().aggregate({}, ups)
    for s in range(5):
        shuffled = ups[:]
        random.Random(s).shuffle(shuffled)
        out = FedAvg().aggregate({}, shuffled)
        assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_one_client_is_identity():
    (u,) = _random_updates(1, seed=3)
    out = FedAvg().aggregate({}, [u])
    for k, v in u.weights.items():
        assert torch.equal(out[k], v) and out[k].dtype == v.dtype


def test_identical_clients_give_that_client():
    (u,) = _random_updates(1, seed=4)
    ups = [ClientUpdate(f"c{k}", u.weights, 5 + k) for k in range(4)]
    out = FedAvg().aggregate({}, ups)
    assert all(torch.allclose(out[k], u.weights[k], atol=1e-7, rtol=0) for k in out)


def test_mismatched_keys_are_an_error():
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1, 1])


# ---------------------------------------------------------------- the other strategies, by hand

from fedsynth.fed.strategies import (FedAdam, FedAvgM, FedDyn, FedNova, FedProx, FedYogi, Scaffold,
                                     SequentialTransfer, build_strategy, shared_keys)


def _ups(values, n=(1, 1), steps=(1, 1)):
    return [ClientUpdate(f"c{i}", {"p": torch.tensor([v]), "bn.running_mean": torch.tensor([v])}, n[i], steps=steps[i])
            for i, v in enumerate(values)]


def _setup(s, g):
    s.setup(g, {"p"}, num_clients=2)
    return s


def test_fednova_normalises_by_local_steps():
    g = {"p": torch.tensor([1.0]), "bn.running_mean": torch.tensor([0.0])}
    s = _setup(FedNova(), g)
    # client a: 1 step, w=0 (delta/step 1); client b: 4 steps, w=-3 (delta/step 1); equal weights
    out = s.aggregate(g, _ups([0.0, -3.0], steps=(1, 4)))
    # tau_eff = 2.5, d = 0.5*1 + 0.5*1 = 1  ->  w = 1 - 2.5 = -1.5 ; FedAvg would give -1.5 too here
    assert out["p"].item() == pytest.approx(-1.5)
    out2 = s.aggregate(g, _ups([0.0, -1.0], steps=(1, 4)))
    # deltas per step: 1 and 0.5 -> d = 0.75; tau_eff = 2.5 -> 1 - 1.875 = -0.875 (FedAvg: -0.5)
    assert out2["p"].item() == pytest.approx(-0.875)
    assert out2["bn.running_mean"].item() == pytest.approx(-0.5)   # buffers: plain average


def test_fedprox_hook_adds_mu_times_drift():
    s = FedProx(mu=0.5)
    s.setup({"G.weight": torch.tensor([[1.0]])}, {"G.weight"}, 1)
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    lin.weight.grad = torch.zeros_like(lin.weight)
    (hook,) = s.client_hooks({}, {"G.weight": torch.tensor([[1.0]])})
    hook.after_backward("G", lin)
    assert lin.weight.grad.item() == pytest.approx(0.5 * (3.0 - 1.0))


def test_scaffold_control_variates_by_hand():
    g = {"p": torch.tensor([1.0]), "bn.running_mean": torch.tensor([0.0])}
    s = _setup(Scaffold(), g)
    ci: dict = {}
    # K=2 steps with lr 0.5 took p from 1 to 0: c_i+ = 0 - 0 + (1 - 0) / (2 * 0.5) = 1
    extra = s.after_local(ci, g, {"p": torch.tensor([0.0])}, steps=2, lrs={"p": 0.5})
    assert ci["scaffold_c"]["p"].item() == pytest.approx(1.0) and extra["p"].item() == pytest.approx(1.0)
    up = ClientUpdate("a", {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}, 1, extra=extra)
    s.aggregate(g, [up])
    assert s.c["p"].item() == pytest.approx(0.5)  # |S|/N = 1/2 of the mean change


def test_feddyn_server_state_by_hand():
    g = {"p": torch.tensor([1.0]), "bn.running_mean": torch.tensor([0.0])}
    s = _setup(FedDyn(alpha=0.5), g)
    out = s.aggregate(g, _ups([3.0, 5.0]))
    # h = 0 - 0.5/2 * ((3-1) + (5-1)) = -1.5 ; w = mean(3, 5) - h/alpha = 4 + 3 = 7
    assert s.h["p"].item() == pytest.approx(-1.5) and out["p"].item() == pytest.approx(7.0)
    gi: dict = {}
    s.after_local(gi, g, {"p": torch.tensor([3.0])}, 1, {})
    assert gi["feddyn_g"]["p"].item() == pytest.approx(-0.5 * 2.0)


def test_fedavgm_momentum_by_hand():
    g = {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}
    s = _setup(FedAvgM(lr=1.0, momentum=0.5), g)
    w1 = s.aggregate(g, _ups([1.0, 1.0]))                # v = 1 -> w = 1
    assert w1["p"].item() == pytest.approx(1.0)
    w2 = s.aggregate(w1, _ups([2.0, 2.0]))               # delta 1, v = 0.5 + 1 = 1.5 -> 2.5
    assert w2["p"].item() == pytest.approx(2.5)
    assert w2["bn.running_mean"].item() == pytest.approx(2.0)  # buffers averaged, not optimised


def test_fedadam_and_fedyogi_first_step_by_hand():
    g = {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}
    for cls in (FedAdam, FedYogi):
        s = _setup(cls(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), g)
        out = s.aggregate(g, _ups([2.0, 2.0]))
        # m = 0.1*2 = 0.2 ; v = 0.01*4 = 0.04 ; step = 0.1 * 0.2 / (0.2 + 1e-3)
        assert out["p"].item() == pytest.approx(0.1 * 0.2 / (0.2 + 1e-3), rel=1e-6)
        assert out["bn.running_mean"].item() == pytest.approx(2.0)


def test_fedyogi_second_moment_differs_from_adam():
    g = {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}
    a, y = _setup(FedAdam(lr=0.1), g), _setup(FedYogi(lr=0.1), g)
    for s in (a, y):
        w = s.aggregate(g, _ups([2.0, 2.0]))
        s.aggregate(w, _ups([w["p"].item() + 0.1] * 2))
    # adam: v = 0.99*0.04 + 0.01*0.01 ; yogi: v = 0.04 - 0.01*0.01*sign(0.04-0.01)
    assert a.v["p"].item() == pytest.approx(0.99 * 0.04 + 0.01 * 0.01, rel=1e-6)
    assert y.v["p"].item() == pytest.approx(0.04 - 0.01 * 0.01, rel=1e-6)


def test_sequential_takes_the_last_client():
    g = {"p": torch.tensor([0.0])}
    out = SequentialTransfer(cyclic=True).aggregate(g, [ClientUpdate("b", {"p": torch.tensor([1.0])}, 5),
                                                        ClientUpdate("a", {"p": torch.tensor([2.0])}, 5)])
    assert out["p"].item() == 2.0


def test_shared_keys_patterns():
    keys = ["G.net.0.weight", "G.net.1.running_mean", "D.features.0.weight", "D.head.weight"]
    assert shared_keys(keys, ["G"]) == {"G.net.0.weight", "G.net.1.running_mean"}
    assert shared_keys(keys, ["G", "D"]) == set(keys)
    assert shared_keys(keys, ["G", "D.head.*"]) == {"G.net.0.weight", "G.net.1.running_mean", "D.head.weight"}


def test_every_strategy_name_builds_the_strategy_of_that_name():
    from fedsynth.fed.strategies import STRATEGIES, Strategy
    assert len(STRATEGIES) == 18
    for name in STRATEGIES:
        s = build_strategy(name)
        assert isinstance(s, Strategy) and s.name == name, (name, s)


def test_server_lr_schedules_by_hand():
    import math
    from fedsynth.fed.strategies import ServerOpt
    cos, lin, none = (ServerOpt(lr=1.0, decay=d, floor=0.1, rounds=5) for d in ("cosine", "linear", "none"))
    assert [round(lin.schedule(t), 10) for t in range(1, 7)] == [1.0, 0.775, 0.55, 0.325, 0.1, 0.1]  # then stays
    assert [cos.schedule(t) for t in (1, 3, 5, 9)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert cos.schedule(2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert {none.schedule(t) for t in range(1, 7)} == {1.0}


def test_a_decaying_server_lr_scales_each_step_and_is_recorded():
    """FedAvgM's step is lr x schedule x momentum buffer; FedAdam's lr_t carries the same factor."""
    g = {"p": torch.tensor([0.0]), "bn.running_mean": torch.tensor([0.0])}
    m = _setup(FedAvgM(lr=1.0, momentum=0.0, decay="linear", floor=0.5, rounds=3), g)
    w1 = m.aggregate(g, _ups([1.0, 1.0]))                  # step 1: factor 1 -> 1
    w2 = m.aggregate(w1, _ups([2.0, 2.0]))                 # step 2: factor 0.75, delta 1 -> 1.75
    assert (w1["p"].item(), w2["p"].item()) == pytest.approx((1.0, 1.75))
    assert m.round_records(2, 1.0) == [{"round": 2, "client": "server", "metric": "server-lr", "value": 0.75}]
    a = _setup(FedAdam(lr=0.1, decay="cosine", floor=0.0, rounds=3), g)
    a.aggregate(g, _ups([2.0, 2.0]))
    a.aggregate(g, _ups([2.0, 2.0]))                        # step 2 of 3: cosine factor 0.5
    assert a.lr_t() == pytest.approx(0.1 * 0.5 * (1 - 0.99 ** 2) ** 0.5 / (1 - 0.9 ** 2))
    assert _setup(FedAdam(lr=0.1), g).round_records(1, 1.0) == []  # constant: nothing to record


def test_server_lr_decay_comes_from_the_config():
    from fedsynth.config import load_config
    from fedsynth.fed.strategies import strategy_from_config
    cfg = load_config(None, ["fed.strategy=fedadam", "fed.server-lr-decay=cosine", "fed.server-lr-floor=0.2",
                             "fed.rounds=12"])
    s = strategy_from_config(cfg.fed)
    assert (s.decay, s.floor, s.rounds) == ("cosine", 0.2, 12)


def test_fixbn_freezes_batchnorm_statistics_exactly_after_its_round():
    """Rounds 1..fix_round train BatchNorm as usual; from fix_round + 1 every BatchNorm layer is in
    evaluation mode during local training: its running statistics stay the aggregated ones."""
    from fedsynth.fed.strategies import FixBN, FreezeNormStats
    s = FixBN(fix_round=3)
    assert [bool(s.client_hooks({}, {}, r)) for r in range(1, 6)] == [False, False, False, True, True]
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Conv2d(2, 1, 3))
    net.train()
    FreezeNormStats().before_training("D", net)
    assert not net[1].training and net[0].training and net[3].training  # only BatchNorm layers
    before = net[1].running_mean.clone()
    net(torch.randn(4, 1, 8, 8)).sum().backward()
    assert torch.equal(net[1].running_mean, before) and net[1].weight.grad is not None  # frozen stats, scale trains


def test_fixbn_run_keeps_the_generators_statistics_from_its_round_on(tiny, tmp_path):
    """A whole tiny run: after fed.fixbn-round the global BatchNorm statistics no longer change."""
    from typer.testing import CliRunner

    from fedsynth.checkpoint import read_checkpoint_file
    from fedsynth.cli import app
    sets = [a for o in tiny + ["fed.strategy=fixbn", "fed.fixbn-round=1", "fed.rounds=3", "eval.enabled=false",
                               "run.keep-checkpoints=3"] for a in ("--set", o)]
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), *sets])
    assert res.exit_code == 0, res.output
    ck = {r: read_checkpoint_file(tmp_path / "r" / "checkpoints" / f"round-{r:04d}.pt")["global"] for r in (1, 2, 3)}
    stats = [k for k in ck[1] if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats and all(torch.equal(ck[1][k], ck[3][k]) for k in stats)
    assert any(not torch.equal(ck[1][k], ck[3][k]) for k in ck[1] if k.endswith(".weight"))  # the rest still trains


def test_fixbn_is_refused_for_the_diffusion_family():
    from fedsynth.config import UserError, load_config
    with pytest.raises(UserError, match="diffusion UNet normalises with GroupNorm"):
        load_config(None, ["model.family=diffusion", "fed.strategy=fixbn"])


@pytest.mark.parametrize("name", sorted(STRATEGY_NAMES))
def test_every_strategy_says_what_it_releases(name):
    """One owner decides what a run releases (fed/release.py): a strategy that aggregates releases
    its global model; local releases each site's own, ensemble their mixture -- also when wrapped."""
    from fedsynth.config import build_config
    from fedsynth.fed.release import Release
    from fedsynth.fed.strategies import build_strategy, strategy_from_config
    release = Release.of(build_strategy(name))
    assert release.kind == {"local": "own", "ensemble": "mixture"}.get(name, "global")
    assert release.one_model == build_strategy(name).aggregates
    assert release.scores == ("local" if name == "local" else "global")
    cfg = build_config(overrides=[f"fed.strategy={name}", "privacy.robust=median"])
    assert Release.of(strategy_from_config(cfg.fed, cfg.privacy)) == release  # through a wrapper
    with pytest.raises(ValueError, match="one of global, mixture, own"):
        Release("everyone")
