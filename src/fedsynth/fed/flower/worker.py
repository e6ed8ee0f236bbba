"""A hospital node's warm worker: torch imported once, requests answered in milliseconds.

Flower starts a new ``flwr-clientapp`` process for every message. Importing torch (and the
``torch._dynamo`` that ``torch.optim`` pulls in) costs that process ~2.5 s of CPU before any
work, every round, on every node. ``fedsynth deploy supernode`` therefore starts this worker
next to ``flower-supernode`` and tells the ClientApp where it listens
(``FEDSYNTH_NODE_WORKER``): the ClientApp process then imports neither torch nor fedsynth's
models, and hands the request (:mod:`fedsynth.fed.flower.node`) to the worker.

* Local only: a Unix socket in a fresh folder only this user can enter (0700); nothing listens
  on the network, and nothing but Flower's own messages leaves the node.
* Same answers: the worker runs the same :func:`fedsynth.fed.flower.node.handle` the ClientApp would;
  every random draw is seeded from the run seed, round and client, so a warm worker and a fresh
  process give bit-identical weights (tested).
* Warm per run, too: it keeps the run's :class:`fedsynth.fed.flower.node.Node` (config, data,
  held-out split, feature network, real statistics) across the run's messages
  (:class:`fedsynth.fed.flower.node.Nodes`), so a round neither reloads the data nor recomputes
  the statistics; the model, strategy and client state are still built per message.
* Tied to its SuperNode: it exits when the process that started it (the SuperNode) is gone,
  and removes its socket folder.
* Never in the way: if the worker is missing, busy starting or dies mid-request, the ClientApp
  answers the message in its own process, as plain ``flower-supernode`` nodes always do.

Wire format: 8-byte big-endian length + :func:`encode`'s :mod:`fedsynth.serial` payload (the
format of node state and of Flower messages' tensors: NumPy arrays, JSON structure), both ways: never a pickle,
so even a process that reached the socket could not make the worker (or the ClientApp) run code.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

ENV = "FEDSYNTH_NODE_WORKER"


class WorkerUnavailable(Exception):
    """The worker could not be reached or failed mid-request: answer in-process instead."""


def encode(obj: Any) -> bytes:
    """A request or answer as one :mod:`fedsynth.serial` payload -- the format of node state and
    of every tensor a Flower message carries: NumPy arrays stored as
    themselves, the structure around them in the payload's JSON skeleton, each ``bytes`` value
    (the node's state, itself such a payload) as a uint8 array whose place is listed beside the
    message. Written and read with NumPy alone, so the ClientApp process that relays to the
    worker never imports torch."""
    import numpy as np

    from ...serial import to_bytes
    blobs: list[list[Any]] = []

    def walk(x: Any, path: list[Any]) -> Any:
        if isinstance(x, bytes):
            blobs.append(path)
            return np.frombuffer(x, dtype=np.uint8)
        if isinstance(x, dict):
            return {k: walk(v, [*path, k]) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, [*path, i]) for i, v in enumerate(x)]
        return x
    return to_bytes({"message": walk(obj, []), "bytes-at": blobs}, root="worker message")


def decode(data: bytes) -> Any:
    """The inverse of :func:`encode`; anything else (a pickle, another payload, corrupt bytes)
    raises ``ValueError`` without running anything."""
    import numpy as np

    from ...serial import from_bytes
    got = from_bytes(data, "worker message")   # serial.UnsafeOrCorrupt is a ValueError
    if not (isinstance(got, dict) and set(got) == {"message", "bytes-at"} and isinstance(got["bytes-at"], list)):
        raise ValueError("worker message: not a request or an answer")
    msg = got["message"]
    for path in got["bytes-at"]:
        if not (isinstance(path, list) and path):
            raise ValueError(f"worker message: bad place of a bytes value {str(path)[:60]}")
        try:
            parent = msg
            for k in path[:-1]:
                parent = parent[k]
            blob = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"worker message: no value at {str(path)[:60]}") from None
        if not (isinstance(blob, np.ndarray) and blob.dtype == np.uint8 and blob.ndim == 1):
            raise ValueError(f"worker message: the value at {str(path)[:60]} is not bytes")
        parent[path[-1]] = blob.tobytes()
    return msg


def _send(sock: socket.socket, obj: Any) -> None:
    data = encode(obj)
    sock.sendall(struct.pack(">Q", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    (n,) = struct.unpack(">Q", _recv_exact(sock, 8))
    return decode(_recv_exact(sock, n))


def request(path: str, kind: str, req: dict[str, Any], wait_s: float = 30.0) -> dict[str, Any]:
    """Send one request to the worker at ``path`` and return its answer. Waits up to ``wait_s``
    for a worker that is still starting (its folder exists, its socket not yet); gives up at
    once if the folder does not exist."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                _send(s, [kind, req])
                status, answer = _recv(s)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if not os.path.isdir(os.path.dirname(path)):  # never started (or gone): do not wait
                raise WorkerUnavailable(f"no worker at {path}: its folder does not exist") from None
            if time.monotonic() > deadline:
                raise WorkerUnavailable(f"no worker at {path}: {e}") from None
            time.sleep(0.05)
        except (OSError, EOFError, ValueError, struct.error) as e:  # serial.UnsafeOrCorrupt is a ValueError
            raise WorkerUnavailable(f"worker at {path} failed: {e}") from None
    if status != "ok":
        raise WorkerUnavailable(f"worker at {path} failed: {answer}")
    return answer


def serve(path: str, parent: int) -> None:
    """Answer requests on ``path`` until process ``parent`` is gone."""
    from .node import Nodes, handle  # torch, fedsynth's models: imported once, here
    import torch
    nodes = Nodes()  # the run's node (data, held-out split, feature network, statistics), kept across its messages
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # pulls in torch._dynamo now, not per request
    p = Path(path)
    p.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(p))
        os.chmod(p, 0o600)
        srv.listen(8)
        srv.settimeout(1.0)
        try:
            while os.getppid() == parent:
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.settimeout(None)
                    try:
                        kind, req = _recv(conn)
                    except (OSError, EOFError, ValueError, struct.error):
                        continue
                    try:
                        out = ["ok", handle(kind, req, nodes)]
                    except Exception as e:  # noqa: BLE001 -- reported; the ClientApp retries in-process
                        out = ["error", f"{type(e).__name__}: {e}"]
                    try:
                        _send(conn, out)
                    except OSError:
                        pass
        finally:
            p.unlink(missing_ok=True)
            try:
                p.parent.rmdir()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fedsynth's warm worker for one Flower SuperNode")
    ap.add_argument("--socket", required=True, help="Unix socket path (in a folder only this user can enter)")
    ap.add_argument("--parent", type=int, required=True, help="exit when this process (the SuperNode) is gone")
    args = ap.parse_args(argv)
    try:
        serve(args.socket, args.parent)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
