"""Heterogeneous hospitals and a server that holds data (issue 14, parts 3 and 4).

* ``[sites.<id>]`` overrides: each site trains with its own discriminator width / normalisation,
  batch size and local epochs; with ``fed.share = ["G"]`` the generator is one (the global G is
  the mean of the sites' G updates, every site sends exactly the same keys and shapes) while
  the discriminators keep their own architectures; sites with the run's architecture share one
  model workspace.
* Bad overrides are refused with errors that name the site and the key (config, runtime, node).
* ``fed.server-data``: after each aggregation the server trains the global model on its own
  images -- the same seed gives the same weights, and the weights differ from a run without it.
* Resume with overrides and server data: bit-identical to the uninterrupted run, each site's
  own discriminator and the server's included.
* The two-step recipe: centralized pretraining on a public set, then federated fine-tuning
  from its checkpoint (``fed.init-from``).
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import UserError, build_config
from fedsynth.updates import weighted_average

QUIET = ["eval.enabled=false"]


def _run(over, out=None, resume=None):
    from fedsynth.fed.run import run_experiment
    return run_experiment(build_config(None, over), out, resume=resume)


def _federation(over):
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    cfg = build_config(None, over)
    return build_in_process(cfg, partition_for(cfg, load_dataset(cfg)))


def test_sites_train_their_own_discriminators_around_one_shared_generator(tiny):
    over = tiny + QUIET + ['fed.share=["G"]', "partition.clients=3", "data.num-images=96", "fed.rounds=1",
                          "sites.1.model.ndf=4", "sites.1.model.d-norm=group", "sites.1.train.batch-size=8",
                          "sites.0.fed.local-epochs=3", "sites.2.train.batch-size=8"]
    run = _federation(over)
    seen = []
    train = run.pool.train

    def spy(r, ids, start, evaluate):
        results, recs = train(r, ids, start, evaluate)
        seen.append({res.client_id: res for res in results})
        return results, recs
    run.pool.train = spy
    res = run.run()
    last = seen[-1]
    g = res.global_state
    travel = {k for k in g if k.startswith("G.")}
    # every site sends exactly the shared part, with the server's shapes; the global G is their mean
    for r in last.values():
        assert set(r.update.weights) == travel
        assert all(r.update.weights[k].shape == g[k].shape for k in travel)
    ups = [last[c].update for c in sorted(last)]
    mean = weighted_average([u.weights for u in ups], [u.num_examples for u in ups])
    assert all(torch.equal(mean[k], g[k]) for k in travel)
    # which site ran what: site 0 three epochs at batch 16, sites 1 and 2 one epoch at batch 8
    assert [last[c].timing["steps"] for c in ("0", "1", "2")] == [6, 4, 4]
    # the discriminators stay on the sites, each with its own architecture
    d0, d1, d2 = (run.pool.clients[c].local for c in ("0", "1", "2"))
    assert d1["D.features.0.weight"].shape[0] == 4 and d0["D.features.0.weight"].shape[0] == 8
    assert not any("running_mean" in k for k in d1) and any("running_mean" in k for k in d0)  # group vs batch norm
    assert set(d0) == set(d2) and not torch.equal(d0["D.features.0.weight"], d2["D.features.0.weight"])
    # one workspace per architecture: site 2 (batch size only) shares the run's
    assert len(run.pool.sites.models()) == 2


@pytest.mark.parametrize("over, words", [
    (["sites.1.model.ndf=4"], ["sites.1.model.ndf", "site 1", "D travels"]),
    (['fed.share=["G"]', "sites.1.model.ngf=4"], ["sites.1.model.ngf", "G travels"]),
    (["sites.2.train.batch-size=8"], ["sites.2", "no site '2'", "partition.clients = 2"]),
    (["sites.x.train.batch-size=8"], ["sites.x", "no site 'x'"]),
    (["sites.0.data.image-size=32"], ["sites.0.data.image-size", "cannot differ between sites"]),
    (["sites.0.train.batch-size=0"], ["sites.0.train.batch-size", ">= 1"]),
    (["sites.0.model.nosuch=1"], ["sites.0.model.nosuch", "unknown"]),
    (['fed.share=["G"]', "sites.1.privacy.dp-sgd=true"], ["site 1", "privacy.dp-sgd", "model.d-norm"]),
])
def test_bad_site_overrides_are_refused_naming_site_and_key(over, words):
    with pytest.raises(UserError) as e:
        build_config(None, over)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_bad_override_exits_2_without_a_traceback(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[sites.1.model]\nndf = 4\n")  # D travels by default
    res = CliRunner().invoke(app, ["run", "--config", str(toml), "--dry-run"])
    assert res.exit_code == 2 and "sites.1.model.ndf" in res.output and "Traceback" not in res.output


def test_an_override_that_changes_shared_weights_is_caught_when_the_model_is_built(tiny):
    # the config cannot see that "D.features.0.*" is part of D: the built model can
    with pytest.raises(UserError, match=r"site 1: its settings \(model.ndf = 4\) change the weights that travel: "
                                        r"'D.features.0.weight'"):
        _federation(tiny + QUIET + ['fed.share=["G", "D.features.0.*"]', "sites.1.model.ndf=4"])


def test_a_node_refuses_its_own_override_of_the_shared_part(sites):
    from fedsynth.fed.flower.node import handle
    cfg = build_config(None, ["data.image-size=16", "eval.enabled=false"])
    req = {"config": {"fedsynth-config": cfg.to_toml()}, "arrays": None, "strategy": None, "state": None,
           "node_config": {"data-path": str(sites / "client-1"), "client-id": "1", "model.ndf": 4}}
    err = handle("hello", req)["meta"]["error"]
    assert "node config key 'model.ndf'" in err and "D travels" in err
    ok = handle("hello", {**req, "node_config": {**req["node_config"], "model.ndf": 16, "train.batch-size": 8}})
    assert json.loads(ok["meta"]["settings"]) == {"model.ndf": 16, "train.batch-size": 8}  # the run's D: agrees


SERVER = ["fed.server-data=phantom-ct", "fed.server-steps=2", "fed.server-images=32"]


def test_server_data_trains_the_global_model_deterministically(tiny):
    base = tiny + QUIET + ["fed.rounds=1", 'fed.share=["G"]']
    a, b, plain = _run(base + SERVER), _run(base + SERVER), _run(base)
    ga, gb, gp = a.result.global_state, b.result.global_state, plain.result.global_state
    assert all(torch.equal(ga[k], gb[k]) for k in ga)  # same seed, same weights
    assert not torch.equal(ga["G.net.0.weight"], gp["G.net.0.weight"])  # the server's training moved G
    recs = [r for r in a.result.records if r["client"] == "server"]
    assert {r["metric"] for r in recs} == {"d-loss", "g-loss", "server-steps"}
    assert next(r["value"] for r in recs if r["metric"] == "server-steps") == 2
    part = json.loads((a.run_dir.path / "partition.json").read_text())
    assert part["server"]["images"] == 32 and part["server"]["source"] == "phantom-ct"
    # the server keeps its own discriminator (D does not travel)
    assert set(a.federation.server.own) == {k for k in ga if k.startswith("D.")}


def test_server_data_refuses_images_of_another_shape(tiny):
    with pytest.raises(UserError, match="fed.server-data.*3 channel"):
        _federation(tiny + QUIET + ["fed.server-data=phantom-histo"])
    with pytest.raises(UserError, match="unknown source kind 'nosuch'"):
        build_config(None, ["fed.server-data=nosuch:/data"])


def test_resume_with_site_overrides_and_server_data_is_bit_identical(tiny, tmp_path):
    over = tiny + QUIET + ['fed.share=["G"]', "fed.rounds=3", "run.keep-checkpoints=3", "sites.1.model.ndf=4",
                          "sites.0.train.batch-size=8"] + SERVER
    ref = _run(over, tmp_path / "ref")
    _run(over, tmp_path / "cut")
    (tmp_path / "cut" / "checkpoints" / "round-0003.pt").unlink()  # killed during round 3
    (tmp_path / "cut" / "checkpoints" / "round-0002.pt").unlink()
    again = _run(over, resume=tmp_path / "cut")
    assert again.resumed_from == 1
    a = torch.load(tmp_path / "ref" / "checkpoints" / "round-0003.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "round-0003.pt", weights_only=True)
    assert all(torch.equal(a["global"][k], b["global"][k]) for k in a["global"])
    for cid in ("0", "1"):  # each site's own discriminator, of its own width
        la, lb = a["clients"][cid]["local"], b["clients"][cid]["local"]
        assert set(la) == set(lb) and all(torch.equal(la[k], lb[k]) for k in la)
    assert a["clients"]["1"]["local"]["D.features.0.weight"].shape[0] == 4
    own_a, own_b = a["server-training"]["own"], b["server-training"]["own"]
    assert own_a and all(torch.equal(own_a[k], own_b[k]) for k in own_a)
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()
    assert ref.result is not None


def test_pretrain_centrally_then_fine_tune_federated(tiny, tmp_path):
    """The documented two-step recipe (docs/heterogeneous.md): step 1 pools a public set in one
    client; step 2 federates from its checkpoint, each site with its own discriminator."""
    pre = _run(tiny + QUIET + ["fed.rounds=1", "fed.strategy=centralized", "data.source=phantom-ct"], tmp_path / "pre")
    ck = tmp_path / "pre" / "checkpoints" / "round-0001.pt"
    fine = _federation(tiny + QUIET + ["fed.rounds=1", f"fed.init-from={ck}", 'fed.share=["G"]',
                                       "sites.1.model.ndf=4"])
    g = pre.result.global_state
    assert all(torch.equal(fine.init[k], g[k]) for k in g)  # the federation starts from the pretrained model
    # site 0 (the run's architecture) starts from the pretrained D too; site 1 from its own, narrower one
    assert torch.equal(fine.pool.clients["0"].local["D.features.0.weight"], g["D.features.0.weight"])
    assert fine.pool.clients["1"].local["D.features.0.weight"].shape[0] == 4
    fine.run()


def test_the_documented_examples_and_preset_are_valid_configs():
    from pathlib import Path

    from fedsynth.config import load_config
    from fedsynth.sweep import PRESETS
    root = Path(__file__).resolve().parent.parent / "examples"
    het = load_config(root / "heterogeneous.toml")
    assert het.for_site("2").model.ndf == 8 and het.for_site("0").model.ndf == 16 and het.fed.server_data
    pre, fine = load_config(root / "pretrain.toml"), load_config(root / "finetune.toml")
    assert pre.fed.strategy == "centralized" and (pre.model, pre.data.image_size) == (fine.model, fine.data.image_size)
    for _, over in PRESETS["hetero"]["variants"]:
        load_config(None, PRESETS["hetero"]["base"] + over)


def test_a_site_picks_its_own_discriminator_backbone(tiny):
    """The histopathology study's setting: one generator, and a hospital that trains a
    transformer discriminator (timm's DeiT-Tiny, untrained here) beside a DCGAN one."""
    over = tiny + QUIET + ['fed.share=["G"]', "fed.rounds=1", "sites.1.model.d-arch=deit_tiny"]
    run = _federation(over)
    res = run.run()
    d0, d1 = run.pool.clients["0"].local, run.pool.clients["1"].local
    assert any(k.startswith("D.features.") for k in d0) and not any(k.startswith("D.features.") for k in d1)
    assert any("blocks" in k for k in d1)  # the transformer's own layers stay on site 1
    assert all(torch.isfinite(v).all() for k, v in res.global_state.items() if k.startswith("G."))
    with pytest.raises(UserError, match="sites.1.model.d-arch"):
        build_config(None, tiny + ["sites.1.model.d-arch=deit_tiny"])  # D travels: it must be one network
