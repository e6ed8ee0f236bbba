"""Tensors packed into Flower ArrayRecords (one Array per dtype plus a JSON layout): the same
bytes back, every dtype and shape a state dict holds, and a malformed layout from the network
refused with an error that says what is wrong."""

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord  # noqa: E402

from fedsynth.fed.flower.records import LAYOUT, from_record, is_packed, to_record  # noqa: E402


def _state():
    g = np.random.default_rng(0)
    return {"G.w": g.normal(size=(4, 3, 2, 2)).astype(np.float32), "G.steps": np.array(7, dtype=np.int64),
            "D.b": g.normal(size=5).astype(np.float32), "D.bn.n": np.array(3, dtype=np.int64),
            "G.empty": np.zeros((0, 3), np.float32), "G.half": g.normal(size=(2, 2)).astype(np.float16),
            "G.mask": np.array([True, False])}


def test_round_trip_is_bit_exact_in_order_with_one_array_per_dtype():
    state = _state()
    rec = to_record(state)
    assert is_packed(rec) and len(list(rec.keys())) == 5  # float32, int64, float16, bool + the layout
    back = from_record(rec)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
        assert back[k].flags.writeable  # torch.from_numpy takes it without a warning


def test_a_plain_record_still_reads():
    state = _state()
    rec = ArrayRecord(array_dict={k: Array(v) for k, v in state.items()})
    assert not is_packed(rec)
    assert all(np.array_equal(from_record(rec)[k], v) for k, v in state.items())


def _with_layout(layout):
    rec = to_record({"a": np.arange(4, dtype=np.float32)})
    raw = layout if isinstance(layout, bytes) else json.dumps(layout).encode()
    rec[LAYOUT] = Array(np.frombuffer(raw, dtype=np.uint8).copy())
    return rec


@pytest.mark.parametrize("layout, message", [
    (b"not json", "not JSON"),
    ({"a": 1}, "not a list"),
    ([["a", "float32"]], "bad entry"),
    ([["a", "object", [4]]], "bad entry"),
    ([["a", "float32", [-1]]], "bad entry"),
    ([["a", "int64", [4]]], "no packed int64"),
    ([["a", "float32", [5]]], "too short"),
    ([["a", "float32", [3]]], "more values"),
])
def test_a_malformed_layout_is_refused_naming_the_problem(layout, message):
    with pytest.raises(ValueError, match=message):
        from_record(_with_layout(layout))


def test_an_unsupported_dtype_is_refused_when_packing():
    with pytest.raises(TypeError, match="complex64"):
        to_record({"z": np.zeros(2, np.complex64)})


def test_unpacked_arrays_become_tensors_of_the_same_shapes():
    """0-d buffers (BatchNorm's step count, the EMA's) stay 0-d on their way into torch."""
    from fedsynth.fed.flower.node import arrays, tensors
    back = tensors(from_record(to_record(_state())))
    assert back["G.steps"].shape == () and back["G.w"].shape == (4, 3, 2, 2) and back["G.empty"].shape == (0, 3)
    assert all(np.array_equal(arrays(back)[k], v) for k, v in _state().items())


def test_a_node_builds_on_the_state_of_the_round_the_server_took():
    """``state-round`` names the state a node builds on: Flower's context if it holds that round,
    else the node's disk; a newer round the server never took (the node was killed before its
    reply arrived) is not used; a state that is gone raises StateLost (the node then says so)."""
    from types import SimpleNamespace

    from fedsynth.fed.flower.node import StateLost, save_state, saved_state
    node = SimpleNamespace(cid="1", conf={"run-key": "abc"})
    for r in (1, 2, 3):
        save_state(node, r, f"state after round {r}".encode())
    node.conf["state-round"] = 2  # round 3 was trained, but its reply never reached the server
    assert saved_state(node, {"state": b"context, round 3", "state-round": 3}, before=4) == b"state after round 2"
    assert saved_state(node, {"state": b"context, round 2", "state-round": 2}, before=4) == b"context, round 2"
    assert saved_state(node, {"state": None}, before=4) == b"state after round 2"  # restarted: empty context
    node.conf["state-round"] = 0
    assert saved_state(node, {"state": b"x", "state-round": 3}, before=4) is None  # never trained: a fresh state
    node.conf["state-round"] = 7
    with pytest.raises(StateLost, match="site 1: its state after round 7"):
        saved_state(node, {"state": None}, before=8)
    del node.conf["state-round"]  # a server without state-round: the newest state before the round
    assert saved_state(node, {"state": None}, before=3) == b"state after round 2"
