"""Issue 6: validation, robust aggregation, attacks, drop-outs, DP, exact resume, audits."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fedsynth.config import UserError, build_config
from fedsynth.data import load_dataset, partition_for
from fedsynth.fed import ClientUpdate, build_in_process
from fedsynth.fed.engine import Reporter, StopRun
from fedsynth.privacy.robust import robust_average
from fedsynth.privacy.validation import validate_updates
from fedsynth.report import RunDir


def _engine(overrides, reporter=None):
    cfg = build_config(overrides=overrides)
    return build_in_process(cfg, partition_for(cfg, load_dataset(cfg)), reporter)


def _w(res):
    return res.global_state


# ---------------------------------------------------------------- validation

def _good(cid, g, n=10, scale=0.01, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ClientUpdate(cid, {k: (v + scale * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v.clone()
                              for k, v in g.items()}, n)


def test_all_six_kinds_of_bad_update_are_rejected():
    g = {"w": torch.zeros(3, 2), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(5)}
    ok = [_good(f"ok{i}", g, seed=i) for i in range(3)]
    bad = {
        "nan": ClientUpdate("nan", {**ok[0].weights, "w": torch.full((3, 2), float("nan"))}, 10),
        "shape": ClientUpdate("shape", {**ok[0].weights, "w": torch.zeros(2, 3)}, 10),
        "dtype": ClientUpdate("dtype", {**ok[0].weights, "w": torch.zeros(3, 2, dtype=torch.float64)}, 10),
        "missing": ClientUpdate("missing", {k: v for k, v in ok[0].weights.items() if k != "b"}, 10),
        "extra": ClientUpdate("extra", {**ok[0].weights, "evil": torch.zeros(1)}, 10),
        "norm": ClientUpdate("norm", {**ok[0].weights, "w": ok[0].weights["w"] * 1000}, 10),
    }
    accepted, rejected = validate_updates(ok + list(bad.values()), g, set(g), outlier_factor=5.0)
    assert sorted(u.client_id for u in accepted) == ["ok0", "ok1", "ok2"]
    reasons = dict(rejected)
    assert set(reasons) == set(bad)
    assert "NaN" in reasons["nan"] and "shape" in reasons["shape"] and "dtype" in reasons["dtype"]
    assert "missing" in reasons["missing"] and "unexpected" in reasons["extra"] and "median" in reasons["norm"]


@pytest.mark.parametrize("attack", ["nan", "scale"])
def test_bad_updates_never_reach_the_global_model(tiny, attack):
    """Both clients attack: every update is rejected, rounds are skipped, weights unchanged."""
    e = _engine(tiny + [f"faults.attack={attack}", 'faults.attackers=["0", "1"]', "faults.attack-scale=1000",
                        "privacy.outlier-factor=0" if attack == "scale" else "privacy.outlier-factor=5"])
    init = {k: v.clone() for k, v in e.server.global_state.items()}
    res = e.run()
    if attack == "nan":
        assert all(torch.equal(init[k], res.global_state[k]) for k in init)
        assert sum(r["metric"] == "rejected" for r in res.records) == 4
        assert sum(r["metric"] == "round-skipped" for r in res.records) == 2
    assert all(torch.isfinite(v.double()).all() for v in res.global_state.values())


def test_one_nan_attacker_is_rejected_and_training_continues(tiny):
    res = _engine(tiny + ["faults.attack=nan", 'faults.attackers=["1"]', "partition.clients=3",
                          "data.num-images=72"]).run()
    rej = [r for r in res.records if r["metric"] == "rejected"]
    assert [(r["round"], r["client"]) for r in rej] == [(1, "1"), (2, "1")] and "NaN" in rej[0]["reason"]
    assert not any(r["metric"] == "round-skipped" for r in res.records)
    assert all(torch.isfinite(v.double()).all() for v in res.global_state.values())


# ---------------------------------------------------------------- robust aggregation

def _ups(vals):
    return [ClientUpdate(f"c{i}", {"p": torch.tensor([float(v)]), "n": torch.tensor(i)}, 1) for i, v in enumerate(vals)]


def test_robust_rules_by_hand():
    g = {"p": torch.tensor([0.0]), "n": torch.tensor(0)}
    ups = _ups([1, 2, 3, 4, 100])
    assert robust_average("median", ups, g)["p"].item() == 3.0
    assert robust_average("trimmed-mean", ups, g, trim=0.2)["p"].item() == 3.0  # drops 1 and 100
    assert robust_average("krum", ups, g, byzantine=1)["p"].item() in (2.0, 3.0)
    mk = robust_average("multi-krum", ups, g, byzantine=1)["p"].item()
    assert mk == pytest.approx(2.5)  # the 4 best: 1, 2, 3, 4
    assert robust_average("clip", ups, g)["p"].item() == pytest.approx((1 + 2 + 3 + 3 + 3) / 5)  # clip at median 3
    assert robust_average("median", ups, g)["n"].dtype == torch.int64


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum", "multi-krum", "clip"])
def test_robust_rules_run_end_to_end_with_an_attacker(tiny, rule):
    res = _engine(tiny + [f"privacy.robust={rule}", "faults.attack=scale", 'faults.attackers=["0"]',
                          "partition.clients=3", "data.num-images=72", "privacy.outlier-factor=0"]).run()
    assert all(torch.isfinite(v.double()).all() for v in res.global_state.values())


# ---------------------------------------------------------------- drop-outs

def test_scheduled_dropout_is_recorded_and_round_completes(tiny):
    res = _engine(tiny + ['faults.dropout-schedule=["1:0"]']).run()
    dropped = [(r["round"], r["client"]) for r in res.records if r["metric"] == "dropped"]
    assert dropped == [(1, "0")]
    assert not any(r["metric"] == "round-skipped" for r in res.records)


def test_too_few_clients_skips_the_round_and_keeps_the_model(tiny):
    e = _engine(tiny + ['faults.dropout-schedule=["1:0"]', "fed.min-clients=2", "fed.rounds=1"])
    init = {k: v.clone() for k, v in e.server.global_state.items()}
    res = e.run()
    assert any(r["metric"] == "round-skipped" for r in res.records)
    assert all(torch.equal(init[k], res.global_state[k]) for k in init)


def test_random_dropouts_are_seeded(tiny):
    a = _engine(tiny + ["faults.dropout=0.5", "fed.rounds=4"]).run()
    b = _engine(tiny + ["faults.dropout=0.5", "fed.rounds=4"]).run()
    da = [(r["round"], r["client"]) for r in a.records if r["metric"] == "dropped"]
    assert da and da == [(r["round"], r["client"]) for r in b.records if r["metric"] == "dropped"]


# ---------------------------------------------------------------- differential privacy

def test_dp_sgd_clips_per_sample_gradients():
    from fedsynth.models import ModelSpec, build_gan
    from fedsynth.privacy.dp import DPSGD
    from fedsynth.train import build_loss
    gan = build_gan(ModelSpec(image_size=16, channels=1, nz=4, ngf=4, ndf=4, d_norm="none"), seed=0)
    real = torch.randn(8, 1, 16, 16)
    fake = gan.G(torch.randn(8, 4))
    y = torch.zeros(8, dtype=torch.long)
    DPSGD(clip=1e-3, noise=0.0, generator=torch.Generator()).backward(gan.D, build_loss("bce"), real, fake, y, y)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in gan.D.parameters()))
    assert total <= 1e-3 + 1e-9  # mean of 8 clipped per-sample gradients


def test_dp_sgd_run_reports_epsilon_growing(tiny):
    res = _engine(tiny + ["privacy.dp-sgd=true", "model.d-norm=none", "fed.rounds=2"]).run()
    eps = [(r["round"], r["client"], r["value"]) for r in res.records if r["metric"] == "dp-epsilon"]
    assert len(eps) == 4 and all(np.isfinite(e) and e > 0 for *_, e in eps)
    c0 = [e for rnd, c, e in eps if c == "0"]
    assert c0[1] > c0[0]


def test_dp_sgd_needs_a_discriminator_without_batchnorm():
    with pytest.raises(UserError, match="privacy.dp-sgd"):
        build_config(overrides=["privacy.dp-sgd=true"])


def test_client_level_dp_reports_epsilon(tiny):
    res = _engine(tiny + ["privacy.client-dp=true", "privacy.client-dp-noise=1.0"]).run()
    eps = [r["value"] for r in res.records if r["metric"] == "client-dp-epsilon"]
    assert len(eps) == 2 and eps[1] > eps[0] > 0
    assert all(torch.isfinite(v.double()).all() for v in res.global_state.values())


# ---------------------------------------------------------------- membership inference

def test_membership_inference_aucs():
    from fedsynth.privacy.mia import discriminator_mia, distance_mia

    class Marks(torch.nn.Module):  # "remembers" members: they have a bright first pixel
        def forward(self, x, y=None):
            return x[:, 0, 0, 0]
    members = torch.zeros(20, 1, 8, 8)
    members[:, 0, 0, 0] = 1
    non = torch.zeros(20, 1, 8, 8)
    assert discriminator_mia(Marks(), members, non) == 1.0
    m = torch.rand(30, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    n = torch.rand(30, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert distance_mia(m.clone(), m, n) > 0.95          # generator that copies its members
    assert 0.2 < distance_mia(torch.rand(30, 1, 16, 16), m, n) < 0.8


# ---------------------------------------------------------------- no image leaves a client

def test_every_message_to_the_server_holds_only_weights_and_scalars(tiny):
    e = _engine(tiny + ['fed.share=["G"]', "fed.strategy=scaffold"])
    model = e.model.state()
    seen = []
    orig = e.strategy.aggregate

    def spy(global_state, updates, **kw):
        seen.extend(updates)
        return orig(global_state, updates, **kw)
    e.strategy.aggregate = spy
    e.run()
    assert len(seen) == 4
    for u in seen:
        for part in (u.weights, u.extra):
            for k, v in part.items():
                assert isinstance(v, torch.Tensor) and k in model and v.shape == model[k].shape, k
        assert all(isinstance(m, float) for m in u.metrics.values())
        assert isinstance(u.num_examples, int) and isinstance(u.steps, int)
        assert set(vars(u)) == {"client_id", "weights", "num_examples", "metrics", "steps", "extra"}


# ---------------------------------------------------------------- checkpoints and exact resume

def test_stop_then_resume_is_bit_identical(tiny, tmp_path):
    over = tiny + ["fed.rounds=4", "fed.strategy=scaffold"]
    ref = _engine(over).run()

    class StopInRound3(Reporter):  # request a stop in the middle of round 3, as Ctrl-C does
        n = 0

        def step(self):
            self.n += 1
            if self.n == 9:
                a.pool.stop_requested = True
    a = _engine(over, StopInRound3())
    rd = RunDir.create(tmp_path, "r")
    with pytest.raises(StopRun):
        a.run(rd)
    from fedsynth.checkpoint import load_checkpoint
    ck = load_checkpoint(rd.path)
    assert ck["round"] == 2
    b = _engine(over)
    b.restore(ck)
    res = b.run(RunDir.reopen(rd.path, ck["round"]))
    assert all(torch.equal(ref.global_state[k], res.global_state[k]) for k in ref.global_state)
    assert [r["value"] for r in res.records] == [r["value"] for r in ref.records]


@pytest.mark.smoke
def test_kill_9_then_resume_gives_identical_final_weights(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = [a for o in tiny + ["fed.rounds=6", "eval.every=3"] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "fedsynth", "run", *sets]
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    rng = random.Random(0)
    proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills = 0
    try:
        while True:
            deadline = time.time() + 60
            while not list((out / "checkpoints").glob("*.pt")) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "run", "--resume", str(out)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if kills == 2:
                break
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    a = torch.load(sorted((tmp_path / "ref" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    b = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert a["round"] == b["round"] == 6
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
