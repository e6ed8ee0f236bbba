#!/usr/bin/env python3
"""Container health check: GET /health on the HTTP API of the Flower process in this container.

The SuperLink serves /health on its one port (--host/--port, default 8000; HTTPS when started
with --ssl-certfile); a SuperNode serves it on its local Runtime API (--host/--port, default
127.0.0.1:9094). The Flower process is found by name in /proc and its own --host/--port are
read from its command line. Certificates are not verified: this only asks whether the process
answers on its own port. Exit 0 when it answers 200, else 1 (with the reason on stderr).
Standard library only.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

DEFAULT_PORT = {"flower-superlink": 8000, "flower-supernode": 9094}


def flower_process() -> tuple[str, list[str]] | None:
    """(name, argv) of the flower-superlink / flower-supernode process in this container."""
    for pid in sorted(int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        for a in argv[:2]:  # the command itself, or the script run by its interpreter
            name = os.path.basename(a)
            if name in DEFAULT_PORT:
                return name, argv
    return None


def option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def main() -> int:
    found = flower_process()
    if found is None:
        print("no flower-superlink or flower-supernode process", file=sys.stderr)
        return 1
    name, argv = found
    host = option(argv, "--host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    port = int(option(argv, "--port") or DEFAULT_PORT[name])
    tls = option(argv, "--ssl-certfile") is not None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=4, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=4)
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except OSError as e:
        print(f"{name}: {'https' if tls else 'http'}://{host}:{port}/health: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:
        print(f"{name}: /health answered {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
