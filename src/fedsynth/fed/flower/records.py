"""Named tensors in Flower ``ArrayRecord``s, packed: one flat ``Array`` per dtype plus a JSON
layout, instead of one ``Array`` per tensor.

Flower 1.42 stores and moves every ``Array`` of a message as an object of its own: the sender
pushes and the receiver pulls each one in a separate request, at most two at a time
(``FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES``/``PULLS``). A diffusion UNet and its EMA are 285
tensors, a ResNet-50 discriminator over 300, so a message cost hundreds of round trips through
the SuperLink however small its tensors. Packed, a state dict is a handful of objects (one per
dtype, split by Flower into 5 MB chunks like any large array). The values are the same bytes,
bit for bit; the layout is JSON (``[name, dtype, shape]`` in order), stored as a ``uint8`` array
in the same record, and checked on arrival like any input from the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

LAYOUT = "__fedsynth-layout__"
#: dtypes a packed record may carry (everything a fedsynth state dict holds)
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                    "uint8", "bool"})


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` (name -> array, in order) as a packed ArrayRecord."""
    layout, groups = [], {}
    for name, a in arrays.items():
        a = np.asarray(a)
        dt = str(a.dtype)
        if dt not in DTYPES:
            raise TypeError(f"tensor '{name}' has dtype {dt}, which a Flower message does not carry")
        layout.append([name, dt, list(a.shape)])
        groups.setdefault(dt, []).append(a.reshape(-1))
    flat = {dt: np.concatenate(parts) for dt, parts in groups.items()}
    flat[LAYOUT] = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in flat.items()})


def is_packed(rec: ArrayRecord) -> bool:
    return LAYOUT in rec


def from_record(rec: ArrayRecord) -> dict[str, np.ndarray]:
    """The named arrays of ``rec`` (packed by :func:`to_record`, or one Array per tensor as a
    plain Flower sender writes them). A malformed layout raises ``ValueError`` naming what is wrong."""
    if not is_packed(rec):
        return {k: a.numpy() for k, a in rec.items()}
    try:
        layout = json.loads(bytes(rec[LAYOUT].numpy()).decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"the packed tensors' layout is not JSON: {e}") from None
    if not isinstance(layout, list):
        raise ValueError("the packed tensors' layout is not a list")
    flat = {k: a.numpy() for k, a in rec.items() if k != LAYOUT}
    offset = dict.fromkeys(flat, 0)
    out: dict[str, np.ndarray] = {}
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[1] in DTYPES
                and isinstance(entry[2], list) and all(isinstance(d, int) and d >= 0 for d in entry[2])):
            raise ValueError(f"bad entry in the packed tensors' layout: {str(entry)[:120]}")
        name, dt, shape = entry
        if dt not in flat or str(flat[dt].dtype) != dt:
            raise ValueError(f"tensor '{name}': no packed {dt} array")
        n = int(np.prod(shape, dtype=np.int64))
        start = offset[dt]
        if start + n > flat[dt].size:
            raise ValueError(f"tensor '{name}': the packed {dt} array is too short")
        out[name] = flat[dt][start:start + n].reshape(shape).copy()
        offset[dt] = start + n
    short = [dt for dt, a in flat.items() if offset[dt] != a.size]
    if short:
        raise ValueError(f"the packed {', '.join(short)} array(s) hold more values than the layout names")
    return out
