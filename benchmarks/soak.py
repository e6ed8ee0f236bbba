"""Soak: a long Flower federation with real faults, its memory over time, and its replay.

    nice -n 10 .venv/bin/python benchmarks/soak.py [--rounds 200] [--kill-every 20] [--port 19110]
        [--out DIR] [--figure docs/images/soak-memory.png]

On 127.0.0.1 (tools.local_federation.LocalFederation): a SuperLink with TLS and SuperNode
authentication, three hospitals' SuperNodes (`fedsynth deploy supernode`, a warm worker each), a
tiny SCAFFOLD DCGAN (16 px, 32 phantom images per hospital, one torch thread per process;
SCAFFOLD so that each node carries state between rounds: its control variate and optimizer).

Faults, all real (SIGKILL, no cooperation from the victim):

* every ``--kill-every`` rounds, a SuperNode is SIGKILLed with its worker and ClientApp
  processes just after a round ends -- hospitals 1 and 2 in turn, so that hospital 0 lives
  through the whole run as the reference for node memory -- and started again at once, as a
  service manager would, with the same key and data; Flower refuses it while it still counts
  the killed process as online (until two heartbeats are missed: up to 60 s), so it is retried;
* once (``--server-kill-at``, before the memory window starts) the SuperLink with the ServerApp
  it runs is SIGKILLed, started again on the same database, and the run resumed
  (run config ``resume``) from the server's last checkpoint.

Sampled every round: the resident memory (RSS, /proc) of the SuperLink, the ServerApp, and each
SuperNode with its warm worker. Printed at the end: rounds completed, the rounds each hospital
missed (with the reasons recorded), node restarts, peak and final RSS, RSS growth from round 20
to the last, wall time per round; then the replay (``fedsynth run --replay``) of the whole run
in one process, checked bit for bit against the Flower run's checkpoints. Writes samples.json
and the memory figure. Ports: the SuperLink on ``--port``, SuperNodes on ``--port + 10 + k``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/: the repository's test and benchmark helpers
from fedsynth.fed.flower.deploy import APP_DIR as APP  # noqa: E402
from fedsynth.fed.flower.deploy import flower_bin, make_certs  # noqa: E402
from tools.local_federation import LocalFederation, descendants, session_members  # noqa: E402

CONFIG = """[data]
image-size = 16
[model]
nz = 16
ngf = 8
ndf = 8
[train]
batch-size = 16
threads = 1
[fed]
rounds = {rounds}
strategy = "scaffold"
min-local-steps = 0
[eval]
enabled = false
[run]
keep-checkpoints = 3
"""


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def node_rss(proc) -> float:
    """A SuperNode and its warm worker (the per-message ClientApp processes come and go: left out)."""
    if proc is None or proc.poll() is not None:
        return 0.0
    pids = set(session_members({proc.pid}))
    return sum(rss_mb(p) for p in pids if "flwr-clientapp" not in cmdline(p) and "flwr-superexec" not in cmdline(p))


def server_rss(fed: LocalFederation) -> tuple[float, float]:
    """(SuperLink, ServerApp) RSS: the ServerApp runs in the SuperLink's session."""
    if fed.superlink is None or fed.superlink.poll() is not None:
        return 0.0, 0.0
    link = app = 0.0
    top = {fed.superlink.pid}
    for p in set(session_members(top)) | descendants(top) | top:  # the SuperExec starts its own session
        c = cmdline(p)
        if "flwr-serverapp" in c:
            app += rss_mb(p)
        elif "flower-superlink" in c:
            link += rss_mb(p)
    return link, app


def completed(out: Path) -> list[dict]:
    f = out / "timings.jsonl"
    if not f.exists():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return [r for r in rows if r.get("client") == "server" and r.get("round", 0) > 0]


def start_run(fed: LocalFederation, cfg: Path, out: Path, log: Path, resume: bool, timeout: float):
    items = f'config-path="{cfg}" out="{out}" clients=3 round-timeout={timeout:g}' + (" resume=true" if resume else "")
    with open(log, "ab") as f:
        return subprocess.Popen([flower_bin("flwr"), "run", str(APP), "local", "--stream", "--run-config", items],
                                env=fed.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def reap(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def growth(samples: list[dict], key: str, start: int) -> tuple[float, float, float]:
    """(RSS at round ``start``, RSS at the last round, growth in %) of one series."""
    s = [x for x in samples if x["round"] >= start and x.get(key, 0) > 0]
    if not s:
        return 0.0, 0.0, float("nan")
    a, b = s[0][key], s[-1][key]
    return a, b, 100 * (b - a) / a


def figure(samples: list[dict], events: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    r = [x["round"] for x in samples]
    for key, label in (("serverapp", "ServerApp"), ("superlink", "SuperLink"), ("node0", "hospital 0 (never killed)"),
                       ("node1", "hospital 1"), ("node2", "hospital 2")):
        ax.plot(r, [x[key] if x[key] > 0 else float("nan") for x in samples], label=label, lw=1.2)
    for e in events:
        ax.axvline(e["round"], color="red" if e["what"] == "server" else "0.7", lw=0.8,
                   ls="-" if e["what"] == "server" else ":")
    ax.set_xlabel("round (dotted: a SuperNode SIGKILLed; red: SuperLink + ServerApp SIGKILLed)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax.set_title("Resident memory over a Flower soak (TLS, node auth, warm workers)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--kill-every", type=int, default=20)
    ap.add_argument("--server-kill-at", type=int, default=10)
    ap.add_argument("--port", type=int, default=19110)
    ap.add_argument("--round-timeout", type=float, default=150)
    ap.add_argument("--out", type=Path, default=Path("soak"))
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="print the summary of a finished soak in --out again")
    args = ap.parse_args()
    work = args.out.resolve()
    if args.report_only:
        report(work, args)
        return
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FEDSYNTH_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "fedsynth.cli", "data", "split", "phantom-xray", "-k", "3", "--out",
                          str(work / "sites"), "--set", "data.num-images=96", "--set", "data.image-size=16"],
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stdout + res.stderr)
    make_certs(work / "certs", 3)
    cfg = work / "fedsynth.toml"
    cfg.write_text(CONFIG.format(rounds=args.rounds))
    out = work / "run"
    nodes = [(str(work / "sites" / f"client-{k}"), str(k)) for k in range(3)]
    fed = LocalFederation(work / "fl", nodes, certs=work / "certs", port=args.port, node_port=args.port + 10,
                          env=env, log_dir=work / "logs", warm=True)
    samples: list[dict] = []
    events: list[dict] = []
    restarts = {k: 0 for k in range(3)}
    t_start = time.time()
    server_killed = False
    victim = 1
    seen = 0
    last_revive = 0.0
    try:
        fed.start()
        run = start_run(fed, cfg, out, work / "flwr-run.log", False, args.round_timeout)
        while True:
            rows = completed(out)
            done = rows[-1]["round"] if rows else 0
            if time.time() - last_revive > 3:  # a service manager's restart delay
                last_revive = time.time()
                for k in fed.revive():
                    restarts[k] += 1
            if done > seen:
                seen = done
                link, app = server_rss(fed)
                samples.append({"round": done, "t": time.time() - t_start, "superlink": link, "serverapp": app,
                                **{f"node{k}": node_rss(fed.by_node.get(k)) for k in range(3)}})
                if done >= args.rounds:
                    break
                if not server_killed and done >= args.server_kill_at:
                    server_killed = True
                    events.append({"round": done, "what": "server", "t": time.time() - t_start})
                    print(f"round {done}: SIGKILL SuperLink + ServerApp; restart; resume", flush=True)
                    fed.restart_superlink()
                    reap(run)
                    run = start_run(fed, cfg, out, work / "flwr-run.log", True, args.round_timeout)
                elif done % args.kill_every == 0 and not any(e["round"] == done for e in events):
                    events.append({"round": done, "what": f"node{victim}", "t": time.time() - t_start})
                    print(f"round {done}: SIGKILL hospital {victim}'s SuperNode; its service manager restarts it",
                          flush=True)
                    fed.kill(fed.by_node[victim])  # revive() starts it again
                    victim = 2 if victim == 1 else 1
                if done % 10 == 0:
                    print(f"round {done}: {time.time() - t_start:.0f} s; RSS SuperLink {link:.0f} MiB, ServerApp "
                          f"{app:.0f} MiB, nodes " + ", ".join(f"{samples[-1][f'node{k}']:.0f}" for k in range(3))
                          + " MiB", flush=True)
            if run.poll() is not None and completed(out)[-1:] and completed(out)[-1]["round"] < args.rounds:
                sys.exit(f"the Flower run ended at round {completed(out)[-1]['round']}: see {work / 'flwr-run.log'}")
            time.sleep(0.2)
        run.wait(timeout=300)
    finally:
        if "run" in locals():
            reap(run)
        fed.stop()
    (work / "samples.json").write_text(json.dumps({"samples": samples, "events": events, "restarts": restarts,
                                                   "wall": time.time() - t_start}))
    report(work, args)


def report(work: Path, args) -> None:
    """The printout, from ``samples.json`` and the run directory (``--report-only`` redoes it)."""
    saved = json.loads((work / "samples.json").read_text())
    samples, events, restarts, wall = saved["samples"], saved["events"], saved["restarts"], saved["wall"]
    restarts = {int(k): v for k, v in restarts.items()}
    out = work / "run"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    missed = [r for r in recs if r["metric"] in ("dropped", "rejected") and r.get("client") != "server"]
    lost = [r for r in recs if r["metric"] == "state-lost"]
    rows = completed(out)
    per_round = [r["wall_s"] for r in rows]
    print()
    print(f"soak: {len({r['round'] for r in rows})} of {args.rounds} rounds completed in {wall / 60:.1f} min; "
          f"{sum(1 for e in events if e['what'] == 'server')} server restart (SuperLink + ServerApp SIGKILLed after "
          f"round {', '.join(str(e['round']) for e in events if e['what'] == 'server')}, resumed); "
          f"{sum(1 for e in events if e['what'] != 'server')} SuperNode SIGKILLs, "
          f"{sum(restarts.values())} node starts after them (refused tries included)")
    for k in range(3):
        mine = sorted(r["round"] for r in missed if r["client"] == str(k))
        reasons = sorted({r.get("reason", "")[:70] for r in missed if r["client"] == str(k)})
        print(f"  hospital {k}: missed {len(mine)} round(s) {mine if mine else ''} {reasons if reasons else ''}")
    trained = {(r["round"], r["client"]) for r in recs if r["metric"] == "d-loss"}
    for e in (e for e in events if e["what"] != "server"):
        k = e["what"][-1]
        back = next((r for r in range(e["round"] + 1, args.rounds + 1) if (r, k) in trained), None)
        gap = [r for r in range(e["round"] + 1, back or args.rounds + 1) if (r, k) not in trained]
        what = f"missed rounds {gap[0]}-{gap[-1]}" if gap else "missed no round"
        print(f"  hospital {k} SIGKILLed after round {e['round']}: {what}, trained again in round {back}")
    print(f"  node state lost on a restart: {len(lost)} time(s)")
    print("memory (RSS, MiB; sampled at each round's end):")
    for key, label in (("superlink", "SuperLink"), ("serverapp", "ServerApp"), ("node0", "hospital 0 (never killed)"),
                       ("node1", "hospital 1"), ("node2", "hospital 2")):
        vals = [x[key] for x in samples if x[key] > 0]
        if not vals:
            print(f"  {label:27s} not sampled")
            continue
        a, b, g = growth(samples, key, 20)
        print(f"  {label:27s} peak {max(vals):7.1f}  final {vals[-1]:7.1f}  round 20 -> last: {a:7.1f} -> {b:7.1f} "
              f"({g:+.1f} %)")
    print(f"wall time per round (s, under load): median {statistics.median(per_round):.2f}, "
          f"p90 {sorted(per_round)[int(0.9 * len(per_round))]:.2f}, max {max(per_round):.1f}")
    if args.figure:
        figure(samples, events, args.figure)
        print(f"figure: {args.figure}")
    if not args.skip_replay:
        t0 = time.time()
        env = {**os.environ, "FEDSYNTH_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        target = work / "replay"
        k = 1
        while target.exists():
            k += 1
            target = work / f"replay-{k}"
        res = subprocess.run([sys.executable, "-m", "fedsynth.cli", "run", "--replay", str(out), "--sites",
                              str(work / "sites"), "-o", str(target)], env=env, capture_output=True, text=True)
        lines = [x for x in res.stdout.splitlines() if "global weights" in x or "replaying" in x]
        print(f"replay in one process ({time.time() - t0:.0f} s, exit {res.returncode}; {target}):")
        for x in lines:
            print("  " + x)
        if res.returncode != 0:
            print(res.stdout[-2000:] + res.stderr[-2000:])


if __name__ == "__main__":
    main()
