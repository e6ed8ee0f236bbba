"""Nothing that crosses a trust boundary is unpickled (issue: trust boundaries).

Each test plants a crafted pickle -- an object whose unpickling would write a marker file -- in a
field that used to be unpickled, or in a file a user might download, and checks that nothing
ran, that the payload is refused with a clear message naming the field (or file), and that the
work goes on where it should (the server rejects that client for the round).
"""

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from fedsynth.config import UserError


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled(marker) -> bytes:
    return pickle.dumps({"payload": Exploit(marker)})


def _torch_saved(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "fedsynth-checkpoint/1", "global": Exploit(marker)}, buf)
    return buf.getvalue()


def test_the_payloads_do_run_code_when_unpickled(tmp_path):
    """The control: these bytes really are dangerous."""
    pickle.loads(_pickled(tmp_path / "a"))
    assert (tmp_path / "a").exists()


# ---------------------------------------------------------------- node -> server (the server side)

flwr = pytest.importorskip("flwr")


def _reply(tmp_path, **fields):
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    meta = {"client-id": "1", "timing": json.dumps({"round": 1, "client": "1"}), "dropped": False,
            "records": json.dumps([{"round": 1, "client": "1", "metric": "d-loss", "value": 0.5}])}
    content = {"meta": meta, "arrays": ArrayRecord({"G.w": torch.zeros(2)}), "extra": ArrayRecord({}),
               "metrics": MetricRecord({"num-examples": 4, "steps": 1, "d-loss": 0.5})}
    for k, v in fields.items():
        if k in ("records", "timing", "dropped", "extra-meta"):
            meta["extra" if k == "extra-meta" else k] = v
        elif v is None:
            content.pop(k)
        else:
            content[k] = v
    return RecordDict({**{k: v for k, v in content.items() if k != "meta"}, "meta": ConfigRecord(meta)})


def test_a_valid_reply_parses(tmp_path):
    from fedsynth.fed.flower.server_app import parse_train_reply
    recs, timing, up = parse_train_reply(_reply(tmp_path), "1")
    assert up.num_examples == 4 and up.metrics == {"d-loss": 0.5} and torch.equal(up.weights["G.w"], torch.zeros(2))
    assert recs[0]["metric"] == "d-loss"


@pytest.mark.parametrize("field", ["extra-meta", "records", "timing", "extra", "metrics"])
def test_a_crafted_reply_is_rejected_and_nothing_runs(tmp_path, field):
    """meta["extra"] (unpickled by earlier versions), records, timing: pickle bytes; extra /
    metrics: a config record of pickle bytes instead of the expected record."""
    from flwr.app import ConfigRecord

    from fedsynth.fed.flower.server_app import parse_train_reply
    bad = _pickled(tmp_path / "marker")
    if field in ("extra", "metrics"):
        rep = _reply(tmp_path, **{field: ConfigRecord({"x": bad})})
    elif field == "extra-meta":
        rep = _reply(tmp_path, **{"extra-meta": bad, "extra": None})  # the old field, and no ArrayRecord
    else:
        rep = _reply(tmp_path, **{field: bad})
    with pytest.raises((ValueError, KeyError, TypeError)) as e:
        parse_train_reply(rep, "1")
    assert not (tmp_path / "marker").exists()
    assert field.split("-")[0] in str(e.value) or isinstance(e.value, (UnicodeDecodeError, json.JSONDecodeError))


# ---------------------------------------------------------------- server -> node (the node side)

def _node_request(tmp_path, sites, **over):
    from fedsynth.config import build_config
    from fedsynth.fed.strategies import strategy_from_config
    from fedsynth.models import build_model
    from fedsynth.serial import pack
    cfg = build_config(overrides=["data.image-size=16", "model.nz=8", "model.ngf=8", "model.ndf=8",
                                  "train.batch-size=8", "eval.enabled=false", "fed.strategy=scaffold",
                                  "fed.local-steps=1"])
    model = build_model(cfg, 16, 1, 2)
    s = strategy_from_config(cfg.fed, cfg.privacy)
    s.setup(model.state(), model.parameter_keys(), 2)
    tensors, skeleton = pack(s.state_dict())
    req = {"config": {"fedsynth-config": cfg.to_toml(), "round": 1, "num-classes": 2, "num-clients": 2,
                      "run-key": "", "eval-global": -1, "eval-local": False, "strategy": json.dumps(skeleton)},
           "node_config": {"data-path": str(sites), "client-id": "0"},
           "arrays": {k: v.numpy() for k, v in model.state().items()},
           "strategy": {k: v.numpy() for k, v in tensors.items()}, "state": None}
    req.update(over)
    return req


@pytest.fixture
def site(tmp_path):
    from fedsynth.data import make_phantom
    from fedsynth.utils import save_png
    d = tmp_path / "site" / "a"
    d.mkdir(parents=True)
    for i, img in enumerate(make_phantom("phantom-xray", 12, 16, 0).images):
        save_png(img, d / f"{i}.png")
    return tmp_path / "site"


def test_the_node_trains_from_a_valid_request(tmp_path, site):
    from fedsynth.fed.flower.node import handle
    res = handle("train", _node_request(tmp_path, site))
    assert "error" not in res["meta"] and set(res["arrays"]) and res["state"]


@pytest.mark.parametrize("field", ["state", "strategy"])
def test_a_crafted_message_to_a_node_is_refused_and_nothing_runs(tmp_path, site, field):
    from fedsynth.fed.flower.node import handle
    bad = _pickled(tmp_path / "marker")
    over = {"state": bad} if field == "state" else {"strategy": {"c": np.frombuffer(bad, np.uint8)}}
    res = handle("train", _node_request(tmp_path, site, **over))
    assert not (tmp_path / "marker").exists()
    assert "error" in res["meta"] and ("node state" if field == "state" else "'strategy'") in res["meta"]["error"]


def test_the_warm_workers_socket_refuses_a_pickle(tmp_path):
    from fedsynth.fed.flower.worker import decode, encode
    msg = ["train", {"config": {"round": 1}, "arrays": {"w": np.arange(3.0)}, "state": b"\x00\x01"}]
    back = decode(encode(msg))
    assert back[0] == "train" and np.array_equal(back[1]["arrays"]["w"], np.arange(3.0)) and back[1]["state"] == b"\x00\x01"
    with pytest.raises(ValueError):
        decode(_pickled(tmp_path / "marker"))
    buf = io.BytesIO()
    np.save(buf, np.array([Exploit(tmp_path / "marker")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode(buf.getvalue())
    assert not (tmp_path / "marker").exists()


def test_the_warm_workers_socket_speaks_the_serial_format_without_torch():
    """The worker's messages are fedsynth.serial payloads: the ClientApp process relays them
    with NumPy alone (never importing torch), and a payload whose list of bytes places lies is refused."""
    import subprocess
    import sys

    from fedsynth.fed.flower.worker import decode
    from fedsynth.serial import from_bytes, to_bytes
    code = ("import sys, numpy as np\n"
            "from fedsynth.fed.flower import client_app\n"
            "from fedsynth.fed.flower.worker import decode, encode\n"
            "msg = ['ok', {'meta': {'client-id': '1'}, 'arrays': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)},\n"
            "              'state': b'\\x00state', 'nested': [{'s': b''}]}]\n"
            "data = encode(msg)\n"
            "back = decode(data)\n"
            "assert back[1]['state'] == b'\\x00state' and back[1]['nested'][0]['s'] == b''\n"
            "assert np.array_equal(back[1]['arrays']['w'], msg[1]['arrays']['w'])\n"
            "sys.stdout.buffer.write(data)\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert from_bytes(run.stdout)["bytes-at"] == [[1, "state"], [1, "nested", 0, "s"]]   # a serial payload
    blob = np.frombuffer(b"x", np.uint8)
    for bad in ({"message": {"state": 3}, "bytes-at": [["state"]]},            # not a uint8 array
                {"message": {}, "bytes-at": [["gone"]]},                       # nothing there
                {"message": {"s": blob}},                                      # no list of places
                {"message": [blob], "bytes-at": [[]]}):                        # an empty place
        with pytest.raises(ValueError, match="worker message"):
            decode(to_bytes(bad))


# ---------------------------------------------------------------- files a user may have downloaded

def test_a_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path):
    from fedsynth.checkpoint import load_checkpoint
    p = tmp_path / "round-0001.pt"
    p.write_bytes(_torch_saved(tmp_path / "marker"))
    with pytest.raises(UserError, match="could run code"):
        load_checkpoint(p)
    assert not (tmp_path / "marker").exists()


def test_a_crafted_init_from_file_is_refused_and_nothing_runs(tmp_path, tiny):
    from fedsynth.config import build_config
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    p = tmp_path / "pretrained.pt"
    p.write_bytes(_torch_saved(tmp_path / "marker"))
    cfg = build_config(overrides=tiny + [f'fed.init-from="{p}"'])
    with pytest.raises(UserError, match="fed.init-from.*could run code"):
        build_in_process(cfg, partition_for(cfg, load_dataset(cfg)))
    assert not (tmp_path / "marker").exists()
