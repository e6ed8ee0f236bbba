"""One assembly for every role (fedsynth.fed.assembly), and the warm node that keeps it per run.

* The in-process engine, the Flower server's set-up and a node, each given the same config,
  apply the same torch threads and determinism flags, resolve the same device and build the
  same feature network in the same memory format (no Flower process is started).
* A warm worker's node (``Nodes``) is built once per run: a run's second and third messages load
  no data and compute no statistics, and answer bit for bit as a node built for the message
  alone; a message of another run (or config) builds a new one.
"""

import json

import numpy as np
import pytest
import torch

from fedsynth.config import build_config

BASE = ["data.image-size=16", "model.nz=8", "model.ngf=8", "model.ndf=8", "train.batch-size=8",
        "fed.min-local-steps=0", "eval.feature-extractor=random", "eval.num-samples=16", "eval.kid-subset-size=8",
        "eval.grid-size=4", "eval.holdout=0"]


@pytest.fixture
def torch_settings():
    """Whatever a role applied is put back, so no other test runs with it."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def _reset():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def test_a_process_that_serves_two_runs_gives_each_its_own_determinism(torch_settings):
    """A warm worker applies each run's settings on every message: a run without
    run.deterministic after one with it runs without it."""
    from fedsynth.fed.assembly import Process, applied
    for on in (True, False, True, False):
        Process.of(build_config(None, BASE + [f"run.deterministic={str(on).lower()}"]), "node").apply()
        assert applied()["deterministic"] is on and torch.backends.cudnn.deterministic is on


def _node_req(cfg, sites, cid="0", **conf):
    return {"config": {"fedsynth-config": cfg.to_toml(), **conf}, "arrays": None, "strategy": None, "state": None,
            "node_config": {"data-path": str(sites / f"client-{cid}"), "client-id": cid}}


def test_the_three_roles_apply_the_same_process_settings(sites, torch_settings):
    pytest.importorskip("flwr")
    import dataclasses

    from fedsynth.data import load_dataset
    from fedsynth.fed import build_in_process
    from fedsynth.fed.assembly import applied, memory_format, threads_for
    from fedsynth.fed.flower.node import Node
    from fedsynth.fed.flower.server_app import server_setup
    cfg = build_config(None, BASE + ["train.threads=2", "run.deterministic=true", "run.device=cpu"])
    seen = {}

    _reset()
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="folder", path=str(sites / f"client-{k}")))) for k in (0, 1)]
    fed = build_in_process(cfg, parts, client_ids=["0", "1"])
    ex = fed.evaluator.extractor
    seen["in-process"] = {**applied(), "device": str(fed.model.device), "extractor": ex.name,
                          "format": memory_format(ex), "extractor-device": str(next(ex.parameters()).device)}

    _reset()
    server_cfg, proc, ex = server_setup(cfg)
    seen["server"] = {**applied(), "device": str(proc.device), "extractor": ex.name, "format": memory_format(ex),
                      "extractor-device": str(next(ex.parameters()).device)}

    _reset()
    node = Node(_node_req(server_cfg, sites))  # a node gets the server's config text
    ex = node.extractor()
    seen["node"] = {**applied(), "device": str(node.process.device), "extractor": ex.name, "format": memory_format(ex),
                    "extractor-device": str(next(ex.parameters()).device)}

    assert seen["in-process"] == seen["server"] == seen["node"], seen
    assert seen["node"]["threads"] == 2 and seen["node"]["deterministic"] and seen["node"]["format"] == "channels_last"
    # train.threads = 0: all cores, except on a node (1: SuperNodes often share a machine) -- the one rule, in one place
    zero = build_config(None, BASE)
    assert threads_for(zero, "node") == 1
    assert threads_for(zero, "in-process") == threads_for(zero, "server") >= 1


def _train_req(cfg, sites, round_, run_key="run-a", cid="0"):
    from fedsynth.fed.strategies import strategy_from_config
    from fedsynth.models import build_model
    from fedsynth.serial import pack
    model = build_model(cfg, 16, 1, 2)
    s = strategy_from_config(cfg.fed, cfg.privacy)
    s.setup(model.state(), model.parameter_keys(), 2)
    tensors, skeleton = pack(s.state_dict())
    req = _node_req(cfg, sites, cid, **{"round": round_, "num-classes": 2, "num-clients": 2, "run-key": run_key,
                                         "eval-global": round_ - 1, "eval-local": True, "state-round": 0,
                                         "strategy": json.dumps(skeleton)})
    req.update(arrays={k: v.numpy() for k, v in model.state().items()},
               strategy={k: v.numpy() for k, v in tensors.items()})
    return req


def test_a_warm_node_is_built_once_per_run_and_answers_as_a_fresh_one(sites, monkeypatch, tmp_path):
    import fedsynth.data
    import fedsynth.fed.evaluation
    from fedsynth.fed.flower.node import Nodes, handle
    loads, stats = [], []
    real_load, real_stats = fedsynth.data.load_dataset, fedsynth.fed.evaluation.real_statistics
    monkeypatch.setattr(fedsynth.data, "load_dataset", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(fedsynth.fed.evaluation, "real_statistics",
                        lambda *a, **k: stats.append(1) or real_stats(*a, use_cache=False))
    cfg = build_config(None, BASE + ["train.threads=1"])
    nodes = Nodes()
    hello = handle("hello", _node_req(cfg, sites, **{"run-key": "run-a"}), nodes)
    assert "error" not in hello["meta"] and "stats" in hello
    warm = [handle("train", _train_req(cfg, sites, r), nodes) for r in (1, 2)]
    assert all("error" not in w["meta"] for w in warm)
    assert (nodes.built, len(loads), len(stats)) == (1, 1, 1)  # one data load, one statistics pass, three messages

    # the same messages answered by nodes built for each alone: bit for bit the same
    for r, w in zip((1, 2), warm):
        monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / f"fresh-{r}"))  # no node state saved by the warm run
        cold = handle("train", _train_req(cfg, sites, r))
        assert set(cold["arrays"]) == set(w["arrays"])
        assert all(np.array_equal(cold["arrays"][k], w["arrays"][k]) for k in w["arrays"])
        assert json.loads(cold["meta"]["records"]) == json.loads(w["meta"]["records"])
    assert len(loads) == 3

    # another run, or another config: a new node
    before = len(loads)
    handle("train", _train_req(cfg, sites, 1, run_key="run-b"), nodes)
    assert nodes.built == 2 and len(loads) == before + 1
    other = build_config(None, BASE + ["train.threads=1", "run.seed=7"])
    handle("train", _train_req(other, sites, 1, run_key="run-b"), nodes)
    assert nodes.built == 3 and len(loads) == before + 2
