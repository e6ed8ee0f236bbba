"""Flower deployment engine on 127.0.0.1: a SuperLink and SuperNodes, each hospital reading its
own folder, started and stopped by tools.local_federation.LocalFederation (every process by PID, with
everything it spawned; it raises if anything survives).

* TLS + SuperNode authentication: two registered nodes (``fedsynth deploy supernode``, with a
  warm worker each), one with an unregistered key that must be refused; two rounds; global
  weights bit-identical to the in-process engine, and the evaluation (computed on the nodes,
  merged on the server) equal to the in-process numbers.
* Client sampling across nodes (one of two per round) with SCAFFOLD (control variates kept in
  the node's context between rounds), on plain ``flower-supernode`` nodes (every message
  answered in a fresh ClientApp process), gives the in-process engine's weights.
* A node whose data folder is missing stops the run with an error that names the client.
* A server-side correction on the sites' samples (``fed.server-data = "sites"``): the in-process weights.
* The diffusion family over TLS + node authentication: weights bit-identical to in-process.
* Secure aggregation (SecAgg+) over TLS + node authentication: the server receives only masked
  vectors, and the global weights stay within the quantisation error of plain FedAvg.
* A SuperNode SIGKILLed mid-run and restarted (same key and data) rejoins; its missed rounds are
  recorded with the reason; the weights equal the in-process engine's with those drop-outs, and
  ``fedsynth run --replay`` of the run reproduces them bit for bit.
Skipped where flwr is not installed (pip install -e ".[flower]")."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedsynth.fed.flower.deploy import APP_DIR as APP  # noqa: E402
CONFIG = ("[data]\nimage-size = 16\n[model]\nnz = 16\nngf = 8\nndf = 8\n[train]\nbatch-size = 16\nthreads = 1\n"
          "[fed]\nrounds = 2\nmin-local-steps = 0\n")


def _free_port_base(nodes: int) -> int:
    """A SuperLink port ``p`` such that ``p`` and the SuperNodes' ``p + 100 + k`` are free now:
    the kernel's choice of a free port, so federations of two xdist workers (or two test
    sessions) on one machine do not collide. ``FEDSYNTH_TEST_PORTS=LO-HI`` confines every port to
    that range instead (SuperNodes then at ``p + 1 + k``), for machines where ranges are assigned."""
    import random
    import socket
    span = os.environ.get("FEDSYNTH_TEST_PORTS", "")
    for _ in range(50):
        if span:
            lo, hi = (int(x) for x in span.split("-"))
            p = random.randint(lo, hi - nodes - 1)
            ports = [p] + [p + 1 + k for k in range(nodes)]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                p = s.getsockname()[1]
            ports = [p] + [p + 100 + k for k in range(nodes)]
        if ports[-1] > 65535:
            continue
        socks = []
        try:
            for q in ports:
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free ports for a local Flower federation")


def _federation(tmp_path, sites, certs=None, nodes=None, warm=True):
    from tools.local_federation import LocalFederation
    nodes = nodes or [(str(sites / f"client-{k}"), str(k)) for k in (0, 1)]
    port = _free_port_base(len(nodes) + 1)
    return LocalFederation(tmp_path / "fl", nodes, certs=certs, port=port, warm=warm,
                           node_port=port + 1 if os.environ.get("FEDSYNTH_TEST_PORTS") else None,
                           env={**os.environ, "FEDSYNTH_CACHE": str(tmp_path / "cache")}, log_dir=tmp_path / "logs")


def _in_process_engine(cfg_path, sites):
    from fedsynth.config import load_config
    from fedsynth.data import load_dataset
    from fedsynth.fed import build_in_process
    from fedsynth.fed.evaluation import holdout_for
    cfg = load_config(cfg_path)
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="folder", path=str(sites / f"client-{k}")))) for k in (0, 1)]
    parts, held, _ = holdout_for(cfg, parts)  # each site's held-out images, split as its node splits them
    return build_in_process(cfg, parts, client_ids=["0", "1"], holdout=held)


def _in_process(cfg_path, sites):
    return _in_process_engine(cfg_path, sites).run()


def _run_app(fed, cfg_path, out):
    """Start the federation, run fedsynth's app on it to the end, stop every process."""
    try:
        fed.start()
        run = fed.run(APP, {"config-path": str(cfg_path), "out": str(out)}, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        fed.stop()
    return run


def _records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _key(r):
    return (r["round"], r["client"], r.get("real"), r["metric"])


@pytest.mark.smoke
def test_tls_authenticated_supernodes_match_the_in_process_engine(tmp_path, sites):
    from fedsynth.fed.flower.deploy import make_certs
    cfg_path = tmp_path / "fedsynth.toml"
    # held-out images: 16 of each node's 32 (8 select the best round, 8 are reported), split on the node
    cfg_path.write_text(CONFIG + "[eval]\nnum-samples = 64\ngrid-size = 4\nkid-subset-size = 32\nholdout = 0.5\n")
    make_certs(tmp_path / "certs", 3)
    fed = _federation(tmp_path, sites, certs=tmp_path / "certs")
    try:
        fed.start()  # the operator registers node0 and node1 only
        intruder = fed.start_node(2, str(sites / "client-0"), "9", key="node2")  # key never registered
        run = fed.run(APP, {"config-path": str(cfg_path), "out": str(tmp_path / "run")}, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert intruder.wait(timeout=60) != 0  # refused by the SuperLink (Flower exits with 305)
    finally:
        fed.stop()
    out = tmp_path / "run"
    ck = torch.load(out / "checkpoints" / "round-0002.pt", weights_only=True)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["round-0000.png", "round-0001.png", "round-0002.png"]
    assert (out / "report.html").is_file() and (out / "fd.png").is_file()
    assert json.loads((out / "nodes.json").read_text())["1"]["images"] == 16  # 32, less 16 held out

    timings = [r for r in _records(out / "timings.jsonl") if r["client"] != "server"]
    assert len(timings) == 4 and all(r["warm-worker"] for r in timings)  # answered by the nodes' warm workers
    ref_engine = _in_process_engine(cfg_path, sites)
    ref = ref_engine.run()
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)
    # evaluation: the nodes score local and global models on their own data, the server scores
    # the global model against the merged moments -- the same numbers as in-process
    flower = {_key(r): r for r in _records(out / "metrics.jsonl") if "extractor" in r}
    inproc = {_key(r): r for r in ref.records if "extractor" in r}
    # KID and the realism score need real features, which never leave a site: none on the union over Flower
    union_kid = {k for k in inproc if k[2] == "union" and k[3].startswith(("kid", "realism"))}
    assert set(flower) == set(inproc) - union_kid
    for k, r in flower.items():
        assert r["value"] == pytest.approx(inproc[k]["value"], rel=1e-6, abs=1e-9), k
    assert {k[2] for k in flower if k[1] == "global"} == {"union", "0", "1", "sites", "holdout", "holdout-select"}
    # the held-out moments merged on the server from the nodes' = the in-process merge: the same best round
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == ref_engine.best


def test_sampling_and_node_state_across_nodes_match_the_in_process_engine(tmp_path, sites):
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", 'rounds = 3\nfraction = 0.5\nstrategy = "scaffold"')
                        + "[eval]\nenabled = false\n")  # SCAFFOLD: control variates live on the node between rounds
    fed = _federation(tmp_path, sites, warm=False)  # plain flower-supernode: each message in a fresh process
    _run_app(fed, cfg_path, tmp_path / "run")
    trained = {(r["round"], r["client"]) for r in _records(tmp_path / "run" / "metrics.jsonl") if r["metric"] == "d-loss"}
    ref = _in_process(cfg_path, sites)
    assert trained == {(r["round"], r["client"]) for r in ref.records if r["metric"] == "d-loss"}
    assert len(trained) == 3  # one of the two hospitals per round
    timings = [r for r in _records(tmp_path / "run" / "timings.jsonl") if r["client"] != "server"]
    assert len(timings) == 3 and not any(r["warm-worker"] for r in timings)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0003.pt", weights_only=True)
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)


def test_a_node_with_a_missing_data_folder_stops_the_run_naming_the_client(tmp_path, sites):
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG + "[eval]\nenabled = false\n")
    fed = _federation(tmp_path, sites, nodes=[(str(sites / "client-0"), "0"), (str(tmp_path / "nowhere"), "1")])
    try:
        fed.start()
        run = fed.run(APP, {"config-path": str(cfg_path), "out": str(tmp_path / "run")}, timeout=300)
    finally:
        fed.stop()
    text = run.stdout + run.stderr
    print("flwr run exit code", run.returncode)
    assert "error: site 1" in text and "nowhere" in text, text[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _serverapps(flwr_home: str) -> list[int]:
    """PIDs of the flwr-serverapp processes of this federation (their environment names its FLWR_HOME)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"flwr-serverapp" in (d / "cmdline").read_bytes() \
                    and f"FLWR_HOME={flwr_home}".encode() in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_a_killed_server_resumes_in_a_new_flower_run_bit_identical(tmp_path, sites):
    """SIGKILL the ServerApp (and `fedsynth deploy run`) once round 2's checkpoint exists, then
    `fedsynth deploy run --resume`: a new Flower run, so every node starts with an empty context
    and must find its state (SCAFFOLD control variates, optimizer) on its own disk."""
    import signal
    import subprocess
    import sys
    import time

    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", 'rounds = 4\nstrategy = "scaffold"')
                        + "[eval]\nevery = 2\nnum-samples = 64\ngrid-size = 4\nkid-subset-size = 32\n")
    out = tmp_path / "run"
    fed = _federation(tmp_path, sites)
    cli = [sys.executable, "-m", "fedsynth.cli", "deploy", "run", "--clients", "2"]
    try:
        fed.start()
        first = subprocess.Popen(cli + ["--config", str(cfg_path), "--out", str(out)], env=fed.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while not (out / "checkpoints" / "round-0002.pt").exists():
            assert time.time() < deadline and first.poll() is None, "round 2 never finished"
            time.sleep(0.05)
        servers = _serverapps(str(fed.home))
        assert servers
        for p in servers:
            os.kill(p, signal.SIGKILL)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        res = subprocess.run(cli + ["--resume", str(out)], env=fed.env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        assert "resuming after round 2" in res.stdout
    finally:
        fed.stop()
    ck = torch.load(out / "checkpoints" / "round-0004.pt", weights_only=True)
    ref = _in_process(cfg_path, sites)
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)
    recs = [r for r in _records(out / "metrics.jsonl") if "extractor" in r or r["metric"] == "d-loss"]
    keys = [_key(r) for r in recs]
    assert len(keys) == len(set(keys))  # nothing of the lost round twice
    inproc = {_key(r): r for r in ref.records if "extractor" in r or r["metric"] == "d-loss"}
    assert set(keys) == {k for k in inproc if not (k[2] == "union" and k[3].startswith(("kid", "realism")))}
    for r in recs:
        assert r["value"] == pytest.approx(inproc[_key(r)]["value"], rel=1e-6, abs=1e-9), _key(r)


def test_ema_over_tls_authenticated_supernodes_matches_the_in_process_engine(tmp_path, sites):
    """fed.ema works over Flower (one server round for both engines): global and EMA weights
    bit-identical to the in-process engine."""
    from fedsynth.fed.flower.deploy import make_certs
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", "rounds = 2\nema = 0.5") + "[eval]\nenabled = false\n")
    make_certs(tmp_path / "certs", 2)
    fed = _federation(tmp_path, sites, certs=tmp_path / "certs")
    _run_app(fed, cfg_path, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0002.pt", weights_only=True)
    engine = _in_process_engine(cfg_path, sites)
    ref = engine.run()
    ref_ema = engine.server.ema_state
    assert ck["ema"] is not None and ref_ema is not None
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)
    assert all(torch.equal(ref_ema[k], ck["ema"][k]) for k in ref_ema)
    assert not all(torch.equal(ck["ema"][k], ck["global"][k]) for k in ck["global"] if ck["global"][k].is_floating_point())



def test_diffusion_over_tls_authenticated_supernodes_matches_the_in_process_engine(tmp_path, sites):
    """The diffusion family (UNet, its EMA and the EMA's step count travel) over two registered
    SuperNodes with TLS: global weights bit-identical to the in-process engine."""
    from fedsynth.fed.flower.deploy import make_certs
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text("[data]\nimage-size = 16\n[model]\nfamily = \"diffusion\"\n"
                        "[diffusion]\nchannels = [8, 8]\nattention = [false, true]\nnorm-groups = 4\n"
                        "timesteps = 20\nsampling-steps = 3\n[train]\nbatch-size = 16\nthreads = 1\n"
                        "[fed]\nrounds = 2\nmin-local-steps = 0\n[eval]\nenabled = false\n")
    make_certs(tmp_path / "certs", 2)
    fed = _federation(tmp_path, sites, certs=tmp_path / "certs")
    _run_app(fed, cfg_path, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0002.pt", weights_only=True)
    ref = _in_process(cfg_path, sites)
    assert ck["model"]["family"] == "diffusion" and set(ck["global"]) == set(ref.global_state)
    assert {"G.unet.conv_in.conv.weight", "G.ema.conv_in.conv.weight", "G.ema_steps"} <= set(ck["global"])
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)


def test_secure_aggregation_over_tls_authenticated_supernodes(tmp_path, sites):
    """fed.secure-aggregation on the deployment engine (TLS, registered node keys, warm workers):
    every reply the server receives (run config audit-dir) holds only masked vectors, uniform on
    [0, 2^32) and none equal to a hospital's trained weights or their change (taken from the
    in-process engine, whose round is the nodes' round bit for bit); the global weights stay
    within Flower's quantisation error of plain FedAvg. benchmarks/secagg_overhead.py measures
    the cost per round against a plain run."""
    import numpy as np

    from fedsynth.fed.flower import secagg
    from fedsynth.fed.flower.deploy import make_certs
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", "rounds = 1\nsecure-aggregation = true")
                        + "[eval]\nenabled = false\n[privacy]\nvalidate = false\n")
    make_certs(tmp_path / "certs", 2)
    fed = _federation(tmp_path, sites, certs=tmp_path / "certs")
    try:
        fed.start()
        run = fed.run(APP, {"config-path": str(cfg_path), "out": str(tmp_path / "run"),
                            "audit-dir": str(tmp_path / "audit")}, timeout=300)
        assert run.returncode == 0 and "[fedsynth] done" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        fed.stop()

    # the plain round in-process: each hospital's update, and plain FedAvg's global weights
    plain_cfg = tmp_path / "plain.toml"
    plain_cfg.write_text(cfg_path.read_text().replace("secure-aggregation = true", "secure-aggregation = false"))
    engine = _in_process_engine(plain_cfg, sites)
    init = {k: v.clone() for k, v in engine.server.global_state.items()}
    updates, train = [], engine.pool.train

    def spy(r, ids, start, evaluate):
        results, recs = train(r, ids, start, evaluate)
        updates.extend(res.update for res in results)
        return results, recs
    engine.pool.train = spy
    plain = engine.run().global_state
    assert len(updates) == 2

    replies = sorted((tmp_path / "audit").glob("*-train-*.json"))
    assert len(replies) == 2 * 4  # 2 nodes x 4 SecAgg+ stages
    received = {}
    for f in replies:
        with np.load(f.with_suffix(".npz"), allow_pickle=False) as z:
            received.update({f"{f.stem}:{k}": z[k] for k in z.files})
    assert received and not [k for k in received if "fitres.parameters" in k]
    for name, a in received.items():
        for u in updates:
            for key, w in u.weights.items():
                for ref in (w.double(), w.double() - init[key].double()):
                    same = a.shape == tuple(ref.shape) and np.allclose(a.astype(np.float64), ref.numpy(), atol=1e-6,
                                                                       rtol=0)
                    assert not same, (name, u.client_id, key)
    masked = np.concatenate([v.ravel() for k, v in received.items() if "masked_params" in k]).astype(np.float64)
    assert masked.size > 10_000 and np.mean(masked <= secagg.QUANTIZATION_RANGE) < 0.01
    assert abs(masked.mean() / secagg.MODULUS_RANGE - 0.5) < 0.01

    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0001.pt", weights_only=True)["global"]
    n = [u.num_examples for u in updates]
    bound = secagg.quantisation_bound(n, max(n), 8.0)
    floats = [k for k in plain if plain[k].is_floating_point()]
    err = max(float((ck[k].double() - plain[k].double()).abs().max()) for k in floats)
    ulp = max(float(torch.finfo(torch.float32).eps * plain[k].abs().max()) for k in floats)
    wall = [r["wall_s"] for r in _records(tmp_path / "run" / "timings.jsonl") if r["client"] == "server"]
    print(f"\nsecure aggregation over TLS: max |global - plain FedAvg| = {err:.3g} (bound {bound:.3g}); "
          f"round wall time {wall[0]:.1f} s")
    assert 0 < err <= bound + ulp
    assert all((ck[k] - plain[k]).abs().max() <= 1 and ck[k].shape == plain[k].shape for k in plain if k not in floats)


def test_heterogeneous_sites_and_server_data_over_flower_match_the_in_process_engine(tmp_path, sites):
    """Issue 14: one shared generator, each hospital its own discriminator -- site 1's narrower,
    group-normalised one from the run's [sites.1] tables, site 0's batch size from its own node
    config -- and a server that trains on a phantom it holds after each aggregation. The shared
    generator, and the server's own discriminator, are bit-identical to the in-process engine;
    nodes.json says which site ran what."""
    common = (CONFIG.replace("rounds = 2", "rounds = 1").replace(
        "[fed]\n", '[fed]\nshare = ["G"]\nserver-data = "phantom-ct"\nserver-steps = 2\nserver-images = 16\n')
        + "[eval]\nenabled = false\n"
              + "[sites.1.model]\nndf = 4\nd-norm = \"group\"\n")
    cfg_path, ref_path = tmp_path / "fedsynth.toml", tmp_path / "in-process.toml"
    cfg_path.write_text(common)
    ref_path.write_text(common + "[sites.0.train]\nbatch-size = 8\n")  # what node 0's own config says
    nodes = [(str(sites / "client-0"), "0", {"train.batch-size": 8}), (str(sites / "client-1"), "1")]
    _run_app(_federation(tmp_path, sites, nodes=nodes), cfg_path, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0001.pt", weights_only=True)
    engine = _in_process_engine(ref_path, sites)
    ref = engine.run()
    shared = [k for k in ref.global_state if k.startswith("G.")]
    assert shared and all(torch.equal(ref.global_state[k], ck["global"][k]) for k in shared)
    own = engine.server.own
    assert own and all(torch.equal(own[k], ck["server-training"]["own"][k]) for k in own)
    nodes_json = json.loads((tmp_path / "run" / "nodes.json").read_text())
    assert nodes_json["0"]["settings"] == {"train.batch-size": 8}
    assert nodes_json["1"]["settings"] == {"model.ndf": 4, "model.d-norm": "group"}
    steps = {r["client"]: r["steps"] for r in _records(tmp_path / "run" / "timings.jsonl") if r.get("round") == 1
             and r["client"] != "server"}
    assert steps == {"0": 4, "1": 2}  # 32 images at batch 8 and at batch 16


def test_server_correction_on_the_sites_samples_over_flower_matches_the_in_process_engine(tmp_path, sites):
    """fed.server-data = "sites" (a server-side correction on samples of the sites' updated
    models) lives in the shared server round: over Flower, with a conditional generator whose
    labels come from the class counts the nodes report, the global weights are the in-process
    engine's, bit for bit, and so are the server's records."""
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", 'rounds = 1\nserver-data = "sites"\nserver-steps = 2')
                        .replace("[model]\n", '[model]\nconditional = "concat"\n') + "[eval]\nenabled = false\n")
    _run_app(_federation(tmp_path, sites), cfg_path, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "round-0001.pt", weights_only=True)
    ref = _in_process(cfg_path, sites)
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)
    server = [r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["client"] == "server"]
    assert server == [r for r in ref.records if r["client"] == "server"]
    assert {r["metric"] for r in server} == {"server-samples", "d-loss", "g-loss", "server-steps"}


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory, sites):
    """An 8-round SCAFFOLD run over TLS-authenticated warm SuperNodes in which hospital 0 drops out
    of round 1 (faults.dropout-schedule) and hospital 1's SuperNode is SIGKILLed with its worker
    once round 1 is checkpointed, then started again -- same key, same data -- as a service
    manager would, until the SuperLink lets it in. Flower counts the killed node as online until
    it misses two heartbeats (30 s apart, fixed in Flower 1.42): its round waits that long, and
    this is what makes the test take about 90 s."""
    import subprocess
    import time

    from fedsynth.fed.flower.deploy import flower_bin, make_certs
    tmp_path = tmp_path_factory.mktemp("restart")
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", 'rounds = 8\nstrategy = "scaffold"')
                        + '[eval]\nenabled = false\n[faults]\ndropout-schedule = ["1:0"]\n')
    make_certs(tmp_path / "certs", 2)
    fed = _federation(tmp_path, sites, certs=tmp_path / "certs")
    out = tmp_path / "run"
    restarts = 0
    try:
        fed.start()
        flwr = subprocess.Popen([flower_bin("flwr"), "run", str(APP), "local", "--stream", "--run-config",
                                 f'config-path="{cfg_path}" out="{out}" round-timeout=150'],
                                env=fed.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while not (out / "checkpoints" / "round-0001.pt").exists():
                assert time.time() < deadline and flwr.poll() is None, "round 1 never finished: " + (
                    flwr.stdout.read()[-3000:] if flwr.poll() is not None else "")
                time.sleep(0.05)
            fed.kill(fed.by_node[1])  # hospital 1's machine dies after round 1 ...
            deadline = time.time() + 600
            while not (out / "checkpoints" / "round-0008.pt").exists() and flwr.poll() is None:
                assert time.time() < deadline, "the run did not finish"
                restarts += len(fed.revive())  # ... and its service manager starts it again
                time.sleep(2)
            text, _ = flwr.communicate(timeout=300)
        finally:
            if flwr.poll() is None:
                flwr.kill()
                flwr.wait()
    finally:
        fed.stop()
    assert "[fedsynth] done" in text and restarts >= 1, text[-3000:]
    return cfg_path, out


def _participation(out):
    """(round, client) of every recorded training, and of every drop-out with its reason."""
    recs = _records(out / "metrics.jsonl")
    trained = {(r["round"], r["client"]) for r in recs if r["metric"] == "d-loss"}
    return trained, {(r["round"], r["client"]): r.get("reason", "") for r in recs if r["metric"] == "dropped"}


@pytest.mark.timeout(900)  # the module fixture's run (~100 s alone; far longer on a loaded machine)
def test_a_restarted_node_rejoins_and_the_run_completes(restarted_run, sites):
    """Hospital 1 misses the rounds while it is down -- each recorded as dropped, with the reason
    -- and trains every round from its return on; the weights equal the in-process engine's with
    the same participation: its SCAFFOLD control variate and optimizer came back from its own
    disk as of the last round the server took from it."""
    cfg_path, out = restarted_run
    trained, dropped = _participation(out)
    assert (1, "0") in dropped and all(dropped.values())
    assert all((r, "0") in trained for r in range(2, 9))
    gone = sorted(r for r, c in dropped if c == "1")  # the rounds hospital 1 was down for
    assert gone and gone == list(range(2, gone[-1] + 1)) and gone[-1] < 8
    assert all((r, "1") in trained for r in [1] + list(range(gone[-1] + 1, 9)))
    assert not [r for r in _records(out / "metrics.jsonl") if r["metric"] == "state-lost"]
    ref_cfg = cfg_path.parent / "in-process.toml"
    ref_cfg.write_text(cfg_path.read_text().replace('["1:0"]', json.dumps(sorted(f"{r}:{c}" for r, c in dropped))))
    ref = _in_process(ref_cfg, sites)
    ck = torch.load(out / "checkpoints" / "round-0008.pt", weights_only=True)
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)


@pytest.mark.timeout(900)  # see above: it may be the first test to use the fixture
def test_replay_of_a_run_with_a_drop_out_gives_the_recorded_weights(restarted_run, sites, tmp_path):
    """`fedsynth run --replay RUN --sites SITES`: the recorded participation forced in-process;
    the global weights of every kept checkpoint bit-identical. A recorded run that differs is
    reported and exits 1."""
    import shutil

    from typer.testing import CliRunner

    from fedsynth.cli import app
    _cfg, out = restarted_run
    _trained, dropped = _participation(out)
    res = CliRunner().invoke(app, ["run", "--replay", str(out), "--sites", str(sites), "-o", str(tmp_path / "replay")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the terminal width wraps long paths
    assert f"{len(dropped)} missed site round" in text
    assert "round 8: global weights bit-identical" in text and "round 7: global weights bit-identical" in text
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    ck = torch.load(tampered / "checkpoints" / "round-0008.pt", weights_only=True)
    k = next(k for k, v in ck["global"].items() if v.is_floating_point())
    ck["global"][k] = ck["global"][k] + 1e-3
    torch.save(ck, tampered / "checkpoints" / "round-0008.pt")
    res = CliRunner().invoke(app, ["run", "--replay", str(tampered), "--sites", str(sites), "-o", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "round 8: global weights DIFFERENT" in " ".join(res.output.split()), res.output
