"""A node's message, built per message vs kept per run (the warm worker's ``Nodes``).

    .venv/bin/python benchmarks/warm_node.py [--images 512] [--size 64] [--rounds 5] [--threads 1]

Writes one hospital's folder of phantom chest x-rays (``fedsynth data split``), then answers the
same run's ``hello`` and ``--rounds`` ``train`` messages (each scoring the incoming global model
and the local model on the site's images, as a Flower round does) with
:func:`fedsynth.fed.flower.node.handle` in this process, twice: ``cold`` builds the node for
every message (a plain ``flwr-clientapp`` process per message; its real statistics come from the
on-disk cache after the first), ``warm`` keeps it for the run (:class:`fedsynth.fed.flower.node.Nodes`,
what the warm worker does). Prints the seconds of each message and the median of the train
messages, then the set-up alone (a node ready to answer: data, split, feature network,
statistics; first call and median of the next ``--rounds``), and checks that both answer with the same weights bit for bit. Torch is imported
before either, so neither pays for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _request(cfg, folder: str, r: int, kind: str):
    from fedsynth.fed.strategies import strategy_from_config
    from fedsynth.models import build_model
    from fedsynth.serial import pack
    conf = {"fedsynth-config": cfg.to_toml(), "run-key": "bench"}
    req = {"config": conf, "node_config": {"data-path": folder, "client-id": "0"}, "arrays": None,
           "strategy": None, "state": None}
    if kind == "train":
        model = build_model(cfg, cfg.data.image_size, 1, 2)
        s = strategy_from_config(cfg.fed, cfg.privacy)
        s.setup(model.state(), model.parameter_keys(), 2)
        tensors, skeleton = pack(s.state_dict())
        conf.update({"round": r, "num-classes": 2, "num-clients": 2, "eval-global": r - 1, "eval-local": True,
                     "state-round": r - 1, "strategy": json.dumps(skeleton)})
        req.update(arrays={k: v.numpy() for k, v in model.state().items()},
                   strategy={k: v.numpy() for k, v in tensors.items()})
    return req


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extractor", default="random", help="eval.feature-extractor")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="warm-node-"))
    os.environ["FEDSYNTH_CACHE"] = str(tmp / "cache")
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.config import build_config
    from fedsynth.fed.flower.node import Nodes, handle
    res = CliRunner().invoke(app, ["data", "split", "phantom-xray", "-k", "1", "--out", str(tmp / "sites"),
                                   "--set", f"data.num-images={args.images}", "--set", f"data.image-size={args.size}"])
    assert res.exit_code == 0, res.output
    folder = str(tmp / "sites" / "client-0")
    cfg = build_config(None, [f"data.image-size={args.size}", f"train.threads={args.threads}",
                              f"eval.feature-extractor={args.extractor}", "eval.num-samples=128", "eval.kid-subset-size=64",
                              "fed.local-steps=2", "eval.holdout=0"])
    out = {}
    for name, nodes in (("cold", None), ("warm", Nodes())):
        os.environ["FEDSYNTH_CACHE"] = str(tmp / f"cache-{name}")  # each its own statistics cache and node state
        times, weights = [], []
        for r in range(args.rounds + 1):
            kind = "hello" if r == 0 else "train"
            req = _request(cfg, folder, r, kind)
            t0 = time.perf_counter()
            ans = handle(kind, req, nodes)
            times.append(time.perf_counter() - t0)
            assert "error" not in ans["meta"], ans["meta"]
            if kind == "train":
                weights.append(ans["arrays"])
        out[name] = (times, weights)
        print(f"{name}: hello {times[0]:.3f} s; train " + " ".join(f"{t:.3f}" for t in times[1:])
              + f" s; median train {statistics.median(times[1:]):.3f} s")
    # what changed, alone: a node ready to answer (data, held-out split, feature network, statistics)
    from fedsynth.fed.flower.node import Node
    req = _request(cfg, folder, 1, "hello")
    for name, ready in (("cold", lambda: Node(req).statistics()),
                        ("warm", lambda nodes=Nodes(): nodes.get(req).statistics())):
        ts = []
        for _ in range(args.rounds + 1):
            t0 = time.perf_counter()
            ready()
            ts.append(time.perf_counter() - t0)
        print(f"{name} node set-up: first {ts[0]:.3f} s, then median {statistics.median(ts[1:]):.4f} s")
    import numpy as np
    same = all(np.array_equal(a[k], b[k]) for a, b in zip(out["cold"][1], out["warm"][1]) for k in a)
    print(f"weights bit-identical: {same}")


if __name__ == "__main__":
    main()
