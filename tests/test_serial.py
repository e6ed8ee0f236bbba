"""fedsynth.serial: exact round trips of nested tensor structures, and refusal -- without running
anything -- of whatever is not its format (pickles, torch.save archives, corrupt bytes)."""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest
import torch

from fedsynth import serial
from fedsynth.serial import UnsafeOrCorrupt, from_bytes, load_file, pack, save_file, to_bytes, unpack


# ------------------------------------------------------------------------------ helpers


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a, b, path="obj"):
    """Exact equality: same types (tuple stays tuple), dict key order and key types, tensors
    bit-identical with dtype and shape, floats identical (nan == nan, -0.0 != 0.0)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert _bits(a) == _bits(b), path
        return
    if isinstance(a, np.ndarray):
        assert type(b) is np.ndarray, path
        assert a.dtype.newbyteorder("=") == b.dtype and a.shape == b.shape, path
        assert np.ascontiguousarray(a.astype(b.dtype)).tobytes() == b.tobytes(), path
        return
    assert type(a) is type(b) or (isinstance(a, dict) and type(b) is dict), (path, type(a), type(b))
    if isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


def roundtrip(obj):
    """Through pack/unpack, through JSON + bytes, and through a file; all must agree."""
    tensors, skel = pack(obj)
    assert_same(obj, unpack(tensors, json.loads(json.dumps(skel, allow_nan=False))))
    out = from_bytes(to_bytes(obj), "test")
    assert_same(obj, out)
    return out


class Marker:
    """Unpickling this calls ``Path(path).write_text("pwned")``: a stand-in for any command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.path), "pwned"))


# --------------------------------------------------------------------------- round trips


def test_plain_values_and_containers():
    obj = {"none": None, "t": True, "f": False, "i": 0, "neg": -7, "big": 2 ** 100,
           "x": 1.5, "one": 1.0, "negzero": -0.0, "nan": float("nan"), "inf": float("inf"),
           "ninf": float("-inf"), "tiny": 5e-324, "s": "héllo \u2603 \"quoted\"", "empty_s": "",
           "l": [1, [2, [3]]], "tup": (1, (2.0, "x"), ()), "empty_d": {}, "empty_l": [],
           3: "int key", -1: {"nested": (None,)}, "3": "str key beside int key 3"}
    out = roundtrip(obj)
    assert list(out) == list(obj)
    assert out[3] == "int key" and out["3"] == "str key beside int key 3"
    for top in ({}, [], (), None, 1, "x", float("nan")):
        roundtrip(top)


def test_tensors_bit_identical():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    nan_t = torch.tensor([float("nan"), float("inf"), -0.0, 1.0])
    obj = {
        "scalar": torch.tensor(3.25), "scalar_int": torch.tensor(7), "empty": torch.empty(0),
        "empty2d": torch.empty(0, 5, dtype=torch.int32), "int64": torch.arange(10) * (2 ** 40),
        "bool": torch.rand(7, generator=g) > 0.5, "bf16": torch.randn(3, 5, generator=g).bfloat16(),
        "f16": torch.randn(8, generator=g).half(), "f64": torch.randn(2, 2, dtype=torch.float64, generator=g),
        "u8": torch.randint(0, 255, (2, 3, 4), dtype=torch.uint8, generator=g),
        "transposed": base.t(), "strided": base[:, ::2], "nan": nan_t,
        "channels_last": torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last),
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "grad": torch.randn(3, generator=g, requires_grad=True) * 2,
    }
    out = roundtrip(obj)
    assert out["transposed"].is_contiguous()  # values kept, strides are the default ones
    assert out["param"].requires_grad is False and type(out["param"]) is torch.Tensor
    assert out["channels_last"].shape == (2, 3, 4, 5)
    out["f64"].add_(1)  # read tensors own writable memory


def test_views_sharing_memory_and_aliases():
    a = torch.arange(12.0).reshape(3, 4)
    obj = {"a": a, "row": a[1], "flat": a.view(-1), "again": a, "in_list": [a, a[2:]]}
    out = roundtrip(obj)
    assert out["a"] is out["again"] is out["in_list"][0]  # one tensor object stays one
    assert out["row"].data_ptr() != out["a"].data_ptr()


def test_model_state_dicts_nested():
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 8, 4), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    D = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LayerNorm([8, 2, 2]))
    obj = {"G": G.state_dict(), "D": D.state_dict(), "round": 3}
    assert isinstance(obj["G"], collections.OrderedDict)
    out = roundtrip(obj)
    G2 = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 8, 4), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    G2.load_state_dict(out["G"])
    assert_same(dict(G.state_dict()), dict(G2.state_dict()))


def test_scaffold_like_state():
    names = [f"G.main.{i}.weight" for i in range(4)]
    c = {k: torch.randn(3, 3) for k in names}
    obj = {"c": c, "clients": {"0": {"ci": {k: torch.zeros(3, 3) for k in names}},
                               "1": {"ci": {k: torch.ones(3, 3) for k in names}}},
           "m": {}, "v": None}
    roundtrip(obj)


def _adam(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-4)
    return model, opt


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 5, generator=g)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def test_adam_state_round_trips_and_loads():
    model, opt = _adam()
    for s in range(3):
        _step(model, opt, s)
    sd = opt.state_dict()
    assert all(isinstance(k, int) for k in sd["state"])
    assert isinstance(sd["param_groups"][0]["betas"], tuple)
    payload = to_bytes({"opt_state": {"G": sd}, "model": model.state_dict()})
    back = from_bytes(payload, "node state")
    assert_same(sd, back["opt_state"]["G"])
    assert list(back["opt_state"]["G"]["state"]) == list(sd["state"])  # int keys, in order

    model2, opt2 = _adam(seed=1)  # different initial weights, replaced below
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["opt_state"]["G"])
    _step(model, opt, 99)
    _step(model2, opt2, 99)
    assert_same(dict(model.state_dict()), dict(model2.state_dict()))
    assert_same(opt.state_dict(), opt2.state_dict())


def test_numpy_arrays_and_scalars():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro = np.arange(3, dtype=np.int64)
    ro.setflags(write=False)
    obj = {"a": a, "t": a.T, "i16": np.array([1, -2], dtype=np.int16), "b": np.array([True, False]),
           "zero_d": np.array(2.5), "ro": ro, "big_endian": np.array([1.0, 2.0], dtype=">f8")}
    out = from_bytes(to_bytes(obj), "test")
    for k, v in obj.items():
        assert type(out[k]) is np.ndarray and out[k].shape == v.shape and np.array_equal(out[k], v), k
        assert out[k].dtype == v.dtype.newbyteorder("="), k
    sc = from_bytes(to_bytes({"f": np.float32(0.1), "i": np.int64(5), "b": np.bool_(True)}))
    assert sc == {"f": float(np.float32(0.1)), "i": 5, "b": True}
    assert [type(v) for v in sc.values()] == [float, int, bool]


# ------------------------------------------------------------------------ refusing to pack


@pytest.mark.parametrize("bad, what", [
    (object(), "builtins.object"), (b"bytes", "bytes"), ({1, 2}, "set"), (bytearray(b"x"), "bytearray"),
    (np.array(["a"], dtype=object), "dtype object"), (np.array(["ab"]), "dtype <U2"),
    (collections.namedtuple("P", "x y")(1, 2), "namedtuple"), (1j, "complex"),
    (torch.zeros(2, dtype=torch.complex128), "complex128"), (torch.zeros(3).to_sparse(), "sparse"),
    (torch.empty(2, device="meta"), "meta"), (lambda: 0, "function"),
])
def test_refuses_other_types_naming_the_path(bad, what):
    obj = {"opt_state": {"G": {"state": {3: {"exp_avg": bad}}}}}
    with pytest.raises(TypeError) as e:
        pack(obj, root="state")
    assert "state.opt_state.G.state.3.exp_avg" in str(e.value)
    assert what in str(e.value)
    with pytest.raises(TypeError, match=r"state\.opt_state\.G\.state\.3\.exp_avg"):
        to_bytes(obj, root="state")


@pytest.mark.parametrize("key", [1.5, (1, 2), None, True, b"k", np.int64(1)])
def test_refuses_other_dict_keys(key):
    with pytest.raises(TypeError, match=r"x\.inner.*keys must be str or int"):
        pack({"inner": {key: 1}}, root="x")


def test_refuses_cycles_and_deep_nesting(tmp_path):
    a: list = [1]
    a.append({"self": a})
    with pytest.raises(TypeError, match="contains itself"):
        pack(a)
    deep: list = []
    for _ in range(serial.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="levels deep"):
        to_bytes(deep)
    with pytest.raises(TypeError):
        save_file({"x": object()}, tmp_path / "f.sts")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


# -------------------------------------------------------------------- refusing to unpack


def _refused(data, what="client 1: field 'extra'"):
    with pytest.raises(UnsafeOrCorrupt) as e:
        from_bytes(data, what)
    msg = str(e.value)
    assert msg.startswith(f"{what}: ") and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    return msg


def test_crafted_pickle_and_torch_save_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = {"extra": Marker(marker), "w": torch.ones(2)}
    raw = pickle.dumps(evil)
    buf = io.BytesIO()
    torch.save(evil, buf)
    ts = buf.getvalue()
    # the payloads are live: unpickling them does run the command
    pickle.loads(raw)
    assert marker.read_text() == "pwned"
    marker.unlink()
    torch.load(io.BytesIO(ts), weights_only=False)
    assert marker.exists()
    marker.unlink()

    assert "pickle" in _refused(raw)
    assert "zip" in _refused(ts)
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        _refused(pickle.dumps(evil, protocol=proto))
    (tmp_path / "evil.pkl").write_bytes(raw)
    (tmp_path / "evil.pt").write_bytes(ts)
    torch.save(evil, tmp_path / "evil-legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("evil.pkl", "evil.pt", "evil-legacy.pt"):
        with pytest.raises(UnsafeOrCorrupt, match=r"^config key 'fed\.init-from': "):
            load_file(tmp_path / name, "config key 'fed.init-from'")
        with pytest.raises(UnsafeOrCorrupt, match=name.replace(".", r"\.")):
            load_file(tmp_path / name)
    assert not marker.exists()


def test_refuses_corrupt_bytes():
    good = to_bytes({"w": torch.randn(16, 16), "n": 3, "t": (torch.arange(3),)})
    assert "empty" in _refused(b"")
    _refused(bytearray())
    _refused(memoryview(b"\x00" * 3))
    _refused("a string, not bytes")
    _refused(None)
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 100, 5000):
        _refused(rng.bytes(n))
    for cut in (1, 8, 20, len(good) // 2, len(good) - 1):
        _refused(good[:cut])
    _refused(good + b"\x00")
    flipped = bytearray(good)
    flipped[12] ^= 0xFF  # inside the JSON header
    _refused(bytes(flipped))
    assert from_bytes(bytearray(good))["n"] == 3 and from_bytes(memoryview(good))["n"] == 3


def _rebuild(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def test_refuses_headers_lying_about_sizes():
    good = to_bytes({"a": torch.randn(4, 4), "b": torch.arange(5)})
    header, body = _split(good)
    big = struct.pack("<Q", 2 ** 60) + good[8:]
    assert "header length" in _refused(big)

    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return _rebuild(h, body)

    assert "bytes for shape" in _refused(edit(lambda h: h["0"].update(shape=[4, 5])))
    assert "outside" in _refused(edit(lambda h: h["0"].update(data_offsets=[0, 10 ** 9])))
    assert "overlap" in _refused(edit(lambda h: h["1"].update(h["0"])))  # both on the same bytes
    _refused(edit(lambda h: h["0"].update(dtype="F64")))
    _refused(edit(lambda h: h["0"].update(dtype="OBJECT")))
    _refused(edit(lambda h: h["0"].update(dtype=["F32"])))
    _refused(edit(lambda h: h["0"].update(shape=[-1, 16])))
    _refused(edit(lambda h: h["0"].update(shape="4,4")))
    _refused(edit(lambda h: h["0"].pop("data_offsets")))
    _refused(edit(lambda h: h.pop("1")))  # its bytes are left over
    _refused(_rebuild(header, body[:-4]))
    assert "format tag" in _refused(edit(lambda h: h.pop("__metadata__")))
    assert "version" in _refused(edit(lambda h: h["__metadata__"].update(version="99")))


def _payload(skeleton_json: str, tensors: dict | None = None, version: str = "1") -> bytes:
    """A payload as a forger would write it: any skeleton, valid checksums (the CRCs catch
    accidents, not forgers; the structural checks must hold on their own)."""
    tensors = tensors or {}
    entries = {k: (serial._torch_dtype_names()[t.dtype], list(t.shape), t.reshape(-1).view(torch.uint8).numpy())
               for k, t in tensors.items()}
    header = {"__metadata__": {**serial._metadata(skeleton_json, entries), "version": version}}
    pos, body = 0, b""
    for k, (dtype, shape, data) in entries.items():
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + data.nbytes]}
        pos += data.nbytes
        body += data.tobytes()
    return _rebuild(header, body)


@pytest.mark.parametrize("skeleton, why", [
    ('{"tensor": "7"}', "does not hold"),
    ('{"dict": [["a", {"tensor": "0"}], ["b", {"tensor": "1"}]]}', "does not hold"),
    ('{"tensor": 0}', "does not hold"),
    ('{"dict": "x"}', "malformed dict"),
    ('{"dict": [["a", 1, 2]]}', "malformed dict entry"),
    ('{"dict": [[1.5, 1]]}', "malformed dict entry"),
    ('{"dict": [[true, 1]]}', "malformed dict entry"),
    ('{"dict": [["a", 1], ["a", 2]]}', "duplicate key"),
    ('{"tuple": 3}', "malformed tuple"),
    ('{"float": "1e3"}', "bad float"),
    ('{"object": "os.system"}', "unknown node type"),
    ('{"tensor": "0", "extra": 1}', "malformed node"),
    ('{"a": 1}', "unknown node type"),
    ('[NaN]', "not valid JSON"),
    ('[Infinity]', "not valid JSON"),
    ('{"dict": [', "not valid JSON"),
    ('[' * 100_000 + ']' * 100_000, "deep"),
    ('[]', "does not use"),  # the payload's tensor "0" is unused
])
def test_refuses_bad_skeletons(skeleton, why):
    tensors = {"0": torch.ones(2)} if "tensor" in skeleton or skeleton == "[]" else None
    msg = _refused(_payload(skeleton, tensors))
    assert why in msg


def test_refuses_bad_skeleton_through_unpack():
    t, skel = pack({"a": torch.ones(1)})
    with pytest.raises(UnsafeOrCorrupt, match="does not hold"):
        unpack({}, skel)
    with pytest.raises(UnsafeOrCorrupt, match="version"):
        unpack(t, {**skel, "version": "0"})
    with pytest.raises(UnsafeOrCorrupt):
        unpack(t, {"tree": skel["tree"]})
    import safetensors.torch
    other = safetensors.torch.save({"w": torch.ones(2)})  # plain safetensors, no fedsynth tag
    assert "format tag" in _refused(other)
    bf = _payload('{"ndarray": "0"}', {"0": torch.ones(2, dtype=torch.bfloat16)})
    assert "numpy" in _refused(bf)


# ------------------------------------------------------------------------------- files


def test_save_file_load_file(tmp_path):
    p = tmp_path / "sub" / "state.sts"
    obj = {"round": 2, "w": torch.randn(3, 3), "opt": {0: {"step": torch.tensor(3.0)}}}
    save_file(obj, p)
    assert_same(obj, load_file(p))
    save_file({"round": 3}, p)  # replaces atomically
    assert load_file(p, "node state") == {"round": 3}
    assert [x.name for x in p.parent.iterdir()] == ["state.sts"]  # no temp files left
    assert (os.stat(p).st_mode & 0o777) == 0o666 & ~_umask()
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.sts")


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_payload_that_starts_like_a_pickle_is_read():
    """A header length of 128 + 256 k makes a valid payload start with the pickle opcode 0x80."""
    hits = 0
    for k in range(0, 600):
        obj = {"s": "x" * k, "w": torch.ones(2)}
        data = to_bytes(obj)
        if data[0] == 0x80 and data[1] <= 5:
            hits += 1
            assert from_bytes(data)["s"] == obj["s"]
    assert hits


def test_is_standard_safetensors():
    """Any safetensors reader reads the tensors; what safetensors writes with fedsynth's
    metadata reads back here."""
    st = pytest.importorskip("safetensors.torch")
    obj = {"w": torch.randn(3, 4), "b": torch.ones(2, dtype=torch.bool), "h": torch.randn(5).bfloat16(),
           "c": torch.randn(2, dtype=torch.complex64), "e": torch.empty(0, 2), "s": torch.tensor(7)}
    data = to_bytes(obj)
    tensors, skel = pack(obj)
    got = st.load(data)
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        assert_same(t, got[k])
    meta = serial._metadata(json.dumps(skel["tree"]), {
        k: (serial._torch_dtype_names()[t.dtype], list(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy())
        for k, t in tensors.items()})
    assert_same(obj, from_bytes(st.save(tensors, metadata=meta)))


def test_checksums_catch_flipped_bits():
    obj = {"w": torch.randn(8, 8), "n": [1, 2, 3], "name": "site-a"}
    good = to_bytes(obj)
    header, body = _split(good)
    start = len(good) - len(body)
    for pos in (start, start + 17, len(good) - 1):  # in the tensor bytes
        bad = bytearray(good)
        bad[pos] ^= 0x04
        assert "checksum mismatch (corrupt data)" in _refused(bytes(bad))
    i = good.index(b"site-a")  # in the skeleton, still valid JSON
    bad = good[:i] + b"site-b" + good[i + 6:]
    assert "checksum mismatch (corrupt header)" in _refused(bad)
    h = json.loads(json.dumps(header))
    h["0"]["shape"] = [4, 16]  # same byte count, other shape
    assert "checksum" in _refused(_rebuild(h, body))
    h = json.loads(json.dumps(header))
    del h["__metadata__"]["tensor-crc32"]
    assert "checksums" in _refused(_rebuild(h, body))


def test_byte_swapping_for_big_endian_machines():
    """Payloads are little-endian; a big-endian machine swaps each word (a complex64 as two
    float32s). Checked here by its effect on known bytes."""
    w = np.array([1], dtype=np.int32).view(np.uint8)
    assert bytes(serial._swapped(w, 4)) == bytes(reversed(bytes(w)))
    c = np.array([1 + 2j], dtype=np.complex64)
    assert serial._swap_unit("C64") == 4 and serial._swap_unit("BF16") == 2
    flat = c.view(np.uint8)
    twice = serial._swapped(serial._swapped(flat, 4), 4)
    assert np.array_equal(twice, flat)
    words = serial._swapped(flat, 4).reshape(2, 4)
    assert bytes(words[0]) == bytes(reversed(bytes(np.array([1.0], dtype=np.float32).view(np.uint8))))


def test_random_mutations_are_refused_or_harmless():
    """Seeded fuzzing: a mutated payload is refused with UnsafeOrCorrupt or, where the change
    is meaningless (JSON whitespace), reads back as the original -- never anything else."""
    obj = {"w": torch.randn(3, 5), "ids": (1, 2), 7: {"x": float("nan"), "b": torch.tensor(True)}}
    good = to_bytes(obj)
    rng = np.random.default_rng(17)
    refused = 0
    for _ in range(400):
        bad = bytearray(good)
        for pos in rng.integers(0, len(good), size=int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            bad = bad[: int(rng.integers(0, len(bad)))]
        try:
            out = from_bytes(bytes(bad), "fuzz")
        except UnsafeOrCorrupt as e:
            assert str(e).startswith("fuzz: ") and "\n" not in str(e)
            refused += 1
        else:
            assert_same(obj, out)
    assert refused > 300


def test_unpack_from_separately_travelled_halves():
    """The Flower way: tensors as NumPy arrays (ArrayRecord), the skeleton as JSON text."""
    model, opt = _adam()
    _step(model, opt, 0)
    obj = {"opt": opt.state_dict(), "arr": np.arange(4.0), "w": model.state_dict()}
    tensors, skel = pack(obj)
    arrays = {k: t.detach().numpy() for k, t in tensors.items()}
    out = unpack(arrays, json.dumps(skel), "client 3: field 'extra'")
    assert_same(obj, out)
    assert type(out["arr"]) is np.ndarray
    what = "client 3: field 'extra'"
    for bad_tensors, bad_skel, why in [
        ({**arrays, "0": "not an array"}, json.dumps(skel), "not a tensor"),
        ({**arrays, "0": np.array(["x"], dtype=object)}, json.dumps(skel), "not a tensor dtype"),
        (arrays, json.dumps(skel)[:-3], "not valid JSON"),
        (arrays, '{"format": "fedsynth-serial", "version": "1", "tree": [NaN]}', "not valid JSON"),
        (list(arrays.values()), skel, "must be a dict"),
        (arrays, {**skel, "tree": {"tensor": "999"}}, "does not hold"),
        (arrays, "[" * 50_000 + "]" * 50_000, "deep"),
    ]:
        with pytest.raises(UnsafeOrCorrupt) as e:
            unpack(bad_tensors, bad_skel, what)
        assert str(e.value).startswith(f"{what}: ") and why in str(e.value), str(e.value)
