"""Named tensors in Flower ``ArrayRecord``s: one :mod:`fedsynth.serial` payload, carried as a
single ``uint8`` Array, instead of one ``Array`` per tensor.

One format: the payload is the one fedsynth writes for node state, the warm worker's socket
and the strategy tensors of a secure round -- a safetensors payload whose JSON skeleton names
each tensor, with a CRC-32 per tensor -- so a message from the network is checked by the same
reader (:func:`fedsynth.serial.from_bytes`) as every other input, and never unpickled.

One object per record: Flower 1.42 stores and moves every ``Array`` of a message as an object
of its own (the sender pushes and the receiver pulls each one in a separate request, at most two
at a time: ``FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES``/``PULLS``). A diffusion UNet and its EMA
are 285 tensors, a ResNet-50 discriminator over 300: one Array per tensor cost hundreds of round
trips through the SuperLink however small the tensors. As one payload a state dict is one
object (split by Flower into 5 MB chunks like any large array). The values are the same bytes,
bit for bit. Written and read with NumPy alone: the ClientApp process never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from ...serial import from_bytes, to_bytes

PAYLOAD = "__fedsynth-serial__"


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` (name -> array, in order) as an ArrayRecord holding one serial payload.
    ``TypeError`` names a tensor of a dtype the format does not carry."""
    data = to_bytes({str(k): np.asarray(v) for k, v in arrays.items()}, root="tensors")
    return ArrayRecord(array_dict={PAYLOAD: Array(np.frombuffer(data, dtype=np.uint8))})


def is_packed(rec: ArrayRecord) -> bool:
    """Whether ``rec`` is fedsynth's own (:func:`to_record`), not a plain Flower sender's."""
    return PAYLOAD in rec


def from_record(rec: ArrayRecord, what: str = "the message's tensors") -> dict[str, np.ndarray]:
    """The named arrays of ``rec`` (written by :func:`to_record`, or one Array per tensor as a
    plain Flower sender writes them). Anything else raises ``ValueError`` (a
    :class:`fedsynth.serial.UnsafeOrCorrupt`) naming ``what`` and what is wrong."""
    if not is_packed(rec):
        return {k: a.numpy() for k, a in rec.items()}
    if len(rec) != 1:
        raise ValueError(f"{what}: a fedsynth payload beside {len(rec) - 1} other array(s)")
    raw = rec[PAYLOAD].numpy()
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{what}: the payload is a {raw.dtype} array of shape {raw.shape}, not bytes")
    return named_arrays(raw.tobytes(), what)


def named_arrays(data: bytes, what: str) -> dict[str, np.ndarray]:
    """The ``{name: array}`` a :mod:`fedsynth.serial` payload holds (a record's, or a secure
    round's strategy tensors); anything else raises ``ValueError`` naming ``what``."""
    out = from_bytes(data, what)
    if not (isinstance(out, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in out.items())):
        raise ValueError(f"{what}: not a dict of named arrays")
    return out
