import numpy as np
import pytest
import torch

from fedsynth.config import build_config
from fedsynth.data import load_dataset, partition
from fedsynth.fed import build_in_process, eval_rounds, sample_clients
from fedsynth.report import RunDir, read_metrics


def _run(overrides, run_dir=None):
    cfg = build_config(overrides=overrides)
    data = load_dataset(cfg)
    parts = partition(data, cfg.partition.scheme, cfg.partition.clients, cfg.run.seed)
    return build_in_process(cfg, parts).run(run_dir)


def test_eval_rounds():
    assert eval_rounds(5, 2) == {0, 2, 4, 5}
    assert eval_rounds(3, 0) == {0, 3}
    assert eval_rounds(3, 1) == {0, 1, 2, 3}


def test_client_sampling_is_seeded_and_respects_fraction_and_minimum():
    ids = [str(k) for k in range(10)]
    a = sample_clients(ids, 0.3, 1, seed=0, round_=4)
    assert len(a) == 3 and a == sample_clients(ids, 0.3, 1, seed=0, round_=4)
    assert a != sample_clients(ids, 0.3, 1, seed=0, round_=5) or a != sample_clients(ids, 0.3, 1, seed=1, round_=4)
    assert len(sample_clients(ids, 0.1, 4, seed=0, round_=1)) == 4
    assert sample_clients(ids, 1.0, 1, seed=0, round_=1) == ids


def test_same_seed_same_metrics_and_weights(tiny):
    a = _run(tiny)
    b = _run(tiny)
    assert [(r["round"], r["client"], r["metric"]) for r in a.records] == \
           [(r["round"], r["client"], r["metric"]) for r in b.records]
    assert a.records == b.records
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    c = _run(tiny + ["run.seed=1"])
    assert not torch.equal(a.global_state["G.net.0.weight"], c.global_state["G.net.0.weight"])


def test_protocol_records_clients_and_global_each_evaluated_round(tiny):
    # the global model every 2nd round; each site's own model every 3rd and at the last (round 0: its start)
    res = _run(tiny + ["fed.rounds=4", "eval.every=2", "eval.local-every=3", "partition.clients=3"])
    fd = [(r["round"], r["client"]) for r in res.records if r["metric"] == "fd-random" and r["real"] != "sites"]
    for rnd in (0, 4):
        assert {c for r, c in fd if r == rnd} == {"global", "0", "1", "2"}
    assert {c for r, c in fd if r == 2} == {"global"}  # not a local round
    assert not any(r in (1, 3) for r, _ in fd)          # round 3 is a local round but not an evaluated one
    g = [r for r in res.records if r["client"] == "global" and r["metric"] == "fd-random" and r["real"] == "union"]
    assert len(g) == 3 and all(r["num_real"] == 64 for r in g)  # 64 images: too few to hold any out
    assert all("random-conv" in r["extractor"] for r in res.records if r["metric"].startswith(("fd", "kid")))
    losses = [r for r in res.records if r["metric"] == "d-loss"]
    assert len(losses) == 12 and all(np.isfinite(r["value"]) for r in losses)


def test_global_model_is_fedavg_of_client_models(tiny):
    """One round, two clients: the global weights equal the sample-weighted mean."""
    from fedsynth.fed import weighted_average
    from fedsynth.train import LocalTrainer
    cfg = build_config(overrides=tiny + ["fed.rounds=1", "data.num-images=50"])
    parts = partition(load_dataset(cfg), "iid", 2, cfg.run.seed)
    run = build_in_process(cfg, parts)
    seen = []
    orig = LocalTrainer.weights

    def spy(self):
        w = orig(self)
        seen.append(w)
        return w
    LocalTrainer.weights = spy
    try:
        res = run.run()
    finally:
        LocalTrainer.weights = orig
    client_weights = seen[-2:]
    expect = weighted_average(client_weights, [25, 25])
    assert all(torch.equal(expect[k], res.global_state[k]) for k in expect)
    assert res.global_state["G.net.1.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("strategy,clients", [("local", {"0", "1"}), ("centralized", {"pooled"})])
def test_baselines_run_and_are_recorded_the_same_way(tiny, strategy, clients):
    res = _run(tiny + [f"fed.strategy={strategy}"])
    fd = [r for r in res.records if r["metric"] == "fd-random"]
    assert {r["client"] for r in fd} - {"global"} == clients
    keys = {"round", "client", "metric", "value", "extractor"}
    assert all(keys <= set(r) for r in fd)
    if strategy == "local":
        assert res.global_state is None and all(c.weights is not None for c in res.client_states.values())
        assert not any(r["client"] == "global" for r in fd)
    else:
        pooled = [r for r in fd if r["client"] == "pooled"]
        assert pooled[0]["num_real"] == 64


def test_run_directory_contents(tiny, tmp_path):
    rd = RunDir.create(tmp_path / "runs", "tiny test")
    assert rd.path.name == "0000-tiny-test"
    _run(tiny + ["run.keep-checkpoints=1"], rd)
    assert RunDir.create(tmp_path / "runs", "x").path.name == "0001-x"
    recs = read_metrics(rd.path)
    assert recs and all({"round", "client", "metric", "value"} <= set(r) for r in recs)
    assert (rd.path / "fd.png").stat().st_size > 1000
    assert sorted(p.name for p in (rd.path / "samples").iterdir()) == ["real.png", "realism.png", "round-0000.png",
                                                                     "round-0001.png", "round-0002.png"]
    ck = sorted((rd.path / "checkpoints").iterdir())
    assert [p.name for p in ck] == ["round-0002.pt"]
    state = torch.load(ck[0], weights_only=True)
    assert state["round"] == 2 and "G.net.0.weight" in state["global"]
    assert set(state["clients"]) == {"0", "1"} and state["clients"]["0"]["opt_state"] is not None
    assert not list(rd.path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_real_statistics_are_cached(tiny, tmp_path):
    from fedsynth.utils import cache_dir
    _run(tiny)
    files = sorted((cache_dir() / "stats").glob("*.npz"))
    assert len(files) == 2  # one per client; the union is their exact merge
    mtimes = [f.stat().st_mtime_ns for f in files]
    _run(tiny)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_the_statistics_cache_tells_memory_formats_apart(tmp_path, monkeypatch):
    """Features computed channels-last may differ in their last bits: such statistics are cached
    apart from the contiguous network's, never served in their place."""
    import torch

    from fedsynth.data import make_phantom
    from fedsynth.fed.assembly import memory_format
    from fedsynth.fed.evaluation import real_statistics
    from fedsynth.metrics import RandomConvFeatures
    from fedsynth.utils import cache_dir
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "cache"))
    data = make_phantom("phantom-xray", 12, 16, seed=0)
    ext = RandomConvFeatures()
    real_statistics(data, ext)
    real_statistics(data, ext)
    assert len(list((cache_dir() / "stats").glob("*.npz"))) == 1
    other = torch.contiguous_format if memory_format(ext) == "channels_last" else torch.channels_last
    real_statistics(data, ext.to(memory_format=other))
    assert len(list((cache_dir() / "stats").glob("*.npz"))) == 2


def test_per_site_fairness_records(tiny):
    res = _run(tiny + ["partition.clients=3", "data.num-images=72", "fed.rounds=1"])
    on_sites = [r for r in res.records if r["client"] == "global" and r["metric"] == "fd-random" and r["real"] in ("0", "1", "2")]
    assert {(r["round"], r["real"]) for r in on_sites} == {(k, c) for k in (0, 1) for c in ("0", "1", "2")}
    for rnd in (0, 1):
        vals = [r["value"] for r in on_sites if r["round"] == rnd]
        spread = {r["metric"]: r["value"] for r in res.records if r["round"] == rnd and r.get("real") == "sites"}
        assert spread["fd-random-sites-worst"] == max(vals) and spread["fd-random-sites-best"] == min(vals)
        assert spread["fd-random-sites-mean"] == pytest.approx(np.mean(vals))


def test_federated_global_fd_equals_pooled_data_fd(tiny):
    """The union's statistics merged from the clients give the same FD as pooling the images."""
    from fedsynth.fed.evaluation import real_statistics
    from fedsynth.metrics import FeatureStats, fd_from_stats
    cfg = build_config(overrides=tiny + ["partition.clients=3", "data.num-images=90"])
    data = load_dataset(cfg)
    run = build_in_process(cfg, partition(data, "iid", 3, cfg.run.seed))
    res = run.run()
    pooled = real_statistics(data, run.evaluator.extractor, use_cache=False).stats
    fake = FeatureStats.of(run.evaluator.fake_features(res.global_state, None))
    recorded = [r["value"] for r in res.records if r["client"] == "global" and r["real"] == "union"
                and r["metric"] == "fd-random" and r["round"] == 2][0]
    assert fd_from_stats(fake, pooled) == pytest.approx(recorded, rel=1e-9)


def test_local_models_are_scored_every_nth_round_and_at_the_last():
    from fedsynth.fed.engine import local_eval_rounds
    assert local_eval_rounds(20, 5) == {5, 10, 15, 20}
    assert local_eval_rounds(12, 5) == {5, 10, 12}
    assert local_eval_rounds(3, 1) == {1, 2, 3}
    assert local_eval_rounds(7, 0) == {7}
