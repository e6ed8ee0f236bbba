"""Tensors in Flower ArrayRecords as one fedsynth.serial payload (one uint8 Array): the same
bytes back, every dtype and shape a state dict holds, and a malformed payload from the network
refused with an error that says what is wrong."""

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord  # noqa: E402

from fedsynth.fed.flower.records import PAYLOAD, from_record, is_packed, to_record  # noqa: E402
from fedsynth.serial import to_bytes  # noqa: E402


def _state():
    g = np.random.default_rng(0)
    return {"G.w": g.normal(size=(4, 3, 2, 2)).astype(np.float32), "G.steps": np.array(7, dtype=np.int64),
            "D.b": g.normal(size=5).astype(np.float32), "D.bn.n": np.array(3, dtype=np.int64),
            "G.empty": np.zeros((0, 3), np.float32), "G.half": g.normal(size=(2, 2)).astype(np.float16),
            "G.mask": np.array([True, False])}


def test_round_trip_is_bit_exact_in_order_in_one_array():
    state = _state()
    rec = to_record(state)
    assert is_packed(rec) and list(rec.keys()) == [PAYLOAD]  # one Flower object, whatever the tensors
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


def _record(payload):
    return ArrayRecord(array_dict={PAYLOAD: Array(np.frombuffer(payload, dtype=np.uint8).copy())})


@pytest.mark.parametrize("payload, message", [
    (b"not a payload", "not a fedsynth-serial payload"),
    (to_bytes({"a": np.arange(4, dtype=np.float32)})[:-3], "truncated"),
    (to_bytes([np.arange(4.0)]), "not a dict of named arrays"),
    (to_bytes({"a": 3}), "not a dict of named arrays"),
    (to_bytes({"a": {"b": np.arange(2.0)}}), "not a dict of named arrays"),
])
def test_a_malformed_payload_is_refused_naming_the_problem(payload, message):
    with pytest.raises(ValueError, match=message) as e:
        from_record(_record(payload), "client 2: field 'arrays'")
    assert str(e.value).startswith("client 2: field 'arrays': ")


def test_a_payload_beside_other_arrays_or_not_bytes_is_refused():
    rec = to_record({"a": np.arange(4, dtype=np.float32)})
    rec["extra"] = Array(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="beside 1 other"):
        from_record(rec)
    with pytest.raises(ValueError, match="not bytes"):
        from_record(ArrayRecord(array_dict={PAYLOAD: Array(np.zeros(4, np.float32))}))


def test_an_unsupported_dtype_is_refused_when_packing():
    with pytest.raises(TypeError, match="complex128"):
        to_record({"z": np.zeros(2, np.complex128)})


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
