"""Issue 13: device selection, precision and device-independent checkpoints, tested on the CPU
(every device path runs with run.device = cpu). On a machine with a GPU the same tests run there:

    FEDSYNTH_TEST_DEVICE=cuda .venv/bin/python -m pytest -q tests/test_device.py

(the resume test then writes its checkpoint on the GPU and resumes on the CPU)."""

import os

import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError, build_config
from fedsynth.train.device import autocast, resolve_device, resolve_precision, to_device


DEVICE = os.environ.get("FEDSYNTH_TEST_DEVICE", "cpu")


def _same(a, b):
    """Bit-identical on one device; equal up to float rounding across devices."""
    return torch.equal(a, b) if DEVICE == "cpu" else torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-3)


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _final(run):
    return torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)


@pytest.mark.parametrize("value, message", [
    ("gpu", "must be auto, cpu, cuda, cuda:N or mps"),
    ("cuda:x", "must be auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_device_names_the_key(value, message):
    with pytest.raises(UserError, match=f"run.device.*{message}"):
        build_config(overrides=[f"run.device={value}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    cfg = build_config(overrides=["run.device=cuda:1"])
    with pytest.raises(UserError, match="run.device' is 'cuda:1' but"):
        resolve_device(cfg.run.device)
    assert resolve_device("auto") == torch.device("cpu")


def test_precision_rules():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="fp16.*CUDA"):
        build_config(overrides=["train.precision=fp16", "run.device=cpu"])
    with pytest.raises(UserError, match="dp-sgd"):
        build_config(overrides=["train.precision=bf16", "privacy.dp-sgd=true", "model.d-norm=group"])
    assert isinstance(autocast(torch.device("cpu"), "bf16"), torch.autocast)


def test_to_device_keeps_cpu_tensors_as_they_are():
    t = torch.ones(2)
    out = to_device({"a": [t, (t, 1)], "b": "x"}, "cpu")
    assert out["a"][0] is t and out["a"][1][0] is t and out["a"][1][1] == 1 and out["b"] == "x"


def test_checkpoint_resumes_with_another_device_setting(tiny, tmp_path):
    """Written with run.device = auto (or FEDSYNTH_TEST_DEVICE), resumed with run.device = cpu
    (the CLI accepts the hardware keys with --resume): the same weights and records as the
    uninterrupted run."""
    over = tiny + ["fed.rounds=2", "run.keep-checkpoints=2", "eval.enabled=false", "fed.strategy=fedprox"]
    runner = CliRunner()
    res = runner.invoke(app, ["run", *_sets(over + [f"run.device={'auto' if DEVICE == 'cpu' else 'cpu'}"]), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", *_sets(over + [f"run.device={'auto' if DEVICE == 'cpu' else DEVICE}"]), "--out", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    (tmp_path / "cut" / "checkpoints" / "round-0002.pt").unlink()  # as if killed in round 2
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "cut"), "--set", "run.device=cpu"])
    assert res.exit_code == 0, res.output
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "cut")
    assert b["round"] == 2 and all(_same(a["global"][k], b["global"][k]) for k in a["global"])
    for cid, c in a["clients"].items():  # the clients' optimizer state came back through the CPU file too
        sa, sb = c["opt_state"]["D"]["state"], b["clients"][cid]["opt_state"]["D"]["state"]
        assert all(_same(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
        assert all(t.device.type == "cpu" for t in b["global"].values())
    if DEVICE == "cpu":
        assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "cut"), "--set", "fed.local-epochs=3"])
    assert res.exit_code != 0 and "--set other than" in res.output  # only hardware keys (and more rounds) may change


@pytest.mark.parametrize("strategy", ["scaffold"])
def test_parallel_clients_are_bit_identical_to_sequential(tiny, strategy):
    """fed.parallel-clients = 2: two worker processes; the same weights, client state and records
    (losses, local-model scores) as one client after another."""
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    over = tiny + ["fed.rounds=2", "partition.clients=2", f"fed.strategy={strategy}", "fed.local-steps=2",
                   "eval.every=0", "eval.per-site=false"]  # round 2 scores the local models
    out = {}
    for k in (1, 2):
        cfg = build_config(overrides=over + [f"fed.parallel-clients={k}"])
        out[k] = build_in_process(cfg, partition_for(cfg, load_dataset(cfg))).run()
    a, b = out[1], out[2]
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    assert a.records == b.records
    for cid, c in a.client_states.items():
        sa, sb = c.strategy["scaffold_c"], b.client_states[cid].strategy["scaffold_c"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("precision", ["fp32", "bf16"] + (["fp16"] if DEVICE.startswith("cuda") else []))
def test_a_round_on_the_test_device(tiny, precision):
    """A short run with evaluation on FEDSYNTH_TEST_DEVICE (cpu here): the model and the feature
    network live there, weights come back on the CPU, losses and scores are finite, and a
    cheaper precision is recorded in the records' provenance."""
    import math

    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    cfg = build_config(overrides=tiny + ["fed.rounds=1", "eval.per-site=false", f"run.device={DEVICE}",
                                         f"train.precision={precision}"])
    run = build_in_process(cfg, partition_for(cfg, load_dataset(cfg)))
    res = run.run()
    dev = resolve_device(DEVICE)
    assert run.model.device == dev and run.evaluator.extractor.device.type == dev.type
    assert all(v.device.type == "cpu" for v in res.global_state.values())
    vals = [r for r in res.records if "value" in r and isinstance(r["value"], float)]
    assert vals and all(math.isfinite(r["value"]) for r in vals)
    assert all(r.get("precision", "fp32") == precision for r in res.records if r["metric"] in ("d-loss", "fd-random"))
