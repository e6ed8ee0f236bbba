"""Per-round overhead of the Flower deployment engine on loopback, measured side by side.

    .venv/bin/python benchmarks/flower_overhead.py [--rounds 6]

Starts a SuperLink and two SuperNodes on 127.0.0.1 (tools.local_federation.LocalFederation) for each
setting in turn and runs the same tiny federated GAN (16 px, 32 images per hospital, training
< 0.1 s per round), so nearly all of a round is overhead:

* noop-floor     -- a ClientApp/ServerApp without torch that only passes an array back and
                    forth: what any app pays per round on this Flower version (node polling,
                    a new ClientApp process per message, object transfer).
* flower-defaults -- fedsynth, with Flower's own timings: the server polls every 3 s (as
                    Grid.send_and_receive does) and the SuperExec every 1 s.
* fedsynth-cold  -- the server polls every 50 ms, the SuperExec every 50 ms
                    (FLWR_SUPEREXEC_TASK_POLL_INTERVAL, set by fedsynth.deploy.flower_env),
                    plain flower-supernode: each message's ClientApp process imports torch.
* fedsynth       -- the same with `fedsynth deploy supernode`: a warm worker per node keeps
                    torch loaded; the ClientApp process only relays (fedsynth.fed.worker).
* fedsynth-tls   -- fedsynth with TLS and SuperNode authentication.

Overhead per round = round wall time (server side) - the slower client's training time; the
median over rounds 2..N is printed (round 1 includes first contact). Every number is measured
in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tools/: the repository's test and benchmark helpers
from fedsynth.fed.flower.deploy import APP_DIR as APP  # noqa: E402


def setting(name: str, tmp: Path, rounds: int, poll: float, superexec_poll: str, tls: bool, noop: bool,
            warm: bool = False, src: str = "") -> dict:
    """One setting; ``src``: run fedsynth from another source tree (its ``src`` folder)."""
    from tools.local_federation import LocalFederation
    work = tmp / name
    env = {**os.environ, "FEDSYNTH_CACHE": str(tmp / "cache"), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": superexec_poll}
    app = APP
    if src:  # the other tree's code in every process, and its own Flower app folder
        env["PYTHONPATH"] = src
        app = next(p.parent for p in Path(src, "fedsynth").rglob("pyproject.toml") if "flwr" in p.read_text())
    fed = LocalFederation(work, [(str(tmp / "sites" / f"client-{k}"), str(k)) for k in (0, 1)],
                          certs=tmp / "certs" if tls else None, port=18700 + os.getpid() % 500, env=env,
                          log_dir=work / "logs", warm=warm)
    t0 = time.perf_counter()
    try:
        fed.start()
        if noop:
            res = fed.run(HERE / "flower_noop", {"rounds": rounds, "poll-interval": poll,
                                                 "out": str(work / "noop.json")})
        else:
            res = fed.run(app, {"config-path": str(tmp / "fedsynth.toml"), "out": str(work / "run"),
                                "poll-interval": poll})
    finally:
        fed.stop()
    total = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{name}: flwr run failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    if noop:
        walls = json.loads((work / "noop.json").read_text())
        over = walls
    else:
        rows = [json.loads(x) for x in (work / "run" / "timings.jsonl").read_text().splitlines()]
        server = [x for x in rows if x.get("client") == "server"]
        walls = [x["wall_s"] for x in server]
        over = [x["overhead_s"] for x in server]
    return {"setting": name, "rounds": rounds, "median_overhead_s": statistics.median(over[1:]),
            "min_overhead_s": min(over[1:]), "max_overhead_s": max(over[1:]), "first_round_s": walls[0],
            "median_round_s": statistics.median(walls[1:]), "total_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--against", default="", help="another checkout's src folder: run only the warm fedsynth "
                    "setting, alternating this tree and that one, --repeat times each (before/after a change)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.fed.flower.deploy import make_certs
    import flwr
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = CliRunner().invoke(app, ["data", "split", "phantom-xray", "-k", "2", "--out", str(tmp / "sites"),
                                       "--set", "data.num-images=64", "--set", "data.image-size=16"])
        assert res.exit_code == 0, res.output
        (tmp / "fedsynth.toml").write_text(
            "[data]\nimage-size = 16\n[model]\nnz = 16\nngf = 8\nndf = 8\n[train]\nbatch-size = 16\nthreads = 1\n"
            f"[fed]\nrounds = {args.rounds}\n[eval]\nenabled = false\n")
        make_certs(tmp / "certs", 2)
        if args.against:
            return compare(tmp, args)
        out = [setting("noop-floor", tmp, args.rounds, 0.05, "0.05", False, True),
               setting("flower-defaults", tmp, args.rounds, 3.0, "1.0", False, False),
               setting("fedsynth-cold", tmp, args.rounds, 0.05, "0.05", False, False),
               setting("fedsynth", tmp, args.rounds, 0.05, "0.05", False, False, warm=True),
               setting("fedsynth-tls", tmp, args.rounds, 0.05, "0.05", True, False, warm=True)]
    print(f"flwr {flwr.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"2 SuperNodes on 127.0.0.1, {args.rounds} rounds each\n")
    print("| setting | overhead per round, median (min-max) | first round | total incl. start/stop |")
    print("| --- | --- | --- | --- |")
    for r in out:
        print(f"| {r['setting']} | {r['median_overhead_s']:.2f} s ({r['min_overhead_s']:.2f}-{r['max_overhead_s']:.2f}) "
              f"| {r['first_round_s']:.2f} s | {r['total_s']:.1f} s |")
    med = {r["setting"]: r["median_overhead_s"] for r in out}
    print(f"\nfedsynth / flower-defaults: {med['fedsynth'] / med['flower-defaults']:.2f}; "
          f"fedsynth / fedsynth-cold: {med['fedsynth'] / med['fedsynth-cold']:.2f}; "
          f"above the no-op floor: fedsynth {med['fedsynth'] - med['noop-floor']:+.2f} s, "
          f"fedsynth-cold {med['fedsynth-cold'] - med['noop-floor']:+.2f} s")


def compare(tmp: Path, args) -> None:
    """This tree vs ``--against``, the warm-worker setting, alternating so that both see the
    same machine load."""
    rows: dict[str, list[float]] = {"this tree": [], args.against: []}
    for i in range(args.repeat):
        for label, src in (("this tree", ""), (args.against, args.against)):
            r = setting(f"fedsynth-{i}-{'a' if src else 'b'}", tmp, args.rounds, 0.05, "0.05", False, False,
                        warm=True, src=src)
            rows[label].append(r["median_overhead_s"])
    print(f"2 SuperNodes (warm workers) on 127.0.0.1, {args.rounds} rounds, {args.repeat} runs each, alternating\n")
    print("| code | median overhead per round, each run | median |\n| --- | --- | --- |")
    for label, vals in rows.items():
        print(f"| {label} | {', '.join(f'{v:.2f} s' for v in vals)} | {statistics.median(vals):.2f} s |")


if __name__ == "__main__":
    main()
