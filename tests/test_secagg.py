"""Secure aggregation (fed.secure-aggregation): configuration refusals, the update codec, which
strategies can run on the mean alone, and fedsynth's whole Flower app -- ServerApp, ClientApp,
Flower's SecAggPlusWorkflow and secaggplus_mod, unchanged -- in one process over a grid that
hands each message to the nodes' ClientApp directly (no SuperLink, no processes; the deployment
engine with TLS and node keys is tests/test_flower.py's secure-aggregation test)."""

import copy
import dataclasses
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedsynth.config import UserError, build_config, load_config

SECURE = ["fed.secure-aggregation=true", "privacy.validate=false"]


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("extra, names", [
    ([], ["privacy.validate = true"]),
    (["privacy.robust=median"], ["privacy.validate", "privacy.robust = 'median'"]),
    (["privacy.validate=false", "privacy.client-dp=true"], ["privacy.client-dp = true"]),
    (["privacy.validate=false", "fed.strategy=scaffold"], ["fed.strategy = 'scaffold'", "control-variate"]),
    (["privacy.validate=false", "fed.strategy=fednova"], ["fed.strategy = 'fednova'"]),
])
def test_secure_aggregation_refuses_what_needs_each_update_and_names_every_key(extra, names):
    with pytest.raises(UserError) as e:
        build_config(overrides=["fed.secure-aggregation=true", *extra])
    text = str(e.value)
    assert "fed.secure-aggregation" in text and "only the sum" in text
    for n in names:
        assert n in text, text


def test_secure_aggregation_is_refused_in_process():
    from fedsynth.data import load_dataset
    from fedsynth.fed import build_in_process
    cfg = build_config(overrides=[*SECURE, "data.num-images=8", "data.image-size=16"])
    assert cfg.fed.secure_aggregation and not cfg.privacy.validate
    data = load_dataset(cfg)
    with pytest.raises(UserError, match="needs the Flower deployment"):
        build_in_process(cfg, [data])


# ---------------------------------------------------------------- which strategies run on the mean

def _updates(seed=0):
    from fedsynth.updates import ClientUpdate
    g = torch.Generator().manual_seed(seed)
    glob = {"G.w": torch.randn(3, 4, generator=g), "G.bn.num_batches_tracked": torch.tensor(7)}
    ups = [ClientUpdate(str(i), {"G.w": glob["G.w"] + 0.1 * torch.randn(3, 4, generator=g),
                                 "G.bn.num_batches_tracked": torch.tensor(7 + 3 * (i + 1))}, n, {}, steps,
                        {"G.w": torch.randn(3, 4, generator=g)})
           for i, (n, steps) in enumerate([(10, 2), (30, 5), (20, 9)])]
    return glob, ups


@pytest.mark.parametrize("name", ["fedavg", "fedsgd", "fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi",
                                  "fednova", "scaffold", "feddyn"])
def test_a_strategy_runs_under_secure_aggregation_exactly_when_the_mean_is_all_it_needs(name):
    """What the server gets under SecAgg+ is each participant carrying the weighted mean. A
    strategy the registry lets run must aggregate that to what it makes of the real updates;
    the ones it refuses must not (so the refusal is needed)."""
    from fedsynth.fed.strategies import build_strategy
    from fedsynth.registry import STRATEGIES
    from fedsynth.updates import ClientUpdate, weighted_average
    glob, ups = _updates()
    mean = weighted_average([u.weights for u in ups], [u.num_examples for u in ups])
    copies = [ClientUpdate(u.client_id, mean, u.num_examples, {}, u.steps, {}) for u in ups]  # no extra tensors
    out = []
    for updates in (ups, copies):
        s = build_strategy(name)
        s.setup(glob, {"G.w"}, 5)
        state = glob
        try:
            for _r in range(2):  # two rounds: server optimisers' state must agree too
                state = s.aggregate(state, updates)
        except KeyError:  # SCAFFOLD: no control-variate changes arrive
            state = None
        out.append(state)
    same = out[1] is not None and all(torch.allclose(out[0][k].double(), out[1][k].double(), atol=1e-6) for k in glob)
    assert same == (STRATEGIES[name].secagg == ""), STRATEGIES[name].secagg


# ---------------------------------------------------------------- the codec

def test_codec_round_trip_scales_integers_and_refuses_what_would_be_clipped():
    from fedsynth.fed.flower import secagg
    start = {"a": np.array([[0.5, -1.0]], np.float32), "n": np.array(100, np.int64)}
    trained = {"a": np.array([[0.75, -1.5]], np.float32), "n": np.array(160, np.int64)}
    keys = sorted(start)
    scale = secagg.scales({k: str(v.dtype) for k, v in start.items()})
    assert scale == {"a": 1.0, "n": secagg.INT_SCALE}
    vec = secagg.encode(trained, start, keys, scale)
    assert vec[0].tolist() == [[0.25, -0.5]] and vec[1] == pytest.approx(60 / secagg.INT_SCALE)
    back = secagg.decode(vec, start, keys, scale)
    assert all(np.array_equal(back[k], trained[k]) and back[k].dtype == trained[k].dtype for k in keys)
    secagg.check_range(vec, keys, 10, 10.0, 0.5)
    with pytest.raises(ValueError, match="'a'.*clipping range 0.4"):
        secagg.check_range(vec, keys, 10, 10.0, 0.4)
    with pytest.raises(ValueError, match="'a' is not finite"):
        secagg.check_range([np.array([np.nan]), vec[1]], keys, 10, 10.0, 8.0)
    with pytest.raises(ValueError, match="travelling weights"):
        secagg.encode({"a": trained["a"]}, start, keys, scale)
    with pytest.raises(ValueError, match="shape"):
        secagg.decode([vec[0].ravel(), vec[1]], start, keys, scale)


def test_a_secure_request_carries_weights_and_strategy_state_through_flowers_legacy_records():
    """FitIns configs hold scalars and bytes only (no lists): FedAdam's server state travels as
    one .npz archive; weights keep their names, dtypes and 0-d shapes."""
    from flwr.compat.common import recorddict_compat as compat

    from fedsynth.fed.flower import secagg
    weights = {"G.w": np.arange(6, dtype=np.float32).reshape(2, 3), "G.n": np.array(4, np.int64)}
    strategy = {"m.G.w": np.ones((2, 3), np.float32), "t": np.array(3)}
    ins = secagg.fit_instructions({"round": 2, "strategy": "{}"}, weights, strategy)
    conf, got, st = secagg.train_request(compat.fitins_to_recorddict(ins, keep_input=True))
    assert conf == {"round": 2, "strategy": "{}"}
    for ref, back in ((weights, got), (strategy, st)):
        assert list(back) == list(ref) and all(
            np.array_equal(back[k], ref[k]) and back[k].dtype == ref[k].dtype and back[k].shape == ref[k].shape
            for k in ref)
    assert secagg.train_request(compat.fitins_to_recorddict(secagg.fit_instructions({}, weights, {}), True))[2] == {}


def test_zero_dim_tensors_travel_as_one_element_arrays_because_flower_skips_them_when_unmasking():
    """flwr 1.42's unmask stage does ``for vec in aggregated: vec += offset; vec *= 1 / total``;
    dequantize turns a 0-d array into a NumPy scalar, which those in-place updates never reach
    (BatchNorm's num_batches_tracked came back as 8196 instead of 2). encode sends shape (1,)."""
    from flwr.common.secure_aggregation.quantization import dequantize

    from fedsynth.fed.flower import secagg
    assert not isinstance(dequantize([np.array(5)], 8.0, secagg.QUANTIZATION_RANGE)[0], np.ndarray)
    assert isinstance(dequantize([np.array([5])], 8.0, secagg.QUANTIZATION_RANGE)[0], np.ndarray)
    start, trained = {"n": np.array(3, np.int64)}, {"n": np.array(5, np.int64)}
    vec = secagg.encode(trained, start, ["n"], {"n": secagg.INT_SCALE})
    assert vec[0].shape == (1,)
    assert secagg.decode(vec, start, ["n"], {"n": secagg.INT_SCALE})["n"].shape == ()


def test_quantisation_bound_holds_for_flowers_own_quantiser():
    """Flower's quantize/dequantize and the unmask arithmetic, without masks (they cancel
    exactly, modulo 2^32): the weighted mean stays within quantisation_bound of the exact one,
    for equal and unequal weights."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    from fedsynth.fed.flower import secagg
    rng = np.random.default_rng(0)
    clip, q = 8.0, secagg.QUANTIZATION_RANGE
    for weights in ([32, 32], [5, 17, 1000]):
        mx = float(max(weights))
        d = [rng.normal(0, 0.02, 5000) for _ in weights]
        exact = sum(w * x for w, x in zip(weights, d)) / sum(weights)
        np.random.seed(1)
        total, acc = 0, 0
        for w, x in zip(weights, d):
            r = round(w / mx * q)
            total += r
            acc = acc + quantize([x * (r / q)], clip, q)[0].astype(np.int64)
        got = (dequantize([acc], clip, q)[0] - (len(weights) - 1) * clip) * (q / total)
        err = float(np.max(np.abs(got - exact)))
        assert 0 < err <= secagg.quantisation_bound(weights, mx, clip), (weights, err)


# ---------------------------------------------------------------- the whole app in one process

CONFIG = ("[data]\nimage-size = 16\n[model]\nnz = 16\nngf = 8\nndf = 8\n[train]\nbatch-size = 16\nthreads = 1\n"
          "[fed]\nrounds = 2\n[eval]\nenabled = false\n[privacy]\nvalidate = false\n")


class DirectGrid:
    """A Flower Grid whose messages go straight to fedsynth's ClientApp in this process, one
    Context per node (what a SuperNode keeps), each message copied on the way there and back."""

    def __init__(self, nodes: dict[int, dict[str, str]]):
        from flwr.app import Context, RecordDict
        self.contexts = {nid: Context(run_id=1, node_id=nid, node_config=nc, state=RecordDict(), run_config={})
                         for nid, nc in nodes.items()}
        self.replies = {}
        self.run = SimpleNamespace(run_id=1)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        from flwr.app import Error, Message

        from fedsynth.fed.flower.client_app import client
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            there = copy.deepcopy(msg)
            try:
                rep = client(there, self.contexts[msg.metadata.dst_node_id])
            except Exception as e:  # what Flower does with a ClientApp that raises
                rep = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=there)
            rep.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.replies[msg.metadata.message_id] = copy.deepcopy(rep)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


@pytest.fixture
def flower_task(monkeypatch, tmp_path):
    from flwr.supercore.task_identity import TaskIdentity
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setenv("FEDSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDSYNTH_NODE_WORKER", raising=False)


def _serve(cfg_path, sites, out, audit, **node_config):
    from flwr.app import Context, RecordDict

    from fedsynth.fed.flower.server_app import _serve as serve
    grid = DirectGrid({11 + k: {"data-path": str(sites / f"client-{k}"), "client-id": str(k), **node_config}
                       for k in (0, 1)})
    serve(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                        run_config={"config-path": str(cfg_path), "out": str(out), "clients": 2,
                                    "poll-interval": 0.0, "audit-dir": str(audit)}))
    return torch.load(Path(out) / "checkpoints" / "round-0001.pt", weights_only=True)


def _plain_updates(cfg_path, sites):
    """The in-process engine's plain FedAvg run, and every client's round-1 update in it."""
    from fedsynth.data import load_dataset
    from fedsynth.fed import build_in_process
    cfg = load_config(cfg_path)
    cfg = dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, secure_aggregation=False))
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="folder", path=str(sites / f"client-{k}")))) for k in (0, 1)]
    run = build_in_process(cfg, parts, client_ids=["0", "1"])
    init = {k: v.clone() for k, v in run.server.global_state.items()}
    pool, updates, after = run.pool, {}, {}
    train = pool.train

    def spy(r, ids, start, evaluate):
        results, recs = train(r, ids, start, evaluate)
        updates.setdefault(r, {res.client_id: res.update for res in results})
        return results, recs
    pool.train = spy
    end = run._end_round

    def keep(r, *a):
        after.setdefault(r, {k: v.clone() for k, v in run.server.global_state.items()})
        return end(r, *a)
    run._end_round = keep
    run.run()
    return init, updates[1], after[1]


def _audited(audit):
    """Every tensor the server received in a train reply, and the JSON rest of those replies."""
    out = []
    for f in sorted(Path(audit).glob("*-train-*.npz")):
        with np.load(f, allow_pickle=False) as z:
            out.append(({k.replace("|", "/"): z[k] for k in z.files}, json.loads(f.with_suffix(".json").read_text())))
    return out


def _individual(arrays, init, updates):
    """Names of received tensors equal (to 1e-6) to a client's trained weights or its change."""
    hits = []
    for name, a in arrays.items():
        for u in updates.values():
            for k, w in u.weights.items():
                for what in (w, w.double() - init[k].double()):
                    if a.shape == tuple(w.shape) and a.dtype.kind in "fiu" and np.allclose(
                            a.astype(np.float64), what.double().numpy(), atol=1e-6, rtol=0):
                        hits.append((name, u.client_id, k))
    return hits


def test_secure_rounds_show_the_server_only_masked_vectors_and_give_fedavg_within_the_bound(sites, tmp_path,
                                                                                          flower_task):
    from fedsynth.fed.flower import secagg
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", "rounds = 1"))  # round 1 is the same in a 2-round run
    init, updates, plain = _plain_updates(cfg_path, sites)

    # positive control: the same audit of a plain Flower run finds the individual updates
    plain_flower = _serve(cfg_path, sites, tmp_path / "plain", tmp_path / "audit-plain")
    assert all(torch.equal(plain_flower["global"][k], plain[k]) for k in plain)
    seen = {f"{i}:{k}": v for i, (a, _) in enumerate(_audited(tmp_path / "audit-plain")) for k, v in a.items()}
    assert {(c, k) for _name, c, k in _individual(seen, init, updates)} == {
        (c, k) for c, u in updates.items() for k in u.weights}  # every tensor of both updates, in the clear

    cfg_path.write_text(CONFIG.replace("[fed]\n", "[fed]\nsecure-aggregation = true\n"))
    ck = _serve(cfg_path, sites, tmp_path / "secure", tmp_path / "audit")
    received = _audited(tmp_path / "audit")
    assert len(received) == 2 * 4 * 2  # 2 nodes x 4 SecAgg+ stages x 2 rounds
    arrays = {f"{i}:{k}": v for i, (a, _) in enumerate(received) for k, v in a.items()}
    assert not [k for k in arrays if "fitres.parameters" in k]  # secaggplus_mod emptied the FitRes parameters
    assert not _individual(arrays, init, updates)
    masked = np.concatenate([v.ravel() for k, v in arrays.items() if "masked_params" in k]).astype(np.float64)
    assert masked.size > 10_000 and masked.min() >= 0 and masked.max() < secagg.MODULUS_RANGE
    # uniform on [0, 2^32): unmasked, every value would lie in [0, 2^22] (the quantiser's range)
    assert np.mean(masked <= secagg.QUANTIZATION_RANGE) < 0.01
    assert abs(masked.mean() / secagg.MODULUS_RANGE - 0.5) < 0.01
    assert np.histogram(masked, bins=16, range=(0, secagg.MODULUS_RANGE))[0].min() > masked.size / 16 * 0.9
    # what travels beside the masked vector: the node's scalars (counts, losses, timing, its records)
    metrics = [{k.split("/", 1)[1] for k in rest if k.startswith("fitres.metrics/")} for _, rest in received]
    assert [m for m in metrics if m] == [{"client-id", "timing", "records", "warm", "num-examples", "steps",
                                         "d-loss", "g-loss"}] * 4

    # round 1: the secure mean within Flower's quantisation error of plain FedAvg
    n = [u.num_examples for u in updates.values()]
    bound = secagg.quantisation_bound(n, max(n), 8.0)
    diff = {k: float((ck["global"][k].double() - plain[k].double()).abs().max()) for k in plain}
    floats = max(v for k, v in diff.items() if plain[k].is_floating_point())
    ulp = max(float(torch.finfo(torch.float32).eps * plain[k].abs().max()) for k in plain
              if plain[k].is_floating_point())
    print(f"secure vs plain FedAvg after round 1: max |diff| {floats:.3g} (bound {bound:.3g} + float32 ulp {ulp:.2g})")
    assert 0 < floats <= bound + ulp
    assert all(diff[k] <= 1 and ck["global"][k].shape == plain[k].shape for k in plain
               if not plain[k].is_floating_point())  # num_batches_tracked: rounded mean
    recs = [json.loads(x) for x in (tmp_path / "secure" / "metrics.jsonl").read_text().splitlines()]
    trained = {(r["round"], r["client"]) for r in recs if r["metric"] == "d-loss"}
    assert trained == {(1, "0"), (1, "1"), (2, "0"), (2, "1")}
    assert [r["value"] for r in recs if r["metric"] == "secagg-clients"] == [2, 2]


def test_a_node_whose_change_would_be_clipped_drops_out_and_the_round_is_skipped(sites, tmp_path, flower_task):
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("[fed]\n", "[fed]\nrounds = 1\nsecure-aggregation = true\n"
                                       "secagg-clipping-range = 1e-9\n").replace("rounds = 2\n", ""))
    ck = _serve(cfg_path, sites, tmp_path / "run", tmp_path / "audit")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dropped = [r for r in recs if r["metric"] == "dropped"]
    assert {r["client"] for r in dropped} == {"0", "1"}
    assert all("exceeds the secure-aggregation clipping range" in r["reason"] for r in dropped), dropped
    assert [r["metric"] for r in recs if r["client"] == "server"] == ["round-skipped"]
    assert ck["global"] is not None  # the global model stays as it was


def test_a_node_that_requires_secure_aggregation_refuses_a_plain_round(sites, tmp_path, flower_task):
    """The hospital's own rule (node config secure-aggregation=true): a run without secure
    aggregation stops with an error naming the client before any update leaves."""
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG.replace("rounds = 2", "rounds = 1"))
    with pytest.raises(UserError, match="site 0: this node sends its update only through secure aggregation"):
        _serve(cfg_path, sites, tmp_path / "run", tmp_path / "audit", **{"secure-aggregation": True})
    replies = _audited(tmp_path / "audit")
    assert len(replies) == 2 and not any(arrays for arrays, _ in replies)  # two refusals, no tensor


def test_a_secure_round_request_outside_the_protocol_is_refused(flower_task, tmp_path):
    """A server that sends the FitIns of a secure round without SecAgg+'s records would get the
    node's change unmasked: the ClientApp refuses (secaggplus_mod masks only inside the protocol)."""
    from flwr.app import Context, Message, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from fedsynth.fed.flower.client_app import client
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(3)]), {"weight-keys": '["a"]'}), True)
    msg = Message(content, dst_node_id=11, message_type="train")
    ctx = Context(run_id=1, node_id=11, node_config={"data-path": str(tmp_path), "client-id": "0"},
                  state=RecordDict(), run_config={})
    with pytest.raises(RuntimeError, match="without SecAgg\\+'s records"):
        client(msg, ctx)
