"""Safe serialisation of nested structures of tensors: the format for everything that crosses a
trust boundary (messages between server and hospital nodes, the warm worker's socket, files a
user may have downloaded).

Why
---
``pickle`` -- and ``torch.load`` with weights_only off, which is pickle -- runs code chosen by
whoever wrote the bytes. A registered but malicious hospital, a compromised server or a
checkpoint downloaded from the internet could run any command on the reader's machine. Nothing
received from a message, a socket or a user's file may therefore be unpickled (see the
architecture's invariants). This module is the replacement: reading its format only ever builds
dicts, lists, tuples, strings, numbers, ``None``, tensors and NumPy arrays.

What can be stored
------------------
A nested structure of ``dict`` (keys ``str`` or ``int``; key order kept; ``OrderedDict`` and
other ``dict`` subclasses come back as plain ``dict``), ``list``, ``tuple`` (comes back as a
tuple), ``str``, ``int`` (any size), ``float`` (``nan``, ``inf`` and ``-0.0`` included),
``bool``, ``None``, ``torch.Tensor`` and ``numpy.ndarray`` (comes back as an ndarray of the same
dtype and shape). NumPy scalars (``np.float32(1)``, ``np.int64(3)``, ``np.bool_``) are stored as
the Python number they equal and come back as ``float``/``int``/``bool``. Anything else -- a
custom object, ``bytes``, a ``set``, a key that is neither ``str`` nor ``int`` -- is refused
with a ``TypeError`` naming the path of the offending item (``state.opt_state.G.state.3``).

Tensors come back on the CPU, bit-identical in dtype, shape and values, detached
(``requires_grad=False``; an ``nn.Parameter`` comes back as a plain tensor) and contiguous (a
``channels_last`` or otherwise strided input comes back with the default strides). A tensor
object that appears twice in the structure is stored once and comes back as one object in both
places. Sparse, quantised and meta tensors, and dtypes safetensors lacks (``complex128``), are
refused.

The format
----------
``pack`` splits a structure into a flat ``{name: tensor}`` dict and a JSON-able *skeleton* that
refers to the tensors by name::

    null | true | false | <int> | <finite float> | "<str>" | [node, ...]
    {"tuple": [node, ...]}                   a tuple
    {"dict": [[key, node], ...]}             a dict; key is a JSON string or integer
    {"tensor": "<name>"}                     a torch.Tensor
    {"ndarray": "<name>"}                    a numpy.ndarray (stored as a tensor)
    {"float": "nan" | "inf" | "-inf"}        the non-finite floats

``to_bytes`` writes one safetensors payload (https://github.com/huggingface/safetensors: an
8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and byte
range, then the raw little-endian tensor bytes) whose header ``__metadata__`` holds::

    {"format": "fedsynth-serial", "version": "1", "skeleton": "<JSON>",
     "skeleton-crc32": "<hex>", "tensor-crc32": "<JSON: {name: hex}>"}

The CRC-32s (of the skeleton, and of each tensor's dtype, shape and bytes) make a bit flipped
on disk or in transit a refusal rather than silently different weights. The same bytes serve
files (``save_file``/``load_file``) and sockets; any safetensors tool can inspect them. Both
directions are plain Python here -- the ``safetensors`` package is not needed (its reader reads
these payloads, and what its writer writes with this metadata reads back). torch is imported
only when a payload holds tensors (or a dtype only torch has, bfloat16 and float8): a structure
of NumPy arrays and plain values is written and read with NumPy alone, which keeps the Flower
ClientApp process that relays messages to a node's warm worker free of torch.

Where it is used: Flower messages' tensors (:mod:`fedsynth.fed.flower.records`), the
strategy's state, a node's state on disk and in Flower's context, the warm worker's socket
(:mod:`fedsynth.fed.flower.worker`) and a secure round's strategy tensors.

``from_bytes`` checks the header (format tag, version, every tensor's dtype, shape and byte
range, the ranges tiling the data exactly), the checksums, copies each tensor's bytes into a
tensor of its own, then checks the skeleton's grammar and that it refers to exactly the stored
tensors. Anything else -- a pickle, a ``torch.save`` archive, empty, truncated or corrupt
bytes, a header lying about sizes -- raises :class:`UnsafeOrCorrupt`, one line naming what was
being read and why it was refused. Nothing in a payload is ever executed or imported.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "VERSION", "UnsafeOrCorrupt", "pack", "unpack", "to_bytes", "from_bytes",
           "save_file", "load_file"]

FORMAT = "fedsynth-serial"
VERSION = "1"
MAX_DEPTH = 64                   # nesting levels of containers
MAX_HEADER = 100 * 1024 * 1024   # bytes of safetensors JSON header (safetensors' own limit)

# safetensors dtype names -> (the torch dtype's name, the NumPy dtype or None, bytes per element).
# torch is imported only when a tensor is met or asked for: a payload of NumPy arrays and plain
# values is written and read with NumPy alone (the warm worker's relay never imports torch).
_DTYPES: dict[str, tuple[str, str | None, int]] = {
    "BOOL": ("bool", "bool", 1), "U8": ("uint8", "uint8", 1), "I8": ("int8", "int8", 1),
    "I16": ("int16", "int16", 2), "I32": ("int32", "int32", 4), "I64": ("int64", "int64", 8),
    "U16": ("uint16", "uint16", 2), "U32": ("uint32", "uint32", 4), "U64": ("uint64", "uint64", 8),
    "F16": ("float16", "float16", 2), "BF16": ("bfloat16", None, 2), "F32": ("float32", "float32", 4),
    "F64": ("float64", "float64", 8), "C64": ("complex64", "complex64", 8),
    "F8_E4M3": ("float8_e4m3fn", None, 1), "F8_E5M2": ("float8_e5m2", None, 1),
}
_NUMPY_NAMES = {np.dtype(npt): name for name, (_, npt, _) in _DTYPES.items() if npt is not None}
_LITTLE = sys.byteorder == "little"   # payloads are little-endian, as safetensors specifies


def _torch() -> Any:
    """torch, imported on first need."""
    import torch
    return torch


def _loaded_tensor_type() -> Any:
    """``torch.Tensor`` if torch is imported, else None (then nothing can be a tensor)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


@functools.cache
def _torch_dtype_names() -> dict[Any, str]:
    """torch dtype -> safetensors name, for the dtypes this torch has."""
    torch = _torch()
    return {getattr(torch, t): name for name, (t, _, _) in _DTYPES.items() if hasattr(torch, t)}

_ALLOWED = ("dict (str/int keys), list, tuple, str, int, float, bool, None, torch.Tensor, "
            "numpy.ndarray")


class UnsafeOrCorrupt(ValueError):
    """Bytes or a file that are not a valid fedsynth-serial payload; refused without running
    anything. The message is one line: ``"<what>: <reason>"``."""


# ---------------------------------------------------------------------------------- pack


def _where(path: str) -> str:
    return path or "the top-level object"


def _join(path: str, part: Any) -> str:
    return f"{path}.{part}" if path else str(part)


def pack(obj: Any, *, root: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a nested structure into a flat dict of tensors and a JSON-able skeleton.

    Parameters
    ----------
    obj
        A nested structure of dict (``str``/``int`` keys), list, tuple, str, int, float, bool,
        None, ``torch.Tensor`` and ``numpy.ndarray`` (see the module docstring).
    root
        The name of ``obj`` in error messages: with ``root="state"`` a refused item is named
        ``state.opt_state.G.state.3.exp_avg``.

    Returns
    -------
    tensors : dict[str, torch.Tensor]
        The tensors (and NumPy arrays, as tensors sharing their memory) named ``"0"``, ``"1"``,
        ... in the order met. They are the caller's own tensors, not copies.
    skeleton : dict
        ``{"format": ..., "version": ..., "tree": node}``; ``json.dumps(skeleton,
        allow_nan=False)`` works.

    Raises
    ------
    TypeError
        For an item of any other type, a key that is neither ``str`` nor ``int``, a tensor
        that cannot be stored (sparse, quantised, meta, unsupported dtype), a NumPy array of a
        dtype torch lacks (object, strings, ...), a structure that contains itself, or one
        nested more than ``MAX_DEPTH`` levels. The message names the item's path.
    """
    tensors, skeleton = _pack(obj, root)
    torch = _torch() if any(isinstance(t, np.ndarray) for t in tensors.values()) else None
    return {k: torch.from_numpy(t) if isinstance(t, np.ndarray) else t for k, t in tensors.items()}, skeleton


def _pack(obj: Any, root: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`pack`, NumPy arrays kept as (C-contiguous, native-order) arrays: without torch
    when ``obj`` holds no tensor."""
    tensors: dict[str, Any] = {}
    tensor_type = _loaded_tensor_type()
    seen: dict[int, str] = {}      # id(tensor or array) -> name, so that aliasing is kept
    keep: list[Any] = []           # keep objects alive while their id() is in `seen`
    stack: set[int] = set()        # ids of the containers being walked (cycle detection)

    def refuse(path: str, why: str) -> TypeError:
        return TypeError(f"cannot serialise {_where(path)}: {why}")

    def tensor_name(x: Any, path: str, t: Any) -> str:
        if id(x) in seen:
            return seen[id(x)]
        if not isinstance(t, np.ndarray):
            torch = _torch()
            if t.layout != torch.strided or t.is_quantized or t.is_meta:
                raise refuse(path, f"a {t.layout} / quantised / meta tensor cannot be stored; "
                                   "make it a dense tensor first")
            if t.dtype not in _torch_dtype_names():
                raise refuse(path, f"tensor dtype {t.dtype} is not supported")
        name = str(len(tensors))
        tensors[name] = t
        seen[id(x)] = name
        keep.append(x)
        return name

    def walk(x: Any, path: str, depth: int) -> Any:
        if x is None or x is True or x is False:
            return x
        if tensor_type is not None and isinstance(x, tensor_type):
            return {"tensor": tensor_name(x, path, x)}
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject or x.dtype.kind not in "biufc" or x.dtype.newbyteorder("=") not in _NUMPY_NAMES:
                raise refuse(path, f"numpy array of dtype {x.dtype} is not supported")
            a = x
            if not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            if not a.flags.c_contiguous or not a.flags.writeable:
                a = np.array(a, order="C", copy=True)
            keep.append(a)
            return {"ndarray": tensor_name(x, path, a)}
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            f = float(x)
            if math.isnan(f):
                return {"float": "nan"}
            if math.isinf(f):
                return {"float": "inf" if f > 0 else "-inf"}
            return f
        if isinstance(x, str):
            return str(x)
        if isinstance(x, (dict, list, tuple)):
            if type(x) is not tuple and isinstance(x, tuple):
                raise refuse(path, f"{type(x).__name__} (a tuple subclass, e.g. a namedtuple) "
                                   "would come back as a plain tuple; convert it first")
            if type(x) is not list and isinstance(x, list):
                raise refuse(path, f"{type(x).__name__} (a list subclass) is not supported")
            if id(x) in stack:
                raise refuse(path, "the structure contains itself")
            if depth >= MAX_DEPTH:
                raise refuse(path, f"nested more than {MAX_DEPTH} levels deep")
            stack.add(id(x))
            try:
                if isinstance(x, dict):
                    items = []
                    for k, v in x.items():
                        if isinstance(k, bool) or not isinstance(k, (str, int)):
                            raise refuse(_join(path, repr(k)),
                                         f"dict key {k!r} of type {type(k).__name__} (keys must be "
                                         "str or int)")
                        key = str(k) if isinstance(k, str) else int(k)
                        items.append([key, walk(v, _join(path, k), depth + 1)])
                    return {"dict": items}
                out = [walk(v, _join(path, i), depth + 1) for i, v in enumerate(x)]
                return {"tuple": out} if isinstance(x, tuple) else out
            finally:
                stack.discard(id(x))
        raise refuse(path, f"{type(x).__module__}.{type(x).__qualname__} is not supported "
                           f"(allowed: {_ALLOWED})")

    tree = walk(obj, root, 0)
    return tensors, {"format": FORMAT, "version": VERSION, "tree": tree}


# -------------------------------------------------------------------------------- unpack


class _Bad(Exception):
    """A reason to refuse a payload; turned into UnsafeOrCorrupt with the caller's `what`."""


def _convert(t: Any, tag: str, name: str) -> Any:
    """A stored tensor (or a NumPy array, e.g. from a Flower ArrayRecord) as the node asks."""
    if isinstance(t, np.ndarray):
        if t.dtype.hasobject or t.dtype.kind not in "biufc":
            raise _Bad(f"array {name[:40]!r} has dtype {t.dtype}, not a tensor dtype")
        if tag == "ndarray":
            return t
        try:
            return _torch().from_numpy(t if t.flags.writeable and t.dtype.isnative
                                       else np.array(t, dtype=t.dtype.newbyteorder("=")))
        except TypeError:
            raise _Bad(f"array {name[:40]!r} has dtype {t.dtype}, not a tensor dtype") from None
    tensor_type = _loaded_tensor_type()
    if tensor_type is None or not isinstance(t, tensor_type):
        raise _Bad(f"{name[:40]!r} is a {type(t).__name__}, not a tensor")
    if tag == "tensor":
        return t
    try:
        return t.numpy()
    except (TypeError, RuntimeError):
        raise _Bad(f"a {t.dtype} tensor on {t.device} cannot be a numpy array") from None


def _unpack(tensors: dict[str, Any], skeleton: Any) -> Any:
    if not isinstance(skeleton, dict) or skeleton.get("format") != FORMAT:
        raise _Bad(f"not a {FORMAT} skeleton")
    if skeleton.get("version") != VERSION:
        raise _Bad(f"{FORMAT} version {repr(skeleton.get('version'))[:40]} is not supported "
                   f"(this fedsynth reads version {VERSION})")
    if set(skeleton) != {"format", "version", "tree"}:
        raise _Bad("skeleton has unexpected fields")
    if not isinstance(tensors, dict):
        raise _Bad(f"tensors must be a dict, not {type(tensors).__name__}")
    used: set[str] = set()
    made: dict[tuple[str, str], Any] = {}

    def node(x: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH + 1:
            raise _Bad(f"skeleton nested more than {MAX_DEPTH} levels deep")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x
        if isinstance(x, float):
            if not math.isfinite(x):
                raise _Bad(f"skeleton at {_where(path)}: non-finite float literal")
            return x
        if isinstance(x, list):
            return [node(v, _join(path, i), depth + 1) for i, v in enumerate(x)]
        if not isinstance(x, dict) or len(x) != 1:
            raise _Bad(f"skeleton at {_where(path)}: malformed node")
        (tag, val), = x.items()
        if tag in ("tensor", "ndarray"):
            if not isinstance(val, str) or val not in tensors:
                raise _Bad(f"skeleton at {_where(path)} refers to a tensor {repr(val)[:40]} that "
                           "the payload does not hold")
            used.add(val)
            if (tag, val) not in made:  # one object per name: aliasing is kept
                made[tag, val] = _convert(tensors[val], tag, val)
            return made[tag, val]
        if tag == "float":
            if val not in ("nan", "inf", "-inf"):
                raise _Bad(f"skeleton at {_where(path)}: bad float {repr(val)[:40]}")
            return float(val)
        if tag == "tuple":
            if not isinstance(val, list):
                raise _Bad(f"skeleton at {_where(path)}: malformed tuple")
            return tuple(node(v, _join(path, i), depth + 1) for i, v in enumerate(val))
        if tag == "dict":
            if not isinstance(val, list):
                raise _Bad(f"skeleton at {_where(path)}: malformed dict")
            out: dict[Any, Any] = {}
            for item in val:
                if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                        or not isinstance(item[0], (str, int))):
                    raise _Bad(f"skeleton at {_where(path)}: malformed dict entry")
                k = item[0]
                if k in out:
                    raise _Bad(f"skeleton at {_where(path)}: duplicate key {k!r}")
                out[k] = node(item[1], _join(path, k), depth + 1)
            return out
        raise _Bad(f"skeleton at {_where(path)}: unknown node type {str(tag)[:40]!r}")

    obj = node(skeleton["tree"], "", 0)
    unused = set(tensors) - used
    if unused:
        raise _Bad(f"payload holds {len(unused)} tensor(s) the skeleton does not use, "
                   f"e.g. {sorted(unused)[0][:40]!r}")
    return obj


def unpack(tensors: dict[str, Any], skeleton: dict[str, Any] | str, what: str = "skeleton") -> Any:
    """Rebuild the structure :func:`pack` split: ``unpack(*pack(x))`` equals ``x``.

    Both halves may have travelled separately and be untrusted, e.g. the tensors in a Flower
    ``ArrayRecord`` and the skeleton as JSON text in a ``ConfigRecord``.

    Parameters
    ----------
    tensors
        The flat dict of tensors, as :func:`pack` returned it; NumPy arrays are accepted in
        place of tensors (``torch.from_numpy``, sharing memory).
    skeleton
        The skeleton :func:`pack` returned, or its JSON text (``json.dumps(skeleton)``).
    what
        Names the data in the error message, e.g. ``"client 1: field 'extra'"``.

    Returns
    -------
    object
        The structure, holding the given tensors themselves (not copies); ``ndarray`` nodes
        are ``tensor.numpy()`` views of them.

    Raises
    ------
    UnsafeOrCorrupt
        If the skeleton is malformed (or not JSON), of another format version, refers to a
        tensor that ``tensors`` lacks, or leaves one of ``tensors`` unused; or if a value in
        ``tensors`` is neither a tensor nor a NumPy array of a tensor dtype.
    """
    try:
        if isinstance(skeleton, str):
            try:
                skeleton = json.loads(skeleton, parse_constant=_no_constants)
            except ValueError as e:
                raise _Bad(f"skeleton is not valid JSON ({str(e).splitlines()[0][:80]})") from None
        return _unpack(tensors, skeleton)
    except _Bad as e:
        raise UnsafeOrCorrupt(f"{what}: {e}") from None
    except RecursionError:
        raise UnsafeOrCorrupt(f"{what}: skeleton nested too deeply") from None


# ------------------------------------------------------------------------------- bytes


def _swap_unit(name: str) -> int:
    """Bytes per byte-swapped unit of safetensors dtype ``name``: a complex64 is two float32s."""
    return 4 if name == "C64" else _DTYPES[name][2]


def _swapped(flat: np.ndarray, unit: int) -> np.ndarray:
    """``flat`` (uint8) with the bytes of every ``unit``-byte word reversed: native order <->
    little-endian on a big-endian machine."""
    if unit == 1 or flat.size == 0:
        return flat
    return np.ascontiguousarray(flat.reshape(-1, unit)[:, ::-1]).reshape(-1)


def _raw(t: Any, names: dict[Any, str] | None) -> tuple[str, list[int], np.ndarray]:
    """A stored value's safetensors dtype name, shape and native-order bytes (uint8, flat): a
    NumPy array as it is, a tensor detached, on the CPU, contiguous."""
    if isinstance(t, np.ndarray):
        return _NUMPY_NAMES[t.dtype], list(t.shape), t.reshape(-1).view(np.uint8)
    torch = _torch()
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if type(t) is not torch.Tensor:   # nn.Parameter and other subclasses
        t = t.as_subclass(torch.Tensor)
    t = t.contiguous()
    return names[t.dtype], list(t.shape), t.reshape(-1).view(torch.uint8).numpy()


def _crc(dtype: str, shape: list[int], data: Any) -> str:
    """CRC-32 of a tensor's dtype, shape and (little-endian) bytes: catches corruption in
    transit or on disk. Not a defence against a forger, who recomputes it; the checks are."""
    return f"{zlib.crc32(data, zlib.crc32(f'{dtype}{shape}'.encode())):08x}"


def _metadata(skeleton_json: str, tensors: dict[str, tuple[str, list[int], Any]]) -> dict[str, str]:
    """The payload's ``__metadata__``; ``tensors`` maps names to (dtype, shape, LE bytes)."""
    return {"format": FORMAT, "version": VERSION, "skeleton": skeleton_json,
            "skeleton-crc32": f"{zlib.crc32(skeleton_json.encode('utf-8')):08x}",
            "tensor-crc32": json.dumps({k: _crc(*v) for k, v in tensors.items()},
                                       separators=(",", ":"))}


def to_bytes(obj: Any, *, root: str = "") -> bytes:
    """Serialise a nested structure of tensors and plain values into one safetensors payload.

    Parameters
    ----------
    obj
        What :func:`pack` accepts.
    root
        The name of ``obj`` in error messages (see :func:`pack`).

    Returns
    -------
    bytes
        A safetensors payload whose ``__metadata__`` carries the format tag, version, the
        JSON skeleton and CRC-32s of the skeleton and of each tensor; read it with
        :func:`from_bytes`.

    Raises
    ------
    TypeError
        For anything :func:`pack` refuses, naming its path.
    """
    tensors, skeleton = _pack(obj, root)
    tree = json.dumps(skeleton["tree"], allow_nan=False, separators=(",", ":"))
    # <u64 LE header length> <JSON header, space-padded to 8 bytes> <tensor bytes, in order>
    table: dict[str, Any] = {}
    entries: dict[str, tuple[str, list[int], Any]] = {}
    parts: list[Any] = []
    pos = 0
    names = None if all(isinstance(t, np.ndarray) for t in tensors.values()) else _torch_dtype_names()
    for name, t in tensors.items():
        dtype, shape, data = _raw(t, names)
        n = data.size
        if not _LITTLE:
            data = _swapped(data, _swap_unit(dtype))
        table[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        entries[name] = (dtype, shape, data)
        if n:
            parts.append(data)
        pos += n
    header = {"__metadata__": _metadata(tree, entries), **table}
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *parts])


def _describe(data: bytes) -> str:
    """What the bytes look like, for the refusal message."""
    if not data:
        return "empty (0 bytes)"
    if data[:1] == b"\x80" and len(data) > 1 and data[1] <= 5:
        return f"looks like a Python pickle (protocol {data[1]}), which is never loaded"
    if data[:4] == b"PK\x03\x04":
        return "looks like a zip archive (torch.save / pickle), which is never loaded"
    return f"not a {FORMAT} payload"


def _no_constants(c: str) -> Any:
    raise ValueError(f"JSON constant {c} (NaN/Infinity are not JSON)")


def _parse_header(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """The safetensors header, checked: every tensor's dtype, shape and byte range."""
    def bad(detail: str) -> _Bad:  # what the bytes look like: a pickle, a zip ... or the detail
        looks = _describe(data)
        return _Bad(looks if looks != f"not a {FORMAT} payload" else f"{looks} ({detail})")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes, shorter than a header")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER or 8 + n > len(data):
        raise bad(f"header length {n} does not fit the {len(data)} bytes")
    try:
        text = data[8:8 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise bad("header is not UTF-8") from None
    if not text.lstrip().startswith("{"):
        raise bad("header is not a JSON object")

    try:
        header = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise _Bad(f"header is not valid JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(header, dict):
        raise _Bad("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _Bad(f"not a {FORMAT} payload (a safetensors file without fedsynth's format tag?)")
    if meta.get("version") != VERSION:
        raise _Bad(f"{FORMAT} version {repr(meta.get('version'))[:40]} is not supported "
                   f"(this fedsynth reads version {VERSION})")
    if not isinstance(meta.get("skeleton"), str):
        raise _Bad("metadata lacks the skeleton")
    body = len(data) - 8 - n
    ranges = []
    for name, info in header.items():
        label = repr(name[:40])
        if (not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}
                or not isinstance(info["dtype"], str) or info["dtype"] not in _DTYPES
                or not isinstance(info["shape"], list) or not isinstance(info["data_offsets"], list)
                or len(info["data_offsets"]) != 2):
            raise _Bad(f"tensor {label}: malformed header entry")
        if not all(type(d) is int and 0 <= d < 2 ** 63 for d in info["shape"]):
            raise _Bad(f"tensor {label}: bad shape")
        begin, end = info["data_offsets"]
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end <= body:
            raise _Bad(f"tensor {label}: byte range {str(info['data_offsets'])[:60]} outside "
                       f"the {body}-byte data (truncated?)")
        numel = math.prod(info["shape"])
        if end - begin != numel * _DTYPES[info["dtype"]][2]:
            raise _Bad(f"tensor {label}: header says {end - begin} bytes for shape "
                       f"{str(info['shape'])[:60]} of {info['dtype']}")
        ranges.append((begin, end))
    ranges.sort()
    pos = 0
    for begin, end in ranges:
        if begin != pos:
            raise _Bad("tensor byte ranges overlap or leave gaps")
        pos = end
    if pos != body:
        raise _Bad(f"data is {body} bytes, the tensors account for {pos} (truncated or padded?)")
    return header, meta


def _read_tensors(data: bytes, header: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a payload whose header :func:`_parse_header` checked, their checksums
    verified; each owns a writable copy of its bytes: a NumPy array where NumPy has the dtype
    (:func:`_convert` makes it a tensor where the skeleton asks for one), else a tensor."""
    try:
        crcs = json.loads(meta.get("tensor-crc32"))
    except (TypeError, ValueError, RecursionError):
        crcs = None
    if not isinstance(crcs, dict) or set(crcs) != set(header):
        raise _Bad("metadata lacks the tensors' checksums")
    (n,) = struct.unpack("<Q", data[:8])
    body = memoryview(data)[8 + n:]
    out: dict[str, Any] = {}
    for name, info in header.items():
        torch_name, numpy_name, _ = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        if _crc(info["dtype"], info["shape"], raw) != crcs[name]:
            raise _Bad(f"tensor {name[:40]!r}: checksum mismatch (corrupt data)")
        flat = np.frombuffer(bytearray(raw), dtype=np.uint8)
        if not _LITTLE:
            flat = _swapped(flat, _swap_unit(info["dtype"]))
        if numpy_name is not None:
            out[name] = flat.view(numpy_name).reshape(info["shape"])
        else:   # bfloat16, float8: torch's own dtypes
            torch = _torch()
            if not hasattr(torch, torch_name):
                raise _Bad(f"tensor {name[:40]!r}: dtype {info['dtype']} is not supported by this torch")
            out[name] = torch.from_numpy(flat).view(getattr(torch, torch_name)).reshape(info["shape"])
    return out


def from_bytes(data: bytes | bytearray | memoryview, what: str = "data") -> Any:
    """Read what :func:`to_bytes` wrote -- and refuse anything else without running it.

    Parameters
    ----------
    data
        The payload, e.g. a field of a message or a file's contents.
    what
        Names the payload in the error message: the field and its sender
        (``"client 1: field 'extra'"``) or the file.

    Returns
    -------
    object
        The structure; tensors on the CPU, owning their memory.

    Raises
    ------
    UnsafeOrCorrupt
        For anything that is not a valid payload: a pickle, a ``torch.save`` archive, empty,
        truncated or random bytes, a header whose sizes or byte ranges are wrong, a malformed
        skeleton, a skeleton referring to tensors the payload lacks (or leaving some unused).
        The message is one line, ``"<what>: <reason>"``; no exception of a third-party library
        escapes.
    """
    try:
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif isinstance(data, bytearray):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise _Bad(f"expected bytes, got {type(data).__name__}")
        header, meta = _parse_header(data)
        if meta.get("skeleton-crc32") != f"{zlib.crc32(meta['skeleton'].encode('utf-8')):08x}":
            raise _Bad("skeleton: checksum mismatch (corrupt header)")
        tensors = _read_tensors(data, header, meta)
        try:
            tree = json.loads(meta["skeleton"], parse_constant=_no_constants)
        except RecursionError:
            raise _Bad("skeleton nested too deeply") from None
        except ValueError as e:
            raise _Bad(f"skeleton is not valid JSON ({str(e).splitlines()[0][:80]})") from None
        return _unpack(tensors, {"format": FORMAT, "version": VERSION, "tree": tree})
    except _Bad as e:
        raise UnsafeOrCorrupt(f"{what}: {e}") from None
    except RecursionError:
        raise UnsafeOrCorrupt(f"{what}: skeleton nested too deeply") from None
    except Exception as e:  # a guard: a bug or an unforeseen input must still read as a refusal
        raise UnsafeOrCorrupt(f"{what}: unreadable payload ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


# ------------------------------------------------------------------------------- files


def save_file(obj: Any, path: str | os.PathLike[str], *, root: str = "") -> None:
    """Write :func:`to_bytes` of ``obj`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and fsynced and then
    renamed over ``path`` (``os.replace``), and the folder is fsynced: readers see the old file
    or the whole new one, also after a crash.

    Parameters
    ----------
    obj
        What :func:`pack` accepts.
    path
        The file to write; its folder is made if missing.
    root
        The name of ``obj`` in error messages (see :func:`pack`).

    Raises
    ------
    TypeError
        For anything :func:`pack` refuses (nothing is written then).
    OSError
        If the file cannot be written.
    """
    from .utils import atomic_write_bytes
    atomic_write_bytes(path, to_bytes(obj, root=root))


def load_file(path: str | os.PathLike[str], what: str | None = None) -> Any:
    """Read a file :func:`save_file` wrote, refusing anything else without running it.

    Parameters
    ----------
    path
        The file.
    what
        Names the file in the error message (e.g. ``"config key 'fed.init-from'"``); the
        path itself by default.

    Returns
    -------
    object
        The structure, as :func:`from_bytes` returns it.

    Raises
    ------
    UnsafeOrCorrupt
        If the contents are not a valid payload (see :func:`from_bytes`).
    OSError
        If the file cannot be read (``FileNotFoundError``, ``IsADirectoryError``, ...).
    """
    p = Path(path)
    data = p.read_bytes()
    return from_bytes(data, what if what is not None else str(p))


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """A ``torch.save`` file of tensors and plain containers (a checkpoint), read with
    ``torch.load(weights_only=True)``: nothing but tensors and plain data is unpickled.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    UnsafeOrCorrupt
        If it cannot be read: truncated, not a torch file, or holding other objects (refused:
        loading it could run code); the message is one line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(str(p))
    try:
        return _torch().load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a foreign pickle, not a torch file at all
        reason = str(e).strip().splitlines()[0][:160] if "Weights only load failed" not in str(e) else \
            "it holds objects other than tensors and plain data (refused: loading it could run code)"
        raise UnsafeOrCorrupt(reason) from None
